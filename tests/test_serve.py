"""`pc serve` through real clients: the official `openai` package and `curl` against a live server
on loopback (started and stopped here), the real default model. Chat and completions, streaming
or not, schemas with modules given in `extra_body`, the bare model's prompt reuse, errors, several
clients at once, a client leaving mid-stream, a full queue, SIGTERM during a request; answers equal
`pc ask`'s (greedy)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from .conftest import write_schema
from .support import server as srv
from .support.pc_process import one_line_error, ok, pc

FACTS = """
<schema name="facts">
  <system>Answer in one short sentence.</system>
  <user>
    <module name="color">The secret color is blue.</module>
    <module name="animal">The secret animal is a cat.</module>
    <module name="city">The secret city is <parameter name="name" length="6" scaffold="Paris"/>.</module>
  </user>
</schema>
"""
BARE = "SmolLM2-135M-Instruct.Q4_1"
N = 12  # answer tokens: short answers keep the suite quick on a shared machine


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> Path:
    return write_schema(tmp_path_factory.mktemp("facts"), FACTS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-cache")


@pytest.fixture(scope="module")
def server(schema, cache):
    s = srv.start(schema, "--max-tokens-limit", "512", "--max-body", "64KiB", cache_dir=cache)
    yield s
    assert s.stop() == 0, s.stderr
    assert "Traceback" not in s.stderr, s.stderr


def ask_json(schema: Path, cache: Path, question: str, *args: str) -> dict:
    return ok(pc("ask", "--json", "-n", str(N), "-s", schema, *args, question, cache_dir=cache)).json()


# -- models, health, metrics ------------------------------------------------------------------------


def test_models_lists_each_schema_and_the_bare_model(server):
    ids = [m.id for m in server.client().models.list()]
    assert ids == ["facts", BARE]
    assert server.client().models.retrieve("facts").id == "facts"
    health = server.get_json("/health")
    assert health["status"] == "ok" and health["schemas"] == ["facts"] and health["model"] == BARE


def test_metrics_are_prometheus_text(server):
    server.client().chat.completions.create(model="facts", messages=[{"role": "user", "content": "Color?"}],
                                            max_tokens=2)
    m = server.metrics()
    assert m['pc_requests_total{endpoint="chat",status="200"}'] >= 1
    assert m["pc_prompt_tokens_cached_total"] > 0 and m["pc_prompt_tokens_computed_total"] > 0
    assert m['pc_time_to_first_token_seconds_bucket{le="+Inf"}'] == m["pc_time_to_first_token_seconds_count"] >= 1
    assert "pc_prompt_cache_bytes" in m and "pc_queue_length" in m


# -- a schema as the model ----------------------------------------------------------------------------


def test_chat_with_modules_in_extra_body_equals_pc_ask(server, schema, cache):
    client = server.client()
    r = client.chat.completions.create(
        model="facts", messages=[{"role": "user", "content": "Which city is secret?"}], max_tokens=N, temperature=0,
        extra_body={"pc": {"modules": ["city", "color"], "params": {"name": "Oslo"}}})
    want = ask_json(schema, cache, "Which city is secret?", "-m", "city", "-m", "color", "-p", "name=Oslo")
    assert r.choices[0].message.content == want["answer"]
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == want["finish_reason"]
    assert r.object == "chat.completion" and r.model == "facts" and r.id.startswith("chatcmpl-")
    assert r.usage.completion_tokens == want["generated_tokens"]
    assert r.usage.prompt_tokens == want["cached_tokens"] + want["computed_tokens"]
    assert r.usage.prompt_tokens_details.cached_tokens == want["cached_tokens"] > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_without_extra_body_uses_the_default_prompt(server, schema, cache):
    r = server.client().chat.completions.create(
        model="facts", messages=[{"role": "user", "content": "What is the secret animal?"}], max_tokens=N)
    assert r.choices[0].message.content == ask_json(schema, cache, "What is the secret animal?")["answer"]


def test_streaming_chat_sends_the_same_answer_piece_by_piece(server):
    client = server.client()
    kw = dict(model="facts", messages=[{"role": "user", "content": "Name the secret color."}], max_tokens=N,
              extra_body={"pc": {"modules": ["color"]}})
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens_details.cached_tokens


def test_a_conversation_continues_after_the_schema(server):
    client = server.client()
    history = [{"role": "user", "content": "What is the secret color?"},
               {"role": "assistant", "content": "The secret color is blue."},
               {"role": "user", "content": "And the secret animal?"}]
    client.chat.completions.create(model="facts", messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                   extra_body={"pc": {"modules": ["city"]}})  # other modules: loaded afresh next
    one = client.chat.completions.create(model="facts", messages=history[-1:], max_tokens=N)
    r = client.chat.completions.create(model="facts", messages=history, max_tokens=N)
    assert r.usage.prompt_tokens > one.usage.prompt_tokens + 10  # the earlier turns are in the prompt
    # the schema's states for both (the second also counts the parameter value it found in place)
    cached = one.usage.prompt_tokens_details.cached_tokens
    assert cached <= r.usage.prompt_tokens_details.cached_tokens < cached + 8


def test_text_completion_with_a_schema_and_stop_strings(server, schema, cache):
    client = server.client()
    want = ask_json(schema, cache, "What is the secret color?")["answer"]
    r = client.completions.create(model="facts", prompt="What is the secret color?", max_tokens=N)
    assert r.object == "text_completion" and r.choices[0].text == want
    stop = want.split()[2]  # a word in the middle of the answer
    cut = client.completions.create(model="facts", prompt="What is the secret color?", max_tokens=N, stop=[stop])
    assert cut.choices[0].text == want[: want.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="facts", prompt="What is the secret color?", max_tokens=N,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_pc_ask_endpoint_returns_what_pc_ask_json_prints(server, schema, cache):
    status, _, body = server.request("POST", "/v1/pc/ask", json.dumps(
        {"schema": "facts", "question": "Which city?", "modules": ["city"], "params": {"name": "Rome"},
         "max_tokens": N}))
    assert status == 200, body
    got = json.loads(body)
    want = ask_json(schema, cache, "Which city?", "-m", "city", "-p", "name=Rome")
    assert set(got) == set(want)
    for key in ("answer", "cached_tokens", "computed_tokens", "generated_tokens", "modules", "model", "mode",
                "finish_reason", "no_cache"):
        assert got[key] == want[key], key
    doc = '<prompt schema="facts"><city name="Lima"/>Which city is it?</prompt>'
    status, _, body = server.request("POST", "/v1/pc/ask", json.dumps({"schema": "facts", "prompt": doc,
                                                                        "max_tokens": N}))
    assert status == 200 and json.loads(body)["answer"] == ask_json(
        schema, cache, "Which city is it?", "-m", "city", "-p", "name=Lima")["answer"]


# -- the bare model: prefix reuse ---------------------------------------------------------------------


def test_bare_chat_reuses_prefixes_and_answers_as_computed_whole(server, model_path):
    import promptcache_cli as pc_lib

    client = server.client()
    first = [{"role": "system", "content": "You are a terse geography tutor."},
             {"role": "user", "content": "What is the capital of France?"}]
    a1 = client.chat.completions.create(model=BARE, messages=first, max_tokens=N)
    second = first + [{"role": "assistant", "content": a1.choices[0].message.content},
                      {"role": "user", "content": "And of Spain?"}]
    a2 = client.chat.completions.create(model=BARE, messages=second, max_tokens=N)
    assert a2.usage.prompt_tokens_details.cached_tokens >= a1.usage.prompt_tokens  # the first turn came back
    other = [{"role": "system", "content": "You write haiku about the sea, nothing else, in any situation."},
             {"role": "user", "content": "Waves?"}]
    client.chat.completions.create(model=BARE, messages=other, max_tokens=N)  # the context moves on
    again = client.chat.completions.create(model=BARE, messages=second, max_tokens=N)  # from the RAM cache
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert again.choices[0].message.content == a2.choices[0].message.content
    with pc_lib.open_session(model_path) as session:  # the whole prompt computed, nothing reused
        msgs = [(m["role"], m["content"]) for m in second]
        cold = [x for x in session.stream_tokens(session.chat_tokens(msgs), max_tokens=N)][-1]
    assert cold.cached_tokens == 0 and cold.text == a2.choices[0].message.content
    assert server.metrics()["pc_prompt_cache_hits"] >= 1


def test_the_ram_prompt_cache_drops_the_least_recently_used_state(tmp_path, model_path):
    """--cache-ram room for two states of these prompts: the one used longest ago goes first."""
    import numpy as np

    import promptcache_cli as pc_lib

    rng = np.random.default_rng(7)
    length = 160
    a, b, c, d = ([int(t) for t in rng.integers(1000 + 9000 * k, 9000 * (k + 1), length)] for k in range(4))
    with pc_lib.open_session(model_path) as session:  # how large one such state is (prompt and 4 answer tokens)
        for _ in session.stream_tokens(a, max_tokens=4):
            pass
        size = session.save_held().nbytes
    s = srv.start("--cache-ram", str(int(size * 2.5)), cache_dir=tmp_path / "cache")
    try:
        def cached(prompt: list[int]) -> int:
            r = s.client().completions.create(model=BARE, prompt=prompt, max_tokens=4)
            return r.usage.prompt_tokens_details.cached_tokens

        assert [cached(p) for p in (a, b, c)] == [0, 0, 0]  # RAM: a, then b as the context moves on
        assert cached(d) == 0  # c kept: a, the least recently used, dropped
        assert cached(b) == length - 1  # b from RAM (now the most recently used); d kept, c dropped
        assert cached(c) == 0
        assert cached(a) == 0
        m = s.metrics()
        assert m["pc_prompt_cache_states"] == 2 and m["pc_prompt_cache_bytes"] <= m["pc_prompt_cache_capacity_bytes"]
        assert m["pc_prompt_cache_hits"] == 1
    finally:
        assert s.stop() == 0, s.stderr


def test_a_schema_question_between_two_chat_turns_leaves_the_chat_in_place(schema, tmp_path):
    """Plain prompts have a context of their own: with no RAM prompt cache at all, the second
    turn of a plain chat still continues from the first after a schema question in between, and a
    schema question over the same modules as the one before computes only the chunks of its tokens
    that differ."""
    s = srv.start(schema, "--cache-ram", "0", cache_dir=tmp_path / "cache")
    try:
        client = s.client()
        turn = [{"role": "user", "content": "List three facts about the moon, one per line, with care."}]
        first = client.chat.completions.create(model=BARE, messages=turn, max_tokens=N)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        ask = {"model": "facts", "max_tokens": N, "extra_body": {"pc": {"modules": ["color", "animal"]}}}
        note = "My notes say the moon is far away, that it is made of rock, and that it has no air at all. " * 3
        one = client.chat.completions.create(messages=[{"role": "user", "content": note + "Color?"}], **ask)
        two = client.chat.completions.create(messages=[{"role": "user", "content": note + "Animal?"}], **ask)
        assert two.usage.prompt_tokens == one.usage.prompt_tokens  # one token each: the word asked
        # the modules, and the note's first 64-token chunk: from the question before
        assert two.usage.prompt_tokens_details.cached_tokens == one.usage.prompt_tokens_details.cached_tokens + 64
        turns = [*turn, {"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And one more?"}]
        second = client.chat.completions.create(model=BARE, messages=turns, max_tokens=N)
        assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
        assert s.metrics()["pc_prompt_cache_states"] == 0
    finally:
        assert s.stop() == 0, s.stderr


def test_bare_completion_takes_text_or_token_ids(server):
    client = server.client()
    r = client.completions.create(model=BARE, prompt="The three primary colors are", max_tokens=N)
    assert r.choices[0].text and r.usage.prompt_tokens > 1
    status, _, body = server.request("POST", "/v1/completions", json.dumps(
        {"model": BARE, "prompt": [1, 504, 2365, 1014], "max_tokens": 3}))
    assert status == 200 and json.loads(body)["usage"]["prompt_tokens"] == 4


def test_curl_streams_server_sent_events(server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    body = json.dumps({"model": "facts", "messages": [{"role": "user", "content": "Color?"}], "max_tokens": N,
                       "stream": True, "pc": {"modules": ["color"]}})
    out = subprocess.run(["curl", "-sN", "--fail-with-body", f"{server.base_url}/chat/completions",
                          "-H", "Content-Type: application/json", "-d", body],
                         capture_output=True, timeout=600, check=True).stdout
    events = srv.sse_events(out)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    whole = server.client().chat.completions.create(
        model="facts", messages=[{"role": "user", "content": "Color?"}], max_tokens=N,
        extra_body={"pc": {"modules": ["color"]}})
    assert text == whole.choices[0].message.content


# -- errors ----------------------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
OK_CHAT = {"model": "facts", "messages": [{"role": "user", "content": "Color?"}], "max_tokens": 2}

MALFORMED = {
    "not JSON": (CHAT, b"{nope", 400),
    "not UTF-8": (CHAT, b'{"model": "\xff"}', 400),
    "a JSON array": (CHAT, b"[1, 2]", 400),
    "no model": (CHAT, {"messages": [{"role": "user", "content": "hi"}]}, 400),
    "no messages": (CHAT, {"model": "facts"}, 400),
    "empty messages": (CHAT, {"model": "facts", "messages": []}, 400),
    "messages not a list": (CHAT, {"model": "facts", "messages": "hi"}, 400),
    "a message not an object": (CHAT, {"model": "facts", "messages": ["hi"]}, 400),
    "an unknown role": (CHAT, {**OK_CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, 400),
    "content a number": (CHAT, {**OK_CHAT, "messages": [{"role": "user", "content": 7}]}, 400),
    "an image part": (CHAT, {**OK_CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400),
    "max_tokens a string": (CHAT, {**OK_CHAT, "max_tokens": "ten"}, 400),
    "max_tokens zero": (CHAT, {**OK_CHAT, "max_tokens": 0}, 400),
    "max_tokens over the limit": (CHAT, {**OK_CHAT, "max_tokens": 100000}, 400),
    "temperature out of range": (CHAT, {**OK_CHAT, "temperature": 9}, 400),
    "top_p zero": (CHAT, {**OK_CHAT, "top_p": 0}, 400),
    "seed a float": (CHAT, {**OK_CHAT, "seed": 1.5}, 400),
    "stream a string": (CHAT, {**OK_CHAT, "stream": "yes"}, 400),
    "five stop strings": (CHAT, {**OK_CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400),
    "n of 2": (CHAT, {**OK_CHAT, "n": 2}, 400),
    "tools": (CHAT, {**OK_CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400),
    "an unknown model": (CHAT, {**OK_CHAT, "model": "gpt-4o"}, 404),
    "an unknown module": (CHAT, {**OK_CHAT, "pc": {"modules": ["weather"]}}, 400),
    "a parameter too long": (CHAT, {**OK_CHAT, "pc": {"modules": ["city"], "params": {"name": "x " * 50}}}, 400),
    "pc not an object": (CHAT, {**OK_CHAT, "pc": ["color"]}, 400),
    "a system message with a schema": (CHAT, {**OK_CHAT, "messages": [{"role": "system", "content": "Be rude."},
                                                                      {"role": "user", "content": "hi"}]}, 400),
    "modules with the bare model": (CHAT, {**OK_CHAT, "model": BARE, "pc": {"modules": ["color"]}}, 400),
    "a body too large": (CHAT, {**OK_CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}, 413),
    "a prompt too long": ("/v1/completions", {"model": BARE, "prompt": "why " * 9000, "max_tokens": 4}, 400),
    "token ids outside the vocabulary": ("/v1/completions", {"model": BARE, "prompt": [5, 10**9], "max_tokens": 2},
                                         400),
    "completion prompt missing": ("/v1/completions", {"model": BARE}, 400),
    "pc/ask without a question": ("/v1/pc/ask", {"schema": "facts"}, 400),
    "pc/ask on the bare model": ("/v1/pc/ask", {"schema": BARE, "question": "hi"}, 400),
    "pc/ask with a bad prompt document": ("/v1/pc/ask", {"schema": "facts", "prompt": "<prompt schema='facts'>"}, 400),
    "an unknown endpoint": ("/v1/embeddings", {"model": BARE, "input": "hi"}, 404),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_requests_get_openai_errors(server, name):
    path, body, status = MALFORMED[name]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, headers, out = server.request("POST", path, raw, {"Content-Type": "application/json"})
    assert got == status, out
    assert headers["content-type"].startswith("application/json")
    err = json.loads(out)["error"]
    assert isinstance(err["message"], str) and err["message"] and "Traceback" not in err["message"]
    assert err["type"] in ("invalid_request_error", "server_error") and "code" in err and "param" in err


def test_wrong_method_and_the_server_survives_every_bad_request(server):
    status, _, out = server.request("GET", CHAT)
    assert status == 405 and json.loads(out)["error"]["code"] == "method_not_allowed"
    assert server.request("POST", CHAT, json.dumps(OK_CHAT))[0] == 200
    assert server.proc.poll() is None


def _raw(server, data: bytes, *, read: bool = True) -> bytes:
    """Send ``data`` on a fresh connection; what comes back until the server closes it (or nothing
    when ``read`` is false: the client hangs up at once)."""
    out = b""
    with socket.create_connection((server.host, server.port), timeout=120) as sock:
        try:
            sock.sendall(data)
            if not read:
                return b""
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                out += chunk
        except (BrokenPipeError, ConnectionResetError):  # the server closed it before reading everything
            pass
    return out


def test_broken_http_is_refused_and_the_server_goes_on(server):
    # not HTTP at all: the HTTP layer (uvicorn) answers 400 and closes
    assert _raw(server, b"HELLO THERE\r\n\r\n").startswith(b"HTTP/1.1 400")
    # a Content-Length that is not a number
    assert _raw(server, f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n".encode()
                ).startswith(b"HTTP/1.1 400")
    # a chunked body over --max-body (64KiB): OpenAI's error, 413, however the body comes
    chunk = b"x" * 40_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    out = _raw(server, f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n".encode() + body)
    head, _, payload = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and json.loads(payload)["error"]["code"] == "request_too_large"
    # a body shorter than its Content-Length, then the client hangs up: nothing to answer, nothing logged
    _raw(server, f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{{\"model\":".encode(),
         read=False)
    # a header line larger than the HTTP layer takes
    out = _raw(server, f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {'y' * 200_000}\r\n\r\n".encode())
    assert not out.startswith(b"HTTP/1.1 200")
    _wait(lambda: server.metrics().get('pc_requests_total{endpoint="chat",status="499"}', 0) >= 1, timeout=60)
    assert server.request("POST", CHAT, json.dumps(OK_CHAT))[0] == 200
    assert server.proc.poll() is None
    assert "internal error" not in server.stderr and "Traceback" not in server.stderr, server.stderr


def test_the_openai_client_raises_its_own_errors(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404 and "facts" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="facts", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"pc": {"modules": ["weather"]}})
    assert "weather" in str(e.value)


# -- several clients, a client leaving -------------------------------------------------------------------


def test_concurrent_clients_get_the_answers_they_would_get_alone(server):
    client = server.client()
    questions = ["What is the secret color?", "What is the secret animal?", "Which city is secret?",
                 "Say the color twice."]
    alone = {q: client.chat.completions.create(model="facts", messages=[{"role": "user", "content": q}],
                                               max_tokens=N).choices[0].message.content for q in questions}
    got: dict[tuple[int, int], str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            c = server.client()
            for j in range(2):
                q = questions[(i + j) % len(questions)]
                if (i + j) % 2:
                    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                        model="facts", messages=[{"role": "user", "content": q}], max_tokens=N, stream=True))
                else:
                    text = c.chat.completions.create(model="facts", messages=[{"role": "user", "content": q}],
                                                     max_tokens=N).choices[0].message.content
                got[i, j] = text
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not errors, errors
    assert len(got) == 16
    for (i, j), text in got.items():
        assert text == alone[questions[(i + j) % len(questions)]]


def test_a_client_leaving_mid_stream_cancels_its_generation(server):
    before = server.metrics()
    body = json.dumps({"model": BARE, "messages": [{"role": "user", "content": "Tell me a very long story."}],
                       "max_tokens": 500, "stream": True})
    sock = socket.create_connection((server.host, server.port), timeout=600)
    sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    received = b""
    while received.count(b"data: ") < 3:  # the answer is being generated
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    sock.close()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.get_json("/health")["busy"]:
        time.sleep(0.2)
    after = server.metrics()
    assert after["pc_requests_cancelled_total"] == before["pc_requests_cancelled_total"] + 1
    assert after["pc_completion_tokens_total"] == before["pc_completion_tokens_total"]  # it never finished
    r = server.client().chat.completions.create(model="facts", messages=[{"role": "user", "content": "Color?"}],
                                                max_tokens=2)
    assert r.choices[0].message.content


def test_a_client_leaving_while_waiting_for_a_whole_answer_cancels_it(server):
    before = server.metrics()
    body = json.dumps({"model": BARE, "messages": [{"role": "user", "content": "Tell me another long story."}],
                       "max_tokens": 500})
    with socket.create_connection((server.host, server.port), timeout=600) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        _wait(lambda: server.get_json("/health")["busy"] == 1)  # it is being computed
    _wait(lambda: not server.get_json("/health")["busy"])
    after = server.metrics()
    assert after["pc_requests_cancelled_total"] == before["pc_requests_cancelled_total"] + 1
    assert after["pc_completion_tokens_total"] == before["pc_completion_tokens_total"]  # it never finished
    assert after.get('pc_requests_total{endpoint="chat",status="499"}', 0) == before.get(
        'pc_requests_total{endpoint="chat",status="499"}', 0) + 1


# -- a second server: an API key, a queue of one, SIGTERM --------------------------------------------------


def test_api_key_queue_full_and_sigterm_drain(schema, cache):
    s = srv.start(schema, "--api-key", "sesame", "--queue", "1", cache_dir=cache)
    try:
        assert s.request("GET", "/health")[0] == 200  # open to probes
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic sesame"}):
            status, _, out = s.request("POST", CHAT, json.dumps(OK_CHAT), headers)
            assert status == 401 and json.loads(out)["error"]["code"] == "invalid_api_key"
        assert s.request("GET", "/metrics")[0] == 401
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        good = s.client(api_key="sesame")
        assert [m.id for m in good.models.list()] == ["facts", BARE]

        # one request running, one waiting: a third finds the queue full
        long = {"model": BARE, "messages": [{"role": "user", "content": "Count from one to a hundred."}],
                "max_tokens": 60, "stream": True}
        results: dict[str, object] = {}

        def stream(name: str) -> None:
            chunks = list(s.client(api_key="sesame").chat.completions.create(**long))
            results[name] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        running = threading.Thread(target=stream, args=("running",))
        running.start()
        _wait(lambda: s.get_json("/health")["busy"] == 1)
        waiting = threading.Thread(target=stream, args=("waiting",))
        waiting.start()
        _wait(lambda: s.get_json("/health")["queued"] == 1)
        status, headers, out = s.request("POST", CHAT, json.dumps({**long, "stream": False}),
                                         {"Authorization": "Bearer sesame"})
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert json.loads(out)["error"]["code"] == "queue_full"

        # SIGTERM while both are in flight: both finish, then the server exits 0
        code = s.stop()
        running.join(600)
        waiting.join(600)
        assert code == 0, s.stderr
        assert results["running"] and results["waiting"], results
        assert "Traceback" not in s.stderr and s.err_lines[-1] == "pc serve: stopped", s.stderr
    finally:
        s.stop(signal.SIGKILL)


def _wait(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_workers_answer_at_once_and_as_alone(schema, cache):
    s = srv.start(schema, "--parallel", "2", cache_dir=cache)
    try:
        assert s.get_json("/health")["workers"] == 2
        prompts = [f"Write a list of {n} fruits:" for n in ("three", "four", "five", "six")]
        got: dict[int, str] = {}
        busy: list[int] = []

        def ask(i: int) -> None:
            r = s.client().completions.create(model=BARE, prompt=prompts[i], max_tokens=24)
            got[i] = r.choices[0].text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            busy.append(s.get_json("/health")["busy"])
            time.sleep(0.05)
        assert max(busy) == 2  # both workers computed at once
        for i, p in enumerate(prompts):  # alone, one after another
            assert s.client().completions.create(model=BARE, prompt=p, max_tokens=24).choices[0].text == got[i]
    finally:
        assert s.stop() == 0, s.stderr


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="the server is tied to its test process on Linux only")
def test_a_server_does_not_outlive_a_killed_test_process(tmp_path):
    """A test run killed outright (no teardown) leaves no server behind."""
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; from tests.support import server as srv; "
         "s = srv.start(cache_dir=__import__('pathlib').Path(sys.argv[1])); "
         "print(s.port, s.proc.pid, flush=True); time.sleep(600)", str(tmp_path / "cache")],
        cwd=root, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        port, pid = map(int, child.stdout.readline().split())
        assert srv.Server(child, "127.0.0.1", port).request("GET", "/health")[0] == 200
    finally:
        child.kill()
        child.wait()

    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, IndexError):
            return True

    _wait(gone, timeout=120)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()


# -- refusing to start -------------------------------------------------------------------------------------


def test_a_public_address_without_a_key_is_refused_naming_the_flag(tmp_path):
    err = one_line_error(pc("serve", "--host", "0.0.0.0", "--port", "0", cache_dir=tmp_path), 10)
    assert "--api-key" in err and "--no-auth" in err


def test_a_busy_port_is_one_line_and_exit_10(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = one_line_error(pc("serve", "--port", str(port), cache_dir=tmp_path), 10)
    assert f"127.0.0.1:{port}" in err and "in use" in err


# -- a sliding-window model: prefix mode and whole-prefix states ---------------------------------------------

GEMMA = Path(__file__).resolve().parent.parent / ".venv" / "models" / "gemma-3-270m-q4_k_m.gguf"


def test_a_sliding_window_model_serves_in_prefix_mode_and_resumes_at_prompt_ends(tmp_path):
    if not GEMMA.is_file():
        pytest.skip(f"Gemma 3 270M is not installed at {GEMMA}: `make test` installs it")
    schema = write_schema(tmp_path / "s", """
        <schema name="notes"><module name="note">The meeting moved to Thursday at noon, room 4.</module></schema>
    """)
    s = srv.start(schema, "--model", GEMMA, cache_dir=tmp_path / "cache")
    try:
        assert s.get_json("/health")["mode"] == "prefix"
        client = s.client()
        r = client.completions.create(model="notes", prompt="Question: when is the meeting? Answer:", max_tokens=N)
        want = ok(pc("ask", "--json", "-n", str(N), "-s", schema, "--model", GEMMA,
                     "Question: when is the meeting? Answer:", cache_dir=tmp_path / "cache")).json()
        assert r.choices[0].text == want["answer"] and want["mode"] == "prefix"
        bare = GEMMA.name.removesuffix(".gguf")
        first = "The three laws of thermodynamics are"
        a = client.completions.create(model=bare, prompt=first, max_tokens=N)
        # a state that cannot be cut back serves only a whole prefix: kept one token before the first prompt's end
        b = client.completions.create(model=bare, prompt=first + " about energy, and the first says", max_tokens=N)
        assert b.usage.prompt_tokens_details.cached_tokens == a.usage.prompt_tokens - 1
        client.completions.create(model=bare, prompt="Unrelated: the capital of Peru is", max_tokens=2)
        again = client.completions.create(model=bare, prompt=first + " about energy, and the first says",
                                          max_tokens=N)  # from the RAM cache: the state at the prompt's end
        assert again.usage.prompt_tokens_details.cached_tokens == b.usage.prompt_tokens - 1
        assert again.choices[0].text == b.choices[0].text
    finally:
        assert s.stop() == 0, s.stderr

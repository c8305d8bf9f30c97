"""Prompts without a schema, on the real default model: a compiled module's text found wherever it
stands in an ordinary prompt and its states moved there, text learned from one prompt found in the
next, learned files damaged or evicted (the prompt is computed instead), spans kept in RAM, and
`pc ask --text` / `--learn` as a user runs them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import promptcache_cli as pc
from promptcache_cli.benchmarks.quality import kl
from promptcache_cli.store import span_index
from promptcache_cli.store.boundary import Boundary

from .conftest import license_excerpt, write_schema
from .support.pc_process import ok, one_line_error
from .support.pc_process import pc as run_pc

# Measured on SmolLM2-135M Q4_1 (test_compiled_modules_are_found_anywhere_in_a_text_prompt): two
# license excerpts compiled after the schema's system turn, found in a prompt in the other order
# after other text: KL of the first-token distribution against --no-cache 0.04 to 0.07, the
# largest logit difference about 3 (what losing the cross-document attention costs, not a
# positioning error: a state moved to a wrong place gives KL > 1). The bound leaves room for
# rounding on other CPUs.
TEXT_KL = 0.3

DOCS = {"bsd.txt": license_excerpt("BSD.txt", 1000), "mpl.txt": license_excerpt("MPL-2.0.txt", 1300)}
ARTISTIC = license_excerpt("Artistic.txt", 1100)


@pytest.fixture(scope="module")
def compiled(model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    path = write_schema(folder, """
        <schema name="two"><system>You answer questions about licenses.</system>
          <user><module name="bsd" src="bsd.txt"/><module name="mpl" src="mpl.txt"/></user></schema>""", DOCS)
    with pc.open_session(model_path, cache_dir=folder / "cache", mode="modular") as s:
        s.compile(path)
    return folder / "cache"


def _message(*docs: str, question: str) -> str:
    return "Read these.\n\n" + "\n\nAnd this one:\n\n".join(docs) + f"\n\n{question}"


def test_compiled_modules_are_found_anywhere_in_a_text_prompt(model_path, compiled, tmp_path):
    msg = _message(DOCS["mpl.txt"], DOCS["bsd.txt"], question="What do these licenses say about warranties?")
    with pc.open_session(model_path, cache_dir=compiled, mode="modular") as s:
        n_prompt = len(s.chat_tokens([("user", msg)]))
        got = s.ask(pc.TextRequest.from_text(msg, max_tokens=4, keep_logits=True))
        ref = s.ask(pc.TextRequest.from_text(msg, max_tokens=4, keep_logits=True, no_cache=True))
        assert [sp.name for sp in got.spans] == ["two/mpl", "two/bsd"]  # in prompt order, the schema's reversed
        assert got.modules == ("two/mpl", "two/bsd")
        for sp, doc in zip(got.spans, (DOCS["mpl.txt"], DOCS["bsd.txt"]), strict=True):
            assert sp.tokens >= len(s.tokenize(doc)) - 4  # all but the few edge tokens that join other text
            assert not sp.exact  # computed after the schema's text, not this prompt's
        assert got.spans[0].start < got.spans[1].start
        assert got.cached_tokens == sum(sp.tokens for sp in got.spans)
        assert got.cached_tokens + got.computed_tokens == n_prompt == ref.computed_tokens
        assert ref.cached_tokens == 0 and not ref.spans
        assert 0 < kl(ref.first_logits, got.first_logits) < TEXT_KL
        repaired = s.ask(pc.TextRequest.from_text(msg, max_tokens=4, repair=16))
        assert repaired.refreshed_tokens == 2 * 16  # each run's first 16 tokens computed afresh
        assert repaired.cached_tokens == got.cached_tokens - 32
    assert not (compiled / "spans").exists() or len(list((compiled / "modules").rglob("*.pcm"))) == 3  # nothing learned


def test_learned_text_is_found_in_another_prompt_then_damaged_then_evicted(model_path, tmp_path):
    cache = tmp_path / "c"
    first = _message(ARTISTIC, question="What is this document?")
    other = "Another introduction, longer than the first one.\n\n" + ARTISTIC + "\n\nWho may copy it?"
    with pc.open_session(model_path, cache_dir=cache, mode="modular") as s:
        a = s.ask(pc.TextRequest.from_text(first, max_tokens=2, learn=True))
        assert a.cached_tokens == 0 and a.learned
        assert all(sp.name == "learned" and sp.exact and sp.tokens >= 64 for sp in a.learned)
        files = [s.cache_dir / "modules" / sp.key[:2] / f"{sp.key}.pcm" for sp in a.learned]
        assert all(f.exists() for f in files)
        b = s.ask(pc.TextRequest.from_text(other, max_tokens=8, keep_logits=True))
        ref = s.ask(pc.TextRequest.from_text(other, max_tokens=8, keep_logits=True, no_cache=True))
        assert {sp.key for sp in b.spans} <= {sp.key for sp in a.learned} and b.spans
        assert b.cached_tokens >= sum(sp.tokens for sp in a.learned) - 8  # its edges may join other text
        assert b.cached_tokens + b.computed_tokens == ref.computed_tokens
        assert kl(ref.first_logits, b.first_logits) < TEXT_KL
        assert b.spans[0].start > a.learned[0].start  # found further on than where it was learned
        raw = bytearray(files[0].read_bytes())
        mid = len(raw) // 2
        raw[mid:mid + 64] = bytes(64)  # damage the states
        files[0].write_bytes(bytes(raw))
        c = s.ask(pc.TextRequest.from_text(other, max_tokens=8))
        assert any("damaged" in w for w in c.warnings)
        assert files[0].name.removesuffix(".pcm") not in {sp.key for sp in c.spans}
        assert c.cached_tokens + c.computed_tokens == ref.computed_tokens
        if not c.spans:  # everything computed: the very answer --no-cache gives
            assert c.text == ref.text
    index = span_index.SpanIndex(Boundary(cache), next((cache / "spans").glob("*.idx")).stem)
    assert len(index) > 0
    pc.collect_garbage(cache, max_size=0, grace=0)
    assert not any(f.exists() for f in files)
    assert len(span_index.SpanIndex(Boundary(cache), index.path.stem)) == 0  # gc dropped the records of evicted files
    with pc.open_session(model_path, cache_dir=cache, mode="modular") as s:
        d = s.ask(pc.TextRequest.from_text(other, max_tokens=2))
        assert d.cached_tokens == 0 and not d.spans and not d.warnings


def test_spans_learned_with_a_ram_budget_stay_in_ram_until_they_recur(model_path, tmp_path):
    cache = tmp_path / "c"
    with pc.open_session(model_path, cache_dir=cache, mode="modular", cache_ram=64 << 20) as s:
        a = s.ask(pc.TextRequest.from_text(_message(ARTISTIC, question="What is it?"), max_tokens=2, learn=True))
        assert a.learned
        assert not list((cache / "modules").rglob("*.pcm")) if (cache / "modules").exists() else True
        b = s.ask(pc.TextRequest.from_text("Intro.\n\n" + ARTISTIC + "\n\nSummarize it.", max_tokens=2, learn=True))
        assert b.spans and b.cached_tokens > 200
        on_disk = {p.stem for p in (cache / "modules").rglob("*.pcm")}
        assert {sp.key for sp in b.spans} <= on_disk  # found again: worth the disk
    with pc.open_session(model_path, cache_dir=cache, mode="modular") as s:  # another process finds it on disk
        c = s.ask(pc.TextRequest.from_text("Once more.\n\n" + ARTISTIC + "\n\nWho wrote it?", max_tokens=2))
        assert c.spans and c.cached_tokens > 200


def test_pc_ask_text_and_learn(model_path, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(_message(ARTISTIC, question="Who may copy this?"), encoding="utf-8")
    cache = tmp_path / "c"
    first = ok(run_pc("ask", "--text", prompt, "--learn", "--json", "--max-tokens", "4", cache_dir=cache)).json()
    assert first["cached_tokens"] == 0 and first["learned"] and first["spans"] == []
    again = tmp_path / "again.txt"
    again.write_text("Look at this.\n\n" + ARTISTIC + "\n\nWhat is it about?", encoding="utf-8")
    second = ok(run_pc("ask", "--text", again, "--json", "--max-tokens", "4", cache_dir=cache)).json()
    assert second["spans"] and second["spans"][0]["name"] == "learned"
    assert second["cached_tokens"] == sum(sp["tokens"] for sp in second["spans"]) > 200
    assert second["learned"] == []
    plain = ok(run_pc("ask", "--text", "-", "--max-tokens", "4", "--no-timings", cache_dir=cache,
                      stdin=again.read_text(encoding="utf-8")))
    assert plain.out.strip() and plain.err == ""  # stdout: the answer only


def test_pc_ask_text_usage_errors(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Hello?", encoding="utf-8")
    one_line_error(run_pc("ask", "--text", prompt, "--schema", "x.xml"), 2)
    one_line_error(run_pc("ask", "--text", prompt, "Why?"), 2)
    one_line_error(run_pc("ask", "--schema", "x.xml", "--learn", "Why?"), 2)
    one_line_error(run_pc("ask", "Why?"), 2)
    (tmp_path / "empty.txt").write_text(" \n", encoding="utf-8")
    one_line_error(run_pc("ask", "--text", tmp_path / "empty.txt"), 3)
    one_line_error(run_pc("ask", "--text", tmp_path / "missing.txt"), 3)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    one_line_error(run_pc("ask", "--text", tmp_path / "bin.txt"), 3)


GEMMA = Path(sys.prefix) / "models" / "gemma-3-270m-q4_k_m.gguf"


@pytest.mark.skipif(not GEMMA.exists(), reason="make test builds the Gemma model")
def test_a_model_whose_states_cannot_move_refuses_text_recognition(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Hello, what is two plus two?", encoding="utf-8")
    err = one_line_error(run_pc("ask", "--text", prompt, "--model", GEMMA, "--max-tokens", "2"), 4)
    assert "no_cache" in err or "--no-cache" in err
    out = ok(run_pc("ask", "--text", prompt, "--model", GEMMA, "--max-tokens", "2", "--no-cache", "--json")).json()
    assert out["cached_tokens"] == 0 and out["answer"]
    err = one_line_error(run_pc("serve", "--learn", "--model", GEMMA, "--host", "127.0.0.1", "--port", "0"), 2)
    assert "modular mode" in err


def test_text_of_damaged_index_is_ignored(model_path, compiled, tmp_path):
    """An index whose records are garbage names no file: the prompt is computed, no error."""
    import shutil

    cache = tmp_path / "c"
    shutil.copytree(compiled, cache)
    for idx in (cache / "spans").glob("*.idx"):
        idx.write_bytes(np.random.default_rng(0).integers(0, 256, idx.stat().st_size, dtype=np.uint8).tobytes())
    msg = _message(DOCS["bsd.txt"], question="What does it allow?")
    with pc.open_session(model_path, cache_dir=cache, mode="modular") as s:
        a = s.ask(pc.TextRequest.from_text(msg, max_tokens=2))
        assert a.cached_tokens == 0 and not a.warnings


def test_the_cli_repair_default_is_the_library_default():
    """`pc ask` names the default in its help without importing the library at start-up."""
    from promptcache_cli.cli.options import REPAIR_DEFAULT

    assert REPAIR_DEFAULT == pc.DEFAULT_REPAIR


def test_pc_serve_learn_finds_text_pasted_into_chats_through_the_openai_client(tmp_path):
    """`pc serve --learn`: a document pasted into one chat is learned; pasted into another chat after
    other text, its states are found and moved there (the usage's cached tokens say how many)."""
    from .support import server as srv

    s = srv.start("--learn", "--max-tokens-limit", "64", cache_dir=tmp_path / "c")
    try:
        client = s.client()
        model = client.models.list().data[-1].id  # the bare model
        first = client.chat.completions.create(model=model, max_tokens=4, messages=[
            {"role": "system", "content": "You answer questions about licenses."},
            {"role": "user", "content": _message(ARTISTIC, question="What is this?")}])
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        second = client.chat.completions.create(model=model, max_tokens=4, messages=[
            {"role": "user", "content": "A different start, then the same text.\n\n" + ARTISTIC + "\n\nWho wrote it?"}])
        cached = second.usage.prompt_tokens_details.cached_tokens
        assert 200 < cached < second.usage.prompt_tokens and second.choices[0].message.content
        assert list((tmp_path / "c" / "modules").rglob("*.pcm"))  # learned on disk, where pc gc sees it
    finally:
        assert s.stop() == 0

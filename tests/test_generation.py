"""Generation controls: the repeat penalty, stop strings (also when streamed), and why an answer
ended (``finish_reason``: "stop" or "length"), in the library and in `pc ask --json`. Real default
model, on the GPL manual's cache."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

import promptcache_cli as pc
from promptcache_cli.llama.sampling import REPEAT_WINDOW

from .support.pc_process import ok, pc as run

SCHEMA = str(Path(__file__).resolve().parent.parent / "schemas" / "gpl-manual.xml")
LOOPS = "Can I charge a fee for copies of the program?"  # greedy, the default model loops on it


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with pc.open_session(cache_dir=tmp_path_factory.mktemp("cache")) as s:
        s.compile(SCHEMA)
        yield s


def test_the_penalty_scales_the_recent_tokens_logits_only() -> None:
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = pc.Sampler(repeat_penalty=2.0).penalize(logits, [0, 1, 1])
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5] and logits.tolist() == [2.0, -2.0, 1.0, 0.5]
    assert pc.Sampler().penalize(logits, [0]) is logits  # 1: nothing to do
    old = list(range(REPEAT_WINDOW + 1))  # only the last 64 count
    assert pc.Sampler(repeat_penalty=2.0).penalize(np.ones(REPEAT_WINDOW + 1, np.float32), old)[0] == 1.0
    with pytest.raises(ValueError):
        pc.Sampler(repeat_penalty=0)


def test_a_repeat_penalty_stops_the_loop(session) -> None:
    plain = session.ask(pc.Request(SCHEMA, LOOPS, max_tokens=96))
    assert plain.finish_reason == "length"
    assert collections.Counter(plain.tokens).most_common(1)[0][1] >= 8  # the same words over and over
    penalized = session.ask(pc.Request(SCHEMA, LOOPS, max_tokens=96, sampler=pc.Sampler(repeat_penalty=1.2)))
    assert penalized.tokens[0] == plain.tokens[0]  # nothing to penalize yet
    assert penalized.finish_reason == "stop" and len(penalized.tokens) < 96  # it ends its turn
    assert collections.Counter(penalized.tokens).most_common(1)[0][1] <= 3


def test_a_stop_string_ends_the_answer_before_it_streamed_or_not(session) -> None:
    full = session.ask(pc.Request(SCHEMA, LOOPS, max_tokens=40))
    stop = "It is a license"
    assert stop in full.text
    cut = full.text[: full.text.index(stop)]
    got = session.ask(pc.Request(SCHEMA, LOOPS, max_tokens=40, stop=[stop, "never appears"]))
    assert got.text == cut and got.finish_reason == "stop"
    pieces = list(session.stream(pc.Request(SCHEMA, LOOPS, max_tokens=40, stop=stop)))
    *texts, answer = pieces
    assert "".join(texts) == cut == answer.text  # text that might begin the stop string was held back
    assert not any(stop in t for t in texts)
    unmatched = session.ask(pc.Request(SCHEMA, LOOPS, max_tokens=40, stop=["never appears"]))
    assert unmatched.text == full.text and unmatched.finish_reason == "length"
    with pytest.raises(ValueError):
        pc.Request(SCHEMA, LOOPS, stop=[""])


def test_ask_json_reports_why_the_answer_ended(tmp_path) -> None:
    cache = tmp_path / "cache"
    short = ok(run("ask", "-s", SCHEMA, "-n", "4", LOOPS, "--json", cache_dir=cache)).json()
    assert short["finish_reason"] == "length" and short["generated_tokens"] == 4
    ended = ok(run("ask", "-s", SCHEMA, "-n", "96", "--repeat-penalty", "1.2", LOOPS, "--json", cache_dir=cache)).json()
    assert ended["finish_reason"] == "stop" and ended["generated_tokens"] < 96
    stopped = ok(run("ask", "-s", SCHEMA, "--stop", "License", "--stop", "zzz", LOOPS, "--json",
                     cache_dir=cache)).json()
    assert stopped["finish_reason"] == "stop" and "License" not in stopped["answer"]
    assert stopped["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"  # one name for the model everywhere
    listing = ok(run("ls", "--json", cache_dir=cache)).json()
    assert listing["schemas"][0]["variants"][0]["model"] == stopped["model"]

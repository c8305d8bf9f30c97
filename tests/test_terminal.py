"""`pc` in a terminal, as a person sees it: real processes under a pseudo-terminal (stdin, stdout
and stderr all the terminal), their output rendered by a terminal emulator (pyte) and the screen's
lines asserted on, with snapshots taken while they run. Real default model.

What a person must see: the answer as plain text (not one token per line under a redrawn bar); a
progress bar only while states are computed, with a correct total and the time left, gone before
the answer starts; the one-line timing summary after the answer; Ctrl-C ending in one line with
the terminal as it was; every `--help` on one screen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import license_excerpt
from .support import terminal
from .support.pc_process import ok, pc
from .support.terminal import BAR, words

QUESTION = "What does this license text say about copies?"
ETA = r"\d+:\d\d:\d\d|-:--:--"  # rich's time-remaining column
TIMING = r"^\[[\d,]+ cached tokens, [\d,]+ computed; first token [\d.]+ m?s, total [\d.]+ m?s"


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> Path:
    """About 700 tokens of real text."""
    path = tmp_path_factory.mktemp("doc") / "gpl-part.txt"
    path.write_text(license_excerpt("GPL-2.txt", 3000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def expected(doc, tmp_path_factory) -> dict:
    """The answer and the compile's module tokens, through pipes (no terminal): what the screen must show."""
    cache = tmp_path_factory.mktemp("cache")
    report = ok(pc("compile", "-f", doc, "--json", cache_dir=cache)).json()
    answer = ok(pc("ask", "-f", doc, "-n", "40", QUESTION, "--json", cache_dir=cache)).json()
    return {"answer": answer["answer"], "tokens": sum(m["tokens"] for m in report["modules"]), "cache": cache}


def answer_lines(screen: terminal.Screen, answer: str) -> list[str]:
    """The screen lines holding the answer (which must be on the screen, whole)."""
    assert words(answer) in words(screen.text), f"answer {answer!r} not on the screen:\n{screen.text}"
    first = words(answer).split()[0]
    start = next(i for i, line in enumerate(screen.lines) if line.startswith(first))
    n = next((i for i, line in enumerate(screen.lines[start:]) if line.startswith("[")), len(screen.lines) - start)
    return screen.lines[start:start + n]


def test_a_cached_answer_reads_as_plain_text_then_one_timing_line(doc, expected) -> None:
    screen = terminal.run("ask", "-f", doc, "-n", "40", QUESTION, cache=expected["cache"])
    assert screen.code == 0, screen.text
    lines = answer_lines(screen, expected["answer"])
    assert len(lines) <= len(expected["answer"]) // 80 + 2  # wrapped at the screen's width, not a token a line
    assert re.match(TIMING, screen.lines[-1]), screen.lines[-1]
    assert screen.lines[-2] in lines  # the timing line comes right after the answer
    assert not screen.seen("computing") and not screen.seen(BAR)  # nothing computed: no bar ever
    assert "Traceback" not in screen.text and not screen.cursor_hidden


def test_compiling_on_demand_shows_a_bar_with_the_total_and_time_left_then_only_the_answer(
        doc, expected, tmp_path) -> None:
    screen = terminal.run("ask", "-f", doc, "-n", "40", QUESTION, cache=tmp_path / "cache")
    assert screen.code == 0, screen.text
    bars = screen.seen(rf"computing .*{BAR}.* [\d,]+/[\d,]+ tokens")
    assert bars, "no progress bar while computing"
    totals = {int(m.group(1).replace(",", "")) for b in bars if (m := re.search(r"/([\d,]+) tokens", b))}
    assert totals == {expected["tokens"]}  # the tokens computed: every module's
    assert all(re.search(ETA, b) for b in bars)
    # the bar is gone: the screen is the reason, the answer, what was compiled, the timings
    assert screen.lines[0].startswith("not compiled yet: computing 2 modules")
    assert BAR not in screen.text and not any(line.startswith("computing") for line in screen.lines)
    answer_lines(screen, expected["answer"])
    assert screen.lines[-2].startswith("compiled 2 module(s) on demand")
    assert re.match(TIMING, screen.lines[-1])
    assert not screen.cursor_hidden


def test_no_cache_shows_the_prompt_being_computed_then_the_same_answer(doc, expected) -> None:
    screen = terminal.run("ask", "-f", doc, "-n", "40", "--no-cache", QUESTION, cache=expected["cache"])
    assert screen.code == 0, screen.text
    assert screen.seen(rf"computing the prompt .*{BAR}.*/[\d,]+ tokens")
    assert BAR not in screen.text
    answer_lines(screen, expected["answer"])  # one module and the question: the same greedy answer
    assert re.match(r"^\[no cache, [\d,]+ computed; first token", screen.lines[-1]), screen.lines[-1]


def test_compile_shows_a_bar_then_a_table_of_what_it_stored(doc, expected, tmp_path) -> None:
    screen = terminal.run("compile", "-f", doc, cache=tmp_path / "cache")
    assert screen.code == 0, screen.text
    assert screen.seen(rf"computing .*{BAR}.* [\d,]+/{expected['tokens']:,} tokens")
    assert BAR not in screen.text
    assert screen.lines[0] == f"not compiled yet: computing 2 modules ({expected['tokens']} tokens)"
    assert re.match(r"^\s*computed\s+\(schema\)\s+\d+ tokens", screen.lines[1])
    assert re.match(r"^\s*computed\s+gpl-part\.txt\s+\d+ tokens", screen.lines[2])
    assert screen.lines[3].startswith(f"compiled 'gpl-part.txt': 2 computed, 0 reused; {expected['tokens']} tokens, ")
    assert len(screen.lines) == 4


def test_ctrl_c_while_computing_ends_in_one_line_and_leaves_the_terminal_as_it_was(tmp_path) -> None:
    long_doc = tmp_path / "gpl.txt"
    long_doc.write_text(license_excerpt("GPL-2.txt", 18000), encoding="utf-8")  # ~4,000 tokens: long enough
    sent = []

    def interrupt(lines, child) -> None:
        if not sent and any(BAR in line for line in lines):
            child.sendintr()  # Ctrl-C, as the terminal sends it
            sent.append(True)

    screen = terminal.run("ask", "-f", long_doc, QUESTION, cache=tmp_path / "cache", on_frame=interrupt)
    assert sent, "the bar never showed"
    assert screen.code == 130, screen.text
    assert screen.lines[-1] == "pc: interrupted"
    assert BAR not in screen.text and "Traceback" not in screen.text
    assert not screen.cursor_hidden  # the bar hid the cursor while it ran; it is back
    assert not list((tmp_path / "cache").rglob(".tmp-*"))  # no half-written file


@pytest.mark.parametrize("command", ["", "ask", "compile", "inspect", "ls", "verify", "gc", "rm", "path", "plan",
                                     "bench", "serve", "batch", "push", "pull"])
def test_every_help_fits_one_screen_with_examples_and_a_docs_pointer(command) -> None:
    screen = terminal.run(*([command] if command else []), "--help", cols=80, rows=60)
    assert screen.code == 0
    printed = screen.raw.decode().replace("\r\n", "\n").rstrip("\n").split("\n")
    assert max(len(line) for line in printed) <= 80  # nothing the terminal had to wrap
    assert len(printed) <= 26, f"{len(printed)} lines"
    assert sum(line.startswith("    pc ") or line.startswith("  pc ") for line in printed) >= 1  # an example
    assert re.search(r"docs/[\w.-]+\.md", screen.text)

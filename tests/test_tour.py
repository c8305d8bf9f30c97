"""README's short tour, as written: its commands are read out of README.md (so the two cannot drift)
and run in order in a fresh cache, as a shell would, each answer checked against what the text
says; the slow one (the 4,000-token `--no-cache` baseline) is only checked for its order: every
schema compiled before its first question.
Real default model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SLOW = ("--no-cache",)  # the 4,000-token baseline: measured once by hand (README), not run here
# what the default model answers to the tour's questions: the README promises right answers
ANSWERS = {
    "Who holds the copyright?": "Regents of the University of California",
    "Does this license give any warranty?": "No",
    "What is the program in the example called?": "Gnomovision",
    "What is the name of the license?": "GNU General Public License",
    "Which city will I stay in?": "Lisbon",
}


def tour() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- tests/test_tour\.py[^\n]*\n```sh\n(.*?)\n```", text, re.S)
    assert block, "README.md has no tour block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def commands(line: str) -> list[str]:
    """The `pc` commands of a tour line, comments dropped (`a; b` and pipes kept as the shell runs them)."""
    code = re.sub(r"\s+#.*$", "", line)
    return [c.strip() for c in code.split(";") if c.strip()]


def test_every_schema_is_compiled_before_its_first_question() -> None:
    compiled: set[str] = set()
    asked = 0
    for line in tour():
        for command in commands(line):
            if m := re.search(r"pc compile (\S+\.xml)", command):
                compiled.add(m.group(1))
            if m := re.search(r"pc ask .*-s (\S+\.xml)", command):
                assert m.group(1) in compiled, f"{command!r} asks before `pc compile {m.group(1)}`"
                asked += 1
    assert asked >= 5


def test_the_tour_runs_as_written(tmp_path) -> None:
    lines = tour()
    assert lines[0] == ". .venv/bin/activate"
    env = dict(os.environ, PC_CACHE_DIR=str(tmp_path / "cache"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PC_MODEL", None)
    ran = []
    for line in lines[1:]:
        if any(s in line for s in SLOW):
            continue
        code = "; ".join(commands(line))
        out = subprocess.run(["bash", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, f"{code}: exit {out.returncode}: {out.stderr}"
        assert "Traceback" not in out.stderr
        ran.append((code, out.stdout, out.stderr))
        for question, expected in ANSWERS.items():
            if f'"{question}"' in code and "--json" not in code:
                assert expected in out.stdout, f"{question!r}: {out.stdout!r}"
        if "--json" in code:
            import json

            answer = json.loads(out.stdout)["answer"]
            question = next(q for q in ANSWERS if q in line)
            assert ANSWERS[question] in answer, answer
    first, second = ran[0], ran[1]
    assert "compiled 2 module(s) on demand" in first[2]  # the file, computed the first time
    assert second[2] == ""  # the second question about it: from the cache, nothing to say
    assert len(ran) >= 8


@pytest.mark.parametrize("question", sorted(ANSWERS))
def test_the_checked_answers_are_the_tour_s_questions(question) -> None:
    assert any(question in line for line in tour())

"""`pc batch`: JSON lines in, JSON lines out in the same order (each what `pc ask --json`
prints), a failed line reported in its own line without stopping the rest, the exit code, and
stdout carrying only the answers while the progress bar goes to stderr (a terminal)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from pathlib import Path

import pytest

from .conftest import write_schema
from .support.pc_process import PC, one_line_error, ok, pc

FACTS = """
<schema name="facts">
  <system>Answer in one short sentence.</system>
  <user>
    <module name="color">The secret color is blue.</module>
    <module name="city">The secret city is <parameter name="name" length="6" scaffold="Paris"/>.</module>
  </user>
</schema>
"""


@pytest.fixture
def schema(tmp_path) -> Path:
    return write_schema(tmp_path / "facts", FACTS)


def lines_of(schema: Path) -> list[dict]:
    s = str(schema)
    return [
        {"schema": s, "question": "What is the secret color?", "max_tokens": 8},
        {"schema": s, "question": "Which city?", "modules": ["city"], "params": {"name": "Oslo"}, "max_tokens": 8},
        {"schema": s, "question": "Weather?", "modules": ["weather"]},  # no such module
        {"schema": s, "question": "Name the city.", "modules": ["city"], "params": ["name=Rome"], "max_tokens": 8,
         "temperature": 0.7, "seed": 3},
    ]


def jsonl(lines: list) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def test_answers_in_order_a_failed_line_reported_and_exit_9(schema, tmp_path):
    lines = lines_of(schema) + ["not json", {"schema": str(schema), "question": "hi", "max_tokens": "many"},
                                {"file": str(tmp_path / "missing.txt"), "question": "What is it about?"}]
    src = tmp_path / "in.jsonl"
    src.write_text(jsonl(lines[:2]) + "\n" + jsonl(lines[2:]), encoding="utf-8")  # a blank line is skipped
    run = pc("batch", src)
    assert run.code == 9, run.err
    out = [json.loads(line) for line in run.out.splitlines()]
    assert len(out) == len(lines)
    assert [("error" in o) for o in out] == [False, False, True, False, True, True, True]
    assert out[2] == {"line": 4, "error": out[2]["error"], "exit_code": 3} and "weather" in out[2]["error"]
    assert out[4]["line"] == 6 and out[5]["line"] == 7 and "max_tokens" in out[5]["error"]
    assert "missing.txt" in out[6]["error"] and out[6]["exit_code"] == 3
    assert "Traceback" not in run.err and run.err.strip().splitlines()[-1] == \
        "pc: 4 of 7 lines failed (each says why in its output line)"
    # each answer is the one `pc ask --json` gives for the same request
    alone = ok(pc("ask", "--json", "-n", "8", "-s", schema, "-m", "city", "-p", "name=Oslo", "Which city?")).json()
    assert set(out[1]) == set(alone)
    for key in ("answer", "cached_tokens", "computed_tokens", "generated_tokens", "modules", "finish_reason"):
        assert out[1][key] == alone[key], key
    seeded = ok(pc("ask", "--json", "-n", "8", "-t", "0.7", "--seed", "3", "-s", schema, "-m", "city", "-p",
                   "name=Rome", "Name the city.")).json()
    assert out[3]["answer"] == seeded["answer"]


def test_a_line_about_text_files_answers_as_pc_ask_f(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("The meeting about the budget is on Friday at noon, in room 4.\n", encoding="utf-8")
    lines = [{"file": str(notes), "question": "When is the meeting?", "max_tokens": 8, "stop": ["\n"]},
             {"file": [str(notes)], "system": "Answer briefly.", "question": "Which room?", "max_tokens": 8,
              "repeat_penalty": 1.2},
             {"file": str(notes), "schema": "x.xml", "question": "Which room?"}]
    run = pc("batch", "-", stdin=jsonl(lines))
    assert run.code == 9, run.err
    out = [json.loads(line) for line in run.out.splitlines()]
    alone = ok(pc("ask", "--json", "-n", "8", "--stop", "\n", "-f", notes, "When is the meeting?")).json()
    assert out[0]["answer"] == alone["answer"]
    assert alone["cached_tokens"] > 0 and not alone["compiled"]  # the batch stored the file's states
    system = ok(pc("ask", "--json", "-n", "8", "--repeat-penalty", "1.2", "-f", notes, "--system",
                   "Answer briefly.", "Which room?")).json()
    assert out[1]["answer"] == system["answer"]
    assert out[2]["exit_code"] == 3 and "use one" in out[2]["error"]


def test_all_lines_answered_from_stdin_exit_0(schema):
    run = ok(pc("batch", "-", stdin=jsonl([lines_of(schema)[0], lines_of(schema)[1]])))
    out = [json.loads(line) for line in run.out.splitlines()]
    assert len(out) == 2 and all(o["answer"] and o["mode"] == "modular" for o in out)
    assert run.err == ""


def test_a_missing_file_is_one_line_and_exit_3(tmp_path):
    assert "cannot read" in one_line_error(pc("batch", tmp_path / "absent.jsonl"), 3)


def test_progress_goes_to_stderr_and_stdout_only_has_answers(schema, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(jsonl(lines_of(schema)), encoding="utf-8")
    master, slave = pty.openpty()  # stderr is a terminal, stdout a pipe: as in `pc batch x > out.jsonl`
    proc = subprocess.Popen(PC + ["batch", str(src)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=dict(os.environ, COLUMNS="100"))
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 600)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not data:
            break
        seen += data
    out = proc.stdout.read().decode()
    assert proc.wait(600) == 9
    os.close(master)
    assert [bool(json.loads(line)) for line in out.splitlines()] == [True] * 4  # JSON lines, nothing else
    terminal = seen.decode("utf-8", "replace")
    assert "answered" in terminal and "/4" in terminal  # the bar: its count of lines
    assert "1 of 4 lines failed" in terminal


def test_pc_batch_help_names_the_fields():
    run = subprocess.run(PC + ["batch", "--help"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, COLUMNS="200"))
    assert run.returncode == 0 and "schema" in run.stdout and "question" in run.stdout

"""Hostile and malformed input through real `pc` processes (the cases in hostile_inputs.py): one
line on stderr naming the problem, the documented exit code, no traceback, nothing on stdout and
nothing written to the cache. How long each takes is measured by scripts/fault_table.py, not
asserted here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .support import hostile_inputs

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, hostile_inputs.Case]:
    return {c.name: c for c in hostile_inputs.cases(tmp_path_factory.mktemp("hostile") / "inputs")}


def test_the_case_list_is_complete(table: dict) -> None:
    assert list(table) == list(hostile_inputs.NAMES)


@pytest.mark.parametrize("name", hostile_inputs.NAMES)
def test_hostile_input_ends_in_one_clean_line(name: str, table: dict, tmp_path: Path) -> None:
    case = table[name]
    cache = tmp_path / "cache"
    proc = hostile_inputs.run(case, cache)
    assert "Traceback" not in proc.err, proc.err
    assert proc.code == case.code, f"exit {proc.code}: {proc.err}"
    assert proc.out == ""
    assert len(proc.err_lines) == 1 and proc.err_lines[0].startswith("pc: "), proc.err
    for words in case.says:
        assert words in proc.err, (words, proc.err)
    line = proc.err_lines[0]
    assert len(line) <= hostile_inputs.MAX_LINE, len(line)  # length-capped
    assert not UNSAFE.search(line), line  # control, bidi and invisible characters escaped
    assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))  # nothing written

"""The overlap record: appends from several processes at once (none lost, none torn), compaction to
the last lines, tolerance of garbled and torn lines; and the strict reader for users' trace files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from promptcache_cli.store.overlap_log import LINE_BYTES, Observation, OverlapLog, OverlapLogError, TraceError, read_trace

WRITER = """
import sys
from promptcache_cli.store.overlap_log import OverlapLog
folder, who, count, max_lines = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
log = OverlapLog(folder, max_lines=max_lines)
for i in range(count):
    log.append(tokens=1_000_000 * who + i, overlap=i)
"""

COMPACTOR = """
import os, sys, time
from promptcache_cli.store.overlap_log import OverlapLog
log = OverlapLog(sys.argv[1])
while not os.path.exists(sys.argv[2]):
    log.compact()
    time.sleep(0.002)
"""


def run_writers(folder: Path, *, writers: int, count: int, max_lines: int) -> None:
    """``writers`` processes appending ``count`` records each, all at once. Writer w's i-th record
    is tokens = 1e6 * w + i, overlap = i."""
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(w), str(count), str(max_lines)])
             for w in range(writers)]
    for p in procs:
        assert p.wait(timeout=300) == 0


def by_writer(records: list[Observation]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in records:
        out.setdefault(r.tokens // 1_000_000, []).append(r.overlap)
    return out


def raw_lines(log: OverlapLog) -> list[str]:
    return log.path.read_text(encoding="utf-8").splitlines()


def test_append_and_read_back(tmp_path):
    log = OverlapLog(tmp_path / "prefix" / "abc")  # folders are created
    assert log.read() == []
    log.append(tokens=500, overlap=300, time=1_700_000_000.5)
    log.append(tokens=40, overlap=40)
    first, second = log.read()
    assert first == Observation(500, 300, 1_700_000_000.5)
    assert (second.tokens, second.overlap) == (40, 40) and second.time > 1_700_000_000
    assert json.loads(raw_lines(log)[0]) == {"tokens": 500, "overlap": 300, "time": 1_700_000_000.5}


def test_concurrent_appends_from_several_processes_lose_and_tear_nothing(tmp_path):
    log = OverlapLog(tmp_path)
    run_writers(tmp_path, writers=4, count=150, max_lines=10_000)
    lines = raw_lines(log)
    assert len(lines) == 600
    assert all(json.loads(line)["tokens"] >= 0 for line in lines)  # every line whole
    assert by_writer(log.read()) == {w: list(range(150)) for w in range(4)}  # each writer's records, in order


def test_compaction_keeps_the_last_lines(tmp_path):
    log = OverlapLog(tmp_path, max_lines=20)
    for i in range(100):
        log.append(tokens=i, overlap=i)
    assert [r.overlap for r in log.read()] == list(range(80, 100))
    assert log.path.stat().st_size <= 20 * LINE_BYTES + 100  # compacted while appending
    assert len(raw_lines(log)) < 100
    log.compact()
    assert [json.loads(line)["overlap"] for line in raw_lines(log)] == list(range(80, 100))
    assert not list(tmp_path.glob(".tmp-*"))


def test_appends_racing_a_compacting_process_are_never_lost(tmp_path):
    """A line appended to a file that compaction is replacing would vanish with the old file."""
    stop = tmp_path / "stop"
    compactor = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(tmp_path), str(stop)])
    try:
        run_writers(tmp_path, writers=4, count=120, max_lines=10_000)
    finally:
        stop.touch()
        assert compactor.wait(timeout=300) == 0
    assert by_writer(OverlapLog(tmp_path).read()) == {w: list(range(120)) for w in range(4)}


def test_compaction_while_several_processes_append_keeps_the_last_lines(tmp_path):
    """Compaction keeps a suffix of the appends in lock order, so each writer's surviving records
    are its last ones without gaps; a line appended to a file being replaced would leave a gap."""
    log = OverlapLog(tmp_path, max_lines=50)
    run_writers(tmp_path, writers=4, count=200, max_lines=50)  # 800 appends: several compactions
    assert all(json.loads(line)["tokens"] >= 0 for line in raw_lines(log))
    kept = log.read()
    assert len(kept) == 50
    for seen in by_writer(kept).values():
        assert seen == list(range(200 - len(seen), 200))


def test_garbled_and_torn_lines_are_skipped(tmp_path):
    log = OverlapLog(tmp_path)
    log.path.write_bytes(
        b'{"tokens": 10, "overlap": 5, "time": 1}\n'
        b"not json\n"
        b'\xff\xfe\x00garbage\n'
        b'{"tokens": 3, "overlap": 9, "time": 1}\n'  # overlap > tokens
        b'[1, 2]\n'
        b'{"tokens": true, "overlap": 0}\n'
        + b"[" * 100_000 + b"\n"  # deeper than the JSON parser goes
        + b'{"tokens": 20, "overlap": 7, "time": 2}\n'
        b'{"tokens": 30, "overl'  # a writer killed mid-line
    )
    assert [(r.tokens, r.overlap) for r in log.read()] == [(10, 5), (20, 7)]
    log.append(tokens=40, overlap=8)  # starts on a line of its own, not glued to the torn one
    assert [(r.tokens, r.overlap) for r in log.read()] == [(10, 5), (20, 7), (40, 8)]
    log.compact()
    assert [json.loads(line)["tokens"] for line in raw_lines(log)] == [10, 20, 40]


@pytest.mark.parametrize("tokens, overlap", [(10, 11), (-1, 0), (10, -2), (True, 0), (10.0, 3), (2**40, 3)])
def test_append_refuses_impossible_records(tmp_path, tokens, overlap):
    with pytest.raises(ValueError):
        OverlapLog(tmp_path).append(tokens=tokens, overlap=overlap)
    assert not (tmp_path / "overlap.jsonl").exists()


def test_an_unwritable_folder_is_a_named_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OverlapLogError, match="cannot record"):
        OverlapLog(blocker / "sub").append(tokens=5, overlap=1)


# -- trace files ----------------------------------------------------------------------------


def test_read_trace(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"tokens": 500, "overlap": 300}\n\n{"overlap": 0, "tokens": 9, "time": 5, "note": "x"}\n')
    assert read_trace(path) == [Observation(500, 300), Observation(9, 0, 5.0)]
    path.write_text("")
    assert read_trace(path) == []


@pytest.mark.parametrize("line, message", [
    (b'{"tokens": 5, "overlap": 3', "not JSON (Expecting ',' delimiter at column 27)"),
    (b"[5, 3]", 'expected an object like {"tokens": N, "overlap": D}'),
    (b'{"tokens": 5}', "missing 'overlap'"),
    (b'{"tokens": 5.5, "overlap": 3}', "'tokens' must be an integer from 0 to 2147483648, not 5.5"),
    (b'{"tokens": 5, "overlap": -3}', "'overlap' must be an integer from 0 to 2147483648, not -3"),
    (b'{"tokens": 5, "overlap": "3"}', "'overlap' must be an integer from 0 to 2147483648, not \"3\""),
    (b'{"tokens": 5, "overlap": false}', "'overlap' must be an integer from 0 to 2147483648, not false"),
    (b'{"tokens": 3, "overlap": 5}', "'overlap' (5) is larger than 'tokens' (3)"),
    (b'{"tokens": 5, "overlap": 3, "time": "noon"}', "'time' must be a Unix time in seconds, not \"noon\""),
    (b'{"tokens": 5, "overlap": 3, "time": NaN}', "'time' must be a Unix time in seconds, not NaN"),
    (b'{"tokens": ' + b"9" * 5000 + b', "overlap": 3}', "not a request: a number with too many digits"),
    (b"[" * 100_000, "not a request: nested too deeply"),
    (b'{"tokens": 5, "overlap": 3, "x": "\xff"}', "not UTF-8 text"),
])
def test_a_bad_trace_line_is_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "trace.jsonl"
    path.write_bytes(b'{"tokens": 1, "overlap": 1}\n\n' + line + b"\n")
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert str(caught.value) == f"{path}:3: {message}"


def test_an_unreadable_trace_is_named(tmp_path):
    with pytest.raises(TraceError, match=r"missing\.jsonl: cannot read: No such file or directory"):
        read_trace(tmp_path / "missing.jsonl")
    with pytest.raises(TraceError, match="cannot read: Is a directory"):
        read_trace(tmp_path)

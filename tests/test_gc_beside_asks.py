"""Housekeeping never fails an answer (issue 20): `pc gc --max-size 1` in a loop beside eight
concurrent `pc ask` (modular and prefix mode, on an empty cache and a compiled one), with no grace
period, so the asks' leases on the files they read or just wrote are all that protects them;
every ask must exit 0 with the answer of an undisturbed cache. PC_GC_RACE_ROUNDS sets how many
rounds (default 4 here; scripts/fault_table.py runs 20 and reports the count)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .support import faults

QUESTION = "Which license is the second document?"
REQUESTS = [(), ("--mode", "prefix"), ("-m", "bsd", "-m", "apache"), ()]
ROUNDS = int(os.environ.get("PC_GC_RACE_ROUNDS", "4"))
THREADS = {"PC_THREADS": "1"}  # eight asks and a gc loop on a shared machine


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("docs")
    schema = faults.write_docs(root / "docs", 1)
    out = {}
    for r in set(REQUESTS):
        proc = faults.run(["ask", QUESTION, "-s", schema, "-n", "8", "--json", *r], cache=root / "ref", **THREADS)
        assert proc.code == 0, proc.err
        out[r] = json.loads(proc.out)["answer"]
    return schema, out


def test_gc_loop_beside_eight_asks_never_fails_one(refs: tuple[Path, dict], tmp_path: Path) -> None:
    schema, answers = refs
    evicted = 0
    for i in range(ROUNDS):
        cache = tmp_path / f"cache-{i}"
        if i % 2:  # every other round starts from a compiled cache: the asks read what gc evicts
            assert faults.run(["compile", schema], cache=cache, **THREADS).code == 0
        race = faults.gc_beside_asks(QUESTION, schema, cache, REQUESTS, **THREADS)
        for r, proc in race.asks:
            assert proc.code == 0, (i, r, proc.code, proc.err)
            assert "Traceback" not in proc.err and "damaged" not in proc.err, (i, r, proc.err)
            assert json.loads(proc.out)["answer"] == answers[r], (i, r)
        assert race.gcs and all(g.code == 0 and "Traceback" not in g.err for g in race.gcs), \
            [g.err for g in race.gcs if g.code]
        evicted += race.evicted
        assert faults.run(["verify"], cache=cache).code == 0
    assert evicted > 0  # the loop did evict while asks ran: the race was run, not avoided


def test_default_grace_period_keeps_what_an_ask_just_used(refs: tuple[Path, dict], tmp_path: Path) -> None:
    schema, answers = refs
    cache = tmp_path / "cache"
    proc = faults.run(["ask", QUESTION, "-s", schema, "-n", "8", "--json"], cache=cache, **THREADS)
    assert json.loads(proc.out)["answer"] == answers[()]
    files = faults.module_files(cache)
    gc = faults.run(["gc", "--max-size", "1", "--json"], cache=cache)
    assert gc.code == 0, gc.err
    report = json.loads(gc.out)
    assert report["removed"] == [] and len(report["skipped"]) == len(files), report
    assert all("used in the last 60 s" in s["reason"] for s in report["skipped"]), report
    assert faults.module_files(cache) == files
    gc = faults.run(["gc", "--max-size", "1", "--grace", "0s", "--json"], cache=cache)
    assert len(json.loads(gc.out)["removed"]) == len(files) and faults.module_files(cache) == []

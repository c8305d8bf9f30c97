"""Crash and concurrency safety with real `pc` processes: kill -9 during compile, two compiles
at once, asks during a compile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptcache_cli.store import cache_file

from .conftest import license_excerpt, write_schema

SCHEMA = """
<schema name="docs">
  <system>You answer questions about the documents, quoting them.</system>
  <user>
    <module name="bsd" src="bsd.txt"/>
    <module name="mpl" src="mpl.txt"/>
    <module name="artistic" src="artistic.txt"/>
    <module name="apache" src="apache.txt"/>
  </user>
</schema>"""


def _files(version: str) -> dict[str, str]:
    return {
        "bsd.txt": license_excerpt("BSD.txt", 1200) + f"\nRevision {version}.",
        "mpl.txt": license_excerpt("MPL-2.0.txt", 1200),
        "artistic.txt": license_excerpt("Artistic.txt", 1200),
        "apache.txt": license_excerpt("Apache-2.0.txt", 1200),
    }


def pc(*args: str, cache: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PC_CACHE_DIR=str(cache))
    return subprocess.Popen([sys.executable, "-m", "promptcache_cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run(*args: str, cache: Path) -> tuple[int, str, str]:
    p = pc(*args, cache=cache)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "modules").rglob("*.pcm"))


def assert_all_intact(cache: Path) -> None:
    for p in cache_files(cache):
        cache_file.verify(p).close()


def test_kill_9_during_compile_leaves_old_entries_intact_and_recovers(tmp_path):
    cache = tmp_path / "cache"
    schema = write_schema(tmp_path / "s", SCHEMA, _files("1"))
    code, out, err = run("compile", str(schema), "--json", cache=cache)
    assert code == 0, err
    old = set(cache_files(cache))
    question = "What does the first document say about warranty?"
    code, ref, err = run("ask", question, "-s", str(schema), "-n", "12", cache=cache)
    assert code == 0, err

    schema_b = write_schema(tmp_path / "s2", SCHEMA, _files("2"))  # every module after bsd changes
    for delay in (0.8, 2.0, 3.5):
        p = pc("compile", str(schema_b), cache=cache)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        assert old <= set(cache_files(cache))  # nothing of the old version lost
        assert_all_intact(cache)  # every visible cache file is whole (no partial file is ever visible)

    code, again, err = run("ask", question, "-s", str(schema), "-n", "12", cache=cache)
    assert code == 0 and again == ref and "damaged" not in err  # old version still answers from its cache
    code, out, err = run("compile", str(schema_b), "--json", cache=cache)
    assert code == 0, err
    assert {m["status"] for m in json.loads(out)["modules"]} <= {"computed", "reused"}
    assert_all_intact(cache)


def test_two_compiles_at_once_both_succeed_and_share_the_work(tmp_path):
    cache = tmp_path / "cache"
    schema = write_schema(tmp_path / "s", SCHEMA, _files("1"))
    a = pc("compile", str(schema), "--json", cache=cache)
    b = pc("compile", str(schema), "--json", cache=cache)
    results = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, results
    reports = [json.loads(out)["modules"] for out, _ in results]
    names = {m["module"] for m in reports[0]}
    computed = [m["module"] for r in reports for m in r if m["status"] == "computed"]
    assert sorted(computed) == sorted(names)  # each module computed exactly once, by one of them
    assert len(cache_files(cache)) == len(names)
    assert_all_intact(cache)


@pytest.mark.parametrize("n_asks", [3])
def test_asks_during_a_compile_read_a_consistent_cache(tmp_path, n_asks):
    cache = tmp_path / "cache"
    schema = write_schema(tmp_path / "s", SCHEMA, _files("1"))
    assert run("compile", str(schema), cache=cache)[0] == 0
    question = "Which license is the second document?"
    code, ref, err = run("ask", question, "-s", str(schema), "-n", "12", cache=cache)
    assert code == 0, err
    schema_b = write_schema(tmp_path / "s2", SCHEMA, _files("2"))
    compiling = pc("compile", str(schema_b), cache=cache)
    asks = [pc("ask", question, "-s", str(schema), "-n", "12", cache=cache) for _ in range(n_asks)]
    answers = [p.communicate(timeout=300) for p in asks]
    compiling.communicate(timeout=300)
    assert compiling.returncode == 0
    for p, (out, err) in zip(asks, answers, strict=True):
        assert p.returncode == 0, err
        assert out == ref and "damaged" not in err
    assert_all_intact(cache)

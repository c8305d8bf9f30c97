"""One real `pc` process per documented exit code (README's table, errors.EXIT_CODES): the code,
and for every failure exactly one line on stderr, never a traceback, nothing on stdout."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from promptcache_cli.store import cache_file
from promptcache_cli import errors

from .support import faults

README = Path(__file__).resolve().parent.parent / "README.md"
GPL = Path(__file__).resolve().parent.parent / "schemas" / "gpl-manual.xml"
FACTS = """<schema name="facts"><system>Answer briefly.</system><user><module name="fact">The secret color is blue.
The secret animal is a cat.</module></user></schema>
"""


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def facts(tmp: Path) -> Path:
    return write(tmp, "facts.xml", FACTS)


def internal_error(tmp: Path, **env: str) -> faults.Proc:
    """A bug stand-in: `pc path` whose cache-dir lookup raises an exception pc does not know."""
    code = ("import sys; from promptcache_cli.store import files as cache_store; from promptcache_cli.cli import app as cli; "
            "cache_store.default_cache_dir = lambda: 1 / 0; sys.argv = ['pc', 'path']; cli.main()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE,
                         env={k: v for k, v in faults.env_for(None, **env).items() if k != "PC_CACHE_DIR"})
    return faults.finish(p, time.perf_counter())


def forged_refused_state(tmp: Path) -> tuple[Path, Path]:
    """A compiled schema whose module file passes every check of pc's (checksums, key, model,
    layer count, KV types, positions) but holds a state llama.cpp refuses to load."""
    cache = tmp / "cache"
    schema = facts(tmp)
    assert faults.run(["compile", schema], cache=cache).code == 0
    for path in faults.module_files(cache):
        f = cache_file.read(path)
        module = f.header["module"]
        f.close()
        if module == "fact":
            faults.forge_refused_state(path)
            cache_file.verify(path).close()  # every checksum is right
    return schema, cache


def backend_failure(tmp: Path) -> faults.Proc:
    """A stand-in for llama.cpp failing mid-computation: `pc ask --no-cache` whose llama_decode
    returns an error code (-1, as llama.cpp does for a batch it cannot process)."""
    schema = facts(tmp)
    code = ("import sys; from promptcache_cli.cli import app as cli; from promptcache_cli.llama import bindings; "
            "bindings.C.llama_decode = lambda ctx, batch: -1; "
            f"sys.argv = ['pc', 'ask', '--no-cache', '-s', {str(schema)!r}, 'hi']; cli.main()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=faults.env_for(tmp / "cache"))
    return faults.finish(p, time.perf_counter())


def interrupted(tmp: Path) -> faults.Proc:
    """Ctrl-C while `pc ask` computes a 4,000-token document on demand."""
    t0 = time.perf_counter()
    p = faults.start(["ask", "Can I charge a fee?", "-s", GPL], cache=tmp / "cache")
    assert faults.wait_for_llama(p.pid)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    return faults.finish(p, t0)


def damaged_verify(tmp: Path) -> faults.Proc:
    cache = tmp / "cache"
    assert faults.run(["compile", facts(tmp)], cache=cache).code == 0
    victim = faults.module_files(cache)[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    return faults.run(["verify"], cache=cache)


def full_stdout(tmp: Path) -> faults.Proc:
    """`pc ask` whose answer goes to a full disk (/dev/full: every write fails with ENOSPC)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    t0 = time.perf_counter()
    with open("/dev/full", "wb") as full:
        p = subprocess.run(faults.PC + ["ask", "--no-cache", "-n", "4", "-s", str(facts(tmp)), "What color?"],
                           stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE, timeout=faults.TIMEOUT,
                           env=faults.env_for(tmp / "cache"))
    return faults.Proc(p.returncode, "", p.stderr.decode("utf-8", "replace"), time.perf_counter() - t0, 0)


def unreachable_store(tmp: Path) -> faults.Proc:
    """`pc ls --remote` when nothing listens at the store's endpoint (a free loopback port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return faults.run(["ls", "--remote", "s3://pc-nowhere/x"], cache=tmp / "cache",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
                      AWS_CONFIG_FILE=str(tmp / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"))


def not_a_dir(tmp: Path) -> Path:
    return write(tmp, "file", "not a folder\n")


CASES: dict[str, tuple[int, Callable[[Path], faults.Proc]]] = {
    "success": (errors.EXIT_OK, lambda tmp: faults.run(["path"], cache=tmp / "cache")),
    "internal error": (errors.EXIT_INTERNAL, internal_error),
    "unknown option": (errors.EXIT_USAGE, lambda tmp: faults.run(["ask", "hi", "-s", facts(tmp), "--bogus"],
                                                                 cache=tmp / "cache")),
    "bad PC_THREADS": (errors.EXIT_USAGE, lambda tmp: faults.run(["ask", "hi", "-s", facts(tmp), "--no-cache"],
                                                                 cache=tmp / "cache", PC_THREADS="many")),
    "malformed schema": (errors.EXIT_INPUT, lambda tmp: faults.run(
        ["ask", "hi", "-s", write(tmp, "bad.xml", "<schema name='b'>")], cache=tmp / "cache")),
    "not a model": (errors.EXIT_MODEL, lambda tmp: faults.run(
        ["ask", "hi", "-s", facts(tmp), "--model", write(tmp, "m.gguf", "not a model")], cache=tmp / "cache")),
    "cache cannot be written": (errors.EXIT_CACHE, lambda tmp: faults.run(["compile", facts(tmp)],
                                                                          cache=not_a_dir(tmp))),
    "damaged cache file (pc verify)": (errors.EXIT_CACHE, damaged_verify),
    "prompt longer than the context": (errors.EXIT_TOO_LONG, lambda tmp: faults.run(
        ["ask", "-", "-s", facts(tmp)], cache=tmp / "cache", stdin=b"why " * 20_000)),
    "llama.cpp fails while computing": (errors.EXIT_BACKEND, backend_failure),
    "stdout on a full disk": (errors.EXIT_OUTPUT, full_stdout),
    "pc batch: a line failed": (errors.EXIT_PARTIAL, lambda tmp: faults.run(["batch", write(
        tmp, "in.jsonl", json.dumps({"schema": str(facts(tmp)), "question": "hi", "modules": ["nope"]}) + "\n")],
        cache=tmp / "cache")),
    "pc serve cannot listen": (errors.EXIT_LISTEN, lambda tmp: faults.run(["serve", "--host", "0.0.0.0", "--port", "0"],
                                                                          cache=tmp / "cache")),
    "remote store unreachable": (errors.EXIT_REMOTE, unreachable_store),
    "interrupted": (errors.EXIT_INTERRUPTED, interrupted),
}


def test_every_documented_code_has_a_case() -> None:
    assert {code for code, _ in CASES.values()} == set(errors.EXIT_CODES)


def test_readme_table_is_errors_exit_codes() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Exit codes"):]
    section = section[: section.index("\n## ", 1)]
    rows = dict(re.findall(r"^\| *(\d+) *\| *(.+?) *\|$", section, re.MULTILINE))
    assert {int(k): v.replace("`", "") for k, v in rows.items()} == errors.EXIT_CODES


@pytest.mark.parametrize("name", list(CASES))
def test_exit_code(name: str, tmp_path: Path) -> None:
    code, make = CASES[name]
    proc = make(tmp_path)
    assert "Traceback" not in proc.err, proc.err
    assert proc.code == code, f"exit {proc.code}, stderr: {proc.err}"
    if code == errors.EXIT_OK:
        assert proc.out.strip() and proc.err == ""
        return
    if name == "pc batch: a line failed":  # the failed line's own object on stdout
        assert '"exit_code": 3' in proc.out and proc.out.count("\n") == 1
    elif name != "damaged cache file (pc verify)":  # verify names each damaged file on stdout
        assert proc.out == "", proc.out
    lines = proc.err_lines
    if name == "interrupted" and len(lines) == 2:  # stopped while computing: why was said when computing started
        assert lines[0].startswith("not compiled yet: computing "), proc.err
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("pc: "), proc.err


def test_internal_error_is_one_line_and_pc_debug_shows_the_traceback(tmp_path: Path) -> None:
    plain = internal_error(tmp_path)
    assert plain.err_lines == ["pc: internal error: ZeroDivisionError: division by zero"], plain.err
    debug = internal_error(tmp_path, PC_DEBUG="1")
    assert debug.code == errors.EXIT_INTERNAL
    assert "Traceback" in debug.err and "ZeroDivisionError" in debug.err


def test_a_cached_state_llama_cpp_refuses_is_recomputed(tmp_path: Path) -> None:
    """The refused module is reported in one warning, recomputed and stored; the answer is the
    one a fresh cache gives, and the next ask loads the new file without a warning."""
    schema, cache = forged_refused_state(tmp_path)
    ask = ["ask", "What is the secret color?", "-s", schema, "-n", "8"]
    healed = faults.run(ask, cache=cache)
    assert healed.code == 0, healed.err
    assert "Traceback" not in healed.err
    assert [line for line in healed.err_lines if "refused" in line] == [
        "warning: llama.cpp refused the cached state of module 'fact'; recomputing it"], healed.err
    fresh = faults.run(ask, cache=tmp_path / "fresh")
    assert fresh.code == 0 and healed.out == fresh.out and fresh.out.strip()
    again = faults.run(ask, cache=cache)
    assert again.code == 0 and again.out == fresh.out and again.err == "", again.err


PYTHON_START = 0.03  # seconds: the interpreter's own start-up (measured 8-35 ms here), outside pc's reach
# What CPython itself does with a Ctrl-C in its start-up, before any of pc runs: a "Fatal Python
# error" paragraph (init_import_site, init_sys_streams, ...), failing to import runpy (`-m`), or
# the site module reporting a .pth line it could not run (or an exception "ignored" in an import
# callback) and going on, so pc then runs and answers.
PYTHON_OUTCOMES = ("Fatal Python error", "Could not import runpy module", "Remainder of file ignored",
                   "Exception ignored in")
# The first three are printed only by CPython's own start-up, so they are accepted at any delay: on
# a loaded machine that start-up takes well over PYTHON_START (seen at 60-100 ms with load 16).
STARTUP_ONLY = PYTHON_OUTCOMES[:3]


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.02, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45])
def test_ctrl_c_at_any_moment_of_the_start(delay: float, tmp_path: Path) -> None:
    """Ctrl-C while pc imports or loads the model (here a `pc ask`, which loads it on a thread
    meanwhile): one line and exit 130, nothing on stdout. In the interpreter's own start-up,
    before any of pc runs, Python ends as Python does (README says so): killed by the signal, or
    one of PYTHON_OUTCOMES."""
    t0 = time.perf_counter()
    p = faults.start(["ask", "--no-cache", "Can I charge a fee?", "-s", GPL], cache=tmp_path / "cache")
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    proc = faults.finish(p, t0)
    if delay < PYTHON_START and (proc.code == -signal.SIGINT or any(o in proc.err for o in PYTHON_OUTCOMES)):
        return
    if any(o in proc.err for o in STARTUP_ONLY):
        return  # the signal landed in the interpreter's start-up, however long that took
    if proc.code == -signal.SIGINT and not re.search(r"promptcache_cli/(?!__init__\.py)", proc.err):
        return  # in runpy, the import system or the package's import-free __init__: before the guard
    assert proc.out == ""
    assert proc.code == errors.EXIT_INTERRUPTED, proc.err
    assert proc.err_lines == ["pc: interrupted"], proc.err


def test_the_start_guard_exits_with_the_documented_code() -> None:
    from promptcache_cli import __main__

    assert __main__.INTERRUPTED == errors.EXIT_INTERRUPTED

"""Whole-process runs: wall time from start to exit, and the process's own peak memory.

Linux keeps a process's peak resident size (``ru_maxrss``) across ``fork`` and ``exec``: a child
forked straight from the benchmark (which holds models and contexts) would report the
benchmark's size. So each run goes through a tiny launcher (a bare interpreter) that forks the
command, times it from fork to exit, and reads its rusage with ``os.wait4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from .systems import Command

TIMEOUT = 900  # seconds; an 8k-token prefill on two busy cores stays well below

LAUNCHER = r"""
import json, os, signal, sys, time
report, argv, timeout = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.alarm(timeout)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(report, "w") as f:
    json.dump({"wall_ms": wall * 1000, "maxrss_kib": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}, f)
"""


_compiled = False


def _bytecode() -> None:
    """Write `pc`'s bytecode once, as a wheel install does: where PYTHONDONTWRITEBYTECODE is set
    (this machine) and the checkout's files changed since `make install`, every measured process
    would compile the modules it imports again (about 30 ms at start-up)."""
    global _compiled
    if not _compiled:
        import compileall

        compileall.compile_dir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), quiet=1)
        _compiled = True


@dataclass
class ProcessRun:
    wall_ms: float
    peak_rss_bytes: int  # the command's own ru_maxrss (Linux reports KiB)
    code: int
    reply: dict | None  # the JSON object the command printed last, if any
    error: str = ""


def run(cmd: Command) -> ProcessRun:
    _bytecode()
    env = dict(os.environ, **cmd.env)
    with tempfile.TemporaryDirectory(prefix="pc-bench-run-") as tmp:
        report = os.path.join(tmp, "report.json")
        paths = [os.path.join(tmp, n) for n in ("in", "out", "err")]
        with open(paths[0], "wb") as f:
            f.write(cmd.stdin.encode("utf-8"))
        with open(paths[0], "rb") as inp, open(paths[1], "wb") as out, open(paths[2], "wb") as err:
            subprocess.run([sys.executable, "-S", "-c", LAUNCHER, report, json.dumps(cmd.argv), str(TIMEOUT)],
                           stdin=inp, stdout=out, stderr=err, env=env, check=False)
        text, errtext = (open(p, encoding="utf-8", errors="replace").read() for p in paths[1:])
        try:
            with open(report, encoding="utf-8") as f:
                got = json.load(f)
        except (OSError, json.JSONDecodeError):
            return ProcessRun(0.0, 0, -1, None, f"the launcher failed: {errtext.strip()[-300:]}")
    reply = None
    try:
        reply = json.loads(text.strip().splitlines()[-1]) if text.strip() else None
    except json.JSONDecodeError:
        pass
    lines = errtext.strip().splitlines()
    error = "" if got["code"] == 0 else (lines[-1] if lines else f"exit {got['code']}")
    return ProcessRun(got["wall_ms"], got["maxrss_kib"] * 1024, got["code"], reply, error)

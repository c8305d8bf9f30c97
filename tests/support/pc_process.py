"""Running `pc` as a real process in tests: stdin is always a pipe, never the runner's tty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PC = [sys.executable, "-m", "promptcache_cli"]
TIMEOUT = 300  # seconds per command; generous, the machine may be shared


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        """stdout must be exactly one JSON object on one line."""
        assert self.out.endswith("\n") and self.out.count("\n") == 1, self.out
        obj = json.loads(self.out)
        assert isinstance(obj, dict)
        return obj


def pc(*args: str | Path, cache_dir: Path | None = None, stdin: str | bytes = b"") -> Run:
    env = dict(os.environ)
    if cache_dir is not None:
        env["PC_CACHE_DIR"] = str(cache_dir)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(PC + [str(a) for a in args], check=False, input=data,
                          capture_output=True, env=env, timeout=TIMEOUT)
    return Run(proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8"))


def ok(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}, stderr: {run.err}"
    assert "Traceback" not in run.err, run.err
    return run


def one_line_error(run: Run, code: int) -> str:
    """The stderr of a run that must fail with ``code`` and exactly one line, no traceback."""
    assert run.code == code, f"exit {run.code}: {run.err}"
    assert "Traceback" not in run.err
    assert run.err.strip() and run.err.rstrip("\n").count("\n") == 0, run.err
    return run.err

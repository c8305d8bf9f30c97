"""`pc bench`: the benchmark suite from the command line (the same run as `make bench`).

Registered in app.py with ``app.command("bench")(bench)``; only Typer is imported here, the suite
when the command runs, so `pc` starts as fast as before.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .. import errors
from .common import within


HELP = """Benchmark pc against --no-cache and llama-cpp-python's caches; measure answer quality.

\b
  pc bench --quick
  pc bench --only speed --threads 1

Writes JSON, a Markdown table and plots under --out. More: docs/benchmarks.md"""


def bench(
    quick: bool = typer.Option(False, "--quick", help="Small workloads, one round: under 5 minutes."),
    only: list[str] = typer.Option([], "--only", help="Only these sections: speed, docqa, prefix, params, quality, "
                                   "rag; repeatable."),
    out: str = typer.Option("bench/results", "--out", help="Folder for <date>.json, .md and the PNG plots."),
    model: Optional[str] = typer.Option(None, "--model", envvar="PC_MODEL", help="GGUF model file."),
    threads: int = typer.Option(0, "--threads", callback=within(0, 1024), metavar="N", show_default=False,
                                help="Threads per system measured (default: $PC_THREADS, else each core)."),
) -> None:
    import os

    from ..benchmarks import suite
    from ..api import resolve_model

    try:
        cfg = suite.config_for(quick=quick, only=only or None)
    except ValueError as e:
        raise errors.InputError(str(e)) from None
    if threads:  # every system measured (and every child process) reads it
        os.environ["PC_THREADS"] = str(threads)
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    paths = suite.run_and_write(cfg, model_path=resolve_model(model), out_dir=Path(out), progress=progress)
    sys.stdout.write(paths["md"].read_text(encoding="utf-8"))
    sys.stdout.flush()
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)

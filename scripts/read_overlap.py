#!/usr/bin/env python3
"""Experiment: does overlapping the reading of module files with loading them into llama.cpp pay?

`pc ask` starts reading every file the prompt needs (checksums; zstd frames decoded into the
arena) on the frame pool, then loads the states in order, each waiting only for its own read
(engine.Session._gather / stitch.StateRead). This compares, side by side in one process on the
document workload (docqa, 3 slots), four sessions: `--compression none` and `zstd`, each as `pc`
runs (overlapped) and with every read finished before the first load (``wait=True``, how `pc`
read before). Questions alternate the order of the sessions; medians of the time to first token
and of the time spent in gathering, filling and decoding.

    python scripts/read_overlap.py [--level 4096] [--questions 21]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from promptcache_cli.modular import session as engine
from promptcache_cli.llama import backend as llama_backend  # noqa: E402
from promptcache_cli.benchmarks import systems, workloads  # noqa: E402
from promptcache_cli.llama.model_file import resolve_model  # noqa: E402

SPENT: dict[str, float] = {}


def timed(owner, name: str, tag: str) -> None:
    """Wrap ``owner.name`` to add its time to SPENT[tag]."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[tag] = SPENT.get(tag, 0.0) + time.perf_counter() - t

    setattr(owner, name, wrapper)


def read_first(session: engine.Session) -> None:
    """Make ``session`` finish every read before loading anything (``_gather(wait=True)``)."""
    gather = session._gather

    def eager(*args, **kwargs):
        kwargs["wait"] = True
        return gather(*args, **kwargs)

    session._gather = eager


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--level", type=int, default=4096)
    ap.add_argument("--questions", type=int, default=21)
    args = ap.parse_args()
    model = resolve_model(None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        render = engine.Session(model, cache_dir=root / "render")
        wl = workloads.docqa(root / "wl", render.model, level=args.level, n_questions=args.questions)
        render.close()
        none = systems.PcSystem(model, root, name="none, overlapped", label="", codec="none")
        zstd = systems.PcSystem(model, root, name="zstd, overlapped", label="", codec="zstd", source=none)
        none_first = systems.PcSystem(model, root, name="none, read first", label="", codec="none", source=none)
        zstd_first = systems.PcSystem(model, root, name="zstd, read first", label="", codec="zstd", source=none)
        every = [none, zstd, none_first, zstd_first]
        for s in every:
            s.start(wl, n_cells=0)
        timed(engine.Session, "_gather", "gather")
        timed(engine, "fill", "fill")  # the name engine calls
        timed(llama_backend.Context, "decode", "decode")
        read_first(none_first.session)  # after timing: its gather is the timed one
        read_first(zstd_first.session)
        ttft: dict[str, list[float]] = {s.name: [] for s in every}
        parts: dict[str, dict[str, list[float]]] = {s.name: {} for s in every}
        for q in wl.warmup:
            for s in every:
                s.ask(wl, q, None)
        for i, q in enumerate(wl.questions):
            for s in every if i % 2 == 0 else every[::-1]:
                SPENT.clear()
                ttft[s.name].append(s.ask(wl, q, None).ttft_ms)
                for tag, seconds in SPENT.items():
                    parts[s.name].setdefault(tag, []).append(seconds * 1000)
        for s in every:
            s.stop(wl)
    print(f"docqa-{args.level}, {args.questions} questions; median ms")
    print("| session | TTFT | gather | fill | decode (question) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in ttft.items():
        cols = [f"{statistics.median(parts[name].get(t, [0.0])):.1f}" for t in ("gather", "fill", "decode")]
        print(f"| {name} | {statistics.median(values):.1f} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()

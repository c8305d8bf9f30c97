#!/usr/bin/env python3
"""make bench: `pc` against `--no-cache`, llama-cpp-python's own prompt caches and the physical
floor, side by side (alternating run by run), plus the answer quality of cached answers. Writes
bench/results/<date>.json, .md and -ttft.png / -bytes.png. The library is promptcache_cli.benchmarks.

    python scripts/bench.py [--quick] [--only speed|docqa|prefix|params|quality|rag]... [--out DIR]
    python scripts/bench.py --render bench/results/<date>.json   # the report again, from a run's JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptcache_cli.benchmarks import suite  # noqa: E402
from promptcache_cli import resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small workloads, one round: under 5 minutes")
    ap.add_argument("--only", action="append", help="run only these sections (repeatable)")
    ap.add_argument("--levels", type=lambda s: tuple(int(x) for x in s.split(",")),
                    help="document workload sizes in tokens, e.g. 1024,4096")
    ap.add_argument("--rounds", type=int, help="in-process questions per workload")
    ap.add_argument("--quality-questions", type=int)
    ap.add_argument("--refresh", type=lambda s: tuple(float(x) / 100 for x in s.split(",")),
                    help="answer quality: the --refresh percentages measured, e.g. 5,10,20 (default 5,10)")
    ap.add_argument("--model", help="GGUF model (default: $PC_MODEL, else SmolLM2-135M-Instruct)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--render", metavar="JSON", help="measure nothing: write a run's markdown and plots again "
                    "from its JSON (beside it)")
    args = ap.parse_args()
    if args.render:
        path = Path(args.render)
        paths = suite.render(json.loads(path.read_text(encoding="utf-8")), path.parent, stamp=path.stem)
        print(paths["md"].read_text(encoding="utf-8"))
        return
    try:
        cfg = suite.config_for(quick=args.quick, only=args.only, levels=args.levels, rounds=args.rounds,
                               quality_questions=args.quality_questions, refresh=args.refresh)
    except ValueError as e:
        ap.error(str(e))
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    paths = suite.run_and_write(cfg, model_path=resolve_model(args.model), out_dir=Path(args.out), progress=progress)
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)


if __name__ == "__main__":
    main()

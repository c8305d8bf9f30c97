#!/usr/bin/env python3
"""make bench-models: `pc` on random-weight models of the real Llama 3.2 1B and 3B shapes at ~2k,
4k and 8k tokens, against `--no-cache`, the physical floor and llama.cpp's llama-server restoring
the same prompt from its slot file; state bytes per token, peak memory, the question's prefill under
other settings, and an extrapolation to 8B. Writes bench/results/<date>-models.json, .md and
-models-ttft.png (promptcache_cli/benchmarks/models.py).

    python scripts/bench_models.py [--quick | --smoke] [--sizes llama-3.2-1b,llama-3.2-3b] [--levels 2048,4096,8192]
    python scripts/bench_models.py --render bench/results/<date>-models.json

The model files are written once into .venv/models/ (1.3 and 3.4 GB). llama-server: $PC_LLAMA_SERVER,
else the one `make bench-models` builds under .venv/llama.cpp/ (without it that column is left out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptcache_cli.benchmarks import models  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1B at 2k and 4k, fewer rounds")
    ap.add_argument("--smoke", action="store_true",
                    help="the tiny random llama at 256 and 512 tokens: checks the benchmark runs")
    ap.add_argument("--sizes", type=lambda s: tuple(s.split(",")), help="presets (scripts/make_test_model.py)")
    ap.add_argument("--levels", type=_ints, help="context lengths in tokens, e.g. 2048,4096")
    ap.add_argument("--rounds", type=int, help="in-process questions per length")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--render", metavar="JSON", help="measure nothing: write a run's markdown and plot again")
    args = ap.parse_args()
    if args.render:
        path = Path(args.render)
        res = json.loads(path.read_text(encoding="utf-8"))
        paths = models.write(res, path.parent, stamp=path.name.removesuffix("-models.json"))
        print(paths["md"].read_text(encoding="utf-8"))
        return
    cfg = models.SMOKE if args.smoke else models.QUICK if args.quick else models.ModelsConfig()
    cfg = replace(cfg, **{k: v for k, v in (("sizes", args.sizes), ("levels", args.levels), ("rounds", args.rounds))
                         if v is not None})
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="pc-bench-models-") as tmp:
        res = models.run(cfg, work=Path(tmp), progress=progress)
    paths = models.write(res, Path(args.out))
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""make bench: `pc serve` against llama-cpp-python's server and llama.cpp's llama-server through
the same OpenAI client, side by side; concurrent clients; `pc batch` against in process; memory.
Writes bench/results/<date>-serve.json, .md and -ttft.png. The library is
promptcache_cli.benchmarks.serving.

    python scripts/bench_serve.py [--quick] [--llama-server PATH] [--peers-python PATH] [--out DIR]

llama-server: --llama-server, else $PC_LLAMA_SERVER, else .venv/llama.cpp/build/bin/llama-server (make
builds it); llama-cpp-python's server: --peers-python, else .venv/peers/bin/python (make installs it).
A peer that is missing is left out of the run and the report says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptcache_cli import resolve_model  # noqa: E402
from promptcache_cli.benchmarks import serving  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~1k-token contexts, few questions: a few minutes")
    ap.add_argument("--llama-server", type=Path,
                    default=Path(os.environ.get("PC_LLAMA_SERVER") or ROOT / ".venv/llama.cpp/build/bin/llama-server"))
    ap.add_argument("--peers-python", type=Path, default=ROOT / ".venv/peers/bin/python")
    ap.add_argument("--model", help="GGUF model (default: $PC_MODEL, else SmolLM2-135M-Instruct)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    cfg = serving.QUICK if args.quick else serving.ServeConfig()
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    paths = serving.run_and_write(cfg, model_path=resolve_model(args.model), out_dir=args.out,
                                  llama_server=args.llama_server, peers_python=args.peers_python, progress=progress)
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)


if __name__ == "__main__":
    main()

"""One whole-process answer with llama-cpp-python, the way its user would write the script: import,
load the model, open the cache, answer with one token, print one JSON line (``ttft_ms``,
``prompt_tokens``). The prompt text comes on stdin.

    python -m promptcache_cli.benchmarks.child --kind disk --cache-dir D --model M --n-ctx N < prompt.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m promptcache_cli.benchmarks.child")
    ap.add_argument("--kind", choices=["ram", "disk"], required=True)
    ap.add_argument("--n-ctx", type=int, required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args(argv)
    text = sys.stdin.read()
    from .llama_api import complete, count_tokens, make_cache, make_llama

    llm = make_llama(Path(args.model), args.n_ctx)
    llm.set_cache(make_cache(args.kind, Path(args.cache_dir)))
    n = count_tokens(llm, text)
    ttft, total, _ = complete(llm, text, max_tokens=1)
    sys.stdout.write(json.dumps({"ttft_ms": ttft, "total_ms": total, "prompt_tokens": n}) + "\n")


if __name__ == "__main__":
    main()

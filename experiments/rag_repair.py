#!/usr/bin/env python3
"""Experiment: what `--repair N` buys on the RAG workload (documents pasted into ordinary prompts,
found and learned with no schema), beside --no-cache and the noise control. One shared learned
cache; every variant answers every question (the order rotated).

    python experiments/rag_repair.py [--questions 8] [--docs 4] [--doc-tokens 300] [--tokens 16]
                                     [--repairs 16,64] [--out run.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import promptcache_cli as pc  # noqa: E402
from promptcache_cli.benchmarks import rag, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--doc-tokens", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repairs", type=lambda s: tuple(int(x) for x in s.split(",")), default=(16, 64))
    ap.add_argument("--servers", action="store_true",
                    help="also pc serve --learn, llama-server ($PC_LLAMA_SERVER) and llama-cpp-python's server")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="pc-rag-") as tmp, pc.open_session(mode="modular") as renderer:
        wl = rag.build(renderer.model, n_questions=args.questions, n_docs=args.docs, doc_tokens=args.doc_tokens)
        specs, missing = [], None
        if args.servers:
            venv = Path(sys.prefix)
            binary = Path(os.environ.get("PC_LLAMA_SERVER") or venv / "llama.cpp/build/bin/llama-server")
            specs, missing = rag.server_specs(pc.resolve_model(), Path(tmp), llama_server=binary,
                                              peers_python=venv / "peers/bin/python", threads=os.cpu_count() or 1)
        res = rag.run_in_process(pc.resolve_model(), Path(tmp), wl, n_tokens=args.tokens, progress=progress,
                                 systems=rag.in_process_systems(args.repairs), servers=specs, missing=missing)
    res["seconds"] = time.perf_counter() - t0
    print("\n".join(report._rag(res)))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

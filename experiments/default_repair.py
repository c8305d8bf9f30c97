#!/usr/bin/env python3
"""Experiment: which default makes the modular cache agree with `--no-cache`, and what moving
states costs in quality. On the quality set of `make bench` (needles.quality: 5 texts of 450
tokens with a planted fact, 3 slots, 60 questions), every variant's 32 greedy tokens against
`--no-cache`, beside the noise control (exact states rounded to 9 mantissa bits):

- ``--set quality`` (each union's scaffold a different document): scaffold and average at
  ``--repair`` 0 and N, for each N of ``--repairs``;
- ``--set slots`` (no union has a scaffold member: the document workload's union-per-slot schema):
  the static layout of pc 0.1 (a file per document per slot) against packed positions (a file
  per document, moved where it goes), at --repair 0, and packed at each N; bytes and compile time.

    python experiments/default_repair.py --set quality [--repairs 4,8,16,32] [--questions 60] [--out run.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import promptcache_cli as pc  # noqa: E402
from promptcache_cli.benchmarks import needles, report  # noqa: E402
from promptcache_cli.benchmarks.quality import Variant, run_quality  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("quality", "slots"), default="quality")
    ap.add_argument("--repairs", type=lambda s: tuple(int(x) for x in s.split(",")), default=(4, 8, 16, 32))
    ap.add_argument("--averaged", action="store_true", help="also the average encoding with each repair")
    ap.add_argument("--no-average", action="store_true", help="leave the average encoding out (its compile is slow)")
    ap.add_argument("--doc-tokens", type=int, default=450)
    ap.add_argument("--questions", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    if args.set == "quality":
        chosen = [Variant("scaffold", "scaffold")] + ([] if args.no_average else [Variant("average", "average")])
        chosen += [Variant(f"scaffold+repair{n}", "scaffold", repair=n) for n in args.repairs]
        chosen += [Variant(f"average+repair{n}", "average", repair=n) for n in args.repairs if args.averaged]
    else:
        chosen = [Variant("scaffold", "scaffold"), Variant("scaffold-static", "scaffold", positions="static")]
        chosen += [Variant(f"scaffold+repair{n}", "scaffold", repair=n) for n in args.repairs]
    with tempfile.TemporaryDirectory(prefix="pc-default-") as tmp, pc.open_session(mode="modular") as renderer:
        wl = needles.quality(Path(tmp) / "wl", renderer.model, doc_tokens=args.doc_tokens,
                             n_questions=args.questions, slots=3,
                             n_docs=5, scaffolds=args.set == "quality", name=args.set)
        res = run_quality(pc.resolve_model(), Path(tmp) / "q", wl, n_tokens=32, progress=progress, chosen=chosen)
    res["seconds"] = time.perf_counter() - t0
    rows = res["rows"]
    print(f"{'variant':24} {'same 32':>8} {'same 4':>7} {'needles':>8} {'p':>6} {'KL med':>8} {'TTFT':>7}")
    for name, m in res["summary"].items():
        if name == "nocache":
            print(f"{'--no-cache':24} {'':>8} {'':>7} {m['needle_accuracy']:8.0%} {'':>6} {'':>8} "
                  f"{m['median_ttft_ms']:7.0f}")
            continue
        print(f"{name:24} {report.agreement_at(rows, name, 32):8.0%} {report.agreement_at(rows, name, 4):7.0%} "
              f"{m['needle_accuracy']:8.0%} {m['needle_mcnemar_p']:6.2f} {m['median_kl']:8.4f} "
              f"{m['median_ttft_ms']:7.0f}")
    print("compile seconds", {k: round(v, 1) for k, v in res["compile_seconds"].items()})
    print("cache bytes", res["cache_bytes"])
    if args.out:
        for r in rows:
            for v in r.values():
                if isinstance(v, dict):
                    v.pop("first_logits", None)
        args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

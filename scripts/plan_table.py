#!/usr/bin/env python3
"""Total recomputed tokens over a trace for the checkpoint DP and each baseline at equal budgets, as
markdown (for `make bench` and the README). Exact arithmetic on the trace; nothing is timed.

Two tables:
  in sample  the DP plans from the whole trace (every request weighs 1) and is scored on it: the
             objective it optimizes. "dp" is the token-resolution plan (the unrestricted optimum:
             any position may hold a checkpoint); "dp, 64-token bins" the binned plan of earlier
             versions, beside it.
  held out   the DP plans from the first half (decayed 0.99 per request, as `pc compile` would)
             and is scored on the second half, which it has not seen; baselines need no data.
"block, shallowest" keeps the first M block boundaries instead of the deepest: a check that the
block baseline's definition does not decide the comparison.

    python scripts/plan_table.py TRACE [--length L] [--budgets 1,2,4,8] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptcache_cli.prefix import checkpoint_plan as cp  # noqa: E402
from promptcache_cli.store.overlap_log import read_trace  # noqa: E402

BUDGETS = (1, 2, 4, 8)
COLUMNS = ("dp, 64-token bins", "dp", "block", "uniform", "sqrt", "dyadic", "block, shallowest")
BASELINES = ("block", "uniform", "sqrt", "dyadic", "block, shallowest")


def totals(depths: list[int], *, length: int, budget: int, plan_depths: list[int] | None = None,
           decay: float = 1.0) -> dict[str, float]:
    """Total recomputed tokens over ``depths`` (each request 1) per strategy. The DPs plan from
    ``plan_depths`` weighted by ``decay`` (default: from ``depths`` themselves, unweighted)."""
    src = depths if plan_depths is None else plan_depths
    plans = {
        "dp, 64-token bins": cp.plan_for(src, length=length, checkpoints=budget, decay=decay,
                                         bin_tokens=cp.BIN_TOKENS),
        "dp": cp.plan_for(src, length=length, checkpoints=budget, decay=decay),
        "block": cp.block_positions(length, budget),
        "uniform": cp.uniform_positions(length, budget),
        "sqrt": cp.sqrt_positions(length, budget),
        "dyadic": cp.dyadic_positions(length, budget),
        "block, shallowest": tuple(range(cp.BLOCK_TOKENS, length, cp.BLOCK_TOKENS))[:budget],
    }
    return {name: cp.recomputed_tokens(pos, depths, length=length) for name, pos in plans.items()}


def _table(rows: dict[int, dict[str, float]], reference: float) -> list[str]:
    lines = ["| checkpoints | " + " | ".join(COLUMNS) + " | best baseline / dp |",
             "| ---: |" + " ---: |" * (len(COLUMNS) + 1)]
    for budget, row in rows.items():
        best = min(row[b] for b in BASELINES)
        ratio = f"{best / row['dp']:.2f}x" if row["dp"] > 0 else ("-" if best == 0 else "inf")
        lines.append(f"| {budget} | " + " | ".join(f"{row[c]:,.0f}" for c in COLUMNS) + f" | {ratio} |")
    lines.append(f"| 0 (end state only) | {reference:,.0f} |" + " |" * len(COLUMNS))
    return lines


def plan_markdown(depths: list[int], *, length: int, budgets: tuple[int, ...] = BUDGETS, source: str = "") -> str:
    """Both tables as markdown."""
    half = len(depths) // 2
    train, test = depths[:half], depths[half:]
    out = [f"Total recomputed shared tokens over {len(depths):,} requests{' from ' + source if source else ''} "
           f"(cached prompt {length:,} tokens). Blocks {cp.BLOCK_TOKENS} tokens, "
           f"sqrt spacing {cp.sqrt_step(length)} tokens.", "",
           "In sample (the DP plans from the whole trace):", ""]
    out += _table({m: totals(depths, length=length, budget=m) for m in budgets},
                  cp.recomputed_tokens((), depths, length=length))
    out += ["", f"Held out (the DP plans from requests 1-{half:,}, decayed {cp.DECAY} per request; "
            f"all scored on requests {half + 1:,}-{len(depths):,}):", ""]
    out += _table({m: totals(test, length=length, budget=m, plan_depths=train, decay=cp.DECAY) for m in budgets},
                  cp.recomputed_tokens((), test, length=length))
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help='JSON lines {"tokens": N, "overlap": D}')
    ap.add_argument("--length", type=int, help="cached prompt length (default: the deepest overlap)")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="checkpoint counts, comma-separated")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args()
    depths = [o.overlap for o in read_trace(args.trace)]
    if not depths:
        sys.exit(f"{args.trace}: no requests")
    length = args.length or max(depths)
    if length < max(depths):
        sys.exit(f"--length {length} is shorter than the deepest overlap ({max(depths)})")
    text = plan_markdown(depths, length=length, budgets=tuple(int(b) for b in args.budgets.split(",")),
                         source=Path(args.trace).name)
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

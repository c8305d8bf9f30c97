#!/usr/bin/env python3
"""Checkpoint placement at token resolution against the 64-token-bin plan and the baselines, on
two synthetic traces, and the time to plan at 8k and 32k-token contexts. Prints markdown.

Traces (scripts/make_trace.py): ``documents``, a shared ~2k-token system prompt with varying
document tails (400 requests), and ``multilevel``, a 600-token system prompt, 1,800 tokens of
tool docs and per-user histories up to 3,500 tokens (500 requests).

Costs: recomputed shared tokens per request, the exact weighted mean over the trace of
min(d, L) - (deepest checkpoint <= d), the end state at L kept, each request weighted as the
planner weighs it (decay 0.99 per request in trace order: the newest weighs 1) or, in the second
table of each trace, every request alike. Every plan (the DP, the binned DP of earlier versions,
the baselines) is scored by the same plain-Python evaluator written here, independently of
``checkpoint_plan``; the script checks that ``checkpoint_plan.compare`` (what `pc plan` prints)
reports the same figures. In-sample: the DP plans from the trace it is scored on.

Timing: ``plan_for`` (histogram, DP, top-ups) from N recorded requests, median of ``--repeat``
runs, for uniformly spread depths (the worst case: about min(N, L) distinct depths) and for the
multilevel trace stretched to the context (histories up to L - 2,400 tokens).

    python scripts/plan_exactness.py [--seeds 10] [--repeat 5] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptcache_cli.prefix import checkpoint_plan as cp  # noqa: E402

BUDGETS = (1, 2, 4, 8, 16)
BASELINES = ("block", "uniform", "sqrt", "dyadic")
TRACES = {"documents": 400, "multilevel": 500}  # kind -> requests


def load_make_trace():
    spec = importlib.util.spec_from_file_location("make_trace", ROOT / "scripts" / "make_trace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def exact_cost(positions, depths, weights, length: int) -> float:
    """Recomputed tokens per request: sum_i w_i (min(d_i, L) - deepest stop <= d_i) / sum_i w_i,
    the stops being 0, the positions and L. Plain Python, on purpose."""
    stops = [0, *positions, length]
    total = 0.0
    for d, w in zip(depths, weights, strict=True):
        d = min(d, length)
        total += w * (d - stops[bisect.bisect_right(stops, d) - 1])
    return total / sum(weights)


def plans(depths, *, length: int, budget: int, decay: float) -> dict[str, tuple[int, ...]]:
    return {
        "dp": cp.plan_for(depths, length=length, checkpoints=budget, decay=decay),
        "dp, 64-token bins": cp.plan_for(depths, length=length, checkpoints=budget, decay=decay,
                                         bin_tokens=cp.BIN_TOKENS),
        "block": cp.block_positions(length, budget),
        "uniform": cp.uniform_positions(length, budget),
        "sqrt": cp.sqrt_positions(length, budget),
        "dyadic": cp.dyadic_positions(length, budget),
    }


def costs(depths, *, length: int, budget: int, decay: float) -> dict[str, float]:
    """Every plan's exact cost, checked against what `pc plan` reports for the same strategies."""
    weights = [float(w) for w in cp.decay_weights(len(depths), decay)]
    out = {name: exact_cost(pos, depths, weights, length) for name, pos in
           plans(depths, length=length, budget=budget, decay=decay).items()}
    reported = cp.compare(depths, length=length, checkpoints=budget, decay=decay)
    for name, r in reported.items():
        if abs(r.expected_recomputed_tokens - out[name]) > 1e-9 * max(1.0, out[name]):
            raise SystemExit(f"{name}: pc plan reports {r.expected_recomputed_tokens}, the trace gives {out[name]}")
    return out


def cost_table(depths, *, length: int, decay: float) -> list[str]:
    cols = ("dp", "dp, 64-token bins", *BASELINES)
    lines = ["| M | " + " | ".join(cols) + " | bins / dp | best baseline / dp |",
             "| ---: |" + " ---: |" * (len(cols) + 2)]
    for m in BUDGETS:
        row = costs(depths, length=length, budget=m, decay=decay)
        best = min(row[b] for b in BASELINES)
        lines.append(f"| {m} | " + " | ".join(f"{row[c]:,.1f}" for c in cols)
                     + f" | {_ratio(row['dp, 64-token bins'], row['dp'])} | {_ratio(best, row['dp'])} |")
    return lines


def _ratio(x: float, dp: float) -> str:
    if dp <= 0:
        return "-" if x <= 0 else "inf"
    return f"{x / dp:.3f}x"


def binned_excess(make, kind: str, requests: int, seeds: int, decay: float) -> list[str]:
    """Over ``seeds`` traces: how much more the binned plan recomputes than the exact one."""
    rows = {m: [] for m in BUDGETS}
    for seed in range(seeds):
        length, trace = make(requests=requests, seed=seed)
        depths = [r["overlap"] for r in trace]
        for m in BUDGETS:
            row = costs(depths, length=length, budget=m, decay=decay)
            rows[m].append(100 * (row["dp, 64-token bins"] / row["dp"] - 1) if row["dp"] > 0 else 0.0)
    return [f"| {m} | {statistics.median(v):.1f}% | {min(v):.1f}% | {max(v):.1f}% |" for m, v in rows.items()]


def timing(mod, repeat: int, quick: bool) -> list[str]:
    lines = ["| context L | requests N | depths | distinct depths K | M | exact DP | 64-token bins |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    rng = np.random.default_rng(0)
    sizes = ((8192, 20_000), (32768, 50_000)) if not quick else ((8192, 20_000),)
    for length, n in sizes:
        uniform = [int(d) for d in rng.integers(0, length + 1, size=n)]
        _, trace = mod.multilevel_trace(requests=n, seed=1, history_tokens=length - 2400, users=200)
        multilevel = [min(r["overlap"], length) for r in trace]
        for label, depths in (("uniform", uniform), ("multilevel", multilevel)):
            k = len({d for d in depths if 0 < d < length})
            for m in (1, 4, 16):
                times = {}
                for name, bins in (("exact", 1), ("bins", cp.BIN_TOKENS)):
                    runs = []
                    for _ in range(repeat):
                        t = time.perf_counter()
                        cp.plan_for(depths, length=length, checkpoints=m, bin_tokens=bins)
                        runs.append(time.perf_counter() - t)
                    times[name] = statistics.median(runs) * 1000
                lines.append(f"| {length:,} | {n:,} | {label} | {k:,} | {m} | {times['exact']:,.1f} ms "
                             f"| {times['bins']:,.1f} ms |")
    return lines


def report(*, seeds: int, repeat: int, quick: bool) -> str:
    mod = load_make_trace()
    makers = {"documents": mod.documents_trace, "multilevel": mod.multilevel_trace}
    out = ["# Checkpoint placement: exact DP, 64-token-bin DP, baselines", "",
           "Recomputed shared tokens per request (exact weighted mean over the trace; the end state is "
           "kept besides the M checkpoints). In sample: each DP plans from the trace it is scored on, "
           "with the same weights. `bins / dp`: the 64-token-bin plan's cost over the exact plan's.", ""]
    for kind, requests in TRACES.items():
        length, trace = makers[kind](requests=requests, seed=0)
        depths = [r["overlap"] for r in trace]
        k = len({d for d in depths if 0 < d < length})
        at_end = sum(d >= length for d in depths)
        for decay, how in ((cp.DECAY, f"decay {cp.DECAY} per request, as the planner weighs"),
                           (1.0, "every request alike")):
            out += [f"## {kind} (seed 0): {requests} requests, L = {length:,} tokens, {k} distinct depths "
                    f"below L, {at_end} at L; {how}", ""]
            out += cost_table(depths, length=length, decay=decay) + [""]
        if seeds > 1:
            out += [f"The 64-token-bin plan's excess over the exact plan across {seeds} seeds of the {kind} "
                    f"trace (decay {cp.DECAY}):", "", "| M | median | min | max |", "| ---: | ---: | ---: | ---: |"]
            out += binned_excess(makers[kind], kind, requests, seeds, cp.DECAY) + [""]
    load = os.getloadavg()
    out += [f"## Time to plan (`plan_for`: histogram, DP, top-ups; median of {repeat}; load average "
            f"{load[0]:.1f} on {os.cpu_count()} cores)", ""]
    out += timing(mod, repeat, quick) + [""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="traces per kind for the excess summary")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per cell")
    ap.add_argument("--quick", action="store_true", help="8k only, 1 seed, 1 timed run")
    ap.add_argument("--out", help="also write the markdown here (e.g. bench/results/<date>-plan-exact.md)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.repeat = 1, 1
    text = report(seeds=args.seeds, repeat=args.repeat, quick=args.quick)
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

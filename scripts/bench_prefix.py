#!/usr/bin/env python3
"""Prefix mode on a recurrent model: checkpoint placements replayed for real, side by side.

A random-weight Mamba of realistic shape (24 layers, width 768, about 130M parameters, q8_0:
scripts/make_test_model.py mamba --realistic; with --quick the tiny test Mamba) caches a prompt of real
text (license texts under /usr/share/common-licenses, or schemas/docs) as long as the synthetic
trace's cached prompt (scripts/make_trace.py: shared system prompts, documents with varying tails,
full reuse). The first requests of the trace are the history the dynamic program plans from; later
requests (the depth quantiles of the held-out part, so the replay covers its spread) are replayed
against every strategy at checkpoint budgets 1, 2, 4, 8 and against no cache, strategy order
rotating request by request; strategies that resume a request from the same stored state (often
position 0, a cold prefill) do the same computation, timed once and shared. A request is the cached
prompt's first d tokens (its overlap) followed by new text, capped at TAIL tokens so a run stays
short (every strategy computes the same tail). Measured per request: tokens recomputed below the
overlap and time to the first token (restore, recompute, new tokens, first logits).

Also: the whole cached prompt plus a question, restored from its end state against a cold
prefill (the 20x target).

    python scripts/bench_prefix.py [--quick] [--out-dir bench/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import promptcache_cli as pc  # noqa: E402
from promptcache_cli.benchmarks import random_gguf  # noqa: E402
from promptcache_cli.llama.bindings import llama_cpp_version  # noqa: E402
from promptcache_cli.prefix import checkpoint_plan as cp  # noqa: E402
from promptcache_cli.prefix.session import PrefixSession  # noqa: E402

TAIL = 32
QUESTION = "\n\nWhat does this license say about warranty? Answer in one sentence."
TEXTS = [Path("/usr/share/common-licenses") / n for n in ("GPL-3", "Apache-2.0", "LGPL-3", "MPL-2.0", "GPL-2")]
STRATEGIES = ("dp", "block", "uniform", "sqrt", "dyadic")


def _make_trace():
    spec = importlib.util.spec_from_file_location("make_trace", ROOT / "scripts" / "make_trace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_trace


def real_text() -> str:
    paths = [p for p in TEXTS if p.is_file()] or sorted((ROOT / "schemas" / "docs").glob("*.txt"))
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in paths)


def positions_for(strategy: str, *, history: list[int], length: int, budget: int) -> tuple[int, ...]:
    if strategy == "dp":
        return cp.plan_for(history, length=length, checkpoints=budget)
    return {"block": cp.block_positions, "uniform": cp.uniform_positions, "sqrt": cp.sqrt_positions,
            "dyadic": cp.dyadic_positions}[strategy](length, budget)


def first_token_ms(sess: PrefixSession, cached: list[int], request: list[int], only) -> tuple[float, int]:
    t0 = time.perf_counter()
    ctx, plan = sess.resume(cached, request, room=1, only=only)
    int(np.argmax(ctx.logits()))
    return (time.perf_counter() - t0) * 1000, plan.restore_at


def run(quick: bool, out_dir: Path) -> dict:
    budgets = (1, 4) if quick else (1, 2, 4, 8)
    n_eval = 4 if quick else 6
    length, trace = _make_trace()(requests=400, seed=0)
    history = [r["overlap"] for r in trace[:300]]
    held_out = sorted(trace[300:], key=lambda r: r["overlap"])  # replay its depth quantiles: the spread
    evals = [held_out[int((i + 0.5) * len(held_out) / n_eval)] for i in range(n_eval)]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "mamba-realistic.gguf"
        built = random_gguf.write_model("mamba", model_path, realistic=not quick)
        session = pc.open_session(model_path, cache_dir=Path(tmp) / "cache", mode="prefix", checkpoints=max(budgets))
        sess: PrefixSession = session.engine  # placements are replayed below the public API
        tokens = session.tokenize(real_text())
        cached, spare = tokens[:length], tokens[length:]
        configs = {(s, m): positions_for(s, history=history, length=length, budget=m)
                   for m in budgets for s in STRATEGIES}
        t = time.perf_counter()
        sess.store_states(cached, sorted({p for pos in configs.values() for p in pos}))
        prefill_s = time.perf_counter() - t
        question = session.tokenize(QUESTION)
        requests = []
        for i, r in enumerate(evals):
            d = min(r["overlap"], length)
            tail = spare[i * TAIL:(i + 1) * TAIL][: max(1, min(TAIL, r["tokens"] - d))]
            if d < length and tail[0] == cached[d]:
                tail = [t + 1 for t in tail[:1]] + tail[1:]
            requests.append((d, cached[:d] + tail))
        names = [*configs, ("no cache", 0)]
        rows = {name: {"ms": [], "recomputed": 0} for name in names}
        runs = 0
        for i, (d, request) in enumerate(requests):
            order = names[i % len(names):] + names[: i % len(names)]  # rotate: side by side
            measured: dict[int, float] = {}  # restore point -> ms: the same state, the same computation
            for name in order:
                only = set() if name[0] == "no cache" else set(configs[name]) | {length}
                at = sess.resume_plan(cached, request, sorted(only)).restore_at
                if at not in measured:
                    ms, got = first_token_ms(sess, cached, request, only)
                    assert got == at, (got, at)
                    measured[at] = ms
                    runs += 1
                rows[name]["ms"].append(measured[at])
                rows[name]["recomputed"] += (d - at) if name[0] != "no cache" else d
        full = cached + question
        warm, cold = [], []
        for _ in range(3):
            warm.append(first_token_ms(sess, cached, full, {length})[0])
            cold.append(first_token_ms(sess, cached, full, set())[0])
        session.close()
    table = [{"strategy": s, "budget": m, "positions": list(configs.get((s, m), ())),
              "recomputed_tokens": rows[(s, m)]["recomputed"], "total_ttft_ms": round(sum(rows[(s, m)]["ms"]), 1)}
             for s, m in names]
    return {
        "model": f"random-weight mamba, {built.shape.n_layer} layers, width {built.shape.n_embd}, "
                 f"{built.n_params / 1e6:.1f}M parameters, {built.n_bytes / 1e6:.0f} MB",
        "llama_cpp": llama_cpp_version(), "cached_prompt_tokens": length, "history_requests": len(history),
        "replayed_requests": len(requests), "measured_resumes": runs, "tail_tokens_max": TAIL,
        "prefill_all_states_s": round(prefill_s, 2),
        "table": table,
        "full_prompt": {"tokens": len(full), "cached_ttft_ms": [round(x, 1) for x in warm],
                        "no_cache_ttft_ms": [round(x, 1) for x in cold],
                        "speedup_of_medians": round(statistics.median(cold) / statistics.median(warm), 1)},
    }


def markdown(res: dict) -> str:
    budgets = sorted({r["budget"] for r in res["table"] if r["strategy"] != "no cache"})
    lines = [f"## Prefix mode: checkpoint placement on a recurrent model ({res['model']})", "",
             f"Cached prompt {res['cached_prompt_tokens']} tokens of real text; the DP planned from "
             f"{res['history_requests']} earlier requests of the trace; {res['replayed_requests']} later requests "
             f"replayed against each placement (new text after the overlap capped at {res['tail_tokens_max']} tokens); "
             f"placements that resume a request from the same stored state do the same computation and share one "
             f"measurement ({res.get('measured_resumes', '?')} resumes timed).",
             "", "Tokens recomputed below the overlap, total (time to first token, total ms):", "",
             "| strategy | " + " | ".join(f"M = {m}" for m in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    by = {(r["strategy"], r["budget"]): r for r in res["table"]}
    for s in STRATEGIES:
        cells = [f"{by[s, m]['recomputed_tokens']:,} ({by[s, m]['total_ttft_ms']:,.0f} ms)" for m in budgets]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    nc = by["no cache", 0]
    lines += ["", f"No cache: {nc['recomputed_tokens']:,} shared tokens recomputed, "
              f"{nc['total_ttft_ms']:,.0f} ms in total.",
              "", f"Whole cached prompt + question ({res['full_prompt']['tokens']} tokens): cached "
              f"{statistics.median(res['full_prompt']['cached_ttft_ms']):.0f} ms, no cache "
              f"{statistics.median(res['full_prompt']['no_cache_ttft_ms']):.0f} ms (medians of 3): "
              f"**{res['full_prompt']['speedup_of_medians']}x**.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the tiny test Mamba (2 layers, width 64) instead of the realistic one, budgets 1 and 4, "
                    "4 replayed requests: checks the pipeline, its times say little")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    res = run(args.quick, args.out_dir)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stamp}-prefix.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out_dir / f"{stamp}-prefix.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

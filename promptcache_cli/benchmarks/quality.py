"""Answer quality: every cached answer against the `--no-cache` answer to the same prompt.

Per question and cache variant: greedy exact match of the first ``n_tokens`` tokens, top-1
agreement and KL divergence KL(no-cache || cached) of the first token's distribution, and whether
the answer contains the planted fact. Variants: every module encoding (``independent``: after the
shared prefix; ``scaffold``: after the default prompt before the module; ``average``: the mean
over several prompts before it), the first two with the
boundary repair (``repair.py``, through the session's boundary hook), the default encoding with selective
recompute (``scaffold+refreshN``: `pc ask --refresh N`, modular/refresh.py; N% of the cached tokens
recomputed, from a cache compiled with `--ranked`), and the
default encoding with 8-bit quantized KV (``scaffold-q8_0``, as ``--kv-type q8_0``; also compared
with the f16 cache's answer). Variants alternate question by question.

Two controls bound what any approximate cache can reach: the uncached prompt's exact states saved
and loaded back before the question (``exact-reload``: must agree fully), and the same states
with every K and V value rounded to ``CONTROL_BITS`` of its 10 mantissa bits (``exact-m9``: a
perturbation far below anything caching does; what it loses is the metric's noise floor).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..api import ENCODINGS, Request, Session, open_session
from ..llama.sampling import Sampler, generate
from . import repair
from .needles import found
from .perturb import rounded_blob
from .workloads import Workload

Progress = Callable[[str], None]
CONTROL_BITS = 9
CONTROLS = ("exact-reload", f"exact-m{CONTROL_BITS}")
Q8 = "scaffold-q8_0"  # the default encoding with `--kv-type q8_0`


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max()
    return x - np.log(np.exp(x).sum())


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(p || q) in nats between the softmax distributions of two logit vectors."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum())


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


REPAIRED = ("scaffold", "independent")  # the encodings measured with the boundary repair too


def variants(repair_tokens: tuple[int, ...]) -> list[tuple[str, str, int]]:
    """(name, encoding, repaired tokens per module boundary)."""
    out = [(enc, enc, 0) for enc in ENCODINGS]
    out += [(f"{enc}+repair{r}", enc, r) for r in repair_tokens for enc in REPAIRED]
    return out


def make_session(model_path: Path, cache_dir: Path, *, encoding: str, repair_tokens: int = 0,
                 kv_type: str = "f16") -> Session:
    hook = repair.hook(repair_tokens) if repair_tokens else None
    return open_session(model_path, cache_dir=cache_dir, mode="modular", encoding=encoding, kv_type=kv_type,
                        boundary_hook=hook)


def repair_supported() -> bool:
    import inspect

    return "boundary_hook" in inspect.signature(open_session).parameters


def run_quality(model_path: Path, root: Path, wl: Workload, *, n_tokens: int, repair_tokens: tuple[int, ...],
                progress: Progress, q8: bool = True, refresh: tuple[float, ...] = ()) -> dict:
    schema = wl.schema()
    if repair_tokens and not repair_supported():
        repair_tokens = ()
    chosen = variants(repair_tokens)
    base = make_session(model_path, root / "nocache", encoding="scaffold")
    sessions = {name: make_session(model_path, root / enc, encoding=enc, repair_tokens=r) for name, enc, r in chosen}
    refreshers = {f"scaffold+refresh{round(f * 100)}": f for f in refresh}  # asked of the scaffold session
    chosen += [(name, "scaffold", 0) for name in refreshers]
    if q8:
        sessions[Q8] = make_session(model_path, root / Q8, encoding="scaffold", kv_type="q8_0")
        chosen.append((Q8, "scaffold", 0))
    rows = []
    compile_seconds = {}
    try:
        for enc in [*ENCODINGS, *([Q8] if q8 else [])]:  # variants of one encoding share its files
            t = time.perf_counter()
            sessions[enc].compile(schema)
            compile_seconds[enc] = time.perf_counter() - t
            progress(f"quality: compiled the {enc} cache in {compile_seconds[enc]:.0f} s")
        if refresh:  # `pc compile --ranked` over the files just compiled: only the scores are added
            t = time.perf_counter()
            sessions["scaffold"].compile(schema, ranked=True)
            compile_seconds["scaffold-ranking"] = time.perf_counter() - t
        for i, q in enumerate(wl.questions):
            request = wl.request(q, max_tokens=n_tokens, keep_logits=True)
            ref = base.ask(replace(request, no_cache=True))
            ref_tokens = list(ref.tokens)
            row = {"modules": list(q.modules), "question": q.text, "expected": q.expected,
                   "nocache": {"answer": ref.text, "tokens": ref_tokens, "ttft_ms": ref.ttft_ms,
                               "correct": found(q.expected, ref.text)},
                   "gaps": base.prompt(request).gaps}
            names = [name for name, _, _ in chosen]
            got = {}
            for name in names[i % len(names):] + names[: i % len(names)]:
                session, asked = sessions.get(name), request
                if name in refreshers:
                    session, asked = sessions["scaffold"], replace(request, refresh=refreshers[name])
                r = session.ask(asked)
                got[name] = {"answer": r.text, "tokens": list(r.tokens), "ttft_ms": r.ttft_ms,
                             "first_logits": r.first_logits, "computed_tokens": r.computed_tokens}
            got.update(controls(base, request, n_tokens))
            for name, r in got.items():
                row[name] = {
                    "answer": r["answer"], "tokens": r["tokens"], "ttft_ms": r["ttft_ms"],
                    "exact_match": r["tokens"][:n_tokens] == ref_tokens[:n_tokens],
                    "common_prefix": common_prefix(r["tokens"], ref_tokens),
                    "top1_agree": int(np.argmax(r["first_logits"])) == int(np.argmax(ref.first_logits)),
                    "kl": kl(ref.first_logits, r["first_logits"]),
                    "computed_tokens": r["computed_tokens"],
                    "correct": found(q.expected, r["answer"]),
                }
            if Q8 in row:  # does the q8_0 cache answer as the f16 cache does?
                row[Q8]["same_as_f16"] = row[Q8]["tokens"][:n_tokens] == row["scaffold"]["tokens"][:n_tokens]
            rows.append(row)
            progress(f"quality: question {i + 1}/{len(wl.questions)}")
    finally:
        base.close()
        for s in sessions.values():
            s.close()
    return {"questions": len(rows), "generated_tokens": n_tokens, "note": wl.note,
            "variants": [{"name": n, "encoding": e, "repair_tokens": r, "kv_type": "q8_0" if n == Q8 else "f16",
                          "refresh_fraction": refreshers.get(n, 0)}
                         for n, e, r in chosen],
            "repair_available": repair_supported(), "compile_seconds": compile_seconds,
            "controls": list(CONTROLS), "control_bits": CONTROL_BITS,
            "summary": summarize(rows, [n for n, _, _ in chosen] + list(CONTROLS)), "rows": rows}


def controls(session: Session, request: Request, n_tokens: int) -> dict[str, dict]:
    """The uncached prompt's exact states, reloaded as they are and rounded, then the question.
    The states are the ones the `--no-cache` answer just attended to: ``session`` has answered
    this prompt with ``no_cache=True`` last, and its context still holds prompt, question and
    answer (so no second prefill of the prompt)."""
    view = session.prompt(request)
    prompt = [t for p in view.parts[:-1] for t in p.tokens]
    q = list(view.parts[-1].tokens)
    ctx = session.last_context
    if ctx is None or ctx.pos_max(0) < len(prompt) + len(q) - 1:
        raise RuntimeError("controls() needs the session's --no-cache answer to this prompt first")
    ctx.seq_rm(0, len(prompt), -1)
    exact = ctx.save_state(0)
    out = {}
    for name, blob in zip(CONTROLS, (exact, rounded_blob(exact, CONTROL_BITS)), strict=True):
        ctx.clear()
        ctx.load_state(0, blob)
        t0 = time.perf_counter()
        ctx.decode(q, start=len(prompt), logits=True)
        logits = ctx.logits()
        answer, tokens, ttft = generate(session.model, ctx, logits, max_tokens=n_tokens, sampler=Sampler(),
                                         on_text=None, t0=t0)
        out[name] = {"answer": answer, "tokens": tokens, "ttft_ms": ttft * 1000, "first_logits": logits,
                     "computed_tokens": len(q)}
    return out


def _discordance(cached: list[bool], nocache: list[bool]) -> dict:
    """Needles found by only one side, and the exact two-sided McNemar p-value of that split: how
    likely so uneven a split is if caching made no difference to finding needles."""
    only_cached = sum(c and not n for c, n in zip(cached, nocache, strict=True))
    only_nocache = sum(n and not c for c, n in zip(cached, nocache, strict=True))
    k, n = min(only_cached, only_nocache), only_cached + only_nocache
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"needles_only_cached": only_cached, "needles_only_nocache": only_nocache, "needle_mcnemar_p": p}


def summarize(rows: list[dict], names: list[str]) -> dict:
    needles = [r for r in rows if r["expected"] is not None]
    out = {}
    for name in names:
        kls = [r[name]["kl"] for r in rows]
        out[name] = {
            "exact_match_rate": sum(r[name]["exact_match"] for r in rows) / len(rows),
            "top1_agreement": sum(r[name]["top1_agree"] for r in rows) / len(rows),
            "median_kl": float(statistics.median(kls)),
            "mean_kl": float(statistics.fmean(kls)),
            "max_kl": float(max(kls)),
            "mean_common_prefix": float(statistics.fmean(r[name]["common_prefix"] for r in rows)),
            "needle_accuracy": sum(r[name]["correct"] for r in needles) / len(needles) if needles else None,
            **_discordance([r[name]["correct"] for r in needles], [r["nocache"]["correct"] for r in needles]),
            "median_ttft_ms": float(statistics.median(r[name]["ttft_ms"] for r in rows)),
            "mean_computed_tokens": float(statistics.fmean(r[name]["computed_tokens"] for r in rows)),
        }
        if name == Q8:
            out[name]["same_as_f16_rate"] = sum(r[name]["same_as_f16"] for r in rows) / len(rows)
    out["nocache"] = {
        "needle_accuracy": sum(r["nocache"]["correct"] for r in needles) / len(needles) if needles else None,
        "median_ttft_ms": float(statistics.median(r["nocache"]["ttft_ms"] for r in rows)),
    }
    return out

"""Answer quality: every cached answer against the `--no-cache` answer to the same prompt.

Per question and cache variant: greedy exact match of the first ``n_tokens`` tokens, top-1
agreement and KL divergence KL(no-cache || cached) of the first token's distribution, and whether
the answer contains the planted fact. Variants: every module encoding (``independent``: after the
shared prefix; ``scaffold``: after the default prompt before the module; ``average``: the mean
over several prompts before it), each at ``--repair 0`` (the bare cache); the first two with
``--repair N`` (``scaffold+repairN``: the first N tokens of every module placed after other text
than it was computed after, computed afresh in line); the default encoding with selective
recompute (``scaffold+refreshN``: `pc ask --refresh N`, modular/refresh.py; N% of the cached
tokens recomputed, from a cache compiled with `--ranked`), and the default encoding with 8-bit
quantized KV (``scaffold-q8_0``, as ``--kv-type q8_0``; also compared with the f16 cache's
answer). Optionally the static layout of pc 0.1 (``scaffold-static``, an experiment: states stored
at their slot's offset). Variants alternate question by question.

Two controls bound what any approximate cache can reach: the uncached prompt's exact states saved
and loaded back before the question (``exact-reload``: must agree fully), and the same states
with every K and V value rounded to ``CONTROL_BITS`` of its 10 mantissa bits (``exact-m9``: a
perturbation far below anything caching does; what it loses is the metric's noise floor).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..api import ENCODINGS, Request, Session, open_session
from ..llama.sampling import Sampler, generate
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


REPAIRED = ("scaffold", "independent")  # the encodings measured with --repair too


@dataclass(frozen=True)
class Variant:
    name: str
    encoding: str
    repair: int = 0  # as --repair
    refresh: float = 0.0  # as --refresh (a fraction)
    kv_type: str = "f16"
    positions: str = "packed"  # "static": pc 0.1's layout (an experiment)

    @property
    def cache(self) -> tuple[str, str, str]:
        """Variants with the same cache share its files (and its session)."""
        return (self.encoding, self.kv_type, self.positions)

    def record(self) -> dict:
        return {"name": self.name, "encoding": self.encoding, "repair_tokens": self.repair, "kv_type": self.kv_type,
                "refresh_fraction": self.refresh, "positions": self.positions}


def variants(repair_tokens: tuple[int, ...], refresh: tuple[float, ...] = (), *, q8: bool = False) -> list[Variant]:
    """Every encoding at --repair 0, the repaired ones, the refreshed default, q8_0."""
    out = [Variant(enc, enc) for enc in ENCODINGS]
    out += [Variant(f"{enc}+repair{r}", enc, repair=r) for r in repair_tokens for enc in REPAIRED]
    out += [Variant(f"scaffold+refresh{round(f * 100)}", "scaffold", refresh=f) for f in refresh]
    if q8:
        out.append(Variant(Q8, "scaffold", kv_type="q8_0"))
    return out


def run_quality(model_path: Path, root: Path, wl: Workload, *, n_tokens: int, repair_tokens: tuple[int, ...] = (),
                progress: Progress, q8: bool = True, refresh: tuple[float, ...] = (),
                chosen: list[Variant] | None = None) -> dict:
    """Every variant's answers against --no-cache and the controls (``chosen``: these variants
    instead of :func:`variants`). Each cache is compiled first (timed, its bytes counted)."""
    from .systems import dir_bytes

    schema = wl.schema()
    chosen = chosen if chosen is not None else variants(repair_tokens, refresh, q8=q8)
    base = open_session(model_path, cache_dir=root / "nocache", mode="modular")
    caches = list(dict.fromkeys(v.cache for v in chosen))
    folder = {c: root / "-".join(x for x in c if x not in ("f16", "packed")) for c in caches}
    sessions = {c: open_session(model_path, cache_dir=folder[c], mode="modular", encoding=c[0], kv_type=c[1],
                                positions=c[2]) for c in caches}
    rows = []
    compile_seconds, cache_bytes = {}, {}
    try:
        for c in caches:
            name = next(v.name for v in chosen if v.cache == c)
            t = time.perf_counter()
            sessions[c].compile(schema)
            compile_seconds[name] = time.perf_counter() - t
            cache_bytes[name] = dir_bytes(folder[c] / "modules")
            progress(f"quality: compiled the {name} cache in {compile_seconds[name]:.0f} s")
        if any(v.refresh for v in chosen):  # `pc compile --ranked` over the files just compiled: scores added
            c = next(v.cache for v in chosen if v.refresh)
            t = time.perf_counter()
            sessions[c].compile(schema, ranked=True)
            compile_seconds["scaffold-ranking"] = time.perf_counter() - t
        for i, q in enumerate(wl.questions):
            request = wl.request(q, max_tokens=n_tokens, keep_logits=True, repair=0)
            ref = base.ask(replace(request, no_cache=True))
            ref_tokens = list(ref.tokens)
            row = {"modules": list(q.modules), "question": q.text, "expected": q.expected,
                   "nocache": {"answer": ref.text, "tokens": ref_tokens, "ttft_ms": ref.ttft_ms,
                               "correct": found(q.expected, ref.text)},
                   "gaps": base.prompt(request).gaps}
            got = {}
            for v in chosen[i % len(chosen):] + chosen[: i % len(chosen)]:
                r = sessions[v.cache].ask(replace(request, repair=v.repair, refresh=v.refresh))
                got[v.name] = {"answer": r.text, "tokens": list(r.tokens), "ttft_ms": r.ttft_ms,
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
            "variants": [v.record() for v in chosen],
            "repair_available": True, "compile_seconds": compile_seconds, "cache_bytes": cache_bytes,
            "controls": list(CONTROLS), "control_bits": CONTROL_BITS,
            "summary": summarize(rows, [v.name for v in chosen] + list(CONTROLS)), "rows": rows}


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

"""Choosing the next token from logits (greedy by default, or temperature + top-p with a seed) and
the answer loop that picks, decodes and detokenizes one token after another."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .backend import Context, Model


@dataclass(frozen=True)
class Sampler:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top-p must be in (0, 1]")

    def rng(self) -> np.random.Generator | None:
        """The random generator :meth:`pick` draws from; None when greedy (numpy.random is not
        even imported then: 9 ms of a cold `pc ask`)."""
        return np.random.default_rng(self.seed) if self.temperature else None

    def pick(self, logits: np.ndarray, rng: np.random.Generator | None) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        if self.top_p < 1:
            order = np.argsort(-p)
            keep = np.cumsum(p[order]) - p[order] < self.top_p  # smallest set reaching top_p
            mask = np.zeros_like(p, dtype=bool)
            mask[order[keep]] = True
            p = np.where(mask, p, 0)
            p /= p.sum()
        assert rng is not None, "sampling with a temperature draws from rng()"
        return int(rng.choice(len(p), p=p))


def generate(model: Model, ctx: Context, logits: np.ndarray, *, max_tokens: int, sampler: Sampler,
             on_text: Callable[[str], None] | None, t0: float) -> tuple[str, list[int], float]:
    """Pick up to ``max_tokens`` tokens, the first from ``logits`` (the prompt's last), decoding
    each chosen token in ``ctx`` for the next; ``on_text`` receives the answer's text as it grows.
    Returns (text, token ids, seconds from ``t0`` to the first token)."""
    rng = sampler.rng()
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out: list[int] = []
    parts: list[str] = []
    ttft = None
    pos = ctx.pos_max(0) + 1
    for _ in range(max_tokens):
        tok = sampler.pick(logits, rng)
        if ttft is None:
            ttft = time.perf_counter() - t0
        if model.is_eog(tok):
            break
        out.append(tok)
        text = dec.decode(model.token_bytes(tok))
        if text:
            parts.append(text)
            if on_text:
                on_text(text)
        if len(out) == max_tokens or pos >= ctx.n_ctx:
            break
        ctx.decode([tok], start=pos, logits=True)
        pos += 1
        logits = ctx.logits()
    tail = dec.decode(b"", final=True)
    if tail:
        parts.append(tail)
        if on_text:
            on_text(tail)
    if ttft is None:
        ttft = time.perf_counter() - t0
    return "".join(parts), out, ttft

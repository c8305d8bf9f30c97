"""Choosing the next token from logits (greedy by default, or temperature + top-p with a seed) and
the answer loop that picks, decodes and detokenizes one token after another (a generator, so an
answer can be streamed)."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

if TYPE_CHECKING:
    from .context import Context
    from .model import Model


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


class Generation:
    """An answer being generated: iterating picks up to ``max_tokens`` tokens, the first from
    ``logits`` (the prompt's last), decoding each chosen token in ``ctx`` for the next, and yields
    the answer's text as it grows (never splitting a UTF-8 character). ``halt``, when given, is
    asked after each piece of text whether to end the answer there (a stop string seen, a client
    gone). Afterwards: :attr:`tokens`, :attr:`text`, :attr:`ttft` (seconds from ``t0`` to the first
    token's id) and :attr:`finish_reason`: ``"stop"`` (an end-of-generation token, or halted) or
    ``"length"`` (``max_tokens`` reached, or the context full)."""

    def __init__(self, model: Model, ctx: Context, logits: np.ndarray, *, max_tokens: int, sampler: Sampler,
                 t0: float, halt: Callable[[], bool] | None = None) -> None:
        self._model, self._ctx, self._logits = model, ctx, logits
        self._max_tokens, self._sampler, self._t0 = max_tokens, sampler, t0
        self._halt = halt
        self.tokens: list[int] = []
        self._parts: list[str] = []
        self.ttft: float | None = None
        self.finish_reason = "length"

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __iter__(self) -> Iterator[str]:
        model, ctx, logits, sampler = self._model, self._ctx, self._logits, self._sampler
        rng = sampler.rng()
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = self.tokens
        pos = ctx.pos_max(0) + 1
        halt = self._halt
        for _ in range(self._max_tokens):
            tok = sampler.pick(logits, rng)
            if self.ttft is None:
                self.ttft = time.perf_counter() - self._t0
            if model.is_eog(tok):
                self.finish_reason = "stop"
                break
            out.append(tok)
            text = dec.decode(model.token_bytes(tok))
            if text:
                self._parts.append(text)
                yield text
                if halt is not None and halt():
                    self.finish_reason = "stop"
                    break
            if len(out) == self._max_tokens or pos >= ctx.n_ctx:
                break
            ctx.decode([tok], start=pos, logits=True)
            pos += 1
            logits = ctx.logits()
        tail = dec.decode(b"", final=True)
        if tail:
            self._parts.append(tail)
            yield tail
        if self.ttft is None:
            self.ttft = time.perf_counter() - self._t0


def generate(model: Model, ctx: Context, logits: np.ndarray, *, max_tokens: int, sampler: Sampler,
             on_text: Callable[[str], None] | None, t0: float) -> tuple[str, list[int], float]:
    """A whole :class:`Generation`; ``on_text`` receives the answer's text as it grows.
    Returns (text, token ids, seconds from ``t0`` to the first token)."""
    g = Generation(model, ctx, logits, max_tokens=max_tokens, sampler=sampler, t0=t0)
    for piece in g:
        if on_text:
            on_text(piece)
    assert g.ttft is not None
    return g.text, g.tokens, g.ttft

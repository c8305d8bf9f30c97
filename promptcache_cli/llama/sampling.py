"""Choosing the next token from logits (greedy by default, or temperature + top-p with a seed; a
repeat penalty on the answer's recent tokens) and the answer loop that picks, decodes and
detokenizes one token after another (a generator, so an answer can be streamed), ending at the
model's end of turn, a stop string or the token limit."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from .context import Context
    from .model import Model


REPEAT_WINDOW = 64  # the answer's last tokens the repeat penalty applies to (llama.cpp's default)
FINISH_REASONS = ("stop", "length")  # the model ended its turn or a stop string came / the token limit


@dataclass(frozen=True)
class Sampler:
    """How the next token is chosen. ``repeat_penalty`` (1: none) divides the positive logits of the
    answer's last 64 distinct tokens by itself and multiplies the negative ones (llama.cpp's rule),
    so a small model is less likely to loop."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repeat_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.temperature < float("inf"):  # NaN fails too
            raise ValueError(f"temperature must be a finite number >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError("top-p must be in (0, 1]")
        if not 0 < self.repeat_penalty <= 10:
            raise ValueError("the repeat penalty must be in (0, 10]; 1 is none")

    def penalize(self, logits: np.ndarray, recent: Sequence[int]) -> np.ndarray:
        """``logits`` with the repeat penalty applied to the ``recent`` tokens (a copy; the same
        array when there is nothing to do)."""
        if self.repeat_penalty == 1.0 or not recent:
            return logits
        ids = np.unique(np.asarray(recent[-REPEAT_WINDOW:], dtype=np.int64))
        out = np.array(logits, dtype=np.float32, copy=True)
        vals = out[ids]
        out[ids] = np.where(vals > 0, vals / self.repeat_penalty, vals * self.repeat_penalty)
        return out

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
    the answer's text as it grows (never splitting a UTF-8 character). It ends at the model's end
    of turn, at the first of the ``stop`` strings (the text ends before it; text that may begin
    one is held back until it does not), after ``max_tokens``, or when ``halt`` (asked after each
    piece of text, when given) says so (a client gone). Afterwards: :attr:`tokens`, :attr:`text`,
    :attr:`ttft` (seconds from ``t0`` to the first token's id) and :attr:`finish_reason`
    (``"stop"``: end of turn, a stop string, or halted; ``"length"``: the token limit or the
    context's end)."""

    def __init__(self, model: Model, ctx: Context, logits: np.ndarray, *, max_tokens: int, sampler: Sampler,
                 t0: float, stop: Sequence[str] = (), halt: Callable[[], bool] | None = None) -> None:
        self._model, self._ctx, self._logits = model, ctx, logits
        self._max_tokens, self._sampler, self._t0 = max_tokens, sampler, t0
        self._stop = tuple(s for s in stop if s)
        self._halt = halt
        self.tokens: list[int] = []
        self._parts: list[str] = []
        self.ttft: float | None = None
        self.finish_reason = "length"

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def _release(self, pending: str, final: bool) -> tuple[str, str, bool]:
        """(text to yield now, text held back, whether a stop string was found)."""
        if not self._stop:
            return pending, "", False
        found = [i for i in (pending.find(s) for s in self._stop) if i >= 0]
        if found:
            return pending[: min(found)], "", True
        if final:
            return pending, "", False
        hold = max((n for s in self._stop for n in range(min(len(s) - 1, len(pending)), 0, -1)
                    if pending.endswith(s[:n])), default=0)
        return pending[: len(pending) - hold], pending[len(pending) - hold:], False

    def __iter__(self) -> Iterator[str]:
        model, ctx, logits, sampler = self._model, self._ctx, self._logits, self._sampler
        rng = sampler.rng()
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = self.tokens
        pos = ctx.pos_max(0) + 1
        pending = ""
        reason = "length"
        stopped = False
        halt = self._halt
        for _ in range(self._max_tokens):
            tok = sampler.pick(sampler.penalize(logits, out), rng)
            if self.ttft is None:
                self.ttft = time.perf_counter() - self._t0
            if model.is_eog(tok):
                reason = "stop"
                break
            out.append(tok)
            text, pending, stopped = self._release(pending + dec.decode(model.token_bytes(tok)), False)
            if text:
                self._parts.append(text)
                yield text
                if halt is not None and halt():
                    stopped = True
                    break
            if stopped or len(out) == self._max_tokens or pos >= ctx.n_ctx:
                break
            ctx.decode([tok], start=pos, logits=True)
            pos += 1
            logits = ctx.logits()
        if not stopped:  # what the decoder and the stop strings held back
            text, _, stopped = self._release(pending + dec.decode(b"", final=True), True)
            if text:
                self._parts.append(text)
                yield text
        self.finish_reason = "stop" if stopped else reason
        if self.ttft is None:
            self.ttft = time.perf_counter() - self._t0


def generate(model: Model, ctx: Context, logits: np.ndarray, *, max_tokens: int, sampler: Sampler,
             on_text: Callable[[str], None] | None, t0: float,
             stop: Sequence[str] = ()) -> tuple[str, list[int], float]:
    """A whole :class:`Generation`; ``on_text`` receives the answer's text as it grows.
    Returns (text, token ids, seconds from ``t0`` to the first token)."""
    g = Generation(model, ctx, logits, max_tokens=max_tokens, sampler=sampler, t0=t0, stop=stop)
    for piece in g:
        if on_text:
            on_text(piece)
    assert g.ttft is not None
    return g.text, g.tokens, g.ttft

"""Answering prompts given as tokens (a server's plain chat requests, no schema), reusing the
longest usable prefix of what the context already holds or of a prompt state kept in RAM.

What is usable depends on the model's memory (llama/memory.py): a state that can be cut back
(attention) serves any request sharing a prefix with it, cut back to the shared tokens; one that
cannot (recurrent, hybrid, sliding window) serves only requests it is a whole prefix of, so such
states are saved at checkpoints inside the prompt as it is computed (the caller says where).
Which RAM state to resume from is the caller's choice (the server's prompt cache): this module
computes, it keeps nothing but the context and the tokens it holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import Halted, StateRefused
from ..llama.context import Context
from ..llama.sampling import Sampler
from .answer import Prefilled, stream
from .results import Answer
from .runtime import Runtime


@dataclass(frozen=True, eq=False)
class PromptState:
    """A prompt's llama.cpp sequence state, kept in RAM: the first ``len(tokens)`` cells."""

    tokens: tuple[int, ...]
    blob: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.blob.nbytes)


class TokenPrompts:
    """One runtime's context answering token prompts, and the tokens it holds after each."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._held: tuple[int, ...] = ()
        self._uses = -1  # runtime.token_uses when _held was last true

    # -- what the context holds -------------------------------------------------------------
    def held(self) -> tuple[int, ...]:
        """The tokens the token prompts' context (:meth:`Runtime.token_context`) holds from the
        last token prompt."""
        return self._held if self.runtime.token_uses == self._uses and self.runtime.token_ctx is not None else ()

    def save_held(self) -> PromptState | None:
        """The state of what the context holds, to keep in RAM (None when it holds nothing)."""
        held = self.held()
        if not held:
            return None
        assert self.runtime.token_ctx is not None
        return PromptState(held, self.runtime.token_ctx.save_state(0))

    def depth(self, tokens: Sequence[int], state: Sequence[int]) -> int:
        """How many leading ``tokens`` a state holding ``state`` can serve: their common prefix
        where states can be cut back, else all of ``state`` when it is a whole prefix. At least
        the last token is always computed (a state carries no logits)."""
        n = common_prefix(state, tokens)
        if self.runtime.model.memory.can_cut:
            return min(n, len(tokens) - 1)
        return len(state) if n == len(state) < len(tokens) else 0

    # -- answering ---------------------------------------------------------------------------
    def stream(self, tokens: Sequence[int], *, max_tokens: int = 128, sampler: Sampler = Sampler(),
               resume: PromptState | None = None, checkpoints: Sequence[int] = (),
               on_state: Callable[[PromptState], None] | None = None,
               halt: Callable[[], bool] | None = None) -> Iterator[str | Answer]:
        """Answer the prompt ``tokens``: resume from ``resume`` when it serves deeper than what
        the context holds, compute the rest (handing the states at ``checkpoints`` positions to
        ``on_state`` on the way), then generate: the answer's text piece by piece, then the
        :class:`Answer`. ``halt`` is asked between prompt batches (raising :class:`Halted` when
        it says so) and after each piece of the answer (which then ends there)."""
        t0 = time.perf_counter()
        tokens = list(tokens)
        rt = self.runtime
        rt.check_fits(len(tokens) + max_tokens)
        warnings: list[str] = []
        ctx, at = self._resume(tokens, max_tokens, resume, warnings)
        answer: Answer | None = None
        try:
            cached = at
            for p in sorted({p for p in checkpoints if at < p <= len(tokens)}) + [len(tokens)]:
                if at < p:
                    self._decode(ctx, tokens, at, p, logits=p == len(tokens), halt=halt)
                    at = p
                if p in checkpoints and on_state is not None:
                    on_state(PromptState(tuple(tokens[:p]), ctx.save_state(0)))
            done = Prefilled(ctx, cached, len(tokens) - cached, warnings=warnings)
            for item in stream(rt, done, selection=None, t0=t0, max_tokens=max_tokens, sampler=sampler,
                               keep_logits=False, halt=halt):
                if isinstance(item, Answer):
                    answer = item
                yield item
        finally:  # what the context holds now: the prompt so far, and the answer's tokens decoded
            self._settle(ctx, tokens + list(answer.tokens) if answer is not None else tokens)

    def _resume(self, tokens: list[int], max_tokens: int, resume: PromptState | None,
                warnings: list[str]) -> tuple[Context, int]:
        """A context holding the deepest usable prefix of ``tokens`` (what it held, or
        ``resume``), cut back to it; and how many tokens that is."""
        rt = self.runtime
        held = self.held()
        at = self.depth(tokens, held) if held else 0
        self._held = ()
        if resume is not None and self.depth(tokens, resume.tokens) > at:
            ctx = rt.token_context(max(len(tokens) + max_tokens, len(resume.tokens)))
            try:
                ctx.load_state(0, resume.blob)
                at = self.depth(tokens, resume.tokens)
            except StateRefused as e:
                warnings.append(f"{e}; computing the prompt without it")
                ctx.clear()
                at = 0
        else:
            ctx = rt.token_context(len(tokens) + max_tokens, clear=False)
            if not held or ctx.pos_max(0) + 1 != len(held):  # another's cells, or a new context
                ctx.clear()
                at = 0
        self._uses = rt.token_uses
        if at < ctx.pos_max(0) + 1:
            ctx.seq_rm(0, at, -1)
        self._held = tuple(tokens[:at])
        return ctx, at

    def _decode(self, ctx: Context, tokens: list[int], start: int, end: int, *, logits: bool,
                halt: Callable[[], bool] | None) -> None:
        """Decode ``tokens[start:end]`` a batch at a time, asking ``halt`` between batches."""
        step = ctx.settings.n_batch
        for begin in range(start, end, step):
            if halt is not None and begin > start and halt():
                raise Halted()
            stop = min(begin + step, end)
            ctx.decode(tokens[begin:stop], start=begin, logits=logits and stop == end)
            self._held = tuple(tokens[:stop])

    def _settle(self, ctx: Context, known: list[int]) -> None:
        """Record what sequence 0 holds once a prompt is done (or stopped): its cells are the
        first ones of ``known``; cells past those (an answer closed before its end) are cut off,
        or, where cells cannot be cut, nothing is kept."""
        if self.runtime.token_uses != self._uses:
            return
        n = ctx.pos_max(0) + 1
        if n > len(known):
            if not self.runtime.model.memory.can_cut:
                self._held = ()
                return
            ctx.seq_rm(0, len(known), -1)
            n = len(known)
        self._held = tuple(known[:n])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n



"""A schema question's own cells, kept for the next question over the same modules.

After a question the context holds the prompt (the modules and parameter values), the question
and its answer. The next question over the same prompt (the same cached states at the same
places, :func:`filled_as`) keeps the prompt where it is and cuts back only what the two questions
do not share: a follow-up turn of a chat or a question beginning with the same pasted text
computes only what is new, and no module is loaded again. The cells a question took are also kept
in RAM (:class:`Tails`, least recently used evicted past a byte budget), so a question that
begins like an earlier one, not the last, resumes from it: its cells are loaded beside the prompt
they were computed after, at the positions they were computed at.

Only the prompt's own tokens decide what a question's cells are worth: a question is computed
after exactly the cells it would be computed after from scratch, so reusing them changes nothing
but where the work was done (as llama.cpp's server reuses a chat's prefix).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np

from ..core.tokens import common_prefix
from ..errors import StateRefused
from ..llama.context import Context
from ..prompt.layout import Path as ModPath, Segment
from ..prompt.plan import PromptPlan
from .stitch import place

MIN_TOKENS = 16  # a question shorter than this is not worth a copy of its cells
DEFAULT_BYTES = 64 << 20  # per session: ~2,800 question tokens of SmolLM2-135M, ~570 of a 3B model


def filled_as(plan: PromptPlan, keys: Mapping[ModPath, str], stored_at: Mapping[tuple[ModPath, int], int],
              fix: Mapping[int, int]) -> Hashable:
    """What decides the cells a plan fills the context with: each cached part's file, the cells it
    is taken from and where they go (and how many of its first tokens are computed afresh), each
    fresh part's tokens and place. Two plans with the same value fill the context alike."""
    out: list[tuple] = []
    for part, at in zip(plan, plan.positions(), strict=True):
        if isinstance(part, Segment):
            out.append((keys[part.owner], part.offset, stored_at[part.owner, part.offset], at, len(part.tokens),
                        fix.get(part.offset, 0)))
        else:
            out.append((tuple(part.tokens), at))
    return tuple(out)


@dataclass(frozen=True)
class Held:
    """What the context holds after a question: the prompt (``prompt``, from :func:`filled_as`,
    ending at ``start``), then the question's cells ``tokens``; valid while the runtime's context
    has not been handed out since (``uses``)."""

    prompt: Hashable
    start: int
    tokens: tuple[int, ...]
    uses: int


@dataclass(frozen=True)
class Tail:
    prompt: Hashable
    start: int
    tokens: tuple[int, ...]
    blob: np.ndarray  # sequence state of the cells start ... start + len(tokens) - 1


class Tails:
    def __init__(self, capacity: int = DEFAULT_BYTES) -> None:
        self.capacity = capacity
        self._tails: OrderedDict[tuple[Hashable, tuple[int, ...]], Tail] = OrderedDict()  # oldest use first
        self._bytes = 0  # (one session's, used by one thread at a time: no lock)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._tails)

    def clear(self) -> None:
        self._tails.clear()
        self._bytes = 0

    def keep(self, ctx: Context, held: Held) -> None:
        """Copy the held question's cells out of sequence 0 (when they are worth it and not kept
        yet), evicting the least recently used past the capacity."""
        key = (held.prompt, held.tokens)
        if len(held.tokens) < MIN_TOKENS or key in self._tails or ctx.pos_max(0) + 1 < held.start + len(held.tokens):
            return
        ctx.seq_cp(0, 1, held.start, held.start + len(held.tokens))
        try:
            blob = ctx.save_state(1)
        finally:
            ctx.seq_rm(1)
        if blob.nbytes > self.capacity:
            return
        self._tails[key] = Tail(held.prompt, held.start, held.tokens, blob)
        self._bytes += blob.nbytes
        while self._bytes > self.capacity:
            self._bytes -= self._tails.popitem(last=False)[1].blob.nbytes

    def resume(self, ctx: Context, prompt: Hashable, start: int, question: Sequence[int], beyond: int) -> int:
        """Sequence 0 holds the prompt and the question's first ``beyond`` tokens: when a kept tail
        after the same prompt shares at least MIN_TOKENS more of ``question``, put its cells there
        instead. Returns how
        many of the question's tokens sequence 0 holds (at most all but the last: a state carries
        no logits)."""
        best: tuple[Tail, int] | None = None
        for tail in self._tails.values():
            if tail.prompt == prompt and tail.start == start:
                n = min(common_prefix(tail.tokens, question), len(question) - 1)
                if n >= beyond + MIN_TOKENS and (best is None or n > best[1]):
                    best = (tail, n)
        if best is None:
            return beyond
        tail, n = best
        self._tails.move_to_end((tail.prompt, tail.tokens))
        ctx.seq_rm(0, start, -1)
        try:
            place(ctx, tail.blob, stored=start, at=start, tokens=tail.tokens[:n], whole=False)
        except StateRefused:  # (never seen: it was saved from this context) computed instead
            ctx.seq_rm(1)
            if self._tails.pop((tail.prompt, tail.tokens), None) is not None:
                self._bytes -= tail.blob.nbytes
            return 0
        return n

"""A schema question's own cells, kept for the next question over the same modules.

After a question the context holds the prompt (the modules and parameter values), the question
and its answer. The next question over the same prompt (the same cached states at the same
places, :func:`filled_as`) keeps the prompt where it is and cuts back only what the two questions
do not share: a follow-up turn of a chat or a question beginning with the same pasted text
computes only what is new, and no module is loaded again. The cells a question took are also kept
in RAM (:class:`Tails`, least recently used evicted past a byte budget), so a question that
begins like an earlier one, not the last, resumes from it: its cells are loaded beside the prompt
they were computed after, at the positions they were computed at.

Answers stay exactly the ones a fresh session gives. llama.cpp's results for a token depend a
little on the batch it is decoded in (its matrix kernels block by batch size), so a question is
always decoded in chunks of CHUNK tokens from its first one (:func:`decode`), and cells are reused
only up to a chunk's end (:func:`usable`): the chunks computed now are the ones a fresh
computation computes, after the same cells. (llama.cpp's server reuses any prefix and documents
that its answers may then differ.)
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
from ..prompt.plan import PromptPlan, Uncached
from .stitch import place

CHUNK = 64  # a question's decode batch: 128 tokens at ~4k took 1.13x one batch's time (SmolLM2, 2 cores)
DEFAULT_BYTES = 64 << 20  # per session: ~2,900 question tokens of SmolLM2-135M, ~580 of Llama 3.2 3B


def usable(shared: int, question: Sequence[int]) -> int:
    """How many of a question's first ``shared`` tokens can come from cells computed before: whole
    chunks, and never the last token (a state carries no logits)."""
    n = min(shared, len(question) - 1)
    return n - n % CHUNK


def decode(ctx: Context, question: Sequence[int], start: int, done: int) -> None:
    """Decode ``question[done:]`` (``done``: a chunk's end) at ``start + done ...`` in chunks of
    CHUNK counted from the question's first token, the last one's logits kept."""
    for b in range(done, len(question), CHUNK):
        ctx.decode(list(question[b:b + CHUNK]), start=start + b, logits=b + CHUNK >= len(question))


def filled_as(plan: PromptPlan, keys: Mapping[ModPath, str], stored_at: Mapping[tuple[ModPath, int], int],
              fix: Mapping[int, int]) -> Hashable | None:
    """What decides the cells a plan fills the context with: each cached part's file, the cells it
    is taken from and where they go (and how many of its first tokens are computed afresh), each
    parameter value's tokens and place. Two plans with the same value fill the context alike.
    None for a plan with a cache="false" module: PML computes those for every request."""
    out: list[tuple] = []
    for part, at in zip(plan, plan.positions(), strict=True):
        if isinstance(part, Uncached):
            return None
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
        if len(held.tokens) <= CHUNK or key in self._tails or ctx.pos_max(0) + 1 < held.start + len(held.tokens):
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
        """Sequence 0 holds the prompt and the question's first ``beyond`` tokens (a chunk's end):
        when a kept tail after the same prompt serves more of ``question`` (:func:`usable`), put
        its cells there instead. Returns how many of the question's tokens sequence 0 holds."""
        best: tuple[Tail, int] | None = None
        for tail in self._tails.values():
            if tail.prompt == prompt and tail.start == start:
                n = usable(common_prefix(tail.tokens, question), question)
                if n > beyond and (best is None or n > best[1]):
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

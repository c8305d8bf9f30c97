"""Putting a prompt's cached states and its fresh tokens into one llama.cpp sequence.

A cached state is stored where it was computed (right after its context) and moved to where the
prompt puts it: loaded into a scratch sequence, its cells shifted (llama.cpp re-rotates their K at
the next decode), then copied into sequence 0. :func:`fill` takes a plan (cached segments and fresh
token runs in prompt order) and each segment's state, computed now (an array) or still being read
from its cache file (a :class:`.loader.StateRead`): reading the next state overlaps loading this one.
:func:`place` puts one state (or a run of its cells) at a position; the text path (recognized
spans) uses it too.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import BlobError, CacheFileError, ModuleDamaged, ModuleStateRefused, StateRefused
from ..llama.context import Context
from ..prompt.layout import Path as ModPath, Segment
from ..prompt.plan import PromptPlan
from .loader import Blob, Blobs, StateRead


def ready(blob: Blob) -> np.ndarray:
    return blob.get() if isinstance(blob, StateRead) else blob


def fill(ctx: Context, plan: PromptPlan, blobs: Blobs, stored_at: Mapping[tuple[ModPath, int], int],
         recompute_first: Mapping[int, int]) -> tuple[int, int]:
    """Put the plan into sequence 0 of an empty context, each part right after the one before:
    cached segments loaded from where they are stored (``stored_at``, by owner and layout offset)
    and moved to their place (the first ``recompute_first[offset]`` tokens of a segment computed
    afresh instead), fresh parts (parameter values, cache="false" modules) decoded. Returns
    (cached tokens, computed tokens); raises ModuleDamaged or ModuleStateRefused."""
    cached = computed = 0
    for part, at in zip(plan, plan.positions(), strict=True):
        if not isinstance(part, Segment):
            ctx.decode(list(part.tokens), start=at)
            computed += len(part.tokens)
            continue
        n = recompute_first.get(part.offset, 0)
        try:
            blob = ready(blobs[part.owner][part.offset])
        except (CacheFileError, BlobError) as e:
            raise ModuleDamaged(part.owner, e) from None
        try:
            place(ctx, blob, stored=stored_at[part.owner, part.offset], at=at, tokens=part.tokens, first=n)
        except StateRefused as e:
            raise ModuleStateRefused(part.owner, e) from None
        cached, computed = cached + len(part.tokens) - n, computed + n
    return cached, computed


def place(ctx: Context, blob: np.ndarray, *, stored: int, at: int, tokens: Sequence[int], first: int = 0,
          whole: bool = True) -> None:
    """Put the cells a state blob holds at positions ``stored ... stored + len(tokens) - 1`` into
    sequence 0 at ``at ...`` (sequence 0 must end right before ``at``): the first ``first`` of them
    decoded afresh from ``tokens`` instead. ``whole``: the blob holds exactly those cells (else
    its other cells are dropped after loading). The move is a K-shift llama.cpp applies at the next
    decode; StateRefused when llama.cpp refuses the blob."""
    n = len(tokens)
    if first:
        ctx.decode(list(tokens[:first]), start=at)
    if first >= n:
        return
    lo, hi = stored + first, stored + n
    if whole and not first and ctx.pos_max(0) < 0:
        ctx.load_state(0, blob)  # nothing to keep apart from: load and move in place
        ctx.seq_add(0, at - stored)
        return
    ctx.load_state(1, blob)  # loading replaces a sequence: load into scratch, then copy the cells over
    if not whole or first:
        ctx.seq_rm(1, -1, lo)
        ctx.seq_rm(1, hi, -1)
    ctx.seq_add(1, at - stored)
    ctx.seq_cp(1, 0)
    ctx.seq_rm(1)

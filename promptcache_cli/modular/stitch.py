"""Putting a prompt's cached segment states and its fresh tokens into one llama.cpp sequence.

:func:`fill` takes a plan (cached segments and fresh token runs in prompt order) and each segment's
state, computed now (an array) or still being read from its cache file (a
:class:`.loader.StateRead`): reading the next state overlaps loading this one.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import BlobError, CacheFileError, ModuleDamaged, ModuleStateRefused, StateRefused
from ..llama.context import Context
from ..prompt.layout import Segment
from ..prompt.plan import PromptPlan
from .loader import Blob, Blobs, StateRead


def _ready(blob: Blob) -> np.ndarray:
    return blob.get() if isinstance(blob, StateRead) else blob


def fill(ctx: Context, plan: PromptPlan, blobs: Blobs, recompute_first: Mapping[int, int]) -> tuple[int, int]:
    """Put the plan into sequence 0 of an empty context: cached segments loaded at their positions
    (the first ``recompute_first[offset]`` tokens of a segment computed afresh instead), fresh parts
    (parameter values, cache="false" modules) decoded right after the prompt so far. Returns
    (cached tokens, computed tokens); raises ModuleDamaged or ModuleStateRefused."""
    cached = computed = 0
    for part in plan:
        if not isinstance(part, Segment):
            ctx.decode(list(part.tokens), start=ctx.pos_max(0) + 1)
            computed += len(part.tokens)
            continue
        n = recompute_first.get(part.offset, 0)
        try:
            blob = _ready(blobs[part.owner][part.offset])
        except (CacheFileError, BlobError) as e:
            raise ModuleDamaged(part.owner, e) from None
        try:
            if n:
                load_recomputing(ctx, part, blob, n)
            elif ctx.pos_max(0) < 0:
                ctx.load_state(0, blob)
            else:  # loading replaces a sequence: load into scratch, then copy the cells over
                ctx.load_state(1, blob)
                ctx.seq_cp(1, 0)
                ctx.seq_rm(1)
        except StateRefused as e:
            raise ModuleStateRefused(part.owner, e) from None
        cached, computed = cached + len(part.tokens) - n, computed + n
    return cached, computed


def load_recomputing(ctx: Context, seg: Segment, blob: np.ndarray, n: int) -> None:
    """Decode ``seg``'s first ``n`` tokens at their positions into sequence 0 (which must end right
    before them), then add the segment's other cached cells from ``blob``."""
    ctx.decode(list(seg.tokens[:n]), start=seg.offset)
    if n < len(seg.tokens):
        ctx.load_state(1, blob)
        ctx.seq_rm(1, seg.offset, seg.offset + n)
        ctx.seq_cp(1, 0)
        ctx.seq_rm(1)

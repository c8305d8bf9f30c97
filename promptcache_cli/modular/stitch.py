"""Putting a prompt's cached segment states and its fresh tokens into one llama.cpp sequence.

:class:`engine.Session` hands :func:`fill` a plan (cached segments and fresh token runs in prompt
order) and each segment's state, computed now (an array) or still being read from its cache file
(a :class:`StateRead`): reading the next state overlaps loading this one. :func:`extend` keeps the
common prefix of a sequence when modules are computed one after another.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..store import cache_file
from ..benchmarks import repair
from ..llama import state_blob
from ..prompt.layout import Path as ModPath
from ..llama.backend import Context, StateRefused


class StateRead:
    """A stored segment state being read: :meth:`get` waits for it and checks it (once)."""

    def __init__(self, pending: cache_file.Pending, check: Callable[[np.ndarray], None]) -> None:
        self._pending, self._check = pending, check

    def get(self) -> np.ndarray:
        """The checked blob; raises CacheFileError or BlobError (again on every call) if it is damaged."""
        blob = self._pending.result()
        if self._check is not None:
            self._check(blob)
            self._check = None
        return blob


Blob = np.ndarray | StateRead  # a state computed now, or one being read from the cache


def _ready(blob: Blob) -> np.ndarray:
    return blob.get() if isinstance(blob, StateRead) else blob


class ModuleStateRefused(StateRefused):
    """llama.cpp refused a module's state blob."""

    def __init__(self, owner: ModPath, error: StateRefused) -> None:
        super().__init__(str(error))
        self.owner, self.error = owner, error


class ModuleDamaged(Exception):
    """A module's stored state turned out damaged when it was needed."""

    def __init__(self, owner: ModPath, error: cache_file.CacheFileError | state_blob.BlobError) -> None:
        super().__init__(str(error))
        self.owner, self.error = owner, error


def fill(ctx: Context, plan: list, blobs: dict[ModPath, dict[int, Blob]],
         fix: dict[int, int]) -> tuple[int, int]:
    """Put the plan into sequence 0 of an empty context: cached segments loaded at their positions
    (the first ``fix[offset]`` tokens of a segment recomputed), fresh parts decoded. Returns
    (cached tokens, computed tokens); raises ModuleDamaged or ModuleStateRefused."""
    cached = computed = 0
    for kind, obj in plan:
        if kind != "segment":
            ctx.decode(list(obj), start=ctx.pos_max(0) + 1)
            computed += len(obj)
            continue
        n = fix.get(obj.offset, 0)
        try:
            blob = _ready(blobs[obj.owner][obj.offset])
        except (cache_file.CacheFileError, state_blob.BlobError) as e:
            raise ModuleDamaged(obj.owner, e) from None
        try:
            if n:  # boundary repair: its first n tokens computed in this prompt's context
                repair.load(ctx, obj, blob, n)
            elif ctx.pos_max(0) < 0:
                ctx.load_state(0, blob)
            else:  # loading replaces a sequence: load into scratch, then copy the cells over
                ctx.load_state(1, blob)
                ctx.seq_cp(1, 0)
                ctx.seq_rm(1)
        except StateRefused as e:
            raise ModuleStateRefused(obj.owner, e) from None
        cached, computed = cached + len(obj.tokens) - n, computed + n
    return cached, computed


def extend(ctx: Context, running: tuple[int, list[int]], start: int, tokens: list[int],
           tick: Callable[[int], None]) -> tuple[int, list[int]]:
    """Make seq 0 hold exactly ``tokens`` at positions ``start...``, reusing what it holds."""
    cur_start, cur = running
    keep = 0
    if cur_start == start:
        n = min(len(cur), len(tokens))
        while keep < n and cur[keep] == tokens[keep]:
            keep += 1
    if keep == len(tokens) and keep > 0:  # nothing new; recompute the last token to stay simple
        keep -= 1
    if keep == 0:
        ctx.seq_rm(0)
    else:
        ctx.seq_rm(0, start + keep, -1)
    ctx.decode(tokens[keep:], start=start + keep, progress=tick)
    return start, tokens

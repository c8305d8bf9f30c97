"""Resuming a request from a stored prefix state: which state (the deepest usable one at or below
the request's overlap with the cached prompt) and loading it, checked, into sequence 0. What a
state at a position is depends on the model's memory (llama/memory.py; prefix/session.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

import numpy as np

from ..core.runtime import Runtime
from ..errors import BackendError, BlobError, CacheFileError, CacheFileMissing, DamagedState
from ..llama.context import Context
from .states import Checkpoint, PrefixStates


@dataclass(frozen=True)
class ResumePlan:
    overlap: int  # leading tokens the request shares with the cached prompt
    restore_at: int  # the state the request resumes from (0: a cold prefill)
    recomputed: int  # tokens decoded after restoring


class Restorer:
    def __init__(self, runtime: Runtime, states: PrefixStates) -> None:
        self.runtime = runtime
        self.states = states

    def plan(self, cached: list[int], request: list[int], stored: list[int]) -> ResumePlan:
        """Where a request resumes: the deepest usable state at or below its overlap, leaving at
        least one token to decode (a state carries no logits)."""
        d = common_prefix(cached, request)
        limit = min(d, len(request) - 1)
        if self.runtime.model.memory.can_cut:
            at = limit if len(cached) in stored else 0
        else:
            at = max((p for p in stored if p <= limit), default=0)
        return ResumePlan(d, at, len(request) - at)

    def restore(self, ctx: Context, key: str, cached: list[int], request: list[int], *,
                only: Collection[int] | None = None) -> ResumePlan:
        """Load the state the request resumes from into sequence 0 (left empty to start cold)."""
        stored = self.states.stored(key)
        if only is not None:
            stored = {p: ck for p, ck in stored.items() if p in only}
        while True:
            plan = self.plan(cached, request, list(stored))
            ctx.clear()
            if not plan.restore_at:
                return plan
            try:
                self._load_at(ctx, key, cached, plan.restore_at, stored)
                return plan
            except _Vanished as e:  # removed since it was listed (gc, rm, another host): plan without it
                del stored[e.position]

    def _load_at(self, ctx: Context, key: str, cached: list[int], at: int, stored: dict[int, Checkpoint]) -> None:
        n = len(cached)
        memory = self.runtime.model.memory
        if memory.can_cut or (memory.partial_checkpoints and at < n):
            _load(ctx, self._checked(stored, n, key, cached, partial=False), n)
            if memory.partial_checkpoints:
                _load(ctx, self._checked(stored, at, key, cached[:at], partial=True), at, partial=True)
            if at < n:
                ctx.seq_rm(0, at, -1)
        else:
            _load(ctx, self._checked(stored, at, key, cached[:at], partial=False), at)
        if ctx.pos_max(0) != at - 1:
            raise DamagedState(at, f"the restored state ends at {ctx.pos_max(0) + 1}, not {at}")

    def _checked(self, stored: dict[int, Checkpoint], pos: int, key: str, tokens: list[int], *,
                 partial: bool) -> np.ndarray:
        if pos not in stored:
            raise DamagedState(pos, "it is missing")
        try:
            return self.states.load(stored[pos].path, key, tokens, partial=partial)
        except CacheFileMissing:
            raise _Vanished(pos) from None
        except (CacheFileError, BlobError, OSError) as e:
            raise DamagedState(pos, str(e)) from None


class _Vanished(Exception):
    """A stored state listed for a request is not there any more."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


def _load(ctx: Context, blob: np.ndarray, position: int, *, partial: bool = False) -> None:
    try:
        ctx.load_state(0, blob, partial=partial)
    except BackendError as e:
        raise DamagedState(position, str(e)) from None


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n

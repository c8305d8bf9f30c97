"""Finding cached text in any prompt: which runs of a prompt's tokens equal runs of stored segments.

The span index (store/span_index.py) names, for each window of ``CHUNK`` prompt tokens equal to an
indexed chunk, a stored segment and an alignment (prompt position - segment position). Here each
alignment is checked against the segment's tokens and widened to the longest run of equal tokens
around its chunks: a document pasted into a larger text usually tokenizes the same inside, and
differs only in a token or two at its edges (where it joins the text around it), which this leaves
out and the caller computes fresh. Runs that overlap are resolved longest first (a shorter one is cut
to what is left), so every prompt token comes from at most one stored segment. Pure: reading files
is the caller's (``tokens_of``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

MIN_MATCH = 32  # the shortest run worth loading from a file


@dataclass(frozen=True)
class Match:
    """Prompt tokens ``[start, start + length)`` equal tokens ``[seg_start, seg_start + length)``
    of segment ``segment`` of the file ``key``."""

    key: str
    segment: int
    seg_start: int
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def find(prompt: Sequence[int], hits: Sequence[tuple[int, object]],
         tokens_of: Callable[[str, int], Sequence[int] | None], *,
         prefer: Callable[[Match], float] | None = None, min_match: int = MIN_MATCH) -> list[Match]:
    """Non-overlapping runs of ``prompt`` found in stored segments, in prompt order. ``hits``: (window
    start in the prompt, an index entry with ``key``, ``segment``, ``offset``); ``tokens_of(key,
    segment)``: that segment's tokens (None: the file is gone or unusable); ``prefer``: among runs of
    one length, the higher score wins (the file whose context fits the prompt best)."""
    p = np.asarray(prompt, dtype=np.int64)
    groups: dict[tuple[str, int, int], list[int]] = {}
    for i, e in hits:
        groups.setdefault((e.key, e.segment, i - e.offset), []).append(i)  # type: ignore[attr-defined]
    found: list[Match] = []
    for (key, segment, delta), starts in groups.items():
        seg = tokens_of(key, segment)
        if seg is None:
            continue
        s = np.asarray(seg, dtype=np.int64)
        lo, hi = max(0, delta), min(len(p), delta + len(s))
        if hi - lo < min_match:
            continue
        equal = p[lo:hi] == s[lo - delta : hi - delta]
        edges = np.flatnonzero(np.diff(np.concatenate(([0], equal.view(np.int8), [0]))))
        for a, b in zip(edges[::2] + lo, edges[1::2] + lo, strict=True):
            if b - a >= min_match and any(a <= i < b for i in starts):
                found.append(Match(key, segment, int(a - delta), int(a), int(b - a)))
    score = prefer or (lambda m: 0.0)
    found.sort(key=lambda m: (-m.length, -score(m), m.start, m.key, m.segment))
    taken: list[Match] = []
    for m in found:
        for part in _left_over(m, taken):
            if part.length >= min_match:
                taken.append(part)
    return sorted(taken, key=lambda m: m.start)


def _left_over(m: Match, taken: list[Match]) -> list[Match]:
    """The longest piece of ``m`` no taken run covers (none when nothing is left)."""
    free = [(m.start, m.end)]
    for t in taken:
        nxt = []
        for a, b in free:
            if t.end <= a or b <= t.start:
                nxt.append((a, b))
                continue
            if a < t.start:
                nxt.append((a, t.start))
            if t.end < b:
                nxt.append((t.end, b))
        free = nxt
    if not free:
        return []
    a, b = max(free, key=lambda ab: ab[1] - ab[0])
    return [Match(m.key, m.segment, m.seg_start + (a - m.start), a, b - a)]

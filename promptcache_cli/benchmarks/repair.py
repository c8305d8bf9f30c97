"""Boundary repair, an experiment the benchmark measures: recompute the first tokens of a stitched
module in the prompt's real context.

A module's cached states were computed after some context (the shared prefix, or the default
prompt before it); when a question puts other modules before it, its states never saw them, and
its first tokens carry most of the damage (they were computed right after text that is not there).
The repair decodes those first ``n`` tokens afresh, after everything the prompt holds before
them, and loads only the rest of the module's cached cells. It applies to a segment only when
what the prompt puts before it differs from what it was computed after, and when it follows the
prompt so far without a position gap (llama.cpp continues a sequence only at its next position),
so a default prompt costs nothing extra. `make bench` measures what it buys and what it costs.

Not part of the product: it reaches the engine through the boundary hook of
:func:`promptcache_cli.open_session` (``boundary_hook=repair.hook(n)``).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from .. import Boundary


def plan(bounds: Sequence[Boundary], n: int) -> dict[int, int]:
    """Segment offset -> how many of its first tokens to recompute, given every cached part's
    boundary in prompt order."""
    out: dict[int, int] = {}
    for b in bounds:
        if n > 0 and b.preceded and b.contiguous and not b.exact:
            out[b.offset] = min(n, b.length)
    return out


def hook(n: int) -> Callable[[Sequence[Boundary]], Mapping[int, int]]:
    """The boundary hook that repairs ``n`` tokens per module boundary."""
    return lambda bounds: plan(bounds, n)

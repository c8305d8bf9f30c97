"""Boundary repair: recompute the first tokens of a stitched module in the prompt's real context.

A module's cached states were computed after some context (the shared prefix, or the default
prompt before it); when a question puts other modules before it, its states never saw them, and
its first tokens carry most of the damage (they were computed right after text that is not there).
The repair decodes those first ``n`` tokens afresh, after everything the prompt holds before
them, and loads only the rest of the module's cached cells. It applies to a segment only when
what the prompt puts before it differs from what it was computed after, and when it follows the
prompt so far without a position gap (llama.cpp continues a sequence only at its next position),
so a default prompt costs nothing extra. `make bench` measures what it buys and what it costs.
"""

from __future__ import annotations

from ..prompt import layout as lay
from ..prompt.layout import Layout, Segment
from ..llama.backend import Context


def plan(layout: Layout, prompt: list[tuple[str, object]], encoding: str, n: int) -> dict[int, int]:
    """Segment offset -> how many of its first tokens to recompute, for a prompt plan as
    ``Session.prompt_plan`` returns it (("segment", Segment) or ("fresh", tokens), in position order)."""
    out: dict[int, int] = {}
    for seg, before, end in lay.preceding(prompt):
        if n > 0 and before and seg.offset == end and lay.contexts(layout, seg, encoding) != (tuple(before),):
            out[seg.offset] = min(n, len(seg.tokens))
    return out


def load(ctx: Context, seg: Segment, blob, n: int) -> None:
    """Decode ``seg``'s first ``n`` tokens at their positions into sequence 0 (which must end right
    before them), then add the segment's other cached cells from ``blob``."""
    ctx.decode(list(seg.tokens[:n]), start=seg.offset)
    if n < len(seg.tokens):
        ctx.load_state(1, blob)
        ctx.seq_rm(1, seg.offset, seg.offset + n)
        ctx.seq_cp(1, 0)
        ctx.seq_rm(1)

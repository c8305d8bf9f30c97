"""Where each cached part of a prompt meets the text before it: whether the prompt puts exactly the
text its states were computed after before it. Selective recompute (modular/refresh.py) and the
benchmark's boundary repair (through the session's boundary hook) read these."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .contexts import contexts
from .layout import Layout, Segment
from .plan import PromptPlan


@dataclass(frozen=True)
class Boundary:
    """Where a cached part meets the prompt before it."""

    segment: Segment
    preceded: bool  # the prompt holds text before it
    contiguous: bool  # it follows the prompt so far without a position gap (always, but in static layouts)
    _layout: Layout
    _before: tuple[int, ...]
    _encoding: str
    position: int  # where the prompt puts it

    @property
    def offset(self) -> int:
        """The segment's offset in the schema's layout (what names it; a hook's answer is keyed by it)."""
        return self.segment.offset

    @property
    def length(self) -> int:
        return len(self.segment.tokens)

    @cached_property
    def exact(self) -> bool:
        """Its states were computed after exactly the text the prompt puts before it (computed on
        first use: finding a segment's contexts walks the schema's union choices)."""
        return contexts(self._layout, self.segment, self._encoding) == (self._before,)


def boundaries(layout: Layout, plan: PromptPlan, encoding: str) -> list[Boundary]:
    """Every cached part's boundary, in prompt order, for states cached with ``encoding``."""
    out: list[Boundary] = []
    before: list[int] = []
    end = 0
    for p, at in zip(plan.parts, plan.positions(), strict=True):
        if isinstance(p, Segment):
            out.append(Boundary(p, bool(before), at == end, layout, tuple(before), encoding, at))
        before += p.tokens
        end = at + len(p.tokens)
    return out

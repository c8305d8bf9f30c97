"""A prompt's plan: what a question's prompt is made of, in prompt order, typed.

Cached parts are the layout's :class:`Segment` objects (their states come from the cache, moved to
where the plan puts them); fresh parts are parameter values (:class:`Fresh`) and the text of
cache="false" modules (:class:`Uncached`), computed when the question is asked. Parts follow each
other without gaps from position 0: a segment's ``offset`` is its place in the schema's static
layout (which names it), not where the prompt puts it (:meth:`PromptPlan.positions`). The modules a
request names are placed in the order it names them (within one chat turn), the schema's own text
stays where the schema has it. The question and the template's tail follow the plan
(:func:`question_tokens`). Where each cached part meets the text before it is boundaries.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

from ..errors import ParameterTooLong
from ..pml.selection import Selection, param_value
from .layout import QUESTION_SEPARATOR, ROOT, Layout, Path, Segment, Tokenizer


def owner_name(owner: Path) -> str:
    """A module's name as messages and reports show it: ``a/b``, or ``(schema)`` for the root."""
    return "/".join(owner) if owner else "(schema)"


@dataclass(frozen=True)
class Fresh:
    """Tokens computed when the question is asked (a parameter's value, or its scaffold text when
    none is given), decoded right after the prompt so far."""

    tokens: tuple[int, ...]
    slot_offset: int  # where the parameter's slot starts in the layout
    owner: Path = ROOT  # the module holding the parameter


@dataclass(frozen=True)
class Uncached:
    """A segment of a cache="false" module: never stored, computed for each request right after
    the prompt so far (at its own positions when nothing before it was left out)."""

    owner: Path
    offset: int  # where it starts in the layout
    tokens: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.offset + len(self.tokens)


Part = Union[Segment, Fresh, Uncached]


@dataclass(frozen=True)
class PromptPlan:
    parts: tuple[Part, ...]
    static: bool = False  # cached parts at their layout offsets, with gaps (pc 0.1's layout; an experiment)

    def __iter__(self) -> Iterator[Part]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def cached(self) -> list[Segment]:
        """The cached parts, in position order."""
        return [p for p in self.parts if isinstance(p, Segment)]

    @property
    def owners(self) -> list[Path]:
        """The owners of the cached parts, each once, in prompt order."""
        return list(dict.fromkeys(s.owner for s in self.cached))

    def tokens(self) -> list[int]:
        """Every part's tokens one after another, as a cold prefill from position 0 sees them."""
        return [t for p in self.parts for t in p.tokens]

    def storable(self) -> tuple[list[int], list[int]]:
        """What prefix mode may store: the tokens before the first cache="false" module's, and
        where each part before it after the first starts (see :meth:`tokens`, :meth:`starts`)."""
        n = next((i for i, p in enumerate(self.parts) if isinstance(p, Uncached)), len(self.parts))
        head = PromptPlan(self.parts[:n])
        return head.tokens(), head.starts()

    def starts(self) -> list[int]:
        """Where each part after the first starts in :meth:`tokens`."""
        return self.positions()[1:]

    def positions(self) -> list[int]:
        """Where each part starts in the prompt: right after the part before it (``static``: a
        cached part at its layout offset, a fresh one right after the part before it)."""
        out, n = [], 0
        for p in self.parts:
            at = p.offset if self.static and isinstance(p, Segment) else n
            out.append(at)
            n = at + len(p.tokens)
        return out

    @property
    def end(self) -> int:
        """The position after the last part (the question starts here)."""
        if not self.parts:
            return 0
        return self.positions()[-1] + len(self.parts[-1].tokens)

    def preceding(self) -> Iterator[tuple[Segment, list[int], int]]:
        """For each cached part: the part, the prompt's tokens before it and its position."""
        before: list[int] = []
        for p, at in zip(self.parts, self.positions(), strict=True):
            if isinstance(p, Segment):
                yield p, before, at
            before = before + list(p.tokens)


def plan_prompt(layout: Layout, selection: Selection, tok: Tokenizer, *, static: bool = False) -> PromptPlan:
    """The selected prompt in prompt order: cached segments, and fresh parameter values; the
    modules the request names in the order it names them (:func:`_in_request_order`). ``static``:
    in layout order, at layout offsets (the layout of pc 0.1, kept as an experiment)."""
    included = {ROOT} | set(selection.modules)
    items: list[tuple[int, Part]] = [
        (s.offset, Uncached(s.owner, s.offset, s.tokens) if s.owner in layout.uncached else s)
        for s in layout.segments if s.owner in included
    ]
    for slot in layout.slots:
        if slot.owner not in included:
            continue
        value = param_value(selection, slot.owner, slot.name)
        toks = tuple(tok.tokenize(value, special=False)) if value is not None else slot.scaffold
        if len(toks) > slot.length:
            raise ParameterTooLong(too_long(slot.owner, slot.name, value, len(toks), slot.length))
        if toks:
            items.append((slot.offset, Fresh(toks, slot.offset, slot.owner)))
    items.sort(key=lambda it: it[0])
    parts = [part for _, part in items]
    order = selection.order
    if static:
        return PromptPlan(tuple(parts), static=True)
    return PromptPlan(tuple(_in_request_order(layout, parts, order) if len(order) > 1 else parts))


def _in_request_order(layout: Layout, parts: list[Part], order: tuple[Path, ...]) -> list[Part]:
    """``parts`` (in document order) with the top-level modules named in ``order`` swapped into
    that order: within each chat turn, the places the named modules take in document order are
    filled with them in the order named. The schema's own text and unnamed modules stay put."""
    rank = {path: i for i, path in enumerate(order)}
    turns = [(e.offset, e.offset + e.length) for e in layout.elements if e.kind == "role"]

    def turn_of(path: Path) -> int:
        at = layout.modules[path].offset
        return next((i for i, (a, b) in enumerate(turns) if a <= at < b), -1)

    runs: list[tuple[Path, list[Part]]] = []  # consecutive parts of one top-level module (or the root)
    for part in parts:
        top = part.owner[:1]
        if runs and runs[-1][0] == top and top != ROOT:
            runs[-1][1].append(part)
        else:
            runs.append((top, [part]))
    named = [i for i, (top, _) in enumerate(runs) if top in rank]
    by_turn: dict[int, list[int]] = {}
    for i in named:
        by_turn.setdefault(turn_of(runs[i][0]), []).append(i)
    placed = list(runs)
    for places in by_turn.values():
        for place, run in zip(places, sorted((runs[i] for i in places), key=lambda r: rank[r[0]]), strict=True):
            placed[place] = run
    return [part for _, run in placed for part in run]


def too_long(owner: Path, name: str, value: str | None, n_tokens: int, length: int) -> str:
    """What to do about a parameter value longer than its slot: shorten it (by how much) or raise
    the schema's ``length`` attribute (to what)."""
    over = n_tokens - length
    where = f"parameter '{owner_name(owner)}/{name}'"
    if value is None:  # its scaffold text
        return (f"{where}: its scaffold is {n_tokens} tokens, {over} more than its length {length}: "
                f'raise length="{length}" to at least {n_tokens} in the schema, or shorten the scaffold')
    chars = max(1, round(over * len(value) / n_tokens))
    return (f"{where} is {n_tokens} tokens, {over} more than its length {length}: shorten the value by "
            f"{over} token{'s' if over > 1 else ''} (about {chars} character{'s' if chars > 1 else ''}), "
            f'or raise length="{length}" to at least {n_tokens} in the schema\'s <parameter name="{name}">')


def question_tokens(layout: Layout, question: str, tok: Tokenizer) -> list[int]:
    """The question (after a blank line when it continues the schema's last user turn), then the
    template's glue up to the answer."""
    text = (QUESTION_SEPARATOR + question) if question and layout.tail_joins else question
    toks = tok.tokenize(text, special=False) if text else []
    return toks + tok.tokenize(layout.tail, special=True)

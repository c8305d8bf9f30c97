"""The context arithmetic as it was before it was made linear (prompt/contexts.py, issue 20): a
quadratic but plain reading of the rules, kept as the reference the fast version must match token
for token (tests/test_properties.py). Cache keys hash these contexts, so any difference would also
orphan every cache on disk."""

from __future__ import annotations

import itertools
import math
import random
from typing import Iterable

from promptcache_cli.prompt.contexts import AVERAGED_CONTEXTS, _ENUMERATE
from promptcache_cli.prompt.layout import ROOT, Layout, Path, Segment


def _ancestors(path: Path) -> list[Path]:
    return [path[:i] for i in range(len(path) + 1)]


def scaffold_selection(layout: Layout, owner: Path) -> set[Path]:
    """The default prompt, with every union on ``owner``'s ancestor chain switched to the
    member on that chain (the reference implementation's context for a module)."""
    chosen = set(layout.default_modules)
    for anc in _ancestors(owner)[1:]:
        if layout.modules[anc].union is not None and anc not in chosen:
            chosen = _choose(layout, chosen, anc)
    chosen.update(_ancestors(owner)[1:])
    return chosen


def _choose(layout: Layout, chosen: set[Path], member: Path) -> set[Path]:
    """``chosen`` with ``member``'s union switched to it: its rivals (and everything inside them)
    out, the member and its default contents in."""
    union = layout.modules[member].union
    rivals = [p for p, i in layout.modules.items() if i.union == union and p != member]
    out = {p for p in chosen if not any(p[: len(r)] == r for r in rivals)}
    return out | {p for p in layout.default_modules if p[: len(member)] == member} | {member}


def _text(layout: Layout, owner: Path) -> tuple[tuple[int, ...], ...]:
    """A module's own text: its segments' tokens (enclosed modules not included)."""
    return tuple(s.tokens for s in layout.segments if s.owner == owner)


def _tokens_before(layout: Layout, visible: set[Path], offset: int) -> tuple[int, ...]:
    """The text of the ``visible`` owners before ``offset``, parameters as their scaffold text."""
    items: list[tuple[int, tuple[int, ...]]] = [
        (s.offset, s.tokens) for s in layout.segments if s.owner in visible and s.offset < offset
    ]
    items += [(s.offset, s.scaffold) for s in layout.slots if s.owner in visible and s.offset < offset]
    items.sort(key=lambda it: it[0])
    return tuple(t for _, toks in items for t in toks)


def contexts(layout: Layout, segment: Segment, encoding: str) -> tuple[tuple[int, ...], ...]:
    """The contexts a segment's states are computed after (see :func:`context_tokens`): one,
    except with ``average``, whose states are the mean of the states computed after each of
    several prompts the schema allows before the segment. Those are the default prompt with the
    unions before the segment (other than the ones holding it) switched to each of their members,
    except choices that repeat a text: a member whose text equals the segment's module's or another
    chosen member's (a union per slot, each holding the same documents, is how a schema lets
    questions order documents, and no question puts a document twice). The default prompt's
    context comes first unless it repeats a text; then all the others or, beyond
    ``AVERAGED_CONTEXTS`` in all, a fixed sample (the default prompt's alone when every choice
    repeats a text). ``scaffold``: the default prompt's context or, where it repeats a text, the
    first choice that does not. Members of one union at one offset get the same contexts
    (computed once for all of them), unless their texts differ in what they exclude."""
    if encoding == "independent":
        return (context_tokens(layout, segment, encoding),)
    if encoding == "scaffold":
        return _without_repeats(layout, segment, 1)
    if encoding == "average":
        return _without_repeats(layout, segment, AVERAGED_CONTEXTS)
    raise ValueError(f"unknown encoding {encoding!r}")


def _without_repeats(layout: Layout, segment: Segment, cap: int) -> tuple[tuple[int, ...], ...]:
    """Up to ``cap`` prompts before the segment that repeat no text (see :func:`contexts`): the
    default prompt's first, unless it repeats one; then the others, a fixed sample beyond ``cap``.
    With ``cap`` 1 and a default prompt that repeats a text: the first choice that does not (the
    unions' members in document order; beyond ``_ENUMERATE`` choices, in a sample seeded by the
    schema and position). The default prompt alone when every choice repeats a text."""
    base = scaffold_selection(layout, segment.owner)
    chain = set(_ancestors(segment.owner))
    members: dict[int, list[Path]] = {}
    for path, info in layout.modules.items():  # document order: outer unions before inner ones
        if info.union is not None and info.offset < segment.offset:
            members.setdefault(info.union, []).append(path)
    unions = [ms for ms in members.values() if not chain & set(ms)]
    texts = {p: _text(layout, p) for ms in unions for p in ms}
    own = [_text(layout, segment.owner)] if segment.owner != ROOT else []

    def repeats(chosen: set[Path]) -> bool:
        picked = own + [texts[p] for ms in unions for p in ms if p in chosen]
        return len(set(picked)) != len(picked)

    first = _tokens_before(layout, base | {ROOT}, segment.offset)
    if cap == 1 and not repeats(base):
        return (first,)
    rng = random.Random(f"{layout.schema_name}:{segment.offset}")
    if math.prod(len(ms) for ms in unions) <= _ENUMERATE:
        choices: Iterable[tuple[Path, ...]] = itertools.product(*unions)
    else:
        choices = (tuple(rng.choice(ms) for ms in unions) for _ in range(64 * AVERAGED_CONTEXTS))
    found: set[tuple[int, ...]] = set()
    for choice in choices:
        chosen = set(base)
        for member in choice:  # a union inside a module left out does not count
            if member[:-1] == ROOT or member[:-1] in chosen:
                chosen = _choose(layout, chosen, member)
        if not repeats(chosen):
            if cap == 1:
                return (_tokens_before(layout, chosen | {ROOT}, segment.offset),)
            found.add(_tokens_before(layout, chosen | {ROOT}, segment.offset))
    head = [] if repeats(base) and found else [first]  # every choice repeating a text: the default prompt alone
    others = sorted(found - {first})
    if len(head) + len(others) > cap:
        others = sorted(rng.sample(others, cap - len(head)))
    return (*head, *others)


def context_tokens(layout: Layout, segment: Segment, encoding: str) -> tuple[int, ...]:
    """The tokens a segment is computed after, in order; they are decoded immediately before
    the segment (at positions ending at ``segment.offset - 1``) and then dropped.

    - ``independent``: the text of the schema and of the segment's own ancestor modules before
      it (the shared prefix: system turn, role headers, the enclosing modules' text), with
      parameters' scaffold text. Sibling modules are not seen, so each module's states depend
      only on its own text and the prefix: changing one module never invalidates another.
    - ``scaffold``: everything of the default prompt before it (the reference implementation),
      except where that prompt repeats a text (see :func:`contexts`): then the first prompt the
      schema allows, its unions' members in document order, that does not.
    """
    if encoding == "independent":
        return _tokens_before(layout, set(_ancestors(segment.owner)), segment.offset)
    if encoding == "scaffold":
        return contexts(layout, segment, encoding)[0]
    raise ValueError(f"encoding {encoding!r} has no single context")

"""What a cached segment's states are computed after: its context, by encoding.

A module's states depend on the text before it. ``independent`` computes them after the shared
prefix only (the schema's and its ancestors' text), ``scaffold`` after the default prompt before
it (the reference implementation's choice), ``average`` takes the mean of the states computed after
several prompts the schema allows before it. The cache key of a module hashes these contexts, so a
cached state is only reused after the same text.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import Counter
from typing import Iterable

import numpy as np

from .layout import ROOT, Layout, Path, Segment

ENCODINGS = ("scaffold", "independent", "average")  # the first is the default (measured: scripts/bench.py)
AVERAGED_CONTEXTS = 8  # the most contexts an ``average`` state is the mean over
_ENUMERATE = 4096  # union choices up to this many are enumerated; beyond, sampled


def _ancestors(path: Path) -> list[Path]:
    return [path[:i] for i in range(len(path) + 1)]


class _Index:
    """What the context arithmetic needs of a layout, computed once (linear in its size): its
    items (segments, and slots as their scaffold text) in position order; each owner's items and
    tokens, flattened, so the text of an owner between two positions is one slice; the default
    prompt's tokens the same way; the unions and their members; and the default choices of the
    unions, for telling in a few steps whether the default prompt before a position repeats a text."""

    def __init__(self, layout: Layout) -> None:
        items = [(s.offset, s.owner, s.tokens) for s in layout.segments]
        items += [(s.offset, s.owner, s.scaffold) for s in layout.slots]
        items.sort(key=lambda it: it[0])  # stable: as _tokens_before orders them
        self.items = items
        self.offsets = [it[0] for it in items]
        self.default = _Flat()  # the default prompt (parameters as their scaffold text)
        self.owned: dict[Path, _Flat] = {}  # each owner's own items
        visible = set(layout.default_modules) | {ROOT}
        for offset, owner, tokens in items:
            if owner in visible:
                self.default.add(offset, tokens)
            flat = self.owned.get(owner)
            if flat is None:
                flat = self.owned[owner] = _Flat()
            flat.add(offset, tokens)
        self.default.close()
        for flat in self.owned.values():
            flat.close()
        # unions, in the order their first member appears in layout.modules (as _without_repeats
        # collects them), members in that order
        self.members: dict[int, list[Path]] = {}
        for path, info in layout.modules.items():
            if info.union is not None:
                self.members.setdefault(info.union, []).append(path)
        self.union_offset = {u: layout.modules[ms[0]].offset for u, ms in self.members.items()}
        self.module_offset = {path: info.offset for path, info in layout.modules.items()}
        self.children: dict[Path, list[Path]] = {}
        for path in layout.modules:
            self.children.setdefault(path[:-1], []).append(path)
        self._subtrees: dict[Path, frozenset[Path]] = {}
        # the default prompt's union choices (its member in the default prompt, at most one per
        # union), by offset, with their texts as ids; ndup[k]: repeated texts among the first k
        self.text_ids: dict[tuple, int] = {}
        chosen = sorted(((self.union_offset[u], u, m) for u, ms in self.members.items() for m in ms
                         if m in layout.default_modules), key=lambda c: c[0])
        self.chosen_offsets = [c[0] for c in chosen]
        self.chosen_index = {c[1]: i for i, c in enumerate(chosen)}
        self.chosen_text = [self.text_id(layout, c[2]) for c in chosen]
        self.at_text: dict[int, list[int]] = {}
        self.ndup = [0]
        for i, t in enumerate(self.chosen_text):
            seen = self.at_text.setdefault(t, [])
            self.ndup.append(self.ndup[-1] + (1 if seen else 0))
            seen.append(i)

    def text_id(self, layout: Layout, owner: Path) -> int:
        return self.text_ids.setdefault(_text(layout, owner), len(self.text_ids))

    def subtree(self, path: Path) -> frozenset[Path]:
        """``path`` and every module inside it."""
        hit = self._subtrees.get(path)
        if hit is None:
            out, todo = [path], [path]
            while todo:
                kids = self.children.get(todo.pop(), [])
                out += kids
                todo += kids
            hit = self._subtrees[path] = frozenset(out)
        return hit

    def cut(self, offset: int) -> int:
        """How many items start before ``offset``."""
        return bisect.bisect_left(self.offsets, offset)

    def default_repeats(self, layout: Layout, before: int, excluded: set[int], own: Path | None) -> bool:
        """Whether the default choices of the unions before ``before`` (those of the unions in
        ``excluded`` left out), with ``own``'s text, repeat a text."""
        k = bisect.bisect_left(self.chosen_offsets, before)
        ndup = self.ndup[k]
        change: Counter = Counter()
        for u in excluded:
            i = self.chosen_index.get(u)
            if i is not None and i < k:
                change[self.chosen_text[i]] -= 1
        if own is not None:
            change[self.text_id(layout, own)] += 1
        for t, d in change.items():
            c = bisect.bisect_left(self.at_text.get(t, []), k)
            ndup += max(0, c + d - 1) - max(0, c - 1)
        return ndup > 0


class _Flat:
    """Items' tokens one after another: the tokens of the items starting in [a, b) are one slice
    (of a tuple, or of the same tokens as little-endian int32, what cache keys hash)."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.ends = [0]  # tokens before each item, then in all
        self._tokens: list[int] = []

    def add(self, offset: int, tokens: tuple[int, ...]) -> None:
        self.offsets.append(offset)
        self._tokens.extend(tokens)
        self.ends.append(len(self._tokens))

    def close(self) -> None:
        self.tokens = tuple(self._tokens)
        self.array = np.asarray(self._tokens, dtype="<i4")
        del self._tokens

    def between(self, a: int, b: int) -> Piece:
        i, j = bisect.bisect_left(self.offsets, a), bisect.bisect_left(self.offsets, b)
        return self, self.ends[i], self.ends[j]


Piece = tuple[_Flat, int, int]  # tokens [i, j) of a flat run


def _tokens_of(pieces: list[Piece]) -> tuple[int, ...]:
    out: tuple[int, ...] = ()
    for flat, i, j in pieces:
        out += flat.tokens[i:j]
    return out


def _bytes_of(pieces: list[Piece]) -> bytes:
    return b"".join(flat.array[i:j].tobytes() for flat, i, j in pieces)


def _index(layout: Layout) -> _Index:
    idx = layout.__dict__.get("_contexts_index")
    if idx is None:
        idx = layout.__dict__["_contexts_index"] = _Index(layout)
    return idx


def _chain_text(idx: _Index, chain: list[Path], start: int, end: int) -> list[Piece]:
    """The text of the nested owners ``chain`` (outermost first, each inside the one before)
    from ``start`` to ``end``: each owner's items between where it starts and where the next
    begins (an owner's items lie outside the owners inside it)."""
    out = []
    bounds = [start] + [max(start, idx.module_offset[p]) for p in chain[1:]] + [end]
    for owner, a, b in zip(chain, bounds[:-1], bounds[1:], strict=True):
        flat = idx.owned.get(owner)
        if flat is not None and a < b:
            out.append(flat.between(a, b))
    return out


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
    idx = _index(layout)
    rivals = [p for p in idx.members[layout.modules[member].union] if p != member]
    out = chosen.difference(*(idx.subtree(r) for r in rivals))
    return out | (layout.default_modules & idx.subtree(member)) | {member}


def _text(layout: Layout, owner: Path) -> tuple[tuple[int, ...], ...]:
    """A module's own text: its segments' tokens (enclosed modules not included)."""
    return tuple(s.tokens for s in layout.segments_of(owner))


def _tokens_before(layout: Layout, visible: set[Path], offset: int) -> tuple[int, ...]:
    """The text of the ``visible`` owners before ``offset``, parameters as their scaffold text."""
    idx = _index(layout)
    return tuple(t for _, owner, toks in idx.items[: idx.cut(offset)] if owner in visible for t in toks)


def _scaffold_first(layout: Layout, segment: Segment) -> tuple[list[Piece], bool]:
    """The default prompt's context for ``segment`` (its ancestors' unions switched to them: the
    text of :func:`scaffold_selection` before it), as pieces, and whether that prompt repeats a
    text (see :func:`contexts`), in steps that do not grow with the schema.

    The default prompt differs from the one :func:`scaffold_selection` gives only inside the
    outermost union on the chain whose member is not in the default prompt: there, only the
    chain itself is visible (that member's own modules are not default, its rivals are switched
    out). So the context is the default prompt up to that union, then the chain's own text."""
    idx = _index(layout)
    owner, at = segment.owner, segment.offset
    chain = _ancestors(owner)
    switched = next((i for i, p in enumerate(chain) if p and p not in layout.default_modules), None)
    if switched is None:
        first = [idx.default.between(0, at)]
        before = at
    else:
        before = layout.modules[chain[switched]].offset
        first = [idx.default.between(0, before)] + _chain_text(idx, chain[switched:], before, at)
    excluded = {layout.modules[p].union for p in chain[1:] if layout.modules[p].union is not None}
    repeats = idx.default_repeats(layout, before, excluded, owner if owner != ROOT else None)
    return first, repeats


def context_bytes(layout: Layout, segment: Segment, encoding: str) -> tuple[bytes, ...]:
    """:func:`contexts`, each as little-endian int32 bytes (what a cache key hashes: keys.py), cut
    from the layout's token runs without building the tokens one by one."""
    if encoding == "independent":
        return (_bytes_of(_chain_text(_index(layout), _ancestors(segment.owner), 0, segment.offset)),)
    if encoding == "scaffold":
        first, repeated = _scaffold_first(layout, segment)
        if not repeated:
            return (_bytes_of(first),)
    return tuple(np.asarray(c, dtype="<i4").tobytes() for c in contexts(layout, segment, encoding))


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
    if cap == 1:  # the common case, in steps that do not grow with the schema
        pieces, repeated = _scaffold_first(layout, segment)
        if not repeated:
            return (_tokens_of(pieces),)
    idx = _index(layout)
    base = scaffold_selection(layout, segment.owner)
    chain = set(_ancestors(segment.owner))
    members = {u: idx.members[u] for u in idx.members if idx.union_offset[u] < segment.offset}
    unions = [ms for ms in members.values() if not chain & set(ms)]
    texts = {p: _text(layout, p) for ms in unions for p in ms}
    own = [_text(layout, segment.owner)] if segment.owner != ROOT else []

    def repeats(chosen: set[Path]) -> bool:
        picked = own + [texts[p] for ms in unions for p in ms if p in chosen]
        return len(set(picked)) != len(picked)

    first = _tokens_before(layout, base | {ROOT}, segment.offset)
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


def computed_at(contexts: tuple[tuple[int, ...] | bytes, ...]) -> int:
    """The position a segment's states are computed at, after ``contexts`` (tokens, or their
    int32 bytes as :func:`context_bytes` gives them): right after the longest, each context ending
    right before it (the longest from position 0). RoPE sees only relative positions, so the same
    states serve every place a prompt puts the segment, moved there (a K-shift): one file per
    module text and contexts, whatever the position."""
    return max(len(c) // 4 if isinstance(c, bytes) else len(c) for c in contexts)


def context_tokens(layout: Layout, segment: Segment, encoding: str) -> tuple[int, ...]:
    """The tokens a segment is computed after, in order; they are decoded immediately before
    the segment (at positions ending right before :func:`computed_at`) and then dropped.

    - ``independent``: the text of the schema and of the segment's own ancestor modules before
      it (the shared prefix: system turn, role headers, the enclosing modules' text), with
      parameters' scaffold text. Sibling modules are not seen, so each module's states depend
      only on its own text and the prefix: changing one module never invalidates another.
    - ``scaffold``: everything of the default prompt before it (the reference implementation),
      except where that prompt repeats a text (see :func:`contexts`): then the first prompt the
      schema allows, its unions' members in document order, that does not.
    """
    if encoding == "independent":
        return _tokens_of(_chain_text(_index(layout), _ancestors(segment.owner), 0, segment.offset))
    if encoding == "scaffold":
        return contexts(layout, segment, encoding)[0]
    raise ValueError(f"encoding {encoding!r} has no single context")

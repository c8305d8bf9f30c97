"""Static positions of a schema (Prompt Cache's layout), and what each cached segment is
computed after (the encoding mode).

A *segment* is a maximal run of tokens owned by one module (or by the schema itself, owner
``()``, which is always part of the prompt: template glue and text outside modules). Segments are
what gets cached. A *slot* is a parameter's reserved positions. Union members all start at the
union's offset; the union takes as many positions as its longest member.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from . import chat_template
from ..pml.schema import Module, Parameter, Role, Schema, Text, Union

Path = tuple[str, ...]
ROOT: Path = ()
QUESTION_SEPARATOR = "\n\n"
ENCODINGS = ("scaffold", "independent", "average")  # the first is the default (measured: scripts/bench.py)
AVERAGED_CONTEXTS = 8  # the most contexts an ``average`` state is the mean over
_ENUMERATE = 4096  # union choices up to this many are enumerated; beyond, sampled


class Tokenizer(Protocol):
    add_bos: bool
    bos: int

    def tokenize(self, text: str, *, special: bool) -> list[int]: ...

    def token_text(self, token: int) -> str: ...


@dataclass(frozen=True)
class Segment:
    owner: Path
    offset: int
    tokens: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.offset + len(self.tokens)


@dataclass(frozen=True)
class Slot:
    owner: Path
    name: str
    offset: int
    length: int
    scaffold: tuple[int, ...]  # placeholder tokens (the parameter's scaffold text), maybe empty


@dataclass(frozen=True)
class ModuleInfo:
    path: Path
    offset: int
    length: int
    union: int | None  # id of the union it is a member of
    scaffold: bool  # it is its union's scaffold member
    source: str


@dataclass(frozen=True)
class Element:
    """One row of ``pc inspect``."""

    kind: str  # template | text | module | union | parameter | role
    name: str
    path: Path
    offset: int
    length: int
    source: str
    depth: int


@dataclass
class Layout:
    schema_name: str
    segments: tuple[Segment, ...]
    slots: tuple[Slot, ...]
    modules: dict[Path, ModuleInfo]
    elements: tuple[Element, ...]
    end: int
    tail: str  # template glue after the question: computed fresh with it
    tail_joins: bool  # the question continues the schema's last user turn (after a blank line)
    default_modules: frozenset[Path] = field(default=frozenset())

    def owners(self) -> list[Path]:
        """Every segment owner, root first, then modules in document order."""
        seen: dict[Path, None] = {}
        for seg in self.segments:
            seen.setdefault(seg.owner, None)
        return list(seen)

    def segments_of(self, owner: Path) -> list[Segment]:
        return [s for s in self.segments if s.owner == owner]

    def tokens_of(self, owner: Path) -> int:
        """How many tokens the owner's segments hold (what its cache file stores)."""
        return sum(len(s.tokens) for s in self.segments_of(owner))


def build(schema: Schema, tok: Tokenizer, template: str | None) -> Layout:
    return _Builder(schema, tok, template).build()


class _Builder:
    def __init__(self, schema: Schema, tok: Tokenizer, template: str | None) -> None:
        self.schema = schema
        self.tok = tok
        self.template = template
        self.file = schema.path or "<schema>"
        self.offset = 0
        self.segments: list[Segment] = []
        self.slots: list[Slot] = []
        self.modules: dict[Path, ModuleInfo] = {}
        self.elements: list[Element] = []
        self.n_unions = 0

    def build(self) -> Layout:
        roles = [c for c in self.schema.children if isinstance(c, Role)]
        contents: list[tuple[Node, ...]] = (
            [r.children for r in roles] if roles else [self.schema.children]
        )
        role_names = [r.role for r in roles] if roles else ["user"]
        joins = role_names[-1] == "user"
        if not joins:
            role_names = role_names + ["user"]
        bos_text = self.tok.token_text(self.tok.bos) if self.tok.bos >= 0 else ""
        rendered = chat_template.render(self.template, role_names, bos_token=bos_text)
        glue = list(rendered.glue)
        if self.tok.add_bos and self.tok.bos >= 0 and not glue[0].startswith(bos_text or "\0"):
            self._emit(ROOT, [self.tok.bos], kind="template", name="bos")
        for i, children in enumerate(contents):
            self._glue(glue[i])
            if roles:
                start = self.offset
                self._walk(children, ROOT, depth=1)
                r = roles[i]
                self.elements.append(
                    Element("role", r.role, ROOT, start, self.offset - start, self._src(r.line), 0)
                )
            else:
                self._walk(children, ROOT, depth=0)
        if not joins:
            self._glue(glue[len(contents)])
        self.elements.sort(key=lambda e: (e.offset, e.depth))
        return Layout(
            schema_name=self.schema.name,
            segments=tuple(sorted(self.segments, key=lambda s: s.offset)),
            slots=tuple(self.slots),
            modules=self.modules,
            elements=tuple(self.elements),
            end=self.offset,
            tail=glue[-1],
            tail_joins=joins,
            default_modules=frozenset(self._defaults()),
        )

    # -- walking ------------------------------------------------------------------------------
    def _src(self, line: int) -> str:
        return f"{self.file}:{line}"

    def _glue(self, text: str) -> None:
        if text:
            self._emit(ROOT, self.tok.tokenize(text, special=True), kind="template", name="")

    def _emit(self, owner: Path, tokens: list[int], *, kind: str, name: str, source: str = "") -> None:
        if not tokens:
            return
        if kind == "template":
            self.elements.append(Element(kind, name, owner, self.offset, len(tokens), "chat template", 0))
        last = self.segments[-1] if self.segments else None
        if last is not None and last.owner == owner and last.end == self.offset:
            self.segments[-1] = Segment(owner, last.offset, last.tokens + tuple(tokens))
        else:
            self.segments.append(Segment(owner, self.offset, tuple(tokens)))
        self.offset += len(tokens)

    def _walk(self, children: Iterable, owner: Path, *, depth: int, union: int | None = None,
              scaffold_name: str | None = None) -> None:
        for node in children:
            if isinstance(node, Text):
                start = self.offset
                self._emit(owner, self.tok.tokenize(node.text, special=False), kind="text", name="")
                if owner == ROOT and self.offset > start:
                    self.elements.append(
                        Element("text", "", owner, start, self.offset - start, self._src(node.line), depth)
                    )
            elif isinstance(node, Module):
                self._module(node, owner, depth=depth, union=union, scaffold_name=scaffold_name)
            elif isinstance(node, Union):
                self._union(node, owner, depth=depth)
            elif isinstance(node, Parameter):
                self._parameter(node, owner, depth=depth)
            else:  # pragma: no cover - the parser only allows the above inside contents
                raise TypeError(f"unexpected node {node!r}")

    def _module(self, m: Module, owner: Path, *, depth: int, union: int | None,
                scaffold_name: str | None) -> None:
        path = owner + (m.name,)
        start = self.offset
        self._walk(m.children, path, depth=depth + 1)
        source = f"{self.file}:{m.line}" + (f" (src={m.src})" if m.src else "")
        is_scaffold = union is not None and scaffold_name == m.name
        self.modules[path] = ModuleInfo(path, start, self.offset - start, union, is_scaffold, source)
        self.elements.append(
            Element("module", m.name, path, start, self.offset - start, source, depth)
        )

    def _union(self, u: Union, owner: Path, *, depth: int) -> None:
        uid = self.n_unions
        self.n_unions += 1
        start = end = self.offset
        for member in u.members:
            self.offset = start
            self._walk([member], owner, depth=depth + 1, union=uid, scaffold_name=u.scaffold)
            end = max(end, self.offset)
        self.offset = end
        label = f"scaffold={u.scaffold}" if u.scaffold else ""
        self.elements.append(Element("union", label, owner, start, end - start, self._src(u.line), depth))

    def _parameter(self, p: Parameter, owner: Path, *, depth: int) -> None:
        scaffold = tuple(self.tok.tokenize(p.scaffold, special=False)) if p.scaffold else ()
        if len(scaffold) > p.length:
            from ..pml.schema import PmlError

            raise PmlError(
                f"scaffold of parameter '{p.name}' is {len(scaffold)} tokens, longer than its length {p.length}",
                file=self.schema.path, line=p.line, element=f'<parameter name="{p.name}">',
            )
        self.slots.append(Slot(owner, p.name, self.offset, p.length, scaffold))
        self.elements.append(
            Element("parameter", p.name, owner + (p.name,), self.offset, p.length, self._src(p.line), depth)
        )
        self.offset += p.length

    def _defaults(self) -> set[Path]:
        """Modules outside unions and scaffold members, all the way up their ancestors."""
        def plain(p: Path) -> bool:
            return self.modules[p].union is None or self.modules[p].scaffold

        return {path for path in self.modules if all(plain(path[:i]) for i in range(1, len(path) + 1))}


Node = object  # the pml node union; kept loose here to avoid a circular alias


# -- what a segment is computed after --------------------------------------------------------


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


def preceding(prompt: list[tuple[str, object]]) -> Iterator[tuple[Segment, list[int], int]]:
    """For each segment of a prompt plan (("segment", Segment) or ("fresh", tokens) in position
    order, as ``Session.prompt_plan`` returns it): the segment, the prompt's tokens before it and
    the next position after them (parameter values follow the prompt so far without a gap)."""
    before: list[int] = []
    end = 0
    for kind, obj in prompt:
        if kind == "segment":
            seg: Segment = obj  # type: ignore[assignment]
            yield seg, before, end
            before = before + list(seg.tokens)
            end = seg.end
        else:
            before = before + list(obj)  # type: ignore[arg-type]
            end += len(obj)  # type: ignore[arg-type]

"""Static positions of a schema (Prompt Cache's layout). What each cached segment is computed
after (the encoding) is contexts.py.

A *segment* is a maximal run of tokens owned by one module (or by the schema itself, owner
``()``, which is always part of the prompt: template glue and text outside modules). Segments are
what gets cached. A *slot* is a parameter's reserved positions. Union members all start at the
union's offset; the union takes as many positions as its longest member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Protocol

from ..errors import PmlError
from . import chat_template
from ..pml.schema import Module, Parameter, Role, Schema, Text, Union

Path = tuple[str, ...]
ROOT: Path = ()
QUESTION_SEPARATOR = "\n\n"


class Tokenizer(Protocol):
    add_bos: bool
    bos: int

    def tokenize(self, text: str, *, special: bool) -> list[int]: ...

    def token_text(self, token: int) -> str: ...

    def is_eog(self, token: int) -> bool: ...


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
    cached: bool = True  # False: cache="false", its states are computed for each request


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
    cached: bool = True  # a module row: False for a cache="false" module


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
    uncached: frozenset[Path] = field(default=frozenset())  # cache="false" modules: never stored
    roles: tuple[str, ...] = ("user",)  # the turns the template rendered, the last the user turn the question joins

    def owners(self) -> list[Path]:
        """Every segment owner whose states are stored, root first, then modules in document
        order (cache="false" modules are not: see :attr:`uncached`)."""
        seen: dict[Path, None] = {}
        for seg in self.segments:
            if seg.owner not in self.uncached:
                seen.setdefault(seg.owner, None)
        return list(seen)

    def uncached_owners(self) -> list[Path]:
        """The cache="false" modules that hold tokens, in document order."""
        return list(dict.fromkeys(s.owner for s in self.segments if s.owner in self.uncached))

    def segments_of(self, owner: Path) -> list[Segment]:
        return list(self._by_owner.get(owner, ()))

    def tokens_of(self, owner: Path) -> int:
        """How many tokens the owner's segments hold (what its cache file stores)."""
        return sum(len(s.tokens) for s in self._by_owner.get(owner, ()))

    @cached_property
    def _by_owner(self) -> dict[Path, tuple[Segment, ...]]:
        """Each owner's segments in position order (once per layout: asking owner by owner
        must not cost a pass over every segment each time)."""
        out: dict[Path, list[Segment]] = {}
        for s in self.segments:
            out.setdefault(s.owner, []).append(s)
        return {owner: tuple(segs) for owner, segs in out.items()}


def build(schema: Schema, tok: Tokenizer, template: str | None) -> Layout:
    return _Builder(schema, tok, template).build()


def min_positions(schema: Schema) -> int:
    """A lower bound on the positions the schema's layout takes, without tokenizing: a text with
    anything but whitespace in it is at least one token, a parameter its length, a union its
    longest member. Tokenizing is the slow part of a layout (a llama.cpp call per text): a schema
    of thousands of small modules that cannot fit the model's context is refused on this count."""
    def size(nodes) -> int:
        total = 0
        for node in nodes:
            if isinstance(node, Text):
                total += 1 if node.text.strip() else 0
            elif isinstance(node, Parameter):
                total += node.length
            elif isinstance(node, Union):
                total += max(size([m]) for m in node.members)
            elif isinstance(node, (Module, Role)):
                total += size(node.children)
        return total

    return size(schema.children)


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
        self.uncached: set[Path] = set()
        self.in_role = False

    def build(self) -> Layout:
        turns = _turns(self.schema.children, ROOT)
        self.nested = any(owner != ROOT for _, owner in turns)
        body = self.schema.children
        self.implicit = not turns
        if self.implicit:  # no role tag: the whole schema is the user turn
            body, turns = (Role("user", body, 0),), [("user", ROOT)]
        joins = turns[-1] == ("user", ROOT)  # the question continues the schema's last turn
        role_names = [r for r, _ in turns] + ([] if joins else ["user"])
        bos_text = self.tok.token_text(self.tok.bos) if self.tok.bos >= 0 else ""
        glue = chat_template.render(self.template, role_names, bos_token=bos_text).glue
        # a template that writes bos_token itself starts with it (SmolLM2's starts every turn with
        # the token its BOS also is, without writing bos_token: that token opens the first turn)
        self.template_bos = bool(self.nested and bos_text and self.template) and glue[0] != chat_template.render(
            self.template, role_names, bos_token="").glue[0]
        self.turn = 0
        # glue[i] ends turn i-1 (its "close" part, the owner of that turn's role tag) and opens
        # turn i (its "open" part, the owner of turn i's tag); glue[0]'s close part is the root's
        self.glue_parts = [self._split(glue[i], i) for i in range(len(turns) + (0 if joins else 1))]
        if self.tok.add_bos and self.tok.bos >= 0 and not glue[0].startswith(bos_text or "\0"):
            self._emit(ROOT, [self.tok.bos], kind="template", name="bos")
        self._template(ROOT, self.glue_parts[0][0], depth=0)
        self._walk(body, ROOT, depth=0)
        if not joins:  # the question's own user turn, opened after the whole schema
            self._template(ROOT, self.glue_parts[-1][1], depth=0)
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
            uncached=frozenset(self.uncached),
            roles=tuple(role_names),
        )

    def _split(self, text: str, i: int) -> tuple[list[int], list[int]]:
        """Template glue ``text`` before turn ``i``, as (close part, open part). With role tags only
        directly in the schema, all of it is the root's (the close part). With role tags inside
        modules: the close part runs through the first end-of-turn token (the last one before
        turn 0: a default system turn is the root's) and the line break after it; before turn 0
        without one, only the BOS token the template writes is the root's."""
        tokens = self.tok.tokenize(text, special=True) if text else []
        if not self.nested:
            return tokens, []
        ends = [k for k, t in enumerate(tokens) if self.tok.is_eog(t)]
        if not ends:
            cut = 1 if i == 0 and self.template_bos and tokens[:1] == [self.tok.bos] else 0
            return tokens[:cut], tokens[cut:]
        cut = (ends[-1] if i == 0 else ends[0]) + 1
        while cut < len(tokens) and not self.tok.token_text(tokens[cut]).strip():
            cut += 1
        return tokens[:cut], tokens[cut:]

    def _turn(self, role: Role, owner: Path, depth: int) -> None:
        """A role tag: its turn's markers (from the chat template) around its content, all owned by
        the module the tag stands in (or the root)."""
        i = self.turn
        self.turn += 1
        inner = depth if self.implicit else depth + 1
        self._template(owner, self.glue_parts[i][1], depth=depth)
        start = self.offset
        self.in_role = True
        self._walk(role.children, owner, depth=inner)
        self.in_role = False
        if not self.implicit:
            self.elements.append(
                Element("role", role.role, owner, start, self.offset - start, self._src(role.line), depth)
            )
        if i + 1 < len(self.glue_parts):
            self._template(owner, self.glue_parts[i + 1][0], depth=depth)

    # -- walking ------------------------------------------------------------------------------
    def _src(self, line: int) -> str:
        return f"{self.file}:{line}"

    def _template(self, owner: Path, tokens: list[int], *, depth: int) -> None:
        self._emit(owner, tokens, kind="template", name="", depth=depth if owner != ROOT else 0)

    def _emit(self, owner: Path, tokens: list[int], *, kind: str, name: str, depth: int = 0) -> None:
        if not tokens:
            return
        if kind == "template":
            self.elements.append(Element(kind, name, owner, self.offset, len(tokens), "chat template", depth))
        last = self.segments[-1] if self.segments else None
        if last is not None and last.owner == owner and last.end == self.offset:
            self.segments[-1] = Segment(owner, last.offset, last.tokens + tuple(tokens))
        else:
            self.segments.append(Segment(owner, self.offset, tuple(tokens)))
        self.offset += len(tokens)

    def _walk(self, children: Iterable, owner: Path, *, depth: int, union: int | None = None,
              scaffold_name: str | None = None) -> None:
        children = list(children)
        for i, node in enumerate(children):
            if (isinstance(node, Text) and self.nested and not self.in_role and not node.text.strip()
                    and _touches_turn(children[i - 1:i], -1) | _touches_turn(children[i + 1:i + 2], 0)):
                continue  # the chat template separates turns: blank text beside one goes
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
            elif isinstance(node, Role):
                self._turn(node, owner, depth)
            else:  # pragma: no cover - the parser only allows the above inside contents
                raise TypeError(f"unexpected node {node!r}")

    def _module(self, m: Module, owner: Path, *, depth: int, union: int | None,
                scaffold_name: str | None) -> None:
        path = owner + (m.name,)
        start = self.offset
        self._walk(m.children, path, depth=depth + 1)
        source = f"{self.file}:{m.line}" + (f" (src={m.src})" if m.src else "")
        is_scaffold = union is not None and scaffold_name == m.name
        self.modules[path] = ModuleInfo(path, start, self.offset - start, union, is_scaffold, source, m.cache)
        if not m.cache:
            self.uncached.add(path)
        self.elements.append(
            Element("module", m.name, path, start, self.offset - start, source, depth, m.cache)
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
            raise PmlError(
                f"scaffold of parameter '{p.name}' is {len(scaffold)} tokens, longer than its length {p.length} "
                f"(in this model's tokens): raise its length or shorten the scaffold",
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


def _touches_turn(nodes: list, end: int) -> bool:
    """Whether the node in ``nodes`` (none or one) starts (``end`` 0) or ends (-1) with a role
    tag's turn, through the modules and unions it starts or ends with."""
    if not nodes:
        return False
    node = nodes[0]
    if isinstance(node, Role):
        return True
    if isinstance(node, Module):
        return bool(node.children) and _touches_turn([node.children[end]], end)
    if isinstance(node, Union):
        return any(_touches_turn([m], end) for m in node.members)
    return False


def _turns(children: Iterable, owner: Path) -> list[tuple[str, Path]]:
    """Every role tag in document order (union members included), with the module it stands
    in: (role, owner path)."""
    out: list[tuple[str, Path]] = []
    for node in children:
        if isinstance(node, Role):
            out.append((node.role, owner))
            out += _turns(node.children, owner)
        elif isinstance(node, Module):
            out += _turns(node.children, owner + (node.name,))
        elif isinstance(node, Union):
            out += _turns(node.members, owner)
    return out

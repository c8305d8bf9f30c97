"""Static positions of a schema (Prompt Cache's layout). What each cached segment is computed
after (the encoding) is contexts.py.

A *segment* is a maximal run of tokens owned by one module (or by the schema itself, owner
``()``, which is always part of the prompt: template glue and text outside modules). Segments are
what gets cached. A *slot* is a parameter's reserved positions. Union members all start at the
union's offset; the union takes as many positions as its longest member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    roles: tuple[str, ...] = ("user",)  # the turns the template rendered, the last the user turn the question joins

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
            roles=tuple(role_names),
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

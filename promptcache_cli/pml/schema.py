"""Prompt Markup Language: hardened XML parsing of schemas and prompts into frozen trees.

Every node keeps the source line it starts on, so errors can point at FILE:LINE.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from xml.parsers import expat

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError

from ..errors import PmlError

MAX_SCHEMA_BYTES = 4 * 1024 * 1024  # schema file, prompt file and each src file
MAX_PARAMETER_LENGTH = 4096  # tokens
MAX_NAME_LENGTH = 128
MAX_DEPTH = 100  # element nesting; keeps the recursive tree walks far from the recursion limit
MAX_MODULES = 10_000  # <module> elements in a schema (imports in a prompt): refused as they are read

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_LENGTH_RE = re.compile(r"[0-9]+")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Text:
    text: str
    line: int


@dataclass(frozen=True)
class Parameter:
    name: str
    length: int
    scaffold: str | None
    line: int


@dataclass(frozen=True)
class Module:
    name: str
    children: tuple[Node, ...]
    src: str | None
    line: int
    cache: bool = True  # False: cache="false" on it or on a module around it (computed for each request)


@dataclass(frozen=True)
class Union:
    members: tuple[Module, ...]
    scaffold: str | None
    line: int


@dataclass(frozen=True)
class Role:
    """A role tag: directly inside <schema>, or inside a module (its markers are then the module's)."""

    role: str  # "system" | "user" | "assistant"
    children: tuple[Node, ...]
    line: int


Node = Text | Parameter | Module | Union | Role


@dataclass(frozen=True)
class Schema:
    name: str
    children: tuple[Node, ...]
    path: str | None


@dataclass(frozen=True)
class ModuleImport:
    name: str
    params: tuple[tuple[str, str], ...]
    children: tuple[ModuleImport, ...]
    line: int


@dataclass(frozen=True)
class Prompt:
    schema: str
    imports: tuple[ModuleImport, ...]
    question: str


# ---------------------------------------------------------------------------------------------
# Raw XML layer


@dataclass
class _Raw:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Raw | Text]

    def describe(self) -> str:
        for key in ("name", "schema"):
            if key in self.attrs:
                return f"<{self.tag} {key}={json.dumps(self.attrs[key][:64], ensure_ascii=False)}>"
        return f"<{self.tag}>"


class _Builder:
    """Target for DefusedXMLParser: builds _Raw elements, merging adjacent text runs."""

    def __init__(self, file: str | None, what: str = "schema") -> None:
        self.file = file
        self.what = what
        self.expat = None  # the pyexpat parser, set once it exists
        self.stack: list[_Raw] = []
        self.root: _Raw | None = None
        self.modules = 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        element = _Raw(tag, dict(attrs), self.expat.CurrentLineNumber, [])
        if len(self.stack) >= MAX_DEPTH:
            raise PmlError(f"elements nested deeper than {MAX_DEPTH} levels", file=self.file,
                           line=element.line, element=element.describe())
        if self.stack and (tag == "module" or self.what == "prompt"):
            self.modules += 1
            if self.modules > MAX_MODULES:
                kind = "modules" if self.what == "schema" else "imports"
                raise PmlError(f"more than {MAX_MODULES} {kind} in one {self.what}", file=self.file,
                               line=element.line, element=element.describe())
        if self.stack:
            self.stack[-1].children.append(element)
        else:
            self.root = element
        self.stack.append(element)

    def end(self, tag: str) -> None:
        self.stack.pop()

    def data(self, text: str) -> None:  # expat reports no character data outside the root
        children = self.stack[-1].children
        if children and isinstance(children[-1], Text):
            children[-1] = Text(children[-1].text + text, children[-1].line)
        else:
            children.append(Text(text, self.expat.CurrentLineNumber))

    def close(self) -> _Raw:
        return self.root


def _decode(data: bytes | str, file: str | None, what: str) -> str:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_SCHEMA_BYTES:
        raise PmlError(f"{what} is larger than {MAX_SCHEMA_BYTES} bytes", file=file)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise PmlError(f"{what} is not valid UTF-8", file=file, line=line) from None


def _parse_xml(data: bytes | str, file: str | None, what: str) -> _Raw:
    text = _decode(data, file, what)
    builder = _Builder(file, what)
    parser = DefusedXMLParser(target=builder, forbid_dtd=True, forbid_entities=True,
                              forbid_external=True)
    builder.expat = parser.parser
    parser.parser.buffer_text = False  # one callback per run, so CurrentLineNumber is exact
    try:
        parser.feed(text)
        return parser.close()  # expat guarantees a root element once parsing succeeds
    except ParseError as e:
        raise PmlError(f"XML syntax error: {expat.ErrorString(e.code)}{_cdata_hint(builder, e.code)}",
                       file=file, line=e.position[0]) from None
    except DefusedXmlException:
        raise PmlError("DOCTYPE and entity declarations are not allowed", file=file,
                       line=builder.expat.CurrentLineNumber) from None


_TEXT_ERRORS = {expat.errors.codes[m] for m in (
    expat.errors.XML_ERROR_INVALID_TOKEN, expat.errors.XML_ERROR_TAG_MISMATCH, expat.errors.XML_ERROR_UNCLOSED_TOKEN,
    expat.errors.XML_ERROR_UNDEFINED_ENTITY, expat.errors.XML_ERROR_SYNTAX, expat.errors.XML_ERROR_BAD_CHAR_REF,
    expat.errors.XML_ERROR_PARTIAL_CHAR, expat.errors.XML_ERROR_UNCLOSED_CDATA_SECTION)}


def _cdata_hint(builder: _Builder, code: int) -> str:
    """What to do when the error is in a module's text: code or markup (``<``, ``&``) in it."""
    module = next((el for el in reversed(builder.stack) if el.tag == "module"), None)
    if module is None or code not in _TEXT_ERRORS:
        return ""
    return (f" in the text of {module.describe()} (opened on line {module.line}); if it holds code or "
            "markup, wrap that text in <![CDATA[ ... ]]> (or write < as &lt; and & as &amp;)")


def _read_limited(path: str) -> bytes:
    """Read a regular file of at most MAX_SCHEMA_BYTES; raises ValueError with a reason."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except OSError as e:
        raise ValueError(e.strerror or "cannot open") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_SCHEMA_BYTES:
            raise ValueError(f"larger than {MAX_SCHEMA_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SCHEMA_BYTES + 1)
    except OSError as e:
        raise ValueError(e.strerror or "cannot read") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SCHEMA_BYTES:
        raise ValueError(f"larger than {MAX_SCHEMA_BYTES} bytes")
    return data


def _load(path: str | os.PathLike) -> tuple[str, bytes]:
    name = os.fspath(path)
    try:
        return name, _read_limited(name)
    except ValueError as e:
        raise PmlError(str(e), file=name) from None


# ---------------------------------------------------------------------------------------------
# Schema


def _is_blank(node: _Raw | Text) -> bool:
    return isinstance(node, Text) and not node.text.strip()


def _text_line(node: Text) -> int:
    """Line of the first non-whitespace character of a text run."""
    text = node.text
    return node.line + text[: len(text) - len(text.lstrip())].count("\n")


def _normalize(items: list, *, drop_blank: bool) -> tuple[Node, ...]:
    """Apply the text rules to one container's children (Text and finished nodes)."""
    if drop_blank:
        items = [item for item in items if not _is_blank(item)]
    while items and _is_blank(items[0]):
        items.pop(0)
    while items and _is_blank(items[-1]):
        items.pop()
    out: list[Node] = []
    for i, item in enumerate(items):
        if isinstance(item, Text):
            text, line = item.text, item.line
            if i == 0:
                text, line = text.lstrip(), _text_line(item)
            if i == len(items) - 1:
                text = text.rstrip()
            elif not text.strip():
                text = "\n" if "\n" in text else text
            item = Text(text, line)
        out.append(item)
    return tuple(out)


class _Checker:
    """Error reporting and attribute/name checks shared by the schema and prompt parsers."""

    def __init__(self, file: str | None):
        self.file = file

    def error(self, el: _Raw, message: str, line: int | None = None) -> PmlError:
        return PmlError(message, file=self.file, line=line or el.line, element=el.describe())

    def attrs(self, el: _Raw, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        for key in el.attrs:
            if key not in required and key not in optional:
                allowed = ", ".join(required + optional) or "none"
                raise self.error(el, f"unknown attribute {key!r} (allowed: {allowed})")
        for key in required:
            if key not in el.attrs:
                raise self.error(el, f"missing attribute {key!r}")
        return el.attrs

    def name(self, el: _Raw, value: str) -> str:
        if not _NAME_RE.fullmatch(value) or len(value) > MAX_NAME_LENGTH:
            raise self.error(el, f"invalid name {value!r} (letters, digits, _ - . starting with a "
                                 f"letter or _, at most {MAX_NAME_LENGTH} characters)")
        return value


class _SchemaParser(_Checker):
    def __init__(self, file: str | None, base_dir: str | None):
        super().__init__(file)
        self.base_dir = base_dir
        self.role: _Raw | None = None  # the role tag being read (role tags do not nest)
        self.uncached: _Raw | None = None  # the cache="false" module being read

    def schema(self, root: _Raw) -> Schema:
        if root.tag != "schema":
            raise self.error(root, "the root element must be <schema name=\"...\">")
        name = self.name(root, self.attrs(root, ("name",))["name"])
        has_roles = any(isinstance(c, _Raw) and c.tag in ROLES for c in root.children)
        scope: dict[str, int] = {}
        items = []
        for child in root.children:
            if has_roles and isinstance(child, Text) and child.text.strip():
                raise self.error(root, "content outside a role tag", _text_line(child))
            if has_roles and isinstance(child, _Raw) and child.tag in ("module", "union"):
                raise self.error(child, "content outside a role tag")
            items.append(self.node(child, scope, None))
        children = _normalize(items, drop_blank=has_roles)
        if not _has_content(children):
            raise self.error(root, "empty schema")
        return Schema(name, children, self.file)

    def node(self, child: _Raw | Text, scope: dict, params: set | None):
        """Convert one child of a schema/role/module; params is the enclosing module's names."""
        if isinstance(child, Text):
            return child
        tag = child.tag
        if tag == "module":
            return self.module(child, scope)
        if tag == "union":
            return self.union(child, scope)
        if tag == "parameter":
            if params is None:
                raise self.error(child, "parameters must be inside a module")
            return self.parameter(child, params)
        if tag in ROLES:
            return self.role_tag(child, scope, params)
        if tag == "schema":
            raise self.error(child, "<schema> cannot be nested")
        raise self.error(child, f"unknown element <{tag}> (allowed: module, union, parameter, "
                                f"{', '.join(ROLES)})")

    def role_tag(self, el: _Raw, scope: dict, params: set | None) -> Role:
        """A role tag directly inside <schema> or inside a module: what it holds belongs to the
        module around it (its modules to that module's scope, its parameters to that module)."""
        if self.role is not None:
            raise self.error(el, f"role tags cannot be nested: <{el.tag}> is inside <{self.role.tag}> "
                                 f"(line {self.role.line})")
        self.attrs(el, ())
        self.role = el
        try:
            items = [self.node(c, scope, params) for c in el.children]
        finally:
            self.role = None
        return Role(el.tag, _normalize(items, drop_blank=False), el.line)

    def module(self, el: _Raw, scope: dict) -> Module:
        attrs = self.attrs(el, ("name",), ("src", "cache"))
        name = self.name(el, attrs["name"])
        if name in scope:
            raise self.error(el, f"duplicate module name {name!r} (first defined on line "
                                 f"{scope[name]})")
        scope[name] = el.line
        cache = self.cache_attr(el, attrs.get("cache"))
        src = attrs.get("src")
        if src is not None:
            if not all(_is_blank(c) for c in el.children):
                raise self.error(el, "a module with src must be empty")
            text = self.read_src(el, src)
            children = (Text(text, el.line),) if text else ()
            return Module(name, children, src, el.line, cache)
        inner_scope: dict = {}
        params: set = set()
        outer = self.uncached
        self.uncached = outer if cache else (outer or el)
        try:
            items = [self.node(c, inner_scope, params) for c in el.children]
        finally:
            self.uncached = outer
        return Module(name, _normalize(items, drop_blank=False), None, el.line, cache)

    def cache_attr(self, el: _Raw, value: str | None) -> bool:
        """cache="false": the module (and everything in it) is computed for each request, never
        stored; "true" is the default, refused inside a cache="false" module."""
        if value not in (None, "true", "false"):
            raise self.error(el, f"cache must be \"true\" or \"false\", got {value!r}")
        if self.uncached is not None:
            if value == "true":
                raise self.error(el, f"cache=\"true\" inside {self.uncached.describe()} (line "
                                     f"{self.uncached.line}), which is not cached: nothing inside it is")
            return False
        return value != "false"

    def union(self, el: _Raw, scope: dict) -> Union:
        scaffold = self.attrs(el, (), ("scaffold",)).get("scaffold")
        members = []
        for child in el.children:
            if _is_blank(child):
                continue
            if isinstance(child, Text) or child.tag != "module":
                line = _text_line(child) if isinstance(child, Text) else child.line
                raise self.error(el, "only <module> elements are allowed inside a union", line)
            members.append(self.module(child, scope))
        if not members:
            raise self.error(el, "a union needs at least one <module>")
        if scaffold is not None and scaffold not in {m.name for m in members}:
            raise self.error(el, f"scaffold {scaffold!r} is not a member of this union")
        return Union(tuple(members), scaffold, el.line)

    def parameter(self, el: _Raw, params: set) -> Parameter:
        attrs = self.attrs(el, ("name", "length"), ("scaffold",))
        name = self.name(el, attrs["name"])
        if not all(_is_blank(c) for c in el.children):
            raise self.error(el, "a parameter must be empty")
        if name in params:
            raise self.error(el, f"duplicate parameter name {name!r} in this module")
        params.add(name)
        raw = attrs["length"]
        if not _LENGTH_RE.fullmatch(raw) or not 1 <= int(raw) <= MAX_PARAMETER_LENGTH:
            raise self.error(el, f"length must be an integer from 1 to {MAX_PARAMETER_LENGTH}, "
                                 f"got {raw!r}")
        return Parameter(name, int(raw), attrs.get("scaffold"), el.line)

    def read_src(self, el: _Raw, src: str) -> str:
        if self.base_dir is None:
            raise self.error(el, "src needs the schema's folder (load the schema from a file)")
        if not src or os.path.isabs(src):
            raise self.error(el, f"src {src!r} must be a relative path")
        base = os.path.realpath(self.base_dir)
        target = os.path.realpath(os.path.join(base, src))
        if os.path.commonpath([base, target]) != base:
            raise self.error(el, f"src {src!r} resolves outside the schema's folder")
        try:
            data = _read_limited(target)
        except ValueError as e:
            raise self.error(el, f"src {src!r}: {e}") from None
        if b"\0" in data:
            raise self.error(el, f"src {src!r}: binary file")
        try:
            return data.decode("utf-8-sig").strip()
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise self.error(el, f"src {src!r}: not valid UTF-8 (line {line})") from None


def _has_content(children: tuple[Node, ...]) -> bool:
    return any(isinstance(c, (Text, Module, Union))
               or (isinstance(c, Role) and _has_content(c.children)) for c in children)


def parse_schema(data: str | bytes, *, path: str | None = None,
                 base_dir: str | None = None) -> Schema:
    """Parse schema XML; ``src`` files are resolved inside ``base_dir``."""
    root = _parse_xml(data, path, "schema")
    return _SchemaParser(path, base_dir).schema(root)


def load_schema(path: str | os.PathLike) -> Schema:
    name, data = _load(path)
    return parse_schema(data, path=name, base_dir=os.path.dirname(os.path.abspath(name)))


# ---------------------------------------------------------------------------------------------
# Prompt


class _PromptParser(_Checker):
    def prompt(self, root: _Raw) -> Prompt:
        if root.tag != "prompt":
            raise self.error(root, "the root element must be <prompt schema=\"...\">")
        name = self.name(root, self.attrs(root, ("schema",))["schema"])
        children = list(root.children)
        turn = self.question_turn(root, children)
        last = max((i for i, c in enumerate(children) if isinstance(c, _Raw)), default=-1)
        for child in children[:last]:
            if isinstance(child, Text) and child.text.strip():
                raise self.error(root, "text must follow the last import", _text_line(child))
        imports = tuple(self.module_import(c) for c in children if isinstance(c, _Raw))
        question = "".join(c.text for c in children[last + 1:] if isinstance(c, Text))
        if turn is not None:
            if question.strip():
                raise self.error(root, f"text beside <{turn.tag}>: the question goes inside it",
                                 _text_line(next(c for c in children[last + 1:] if c.text.strip())))
            question = "".join(c.text for c in turn.children)
        return Prompt(name, imports, question.strip())

    def question_turn(self, root: _Raw, children: list) -> _Raw | None:
        """The reference's ``<user>question</user>`` after the imports: taken out of ``children``
        and returned. A role tag with text is a turn, not an import (an import holds no text);
        pc takes one question per prompt, so only one <user> turn, last."""
        turns = [c for c in children if isinstance(c, _Raw) and c.tag in ROLES
                 and any(isinstance(t, Text) and t.text.strip() for t in c.children)]
        if not turns:
            return None
        turn = turns[0]
        if turn.tag != "user" or len(turns) > 1:
            other = turn if turn.tag != "user" else turns[1]
            raise self.error(other, f"<{other.tag}> turns in a prompt are not supported: a prompt holds one "
                                    "question, as text after the imports or in one <user> tag")
        if any(isinstance(c, _Raw) for c in children[children.index(turn) + 1:]):
            raise self.error(turn, "the <user> question must come after the last import")
        self.attrs(turn, ())
        for c in turn.children:
            if isinstance(c, _Raw):
                raise self.error(c, f"markup inside the question: <{c.tag}> (wrap code or markup in "
                                    "<![CDATA[ ... ]]>)")
        children.remove(turn)
        return turn

    def module_import(self, el: _Raw) -> ModuleImport:
        self.name(el, el.tag)
        for child in el.children:
            if isinstance(child, Text) and child.text.strip():
                raise self.error(el, "text is not allowed inside an import (the question goes "
                                     "after the last import)", _text_line(child))
        children = tuple(self.module_import(c) for c in el.children if isinstance(c, _Raw))
        return ModuleImport(el.tag, tuple(el.attrs.items()), children, el.line)


def parse_prompt(data: str | bytes, *, path: str | None = None) -> Prompt:
    """Parse a prompt: imports (tag = module, attributes = parameter values) then the question."""
    return _PromptParser(path).prompt(_parse_xml(data, path, "prompt"))


def load_prompt(path: str | os.PathLike) -> Prompt:
    name, data = _load(path)
    return parse_prompt(data, path=name)

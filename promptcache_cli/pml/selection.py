"""Which modules and parameter values a request selects from a schema.

A module is addressed by its path of names from the root, e.g. ("trip-plan", "domestic"). Roles
and unions have no name: their modules belong to the enclosing module (or the root).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import SelectionError, did_you_mean
from .schema import Module, ModuleImport, Node, Parameter, Role, Schema, Union

Path = tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    modules: frozenset[Path]  # every included module path (ancestors included)
    params: tuple[tuple[Path, str, str], ...]  # (module path, param name, value), sorted
    order: tuple[Path, ...] = ()  # the top-level modules the request names, in the order it names them


def _members(children: tuple[Node, ...]) -> Iterator[tuple[Module, Union | None]]:
    """Direct child modules of a container, seen through roles, with the union they belong to."""
    for node in children:
        if isinstance(node, Role):
            yield from _members(node.children)
        elif isinstance(node, Module):
            yield node, None
        elif isinstance(node, Union):
            for member in node.members:
                yield member, node


def _index(children: tuple[Node, ...], prefix: Path = ()) -> dict[Path, Module]:
    """Every module by path, in document order."""
    found: dict[Path, Module] = {}
    for module, _ in _members(children):
        path = prefix + (module.name,)
        found[path] = module
        found.update(_index(module.children, path))
    return found


def _parameters(module: Module) -> dict[str, Parameter]:
    """A module's parameters, those inside its role tags included."""
    nodes = [n for c in module.children for n in (c.children if isinstance(c, Role) else (c,))]
    return {n.name: n for n in nodes if isinstance(n, Parameter)}


def _where(schema: Schema, prefix: Path) -> str:
    return f"module {'/'.join(prefix)!r}" if prefix else f"schema {schema.name!r}"


def _known(names) -> str:
    return ", ".join(names) or "none"


def module_paths(schema: Schema) -> list[Path]:
    """All module paths in document order (union members included)."""
    return list(_index(schema.children))


class _Resolver:
    def __init__(self, schema: Schema):
        self.schema = schema
        self.modules: set[Path] = set()
        self.params: dict[tuple[Path, str], str] = {}
        self.order: tuple[Path, ...] = ()

    def include(self, children: tuple[Node, ...], prefix: Path,
                imports: Sequence[ModuleImport], *, top: bool) -> None:
        """Add what `imports` select among a container's child modules. Below the top level,
        modules not named keep their default: plain modules in, union scaffolds in."""
        available = {module.name: union for module, union in _members(children)}
        picked: dict[str, ModuleImport] = {}
        chosen: dict[int, str] = {}  # id(union) -> picked member
        for imp in imports:
            line = imp.line or None
            if imp.name not in available:
                raise SelectionError(f"unknown module {imp.name!r} in {_where(self.schema, prefix)}"
                                     f" (known: {_known(available)}){did_you_mean(imp.name, available)}", line)
            if imp.name in picked:
                raise SelectionError(f"module {'/'.join(prefix + (imp.name,))!r} is imported "
                                     "twice", line)
            union = available[imp.name]
            if union is not None and chosen.setdefault(id(union), imp.name) != imp.name:
                raise SelectionError(f"modules {chosen[id(union)]!r} and {imp.name!r} are members "
                                     "of the same union; pick one", line)
            picked[imp.name] = imp
        if top and not prefix:
            self.order = tuple((name,) for name in picked)
        for module, union in _members(children):
            imp = picked.get(module.name)
            if imp is None and (top or (union is not None
                                        and chosen.get(id(union), union.scaffold) != module.name)):
                continue
            path = prefix + (module.name,)
            self.modules.add(path)
            if imp is not None:
                for name, value in imp.params:
                    self.set_param(module, path, name, value, imp.line or None)
            self.include(module.children, path, imp.children if imp else (), top=False)

    def set_param(self, module: Module, path: Path, name: str, value: str,
                  line: int | None = None) -> None:
        known = _parameters(module)
        if name not in known:
            raise SelectionError(f"module {'/'.join(path)!r} has no parameter {name!r} "
                                 f"(known: {_known(known)}){did_you_mean(name, known)}", line)
        if (path, name) in self.params:
            raise SelectionError(f"parameter {'/'.join(path + (name,))!r} is given twice", line)
        self.params[path, name] = value

    def selection(self) -> Selection:
        params = sorted((path, name, value) for (path, name), value in self.params.items())
        return Selection(frozenset(self.modules), tuple(params), self.order)


def default_selection(schema: Schema) -> Selection:
    """Every module outside unions plus each union's scaffold member, recursively."""
    resolver = _Resolver(schema)
    resolver.include(schema.children, (), (), top=False)
    return resolver.selection()


def select_imports(schema: Schema, imports: Sequence[ModuleImport]) -> Selection:
    """Only the imported top-level modules, each with its default contents unless its nested
    imports pick sub-modules or union members; attributes are parameter values."""
    resolver = _Resolver(schema)
    resolver.include(schema.children, (), imports, top=True)
    return resolver.selection()


def _resolve_path(schema: Schema, spec: str, index: dict[Path, Module]) -> Path:
    """'a/b/c' is a path from the root; a bare name may also name a unique nested module."""
    names = tuple(spec.split("/"))
    if not all(names):
        raise SelectionError(f"invalid module path {spec!r}")
    if names in index:
        return names
    if len(names) == 1:
        matches = [path for path in index if path[-1] == names[0]]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise SelectionError(f"module name {spec!r} is ambiguous in schema "
                                 f"{schema.name!r} (matches: "
                                 f"{', '.join('/'.join(p) for p in matches)}); give its path")
    depth = next(i for i in range(len(names)) if names[: i + 1] not in index)
    prefix = names[:depth]
    known = [path[-1] for path in index if path[:-1] == prefix]
    raise SelectionError(f"unknown module {names[depth]!r} in {_where(schema, prefix)} "
                         f"(known: {_known(known)}){_closest_module(spec, index, prefix, names[depth], known)}")


def _closest_module(spec: str, index: dict[Path, Module], prefix: Path, word: str, known: list[str]) -> str:
    """A did-you-mean for a mistyped module: in a path, the siblings whose name is close to the
    unknown part ('a/globl' -> 'a/global'); for a bare name, the closest full paths, or nested
    modules whose own name is close ('globl' -> 'python/global')."""
    import difflib

    if "/" in spec:
        close = difflib.get_close_matches(word, known, n=2, cutoff=0.6)
        paths = ["/".join((*prefix, c)) for c in close]
        return f"; did you mean {' or '.join(repr(q) for q in paths)}?" if paths else ""
    hint = did_you_mean(spec, ["/".join(p) for p in index])
    if hint:
        return hint
    by_name: dict[str, list[str]] = {}
    for p in index:
        by_name.setdefault(p[-1], []).append("/".join(p))
    close = difflib.get_close_matches(spec, list(by_name), n=2, cutoff=0.6)
    paths = [q for name in close for q in by_name[name]][:2]
    return f"; did you mean {' or '.join(repr(q) for q in paths)}?" if paths else ""


def select_cli(schema: Schema, *, modules: Sequence[str], params: Sequence[str]) -> Selection:
    """Selection from command-line options: module paths ("a", "a/b/c") and parameter values
    ("NAME=VALUE" or "MODPATH/NAME=VALUE"). No modules means the default selection."""
    index = _index(schema.children)
    resolver = _Resolver(schema)
    if modules:
        tree: dict = {}
        for spec in modules:
            node = tree
            for name in _resolve_path(schema, spec, index):
                node = node.setdefault(name, {})

        def imports(subtree: dict) -> tuple[ModuleImport, ...]:
            return tuple(ModuleImport(name, (), imports(sub), 0) for name, sub in subtree.items())

        resolver.include(schema.children, (), imports(tree), top=True)
    else:
        resolver.include(schema.children, (), (), top=False)
    for spec in params:
        key, sep, value = spec.partition("=")
        if not sep or not key or key.endswith("/"):
            raise SelectionError(f"invalid parameter {spec!r}, expected NAME=VALUE or "
                                 "MODULE/NAME=VALUE")
        modspec, _, name = key.rpartition("/")
        if modspec:
            path = _resolve_path(schema, modspec, index)
            if path not in resolver.modules:
                raise SelectionError(f"module {'/'.join(path)!r} of parameter {key!r} is not "
                                     "selected")
        else:
            owners = [p for p in sorted(resolver.modules) if name in _parameters(index[p])]
            if not owners:
                selected = {n for p in resolver.modules for n in _parameters(index[p])}
                anywhere = {f"{'/'.join(p)}/{n}" for p in index for n in _parameters(index[p])}
                where = [q for q in sorted(anywhere) if q.rpartition("/")[2] == name]
                also = f" (module {where[0].rpartition('/')[0]!r} has it: import it with -m)" if where else ""
                hint = "" if where else (did_you_mean(name, selected)
                                         or did_you_mean(name, {q.rpartition("/")[2] for q in anywhere}))
                raise SelectionError(f"unknown parameter {name!r}: no selected module has it{also}{hint}")
            if len(owners) > 1:
                raise SelectionError(f"parameter {name!r} is ambiguous, qualify it as "
                                     f"module/param ({', '.join('/'.join(p) for p in owners)})")
            path = owners[0]
        resolver.set_param(index[path], path, name, value)
    return resolver.selection()


def param_value(selection: Selection, path: Sequence[str], name: str) -> str | None:
    """The value given for a parameter, or None when it was not given."""
    path = tuple(path)
    return next((v for p, n, v in selection.params if p == path and n == name), None)

"""Property tests of the static layout and the prompt plan over generated schemas.

Hypothesis writes schemas (nested modules, unions with and without a scaffold, parameters with
and without scaffold text, plain text, with or without chat roles) as XML, parses them with
``pml`` and lays them out with the one-token-per-word tokenizer of test_layout, then checks:

- positions never overlap, except between members of one union;
- each module's span holds its own segments and slots and its submodules; union members start
  together and the union is as long as its longest member;
- ``pc ask``'s prompt plan for any valid selection lists exactly the selected segments at their
  offsets, in position order, never two items on one position, parameter values in their slots;
- without roles, the default prompt's plan reads exactly the schema's default text, rendered
  here independently of pml and layout.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from promptcache_cli.prompt import layout as lay
from promptcache_cli.pml import schema as pml
from promptcache_cli.errors import ParameterTooLong
from promptcache_cli.prompt.plan import Fresh, PromptPlan, plan_prompt
from promptcache_cli.pml.selection import SelectionError, default_selection, module_paths, select_cli

from .test_layout import CHATML, WordTokenizer

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORDS = st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta"]), min_size=1, max_size=4)


# -- a schema model, rendered to XML and to its default text --------------------------------------------


@dataclass
class Text:
    words: list[str]


@dataclass
class Param:
    name: str
    length: int
    scaffold: list[str]


@dataclass
class Mod:
    name: str
    children: list = field(default_factory=list)


@dataclass
class Uni:
    members: list[Mod]
    scaffold: str | None


def to_xml(node) -> str:
    if isinstance(node, Text):
        return " ".join(node.words)
    if isinstance(node, Param):
        scaffold = f' scaffold="{" ".join(node.scaffold)}"' if node.scaffold else ""
        return f'<parameter name="{node.name}" length="{node.length}"{scaffold}/>'
    if isinstance(node, Mod):
        return f'<module name="{node.name}">{" ".join(to_xml(c) for c in node.children)}</module>'
    scaffold = f' scaffold="{node.scaffold}"' if node.scaffold else ""
    return f"<union{scaffold}>{''.join(to_xml(m) for m in node.members)}</union>"


def default_words(node) -> list[str]:
    """The words the default prompt holds: plain modules, union scaffolds, parameter scaffolds."""
    if isinstance(node, Text):
        return list(node.words)
    if isinstance(node, Param):
        return list(node.scaffold)
    if isinstance(node, Mod):
        return [w for c in node.children for w in default_words(c)]
    member = next((m for m in node.members if m.name == node.scaffold), None)
    return default_words(member) if member else []


@st.composite
def contents(draw, names: itertools.count, *, depth: int, in_module: bool) -> list:
    items = []
    params = itertools.count()
    for _ in range(draw(st.integers(1 if depth == 0 else 0, 4))):
        kinds = ["text", "module"] + (["union"] if depth < 3 else []) + (["param"] if in_module else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "text":
            items.append(Text(draw(WORDS)))
        elif kind == "param":
            length = draw(st.integers(1, 5))
            scaffold = draw(st.lists(st.sampled_from(["x", "y", "z"]), max_size=length))
            items.append(Param(f"p{next(params)}", length, scaffold))
        elif kind == "module" and depth < 3:
            items.append(draw(module(names, depth=depth + 1)))
        elif kind == "union":
            members = [draw(module(names, depth=depth + 1)) for _ in range(draw(st.integers(1, 3)))]
            scaffold = draw(st.sampled_from([None] + [m.name for m in members]))
            items.append(Uni(members, scaffold))
        else:
            items.append(Text(draw(WORDS)))
    return items


@st.composite
def module(draw, names: itertools.count, *, depth: int) -> Mod:
    return Mod(f"m{next(names)}", draw(contents(names, depth=depth, in_module=True)))


@st.composite
def schemas(draw) -> tuple[str, list, list[str] | None]:
    """(XML, top-level content, roles or None)."""
    names = itertools.count()
    if draw(st.booleans()):
        return _schema_xml(body := draw(contents(names, depth=0, in_module=False))), body, None
    roles = draw(st.lists(st.sampled_from(["system", "user", "assistant"]), min_size=1, max_size=3))
    parts = [(role, draw(contents(names, depth=0, in_module=False))) for role in roles]
    xml = "".join(f"<{role}>{' '.join(to_xml(n) for n in body)}</{role}>" for role, body in parts)
    return f'<schema name="generated">{xml}</schema>', [n for _, body in parts for n in body], roles


def _schema_xml(body: list) -> str:
    return f'<schema name="generated">{" ".join(to_xml(n) for n in body)}</schema>'


def build(xml: str, roles: list[str] | None) -> tuple[pml.Schema, lay.Layout, WordTokenizer]:
    schema = pml.parse_schema(xml)
    tok = WordTokenizer()
    return schema, lay.build(schema, tok, CHATML if roles else None), tok


class Planner:
    """What prompt_plan uses of a session: a tokenizer as its model."""

    def __init__(self, tok: WordTokenizer) -> None:
        self.tok = tok

    def prompt_plan(self, layout: lay.Layout, selection) -> PromptPlan:
        return plan_prompt(layout, selection, self.tok)


def planner(tok: WordTokenizer) -> Planner:
    return Planner(tok)


def spans(layout: lay.Layout) -> list[tuple[int, int, tuple[str, ...], str]]:
    """(start, end, owner module path, what) of every segment and parameter slot."""
    out = [(s.offset, s.end, s.owner, "segment") for s in layout.segments]
    out += [(s.offset, s.offset + s.length, s.owner, f"slot {s.name}") for s in layout.slots]
    return out


def rivals(layout: lay.Layout, a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two owners that live in different members of one union."""
    i = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)
    if i is None:
        return False
    ia, ib = layout.modules[a[: i + 1]], layout.modules[b[: i + 1]]
    return ia.union is not None and ia.union == ib.union


# -- properties ---------------------------------------------------------------------------------------


@SETTINGS
@given(schemas())
def test_positions_never_overlap_except_union_members(case) -> None:
    xml, _, roles = case
    _, layout, _ = build(xml, roles)
    items = spans(layout)
    for (a0, a1, oa, wa), (b0, b1, ob, wb) in itertools.combinations(items, 2):
        if a0 < b1 and b0 < a1:
            assert rivals(layout, oa, ob), f"{wa} of {oa} [{a0},{a1}) overlaps {wb} of {ob} [{b0},{b1})"
    assert all(0 <= s < e <= layout.end for s, e, _, _ in items)
    assert layout.end == max((e for _, e, _, _ in items), default=0)
    offsets = [s.offset for s in layout.segments]
    assert offsets == sorted(offsets)


@SETTINGS
@given(schemas())
def test_modules_hold_their_content_and_unions_share_a_start(case) -> None:
    xml, _, roles = case
    schema, layout, _ = build(xml, roles)
    assert set(layout.modules) == set(module_paths(schema))
    for start, end, owner, what in spans(layout):
        for depth in range(1, len(owner) + 1):
            info = layout.modules[owner[:depth]]
            assert info.offset <= start and end <= info.offset + info.length, (what, owner, info)
    unions: dict[int, list[lay.ModuleInfo]] = {}
    for info in layout.modules.values():
        if info.union is not None:
            unions.setdefault(info.union, []).append(info)
    union_rows = sorted((e.offset, e.length) for e in layout.elements if e.kind == "union")
    expected = []
    for members in unions.values():
        assert len({m.offset for m in members}) == 1  # members start together
        expected.append((members[0].offset, max(m.length for m in members)))  # as long as the longest
    assert union_rows == sorted(expected)


@st.composite
def selections(draw, schema: pml.Schema) -> list[str]:
    paths = module_paths(schema)
    return ["/".join(p) for p in draw(st.lists(st.sampled_from(paths), max_size=4))] if paths else []


@SETTINGS
@given(st.data())
def test_prompt_plan_packs_selected_modules_in_request_order(data) -> None:
    xml, _, roles = data.draw(schemas())
    schema, layout, tok = build(xml, roles)
    picks = data.draw(selections(schema))
    try:
        selection = select_cli(schema, modules=picks, params=[])
    except SelectionError:
        assume(False)
    plan = planner(tok).prompt_plan(layout, selection)
    included = {lay.ROOT} | set(selection.modules)
    segments = plan.cached
    assert sorted(segments, key=lambda s: s.offset) == [s for s in layout.segments if s.owner in included]
    assert [s for s in segments if s.owner == lay.ROOT] == layout.segments_of(lay.ROOT)  # the schema's text stays put
    fresh = sorted((s for s in layout.slots if s.owner in included and s.scaffold), key=lambda s: s.offset)
    assert sorted(p.slot_offset for p in plan if not isinstance(p, lay.Segment)) == [s.offset for s in fresh]
    tops = [p.owner[:1] for p in plan]
    for top in set(tops) - {lay.ROOT}:  # a top-level module's parts: together, in layout order
        idx = [i for i, t in enumerate(tops) if t == top]
        assert idx == list(range(idx[0], idx[-1] + 1))
        offsets = [p.offset if isinstance(p, lay.Segment) else p.slot_offset for p in plan.parts[idx[0]:idx[-1] + 1]]
        assert offsets == sorted(offsets)
    turns = [(e.offset, e.offset + e.length) for e in layout.elements if e.kind == "role"]

    def turn(top):
        return next((i for i, (a, b) in enumerate(turns) if a <= layout.modules[top].offset < b), -1)

    seen = list(dict.fromkeys(t for t in tops if t != lay.ROOT))
    for i in {turn(t) for t in seen}:  # named modules of one turn come in the order the request names them
        named = [t for t in seen if turn(t) == i and t in selection.order]
        assert named == [t for t in selection.order if t in named]
    assert plan.positions() == [sum(len(p.tokens) for p in plan.parts[:i]) for i in range(len(plan))]  # no gaps
    for seg in layout.segments:
        if seg.owner not in included:
            assert seg not in segments


@SETTINGS
@given(st.data())
def test_parameter_values_fill_their_slot_or_are_refused(data) -> None:
    xml, _, roles = data.draw(schemas())
    schema, layout, tok = build(xml, roles)
    selection = default_selection(schema)
    slots = [s for s in layout.slots if s.owner in selection.modules]
    assume(slots)
    slot = data.draw(st.sampled_from(slots))
    value = data.draw(st.lists(st.sampled_from(["v", "w"]), min_size=1, max_size=7))
    spec = f"{'/'.join(slot.owner)}/{slot.name}={' '.join(value)}"
    selection = select_cli(schema, modules=[], params=[spec])
    sess = planner(tok)
    if len(value) > slot.length:
        with pytest.raises(ParameterTooLong):
            sess.prompt_plan(layout, selection)
        return
    plan = sess.prompt_plan(layout, selection)
    values = [obj for obj in plan if isinstance(obj, Fresh) and list(obj.tokens) == [tok.vocab[w] for w in value]]
    assert values, plan


@SETTINGS
@given(schemas().filter(lambda case: case[2] is None))
def test_default_plan_reads_the_schema_default_text(case) -> None:
    """Round trip: XML -> pml -> layout -> plan gives back the default text, word for word."""
    xml, body, _ = case
    schema, layout, tok = build(xml, None)
    plan = planner(tok).prompt_plan(layout, default_selection(schema))
    words = {i: w for w, i in tok.vocab.items()}
    got = [words[t] for t in plan.tokens()]
    assert got == [w for node in body for w in default_words(node)]


@SETTINGS
@given(schemas())
def test_context_arithmetic_matches_the_plain_reading_token_for_token(case) -> None:
    """The linear context arithmetic (prompt/contexts.py) gives exactly the contexts of the plain
    quadratic reading it replaced (tests/support/reference_contexts.py), for every segment and
    encoding: cache keys hash them, so one token of difference would orphan every cache."""
    from promptcache_cli.prompt import contexts as fast

    from .support import reference_contexts as ref

    xml, _, roles = case
    _, layout, _ = build(xml, roles)
    for seg in layout.segments:
        for encoding in fast.ENCODINGS:
            assert fast.contexts(layout, seg, encoding) == ref.contexts(layout, seg, encoding), (seg, encoding)
        for encoding in ("independent", "scaffold"):
            assert fast.context_tokens(layout, seg, encoding) == ref.context_tokens(layout, seg, encoding)
        assert fast.scaffold_selection(layout, seg.owner) == ref.scaffold_selection(layout, seg.owner)


@SETTINGS
@given(schemas())
def test_context_bytes_are_the_contexts_as_keys_hash_them(case) -> None:
    import numpy as np

    from promptcache_cli.prompt import contexts as fast

    xml, _, roles = case
    _, layout, _ = build(xml, roles)
    for seg in layout.segments:
        for encoding in fast.ENCODINGS:
            want = tuple(np.asarray(c, dtype="<i4").tobytes() for c in fast.contexts(layout, seg, encoding))
            assert fast.context_bytes(layout, seg, encoding) == want, (seg, encoding)

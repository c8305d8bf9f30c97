"""The ``average`` encoding: a module's states are the mean of its states computed after several
prompts the schema allows before it (its preceding unions switched member by member).

Which contexts (layout.contexts), what is stored (the mean of the states after each context,
against states computed one context at a time with the real model), what it shares with the
scaffold encoding (a module with one possible context has the same key, so the same file), and
what it refuses (q8_0 states). Also the one rule it shares with the scaffold encoding: no context
repeats a text."""

from __future__ import annotations

import numpy as np
import pytest

from promptcache_cli.store import cache_file
from promptcache_cli.prompt import contexts as ctxs
from promptcache_cli.pml import schema as pml
from promptcache_cli.modular import refresh as token_rank
from promptcache_cli.benchmarks.quality import kl
from promptcache_cli.modular.session import ModularSession
from promptcache_cli.prompt.boundaries import boundaries
from promptcache_cli.pml.selection import default_selection, select_cli
from promptcache_cli.llama.state_blob import kv_payloads

from .conftest import license_excerpt, write_schema
from .support.pc_process import pc

STYLES = {
    "plain": "Answer in plain words, in one or two sentences.",
    "lawyer": "Answer as a careful lawyer would, naming the clause you rely on.",
    "pirate": "Answer like a pirate, but keep every fact exact.",
}


@pytest.fixture(scope="module")
def union_schema(tmp_path_factory):
    """A union of three answer styles before two real license excerpts."""
    folder = tmp_path_factory.mktemp("average")
    files = {"bsd.txt": license_excerpt("BSD.txt", 700), "mpl.txt": license_excerpt("MPL-2.0.txt", 900)}
    members = "".join(f'<module name="{n}">{t}</module>' for n, t in STYLES.items())
    path = write_schema(folder, f"""
        <schema name="styles">
          <system>You answer questions about the documents the user gives.</system>
          <user>
            <union scaffold="lawyer">{members}</union>
            <module name="bsd" src="bsd.txt"/>
            <module name="mpl" src="mpl.txt"/>
          </user>
        </schema>""", files)
    return pml.load_schema(path)


@pytest.fixture(scope="module")
def session(model_path, tmp_path_factory):
    s = ModularSession(model_path, cache_dir=tmp_path_factory.mktemp("average-cache"), encoding="average")
    yield s
    s.close()


def _segment(layout, name):
    (seg,) = [s for s in layout.segments if s.owner == (name,)]
    return seg


def test_contexts_are_the_scaffold_prompt_with_each_union_member(session, union_schema):
    layout = session.layout(union_schema)
    bsd = _segment(layout, "bsd")
    got = ctxs.contexts(layout, bsd, "average")
    assert got[0] == ctxs.context_tokens(layout, bsd, "scaffold")  # the scaffold context first
    assert len(got) == len(set(got)) == 3
    for name in STYLES:  # each member's prompt, exactly as a question selecting it puts it before bsd
        plan = session.prompt_plan(layout, select_cli(union_schema, modules=[name, "bsd"], params=[]))
        (before,) = [tuple(b) for seg, b, _ in plan.preceding() if seg.owner == ("bsd",)]
        assert before in got
    # union members themselves, and the text before the union, have one context: the scaffold one
    for seg in layout.segments:
        if seg.offset <= _segment(layout, "plain").offset:
            assert ctxs.contexts(layout, seg, "average") == (ctxs.context_tokens(layout, seg, "scaffold"),)
    # other encodings keep their one context
    assert ctxs.contexts(layout, bsd, "independent") == (ctxs.context_tokens(layout, bsd, "independent"),)


def test_many_union_choices_are_sampled_the_same_way_every_time(tmp_path, session):
    """Three unions of three members before a module: 27 prompts, of which the scaffold one and a
    fixed sample of 7 others are averaged; members of one union share their contexts."""
    member = '<module name="u{u}m{m}">Rule {u}.{m}: be brief.</module>'
    unions = "".join("<union>" + "".join(member.format(u=u, m=m) for m in range(3)) + "</union>" for u in range(3))
    path = write_schema(tmp_path, f"""
        <schema name="many"><user>{unions}
          <union><module name="a">First text.</module><module name="b">Second text.</module></union>
        </user></schema>""")
    layout = session.layout(pml.load_schema(path))
    a, b = _segment(layout, "a"), _segment(layout, "b")
    got = ctxs.contexts(layout, a, "average")
    assert len(got) == ctxs.AVERAGED_CONTEXTS == len(set(got))
    assert got[0] == ctxs.context_tokens(layout, a, "scaffold")
    assert list(got[1:]) == sorted(got[1:])
    assert ctxs.contexts(layout, b, "average") == got
    assert ctxs.contexts(layout, a, "average") == got  # deterministic


def _values(blob):
    n, payloads = kv_payloads(blob)
    return np.concatenate([blob[at : at + 2 * e * n].view(np.float16).astype(np.float32) for _, at, e, _ in payloads])


def _slots(tmp_path, session):
    """Slots as unions over the same documents (how a schema lets questions order documents):
    the schema, its layout, and the tokens a question choosing some modules puts before the last."""
    docs = {"x": "The first document.", "y": "The second document.", "z": "The third document."}
    slots = "".join(
        f'<union scaffold="s{i}-{first}">' + "".join(f'<module name="s{i}-{n}">{t}</module>' for n, t in docs.items())
        + "</union>" for i, first in ((1, "x"), (2, "y"), (3, "z")))
    schema = pml.load_schema(write_schema(tmp_path, f"<schema name=\"slots\"><user>{slots}</user></schema>"))
    layout = session.layout(schema)

    def context_of(*names):
        plan = session.prompt_plan(layout, select_cli(schema, modules=list(names), params=[]))
        return next(tuple(b) for seg, b, _ in plan.preceding() if seg.owner == (names[-1],))

    return schema, layout, context_of


def test_contexts_never_repeat_a_text(tmp_path, session):
    """A context that puts a document twice, or before itself, is left out, the scaffold one included."""
    _, layout, context_of = _slots(tmp_path, session)
    got = ctxs.contexts(layout, _segment(layout, "s2-z"), "average")
    assert got == (context_of("s1-x", "s2-z"), context_of("s1-y", "s2-z"))  # not after z itself
    got = ctxs.contexts(layout, _segment(layout, "s2-x"), "average")  # the scaffold (x first) repeats x
    assert set(got) == {context_of("s1-y", "s2-x"), context_of("s1-z", "s2-x")}
    got = ctxs.contexts(layout, _segment(layout, "s3-z"), "average")
    assert set(got) == {context_of("s1-x", "s2-y", "s3-z"), context_of("s1-y", "s2-x", "s3-z")}
    assert got[0] == ctxs.context_tokens(layout, _segment(layout, "s3-z"), "scaffold")


def test_the_scaffold_context_never_repeats_a_text(tmp_path, session):
    """The scaffold encoding computes a module after the default prompt, except where that prompt
    puts the module's own text (or one text twice) before it: then after the first prompt, the
    unions' members taken in document order, that does not."""
    _, layout, context_of = _slots(tmp_path, session)

    def scaffold(name):
        (got,) = ctxs.contexts(layout, _segment(layout, name), "scaffold")
        assert got == ctxs.context_tokens(layout, _segment(layout, name), "scaffold")
        return got

    assert scaffold("s2-z") == context_of("s1-x", "s2-z")  # the default prompt (x in slot 1)
    assert scaffold("s3-z") == context_of("s1-x", "s2-y", "s3-z")
    assert scaffold("s2-x") == context_of("s1-y", "s2-x")  # not after x itself
    assert scaffold("s3-x") == context_of("s1-y", "s2-z", "s3-x")  # x, y, then y, z: the first without x
    assert scaffold("s3-y") == context_of("s1-x", "s2-z", "s3-y")


def test_a_prompt_that_is_the_scaffold_context_is_answered_as_uncached(model_path, tmp_path, session):
    """The question puts y before x: the context the scaffold encoding computed x after, since the
    default prompt puts x before itself. Same next-token choice and distribution as --no-cache
    (bit equality is not possible: see test_engine's reference test)."""
    schema, _, _ = _slots(tmp_path, session)
    sess = ModularSession(model_path, cache_dir=tmp_path / "cache", encoding="scaffold")
    try:
        sess.compile(schema)
        sel = select_cli(schema, modules=["s1-y", "s2-x"], params=[])
        question = "Which document comes second?"
        cached = sess.ask(schema, sel, question, max_tokens=1, keep_logits=True)
        base = sess.ask(schema, sel, question, max_tokens=1, keep_logits=True, no_cache=True)
    finally:
        sess.close()
    assert cached.cached_tokens > 0 and base.cached_tokens == 0
    assert int(np.argmax(cached.first_logits)) == int(np.argmax(base.first_logits))
    assert kl(base.first_logits, cached.first_logits) < 0.02
    assert np.abs(base.first_logits - cached.first_logits).max() < 1.5


def test_the_mean_is_exact(session, union_schema):
    """Averaging one segment: byte for byte the float32 mean of its states after each context,
    computed in the same order, rounded to f16 (headers and cell metadata: the first state's)."""
    layout = session.layout(union_schema)
    bsd = _segment(layout, "bsd")
    contexts = ctxs.contexts(layout, bsd, "average")
    ((seg, got),) = list(session.compiler.module_states(layout, [(bsd, contexts)], None))
    assert seg == bsd
    at = ctxs.computed_at(contexts)
    flat = sorted(((bsd, c, at) for c in contexts), key=lambda job: job[1] + job[0].tokens)
    singles = [blob for _, blob in session.compiler.segment_states(layout, flat, None)]
    want = singles[0].copy()
    n, payloads = kv_payloads(want)
    for _, at, e, _ in payloads:
        total = sum(b[at : at + 2 * e * n].view(np.float16).astype(np.float32) for b in singles)
        want[at : at + 2 * e * n] = (total / np.float32(len(singles))).astype(np.float16).view(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, singles[0])


def test_stored_states_are_the_mean_over_the_contexts(session, union_schema):
    """The stored states of bsd (compiled with the whole schema) equal the mean of its states
    computed after each context alone, up to llama.cpp's rounding, which depends on what else
    the context computed before (measured: a fifth of what one context changes): much closer
    to that mean than to any one context's states."""
    session.compile(union_schema)
    layout = session.layout(union_schema)
    bsd = _segment(layout, "bsd")
    f = cache_file.read(session.store.module_path(session.keys(layout)[("bsd",)]))
    try:
        stored = np.array(f.blob(0))
    finally:
        f.close()
    contexts = ctxs.contexts(layout, bsd, "average")
    singles = [blob for ctx in contexts
               for _, blob in session.compiler.segment_states(layout, [(bsd, ctx, ctxs.computed_at(contexts))], None)]
    mean = np.mean([_values(b) for b in singles], axis=0)
    off_mean = np.abs(_values(stored) - mean).mean()
    off_single = min(np.abs(_values(stored) - _values(b)).mean() for b in singles)
    assert off_mean < off_single / 3, (off_mean, off_single)


def test_one_context_modules_share_the_scaffold_files(model_path, session, union_schema, tmp_path):
    session.compile(union_schema)
    layout = session.layout(union_schema)
    scaffold = ModularSession(model_path, cache_dir=tmp_path, encoding="scaffold")
    try:
        mine, theirs = session.keys(layout), scaffold.keys(scaffold.layout(union_schema))
    finally:
        scaffold.close()
    for owner in layout.owners():
        one = all(len(ctxs.contexts(layout, s, "average")) == 1 for s in layout.segments_of(owner))
        assert (mine[owner] == theirs[owner]) == one, owner
    # the three styles; the schema's own text has segments after the union too (the closing turn)
    assert [o for o in layout.owners() if mine[o] == theirs[o]] == [(name,) for name in STYLES]


def test_every_averaged_segment_is_stale_for_refresh(session, union_schema):
    """--refresh treats averaged states as computed after another context, even in the default
    prompt (none of them is exactly the prompt's states)."""
    layout = session.layout(union_schema)
    plan = session.prompt_plan(layout, default_selection(union_schema))
    stale = {seg.offset for seg, _ in token_rank.stale(boundaries(layout, plan, "average"))}
    averaged = {seg.offset for seg in layout.segments if len(ctxs.contexts(layout, seg, "average")) > 1}
    assert stale == averaged and {_segment(layout, "bsd").offset, _segment(layout, "mpl").offset} <= stale
    assert not token_rank.stale(boundaries(layout, plan, "scaffold"))  # the default prompt: exact scaffold states


def test_answers_come_from_the_averaged_cache(session, union_schema):
    session.compile(union_schema)
    sel = select_cli(union_schema, modules=["pirate", "bsd"], params=[])
    got = session.ask(union_schema, sel, "Who holds the copyright?", max_tokens=8)
    assert got.cached_tokens > 150 and not got.compiled and not got.warnings
    assert got.text.strip()


def test_q8_0_is_refused(model_path, tmp_path, union_schema):
    from promptcache_cli.llama.context import ContextSettings

    with pytest.raises(ValueError, match="f16"):
        ModularSession(model_path, cache_dir=tmp_path, encoding="average", settings=ContextSettings.for_kv_type("q8_0"))
    proc = pc("compile", union_schema.path, "--encoding", "average", "--kv-type", "q8_0", cache_dir=tmp_path / "cli")
    assert proc.code == 2 and "f16" in proc.err and "Traceback" not in proc.err


def test_cli_compiles_and_answers_with_the_average_encoding(union_schema, tmp_path):
    args = ("--encoding", "average", "--cache-dir", tmp_path)
    report = pc("compile", union_schema.path, "--json", *args)
    assert report.code == 0, report.err
    got = report.json()
    assert got["encoding"] == "average" and {m["status"] for m in got["modules"]} == {"computed"}
    answer = pc("ask", "-s", union_schema.path, "-m", "plain", "-m", "mpl", "-n", "4", "--json",
                "What is this license?", *args)
    assert answer.code == 0, answer.err
    out = answer.json()
    assert out["cached_tokens"] > 150 and out["warnings"] == [] and out["answer"].strip()
    again = pc("compile", union_schema.path, "--json", *args).json()  # nothing left to compute
    assert {m["status"] for m in again["modules"]} == {"reused"}

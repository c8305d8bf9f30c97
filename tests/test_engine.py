"""The backbone: the real default model, cached answers against uncached ones, stitched states
against a reference computed in process without serialization."""

from __future__ import annotations

import numpy as np
import pytest

from promptcache_cli.store import cache_file
from promptcache_cli.prompt import layout as lay
from promptcache_cli.prompt import contexts as ctxs
from promptcache_cli.pml import schema as pml
from promptcache_cli.errors import ParameterTooLong
from promptcache_cli.modular.session import ModularSession
from promptcache_cli.llama.context import ContextSettings
from promptcache_cli.pml.selection import default_selection, select_cli

from .conftest import license_excerpt, write_schema

DEFAULT = ctxs.ENCODINGS[0]  # the default encoding, what users get
NEEDLE = "The access code for the archive room is 4417."


@pytest.fixture(scope="module")
def sessions(model_path, tmp_path_factory):
    """One loaded model per encoding, each with its own cache folder."""
    root = tmp_path_factory.mktemp("engine-cache")
    made = {enc: ModularSession(model_path, cache_dir=root / enc, encoding=enc) for enc in ctxs.ENCODINGS}
    yield made
    for s in made.values():
        s.close()


@pytest.fixture(scope="module")
def docs_schema(tmp_path_factory):
    """Three real license excerpts; the needle is planted in the middle of the second."""
    folder = tmp_path_factory.mktemp("docs")
    mpl = license_excerpt("MPL-2.0.txt", 1600)
    half = mpl.find("\n", len(mpl) // 2)
    files = {
        "bsd.txt": license_excerpt("BSD.txt", 1400),
        "mpl.txt": mpl[:half] + "\n" + NEEDLE + "\n" + mpl[half:],
        "artistic.txt": license_excerpt("Artistic.txt", 1600),
    }
    path = write_schema(folder, """
        <schema name="docs">
          <system>You answer questions about the documents the user gives, quoting them exactly.</system>
          <user>
            <module name="bsd" src="bsd.txt"/>
            <module name="mpl" src="mpl.txt"/>
            <module name="artistic" src="artistic.txt"/>
          </user>
        </schema>""", files)
    return pml.load_schema(path)


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def logp(x):
        x = x.astype(np.float64) - x.max()
        return x - np.log(np.exp(x).sum())

    lp, lq = logp(p_logits), logp(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum())


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_single_module_from_cache_equals_no_cache_exactly(sessions, model_path, tmp_path, kv):
    path = write_schema(tmp_path, """
        <schema name="one">
          <system>You answer briefly.</system>
          <user><module name="doc" src="doc.txt"/></user>
        </schema>""", {"doc.txt": license_excerpt("Apache-2.0.txt", 2500)})
    schema = pml.load_schema(path)
    sess = sessions[DEFAULT] if kv == "f16" else ModularSession(
        model_path, cache_dir=tmp_path / "q8", settings=ContextSettings(type_k=kv, type_v=kv, flash_attn=True))
    sess.compile(schema)
    sel = default_selection(schema)
    cached = sess.ask(schema, sel, "What kind of document is this?", max_tokens=24, keep_logits=True)
    base = sess.ask(schema, sel, "What kind of document is this?", max_tokens=24, keep_logits=True, no_cache=True)
    assert cached.cached_tokens > 500 and base.cached_tokens == 0
    assert cached.computed_tokens < 30
    np.testing.assert_array_equal(cached.first_logits, base.first_logits)
    assert cached.tokens == base.tokens and cached.text == base.text
    assert cached.text.strip()


def _reference_logits(sess: ModularSession, schema, selection, question: str, encoding: str) -> np.ndarray:
    """Build the stitched sequence in process, never serializing a state: each selected segment
    is computed after its context in the scratch sequence, its context cells removed, and its
    cells moved to where the prompt puts it and copied into sequence 0."""
    layout = sess.layout(schema)
    plan = sess.prompt_plan(layout, selection)
    q = sess.question_tokens(layout, question)
    ctx = sess.runtime.context(2 * layout.end + len(q) + 8)  # room for a context beside the stitched cells
    for obj, at in zip(plan, plan.positions(), strict=True):
        if isinstance(obj, lay.Segment):
            (context,) = ctxs.contexts(layout, obj, encoding)  # one: this schema has no unions
            ctx.decode(list(context) + list(obj.tokens), start=0, seq=1)
            ctx.seq_rm(1, 0, len(context))
            ctx.seq_add(1, at - len(context))
            ctx.seq_cp(1, 0)
            ctx.seq_rm(1)
        else:
            ctx.decode(list(obj.tokens), start=at)
    ctx.decode(q, start=ctx.pos_max(0) + 1, logits=True)
    return ctx.logits()


@pytest.mark.parametrize("encoding", ctxs.ENCODINGS)
def test_stitched_states_match_unserialized_reference(sessions, docs_schema, encoding):
    """Same next-token choice and distribution as the in-process reference. Bit equality is not
    possible across the two: llama.cpp's sums depend on which cache cells the other sequences
    occupy while a segment is computed (content and positions of those cells do not matter,
    measured), and a compiled segment was computed alone."""
    sess = sessions[encoding]
    sess.compile(docs_schema)
    sel = select_cli(docs_schema, modules=["artistic", "mpl"], params=[])
    question = "What is the access code for the archive room?"
    cached = sess.ask(docs_schema, sel, question, max_tokens=1, keep_logits=True)
    ref = _reference_logits(sess, docs_schema, sel, question, encoding)
    assert int(np.argmax(cached.first_logits)) == int(np.argmax(ref))
    assert _kl(ref, cached.first_logits) < 0.02
    assert np.abs(ref - cached.first_logits).max() < 1.5


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_cache_file_round_trip_is_exact(model_path, docs_schema, tmp_path, kv):
    """States read back from disk are the bytes llama.cpp wrote, whatever the codec and KV type:
    the answers' logits from a zstd cache and a raw cache are identical."""
    settings = ContextSettings.for_kv_type(kv)
    logits = {}
    for codec in ("none", "zstd"):
        sess = ModularSession(model_path, cache_dir=tmp_path / codec, codec=codec, settings=settings)
        try:
            sess.compile(docs_schema)
            sel = default_selection(docs_schema)
            logits[codec] = sess.ask(docs_schema, sel, "Who wrote this?", max_tokens=1, keep_logits=True).first_logits
        finally:
            sess.close()
    np.testing.assert_array_equal(logits["none"], logits["zstd"])


def test_zstd_session_reuses_its_decode_memory_without_mixing_questions(model_path, docs_schema, tmp_path):
    """Decoded blobs live in the session's arena, reused question to question: a question asked
    again after another one (other modules, other order) gets the same logits, and the arena
    does not grow once it has held the largest question."""
    sess = ModularSession(model_path, cache_dir=tmp_path, codec="zstd")
    try:
        sess.compile(docs_schema)
        a = select_cli(docs_schema, modules=["bsd", "mpl", "artistic"], params=[])
        b = select_cli(docs_schema, modules=["mpl"], params=[])
        first = sess.ask(docs_schema, a, "Who wrote this?", max_tokens=1, keep_logits=True).first_logits
        held = sess.runtime.arena.nbytes
        assert held > 0
        sess.ask(docs_schema, b, "Who wrote this?", max_tokens=1)
        again = sess.ask(docs_schema, a, "Who wrote this?", max_tokens=1, keep_logits=True).first_logits
        np.testing.assert_array_equal(first, again)
        assert sess.runtime.arena.nbytes == held
    finally:
        sess.close()


def test_needle_in_one_of_several_documents_found_from_cache(sessions, docs_schema):
    sess = sessions[DEFAULT]
    sess.compile(docs_schema)
    question = "What is the access code for the archive room?"
    for modules in (["bsd", "mpl", "artistic"], ["artistic", "mpl"], ["mpl"]):
        sel = select_cli(docs_schema, modules=modules, params=[])
        cached = sess.ask(docs_schema, sel, question, max_tokens=24)
        assert "4417" in cached.text, (modules, cached.text)
        assert cached.computed_tokens < 40
    base = sess.ask(docs_schema, default_selection(docs_schema), question, max_tokens=24, no_cache=True)
    assert "4417" in base.text


@pytest.fixture(scope="module")
def travel_schema(tmp_path_factory):
    folder = tmp_path_factory.mktemp("travel")
    path = write_schema(folder, """
        <schema name="travel">
          <system>You are a travel assistant. Answer in one short sentence.</system>
          <user>
            <module name="trip">
              I am going to <parameter name="city" length="8" scaffold="a city"/> next week.
              <union scaffold="blue">
                <module name="blue">My suitcase is blue.</module>
                <module name="red">My suitcase is red.</module>
              </union>
            </module>
          </user>
        </schema>""")
    return pml.load_schema(path)


def test_parameter_value_reaches_the_model(sessions, travel_schema):
    sess = sessions[DEFAULT]
    answers = {}
    for city in ("Paris", "Tokyo"):
        sel = select_cli(travel_schema, modules=[], params=[f"city={city}"])
        answers[city] = sess.ask(travel_schema, sel, "Which city am I going to?", max_tokens=16).text
        assert city in answers[city], answers
    assert answers["Paris"] != answers["Tokyo"]


def test_union_member_selection_reaches_the_model(sessions, travel_schema):
    sess = sessions[DEFAULT]
    got = {}
    for member in ("blue", "red"):
        sel = select_cli(travel_schema, modules=[f"trip/{member}"], params=["city=Rome"])
        assert ("trip", member) in sel.modules
        got[member] = sess.ask(travel_schema, sel, "What color is my suitcase?", max_tokens=16).text.lower()
        assert member in got[member], got
    assert got["blue"] != got["red"]


def test_parameter_longer_than_its_slot_is_refused(sessions, travel_schema):
    sel = select_cli(travel_schema, modules=[], params=["city=" + "Llanfairpwllgwyngyll " * 3])
    with pytest.raises(ParameterTooLong, match="city"):
        sessions[DEFAULT].ask(travel_schema, sel, "Where?", max_tokens=4)


def test_changed_module_recompiles_only_itself_when_independent(model_path, tmp_path):
    """Positions are static, so a module whose length changes moves every module after it; a
    same-length edit shows what each encoding invalidates."""
    files = {"a.txt": license_excerpt("BSD.txt", 600) + "\nRevision 1.", "b.txt": license_excerpt("Artistic.txt", 600)}
    xml = """
        <schema name="two">
          <system>Be brief.</system>
          <user><module name="a" src="a.txt"/><module name="b" src="b.txt"/></user>
        </schema>"""
    for encoding, expect_b in (("independent", "reused"), ("scaffold", "computed")):
        folder = tmp_path / encoding
        path = write_schema(folder, xml, files)
        sess = ModularSession(model_path, cache_dir=folder / "cache", encoding=encoding)
        try:
            first = sess.compile(pml.load_schema(path))
            assert {m.status for m in first.modules} == {"computed"}
            again = sess.compile(pml.load_schema(path))
            assert {m.status for m in again.modules} == {"reused"}
            (folder / "a.txt").write_text(files["a.txt"].replace("Revision 1.", "Revision 2."), encoding="utf-8")
            changed = {m.name: m.status for m in sess.compile(pml.load_schema(path)).modules}
        finally:
            sess.close()
        assert changed["a"] == "computed" and changed["(schema)"] == "reused"
        assert changed["b"] == expect_b, (encoding, changed)


@pytest.mark.parametrize("damage,codec", [("truncate", "none"), ("flip-byte", "none"), ("flip-byte", "zstd")])
def test_damaged_cache_file_is_recomputed_and_answer_stays_correct(model_path, docs_schema, tmp_path, damage, codec):
    """A flipped bit shows only when the module's state is read, after the states before it are
    loaded (reading overlaps loading): the context is refilled with the recomputed module."""
    sess = ModularSession(model_path, cache_dir=tmp_path / "cache", codec=codec)
    try:
        sess.compile(docs_schema)
        layout = sess.layout(docs_schema)
        path = sess.store.module_path(sess.keys(layout)[("mpl",)])
        data = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(data[: len(data) // 2])
        else:  # one bit in the middle of the state payload
            mid = len(data) // 2
            path.write_bytes(data[:mid] + bytes([data[mid] ^ 0x10]) + data[mid + 1:])
        sel = default_selection(docs_schema)
        question = "What is the access code for the archive room?"
        res = sess.ask(docs_schema, sel, question, max_tokens=16)
        base = sess.ask(docs_schema, sel, question, max_tokens=16, no_cache=True)
    finally:
        sess.close()
    assert any("mpl" in w and "recomputing" in w for w in res.warnings)
    assert [m.name for m in res.compiled] == ["mpl"]
    cache_file.verify(path).close()  # replaced by a whole file, every checksum intact (raises if not)
    assert "4417" in res.text and "4417" in base.text


def test_only_selected_modules_are_loaded(sessions, docs_schema):
    """Skipped modules are not loaded: the cached tokens are exactly the selected segments."""
    sess = sessions[DEFAULT]
    layout = sess.layout(docs_schema)
    sel = select_cli(docs_schema, modules=["bsd"], params=[])
    res = sess.ask(docs_schema, sel, "Who may redistribute?", max_tokens=1)
    root = sum(len(s.tokens) for s in layout.segments_of(()))
    bsd = sum(len(s.tokens) for s in layout.segments_of(("bsd",)))
    assert res.cached_tokens == root + bsd
    assert res.modules == ("bsd",)


def test_a_question_beginning_like_an_earlier_one_computes_only_the_rest(sessions, docs_schema, model_path):
    """Questions over the same modules keep the modules where they are and reuse the cells of the
    question before (or of an earlier one, kept in RAM) as far as they share tokens: a question
    beginning with the same pasted note computes only the chunks after it. The answers are exactly
    the ones a fresh session gives."""
    from promptcache_cli.core.tokens import common_prefix
    from promptcache_cli.modular.tails import usable

    note = "Here is a note from a colleague:\n" + license_excerpt("BSD.txt", 500) + "\n\n"
    questions = [note + "Who may redistribute?", "What is the access code for the archive room?",
                 note + "What is the access code for the archive room?"]
    sess = sessions[DEFAULT]
    sel = default_selection(docs_schema)
    layout = sess.layout(docs_schema)
    prompt = sess.prompt_plan(layout, sel).end
    q = [sess.question_tokens(layout, text) for text in questions]
    sess.ask(docs_schema, select_cli(docs_schema, modules=["bsd"], params=[]), "Hello?", max_tokens=1)  # other modules
    got = [sess.ask(docs_schema, sel, text, max_tokens=8, keep_logits=True) for text in questions]
    assert got[0].cached_tokens + got[0].computed_tokens == prompt + len(q[0])
    assert got[0].computed_tokens >= len(q[0])  # the modules loaded again, the whole question computed
    assert (got[1].cached_tokens, got[1].computed_tokens) == (prompt, len(q[1]))  # modules in place
    shared = usable(common_prefix(q[2], q[0]), q[2])  # the note: from the first question's cells, kept in RAM
    assert shared >= 64
    assert (got[2].cached_tokens, got[2].computed_tokens) == (prompt + shared, len(q[2]) - shared)
    fresh = ModularSession(model_path, cache_dir=sess.store.root)
    try:
        for text, warm in zip(questions, got, strict=True):
            alone = fresh.ask(docs_schema, sel, text, max_tokens=8, keep_logits=True)
            fresh.runtime.handed_out()  # every question from a cleared context
            assert alone.text == warm.text  # exactly: the chunks computed are the ones a fresh session computes
            np.testing.assert_array_equal(alone.first_logits, warm.first_logits)
    finally:
        fresh.close()

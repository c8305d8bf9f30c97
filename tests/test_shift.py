"""Modules anywhere, on the real default model: states moved to other positions (a K-shift) against
the same states computed there, one file per module whatever its position, layouts that follow the
request without gaps, old caches missing cleanly, models that cannot shift refused cleanly."""

from __future__ import annotations

import numpy as np
import pytest

import promptcache_cli as pc
from promptcache_cli.benchmarks import corpus
from promptcache_cli.benchmarks.quality import kl
from promptcache_cli.llama.context import Context, ContextSettings
from promptcache_cli.llama.model import Model
from promptcache_cli.modular.session import ModularSession
from promptcache_cli.pml import schema as pml
from promptcache_cli.pml.selection import select_cli
from promptcache_cli.store import keys as store_keys

from .conftest import license_excerpt, write_schema

# Measured on SmolLM2-135M Q4_1 (tests below): a shift changes the first-token distribution about as
# much as computing the same text at another position does (KL 1e-3 to 6e-3, largest logit
# difference 0.5 to 0.9, same argmax): RoPE in f16 rounds differently at each angle.
SHIFT_KL = 0.02
SHIFT_LOGIT = 1.5


@pytest.fixture(scope="module")
def model(model_path):
    m = Model(str(model_path))
    yield m
    m.close()


def _first_logits(ctx: Context, question: list[int], at: int) -> np.ndarray:
    ctx.decode(question, start=at, logits=True)
    return ctx.logits()


@pytest.mark.parametrize("stored, target", [(0, 700), (900, 40), (31, 2031)])
def test_shifted_states_match_states_computed_at_the_target(model, stored, target):
    """The same context and text computed at ``stored`` then moved to ``target`` (through a saved
    blob, as a cache file is loaded), against computed at ``target`` directly: same argmax, KL of the
    first-token distribution and largest logit difference within the bounds above."""
    context = model.tokenize("You answer questions about licenses.\n\n", special=False)
    doc = model.tokenize(corpus.take_lines(model, corpus.text("license:MPL-2.0"), 600), special=False)
    question = model.tokenize("\n\nWhat does this license say about warranties?", special=False)
    n = len(context) + len(doc)
    with Context(model, ContextSettings(n_ctx=4096)) as ctx:
        assert ctx.can_shift
        ctx.decode(context + doc, start=target)
        direct = _first_logits(ctx, question, target + n)
        ctx.clear()
        ctx.decode(context + doc, start=stored)
        blob = ctx.save_state(0)
        ctx.clear()
        ctx.load_state(1, blob)
        ctx.seq_add(1, target - stored)
        ctx.seq_cp(1, 0)
        ctx.seq_rm(1)
        assert ctx.pos_max(0) == target + n - 1
        moved = _first_logits(ctx, question, target + n)
    assert int(np.argmax(direct)) == int(np.argmax(moved))
    assert kl(direct, moved) < SHIFT_KL
    assert np.abs(direct - moved).max() < SHIFT_LOGIT
    assert kl(direct, moved) > 0  # not a no-op: the K-shift rounds


DOCS = {"bsd.txt": license_excerpt("BSD.txt", 1000), "mpl.txt": license_excerpt("MPL-2.0.txt", 1300),
        "art.txt": license_excerpt("Artistic.txt", 1100)}


@pytest.fixture(scope="module")
def slots_schema(tmp_path_factory):
    """The benchmark's document workload in small: each slot a union of the same documents, no
    scaffold member."""
    folder = tmp_path_factory.mktemp("slots")
    unions = "".join("<union>" + "".join(f'<module name="s{i}-{n}" src="{n}.txt"/>' for n in ("bsd", "mpl", "art"))
                     + "</union>" for i in (1, 2, 3))
    return pml.load_schema(write_schema(folder, f"""
        <schema name="slots">
          <system>You answer questions about the documents the user gives.</system>
          <user>{unions}</user>
        </schema>""", DOCS))


def test_union_per_slot_stores_each_document_once(model_path, slots_schema, tmp_path):
    with pc.open_session(model_path, cache_dir=tmp_path / "packed", mode="modular") as packed, \
            pc.open_session(model_path, cache_dir=tmp_path / "static", mode="modular", positions="static") as static:
        files = packed.module_files(slots_schema)
        assert len({files[f"s{i}-bsd"] for i in (1, 2, 3)}) == 1  # one file serves every slot
        assert len(set(files.values())) == 1 + 3  # the schema's own text and three documents
        report = packed.compile(slots_schema)
        assert [m.status for m in report.modules].count("computed") == 4
        assert len(set(static.module_files(slots_schema).values())) == 1 + 9  # pc 0.1: a file per slot
        static.compile(slots_schema)
        size = {name: sum(f.stat().st_size for f in (tmp_path / name / "modules").rglob("*.pcm"))
                for name in ("packed", "static")}
        assert size["static"] > 2.5 * size["packed"]
        request = pc.Request(slots_schema, "Which document mentions warranties?", modules=["s1-art", "s2-bsd"],
                             max_tokens=8, keep_logits=True, repair=0)
        a, b = packed.ask(request), static.ask(request)
        assert a.cached_tokens == b.cached_tokens and not a.compiled and not b.compiled
        view = packed.prompt(request)
        assert view.gaps == 0 and static.prompt(request).gaps == 1  # static: the longer mpl's slot left a gap
        # the same states (each after the shared prefix), moved: the answers agree closely
        assert int(np.argmax(a.first_logits)) == int(np.argmax(b.first_logits))
        assert kl(b.first_logits, a.first_logits) < SHIFT_KL


def test_modules_come_in_the_order_the_request_names_them(model_path, tmp_path):
    path = write_schema(tmp_path, """
        <schema name="three">
          <system>You answer briefly.</system>
          <user>Read these.
            <module name="bsd" src="bsd.txt"/>
            <module name="mpl" src="mpl.txt"/>
            <module name="art" src="art.txt"/>
          </user>
        </schema>""", DOCS)
    schema = pml.load_schema(path)
    sess = ModularSession(model_path, cache_dir=tmp_path / "c")
    try:
        layout = sess.layout(schema)
        plan = sess.prompt_plan(layout, select_cli(schema, modules=["art", "bsd"], params=[]))
        owners = [p.owner for p in plan.cached if p.owner]
        assert owners == [("art",), ("bsd",)]  # as named (the schema's own text where the schema has it)
        assert plan.positions() == [sum(len(p.tokens) for p in plan.parts[:i]) for i in range(len(plan))]
        sess.compile(schema)
        got = sess.ask(schema, select_cli(schema, modules=["art", "bsd"], params=[]), "Which is first?",
                       max_tokens=4, keep_logits=True)
        ref = sess.ask(schema, select_cli(schema, modules=["art", "bsd"], params=[]), "Which is first?",
                       max_tokens=4, keep_logits=True, no_cache=True)
        assert got.cached_tokens + got.computed_tokens == ref.computed_tokens  # the same prompt, packed
        assert int(np.argmax(got.first_logits)) == int(np.argmax(ref.first_logits))
    finally:
        sess.close()


def test_files_of_the_old_key_format_are_not_used(model_path, tmp_path, monkeypatch):
    """A cache written under the previous key format: nothing of it is found, every module is
    computed again (and the old files stay until `pc gc`)."""
    path = write_schema(tmp_path, """
        <schema name="one"><system>Be brief.</system><user><module name="doc" src="bsd.txt"/></user></schema>""",
                        DOCS)
    with pc.open_session(model_path, cache_dir=tmp_path / "c", mode="modular") as s:
        monkeypatch.setattr(store_keys, "FORMAT_TAG", "pcache-1")
        old = s.module_files(path)
        s.compile(path)
    monkeypatch.undo()
    with pc.open_session(model_path, cache_dir=tmp_path / "c", mode="modular") as s:
        new = s.module_files(path)
        assert set(old.values()).isdisjoint(new.values())
        assert [m.status for m in s.compile(path).modules] == ["computed", "computed"]
        assert all(f.exists() for f in old.values())


def test_a_memory_that_cannot_shift_is_refused_cleanly(model_path, tmp_path, monkeypatch):
    """Where llama.cpp cannot move cells (a fake: the error path only), asking for a prompt that
    needs a move is an UnsupportedModel error (exit 4), not a crash or a wrong answer."""
    path = write_schema(tmp_path, """
        <schema name="two"><system>Be brief.</system>
          <user><module name="a" src="bsd.txt"/><module name="b" src="mpl.txt"/></user></schema>""", DOCS)
    with pc.open_session(model_path, cache_dir=tmp_path / "c", mode="modular") as s:
        s.compile(path)
        monkeypatch.setattr(Context, "can_shift", property(lambda self: False))
        assert s.ask(pc.Request(path, "Hi?", max_tokens=2)).text is not None  # the default prompt: nothing moves
        with pytest.raises(pc.UnsupportedModel) as e:
            s.ask(pc.Request(path, "Hi?", modules=["b"], max_tokens=2))
        assert pc.exit_code_for(e.value) == 4

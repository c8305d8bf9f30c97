"""Prefix mode: answers resumed from stored states equal cold prefills, token for token and logit
for logit, for attention, recurrent (mamba) and hybrid (lfm2) models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from promptcache_cli.pml import schema as pml
from promptcache_cli.errors import UnsupportedModel
from promptcache_cli.prefix.session import PrefixSession
from promptcache_cli.pml.selection import default_selection, select_cli
from promptcache_cli.api import open_engine

from .conftest import license_excerpt, write_schema
from .support.pc_process import ok, pc
from .test_faults import read_only_works as _read_only_works  # noqa: F401  (the fixture, under its own name)

QUESTION = "What is the code word?"
SELECTIONS = [None, ["a", "c"], ["b"], ["a", "b"], []]  # None: the default prompt (every module)


@pytest.fixture(scope="module")
def schema_path(tmp_path_factory) -> Path:
    docs = [license_excerpt(n, 1200) for n in ("BSD.txt", "Apache-2.0.txt", "MPL-2.0.txt")]
    return write_schema(tmp_path_factory.mktemp("prefix-schema"), f"""
        <schema name="prefix">
          <system>You answer questions about documents.</system>
          <user>
            <module name="a">{docs[0]}</module>
            <module name="b">The code word is orange. {docs[1]}</module>
            <module name="c">{docs[2]}</module>
          </user>
        </schema>""")


def selection(schema, modules):
    return default_selection(schema) if modules is None else select_cli(schema, modules=modules, params=[])


def check_against_cold_prefill(sess: PrefixSession, schema) -> list[int]:
    """Every selection's cached answer equals its --no-cache answer; returns the resume points."""
    resumed = []
    for modules in SELECTIONS:
        sel = selection(schema, modules)
        warm = sess.ask(schema, sel, QUESTION, max_tokens=12, keep_logits=True)
        cold = sess.ask(schema, sel, QUESTION, max_tokens=12, keep_logits=True, no_cache=True)
        assert warm.tokens == cold.tokens, modules
        np.testing.assert_array_equal(warm.first_logits, cold.first_logits)
        assert warm.cached_tokens + warm.computed_tokens == cold.computed_tokens
        assert warm.warnings == ()
        resumed.append(warm.cached_tokens)
    return resumed


@pytest.mark.parametrize("test_model", ["mamba", "lfm2", "llama"], indirect=True)
def test_resumed_answers_equal_cold_prefill(test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    schema = pml.load_schema(schema_path)
    sess = open_engine(test_model, cache_dir=tmp_path / "cache", mode="prefix", checkpoints=3)
    report = sess.compile(schema)
    positions = [m.tokens for m in report.modules]
    end = positions[-1]
    resumed = check_against_cold_prefill(sess, schema)
    assert resumed[0] == end  # the default prompt plus a question resumes from the end state
    if sess.model.kind == "attention":
        assert positions == [end]  # one state, cut back to any prefix
        assert resumed[1] > positions[0] // 3  # cut back inside module c's place, not at a checkpoint
    else:
        assert len(positions) == 4  # three checkpoints at the module boundaries and the end
        assert set(resumed) <= set(positions) | {0}
        assert resumed[2] == positions[0]  # only module b: back to the end of the system prompt


@pytest.mark.parametrize("test_model", ["mamba", "llama"], indirect=True)
def test_zstd_states_decode_into_the_arena_and_stay_exact(test_model: Path, schema_path: Path,
                                                           tmp_path: Path) -> None:
    """zstd prefix states decode into the session's arena: answers still equal cold prefills, and
    asking every selection again reuses the arena's memory instead of growing it."""
    schema = pml.load_schema(schema_path)
    sess = PrefixSession(test_model, cache_dir=tmp_path / "cache", checkpoints=3, codec="zstd")
    sess.compile(schema)
    first = check_against_cold_prefill(sess, schema)
    held = sess.runtime.arena.nbytes
    assert held > 0
    assert check_against_cold_prefill(sess, schema) == first
    assert sess.runtime.arena.nbytes == held


def test_default_model_prefix_mode_is_exact(model_path: Path, schema_path: Path, tmp_path: Path) -> None:
    schema = pml.load_schema(schema_path)
    sess = open_engine(model_path, cache_dir=tmp_path / "cache", mode="prefix")
    assert isinstance(sess, PrefixSession)
    sess.compile(schema)
    check_against_cold_prefill(sess, schema)


@pytest.mark.parametrize("test_model", ["mamba", "lfm2", "llama"], indirect=True)
def test_restore_leaves_no_stale_cells(test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    schema = pml.load_schema(schema_path)
    sess = PrefixSession(test_model, cache_dir=tmp_path / "cache", checkpoints=3)
    sess.compile(schema)
    cached = sess.prompt_tokens(schema, default_selection(schema))
    key = sess.prompt_key(cached)
    for modules in SELECTIONS[1:]:
        request = sess.prompt_tokens(schema, selection(schema, modules)) + [1, 2, 3]
        ctx = sess.runtime.context(len(request) + 4)
        plan = sess._restore(ctx, key, cached, request)
        assert 0 < plan.restore_at <= plan.overlap
        assert ctx.pos_max(0) == plan.restore_at - 1  # nothing after the restore point survives
        assert ctx.pos_max(1) == -1


@pytest.mark.parametrize("test_model", ["mamba"], indirect=True)
def test_checkpoints_follow_recorded_overlaps(test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    schema = pml.load_schema(schema_path)
    sess = PrefixSession(test_model, cache_dir=tmp_path / "cache", checkpoints=1)
    sess.compile(schema)
    for _ in range(3):  # requests that share module a, then diverge: overlap = end of a
        res = sess.ask(schema, selection(schema, ["a", "c"]), QUESTION, max_tokens=2)
    log = sess.history_dir(schema) / "overlap.jsonl"
    depths = {json.loads(line)["overlap"] for line in log.read_text().splitlines()}
    assert len(depths) == 1
    (depth,) = depths
    report = sess.compile(schema)
    assert [m.tokens for m in report.modules][0] == depth  # the one checkpoint moved to the observed depth
    res = sess.ask(schema, selection(schema, ["a", "c"]), QUESTION, max_tokens=2)
    assert res.cached_tokens == depth


@pytest.mark.parametrize("test_model", ["lfm2"], indirect=True)
def test_damaged_state_is_reported_recomputed_and_answer_still_exact(
        test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    schema = pml.load_schema(schema_path)
    sess = PrefixSession(test_model, cache_dir=tmp_path / "cache", checkpoints=3)
    report = sess.compile(schema)
    cached = sess.prompt_tokens(schema, default_selection(schema))
    folder = sess.state_dir(sess.prompt_key(cached))
    for victim in (report.modules[1].tokens, report.modules[-1].tokens):  # a partial checkpoint, the end state
        path = folder / f"{victim}.pcm"
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x40
        path.write_bytes(bytes(data))
        sel = selection(schema, ["a", "c"])
        warm = sess.ask(schema, sel, QUESTION, max_tokens=8)
        cold = sess.ask(schema, sel, QUESTION, max_tokens=8, no_cache=True)
        assert warm.tokens == cold.tokens
        assert len(warm.warnings) == 1 and f"prefix state at token {victim}" in warm.warnings[0]
        assert [r.tokens for r in warm.compiled] == [victim]
        again = sess.ask(schema, sel, QUESTION, max_tokens=8)
        assert again.warnings == () and again.tokens == cold.tokens


@pytest.mark.parametrize("test_model", ["mamba", "lfm2"], indirect=True)
def test_modular_stitching_is_refused_naming_prefix_mode(test_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match="prefix mode"):
        open_engine(test_model, cache_dir=tmp_path, mode="modular")
    assert isinstance(open_engine(test_model, cache_dir=tmp_path), PrefixSession)  # auto


@pytest.mark.parametrize("test_model", ["mamba"], indirect=True)
def test_cli_prefix_mode(test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    r = ok(pc("compile", schema_path, "--model", test_model, "--checkpoints", "3", "--json", cache_dir=cache))
    out = r.json()
    assert out["mode"] == "prefix" and [m["status"] for m in out["modules"]] == ["computed"] * 4
    args = ("ask", "-s", schema_path, "--model", test_model, "-m", "b", "-n", "6", "--json", QUESTION)
    warm = ok(pc(*args, cache_dir=cache)).json()
    cold = ok(pc(*args, "--no-cache", cache_dir=cache)).json()
    assert warm["mode"] == "prefix" and warm["answer"] == cold["answer"]
    assert warm["cached_tokens"] > 0 and cold["cached_tokens"] == 0
    refused = pc("ask", "-s", schema_path, "--model", test_model, "--mode", "modular", QUESTION, cache_dir=cache)
    assert refused.code == 4 and len(refused.err.strip().splitlines()) == 1
    assert "prefix mode" in refused.err and "Traceback" not in refused.err


@pytest.mark.parametrize("test_model", ["mamba"], indirect=True)
def test_checkpoint_bytes_caps_the_checkpoints(test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    def states(*extra: str) -> list[int]:
        r = ok(pc("compile", schema_path, "--model", test_model, "--json", *extra, cache_dir=tmp_path / "c"))
        return [m["tokens"] for m in r.json()["modules"]]

    one_state = states("--checkpoint-bytes", "1")
    assert len(one_state) == 1  # no checkpoint fits: only the end state
    state_bytes = (tmp_path / "c" / "prefix").rglob(f"{one_state[0]}.pcm").__next__().stat().st_size
    assert len(states("--checkpoint-bytes", str(2 * state_bytes), "--checkpoints", "3")) == 3  # two fit, plus the end
    assert len(states("--checkpoint-bytes", "1G", "--checkpoints", "3")) == 4
    bad = pc("compile", schema_path, "--model", test_model, "--checkpoint-bytes", "lots", cache_dir=tmp_path / "c")
    assert bad.code == 2 and "is not a size" in bad.err


@pytest.mark.usefixtures("_read_only_works")
@pytest.mark.parametrize("test_model", ["lfm2"], indirect=True)
def test_read_only_cache_prefix_mode(test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    """A warm read-only cache answers from its states silently; an empty one warns once and
    answers cold; either way the answer is the --no-cache answer and nothing is written."""
    from .support import faults

    args = ["ask", "-s", schema_path, "--model", test_model, "-m", "b", "-n", "6", QUESTION]
    cold = ok(pc(*args, "--no-cache", cache_dir=tmp_path / "scratch")).out
    warm_cache, empty_cache = tmp_path / "warm", tmp_path / "empty"
    ok(pc("compile", schema_path, "--model", test_model, cache_dir=warm_cache))
    empty_cache.mkdir()
    for cache in (warm_cache, empty_cache):
        faults.make_read_only(cache)
        before = faults.snapshot(cache)
        proc = faults.run(args, cache=cache, preexec=faults.drop_root_write_bypass)
        assert proc.code == 0 and proc.out == cold, proc.err
        warnings = [line for line in proc.err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == (0 if cache == warm_cache else 1), proc.err
        assert faults.snapshot(cache) == before
        faults.make_writable(cache)

"""Every model family users run, end to end through `pc` (random-weight models at small shapes,
promptcache_cli/benchmarks/random_gguf.py): llama, qwen2 (QKV biases) and phi3 (fused QKV) as plain
attention, gemma3 as sliding-window attention, lfm2 as a hybrid, mamba and mamba2 as recurrent.

For each: `pc inspect` and `pc ls` name the family and its memory; `pc compile` and `pc ask` run in
the mode `--mode auto` picks (modular for plain attention, prefix mode for the others); prefix-mode
answers equal `--no-cache` token for token; modular answers stay below the documented first-token KL
of 0.02 (docs/design.md, "Numerical facts"); every stored state
passes the strict reader (llama/state_blob.py) with the sections its memory writes. The preset
shapes (the model cards') load in llama.cpp at a reduced depth.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import promptcache_cli as pc_api
from promptcache_cli.benchmarks import random_gguf
from promptcache_cli.benchmarks.quality import kl
from promptcache_cli.llama import state_blob
from promptcache_cli.llama.context import Context, ContextSettings
from promptcache_cli.llama.memory import KINDS as MEMORY
from promptcache_cli.llama.model import Model
from promptcache_cli.pml.selection import select_cli
from promptcache_cli.store import cache_file

from .conftest import license_excerpt, write_schema
from .support.model_factory import ARCHS, KINDS
from .support.model_factory import test_model as _test_model, test_models_dir as _test_models_dir  # noqa: F401
from .support.pc_process import ok, pc
from .test_engine import DEFAULT as DEFAULT_ENCODING, _reference_logits

QUESTION = "Which of these texts mentions a warranty?"
KL_BOUND = 0.02  # docs/design.md: stitched modules' first-token KL against an uncached prefill
every_family = pytest.mark.parametrize("test_model", ARCHS, indirect=True)


def _mode(arch: str) -> str:
    return "modular" if KINDS[arch] == "attention" else "prefix"


@pytest.fixture(scope="module")
def schema_path(tmp_path_factory) -> Path:
    """About 1,100 tokens in three modules: past the tiny gemma3's 64-token window many times."""
    docs = [license_excerpt(n, 1500) for n in ("BSD.txt", "Apache-2.0.txt", "MPL-2.0.txt")]
    return write_schema(tmp_path_factory.mktemp("families"), f"""
        <schema name="families">
          <system>You answer questions about software licenses.</system>
          <user>
            <module name="a">{docs[0]}</module>
            <module name="b">{docs[1]}</module>
            <module name="c">{docs[2]}</module>
          </user>
        </schema>""")


def _ask(model: Path, schema: Path, cache: Path, modules: list[str], *extra: str) -> dict:
    args = ["ask", QUESTION, "-s", schema, "--model", model, "-n", "12", "--json", *extra]
    args += [a for m in modules for a in ("-m", m)]
    return ok(pc(*args, cache_dir=cache)).json()


def _stored_states(cache: Path) -> list[tuple[str, dict, list[np.ndarray], list[tuple[int, ...]], list[int]]]:
    """(kind, header, blobs, tokens, offsets) of every cache file under ``cache``."""
    out = []
    for kind, pattern in (("module", "modules/*/*.pcm"), ("prefix", "prefix/??/*/*.pcm")):
        for path in sorted(cache.glob(pattern)):
            f = cache_file.read(path)
            try:
                out.append((kind, dict(f.header), [np.array(f.blob(i)) for i in range(len(f.segments))],
                            [tuple(s.tokens) for s in f.segments], [s.offset for s in f.segments]))
            finally:
                f.close()
    return out


def _check_with_strict_reader(model: Model, cache: Path) -> int:
    """Every stored state parses with its memory's sections and holds exactly its tokens' cells."""
    n = 0
    for kind, header, blobs, tokens, offsets in _stored_states(cache):
        for blob, toks, offset in zip(blobs, tokens, offsets, strict=True):
            if kind == "module":  # a module's cells, at its positions in the schema's layout
                info = state_blob.parse(blob)
                assert info.n_layer == model.n_layer
                assert np.sort(info.positions).tolist() == list(range(offset, offset + len(toks)))
            else:
                partial = header["partial"]
                sections = model.memory.state_sections(partial=partial, swa=model.n_swa > 0)
                info = state_blob.parse_state(blob, sections)
                state_blob.check_prefix_state(info, sections, n_tokens=len(toks), n_layer=model.n_layer,
                                              window=model.n_swa, partial=partial)
            n += 1
    return n


@every_family
def test_family_through_pc(test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    arch = test_model.stem.split("-")[0]
    mode, memory = _mode(arch), KINDS[arch]
    cache = tmp_path / "cache"

    inspected = ok(pc("inspect", schema_path, "--model", test_model, "--json")).json()
    assert (inspected["family"], inspected["memory"], inspected["mode"]) == (arch, memory, mode)
    table = ok(pc("inspect", schema_path, "--model", test_model)).out
    assert f"{arch}, {MEMORY[memory].name} memory, {mode} mode" in " ".join(table.split())

    compiled = ok(pc("compile", schema_path, "--model", test_model, "--json", cache_dir=cache)).json()
    assert compiled["mode"] == mode

    for modules in ([], ["c", "a"], ["b"]):
        warm = _ask(test_model, schema_path, cache, modules)
        cold = _ask(test_model, schema_path, cache, modules, "--no-cache")
        assert warm["mode"] == mode and warm["warnings"] == []
        if mode == "prefix":  # resumed from stored states: the uncached answer exactly
            assert (warm["answer"], warm["generated_tokens"]) == (cold["answer"], cold["generated_tokens"])
            assert warm["cached_tokens"] > (1000 if not modules else 0) or modules == ["b"]
        else:
            assert warm["cached_tokens"] > 300 and warm["generated_tokens"] == cold["generated_tokens"]

    listing = ok(pc("ls", "--json", cache_dir=cache)).json()
    variants = [v for s in listing["schemas"] for v in s["variants"]]
    assert variants and all((v["family"], v["memory"], v["mode"]) == (arch, memory, mode) for v in variants)
    rows = ok(pc("ls", cache_dir=cache)).out
    assert f"({arch}, {memory})" in rows

    model = Model(str(test_model))
    try:
        assert _check_with_strict_reader(model, cache) >= (3 if mode == "modular" else 2)
    finally:
        model.close()


@every_family
def test_cached_first_token_against_no_cache(test_model: Path, schema_path: Path, tmp_path: Path) -> None:
    """Token for token in prefix mode. In modular mode below the documented KL bound: against
    `--no-cache` for the default prompt (each module's cells were computed after the text that
    precedes them there; stitched cells round differently), and for subsets against the reference
    the bound is documented for, the same modules computed in process after the same scaffold
    (`--no-cache` puts other text before them: the encoding's approximation, a quality matter the
    benchmark measures)."""
    arch = test_model.stem.split("-")[0]
    sess = pc_api.open_session(test_model, cache_dir=tmp_path / "cache")
    try:
        assert sess.mode == _mode(arch) and sess.model.family == arch
        sess.compile(pc_api.load_schema(schema_path))
        for modules in ((), ("c", "a"), ("b",)):
            req = pc_api.Request(schema_path, QUESTION, modules=modules, max_tokens=12, keep_logits=True)
            warm = sess.ask(req)
            cold = sess.ask(replace(req, no_cache=True))
            assert warm.cached_tokens > 0 or modules == ("b",) and sess.mode == "prefix"
            if sess.mode == "prefix":
                assert warm.tokens == cold.tokens
                assert int(np.argmax(warm.first_logits)) == int(np.argmax(cold.first_logits))
            elif not modules:  # the default prompt: each module was computed after what precedes it here
                assert kl(cold.first_logits, warm.first_logits) < KL_BOUND
            else:  # a subset: against the same modules computed in process after the same contexts
                sch = pc_api.load_schema(schema_path)
                ref = _reference_logits(sess.engine, sch, select_cli(sch, modules=list(modules), params=[]),
                                        QUESTION, DEFAULT_ENCODING)
                assert kl(ref, warm.first_logits) < KL_BOUND, modules
                assert int(np.argmax(ref)) == int(np.argmax(warm.first_logits))
    finally:
        sess.close()


def test_strict_reader_refuses_another_memorys_state(test_models_dir: Path) -> None:
    """A state read as another memory's layout, or checked against another prompt length or
    depth, is refused (BlobError), never misread."""
    text = license_excerpt("GPL-2.txt", 4000)
    states = {}
    for arch in ("llama", "gemma3", "lfm2", "mamba2"):
        model = Model(str(random_gguf.write_model(arch, test_models_dir / f"strict-{arch}.gguf").path))
        tokens = model.tokenize(text, special=False)[:200]
        with Context(model, ContextSettings(n_ctx=512, n_threads=2)) as ctx:
            ctx.decode(tokens, start=0)
            full, partial = ctx.save_state(0), ctx.save_state(0, partial=True)
        states[arch] = (model, full, partial)
    for model, full, partial in states.values():
        swa = model.n_swa > 0
        for blob, is_partial in ((full, False), (partial, True)):
            sections = model.memory.state_sections(partial=is_partial, swa=swa)
            info = state_blob.parse_state(blob, sections)
            state_blob.check_prefix_state(info, sections, n_tokens=200, n_layer=model.n_layer, window=model.n_swa,
                                          partial=is_partial)
            with pytest.raises(state_blob.BlobError):
                state_blob.check_prefix_state(info, sections, n_tokens=199, n_layer=model.n_layer,
                                              window=model.n_swa, partial=is_partial)
            for depth in (model.n_layer - 1, model.n_layer + 1) if not is_partial else ():
                with pytest.raises(state_blob.BlobError):
                    state_blob.check_prefix_state(info, sections, n_tokens=200, n_layer=depth, window=model.n_swa)
            for other in (("kv",), ("kv", "swa"), ("rs",), ("kv", "rs"), ("swa", "rs")):
                if other == sections:
                    continue
                try:
                    wrong = state_blob.parse_state(blob, other)
                except state_blob.BlobError:
                    continue
                with pytest.raises(state_blob.BlobError):  # parses by chance: its content is still refused
                    state_blob.check_prefix_state(wrong, other, n_tokens=200, n_layer=model.n_layer,
                                                  window=model.n_swa, partial=is_partial)
        for n in range(0, len(full), max(1, len(full) // 97)):  # every truncation point sampled
            with pytest.raises(state_blob.BlobError):
                state_blob.parse_state(full[:n], model.memory.state_sections(swa=model.n_swa > 0))
    for _, (model, _, _) in states.items():
        model.close()


@every_family
def test_state_size_formula_matches_llama_cpp(test_model: Path) -> None:
    """random_gguf.state_bytes (what docs/models.md tabulates for the presets) against the blobs
    llama.cpp writes, before and past the sliding window, within the headers it leaves out."""
    arch = test_model.stem.split("-")[0]
    shape = random_gguf.shape_for(arch)
    model = Model(str(test_model))
    tokens = model.tokenize(license_excerpt("GPL-2.txt", 4000), special=False)
    try:
        with Context(model, ContextSettings(n_ctx=512, n_threads=2)) as ctx:
            for n in (40, 300):
                ctx.clear()
                ctx.decode(tokens[:n], start=0)
                got, want = len(ctx.save_state(0)), random_gguf.state_bytes(shape, n)
                assert want <= got <= want + 64 + 40 * shape.n_layer, (n, got, want)
    finally:
        model.close()


def test_what_each_memory_writes() -> None:
    """The sections of llama.cpp's state_write per memory class (llama-kv-cache-iswa.cpp,
    llama-memory-hybrid.cpp, llama-memory-hybrid-iswa.cpp)."""
    assert MEMORY["attention"].state_sections() == ("kv",)
    assert MEMORY["swa"].state_sections() == ("kv", "swa")
    assert MEMORY["swa"].state_sections(partial=True) == ("swa",)
    assert MEMORY["recurrent"].state_sections(partial=True) == ("rs",)
    assert MEMORY["hybrid"].state_sections() == ("kv", "rs")
    assert MEMORY["hybrid"].state_sections(partial=True) == ("rs",)
    assert MEMORY["hybrid"].state_sections(swa=True) == ("kv", "swa", "rs")
    assert MEMORY["hybrid"].state_sections(partial=True, swa=True) == ("swa", "rs")


PRESET_DEPTH = {"gemma3": 6, "lfm2": 3}  # one global layer of six; conv, conv, attention


@pytest.mark.parametrize("preset", list(random_gguf.PRESETS))
def test_model_card_shapes_load(preset: str, tmp_path: Path) -> None:
    """Each preset's real geometry (width, heads, KV heads, head size, FFN, RoPE settings, window,
    SSM sizes) loads in llama.cpp and decodes to spread logits, at a reduced depth and with the
    tokenizer's own vocabulary (the full files are the benchmark's, written on demand)."""
    shape = random_gguf.PRESETS[preset]
    small = replace(random_gguf.shape_for(preset, layers=PRESET_DEPTH.get(shape.arch, 1)), n_vocab=0)
    built = random_gguf.write_shape(small, tmp_path / "m.gguf")
    model = Model(str(built.path))
    try:
        assert (model.family, model.kind) == (shape.arch, random_gguf.KINDS[shape.arch])
        meta = {k: model.meta(f"{shape.arch}.{k}") for k in ("embedding_length", "attention.head_count",
                                                             "attention.head_count_kv", "feed_forward_length")}
        assert meta["embedding_length"] == str(shape.n_embd)
        if shape.arch != "mamba2":
            assert meta["attention.head_count"] == str(shape.n_head)
            assert meta["feed_forward_length"] == str(shape.n_ff)
        assert model.n_swa == (shape.sliding_window if shape.arch == "gemma3" else 0)
        tokens = model.tokenize(license_excerpt("GPL-2.txt", 2000), special=False)[:48]
        with Context(model, ContextSettings(n_ctx=256, n_threads=2)) as ctx:
            ctx.decode(tokens, start=0, logits=True)
            logits = ctx.logits()
        assert np.isfinite(logits).all() and 2.0 < logits.std() < 8.0
    finally:
        model.close()


def test_padded_vocabulary_is_never_produced(tmp_path: Path, model_path: Path) -> None:
    """A preset's vocabulary (Qwen 2.5: 151,936) padded after SmolLM2's 49,152 tokens: the same
    tokenization, and greedy decoding never picks a padding token (their logits are 0)."""
    shape = random_gguf.shape_for("qwen2.5-0.5b", layers=1)
    built = random_gguf.write_shape(shape, tmp_path / "q.gguf")
    model, default = Model(str(built.path)), Model(str(model_path))
    try:
        assert model.n_vocab == 151936 and default.n_vocab == 49152
        text = license_excerpt("Apache-2.0.txt", 1500)
        tokens = model.tokenize(text, special=False)
        assert tokens == default.tokenize(text, special=False)
        with Context(model, ContextSettings(n_ctx=512, n_threads=2)) as ctx:
            ctx.decode(tokens[:200], start=0, logits=True)
            logits = ctx.logits()
            assert np.all(logits[49152:] == 0) and logits[:49152].max() > 5
            pos, picked = 200, []
            for _ in range(8):
                picked.append(int(np.argmax(ctx.logits())))
                ctx.decode([picked[-1]], start=pos, logits=True)
                pos += 1
        assert max(picked) < 49152
    finally:
        model.close()
        default.close()

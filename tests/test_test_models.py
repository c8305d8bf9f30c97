"""The random-weight test models (scripts/make_test_model.py): llama.cpp loads each as the kind of
model it stands for, with the default model's tokenizer, decodes deterministically to finite,
spread logits, and its memory behaves like that kind's (a recurrent state cannot be cut back)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from promptcache_cli.errors import BackendError
from promptcache_cli.llama.context import Context, ContextSettings
from promptcache_cli.llama.model import Model

from .conftest import license_excerpt
from .support.model_factory import ARCHS, KINDS, SCRIPTS, make_test_model, random_gguf
from .support.model_factory import test_model as _test_model, test_models_dir as _test_models_dir  # noqa: F401  (fixtures)

SCRIPT = SCRIPTS / "make_test_model.py"
SETTINGS = ContextSettings(n_ctx=4096, n_batch=512, n_threads=2)
every_arch = pytest.mark.parametrize("test_model", ARCHS, indirect=True)


@pytest.fixture(scope="module")
def default_model(model_path: Path) -> Model:
    return Model(str(model_path))


def _tokens(model: Model, n: int) -> list[int]:
    tokens = model.tokenize(license_excerpt("GPL-2.txt", 20000), special=False)
    assert len(tokens) >= n, len(tokens)
    return tokens[:n]


def _prefill_logits(ctx: Context, tokens: list[int]) -> np.ndarray:
    ctx.clear()
    ctx.decode(tokens, start=0, logits=True)
    return ctx.logits()


@every_arch
def test_llama_cpp_reports_the_kind_of_model(test_model: Path, default_model: Model):
    arch = test_model.stem.split("-")[0]
    model = Model(str(test_model))
    assert model.kind == KINDS[arch]
    assert model.meta("general.architecture") == arch
    assert model.n_layer == random_gguf.shape_for(arch).n_layer
    assert model.n_vocab == default_model.n_vocab


@every_arch
def test_tokenizer_and_chat_template_are_the_default_models(test_model: Path, default_model: Model):
    model = Model(str(test_model))
    assert model.chat_template() == default_model.chat_template()
    assert (model.bos, model.eos, model.add_bos) == (default_model.bos, default_model.eos, default_model.add_bos)
    text = "<|im_start|>user\nCan I charge a fee for copies? Ünïcödé → ok<|im_end|>"
    for special in (True, False):
        assert model.tokenize(text, special=special) == default_model.tokenize(text, special=special)


@every_arch
def test_logits_are_finite_spread_and_greedy_text_varies(test_model: Path):
    model = Model(str(test_model))
    tokens = _tokens(model, 300)
    with Context(model, SETTINGS) as ctx:
        logits = _prefill_logits(ctx, tokens)
        assert np.isfinite(logits).all()
        assert logits.std() > 1.0  # designed for about 4
        greedy, pos = [], len(tokens)
        for _ in range(8):
            greedy.append(int(np.argmax(ctx.logits())))
            ctx.decode([greedy[-1]], start=pos, logits=True)
            pos += 1
        assert np.isfinite(ctx.logits()).all()
    assert len(set(greedy)) > 2, greedy


@every_arch
def test_decoding_the_same_tokens_twice_gives_identical_logits(test_model: Path):
    model = Model(str(test_model))
    tokens = _tokens(model, 200)
    with Context(model, SETTINGS) as ctx:
        first = _prefill_logits(ctx, tokens)
        again = _prefill_logits(ctx, tokens)  # same context, after clear()
    with Context(model, SETTINGS) as ctx:
        fresh = _prefill_logits(ctx, tokens)  # a new context
        other = _prefill_logits(ctx, tokens[:-1] + [tokens[0]])
    assert np.array_equal(first, again)
    assert np.array_equal(first, fresh)
    assert not np.array_equal(first, other)  # the logits depend on the input


@every_arch
def test_a_4000_token_prefill_works(test_model: Path):
    model = Model(str(test_model))
    tokens = _tokens(model, 4000)
    with Context(model, SETTINGS) as ctx:
        logits = _prefill_logits(ctx, tokens)
        assert ctx.pos_max(0) == 3999
    assert np.isfinite(logits).all() and logits.std() > 1.0


@every_arch
def test_only_attention_memory_can_be_cut_back(test_model: Path):
    """seq_rm of a tail fails on recurrent and hybrid memory (llama.cpp keeps one state per
    sequence); cutting nothing, or everything, works on every kind. A sliding-window cache lets
    llama.cpp cut its cells, but those a cut back would need may have left the window: pc never
    cuts it (its memory says so)."""
    model = Model(str(test_model))
    tokens = _tokens(model, 64)
    assert model.memory.can_cut == (model.kind == "attention")
    with Context(model, SETTINGS) as ctx:
        ctx.decode(tokens, start=0)
        if model.kind in ("attention", "swa"):
            ctx.seq_rm(0, 32, -1)
            assert ctx.pos_max(0) == 31
        else:
            with pytest.raises(BackendError):
                ctx.seq_rm(0, 32, -1)
            assert ctx.pos_max(0) == 63
            ctx.seq_rm(0, 64, -1)  # nothing at or after 64
            assert ctx.pos_max(0) == 63
        ctx.seq_rm(0, -1, -1)
        assert ctx.pos_max(0) == -1


def test_building_is_deterministic_per_seed(tmp_path: Path):
    digest = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        built = random_gguf.write_model("lfm2", tmp_path / f"{name}.gguf", seed=seed)
        digest[name] = hashlib.sha256(built.path.read_bytes()).hexdigest()
    assert digest["a"] == digest["b"]
    assert digest["a"] != digest["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]  # no temporary files left


def test_shape_options_reach_the_file(tmp_path: Path):
    path = make_test_model("lfm2", tmp_path, layers=6, width=96)
    assert path.name == "lfm2-layers6-width96.gguf"
    model = Model(str(path))
    assert (model.kind, model.n_layer) == ("hybrid", 6)
    assert model.meta("lfm2.embedding_length") == "96"
    assert make_test_model("lfm2", tmp_path, layers=6, width=96) == path  # reused, not rewritten


def test_realistic_llama_has_the_default_models_shape(default_model: Model):
    shape = random_gguf.shape_for("llama", realistic=True)
    real = {key: default_model.meta(f"llama.{key}") for key in (
        "block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv")}
    assert real == {
        "block_count": str(shape.n_layer),
        "embedding_length": str(shape.n_embd),
        "feed_forward_length": str(shape.n_ff),
        "attention.head_count": str(shape.n_head),
        "attention.head_count_kv": str(shape.n_head_kv),
    }
    assert shape.weight_type == "q8_0"


def _script(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


def test_script_writes_a_model_and_says_so(tmp_path: Path):
    out = tmp_path / "m.gguf"
    run = _script("mamba", out, "--layers", "3", "--seed", "7")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.count("\n") == 1 and run.stdout.startswith(f"{out}: mamba (recurrent), 3 layers, width 64")
    assert Model(str(out)).kind == "recurrent"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 2, "the following arguments are required: ARCH, OUT.gguf"),
        (("gpt2", "{out}"), 2, "unknown architecture 'gpt2'"),
        (("llama", "{out}", "--width", "70"), 2, "--width must be a multiple of 16"),
        (("llama", "{out}", "--layers", "0"), 2, "argument --layers: must be positive: 0"),
        (("llama", "{out}", "--seed", "x"), 2, "argument --seed: not an integer: 'x'"),
        (("lfm2", "{out}", "--layers", "2"), 2, "--layers must be between 3 and 256 for lfm2"),
        (("llama", "{out}", "--bogus"), 2, "unrecognized arguments: --bogus"),
        (("llama", "{missing}/m.gguf"), 3, "cannot write"),
        (("llama", "{out}", "--tokenizer-from", "{missing}"), 3, "tokenizer source not found"),
        (("llama", "{out}", "--tokenizer-from", "{text}"), 3, "cannot read the tokenizer source"),
    ],
)
def test_script_errors_are_one_line_with_an_exit_code(tmp_path: Path, args, code, message):
    text = tmp_path / "not-a-model.txt"
    text.write_text("hello\n")
    paths = {"out": tmp_path / "m.gguf", "missing": tmp_path / "missing", "text": text}
    run = _script(*(a.format(**paths) for a in args))
    assert run.returncode == code, run.stderr
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("make_test_model.py: error: "), run.stderr
    assert message in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-model.txt"]  # nothing written


def test_the_fixture_unparametrized_is_the_tiny_llama(test_model: Path):
    assert test_model.name == "llama.gguf"
    assert Model(str(test_model)).kind == "attention"

"""Random-weight GGUF models for tests and benchmarks (used by ``scripts/make_test_model.py``).

One architecture per family people run on a CPU, each reaching llama.cpp with its own
architecture name, tensor layout and kind of memory:

- ``llama`` (Llama 3.x), ``qwen2`` (Qwen 2.5: biases on Q, K and V), ``phi3`` (Phi-3.5: fused
  QKV and gate-up matrices, LongRoPE factors): plain attention (a KV cache);
- ``gemma3`` (Gemma 3): interleaved sliding-window attention (five local layers to one global);
- ``lfm2`` (LFM2): hybrid, short-convolution layers with a recurrent conv state plus attention layers;
- ``mamba`` (Mamba-1) and ``mamba2`` (Mamba-2): pure recurrent.

Every family has a tiny default shape (width 64, a few MB beside the vocabulary) for the test
suite; ``PRESETS`` hold the real shapes of the public model cards (layers, width, heads, KV
heads, head size, feed-forward width, vocabulary, RoPE base and scaling, sliding-window pattern,
recurrent layers) for the benchmarks, written once on demand. ``realistic`` keeps the older
100-200M-parameter compute shapes of llama, mamba and lfm2.

The tokenizer (every ``tokenizer.*`` key, the chat template among them) is copied from a real
GGUF, by default the project's SmolLM2-135M (49,152 tokens), so tokenization and chat templates
behave exactly as with the real model. A preset's larger vocabulary is reached by padding it with
unused tokens whose embedding rows are zero: the embedding and output matrices have the real
size (memory, the last token's output projection), the tokenizer never produces those tokens and
their logit is 0, far below the top of the real tokens' spread (about 4 standard deviations
above 0), so greedy decoding never picks one.

Weights are seeded random draws scaled by fan-in (output projections also by ``1/sqrt(2 *
n_layer)``), so activations stay near unit size and logits are finite and spread; the text they
produce is noise. q8_0 matrices are drawn as uniform 8-bit integers with one scale (no float
draws, no quantization: a 3B model is written in about a minute). Tensor names come from the
``gguf`` package's per-architecture tables (``gguf.MODEL_TENSORS``, ``gguf.TENSOR_NAMES``);
shapes and hyperparameter keys follow the vendored llama.cpp of llama-cpp-python 0.3.36
(``src/models/<arch>.cpp``) and its converters (``conversion/*.py``).
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np

KINDS = {"llama": "attention", "qwen2": "attention", "phi3": "attention", "gemma3": "swa", "lfm2": "hybrid",
         "mamba": "recurrent", "mamba2": "recurrent"}
ARCHS = tuple(KINDS)
REALISTIC_ARCHS = ("llama", "mamba", "lfm2")

CONTEXT_LENGTH = 8192  # the default model's training context
RMS_EPS = 1e-5
MAX_LAYERS = 256
MAX_WIDTH = 8192
WIDTH_STEP = 16  # widths are multiples of the smallest head size
SSM_STATE = 16  # Mamba-1 defaults: d_state, d_conv
SSM_CONV = 4
SHORTCONV_L_CACHE = 3  # LFM2's conv_L_cache
LOGIT_STD = 4.0  # the tied output's logits have about this standard deviation
PAD_TOKEN = "<|pc_unused_{}|>"
TOKEN_TYPE_UNUSED = 5  # llama.cpp's LLAMA_TOKEN_TYPE_UNUSED
_INT8_STD = math.sqrt((255**2 - 1) / 12)  # uniform integers in [-127, 127]


class ModelSpecError(ValueError):
    """The requested architecture or shape cannot be built."""


class TokenizerSourceError(OSError):
    """The GGUF to copy the tokenizer from is missing or has no tokenizer."""


@dataclass(frozen=True)
class Shape:
    """Everything a model's file depends on besides its seed and tokenizer."""

    arch: str
    n_layer: int
    n_embd: int
    weight_type: str  # 'f16' or 'q8_0' for matrices; vectors, norms and SSM parameters stay f32
    n_head: int = 0
    n_head_kv: int = 0
    head_dim: int = 0
    n_ff: int = 0
    n_vocab: int = 0  # 0: the tokenizer's own; larger: padded with unused tokens
    context_length: int = CONTEXT_LENGTH
    rms_eps: float = RMS_EPS
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()  # ("llama3", factor, low, high, original context) | ("longrope", original context)
    tied: bool = True  # the output matrix is the token embedding
    qkv_bias: bool = False
    sliding_window: int = 0  # gemma3: the local layers' window
    swa_pattern: int = 0  # gemma3: every swa_pattern-th layer is global
    rope_theta_swa: float = 0.0
    attention_layers: tuple[int, ...] = ()  # lfm2: which layers are attention (the others: short convolutions)
    ssm_inner: int = 0  # mamba2: d_inner
    ssm_state: int = 0  # mamba2: d_state
    ssm_head_dim: int = 0  # mamba2: channels per SSM head
    ssm_groups: int = 1
    ssm_conv: int = SSM_CONV
    name: str = ""  # the preset, if any

    @property
    def kind(self) -> str:
        return KINDS[self.arch]

    @property
    def d_inner(self) -> int:
        """Mamba-1: 2 x width (llama.cpp supports no other expansion); Mamba-2: as given."""
        return self.ssm_inner or 2 * self.n_embd

    @property
    def dt_rank(self) -> int:
        """Mamba-1: the time step's rank; Mamba-2: the number of SSM heads."""
        if self.arch == "mamba2":
            return self.d_inner // self.ssm_head_dim
        return -(-self.n_embd // 16)

    def is_attention_layer(self, il: int) -> bool:
        if self.arch == "lfm2":
            return il in self.attention_layers
        return self.arch not in ("mamba", "mamba2")

    def is_swa_layer(self, il: int) -> bool:
        return self.sliding_window > 0 and (il + 1) % self.swa_pattern != 0

    def describe(self) -> str:
        if self.arch in ("mamba", "mamba2"):
            extra = f"d_inner {self.d_inner}, d_state {self.ssm_state or SSM_STATE}"
        else:
            extra = f"{self.n_head} heads ({self.n_head_kv} KV) of {self.head_dim}, FFN {self.n_ff}"
            if self.sliding_window:
                extra += f", window {self.sliding_window} on {self.swa_pattern - 1} of {self.swa_pattern} layers"
            if self.arch == "lfm2":
                extra += f", attention at layers {','.join(map(str, self.attention_layers))}"
        return f"{self.n_layer} layers, width {self.n_embd}, {extra}"


def _attention_geometry(n_embd: int) -> dict:
    """Head size 64 as in most real models (32 or 16 at small widths: a tiny model has 2 heads),
    grouped-query attention with a third (or half) of the query heads as KV heads (as SmolLM2), and a
    SwiGLU width of 8/3 of the model width rounded up to 64 (1536 for width 576)."""
    head_dim = 64 if n_embd >= 128 and n_embd % 64 == 0 else (32 if n_embd % 32 == 0 else WIDTH_STEP)
    n_head = n_embd // head_dim
    n_head_kv = next((n_head // g for g in (3, 2) if n_head % g == 0), n_head)
    return dict(head_dim=head_dim, n_head=n_head, n_head_kv=n_head_kv, n_ff=-(-(8 * n_embd) // (3 * 64)) * 64)


# The families' own settings at derived (tiny or realistic) shapes; presets spell everything out.
_FAMILY = {
    "llama": dict(rope_theta=100000.0),
    "qwen2": dict(rope_theta=1000000.0, rms_eps=1e-6, qkv_bias=True),
    "phi3": dict(tied=False, rope_scaling=("longrope", 4096), context_length=131072),
    "gemma3": dict(rope_theta=1000000.0, rope_theta_swa=10000.0, rms_eps=1e-6, sliding_window=64, swa_pattern=3),
    "lfm2": dict(rope_theta=1000000.0),
    "mamba": dict(),
    "mamba2": dict(ssm_state=16, ssm_head_dim=16),
}
REALISTIC = {
    "llama": dict(n_layer=30, n_embd=576),  # SmolLM2-135M
    "mamba": dict(n_layer=24, n_embd=768),  # state-spaces/mamba-130m
    "lfm2": dict(n_layer=16, n_embd=768),  # LFM2-350M's depth at width 768: about 150M parameters
}
TINY = {"llama": dict(n_layer=2, n_embd=64), "qwen2": dict(n_layer=2, n_embd=64), "phi3": dict(n_layer=2, n_embd=64),
        "gemma3": dict(n_layer=3, n_embd=64), "mamba": dict(n_layer=2, n_embd=64),
        "mamba2": dict(n_layer=2, n_embd=64), "lfm2": dict(n_layer=3, n_embd=64)}
_MIN_LAYERS = {"lfm2": 3, "gemma3": 3}  # lfm2: layer 2 is the first attention layer; gemma3: the first global one

_LLAMA3_ROPE = ("llama3", 32.0, 1.0, 4.0, 8192)
PRESETS: dict[str, Shape] = {s.name: s for s in (
    # meta-llama/Llama-3.2-1B(-Instruct), Llama-3.2-3B, Llama-3.1-8B: config.json
    Shape("llama", 16, 2048, "q8_0", n_head=32, n_head_kv=8, head_dim=64, n_ff=8192, n_vocab=128256,
          context_length=131072, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, name="llama-3.2-1b"),
    Shape("llama", 28, 3072, "q8_0", n_head=24, n_head_kv=8, head_dim=128, n_ff=8192, n_vocab=128256,
          context_length=131072, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, name="llama-3.2-3b"),
    Shape("llama", 32, 4096, "q8_0", n_head=32, n_head_kv=8, head_dim=128, n_ff=14336, n_vocab=128256,
          context_length=131072, rope_theta=500000.0, rope_scaling=("llama3", 8.0, 1.0, 4.0, 8192), tied=False,
          name="llama-3.1-8b"),
    # Qwen/Qwen2.5-0.5B-Instruct and -1.5B-Instruct
    Shape("qwen2", 24, 896, "q8_0", n_head=14, n_head_kv=2, head_dim=64, n_ff=4864, n_vocab=151936,
          context_length=32768, rms_eps=1e-6, rope_theta=1000000.0, qkv_bias=True, name="qwen2.5-0.5b"),
    Shape("qwen2", 28, 1536, "q8_0", n_head=12, n_head_kv=2, head_dim=128, n_ff=8960, n_vocab=151936,
          context_length=32768, rms_eps=1e-6, rope_theta=1000000.0, qkv_bias=True, name="qwen2.5-1.5b"),
    # microsoft/Phi-3.5-mini-instruct (LongRoPE 4k -> 128k; its factor values are not copied)
    Shape("phi3", 32, 3072, "q8_0", n_head=32, n_head_kv=32, head_dim=96, n_ff=8192, n_vocab=32064,
          context_length=131072, rope_scaling=("longrope", 4096), tied=False, name="phi-3.5-mini"),
    # google/gemma-3-1b-it: 5 sliding-window layers (512) to 1 global
    Shape("gemma3", 26, 1152, "q8_0", n_head=4, n_head_kv=1, head_dim=256, n_ff=6912, n_vocab=262144,
          context_length=32768, rms_eps=1e-6, rope_theta=1000000.0, rope_theta_swa=10000.0,
          sliding_window=512, swa_pattern=6, name="gemma-3-1b"),
    # LiquidAI/LFM2-1.2B: 10 short-convolution layers, 6 attention layers
    Shape("lfm2", 16, 2048, "q8_0", n_head=32, n_head_kv=8, head_dim=64, n_ff=8192, n_vocab=65536,
          context_length=128000, rope_theta=1000000.0, attention_layers=(2, 5, 8, 10, 12, 14), name="lfm2-1.2b"),
    # state-spaces/mamba2-1.3b
    Shape("mamba2", 48, 2048, "q8_0", n_vocab=50288, context_length=1 << 20, ssm_inner=4096, ssm_state=128,
          ssm_head_dim=64, name="mamba2-1.3b"),
)}


def shape_for(arch: str, *, layers: int | None = None, width: int | None = None, realistic: bool = False) -> Shape:
    """The shape to build: a preset (``arch`` is its name; only ``layers`` may change), else the
    tiny or realistic default of the family ``arch``, with ``layers`` and ``width`` overriding it."""
    if arch in PRESETS:
        if width is not None or realistic:
            raise ModelSpecError(f"{arch} is a model card's shape: only --layers can change it")
        return _checked(PRESETS[arch] if layers is None else replace(PRESETS[arch], n_layer=layers))
    if arch not in KINDS:
        raise ModelSpecError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)} "
                             f"or a preset ({', '.join(PRESETS)})")
    if realistic and arch not in REALISTIC_ARCHS:
        raise ModelSpecError(f"no realistic shape for {arch}: use a preset ({', '.join(PRESETS)})")
    base = dict((REALISTIC if realistic else TINY)[arch])
    if layers is not None:
        base["n_layer"] = layers
    if width is not None:
        base["n_embd"] = width
    n_embd = base["n_embd"]
    if not (WIDTH_STEP <= n_embd <= MAX_WIDTH and n_embd % WIDTH_STEP == 0):
        raise ModelSpecError(f"--width must be a multiple of {WIDTH_STEP} from {WIDTH_STEP} to {MAX_WIDTH}, "
                             f"got {n_embd}")
    options = dict(_FAMILY[arch])
    if arch in ("mamba", "mamba2"):
        if arch == "mamba2":
            options.update(ssm_inner=2 * n_embd)
    else:
        options.update(_attention_geometry(n_embd))
        if arch == "phi3":
            options.update(n_head_kv=options["n_head"])  # Phi-3: no grouped-query attention
    shape = Shape(arch=arch, weight_type="q8_0" if realistic else "f16", **base, **options)
    if arch == "lfm2":
        shape = replace(shape, attention_layers=tuple(il for il in range(shape.n_layer) if il % 3 == 2))
    return _checked(shape)


def _checked(shape: Shape) -> Shape:
    """``shape`` if llama.cpp can load it (a hybrid's attention layers cut to its depth)."""
    lo = _MIN_LAYERS.get(shape.arch, 1)
    if not lo <= shape.n_layer <= MAX_LAYERS:
        why = {"lfm2": " (layer 2 is its first attention layer)", "gemma3": " (layer 2 is its first global layer)"}
        raise ModelSpecError(f"--layers must be between {lo} and {MAX_LAYERS} for {shape.arch}, got {shape.n_layer}"
                             + (why.get(shape.arch, "") if shape.n_layer < lo else ""))
    if shape.attention_layers and max(shape.attention_layers) >= shape.n_layer:
        kept = tuple(il for il in shape.attention_layers if il < shape.n_layer)
        if not kept:
            raise ModelSpecError(f"--layers {shape.n_layer} leaves {shape.arch} without an attention layer")
        shape = replace(shape, attention_layers=kept)
    return shape


def state_bytes(shape: Shape, n_tokens: int, *, kv_bytes: float = 2.0) -> int:
    """The size of one sequence's llama.cpp state after ``n_tokens`` tokens, from the shape (the
    formulas of llama-kv-cache.cpp and llama-memory-recurrent.cpp; section and layer headers left
    out): K and V per attention layer and cell (a window layer keeps its last ``sliding_window``
    cells), plus a fixed-size recurrent state per recurrent layer (f32 conv and SSM rows)."""
    total = 0.0
    per_cell = 2 * shape.n_head_kv * shape.head_dim * kv_bytes
    full = [il for il in range(shape.n_layer) if shape.is_attention_layer(il) and not shape.is_swa_layer(il)]
    window = [il for il in range(shape.n_layer) if shape.is_attention_layer(il) and shape.is_swa_layer(il)]
    total += len(full) * per_cell * n_tokens + 12 * n_tokens * (len(full) > 0)
    if window:
        kept = min(n_tokens, shape.sliding_window)
        total += len(window) * per_cell * kept + 12 * kept
    recurrent = shape.n_layer - len(full) - len(window)
    if recurrent:
        if shape.arch == "lfm2":
            row = shape.n_embd * (SHORTCONV_L_CACHE - 1)
        elif shape.arch == "mamba2":
            d_state = shape.ssm_state
            row = (shape.ssm_conv - 1) * (shape.d_inner + 2 * shape.ssm_groups * d_state) + d_state * shape.d_inner
        else:
            row = (shape.ssm_conv - 1) * shape.d_inner + SSM_STATE * shape.d_inner
        total += recurrent * 4 * row
    return int(total)


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    shape: Shape
    kind: str  # what llama.cpp should report: 'attention', 'swa', 'recurrent' or 'hybrid'
    n_params: int
    n_bytes: int


def write_model(
    arch: str,
    out: str | os.PathLike[str],
    *,
    layers: int | None = None,
    width: int | None = None,
    realistic: bool = False,
    seed: int = 0,
    tokenizer_from: str | os.PathLike[str] | None = None,
) -> BuiltModel:
    """Write a random-weight GGUF of ``arch`` (a family, or a preset's name) to ``out``."""
    shape = shape_for(arch, layers=layers, width=width, realistic=realistic)
    return write_shape(shape, out, seed=seed, tokenizer_from=tokenizer_from)


def write_shape(shape: Shape, out: str | os.PathLike[str], *, seed: int = 0,
                tokenizer_from: str | os.PathLike[str] | None = None) -> BuiltModel:
    """Write ``shape`` to ``out`` (atomically: a temporary file in the same folder renamed into
    place). The bytes depend only on the arguments and the tokenizer source."""
    out = Path(out)
    source = Path(tokenizer_from) if tokenizer_from is not None else _default_tokenizer_source()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, shape.arch)
        n_tokens = copy_tokenizer(writer, source, pad_to=shape.n_vocab)
        n_vocab = max(n_tokens, shape.n_vocab)
        _write_hparams(writer, shape, n_vocab=n_vocab, seed=seed)
        weights = _Weights(writer, shape, seed=seed)
        n_params = weights.add_all(n_vocab, n_used=n_tokens)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BuiltModel(path=out, shape=shape, kind=shape.kind, n_params=n_params, n_bytes=out.stat().st_size)


def _default_tokenizer_source() -> Path:
    from promptcache_cli.llama.model_file import ModelNotFound, default_model_path

    try:
        return default_model_path()
    except ModelNotFound as e:
        raise TokenizerSourceError(str(e)) from None


def copy_tokenizer(writer: gguf.GGUFWriter, source: Path, *, pad_to: int = 0) -> int:
    """Copy every ``tokenizer.*`` key of ``source`` into ``writer``, the token list padded with
    unused tokens up to ``pad_to``; return the source's vocabulary size."""
    if not source.is_file():
        raise TokenizerSourceError(f"tokenizer source not found: {source}")
    st = source.stat()
    fields = _tokenizer_fields(source.resolve(), st.st_size, st.st_mtime_ns)
    tokens = [value for key, value, _, _ in fields if key == "tokenizer.ggml.tokens"]
    if not tokens:
        raise TokenizerSourceError(f"no tokenizer.ggml.tokens in {source}")
    n = len(tokens[0])
    extra = max(0, pad_to - n)
    for key, value, vtype, sub in fields:
        if extra and key == "tokenizer.ggml.tokens":
            value = value + tuple(PAD_TOKEN.format(i).encode() for i in range(n, n + extra))
        elif extra and key == "tokenizer.ggml.token_type":
            value = value + (TOKEN_TYPE_UNUSED,) * extra
        elif extra and key == "tokenizer.ggml.scores":
            value = value + (-1e9,) * extra
        writer.add_key_value(key, value, vtype, sub_type=sub)
    return n


@functools.lru_cache(maxsize=2)
def _tokenizer_fields(source: Path, size: int, mtime_ns: int) -> tuple[tuple, ...]:
    """(key, value, type, array item type) of each ``tokenizer.*`` key, in file order. Cached:
    GGUFReader takes seconds over a 49,152-token vocabulary. ``size`` and ``mtime_ns`` are the
    cache key's guard against a changed file."""
    try:
        reader = gguf.GGUFReader(source)
    except Exception as e:  # any malformed file: GGUFReader raises ValueError, struct.error, IndexError...
        raise TokenizerSourceError(f"cannot read the tokenizer source {source}: {e}") from None
    fields = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype, sub = field.types[0], None
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                value = tuple(bytes(field.parts[i]) for i in field.data)  # bytes: no utf-8 round trip
            else:
                value = tuple(np.concatenate([field.parts[i] for i in field.data]).tolist())
        elif vtype == gguf.GGUFValueType.STRING:
            value = bytes(field.parts[field.data[0]])
        else:
            value = field.parts[field.data[0]][0].item()
        fields.append((key, value, vtype, sub))
    return tuple(fields)


def llama3_rope_factors(s: Shape) -> np.ndarray:
    """Llama 3's RoPE frequency factors, as the converter computes them (``rope_freqs.weight``)."""
    _, factor, low, high, old = s.rope_scaling
    freqs = 1.0 / (s.rope_theta ** (np.arange(0, s.head_dim, 2, dtype=np.float64) / s.head_dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    out = np.where(wavelen < old / high, 1.0,
                   np.where(wavelen > old / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def longrope_factors(s: Shape) -> tuple[np.ndarray, np.ndarray]:
    """(long, short) LongRoPE factors: ones for short contexts; for long ones a smooth rise from 1
    (high frequencies) to the context ratio (low frequencies). Shaped like Phi-3.5's, not its values
    (they change which rotations are applied, not how long anything takes)."""
    n = s.head_dim // 2
    ratio = s.context_length / s.rope_scaling[1]
    long = 1.0 + (ratio - 1.0) * (np.arange(n, dtype=np.float64) / max(n - 1, 1)) ** 2
    return long.astype(np.float32), np.ones(n, dtype=np.float32)


def _write_hparams(w: gguf.GGUFWriter, s: Shape, *, n_vocab: int, seed: int) -> None:
    # llama.cpp sets Phi-3 tokenizer attributes when the name says "phi3" or "phi-3" (on tokens
    # SmolLM2's vocabulary lacks): the name spells it "phi 3"
    label = (s.name or s.arch).replace("phi-3", "phi 3").replace("phi3", "phi 3")
    w.add_name(f"random {label} {s.n_layer}x{s.n_embd} seed {seed}")
    w.add_description("random weights for promptcache_cli tests and benchmarks (scripts/make_test_model.py)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if s.weight_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(s.context_length)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_layer_norm_rms_eps(s.rms_eps)
    if s.arch in ("mamba", "mamba2"):
        w.add_feed_forward_length(0)  # unused; the converter writes both
        w.add_head_count(0)
        w.add_ssm_conv_kernel(s.ssm_conv)
        w.add_ssm_inner_size(s.d_inner)
        w.add_ssm_state_size(s.ssm_state or SSM_STATE)
        w.add_ssm_time_step_rank(s.dt_rank)
        if s.arch == "mamba":
            w.add_ssm_dt_b_c_rms(False)
        else:
            w.add_ssm_group_count(s.ssm_groups)
        return
    w.add_vocab_size(n_vocab)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_rope_freq_base(s.rope_theta)
    if s.arch == "lfm2":  # a layer without KV heads is a short-convolution layer
        w.add_head_count_kv([s.n_head_kv if s.is_attention_layer(il) else 0 for il in range(s.n_layer)])
        w.add_shortconv_l_cache(SHORTCONV_L_CACHE)
    else:
        w.add_head_count_kv(s.n_head_kv)
    if s.head_dim != s.n_embd // s.n_head:
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    w.add_rope_dimension_count(s.head_dim)
    if s.arch == "gemma3":
        w.add_sliding_window(s.sliding_window)
        w.add_sliding_window_pattern(s.swa_pattern)
        w.add_rope_freq_base_swa(s.rope_theta_swa)
    if s.rope_scaling and s.rope_scaling[0] == "longrope":
        orig = s.rope_scaling[1]
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        w.add_rope_scaling_orig_ctx_len(orig)
        scale = s.context_length / orig
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
    if s.arch == "phi3":
        w.add_sliding_window(0)  # as the converter writes for Phi models without a window


def _arch_enum(arch: str) -> gguf.MODEL_ARCH:
    return next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)


class _Weights:
    """Draws every tensor from one seeded generator, in a fixed order, converting each at once
    (so a large model never holds float32 weights in memory)."""

    def __init__(self, writer: gguf.GGUFWriter, shape: Shape, *, seed: int) -> None:
        self.w = writer
        self.s = shape
        self.rng = np.random.default_rng(seed)
        self.n_params = 0
        self.out_std = 1.0 / math.sqrt(2 * shape.n_layer)  # residual branches sum to about unit size
        self.allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[_arch_enum(shape.arch)]}

    def name(self, tensor: gguf.MODEL_TENSOR, il: int | None = None, suffix: str | None = "weight") -> str:
        """The tensor's name from gguf's tables, checked to belong to the architecture."""
        pattern = gguf.TENSOR_NAMES[tensor]
        if pattern not in self.allowed:
            raise ModelSpecError(f"{self.s.arch} has no tensor {pattern}")
        base = pattern.format(bid=il)
        return f"{base}.{suffix}" if suffix else base

    def matrix(self, name: str, n_out: int, n_in: int, *, gain: float = 1.0, rows_used: int | None = None) -> None:
        """A weight applied as ``y = W x``: numpy (n_out, n_in), ggml {n_in, n_out}; rows from
        ``rows_used`` on are zero (padded vocabulary)."""
        std = gain / math.sqrt(n_in)
        used = n_out if rows_used is None else rows_used
        self.n_params += n_out * n_in
        if self.s.weight_type == "q8_0" and n_in % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            nb = n_in // 32
            blocks = np.zeros((n_out, nb, 34), dtype=np.uint8)
            blocks[:used, :, :2] = np.frombuffer(np.float16(std / _INT8_STD).tobytes(), dtype=np.uint8)
            blocks[:used, :, 2:] = self.rng.integers(-127, 128, size=(used, nb, 32), dtype=np.int8).view(np.uint8)
            self.w.add_tensor(name, blocks.reshape(n_out, nb * 34), raw_dtype=qtype)
        else:
            data = np.zeros((n_out, n_in), dtype=np.float16)
            data[:used] = self.rng.standard_normal((used, n_in), dtype=np.float32) * np.float32(std)
            self.w.add_tensor(name, data)

    def f32(self, name: str, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=np.float32)
        self.n_params += data.size
        self.w.add_tensor(name, data)

    def ones(self, name: str, n: int, value: float = 1.0) -> None:
        self.f32(name, np.full(n, value, dtype=np.float32))

    def normal(self, name: str, shape: tuple[int, ...], std: float) -> None:
        self.f32(name, self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def add_all(self, n_vocab: int, *, n_used: int) -> int:
        s, T = self.s, gguf.MODEL_TENSOR
        # Embedding entries ~ N(0, 1) (Gemma's graph scales them by sqrt(width): drawn that much
        # smaller); unused (padding) rows are zero. The final norm's weights are N(0, 1) *
        # LOGIT_STD / sqrt(n_embd) times the embedding's scale: a tied output's logits then have a
        # standard deviation of about LOGIT_STD, and their random signs cancel the bias of a tied
        # output towards repeating the current token (whose own embedding dominates the residual stream).
        emb_gain = 1.0 if s.arch == "gemma3" else math.sqrt(s.n_embd)
        self.matrix(self.name(T.TOKEN_EMBD), n_vocab, s.n_embd, gain=emb_gain, rows_used=n_used)
        out_scale = LOGIT_STD / math.sqrt(s.n_embd) * (math.sqrt(s.n_embd) if s.arch == "gemma3" else 1.0)
        if not s.tied:  # its own output matrix: rows of unit-size entries like the tied embedding's
            self.matrix(self.name(T.OUTPUT), n_vocab, s.n_embd, gain=math.sqrt(s.n_embd), rows_used=n_used)
            out_scale = LOGIT_STD / math.sqrt(s.n_embd)
        self.normal(self.name(T.TOKEN_EMBD_NORM if s.arch == "lfm2" else T.OUTPUT_NORM), (s.n_embd,), out_scale)
        if s.rope_scaling and s.rope_scaling[0] == "llama3":
            self.f32(self.name(T.ROPE_FREQS), llama3_rope_factors(s))
        if s.rope_scaling and s.rope_scaling[0] == "longrope":
            long, short = longrope_factors(s)
            self.f32(self.name(T.ROPE_FACTORS_LONG), long)
            self.f32(self.name(T.ROPE_FACTORS_SHORT), short)
        for il in range(s.n_layer):
            if s.arch == "mamba":
                self._mamba_layer(il)
            elif s.arch == "mamba2":
                self._mamba2_layer(il)
            else:
                self._block(il)
        return self.n_params

    def _block(self, il: int) -> None:
        s, T = self.s, gguf.MODEL_TENSOR
        n_q, n_kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
        self.ones(self.name(T.ATTN_NORM, il), s.n_embd)
        if s.is_attention_layer(il):
            if s.arch == "phi3":  # one fused matrix: Q, K, V stacked
                self.matrix(self.name(T.ATTN_QKV, il), n_q + 2 * n_kv, s.n_embd)
            else:
                self.matrix(self.name(T.ATTN_Q, il), n_q, s.n_embd)
                self.matrix(self.name(T.ATTN_K, il), n_kv, s.n_embd)
                self.matrix(self.name(T.ATTN_V, il), n_kv, s.n_embd)
            if s.qkv_bias:
                for t, n in ((T.ATTN_Q, n_q), (T.ATTN_K, n_kv), (T.ATTN_V, n_kv)):
                    self.normal(self.name(t, il, "bias"), (n,), 0.1)
            if s.arch in ("lfm2", "gemma3"):
                self.ones(self.name(T.ATTN_Q_NORM, il), s.head_dim)
                self.ones(self.name(T.ATTN_K_NORM, il), s.head_dim)
            if s.arch == "gemma3":  # post-norms set each branch's size: that of a scaled output projection
                self.matrix(self.name(T.ATTN_OUT, il), s.n_embd, n_q)
                self.ones(self.name(T.ATTN_POST_NORM, il), s.n_embd, self.out_std)
            else:
                self.matrix(self.name(T.ATTN_OUT, il), s.n_embd, n_q, gain=self.out_std)
        else:  # lfm2 short convolution: in_proj -> (b, c, x); y = c * conv(b * x); out_proj
            self.f32(self.name(T.SHORTCONV_CONV, il),
                     self.rng.standard_normal((s.n_embd, SHORTCONV_L_CACHE), dtype=np.float32)
                     / np.float32(math.sqrt(SHORTCONV_L_CACHE)))
            self.matrix(self.name(T.SHORTCONV_INPROJ, il), 3 * s.n_embd, s.n_embd)
            self.matrix(self.name(T.SHORTCONV_OUTPROJ, il), s.n_embd, s.n_embd, gain=self.out_std)
        self.ones(self.name(T.FFN_NORM, il), s.n_embd)
        if s.arch == "phi3":  # gate and up fused into one matrix of twice the width
            self.matrix(self.name(T.FFN_UP, il), 2 * s.n_ff, s.n_embd)
        else:
            self.matrix(self.name(T.FFN_GATE, il), s.n_ff, s.n_embd)
            self.matrix(self.name(T.FFN_UP, il), s.n_ff, s.n_embd)
        if s.arch == "gemma3":
            self.matrix(self.name(T.FFN_DOWN, il), s.n_embd, s.n_ff)
            self.ones(self.name(T.FFN_POST_NORM, il), s.n_embd, self.out_std)
        else:
            self.matrix(self.name(T.FFN_DOWN, il), s.n_embd, s.n_ff, gain=self.out_std)

    def _mamba_layer(self, il: int) -> None:
        """Mamba-1 with the reference initialisation of A, D and the time step."""
        s, T, rng = self.s, gguf.MODEL_TENSOR, self.rng
        d_inner = s.d_inner
        self.ones(self.name(T.ATTN_NORM, il), s.n_embd)
        self.matrix(self.name(T.SSM_IN, il), 2 * d_inner, s.n_embd)
        conv = rng.standard_normal((d_inner, SSM_CONV), dtype=np.float32) / np.float32(math.sqrt(SSM_CONV))
        self.f32(self.name(T.SSM_CONV1D, il), conv)
        self.f32(self.name(T.SSM_CONV1D, il, "bias"), np.zeros(d_inner, dtype=np.float32))
        self.matrix(self.name(T.SSM_X, il), s.dt_rank + 2 * SSM_STATE, d_inner)
        self.matrix(self.name(T.SSM_DT, il), d_inner, s.dt_rank)
        self.f32(self.name(T.SSM_DT, il, "bias"), _dt_bias(rng, d_inner))
        # A = -exp(A_log) with A_log = log(1..d_state), the same for every channel
        self.f32(self.name(T.SSM_A, il, None), -np.tile(np.arange(1, SSM_STATE + 1, dtype=np.float32), (d_inner, 1)))
        self.ones(self.name(T.SSM_D, il, None), d_inner)
        self.matrix(self.name(T.SSM_OUT, il), s.n_embd, d_inner, gain=self.out_std)

    def _mamba2_layer(self, il: int) -> None:
        """Mamba-2 (one scalar A per head) with the reference initialisation of A, D and the time step."""
        s, T, rng = self.s, gguf.MODEL_TENSOR, self.rng
        d_inner, n_heads, d_state, groups = s.d_inner, s.dt_rank, s.ssm_state, s.ssm_groups
        conv_dim = d_inner + 2 * groups * d_state
        self.ones(self.name(T.ATTN_NORM, il), s.n_embd)
        self.matrix(self.name(T.SSM_IN, il), d_inner + conv_dim + n_heads, s.n_embd)  # z, xBC, dt
        conv = rng.standard_normal((conv_dim, s.ssm_conv), dtype=np.float32) / np.float32(math.sqrt(s.ssm_conv))
        self.f32(self.name(T.SSM_CONV1D, il), conv)
        self.f32(self.name(T.SSM_CONV1D, il, "bias"), np.zeros(conv_dim, dtype=np.float32))
        self.f32(self.name(T.SSM_DT, il, "bias"), _dt_bias(rng, n_heads))
        a_log = rng.uniform(math.log(1.0), math.log(16.0), n_heads).astype(np.float32)
        self.f32(self.name(T.SSM_A, il, None), -np.exp(a_log).reshape(n_heads, 1))
        self.f32(self.name(T.SSM_D, il, None), np.ones((n_heads, 1), dtype=np.float32))
        self.f32(self.name(T.SSM_NORM, il), np.ones((groups, d_inner // groups), dtype=np.float32))
        self.matrix(self.name(T.SSM_OUT, il), s.n_embd, d_inner, gain=self.out_std)


def _dt_bias(rng: np.random.Generator, n: int) -> np.ndarray:
    """Time steps log-uniform in [1e-3, 1e-1] through softplus: bias = dt + log(1 - exp(-dt))."""
    dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), n)).astype(np.float32)
    return dt + np.log(-np.expm1(-dt))

"""Random-weight GGUF models for tests and benchmarks (used by ``scripts/make_test_model.py``).

Three architectures, one per kind of llama.cpp memory:

- ``llama``: plain attention (KV cache),
- ``mamba``: pure recurrent (Mamba-1: a conv state and an SSM state per sequence),
- ``lfm2``: hybrid (LFM2: short-convolution layers with a recurrent conv state, plus attention
  layers on every third layer, ``i % 3 == 2``).

The tokenizer (every ``tokenizer.*`` key, the chat template among them) is copied from a real
GGUF, by default the project's SmolLM2-135M, so tokenization and chat templates behave exactly
as with the real model. Weights are seeded normal draws scaled by fan-in (output projections also
by ``1/sqrt(2 * n_layer)``), so activations stay near unit size and logits are finite and spread;
the text they produce is noise. Tensor names, shapes and hyperparameter keys follow the vendored
llama.cpp of llama-cpp-python 0.3.36 (``src/models/{llama,mamba,lfm2}.cpp``).

The default shape is tiny (width 64, about 8 MB: mostly the 49,152-token embedding and the
vocabulary). ``realistic`` gives shapes whose compute matches a 100-200M-parameter model:
SmolLM2-135M's for llama, mamba-130m's for mamba, and a 16-layer width-768 LFM2 (about 150M
parameters), with q8_0 matrices.
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

KINDS = {"llama": "attention", "mamba": "recurrent", "lfm2": "hybrid"}
ARCHS = tuple(KINDS)

CONTEXT_LENGTH = 8192  # the default model's training context
RMS_EPS = 1e-5
MAX_LAYERS = 256
MAX_WIDTH = 8192
WIDTH_STEP = 16  # widths are multiples of the smallest head size
SSM_STATE = 16  # Mamba-1 defaults: d_state, d_conv
SSM_CONV = 4
SHORTCONV_L_CACHE = 3  # LFM2's conv_L_cache
LOGIT_STD = 4.0  # the tied output's logits have about this standard deviation


class ModelSpecError(ValueError):
    """The requested architecture or shape cannot be built."""


class TokenizerSourceError(OSError):
    """The GGUF to copy the tokenizer from is missing or has no tokenizer."""


@dataclass(frozen=True)
class Shape:
    arch: str
    n_layer: int
    n_embd: int
    weight_type: str  # 'f16' or 'q8_0' for matrices; vectors, norms and SSM parameters stay f32

    @property
    def head_dim(self) -> int:
        """64 as in most real models; 32 or 16 at small widths (a tiny model: 2 heads, fast attention)."""
        if self.n_embd >= 128 and self.n_embd % 64 == 0:
            return 64
        return 32 if self.n_embd % 32 == 0 else WIDTH_STEP

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_dim

    @property
    def n_head_kv(self) -> int:
        """Grouped-query attention: a third (or half) of the query heads, as in SmolLM2."""
        for group in (3, 2):
            if self.n_head % group == 0:
                return self.n_head // group
        return self.n_head

    @property
    def n_ff(self) -> int:
        """SwiGLU width: 8/3 of the model width rounded up to 64 (1536 for width 576)."""
        return -(-(8 * self.n_embd) // (3 * 64)) * 64

    @property
    def d_inner(self) -> int:
        return 2 * self.n_embd  # llama.cpp's Mamba supports an expansion factor of 2 only

    @property
    def dt_rank(self) -> int:
        return -(-self.n_embd // 16)

    def is_attention_layer(self, il: int) -> bool:
        if self.arch == "llama":
            return True
        if self.arch == "lfm2":
            return il % 3 == 2
        return False


REALISTIC = {
    "llama": dict(n_layer=30, n_embd=576),  # SmolLM2-135M
    "mamba": dict(n_layer=24, n_embd=768),  # state-spaces/mamba-130m
    "lfm2": dict(n_layer=16, n_embd=768),  # LFM2-350M's depth at width 768: about 150M parameters
}
TINY = {"llama": dict(n_layer=2, n_embd=64), "mamba": dict(n_layer=2, n_embd=64), "lfm2": dict(n_layer=3, n_embd=64)}


def shape_for(arch: str, *, layers: int | None = None, width: int | None = None, realistic: bool = False) -> Shape:
    """The shape to build: the tiny or realistic default of ``arch``, with ``layers`` and
    ``width`` overriding it."""
    if arch not in KINDS:
        raise ModelSpecError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    base = (REALISTIC if realistic else TINY)[arch]
    shape = Shape(arch=arch, weight_type="q8_0" if realistic else "f16", **base)
    if layers is not None:
        shape = replace(shape, n_layer=layers)
    if width is not None:
        shape = replace(shape, n_embd=width)
    min_layers = 3 if arch == "lfm2" else 1
    if not min_layers <= shape.n_layer <= MAX_LAYERS:
        raise ModelSpecError(
            f"--layers must be between {min_layers} and {MAX_LAYERS} for {arch}, got {shape.n_layer}"
            + (" (layer 2 is its first attention layer)" if arch == "lfm2" and shape.n_layer < 3 else "")
        )
    if not (WIDTH_STEP <= shape.n_embd <= MAX_WIDTH and shape.n_embd % WIDTH_STEP == 0):
        raise ModelSpecError(
            f"--width must be a multiple of {WIDTH_STEP} from {WIDTH_STEP} to {MAX_WIDTH}, got {shape.n_embd}"
        )
    return shape


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    shape: Shape
    kind: str  # what llama.cpp should report: 'attention', 'recurrent' or 'hybrid'
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
    """Write a random-weight GGUF of ``arch`` to ``out`` (atomically: a temporary file in the
    same folder renamed into place). The bytes depend only on the arguments and the tokenizer
    source."""
    shape = shape_for(arch, layers=layers, width=width, realistic=realistic)
    out = Path(out)
    source = Path(tokenizer_from) if tokenizer_from is not None else _default_tokenizer_source()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        n_vocab = copy_tokenizer(writer, source)
        _write_hparams(writer, shape, n_vocab=n_vocab, seed=seed)
        n_params = _Weights(writer, shape, seed=seed).add_all(n_vocab)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BuiltModel(path=out, shape=shape, kind=KINDS[arch], n_params=n_params, n_bytes=out.stat().st_size)


def _default_tokenizer_source() -> Path:
    from promptcache_cli.llama.model_file import ModelNotFound, default_model_path

    try:
        return default_model_path()
    except ModelNotFound as e:
        raise TokenizerSourceError(str(e)) from None


def copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> int:
    """Copy every ``tokenizer.*`` key of ``source`` into ``writer``; return the vocabulary size."""
    if not source.is_file():
        raise TokenizerSourceError(f"tokenizer source not found: {source}")
    st = source.stat()
    fields = _tokenizer_fields(source.resolve(), st.st_size, st.st_mtime_ns)
    for key, value, vtype, sub in fields:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    tokens = [value for key, value, _, _ in fields if key == "tokenizer.ggml.tokens"]
    if not tokens:
        raise TokenizerSourceError(f"no tokenizer.ggml.tokens in {source}")
    return len(tokens[0])


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


def _write_hparams(w: gguf.GGUFWriter, s: Shape, *, n_vocab: int, seed: int) -> None:
    w.add_name(f"random {s.arch} {s.n_layer}x{s.n_embd} seed {seed}")
    w.add_description("random weights for promptcache_cli tests and benchmarks (scripts/make_test_model.py)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if s.weight_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(CONTEXT_LENGTH)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_layer_norm_rms_eps(RMS_EPS)
    if s.arch == "mamba":
        w.add_feed_forward_length(0)  # unused; the converter writes both
        w.add_head_count(0)
        w.add_ssm_conv_kernel(SSM_CONV)
        w.add_ssm_inner_size(s.d_inner)
        w.add_ssm_state_size(SSM_STATE)
        w.add_ssm_time_step_rank(s.dt_rank)
        w.add_ssm_dt_b_c_rms(False)
        return
    w.add_vocab_size(n_vocab)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(100000.0 if s.arch == "llama" else 1000000.0)
    if s.arch == "llama":
        w.add_head_count_kv(s.n_head_kv)
    else:  # lfm2: a layer without KV heads is a short-convolution layer
        w.add_head_count_kv([s.n_head_kv if s.is_attention_layer(il) else 0 for il in range(s.n_layer)])
        w.add_shortconv_l_cache(SHORTCONV_L_CACHE)


class _Weights:
    """Draws every tensor from one seeded generator, in a fixed order, converting each at once
    (so a realistic model never holds its float32 weights in memory)."""

    def __init__(self, writer: gguf.GGUFWriter, shape: Shape, *, seed: int) -> None:
        self.w = writer
        self.s = shape
        self.rng = np.random.default_rng(seed)
        self.n_params = 0
        self.out_std = 1.0 / math.sqrt(2 * shape.n_layer)  # residual branches sum to about unit size

    def matrix(self, name: str, n_out: int, n_in: int, *, gain: float = 1.0) -> None:
        """A weight applied as ``y = W x``: numpy (n_out, n_in), ggml {n_in, n_out}."""
        data = self.rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(gain / math.sqrt(n_in))
        self.n_params += data.size
        if self.s.weight_type == "q8_0" and n_in % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            self.w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            self.w.add_tensor(name, data.astype(np.float16))

    def f32(self, name: str, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=np.float32)
        self.n_params += data.size
        self.w.add_tensor(name, data)

    def ones(self, name: str, n: int, value: float = 1.0) -> None:
        self.f32(name, np.full(n, value, dtype=np.float32))

    def add_all(self, n_vocab: int) -> int:
        s = self.s
        # Embedding entries ~ N(0, 1); the output is tied to it. The final norm's weights are
        # N(0, 1) * LOGIT_STD / sqrt(n_embd): logits then have a standard deviation of about
        # LOGIT_STD, and their random signs cancel the bias of a tied output towards repeating
        # the current token (whose own embedding dominates the residual stream).
        self.matrix("token_embd.weight", n_vocab, s.n_embd, gain=math.sqrt(s.n_embd))
        norm = self.rng.standard_normal(s.n_embd, dtype=np.float32) * np.float32(LOGIT_STD / math.sqrt(s.n_embd))
        self.f32("token_embd_norm.weight" if s.arch == "lfm2" else "output_norm.weight", norm)
        for il in range(s.n_layer):
            if s.arch == "mamba":
                self._mamba_layer(il)
            else:
                self._block(il)
        return self.n_params

    def _block(self, il: int) -> None:
        s, p = self.s, f"blk.{il}."
        self.ones(p + "attn_norm.weight", s.n_embd)
        if s.is_attention_layer(il):
            n_kv = s.n_head_kv * s.head_dim
            self.matrix(p + "attn_q.weight", s.n_embd, s.n_embd)
            self.matrix(p + "attn_k.weight", n_kv, s.n_embd)
            self.matrix(p + "attn_v.weight", n_kv, s.n_embd)
            self.matrix(p + "attn_output.weight", s.n_embd, s.n_embd, gain=self.out_std)
            if s.arch == "lfm2":
                self.ones(p + "attn_q_norm.weight", s.head_dim)
                self.ones(p + "attn_k_norm.weight", s.head_dim)
        else:  # lfm2 short convolution: in_proj -> (b, c, x); y = c * conv(b * x); out_proj
            self.f32(
                p + "shortconv.conv.weight",
                self.rng.standard_normal((s.n_embd, SHORTCONV_L_CACHE), dtype=np.float32)
                / np.float32(math.sqrt(SHORTCONV_L_CACHE)),
            )
            self.matrix(p + "shortconv.in_proj.weight", 3 * s.n_embd, s.n_embd)
            self.matrix(p + "shortconv.out_proj.weight", s.n_embd, s.n_embd, gain=self.out_std)
        self.ones(p + "ffn_norm.weight", s.n_embd)
        self.matrix(p + "ffn_gate.weight", s.n_ff, s.n_embd)
        self.matrix(p + "ffn_up.weight", s.n_ff, s.n_embd)
        self.matrix(p + "ffn_down.weight", s.n_embd, s.n_ff, gain=self.out_std)

    def _mamba_layer(self, il: int) -> None:
        """Mamba-1 with the reference initialisation of A, D and the time step."""
        s, p = self.s, f"blk.{il}."
        d_inner, rng = s.d_inner, self.rng
        self.ones(p + "attn_norm.weight", s.n_embd)
        self.matrix(p + "ssm_in.weight", 2 * d_inner, s.n_embd)
        conv = rng.standard_normal((d_inner, SSM_CONV), dtype=np.float32) / np.float32(math.sqrt(SSM_CONV))
        self.f32(p + "ssm_conv1d.weight", conv)
        self.f32(p + "ssm_conv1d.bias", np.zeros(d_inner, dtype=np.float32))
        self.matrix(p + "ssm_x.weight", s.dt_rank + 2 * SSM_STATE, d_inner)
        self.matrix(p + "ssm_dt.weight", d_inner, s.dt_rank)
        # time steps log-uniform in [1e-3, 1e-1] through softplus: bias = dt + log(1 - exp(-dt))
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), d_inner)).astype(np.float32)
        self.f32(p + "ssm_dt.bias", dt + np.log(-np.expm1(-dt)))
        # A = -exp(A_log) with A_log = log(1..d_state), the same for every channel
        self.f32(p + "ssm_a", -np.tile(np.arange(1, SSM_STATE + 1, dtype=np.float32), (d_inner, 1)))
        self.ones(p + "ssm_d", d_inner)
        self.matrix(p + "ssm_out.weight", s.n_embd, d_inner, gain=self.out_std)

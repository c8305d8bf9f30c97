"""A llama.cpp context: decode tokens at explicit positions into sequences, read logits, copy and
remove cells, and save or load one sequence's state blob. Every failure raises
:class:`..errors.BackendError` (or a subclass) instead of returning C status codes.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import BackendError, ContextFullError, StateRefused, UnsupportedModel
from .bindings import C
from .model import Model
from .threads import threads as resolve_threads

GGML_TYPES = {"f16": C.GGML_TYPE_F16, "q8_0": C.GGML_TYPE_Q8_0, "f32": C.GGML_TYPE_F32}


@dataclass(frozen=True)
class ContextSettings:
    """Context parameters. The ones in :meth:`state_layout` shape the saved state bytes."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_threads: int = 0  # 0: $PC_THREADS, else every core (threads.py)
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = False

    @classmethod
    def for_kv_type(cls, kv_type: str) -> ContextSettings:
        """The settings of ``--kv-type``: K and V of that type; llama.cpp stores a quantized V
        cache only with flash attention."""
        return cls(type_k=kv_type, type_v=kv_type, flash_attn=kv_type != "f16")

    def state_layout(self) -> dict:
        """The settings a state blob depends on: a blob only loads where these are equal."""
        layout = {
            "type_k": self.type_k,
            "type_v": self.type_v,
            "flash_attn": self.flash_attn,
            "kv_unified": True,
        }
        return layout


class Context:
    """A llama.cpp context with a unified KV cache and two sequences: 0 (the prompt being
    built) and 1 (scratch, for loading a blob before copying its cells into 0); more with
    ``n_seq``, for :meth:`recompute`."""

    N_SEQ = 2

    def __init__(self, model: Model, settings: ContextSettings, *, n_seq: int = N_SEQ) -> None:
        """``settings.n_threads`` 0 means $PC_THREADS, or else every core."""
        if not self.N_SEQ <= n_seq <= 256:
            raise ValueError(f"a context has 2 to 256 sequences, not {n_seq}")
        self.N_SEQ = n_seq
        self.model = model
        self.settings = settings
        p = C.llama_context_default_params()
        p.n_ctx = settings.n_ctx
        p.n_batch = settings.n_batch
        p.n_ubatch = settings.n_batch
        p.n_seq_max = self.N_SEQ
        threads = resolve_threads(settings.n_threads)
        p.n_threads = threads
        p.n_threads_batch = threads
        p.type_k = GGML_TYPES[settings.type_k]
        p.type_v = GGML_TYPES[settings.type_v]
        p.flash_attn_type = (
            C.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        p.kv_unified = True
        p.no_perf = True
        self._ptr = C.llama_init_from_model(model._ptr, p)
        if not self._ptr:
            raise BackendError(
                f"llama.cpp could not create a context of {settings.n_ctx} cells "
                f"(k={settings.type_k}, v={settings.type_v}, flash_attn={settings.flash_attn})"
            )
        self.n_ctx = C.llama_n_ctx(self._ptr)
        self._mem = C.llama_get_memory(self._ptr)
        self._batch = C.llama_batch_init(settings.n_batch, 0, self.N_SEQ)
        n = settings.n_batch
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(n,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n,))
        self._nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n,))
        self._logit_flags = np.ctypeslib.as_array(self._batch.logits, shape=(n,))
        self._seq_ptrs = [self._batch.seq_id[i] for i in range(n)]
        self._has_logits = False

    # -- decoding ---------------------------------------------------------------------------
    def decode(
        self,
        tokens: list[int] | np.ndarray,
        *,
        start: int,
        seq: int = 0,
        logits: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Decode ``tokens`` at positions ``start, start+1, ...`` into ``seq``.

        A sequence that already holds cells must continue at exactly ``pos_max(seq) + 1``;
        an empty one may start anywhere. With ``logits``, the last token's logits are kept.
        """
        tokens = np.asarray(tokens, dtype=np.int32)
        n_total = len(tokens)
        if n_total == 0:
            return
        step = self.settings.n_batch
        for begin in range(0, n_total, step):
            chunk = tokens[begin : begin + step]
            n = len(chunk)
            self._tok[:n] = chunk
            self._pos[:n] = np.arange(start + begin, start + begin + n, dtype=np.int32)
            self._nseq[:n] = 1
            for i in range(n):
                self._seq_ptrs[i][0] = seq
            self._logit_flags[:n] = 0
            last = begin + n == n_total
            if logits and last:
                self._logit_flags[n - 1] = 1
            self._batch.n_tokens = n
            rc = C.llama_decode(self._ptr, self._batch)
            if rc == 1:
                raise ContextFullError(f"the context of {self.n_ctx} cells is full")
            if rc != 0:
                raise BackendError(f"llama_decode failed with code {rc}")
            if progress is not None:
                progress(n)
        self._has_logits = logits

    def logits(self) -> np.ndarray:
        """A copy of the logits of the last decoded token (float32, n_vocab)."""
        if not self._has_logits:
            raise BackendError("no logits: the last decode did not request them")
        ptr = C.llama_get_logits_ith(self._ptr, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    # -- memory ---------------------------------------------------------------------------
    def recompute(self, tokens: list[int] | np.ndarray, positions: list[int] | np.ndarray) -> None:
        """Recompute sequence 0's cells at ``positions`` (increasing; the cells must exist) from
        ``tokens``, each attending to sequence 0's cells before it. llama.cpp decodes a sequence
        only at its next position, so each token goes into a sequence of its own (2, 3, ...) that
        shares sequence 0's earlier cells; its new cell then replaces sequence 0's old one. Up to
        ``n_seq - 2`` tokens share a batch (fewer when the context has fewer free cells: a batch
        holds its tokens' old and new cells at once); a token does not see the new cells of tokens
        in its own batch (it sees their old ones)."""
        tokens, positions = np.asarray(tokens, np.int32), np.asarray(positions, np.int32)
        free = self.n_ctx - (self.pos_max(0) + 1)  # sequence 0 starts at 0: at most pos_max + 1 cells
        width = min(self.N_SEQ - 2, self.settings.n_batch, max(free, 1))
        if width < 1:
            raise ValueError("recompute needs a context with more than two sequences")
        for begin in range(0, len(tokens), width):
            tok, pos = tokens[begin : begin + width], positions[begin : begin + width]
            n = len(tok)
            for j in range(n):
                C.llama_memory_seq_cp(self._mem, 0, 2 + j, 0, int(pos[j]))
                self._seq_ptrs[j][0] = 2 + j
            self._tok[:n], self._pos[:n], self._nseq[:n], self._logit_flags[:n] = tok, pos, 1, 0
            self._batch.n_tokens = n
            rc = C.llama_decode(self._ptr, self._batch)
            for j in range(n):
                if rc == 0:
                    self.seq_rm(0, int(pos[j]), int(pos[j]) + 1)
                    C.llama_memory_seq_cp(self._mem, 2 + j, 0, int(pos[j]), int(pos[j]) + 1)
                self.seq_rm(2 + j)
            if rc == 1:
                raise ContextFullError(f"the context of {self.n_ctx} cells is full")
            if rc != 0:
                raise BackendError(f"llama_decode failed with code {rc}")
        self._has_logits = False

    def pos_max(self, seq: int = 0) -> int:
        """Highest position held by ``seq``, -1 when empty."""
        return C.llama_memory_seq_pos_max(self._mem, seq)

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        if not C.llama_memory_seq_rm(self._mem, seq, p0, p1):
            raise BackendError(f"cannot remove positions [{p0}, {p1}) of sequence {seq}")

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        C.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    @property
    def can_shift(self) -> bool:
        """Cells can be moved to other positions (:meth:`seq_add`): llama.cpp can re-rotate their K
        (``llama_memory_can_shift``; not for multi-position RoPE, nor some architectures)."""
        return bool(C.llama_memory_can_shift(self._mem))

    def seq_add(self, seq: int, delta: int, p0: int = -1, p1: int = -1) -> None:
        """Move ``seq``'s cells at positions [p0, p1) by ``delta`` positions. llama.cpp records the
        shift per cell and re-rotates K (RoPE) at the next decode, which applies every pending
        shift: a sequence must not be saved between this and the next decode. Raises
        :class:`UnsupportedModel` where this memory cannot shift."""
        if delta == 0:
            return
        if not self.can_shift:
            raise UnsupportedModel(f"{self.model.description}: llama.cpp cannot move this model's cached "
                                   "states to other positions (no K-shift for its memory)")
        C.llama_memory_seq_add(self._mem, seq, p0, p1, delta)

    def clear(self) -> None:
        """Empty every sequence. Only cell metadata is reset: zeroing the buffers costs ~70 ms
        for 100 MB and is not needed, stale bytes are overwritten before they are attended to."""
        C.llama_memory_clear(self._mem, False)
        self._has_logits = False

    # -- state blobs ------------------------------------------------------------------------
    def save_state(self, seq: int, *, partial: bool = False) -> np.ndarray:
        """The serialized cells of ``seq`` (llama.cpp's per-sequence state format). ``partial``
        keeps only the part that cannot be cut back: a hybrid model's recurrent state, an
        interleaved-SWA model's window cache."""
        flags = C.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else C.LLAMA_STATE_SEQ_FLAGS_NONE
        size = C.llama_state_seq_get_size_ext(self._ptr, seq, flags)
        buf = np.empty(size, dtype=np.uint8)
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        written = C.llama_state_seq_get_data_ext(self._ptr, ptr, size, seq, flags)
        if written != size:
            raise BackendError(f"state of sequence {seq}: wrote {written} of {size} bytes")
        return buf

    def load_state(self, seq: int, blob: np.ndarray, *, partial: bool = False) -> None:
        """Replace ``seq`` with the cells of a blob made by :meth:`save_state` in a context
        with the same state layout (``partial``: replace only the part such a blob holds).
        The caller validates the blob's structure first."""
        blob = np.ascontiguousarray(blob, dtype=np.uint8)
        ptr = blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        flags = C.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else C.LLAMA_STATE_SEQ_FLAGS_NONE
        read = C.llama_state_seq_set_data_ext(self._ptr, ptr, blob.nbytes, seq, flags)
        if read == 0:
            raise StateRefused(f"llama.cpp refused a state blob of {blob.nbytes} bytes")
        self._has_logits = False

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            C.llama_batch_free(self._batch)
            C.llama_free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass

"""A loaded GGUF model: its vocabulary, metadata and memory kind (memory.py)."""

from __future__ import annotations

import ctypes
import os

from ..errors import BackendError, ModelLoadError
from .bindings import C, gguf_problem, init_backend, load_model_file
from .memory import Memory, memory


class Model:
    """A loaded GGUF model and its vocabulary."""

    def __init__(self, path: str, *, loaded=None) -> None:
        """``loaded``: llama.cpp's handle of this very file, loaded already (preload.py)."""
        init_backend()
        problem = gguf_problem(path)
        if problem:
            if loaded:  # the file changed since the thread loaded it
                C.llama_model_free(loaded)
            raise ModelLoadError(problem)
        self._ptr = loaded or load_model_file(path)
        if not self._ptr:
            raise ModelLoadError(f"llama.cpp could not load the model: {path}")
        self.path = path
        self._vocab = C.llama_model_get_vocab(self._ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = C.llama_model_n_ctx_train(self._ptr)
        self.n_layer = C.llama_model_n_layer(self._ptr)
        self.bos = C.llama_vocab_bos(self._vocab)
        self.eos = C.llama_vocab_eos(self._vocab)
        self.add_bos = bool(C.llama_vocab_get_add_bos(self._vocab))
        self.n_swa = C.llama_model_n_swa(self._ptr)  # the sliding window, 0 without one
        # what the model's states allow (stitching, cutting back, partial checkpoints)
        self.memory: Memory = memory(recurrent=bool(C.llama_model_is_recurrent(self._ptr)),
                                     hybrid=bool(C.llama_model_is_hybrid(self._ptr)),
                                     n_swa=self.n_swa)

    @property
    def kind(self) -> str:
        """The memory's name: 'recurrent', 'hybrid', 'swa' (sliding-window attention) or 'attention'."""
        return self.memory.name

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = C.llama_model_meta_val_str(self._ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self._ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def family(self) -> str:
        """The GGUF architecture llama.cpp runs it as (``general.architecture``: llama, qwen2, gemma3, lfm2...)."""
        return self.meta("general.architecture") or "?"

    @property
    def description(self) -> str:
        """The model's name as `pc` shows it everywhere (answers, `pc ls`, `pc inspect`, messages):
        its file's name, as the cache's manifests record it (store/keys.py). The GGUF's own
        ``general.name`` is often a training run's ("Smollm2 135M 8k Lc100K Mix1 Ep2")."""
        return os.path.basename(self.path)

    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Tokens of ``text`` without BOS. ``special`` parses control tokens like <|im_start|>;
        user-supplied text is tokenized with ``special=False`` so it can never inject them."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (C.llama_token * n_max)()
        n = C.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        if n < 0:
            n_max = -n
            buf = (C.llama_token * n_max)()
            n = C.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        if n < 0:
            raise BackendError("tokenization failed")
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        """The token's text with special tokens rendered (used for chat-template glue)."""
        buf = ctypes.create_string_buffer(256)
        n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            C.llama_model_free(self._ptr)
            self._ptr = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

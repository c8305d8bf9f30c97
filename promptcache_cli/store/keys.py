"""Cache keys: what a cache file's name hashes (everything its bytes depend on), and the
identity of a model file. Pinned by tests: a changed key orphans every cache on disk."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

FORMAT_TAG = "pcache-2"  # 2: states stored where they are computed (after their contexts), moved on load


def model_fingerprint(path: str) -> dict:
    """Identity of a model file without hashing all of it: size plus a hash of its first and
    last MiB (the GGUF header with all metadata, and the tail of the last tensor)."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return {"size": st.st_size, "sha256_ends": h.hexdigest()[:32], "name": os.path.basename(path)}


def module_key(*, model: dict, llama_cpp: str, state_layout: dict,
               segments: list[tuple[int, tuple[int, ...], tuple[tuple[int, ...] | bytes, ...]]]) -> str:
    """Hash of everything a module's cached bytes depend on. ``segments`` holds, per segment,
    (the position its first token is stored at, tokens, the context tokens of each context it is
    computed after: one, or several for the ``average`` encoding). Where a prompt puts the segment
    is not part of it: the states are moved there when loaded."""
    h = hashlib.sha256()
    meta = {"format": FORMAT_TAG, "model": {k: model[k] for k in ("size", "sha256_ends")},
            "llama_cpp": llama_cpp, "state_layout": state_layout}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for offset, tokens, contexts in segments:
        # one context: (offset, length, context length), tokens, context; several: (offset, length,
        # -number of contexts), tokens, then each context's length and tokens. A context may come
        # as its tokens' little-endian int32 bytes already (prompt/contexts.context_bytes).
        data = [c if isinstance(c, bytes) else np.asarray(c, dtype="<i4").tobytes() for c in contexts]
        third = len(data[0]) // 4 if len(data) == 1 else -len(data)
        h.update(np.array([offset, len(tokens), third], dtype="<i8").tobytes())
        h.update(np.asarray(tokens, dtype="<i4").tobytes())
        for context in data:
            if len(data) > 1:
                h.update(np.array([len(context) // 4], dtype="<i8").tobytes())
            h.update(context)
    return h.hexdigest()[:40]

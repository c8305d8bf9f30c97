"""The few llama-cpp-python calls a user of its high-level API makes, shared by the in-process
systems and the whole-process child. Imports nothing of `pc`: a child process running this pays
for exactly what a llama-cpp-python script pays for."""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

CAPACITY = 16 << 30  # large enough that no state is evicted during a workload (the default is 2 GiB)
N_BATCH = 512


def threads() -> int:
    """What `pc` uses: $PC_THREADS when set, else every core."""
    env = os.environ.get("PC_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def make_llama(model_path: Path, n_ctx: int):
    """A ``llama_cpp.Llama`` with `pc`'s context settings (imported here: it is heavy)."""
    from llama_cpp import Llama

    t = threads()
    return Llama(model_path=str(model_path), n_ctx=n_ctx, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=t,
                 n_threads_batch=t, flash_attn=False, verbose=False)


def make_cache(kind: str, folder: Path):
    from llama_cpp import LlamaDiskCache, LlamaRAMCache

    if kind == "ram":
        return LlamaRAMCache(capacity_bytes=CAPACITY)
    return LlamaDiskCache(cache_dir=str(folder), capacity_bytes=CAPACITY)


def complete(llm, text: str, *, max_tokens: int) -> tuple[float, float, str]:
    """Stream a greedy completion: (ms to the first chunk, ms in all, text). llama-cpp-python's
    disk cache prints on every store; that goes nowhere instead of to our stderr."""
    with contextlib.redirect_stderr(io.StringIO()):
        t0 = time.perf_counter()
        chunks = llm.create_completion(text, max_tokens=max_tokens, temperature=0.0, stream=True)
        first = next(chunks)
        ttft = time.perf_counter() - t0
        rest = list(chunks)  # drained: the cache stores the state after the last chunk
        total = time.perf_counter() - t0
    out = "".join(c["choices"][0]["text"] for c in [first, *rest])
    return ttft * 1000, total * 1000, out


def count_tokens(llm, text: str) -> int:
    return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

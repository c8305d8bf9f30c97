"""What a llama-cpp-python user reaches for today: the high-level ``llama_cpp.Llama`` with its own
prompt caches, ``LlamaRAMCache`` (process memory) and ``LlamaDiskCache`` (a ``diskcache`` folder).

Both store the whole context state after each completion, keyed by the prompt's tokens, and on the
next completion load the stored state sharing the longest token prefix with the new prompt, then
compute the rest. The ``Llama`` object also keeps its last prompt in its context and reuses the
common prefix with the next. Settings match `pc`'s: its threads, batches of 512, f16 KV, no flash
attention; a context just large enough for the workload's largest prompt plus the answer.

Time to first token is the wall time from calling ``create_completion(text, stream=True)`` to its
first streamed chunk (prompt tokenization, cache lookup and load, prefill, the first token);
storing the new state, which the cache does after the last chunk, is not part of it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .llama_api import complete, count_tokens, make_cache, make_llama
from .prompts import Prompt
from .systems import Answer, Command, Prepared, System, dir_bytes
from .workloads import Question, Workload


class LlamaCacheSystem(System):
    def __init__(self, model_path: Path, root: Path, *, kind: str) -> None:
        super().__init__(model_path, root)
        if kind not in ("ram", "disk"):
            raise ValueError(f"unknown llama-cpp-python cache {kind!r}")
        self.kind = kind
        self.name = f"llama-{kind}"
        self.label = f"llama-cpp-python Llama{'RAM' if kind == 'ram' else 'Disk'}Cache"
        self.in_ram = kind == "ram"
        self.llm = None
        self.cache = None
        self.n_ctx = 0
        self._ram_bytes: dict[str, int] = {}

    def start(self, wl: Workload, *, n_cells: int) -> Prepared:
        self.n_ctx = -(-n_cells // 256) * 256
        t = time.perf_counter()
        self.llm = make_llama(self.model_path, self.n_ctx)
        self.cache = make_cache(self.kind, self.folder(wl))
        self.llm.set_cache(self.cache)
        return Prepared(time.perf_counter() - t, "Llama() and set_cache")

    def ask(self, wl: Workload, q: Question, prompt: Prompt, *, max_tokens: int = 1,
            keep_logits: bool = False) -> Answer:
        n = count_tokens(self.llm, prompt.text)
        ttft, total, text = complete(self.llm, prompt.text, max_tokens=max_tokens)
        return Answer(ttft, total, [], text, n)

    def cache_bytes(self, wl: Workload) -> int | None:
        if self.kind == "ram":
            return self._ram_bytes.get(wl.name, int(self.cache.cache_size) if self.cache is not None else 0)
        return dir_bytes(self.folder(wl))

    def process(self, wl: Workload, q: Question, prompt: Prompt) -> Command:
        argv = [sys.executable, "-m", "promptcache_cli.benchmarks.child", "--kind", self.kind,
                "--cache-dir", str(self.folder(wl)), "--model", str(self.model_path), "--n-ctx", str(self.n_ctx)]
        return Command(argv, {}, prompt.text)

    def stop(self, wl: Workload) -> None:
        if self.cache is not None and self.kind == "ram":
            self._ram_bytes[wl.name] = int(self.cache.cache_size)
        if self.cache is not None and self.kind == "disk":
            self.cache.cache.close()
        if self.llm is not None:
            self.llm.close()
        self.llm = self.cache = None

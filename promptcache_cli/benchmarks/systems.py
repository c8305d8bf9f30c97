"""The systems compared, one small adapter each: `pc ask --no-cache`, the `pc` modular cache
(uncompressed, the default; zstd; q8_0 KV), and `pc` prefix mode. llama-cpp-python's own caches are in
``llama_systems``. Each system keeps its files in its own folder per workload, so bytes on disk are
exactly what that system stored for that workload.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..api import Session, open_session
from ..store import cache_file
from ..store.files import CacheStore
from .prompts import Prompt
from .workloads import Question, Workload

NOT_BUILT = "not available (not built)"


@dataclass
class Answer:
    ttft_ms: float
    total_ms: float
    tokens: list[int]
    text: str
    prompt_tokens: int  # the prompt as this system tokenized it
    first_logits: np.ndarray | None = None


@dataclass
class Command:
    """A whole-process run: argv, extra environment, and what it reads on stdin."""

    argv: list[str]
    env: dict[str, str]
    stdin: str = ""


@dataclass
class Prepared:
    seconds: float  # compile (or warm-up) time, not part of any time to first token
    note: str = ""


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pc_command() -> list[str]:
    """How a user runs `pc`: the console script beside this interpreter, else the module."""
    script = Path(sys.executable).parent / "pc"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "promptcache_cli"]


class System:
    """The protocol every system follows; ``status`` is "ok" or why it cannot run."""

    name = "system"
    label = "system"
    status = "ok"
    in_ram = False  # its cache lives in process memory (nothing on disk)

    def __init__(self, model_path: Path, root: Path) -> None:
        self.model_path = Path(model_path)
        self.root = Path(root)

    def folder(self, wl: Workload) -> Path:
        return self.root / self.name / wl.name

    def start(self, wl: Workload, *, n_cells: int) -> Prepared:
        """Get ready for a workload (compile, open caches). ``n_cells``: the largest prompt plus answer."""
        return Prepared(0.0)

    def ask(self, wl: Workload, q: Question, prompt: Prompt, *, max_tokens: int = 1,
            keep_logits: bool = False) -> Answer:
        raise NotImplementedError

    def cache_bytes(self, wl: Workload) -> int | None:
        """Bytes this system keeps for the workload (on disk, or in RAM when ``in_ram``); None: keeps nothing."""
        return dir_bytes(self.folder(wl))

    def process(self, wl: Workload, q: Question, prompt: Prompt) -> Command | None:
        """The command that answers ``q`` as one whole process (None: this system has none)."""
        return None

    def stop(self, wl: Workload) -> None:
        pass


class PcSystem(System):
    """`pc ask`, from the modular cache (``no_cache=False``) or prefilling everything."""

    def __init__(self, model_path: Path, root: Path, *, name: str, label: str, codec: str = "none",
                 no_cache: bool = False, source: PcSystem | None = None, kv_type: str = "f16") -> None:
        super().__init__(model_path, root)
        self.name, self.label, self.codec, self.no_cache = name, label, codec, no_cache
        self.kv_type = kv_type  # as `--kv-type`
        self.source = source  # another pc system whose files are re-encoded instead of recomputed
        self.session: Session | None = None

    def start(self, wl: Workload, *, n_cells: int) -> Prepared:
        self.session = open_session(self.model_path, cache_dir=self.folder(wl), mode="modular", compression=self.codec,
                                    kv_type=self.kv_type)
        if self.no_cache:
            return Prepared(0.0)
        t = time.perf_counter()
        if self.source is not None and self.source.session is not None:
            transcode(self.source.session, self.session, wl)
            return Prepared(time.perf_counter() - t, f"re-encoded from {self.source.name}'s files")
        self.session.compile(wl.schema())
        return Prepared(time.perf_counter() - t, "pc compile")

    def ask(self, wl: Workload, q: Question, prompt: Prompt, *, max_tokens: int = 1,
            keep_logits: bool = False) -> Answer:
        assert self.session is not None
        self.session.forget()  # the cost of loading the states: nothing reused from the question before
        r = self.session.ask(wl.request(q, max_tokens=max_tokens, no_cache=self.no_cache, keep_logits=keep_logits))
        return Answer(r.ttft_ms, r.total_ms, list(r.tokens), r.text, r.cached_tokens + r.computed_tokens,
                      r.first_logits)

    def cache_bytes(self, wl: Workload) -> int | None:
        return None if self.no_cache else dir_bytes(self.folder(wl))

    def process(self, wl: Workload, q: Question, prompt: Prompt) -> Command:
        argv = [*pc_command(), "ask", "-s", str(wl.schema_path)]
        argv += [a for m in q.modules for a in ("-m", m)] + [a for p in q.params for a in ("-p", p)]
        argv += ["-n", "1", "--json", "--no-timings", "--mode", "modular", "--compression", self.codec,
                 "--kv-type", self.kv_type]
        argv += ["--no-cache"] if self.no_cache else []
        argv += ["-"]  # the question on stdin, as any text
        return Command(argv, {"PC_CACHE_DIR": str(self.folder(wl)), "PC_MODEL": str(self.model_path)}, q.text)

    def stop(self, wl: Workload) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def transcode(src: Session, dst: Session, wl: Workload) -> None:
    """Write ``src``'s module files for the workload again with ``dst``'s codec: the same state
    blobs (computing them twice gives the same bytes), so a zstd cache costs no second prefill.
    ``dst.compile`` then finds every module present and records the schema's manifest."""
    schema = wl.schema()
    targets = dst.module_files(schema)
    split = dst.compression == "zstd" and dst.settings.type_k == dst.settings.type_v == "f16"  # as the compiler
    for name, path in src.module_files(schema).items():
        out = targets[name]
        if out.exists():
            continue
        f = cache_file.read(path)
        try:
            blobs = [np.array(f.blob(i)) for i in range(len(f.segments))]
            header = {k: v for k, v in f.header.items() if k not in ("format", "codec", "segments")}
            chunks = cache_file.encode(header, blobs, [s.tokens for s in f.segments], [s.offset for s in f.segments],
                                       codec=dst.compression, split_planes=split)
        finally:
            f.close()
        CacheStore(dst.cache_dir).write_atomic(out, chunks)
    dst.compile(schema)


class PrefixSystem(System):
    """`pc` prefix mode (``--mode prefix``)."""

    name = "pc-prefix"
    label = "pc prefix mode"

    def __init__(self, model_path: Path, root: Path) -> None:
        super().__init__(model_path, root)
        self.session: Session | None = None

    def start(self, wl: Workload, *, n_cells: int) -> Prepared:
        self.session = open_session(self.model_path, cache_dir=self.folder(wl), mode="prefix")
        t = time.perf_counter()
        self.session.compile(wl.schema())
        return Prepared(time.perf_counter() - t, "prefix compile")

    def ask(self, wl: Workload, q: Question, prompt: Prompt, *, max_tokens: int = 1,
            keep_logits: bool = False) -> Answer:
        assert self.session is not None
        r = self.session.ask(wl.request(q, max_tokens=max_tokens, keep_logits=keep_logits))
        return Answer(r.ttft_ms, r.total_ms, list(r.tokens), r.text, r.cached_tokens + r.computed_tokens,
                      r.first_logits)

    def process(self, wl: Workload, q: Question, prompt: Prompt) -> Command:
        argv = [*pc_command(), "ask", "-s", str(wl.schema_path)]
        argv += [a for m in q.modules for a in ("-m", m)] + [a for p in q.params for a in ("-p", p)]
        argv += ["-n", "1", "--json", "--no-timings", "--mode", "prefix", "-"]
        return Command(argv, {"PC_CACHE_DIR": str(self.folder(wl)), "PC_MODEL": str(self.model_path)}, q.text)

    def stop(self, wl: Workload) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

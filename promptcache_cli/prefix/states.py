"""Prefix-mode states on disk: one folder per prefilled prompt, one file per stored position.

``<cache>/prefix/<key[:2]>/<key>/<s>.pcm`` is the cache-file format with one segment holding
tokens ``0..s``; ``key`` hashes the model, llama.cpp version, settings, the model's memory kind and
the prompt's tokens. A state is checked before use: its header (key, model, settings, mode,
partial), its tokens and its blob by the strict reader (llama/state_blob.py): every section the
model's memory writes, every cell's position, the layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.results import ModuleReport
from ..core.runtime import Runtime
from ..errors import CacheFileError
from ..llama import state_blob
from ..llama.bindings import llama_cpp_version
from ..store import cache_file
from ..store.keys import module_key

if TYPE_CHECKING:
    from ..store.remote_tier import CacheObject


@dataclass(frozen=True)
class Checkpoint:
    position: int
    path: Path


class PrefixStates:
    def __init__(self, runtime: Runtime, *, codec: str) -> None:
        self.runtime = runtime
        self.codec = codec

    def key(self, tokens: list[int]) -> str:
        """The key of a prefilled prompt (its states' folder)."""
        rt = self.runtime
        layout = dict(rt.settings.state_layout(), mode="prefix", kind=rt.model.memory.name)
        return module_key(model=rt.fingerprint, llama_cpp=llama_cpp_version(), state_layout=layout,
                          segments=[(0, tuple(tokens), ((),))])

    def folder(self, key: str) -> Path:
        return self.runtime.store.root / "prefix" / key[:2] / key

    def stored(self, key: str) -> dict[int, Checkpoint]:
        """The states stored for a prompt, by position (none when its folder is missing; a folder
        that is a link raises CacheLinkError: links in the cache are never followed)."""
        try:
            entries = self.runtime.store.boundary.entries(self.folder(key))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return {int(e.path.stem): Checkpoint(int(e.path.stem), e.path) for e in entries
                if e.kind == "file" and e.path.suffix == ".pcm" and e.path.stem.isdigit()}

    def report(self, key: str, ck: Checkpoint, status: str, seconds: float) -> ModuleReport:
        size = self.runtime.store.size(ck.path)  # None: removed meanwhile
        return ModuleReport(f"prefix@{ck.position}", key, status, ck.position, size or 0, seconds)

    def write(self, key: str, tokens: list[int], blob: np.ndarray, *, partial: bool) -> Path:
        """Store the state of the prompt's first ``len(tokens)`` tokens."""
        rt = self.runtime
        pos = len(tokens)
        header = {"key": key, "module": f"prefix@{pos}", "model": rt.fingerprint,
                  "llama_cpp": llama_cpp_version(), "state_layout": rt.settings.state_layout(),
                  "mode": "prefix", "kind": rt.model.memory.name, "partial": partial, "created": time.time()}
        chunks = cache_file.encode(header, [blob], [tuple(tokens)], [0], codec=self.codec, split_planes=False)
        path = self.folder(key) / f"{pos}.pcm"
        rt.store.write_atomic(path, chunks)  # makes its folder
        return path

    def load(self, path: Path, key: str, tokens: list[int], *, partial: bool) -> np.ndarray:
        """A stored state, checked to be the one this request needs (a view of the memory-mapped
        file when stored raw, else decoded into the runtime's arena)."""
        self.runtime.store.touch(path)  # first: a gc that listed it sees the use and leaves it
        return self._read(path, key, tokens, partial=partial, arena=True)

    def check(self, path: Path, key: str, tokens: list[int], *, partial: bool) -> None:
        """What a state file must be before it is used (a download before it is put in place):
        :meth:`load`'s checks, every checksum included. Raises CacheFileError or BlobError."""
        self._read(path, key, tokens, partial=partial, arena=False)

    def cache_object(self, key: str, tokens: list[int], position: int) -> CacheObject:
        """The state at ``position`` of the prompt ``tokens`` as both tiers know it."""
        from ..store.remote import prefix_rel
        from ..store.remote_tier import CacheObject

        partial = self.runtime.model.memory.partial_checkpoints and position < len(tokens)
        return CacheObject(f"prefix@{position}", key, prefix_rel(key, position), self.folder(key) / f"{position}.pcm",
                           position, lambda path: self.check(path, key, tokens[:position], partial=partial))

    def _read(self, path: Path, key: str, tokens: list[int], *, partial: bool, arena: bool) -> np.ndarray:
        rt = self.runtime
        f = rt.store.read(path)
        try:
            rt.check_header(f.header, key)
            if f.header.get("mode") != "prefix":
                raise CacheFileError("its key does not match its name")
            if f.header.get("partial") is not partial:
                raise CacheFileError("it was made with other context settings")
            if len(f.segments) != 1 or list(f.segments[0].tokens) != tokens:
                raise CacheFileError("its tokens differ from the prompt's")
            rec = f.segments[0]
            blob = f.blob(0, None if rec.mapped or not arena else rt.arena.take(rec.raw_size))
            model = rt.model  # every section's structure, cells and layers checked
            sections = model.memory.state_sections(partial=partial, swa=model.n_swa > 0)
            info = state_blob.parse_state(blob, sections)
            state_blob.check_prefix_state(info, sections, n_tokens=len(tokens), n_layer=model.n_layer,
                                          window=model.n_swa, partial=partial)
            return blob
        finally:
            f.close()  # a memory map stays alive while a view of it does

"""Gathering the state blobs a prompt needs: read from module files (checked, and still being read
while the first ones are loaded), or computed first where a file is missing or damaged.

Module files are read on all cores: a file's header is checked when it is opened, each blob
(checksums, then what llama.cpp will see: shape, V layout, positions) when it is first needed, so
reading overlaps loading the blobs before it. Raw blobs are views of the memory-mapped file;
decoded ones live in the runtime's arena until the next question.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

import numpy as np

from ..core.results import ModuleReport, Progress
from ..core.runtime import Runtime
from ..errors import BlobError, CacheFileError, CacheFileMissing, CacheWriteError
from ..llama import state_blob
from ..llama.context import GGML_TYPES
from ..pml.schema import Schema
from ..prompt.layout import Layout, Path as ModPath
from ..prompt.plan import owner_name
from ..store import cache_file
from .catalog import Catalog
from .compiler import Compiler, Opened, Unstored

if TYPE_CHECKING:
    from ..store.remote_tier import CacheObject

FETCH_THREADS = 4  # downloads at once when an ask needs several modules from the remote store


class StateRead:
    """A stored segment state being read: :meth:`get` waits for it and checks it (once)."""

    def __init__(self, pending: cache_file.Pending, check: Callable[[np.ndarray], None]) -> None:
        self._pending, self._check = pending, check

    def get(self) -> np.ndarray:
        """The checked blob; raises CacheFileError or BlobError (again on every call) if it is damaged."""
        blob = self._pending.result()
        if self._check is not None:
            self._check(blob)
            self._check = None
        return blob


Blob = Union[np.ndarray, StateRead]  # a state computed now, or one being read from the cache
Blobs = dict[ModPath, dict[int, Blob]]  # by owner, then segment offset


def damaged(owner: ModPath, error: Exception) -> str:
    return f"cache file for module '{owner_name(owner)}' is damaged ({error}); recomputing it"


class Loader:
    def __init__(self, runtime: Runtime, catalog: Catalog, compiler: Compiler) -> None:
        self.runtime = runtime
        self.catalog = catalog
        self.compiler = compiler

    def gather(self, schema: Schema, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath],
               warnings: list[str], progress: Progress | None, *, redo: bool = False, wait: bool = False,
               downloaded: list[ModuleReport] | None = None) -> tuple[Blobs, list[ModuleReport], set[ModPath]]:
        """The owners' state blobs by segment offset, the modules compiled for them and which
        owners' blobs were computed now. Missing files are downloaded from the remote store when
        there is one (checked before they are put in place; reported in ``downloaded``); files
        still missing and files found damaged (every one, with ``redo``) are computed first and
        stored (and uploaded) when the cache can be written. Stored blobs are still being read and
        checked when this returns (a :class:`StateRead`), unless ``wait`` (then every blob is an
        array)."""
        blobs: Blobs = {}
        to_compile: list[ModPath] = []
        broken: list[ModPath] = []
        if self.runtime.remote is not None and not redo:
            missing = [o for o in owners if not self.runtime.store.exists(self.catalog.path(keys[o]))]
            if missing:
                got = self.fetch(schema, layout, keys, missing, warnings)
                if downloaded is not None:
                    downloaded += got
        for owner in owners:
            if redo:
                to_compile.append(owner)
                broken.append(owner)
                continue
            try:
                blobs[owner] = self.load(self.catalog.path(keys[owner]), keys[owner], layout, owner, wait=wait)
            except CacheFileMissing:  # never written, or removed since (gc, rm, another host): compute it
                to_compile.append(owner)
            except (CacheFileError, BlobError) as e:
                warnings.append(damaged(owner, e))
                to_compile.append(owner)
                broken.append(owner)
        if not to_compile:
            return blobs, [], set()
        why = None if redo else self.catalog.why_missing(schema)
        if why:
            warnings.append(f"the cache of schema '{schema.name}' was made with {why}; recomputing it for "
                            f"{self.runtime.model.description} with these settings")
        unstored = Unstored()
        opened: Opened = {}  # the files stored (or found stored) now, opened under their locks: gc may unlink them
        try:
            reports = self.compiler.compute(layout, keys, to_compile, redo=broken, progress=progress,
                                            unstored=unstored, opened=opened, bystanders=True)
            if downloaded is not None:  # computed meanwhile by another machine, and downloaded
                downloaded += [r for r in reports if r.status == "downloaded"]
            if self.runtime.remote is not None:
                self.compiler.publish_manifest(schema, layout, keys)
                warnings += self.runtime.remote.take_warnings()
            stored = [o for o in to_compile if o not in unstored.blobs]
            # modules computed on the way (bystanders) are stored too, and reported after the ones asked for
            compiled = [r for o, r in zip(to_compile, reports, strict=False) if r.status == "computed" and o in stored]
            compiled += [r for r in reports[len(to_compile):] if r.status == "computed" and r.bytes]
            if unstored.reason is None:
                try:
                    self.catalog.record(schema, layout, keys)
                except CacheWriteError as e:
                    unstored.reason = str(e)
            if unstored.reason is not None:  # one warning, however many writes failed
                warnings.append(f"{unstored.reason}; answering from states computed now, not stored")
            blobs.update(unstored.blobs)
            for owner in stored:  # a fresh file found damaged is an error (EXIT_CACHE), not recomputed again
                blobs[owner] = self.load_file(opened.pop(owner), keys[owner], layout, owner, wait=wait)
        finally:
            for f in opened.values():
                f.close()
        return blobs, compiled, set(to_compile)

    # -- the remote store ----------------------------------------------------------------
    def cache_object(self, layout: Layout, keys: dict[ModPath, str], owner: ModPath) -> CacheObject:
        """An owner's module file as both tiers know it, with the check a download must pass."""
        from ..store.remote import module_rel
        from ..store.remote_tier import CacheObject

        key = keys[owner]
        return CacheObject(owner_name(owner), key, module_rel(key), self.catalog.path(key), layout.tokens_of(owner),
                           lambda path: self.check_file(path, key, layout, owner))

    def check_file(self, path: Path, key: str, layout: Layout, owner: ModPath) -> None:
        """What a module file must be before it is used (a download before it is put in place):
        intact (every checksum), made for this key, model and settings, holding the owner's
        segments, each state one llama.cpp can take. Raises CacheFileError or BlobError."""
        f = self.runtime.store.read(path)  # through the cache's boundary: a link is not followed
        try:
            self.runtime.check_header(f.header, key)
            expected = [(s.offset, s.tokens) for s in layout.segments_of(owner)]
            if [(r.offset, r.tokens) for r in f.segments] != expected:
                raise CacheFileError("its tokens differ from the schema's")
            for i, rec in enumerate(f.segments):
                self.check_blob(f.blob(i), rec)
        finally:
            f.close()

    def fetch(self, schema: Schema, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath],
              warnings: list[str]) -> list[ModuleReport]:
        """Download the owners' files from the remote store (several at once), each checked before
        it is put in place; what the store lacks, holds damaged, or cannot give stays missing (and
        is computed by the caller). The store's warnings (one per outage) join ``warnings``."""
        from concurrent.futures import ThreadPoolExecutor

        tier = self.runtime.remote
        assert tier is not None

        store = self.runtime.store

        def one(owner: ModPath) -> tuple[ModPath, str, float]:
            t = time.perf_counter()
            obj = self.cache_object(layout, keys, owner)
            try:
                with store.locked(obj.key):  # written through the boundary, under the key's lock
                    status = "present" if store.exists(obj.path) else tier.fetch(obj, store)
            except CacheWriteError:  # no lock file can be made: a read-only cache
                status = "unwritable"
            return owner, status, time.perf_counter() - t

        if len(owners) == 1:
            results = [one(owners[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(owners)),
                                    thread_name_prefix="pc-fetch") as pool:
                results = list(pool.map(one, owners))
        got = []
        for owner, status, seconds in results:
            if status == "downloaded":
                size = self.runtime.store.size(self.catalog.path(keys[owner]))
                if size is not None:  # not removed meanwhile (else it is computed)
                    got.append(ModuleReport(owner_name(owner), keys[owner], "downloaded", layout.tokens_of(owner),
                                            size, seconds))
                    try:  # text prompts find its text too (a hint: the file is in place either way)
                        self.runtime.span_index.add(keys[owner], [s.tokens for s in layout.segments_of(owner)])
                    except CacheWriteError:
                        pass
        if any(status == "missing" for _, status, _ in results):
            from ..core.sharing import remote_mismatch

            rel, _ = self.catalog.remote_manifest(schema, layout, keys)
            why = remote_mismatch(tier, schema.name, self.catalog.variant, rel)
            if why:
                warnings.append(f"remote {tier} holds schema '{schema.name}' only with {why}; computing it here")
        if got:
            try:
                self.catalog.record(schema, layout, keys)
            except CacheWriteError:
                pass
        warnings += tier.take_warnings()
        return got

    def load(self, path: Path, key: str, layout: Layout, owner: ModPath, *, wait: bool = False) -> dict[int, Blob]:
        """A module file's state blobs by segment offset in the layout, being read on all cores
        (every one read and checked before this returns, with ``wait``). Raises CacheFileMissing
        when the file is not there."""
        store = self.runtime.store
        store.touch(path)  # first: a gc that listed it sees the use and leaves it (admin.remove_file)
        return self.load_file(store.read(path), key, layout, owner, wait=wait)

    def load_file(self, f: cache_file.CacheFile, key: str, layout: Layout, owner: ModPath, *,
                  wait: bool = False) -> dict[int, Blob]:
        """:meth:`load` of a file opened already (closed here)."""
        try:
            self.runtime.check_header(f.header, key)
            segs = layout.segments_of(owner)
            at = self.catalog.stored_at(layout)
            expected = [(at[owner, s.offset], s.tokens) for s in segs]
            if [(r.offset, r.tokens) for r in f.segments] != expected:
                raise CacheFileError("its tokens differ from the schema's")
            out: dict[int, Blob] = {}
            arena = self.runtime.arena
            for i, (seg, rec) in enumerate(zip(segs, f.segments, strict=True)):
                pending = self.runtime.reading(f.start_blob(i, None if rec.mapped else arena.take(rec.raw_size)))
                out[seg.offset] = StateRead(pending, lambda blob, rec=rec: self.check_blob(blob, rec))
            return {at: read.get() for at, read in out.items()} if wait else out
        finally:
            f.close()  # a memory map stays alive while a view of it does (a read in progress holds one)

    def check_blob(self, blob: np.ndarray, rec: cache_file.SegmentRecord) -> None:
        check_blob(self.runtime, blob, rec)


def check_blob(runtime: Runtime, blob: np.ndarray, rec: cache_file.SegmentRecord) -> None:
    """Raises BlobError unless ``blob`` is a state llama.cpp can take for this segment record (its
    cells at the positions the record says it is stored at)."""
    settings, model = runtime.settings, runtime.model
    info = state_blob.parse(blob)
    k, v = GGML_TYPES[settings.type_k], GGML_TYPES[settings.type_v]
    if info.n_layer != model.n_layer or set(info.k_types) != {k} or set(info.v_types) != {v}:
        raise BlobError("its state has another shape than this model's")
    if info.v_trans == settings.flash_attn:
        raise BlobError("its V layout does not match the flash-attention setting")
    if not np.array_equal(np.sort(info.positions), np.arange(rec.offset, rec.offset + len(rec.tokens))):
        raise BlobError("its cell positions differ from the schema's")

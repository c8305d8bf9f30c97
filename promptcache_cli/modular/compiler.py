"""Computing modules' states and writing their files.

A segment is computed after its context, from position 0: its states are stored at the position
right after the context (:func:`..prompt.contexts.computed_at`) and moved to wherever a prompt puts
them when loaded. Segments are computed in layout order whatever their owner, so the running
sequence only grows along the default prompt (:func:`extend` keeps what it shares with the next
context). With the ``average`` encoding a segment's state is the mean of the states computed after
each of its contexts, each context ending right before the segment. Each owner's file is written as
soon as its last segment is done, under its lock.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Collection, Iterator

import numpy as np

from ..core.results import ModuleReport, Progress
from ..core.runtime import Runtime
from ..errors import CacheFileError, CacheFileMissing, CacheWriteError
from ..llama import state_blob
from ..llama.context import Context
from ..prompt.contexts import contexts
from ..prompt.layout import Layout, Path as ModPath, Segment
from ..prompt.plan import owner_name
from ..store import cache_file
from ..store.span_index import context_record
from .catalog import Catalog

if TYPE_CHECKING:
    from ..store.remote_tier import CacheObject

Job = tuple[Segment, tuple[tuple[int, ...], ...]]  # a segment and the contexts it is computed after
Opened = dict[ModPath, cache_file.CacheFile]  # files an ask holds open: its lease on them


@dataclass
class Unstored:
    """What an ask computed but could not store (a read-only or full cache): the first reason,
    and the states by owner and segment offset, to answer from anyway."""

    reason: str | None = None
    blobs: dict[ModPath, dict[int, np.ndarray]] = field(default_factory=dict)


class Compiler:
    def __init__(self, runtime: Runtime, catalog: Catalog) -> None:
        self.runtime = runtime
        self.catalog = catalog
        # an owner's file as the remote store knows it, with its check (set by the session: loader.py)
        self.cache_object: Callable[[Layout, dict[ModPath, str], ModPath], CacheObject] | None = None

    @property
    def _split_planes(self) -> bool:
        """Byte planes pay only when the high bytes get compressed: f16 states with zstd."""
        s = self.runtime.settings
        return self.catalog.codec == "zstd" and s.type_k == s.type_v == "f16"

    def compute(self, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath], *,
                redo: Collection[ModPath] = (), progress: Progress | None,
                unstored: Unstored | None = None, opened: Opened | None = None,
                bystanders: bool = False) -> list[ModuleReport]:
        """Compute the owners' segments and write one file per owner; one report per owner, in
        order, then (``bystanders``) one per module computed on the way (:meth:`bystanders`).

        The owners' locks are held throughout; an owner another process finished while we waited
        for its lock is reused, not recomputed, unless it is in ``redo`` (forced, or found
        damaged). The old file stays in place until the new one replaces it.

        A cache that cannot be written raises CacheWriteError, unless ``unstored`` is given (an
        ask): then the reason and the states not stored go there, and computing goes on.

        ``opened`` (an ask): every owner's file stored or reused is opened here, under its lock,
        and left open there: the ask's lease on it. A `pc gc` or `pc rm` may remove its name the
        moment the lock is released; the open file lives on until the answer is done with it.
        """
        store = self.runtime.store
        at = self.catalog.stored_at(layout)
        self.runtime.check_fits(max((at[o, s.offset] + len(s.tokens) for o in owners for s in layout.segments_of(o)),
                                    default=0) + 1)  # before any lock file is made
        extra = self.bystanders(layout, keys, owners) if bystanders else []
        with contextlib.ExitStack() as locks:
            try:
                for key in sorted({keys[o] for o in owners + extra}):  # owners may share a file (one text, one context)
                    locks.enter_context(store.locked(key))
            except CacheWriteError as e:
                if unstored is None:
                    raise
                locks.close()  # no lock file can be made: nothing will be written, compute everything here
                unstored.reason = str(e)
                extra = []
            reports = {}
            for o in owners + extra:  # a module computed on the way is not needed: not held open
                if o not in redo and (report := self._reuse(layout, keys, o, opened if o in owners else None)):
                    reports[o] = report
            extra = [o for o in extra if o not in reports]  # another process stored it meanwhile
            first: dict[str, ModPath] = {}
            for o in owners + extra:
                if o not in reports:
                    first.setdefault(keys[o], o)
            todo = list(first.values())  # owners sharing a file (one text after one context): computed once
            theirs: list[ModPath] = []
            if self.runtime.remote is not None and todo and (unstored is None or unstored.reason is None):
                todo, theirs = self._claim(keys, todo, redo)
            try:  # ours first; then what other machines compute meanwhile (never waiting while holding a lease)
                self._compute_owners(layout, keys, todo, progress, unstored, reports, opened)
            finally:
                self._release(keys, todo)
            for o in theirs:
                self._wait_for(layout, keys, o, reports, opened)
            self._compute_owners(layout, keys, [o for o in theirs if o not in reports], progress, unstored, reports,
                                 opened)
            for o in owners + extra:  # an owner sharing its file with one computed just now: that file serves it
                if o in reports:
                    continue
                src = first[keys[o]]
                if unstored is not None and src in unstored.blobs:
                    got = unstored.blobs[src]
                    unstored.blobs[o] = {s.offset: got[t.offset] for s, t in
                                         zip(layout.segments_of(o), layout.segments_of(src), strict=True)}
                reports[o] = (self._reuse(layout, keys, o, opened if o in owners else None)
                              or ModuleReport(owner_name(o), keys[o], "computed", layout.tokens_of(o), 0, 0.0))
        return [reports[o] for o in owners + extra]

    def bystanders(self, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath]) -> list[ModPath]:
        """Modules not asked for, not cached, whose states computing ``owners`` computes anyway:
        every segment of theirs lies inside the context some owner's segment is computed after, at
        the position it is stored at and after exactly its own context (with the ``scaffold``
        encoding, a module before the last one asked for, up to the last text of the schema's own).
        Storing them costs a copy and a write, no computation."""
        if self.catalog.encoding == "average":  # a mean over several contexts is never computed on the way
            return []
        at = self.catalog.stored_at(layout)
        spans = []  # (start position, tokens) of every context computed
        for o in owners:
            for seg in layout.segments_of(o):
                (c,) = contexts(layout, seg, self.catalog.encoding)
                spans.append((at[o, seg.offset] - len(c), c))
        found = []
        for o in layout.owners():
            if o in owners or self.runtime.store.exists(self.catalog.path(keys[o])):
                continue
            segs = layout.segments_of(o)
            if all(_inside(seg, at[o, seg.offset], contexts(layout, seg, self.catalog.encoding), spans)
                   for seg in segs):
                found.append(o)
        return found

    def _reuse(self, layout: Layout, keys: dict[ModPath, str], owner: ModPath, opened: Opened | None,
               ) -> ModuleReport | None:
        """The report of an owner whose file is there (opened into ``opened`` when given), or None."""
        store = self.runtime.store
        path = store.module_path(keys[owner])
        if opened is None:
            size = store.size(path)
            return None if size is None else self.catalog.reused(layout, keys, owner, size)
        try:
            f = store.read(path)
        except CacheFileError:  # missing, or its header damaged: computed and written over
            return None
        opened[owner] = f
        return self.catalog.reused(layout, keys, owner, f.size)

    def _compute_owners(self, layout: Layout, keys: dict[ModPath, str], todo: list[ModPath],
                        progress: Progress | None, unstored: Unstored | None,
                        reports: dict[ModPath, ModuleReport], opened: Opened | None = None) -> None:
        jobs = sorted(
            ((seg, contexts(layout, seg, self.catalog.encoding)) for o in todo for seg in layout.segments_of(o)),
            key=lambda job: job[0].offset,
        )
        if jobs:
            reports.update(self._compute_jobs(layout, keys, jobs, progress, unstored, opened))

    def _claim(self, keys: dict[ModPath, str], todo: list[ModPath],
               redo: Collection[ModPath]) -> tuple[list[ModPath], list[ModPath]]:
        """Take the remote store's lease on computing each owner: (the owners this session
        computes, those another machine is computing now)."""
        from ..store.remote import module_rel

        tier = self.runtime.remote
        assert tier is not None
        ours, theirs = [], []
        for o in todo:
            (ours if o in redo or tier.claim(module_rel(keys[o])) else theirs).append(o)
        return ours, theirs

    def _wait_for(self, layout: Layout, keys: dict[ModPath, str], owner: ModPath,
                  reports: dict[ModPath, ModuleReport], opened: Opened | None = None) -> None:
        """Wait for another machine's upload of ``owner`` and download it (into ``reports`` as
        ``downloaded``, opened into ``opened`` when given: under the owner's lock, held by
        :meth:`compute`); left out when its lease ends without an upload."""
        from ..store.remote import module_rel

        tier = self.runtime.remote
        assert tier is not None
        t = time.perf_counter()
        if tier.wait_for(module_rel(keys[owner])) and self.cache_object is not None:
            obj = self.cache_object(layout, keys, owner)
            if tier.fetch(obj, self.runtime.store) != "downloaded":
                return
            store = self.runtime.store
            if opened is None:
                size = store.size(obj.path)
            else:
                try:
                    f = store.read(obj.path)
                except CacheFileError:  # removed meanwhile by someone who ignores the lock: computed here
                    return
                opened[owner] = f
                size = f.size
            if size is not None:
                reports[owner] = ModuleReport(owner_name(owner), keys[owner], "downloaded", layout.tokens_of(owner),
                                              size, time.perf_counter() - t)

    def _release(self, keys: dict[ModPath, str], owners: list[ModPath]) -> None:
        if owners and self.runtime.remote is not None:
            from ..store.remote import module_rel

            for o in owners:
                self.runtime.remote.release(module_rel(keys[o]))

    def _store(self, layout: Layout, keys: dict[ModPath, str], owner: ModPath, blobs: list[np.ndarray],
               unstored: Unstored | None, opened: Opened | None = None) -> tuple[int, bool]:
        """Write an owner's file (and open it into ``opened``, under its lock), and upload it when
        there is a remote store; returns its size (0 when the states went to ``unstored``) and
        whether it was uploaded."""
        segs = layout.segments_of(owner)
        store = self.runtime.store
        at = self.catalog.stored_at(layout)
        if unstored is None or unstored.reason is None:
            header = self.catalog.header(layout, owner, keys[owner])
            header["segment_contexts"] = [_context_record(contexts(layout, s, self.catalog.encoding)) for s in segs]
            chunks = cache_file.encode(header, blobs, [s.tokens for s in segs], [at[owner, s.offset] for s in segs],
                                       codec=self.catalog.codec, split_planes=self._split_planes)
            path = store.module_path(keys[owner])
            try:
                n = store.write_atomic(path, chunks)
            except CacheWriteError as e:
                if unstored is None:
                    raise
                unstored.reason = str(e)
            else:
                try:  # so that text prompts find the module's text (a hint: the module is stored either way)
                    self.runtime.span_index.add(keys[owner], [s.tokens for s in segs])
                except CacheWriteError:
                    pass
                if opened is None:
                    return n, self.publish(keys[owner], path)
                try:  # a fresh file found damaged here is an error (EXIT_CACHE), not computed again
                    opened[owner] = store.read(path)
                except CacheFileMissing:  # removed by someone who ignores the lock: answer from memory
                    if unstored is None:
                        raise
                else:
                    return n, self.publish(keys[owner], path)
        assert unstored is not None
        unstored.blobs[owner] = {s.offset: b for s, b in zip(segs, blobs, strict=True)}
        return 0, False

    def publish(self, key: str, path) -> bool:
        """Upload a module file to the remote store, if there is one (failures are the store's
        warnings); whether it was uploaded now."""
        tier = self.runtime.remote
        if tier is None:
            return False
        from ..store.remote import module_rel

        return tier.publish(module_rel(key), path, self.runtime.store) == "uploaded"

    def publish_manifest(self, schema, layout: Layout, keys: dict[ModPath, str]) -> None:
        """The schema's manifest in the remote store (what `pc ls --remote` lists)."""
        tier = self.runtime.remote
        if tier is not None:
            tier.publish_manifest(*self.catalog.remote_manifest(schema, layout, keys))

    def _compute_jobs(self, layout: Layout, keys: dict[ModPath, str], jobs: list[Job], progress: Progress | None,
                      unstored: Unstored | None = None, opened: Opened | None = None) -> dict[ModPath, ModuleReport]:
        left = Counter(seg.owner for seg, _ in jobs)
        blobs: dict[ModPath, dict[int, np.ndarray]] = {o: {} for o in left}
        seconds: Counter = Counter()
        reports = {}
        t = time.perf_counter()
        for seg, blob in self.module_states(layout, jobs, progress):
            blobs[seg.owner][seg.offset] = blob
            left[seg.owner] -= 1
            nbytes, uploaded = 0, False
            if left[seg.owner] == 0:  # the owner's last segment: write its file now (and upload it)
                done = blobs.pop(seg.owner)
                nbytes, uploaded = self._store(layout, keys, seg.owner, [done[at] for at in sorted(done)], unstored,
                                               opened)
            seconds[seg.owner] += time.perf_counter() - t
            t = time.perf_counter()
            if left[seg.owner] == 0:
                reports[seg.owner] = ModuleReport(owner_name(seg.owner), keys[seg.owner], "computed",
                                                  layout.tokens_of(seg.owner), nbytes, seconds[seg.owner], uploaded)
        return reports

    def module_states(self, layout: Layout, jobs: list[Job],
                      progress: Progress | None) -> Iterator[tuple[Segment, np.ndarray]]:
        """Each job's segment state (jobs in position order, each with its contexts, as
        :func:`..prompt.contexts.contexts` gives them): computed after its one context, or the mean
        of the states computed after each of its contexts (the ``average`` encoding: every K and V
        value summed in float32, divided, rounded to f16). Segments with one context come in
        position order. With several, the token sequences (context, then segment) are computed in
        sorted order: a walk of their prefix tree, so a text shared by many sequences is decoded
        about once; the sums of every segment not yet complete are held meanwhile (in float32:
        twice their states)."""
        at = self.catalog.stored_at(layout)  # after its contexts (static positions: at its layout offset)
        flat = [(seg, c, at[seg.owner, seg.offset]) for seg, cs in jobs for c in cs]
        if len(flat) > len(jobs):
            flat.sort(key=lambda job: job[1] + job[0].tokens)
        count = {(seg.owner, seg.offset): len(cs) for seg, cs in jobs}
        left = dict(count)
        sums: dict[tuple[ModPath, int], tuple[np.ndarray, list[np.ndarray]]] = {}
        for seg, blob in self.segment_states(layout, flat, progress):
            key = (seg.owner, seg.offset)
            left[key] -= 1
            if key not in sums and not left[key]:  # one context
                yield seg, blob
                continue
            n_cells, payloads = state_blob.kv_payloads(blob)
            views = [blob[at : at + 2 * n_embd * n_cells].view(np.float16) for _, at, n_embd, _ in payloads]
            if key not in sums:
                sums[key] = (blob, [v.astype(np.float32) for v in views])
            else:
                for total, v in zip(sums[key][1], views, strict=True):
                    total += v
            if not left[key]:
                first, totals = sums.pop(key)
                for (_, at, n_embd, _), total in zip(payloads, totals, strict=True):
                    mean = total / np.float32(count[key])
                    first[at : at + 2 * n_embd * n_cells] = mean.astype(np.float16).view(np.uint8)
                yield seg, first

    def segment_states(self, layout: Layout, jobs: list[tuple[Segment, tuple[int, ...], int]],
                       progress: Progress | None, label: str = "") -> Iterator[tuple[Segment, np.ndarray]]:
        """Each job's segment state, computed after its context tokens at the job's position (the
        context ending right before it; jobs in layout order, so the running sequence only grows
        where contexts share a prefix); the context is cleared at the end."""
        total = decode_count([(at - len(c), list(c) + list(s.tokens)) for s, c, at in jobs])
        ctx = self.runtime.context(max(at + len(s.tokens) for s, _, at in jobs) + 1)
        done = 0
        if progress and jobs:  # computing starts now (the first report comes after a batch otherwise)
            progress(0, total, owner_name(jobs[0][0].owner) + label)
        running: tuple[int, list[int]] = (0, [])  # what seq 0 holds: (start position, tokens)
        for seg, context, at in jobs:
            def tick(n: int, _name=owner_name(seg.owner) + label) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total, _name)

            running = extend(ctx, running, at - len(context), list(context) + list(seg.tokens), tick)
            ctx.seq_cp(0, 1, at, at + len(seg.tokens))
            blob = ctx.save_state(1)
            ctx.seq_rm(1)
            yield seg, blob
        ctx.clear()


def _inside(seg: Segment, stored_at: int, ctxs: tuple[tuple[int, ...], ...],
            spans: list[tuple[int, tuple[int, ...]]]) -> bool:
    """Whether a computed context holds ``seg`` at the position it is stored at, after exactly its
    one context."""
    if len(ctxs) != 1:
        return False
    own = ctxs[0] + seg.tokens
    for start, c in spans:
        if stored_at - len(ctxs[0]) == start and len(c) >= len(own) and tuple(c[: len(own)]) == own:
            return True
    return False


def _kept(running: tuple[int, list[int]], start: int, tokens: list[int]) -> int:
    """How many of ``tokens`` (at ``start``) the running sequence already holds (:func:`extend`)."""
    cur_start, cur = running
    keep = 0
    if cur_start == start:
        n = min(len(cur), len(tokens))
        if n:  # the shared prefix, compared in numpy: each segment's context holds every token before it
            diff = np.flatnonzero(np.asarray(cur[:n], dtype=np.int64) != np.asarray(tokens[:n], dtype=np.int64))
            keep = int(diff[0]) if len(diff) else n
    if keep == len(tokens) and keep > 0:  # nothing new; recompute the last token to stay simple
        keep -= 1
    return keep


def decode_count(runs: list[tuple[int, list[int]]]) -> int:
    """The tokens :func:`extend` decodes for these (start, tokens) runs in turn: a progress total."""
    running: tuple[int, list[int]] = (0, [])
    n = 0
    for start, tokens in runs:
        n += len(tokens) - _kept(running, start, tokens)
        running = (start, tokens)
    return n


def extend(ctx: Context, running: tuple[int, list[int]], start: int, tokens: list[int],
           tick: Callable[[int], None]) -> tuple[int, list[int]]:
    """Make seq 0 hold exactly ``tokens`` at positions ``start...``, reusing what it holds."""
    keep = _kept(running, start, tokens)
    if keep == 0:
        ctx.seq_rm(0)
    else:
        ctx.seq_rm(0, start + keep, -1)
    ctx.decode(tokens[keep:], start=start + keep, progress=tick)
    return start, tokens


def _context_record(cs: tuple[tuple[int, ...], ...]) -> dict:
    """What a file records of a segment's contexts (text prompts choose among files by it): the one
    context's length, hash and last tokens, or how many contexts were averaged."""
    return {"averaged": len(cs)} if len(cs) > 1 else context_record(cs[0])

"""Answering any prompt from whatever the cache holds: no schema, cached text found where it stands.

A prompt (a chat's messages rendered by the model's template, ``pc ask --text FILE``) is looked up
in the span index (store/span_index.py): every run of its tokens equal to a stored segment's tokens
(a compiled module's text, a span learned from an earlier prompt) is found wherever it stands
(prompt/recognize.py), its states are loaded from their file and moved to that place
(stitch.place), and the rest is computed fresh. With ``repair`` the first tokens of every run
placed after other text than it was computed after are computed afresh too, in line; ``refresh``
recomputes a fraction of the cached tokens (stored scores where every run has them, else the
first tokens of each run).

*Learning* (``learn``): after answering, the runs of message text computed fresh, cut at paragraph
breaks into spans (prompt/text.py), are stored with the states this prompt gave them (their
context: the prompt before them) and indexed, so their next appearance anywhere is found. With a
RAM budget (a resident server) new spans are kept in RAM first, least recently used dropped beyond
it, and written to disk when they recur; without one (a `pc ask`) they go to disk at once. Disk use
is bounded by `pc gc`, which also drops index records of files it evicts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Collection, Sequence

import numpy as np
import xxhash

from ..core.answer import Prefilled
from ..core.results import SpanUse
from ..core.runtime import Runtime
from ..errors import BlobError, CacheFileError, CacheWriteError, StateRefused
from ..llama.bindings import llama_cpp_version
from ..llama.context import Context
from ..prompt import recognize
from ..prompt.text import learn_cuts
from ..store import cache_file, span_index
from ..store.span_index import context_record
from ..store.keys import module_key
from .loader import Blob, StateRead, check_blob
from .refresh import RECOMPUTE_SEQUENCES, choose
from .stitch import place, ready

LEARNED = "learned"  # the name learned spans go by (answers' spans, file headers' schema)


@dataclass
class Source:
    """A stored segment a prompt's run can be served from."""

    key: str
    name: str
    stored: int  # position its first token's state is stored at
    tokens: tuple[int, ...]
    context: dict | None  # context_record of its one context (None: several, or not recorded)
    origin: str | None  # the prompt it was learned from (spans of one prompt continue each other)
    rank: tuple[float, ...] | None = None  # selective-recompute scores
    blob: Blob | None = None  # a RAM span's state, or a file's being read

    def exact_at(self, start: int, seg_start: int, prompt: Sequence[int]) -> bool:
        """Its states were computed after exactly the prompt's tokens before ``start``, there."""
        c = self.context
        if seg_start or c is None or c.get("length") != start or self.stored != start:
            return False
        return xxhash.xxh3_64_hexdigest(np.asarray(prompt[:start], dtype="<i4").tobytes()) == c.get("xxh3")


@dataclass
class RamSpan:
    source: Source
    blob: np.ndarray
    header: dict
    chunks: list[tuple[int, int]]  # (offset, hash) indexed

    @property
    def nbytes(self) -> int:
        return int(self.blob.nbytes)


class RamSpans:
    """Learned spans kept in RAM within ``capacity`` bytes, least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._spans: OrderedDict[str, RamSpan] = OrderedDict()
        self._by_hash: dict[int, list[span_index.Entry]] = {}
        self.bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._spans

    def __len__(self) -> int:
        return len(self._spans)

    def get(self, key: str) -> RamSpan | None:
        span = self._spans.get(key)
        if span is not None:
            self._spans.move_to_end(key)
        return span

    def put(self, span: RamSpan) -> None:
        if span.nbytes > self.capacity or span.source.key in self._spans:
            return
        self._spans[span.source.key] = span
        self.bytes += span.nbytes
        for at, h in span.chunks:
            self._by_hash.setdefault(h, []).append(span_index.Entry(span.source.key, 0, at))
        while self.bytes > self.capacity:
            self.drop(next(iter(self._spans)))

    def drop(self, key: str) -> None:
        span = self._spans.pop(key, None)
        if span is None:
            return
        self.bytes -= span.nbytes
        for _, h in span.chunks:
            left = [e for e in self._by_hash.get(h, []) if e.key != key]
            if left:
                self._by_hash[h] = left
            else:
                self._by_hash.pop(h, None)

    def lookup(self, hashes: np.ndarray) -> list[tuple[int, span_index.Entry]]:
        if not self._by_hash:
            return []
        out = []
        for i, h in enumerate(hashes.tolist()):
            for e in self._by_hash.get(h, ()):
                out.append((i, e))
        return out


@dataclass
class Part:
    start: int
    end: int
    match: recognize.Match | None = None  # None: computed fresh
    source: Source | None = None
    exact: bool = False
    continues: bool = False  # continues the cached part before it (spans learned together from one prompt)


@dataclass
class TextPlan:
    """What a text prompt was made of, for learning after the answer."""

    tokens: tuple[int, ...]
    contents: tuple[tuple[int, int], ...]
    parts: list[Part] = field(default_factory=list)


class TextEngine:
    def __init__(self, runtime: Runtime, *, codec: str = "none", ram_bytes: int = 0) -> None:
        self.runtime = runtime
        self.codec = codec
        self.ram = RamSpans(ram_bytes)
        self._headers: dict[str, tuple[dict, list[cache_file.SegmentRecord]] | None] = {}

    @property
    def index(self) -> span_index.SpanIndex:
        return self.runtime.span_index

    # -- finding ----------------------------------------------------------------------------------
    def _file(self, key: str) -> tuple[dict, list[cache_file.SegmentRecord]] | None:
        """A file's checked header and segment records (None: missing, damaged or not for this model
        and settings); read once per key (a key names its content)."""
        if key not in self._headers:
            path = self.runtime.store.module_path(key)
            try:
                f = self.runtime.store.read(path)
            except (CacheFileError, CacheWriteError, OSError):  # CacheWriteError: a link in its place
                return None  # (not remembered: it may be written later)
            try:
                self.runtime.check_header(f.header, key)
                self._headers[key] = (f.header, list(f.segments))
            except CacheFileError:
                self._headers[key] = None
            finally:
                f.close()
        return self._headers[key]

    def _tokens_of(self, key: str, segment: int) -> Sequence[int] | None:
        span = self.ram.get(key)
        if span is not None:
            return span.source.tokens if segment == 0 else None
        got = self._file(key)
        if got is None or segment >= len(got[1]):
            return None
        return got[1][segment].tokens

    def _source(self, key: str, segment: int) -> Source | None:
        span = self.ram.get(key)
        if span is not None:
            return Source(**{**span.source.__dict__, "blob": span.blob})
        got = self._file(key)
        if got is None:
            return None
        header, records = got
        rec = records[segment]
        contexts = header.get("segment_contexts")
        ctx = contexts[segment] if isinstance(contexts, list) and segment < len(contexts) else None
        name = LEARNED if header.get("schema") == LEARNED else f"{header.get('schema')}/{header.get('module')}"
        return Source(key, name, rec.offset, rec.tokens, ctx if isinstance(ctx, dict) else None,
                      header.get("origin") if isinstance(header.get("origin"), str) else None,
                      rec.rank[1] if rec.rank else None)

    def _prefer(self, prompt: Sequence[int]) -> Callable[[recognize.Match], float]:
        """Among files holding one text: the one whose context ends as the prompt does before it."""
        def score(m: recognize.Match) -> float:
            src = self._source(m.key, m.segment)
            if src is None or m.seg_start or not src.context:
                return 0.0
            tail = src.context.get("tail") or []
            n = 0
            while n < len(tail) and n < m.start and tail[-1 - n] == prompt[m.start - 1 - n]:
                n += 1
            return n + (1000 if src.exact_at(m.start, m.seg_start, prompt) else 0)
        return score

    def find(self, tokens: Sequence[int]) -> list[recognize.Match]:
        """The cached runs of ``tokens`` (never its last token: its logits are computed)."""
        hashes = span_index.window_hashes(tokens)
        hits = self.index.lookup(hashes) + self.ram.lookup(hashes)
        found = recognize.find(tokens, hits, self._tokens_of, prefer=self._prefer(tokens))
        last = len(tokens) - 1
        out = []
        for m in found:
            if m.end > last:
                m = recognize.Match(m.key, m.segment, m.seg_start, m.start, last - m.start)
            if m.length >= recognize.MIN_MATCH:
                out.append(m)
        return out

    # -- answering --------------------------------------------------------------------------------
    def plan(self, tokens: Sequence[int], contents: Sequence[tuple[int, int]], *,
             exclude: Collection[str] = ()) -> TextPlan:
        """The prompt's cached runs (files in ``exclude`` left out) and fresh runs, in order."""
        plan = TextPlan(tuple(tokens), tuple(contents))
        at = 0
        prev: Part | None = None
        for m in self.find(tokens):
            if m.key in exclude:
                continue
            src = self._source(m.key, m.segment)
            if src is None:
                continue
            if m.start > at:
                plan.parts.append(Part(at, m.start))
            part = Part(m.start, m.end, m, src, src.exact_at(m.start, m.seg_start, tokens))
            if prev is not None and prev.match is not None and prev.end == m.start:
                part.continues = _continues(prev, part)
            plan.parts.append(part)
            prev = part
            at = m.end
        plan.parts.append(Part(at, len(tokens)))
        return plan

    def prefill(self, tokens: Sequence[int], contents: Sequence[tuple[int, int]], *, max_tokens: int,
                repair: int = 0, refresh: float = 0.0) -> tuple[Prefilled, TextPlan]:
        """A context holding the prompt, its last token's logits ready: cached runs loaded and moved,
        the rest computed. Files found damaged or refused are left out (their text computed) with
        a warning."""
        rt = self.runtime
        rt.check_fits(len(tokens) + max_tokens)
        warnings: list[str] = []
        bad: set[str] = set()
        while True:
            rt.reset_arena()
            plan = self.plan(tokens, contents, exclude=bad)
            try:
                return self._fill(plan, max_tokens, repair, refresh, warnings), plan
            except _Unusable as e:
                bad.add(e.key)
                warnings.append(e.message)

    def _fill(self, plan: TextPlan, max_tokens: int, repair: int, refresh: float,
              warnings: list[str]) -> Prefilled:
        rt = self.runtime
        tokens = plan.tokens
        cached_parts = [p for p in plan.parts if p.match is not None]
        self._start_reads(cached_parts)
        heads = {id(p): min(repair, p.end - p.start) for p in cached_parts if not p.exact and not p.continues}
        if not repair:
            heads = {}
        stale = [p for p in cached_parts if not p.exact]
        n_cached = sum(p.end - p.start for p in cached_parts)
        n_refresh = min(round(refresh * n_cached), sum(p.end - p.start - heads.get(id(p), 0) for p in stale))
        extra = max((len(p.source.tokens) - (p.end - p.start) + heads.get(id(p), 0) for p in cached_parts
                     if p.source is not None), default=0)
        n_cells = len(tokens) + max_tokens + extra + (min(n_refresh, RECOMPUTE_SEQUENCES - 2) if n_refresh else 0)
        ctx = rt.context(min(n_cells, rt.model.n_ctx_train), n_seq=RECOMPUTE_SEQUENCES if n_refresh else Context.N_SEQ)
        repaired = 0
        last = plan.parts[-1]
        for p in plan.parts[:-1]:
            if p.match is None:
                ctx.decode(list(tokens[p.start:p.end]), start=p.start)
                continue
            src = p.source
            assert src is not None
            try:
                blob = ready(src.blob)
            except (CacheFileError, BlobError, OSError) as e:
                ctx.clear()
                raise _Unusable(src.key, f"cache file {src.key} ({src.name}) is damaged ({e}); computing its text "
                                         "afresh") from None
            first = heads.get(id(p), 0)
            whole = p.match.seg_start == 0 and p.end - p.start == len(src.tokens)
            try:
                place(ctx, blob, stored=src.stored + p.match.seg_start, at=p.start, tokens=tokens[p.start:p.end],
                      first=first, whole=whole)
            except StateRefused:
                ctx.clear()
                raise _Unusable(src.key, f"llama.cpp refused the cached state of {src.name} ({src.key}); "
                                         "computing its text afresh") from None
            repaired += first
        refreshed = 0
        if n_refresh:
            candidates = []
            scored = all(p.source is not None and p.source.rank is not None for p in stale)
            run_at = 0
            for p in cached_parts:
                run_at = run_at if p.continues else p.start
                if p.exact:
                    continue
                skip = heads.get(id(p), 0)
                assert p.match is not None and p.source is not None
                if scored:
                    assert p.source.rank is not None
                    s = p.source.rank[p.match.seg_start + skip:p.match.seg_start + p.end - p.start]
                else:  # no stored scores: a run's first tokens first (the ones its context changes most)
                    s = tuple(1.0 / (1 + p.start + skip - run_at + j) for j in range(p.end - p.start - skip))
                candidates.append((p.start + skip, tokens[p.start + skip:p.end], s))
            chosen, positions = choose(candidates, n_refresh)
            ctx.recompute(chosen, positions)
            refreshed = len(chosen)
        ctx.decode(list(tokens[last.start:last.end]), start=last.start, logits=True)
        for p in cached_parts:
            if p.source is not None and p.source.key in self.ram:
                pass
            elif p.source is not None:
                rt.store.touch(rt.store.module_path(p.source.key))
        fresh = sum(p.end - p.start for p in plan.parts if p.match is None)
        spans = [SpanUse(p.source.name, p.source.key, p.start, p.end - p.start, p.exact)
                 for p in cached_parts if p.source is not None]
        return Prefilled(ctx, n_cached - repaired - refreshed, fresh + repaired + refreshed, refreshed + repaired,
                         warnings, spans=spans)

    def _start_reads(self, parts: list[Part]) -> None:
        """Start reading every file's states the parts need (a RAM span's are there already)."""
        rt = self.runtime
        opened: dict[str, cache_file.CacheFile | None] = {}
        reads: dict[tuple[str, int], Blob] = {}
        try:
            for p in parts:
                src, m = p.source, p.match
                assert src is not None and m is not None
                if src.blob is not None:
                    continue
                if (m.key, m.segment) not in reads:
                    if m.key not in opened:
                        try:
                            f = rt.store.read(rt.store.module_path(m.key))
                            rt.check_header(f.header, m.key)
                        except (CacheFileError, CacheWriteError, OSError) as e:
                            raise _Unusable(m.key, f"cache file {m.key} ({src.name}) cannot be read ({e}); "
                                                   "computing its text afresh") from None
                        opened[m.key] = f
                    f = opened[m.key]
                    assert f is not None
                    rec = f.segments[m.segment]
                    if rec.tokens != src.tokens or rec.offset != src.stored:
                        raise _Unusable(m.key, f"cache file {m.key} changed while being read; "
                                               "computing its text afresh")
                    pending = rt.reading(f.start_blob(m.segment, None if rec.mapped else rt.arena.take(rec.raw_size)))
                    reads[m.key, m.segment] = StateRead(pending, lambda blob, rec=rec: check_blob(rt, blob, rec))
                src.blob = reads[m.key, m.segment]
        finally:
            for f in opened.values():
                if f is not None:
                    f.close()

    # -- learning ---------------------------------------------------------------------------------
    def learn(self, plan: TextPlan, ctx: Context, warnings: list[str]) -> list[SpanUse]:
        """Store the runs of message text the prompt computed fresh (cut into spans at paragraph
        breaks) with the states it gave them: in RAM when there is a RAM budget, else on disk; spans
        of RAM found again are written to disk. Returns the spans stored."""
        rt = self.runtime
        tokens = plan.tokens
        origin = xxhash.xxh3_64_hexdigest(np.asarray(tokens, dtype="<i4").tobytes())
        learned: list[SpanUse] = []
        for p in plan.parts:
            if p.match is not None and p.source is not None and p.source.key in self.ram:
                self._persist(self.ram.get(p.source.key), warnings)  # a RAM span found again: worth the disk
        runs = []
        for p in plan.parts:
            if p.match is not None:
                continue
            for a, b in plan.contents:
                lo, hi = max(a, p.start), min(b, p.end)
                if hi > lo:
                    runs += learn_cuts(lo, hi, lambda i: rt.model.token_bytes(tokens[i]).decode("utf-8", "replace"))
        for a, b in runs:
            seg = tuple(tokens[a:b])
            key = module_key(model=rt.fingerprint, llama_cpp=llama_cpp_version(),
                             state_layout=rt.settings.state_layout(), segments=[(a, seg, (tuple(tokens[:a]),))])
            if key in self.ram or rt.store.exists(rt.store.module_path(key)):
                continue
            ctx.seq_cp(0, 1, a, b)
            blob = ctx.save_state(1)
            ctx.seq_rm(1)
            header = {"key": key, "schema": LEARNED, "module": "span", "model": rt.fingerprint,
                      "llama_cpp": llama_cpp_version(), "state_layout": rt.settings.state_layout(),
                      "encoding": "as-seen", "created": time.time(), "origin": origin,
                      "segment_contexts": [context_record(tokens[:a])]}
            source = Source(key, LEARNED, a, seg, header["segment_contexts"][0], origin)
            span = RamSpan(source, blob, header, span_index.chunks(seg))
            if self.ram.capacity:
                self.ram.put(span)
            elif not self._persist(span, warnings):
                break
            learned.append(SpanUse(LEARNED, key, a, b - a, True))
        return learned

    def _persist(self, span: RamSpan | None, warnings: list[str]) -> bool:
        """Write a span's file and index it (once); False (and one warning) when the cache cannot
        be written."""
        if span is None:
            return True
        rt, src = self.runtime, span.source
        path = rt.store.module_path(src.key)
        if rt.store.exists(path):
            return True
        s = rt.settings
        try:
            with rt.store.locked(src.key):
                if not rt.store.exists(path):
                    chunks = cache_file.encode(span.header, [span.blob], [src.tokens], [src.stored], codec=self.codec,
                                               split_planes=self.codec == "zstd" and s.type_k == s.type_v == "f16")
                    rt.store.write_atomic(path, chunks)
                    self.index.add(src.key, [src.tokens])
        except CacheWriteError as e:
            warnings.append(f"{e}; the text learned from this prompt is not stored")
            return False
        return True


def _continues(prev: Part, part: Part) -> bool:
    """``part`` holds the span stored right after ``prev``'s, learned from one prompt, and both keep
    their distance: ``part``'s states were computed after ``prev``'s text."""
    a, b = prev.source, part.source
    assert a is not None and b is not None and prev.match is not None and part.match is not None
    return (a.origin is not None and a.origin == b.origin
            and prev.match.seg_start + prev.end - prev.start == len(a.tokens) and part.match.seg_start == 0
            and b.stored == a.stored + len(a.tokens)
            and part.start - b.stored == prev.start - (a.stored + prev.match.seg_start))


class _Unusable(Exception):
    """A file's states cannot be used for this prompt (signal within this module)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message

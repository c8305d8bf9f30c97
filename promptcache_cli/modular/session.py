"""Compile modules into cached states, stitch them into one sequence, and answer.

The only stateful object is :class:`Session` (a loaded model, a context sized on demand and a
cache store). It returns dataclasses, reports progress through callbacks and never prints.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Collection, Iterator

import numpy as np

from ..store import cache_file, manifest
from ..prompt import layout as lay
from . import ranking as rank_cache, refresh as token_rank
from ..benchmarks import repair
from ..llama import state_blob
from ..store.arena import Arena
from ..store.files import CacheStore, CacheWriteError, model_fingerprint, module_key, touch
from ..prompt.layout import ROOT, Layout, Path as ModPath
from ..llama.backend import GGML_TYPES, Context, ContextSettings, Model, llama_cpp_version
from ..pml.schema import Schema
from ..llama.sampling import Sampler, generate
from ..pml.selection import Selection, param_value
from .stitch import Blob, ModuleDamaged, ModuleStateRefused, StateRead, extend, fill

Progress = Callable[[int, int, str], None]  # (tokens done, tokens total, module name)


class PromptTooLong(Exception):
    """The prompt does not fit into the model's context."""


class ParameterTooLong(Exception):
    """A parameter value has more tokens than its slot."""


def owner_name(owner: ModPath) -> str:
    return "/".join(owner) if owner else "(schema)"


@dataclass(frozen=True)
class ModuleReport:
    name: str
    key: str
    status: str  # reused | computed
    tokens: int
    bytes: int
    seconds: float


@dataclass
class CompileReport:
    schema: str
    encoding: str
    modules: list[ModuleReport]
    seconds: float
    ranked: list[str] = field(default_factory=list)  # modules whose recompute scores were measured now
    warnings: list[str] = field(default_factory=list)


@dataclass
class AskResult:
    answer: str
    tokens: list[int]
    ttft_ms: float
    total_ms: float
    cached_tokens: int
    computed_tokens: int
    modules: list[str]
    model: str
    warnings: list[str]
    compiled: list[ModuleReport]
    first_logits: np.ndarray | None = None
    refreshed_tokens: int = 0  # cached tokens recomputed in the prompt's context (``refresh``)
    ranked: list[str] = field(default_factory=list)  # modules whose recompute scores were measured now


@dataclass
class Unstored:
    """What an ask computed but could not store (a read-only or full cache): the first reason,
    and the states by owner and segment offset, to answer from anyway."""

    reason: str | None = None
    blobs: dict[ModPath, dict[int, np.ndarray]] = field(default_factory=dict)


class Session:
    mode = "modular"
    def __init__(
        self,
        model_path: str | Path,
        *,
        cache_dir: str | Path,
        settings: ContextSettings = ContextSettings(),
        encoding: str = lay.ENCODINGS[0],
        codec: str = "none",
        stitch: bool = True,
        model: Model | None = None,
        repair_tokens: int = 0,
    ) -> None:
        """``stitch``: this session stitches modules (refused for recurrent and hybrid models,
        whose states cannot be cut or merged; prefix mode passes False). ``model``: the file
        at ``model_path``, already loaded. ``repair_tokens``: recompute that many first tokens of
        each stitched module whose cached context differs from the prompt's (repair.py); 0: none."""
        if encoding not in lay.ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}")
        if encoding == "average" and not settings.type_k == settings.type_v == "f16":
            raise ValueError("the average encoding averages f16 KV states only")
        self.model = model if model is not None else Model(str(model_path))
        if stitch and self.model.kind in ("recurrent", "hybrid", "swa"):
            from ..llama.backend import UnsupportedModel

            kind = {"swa": "sliding-window attention"}.get(self.model.kind, self.model.kind)
            self.model.close()
            raise UnsupportedModel(
                f"{model_path} is a {kind} model: its state cannot be cut back or stitched from modules; "
                "use prefix mode (--mode prefix, the default for such models)"
            )
        self.fingerprint = model_fingerprint(str(model_path))
        self.store = CacheStore(Path(cache_dir))
        self.settings = settings
        self.encoding = encoding
        self.codec = codec
        self.repair_tokens = repair_tokens
        self._ctx: Context | None = None
        self._layouts: dict[int, tuple[Schema, Layout]] = {}
        self._keys: dict[int, tuple[Layout, dict[ModPath, str]]] = {}
        self._arena = Arena()  # decoded blobs of compressed module files, reused question to question
        self._reads: list[cache_file.Pending] = []  # reads started since the arena was last reset

    # -- plumbing -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        self._reset_arena()
        self._arena.close()
        self.model.close()

    def _reset_arena(self) -> None:
        """The previous question's blobs are dead: once no read still writes into the arena (a
        question that failed midway may leave some running), its memory is reused."""
        for pending in self._reads:
            pending.wait()
        self._reads.clear()
        self._arena.reset()

    def context(self, n_cells: int, *, n_seq: int = Context.N_SEQ) -> Context:
        """A context with at least ``n_cells`` cells and ``n_seq`` sequences (reused while big
        enough), cleared."""
        need = max(256, -(-n_cells // 256) * 256)
        self._check_fits(n_cells)
        need = min(need, self.model.n_ctx_train)
        if self._ctx is None or self._ctx.n_ctx < need or self._ctx.N_SEQ < n_seq:
            if self._ctx is not None:
                self._ctx.close()
            self._ctx = Context(self.model, replace(self.settings, n_ctx=need), n_seq=n_seq)
        self._ctx.clear()
        return self._ctx

    def _check_fits(self, n_cells: int) -> None:
        if n_cells > self.model.n_ctx_train:
            raise PromptTooLong(
                f"the prompt and answer need {n_cells} positions, "
                f"the model's context is {self.model.n_ctx_train}"
            )

    def layout(self, schema: Schema) -> Layout:
        hit = self._layouts.get(id(schema))
        if hit is None or hit[0] is not schema:  # ids are reused once a schema is freed
            hit = self._layouts[id(schema)] = (schema, lay.build(schema, self.model, self.model.chat_template()))
        return hit[1]

    @property
    def _split_planes(self) -> bool:
        """Byte planes pay only when the high bytes get compressed: f16 states with zstd."""
        return self.codec == "zstd" and self.settings.type_k == self.settings.type_v == "f16"

    @property
    def variant(self) -> manifest.Variant:
        return manifest.Variant(self.fingerprint, llama_cpp_version(), self.settings.state_layout(), self.encoding)

    def _record(self, schema: Schema, layout: Layout, keys: dict[ModPath, str]) -> None:
        modules = [{"name": owner_name(o), "key": keys[o], "tokens": layout.tokens_of(o)} for o in layout.owners()]
        try:
            manifest.record(self.store, schema_name=schema.name, schema_path=schema.path, variant=self.variant,
                            codec=self.codec, modules=modules)
        except OSError as e:  # its folder or lock file cannot be created (write_atomic raises CacheWriteError)
            raise CacheWriteError(f"cannot write to the cache at {self.store.root}: {e.strerror}") from None

    def _why_missing(self, schema: Schema) -> str | None:
        """When a schema's cache exists only for other models or settings, say how it differs."""
        data = manifest.load(manifest.manifest_path(self.store.root, schema.name, schema.path))
        if not data or self.variant.id in data["variants"]:
            return None
        diffs = sorted({d for v in data["variants"].values() for d in self.variant.differences(v)})
        return ", ".join(diffs) if diffs else None

    def keys(self, layout: Layout) -> dict[ModPath, str]:
        """Every owner's cache key (computed once per layout: with the average encoding, finding a
        segment's contexts walks its union choices)."""
        hit = self._keys.get(id(layout))
        if hit is None or hit[0] is not layout:
            hit = self._keys[id(layout)] = (layout, self._compute_keys(layout))
        return hit[1]

    def _compute_keys(self, layout: Layout) -> dict[ModPath, str]:
        out = {}
        for owner in layout.owners():
            segs = [
                (s.offset, s.tokens, lay.contexts(layout, s, self.encoding))
                for s in layout.segments_of(owner)
            ]
            out[owner] = module_key(
                model=self.fingerprint, llama_cpp=llama_cpp_version(),
                state_layout=self.settings.state_layout(), segments=segs,
            )
        return out

    # -- compile ------------------------------------------------------------------------------
    def compile(
        self,
        schema: Schema,
        *,
        owners: list[ModPath] | None = None,
        force: bool = False,
        progress: Progress | None = None,
        ranked: bool = False,
    ) -> CompileReport:
        """Compute and store every module's states that are not cached yet (or ``owners``);
        ``ranked``: also their selective-recompute scores (token_rank.py) where missing."""
        t0 = time.perf_counter()
        layout = self.layout(schema)
        keys = self.keys(layout)
        todo = owners if owners is not None else layout.owners()
        reports: list[ModuleReport] = []
        pending = []
        for owner in todo:
            if not force and self.store.module_path(keys[owner]).exists():
                reports.append(self._reused(layout, keys, owner))
            else:
                pending.append(owner)
        if pending:
            reports += self._compute(layout, keys, pending, redo=pending if force else (), progress=progress)
        order = {owner_name(o): i for i, o in enumerate(layout.owners())}
        reports.sort(key=lambda r: order[r.name])
        self._record(schema, layout, keys)
        measured: list[ModPath] = []
        warnings: list[str] = []
        if ranked:  # every file is read whole: a damaged one is recomputed first (with a warning)
            self._check_rankable()
            self._reset_arena()
            blobs, recomputed, _ = self._gather(schema, layout, keys, list(todo), warnings, progress, wait=True)
            redone = {r.name: r for r in recomputed}
            reports = [redone.get(r.name, r) for r in reports]
            rank_cache.scores(self, layout, keys, list(todo), blobs.__getitem__, measured, warnings, progress)
        return CompileReport(schema.name, self.encoding, reports, time.perf_counter() - t0,
                             [owner_name(o) for o in measured], warnings)

    def _compute(self, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath], *,
                 redo: Collection[ModPath] = (), progress: Progress | None,
                 unstored: Unstored | None = None) -> list[ModuleReport]:
        """Compute the owners' segments and write one file per owner.

        Segments are computed in position order whatever their owner, so the running sequence
        only grows along the default prompt: with the scaffold encoding the whole default prompt
        is decoded about once. The owners' locks are held throughout; an owner another process
        finished while we waited for its lock is reused, not recomputed, unless it is in ``redo``
        (forced, or found damaged). The old file stays in place until the new one replaces it.

        A cache that cannot be written raises CacheWriteError, unless ``unstored`` is given (an
        ask): then the reason and the states not stored go there, and computing goes on.
        """
        self._check_fits(layout.end + 1)  # before any lock file is made
        with contextlib.ExitStack() as locks:
            try:
                for owner in sorted(owners, key=lambda o: keys[o]):
                    locks.enter_context(self.store.locked(keys[owner]))
            except CacheWriteError as e:
                if unstored is None:
                    raise
                locks.close()  # no lock file can be made: nothing will be written, compute everything here
                unstored.reason = str(e)
            reports = {
                o: self._reused(layout, keys, o)
                for o in owners
                if o not in redo and self.store.module_path(keys[o]).exists()
            }
            todo = [o for o in owners if o not in reports]
            jobs = sorted(
                ((seg, lay.contexts(layout, seg, self.encoding)) for o in todo for seg in layout.segments_of(o)),
                key=lambda job: job[0].offset,
            )
            if jobs:
                reports.update(self._compute_jobs(layout, keys, jobs, progress, unstored))
        return [reports[o] for o in owners]

    def _store(self, layout: Layout, keys: dict[ModPath, str], owner: ModPath, blobs: list[np.ndarray],
               unstored: Unstored | None) -> int:
        """Write an owner's file; returns its size, or 0 when the states went to ``unstored``."""
        segs = layout.segments_of(owner)
        if unstored is None or unstored.reason is None:
            chunks = cache_file.encode(self._header(layout, owner, keys[owner]), blobs, [s.tokens for s in segs],
                                       [s.offset for s in segs], codec=self.codec, split_planes=self._split_planes)
            try:
                return self.store.write_atomic(self.store.module_path(keys[owner]), chunks)
            except CacheWriteError as e:
                if unstored is None:
                    raise
                unstored.reason = str(e)
        unstored.blobs[owner] = {s.offset: b for s, b in zip(segs, blobs, strict=True)}
        return 0

    def _compute_jobs(self, layout: Layout, keys: dict[ModPath, str], jobs: list, progress: Progress | None,
                      unstored: Unstored | None = None):
        left = Counter(seg.owner for seg, _ in jobs)
        blobs: dict[ModPath, dict[int, np.ndarray]] = {o: {} for o in left}
        seconds: Counter = Counter()
        reports = {}
        t = time.perf_counter()
        for seg, blob in self.module_states(layout, jobs, progress):
            blobs[seg.owner][seg.offset] = blob
            left[seg.owner] -= 1
            nbytes = 0
            if left[seg.owner] == 0:  # the owner's last segment: write its file now
                done = blobs.pop(seg.owner)
                nbytes = self._store(layout, keys, seg.owner, [done[at] for at in sorted(done)], unstored)
            seconds[seg.owner] += time.perf_counter() - t
            t = time.perf_counter()
            if left[seg.owner] == 0:
                reports[seg.owner] = ModuleReport(owner_name(seg.owner), keys[seg.owner], "computed",
                                                  layout.tokens_of(seg.owner), nbytes, seconds[seg.owner])
        return reports

    def module_states(self, layout: Layout, jobs: list[tuple[lay.Segment, tuple[tuple[int, ...], ...]]],
                      progress: Progress | None) -> Iterator[tuple[lay.Segment, np.ndarray]]:
        """Each job's segment state (jobs in position order, each with its contexts, as
        ``lay.contexts`` gives them): computed after its one context, or the mean of the states
        computed after each of its contexts (the ``average`` encoding: every K and V value summed
        in float32, divided, rounded to f16). Segments with one context come in position order.
        With several, the token sequences (context, then segment) are computed in sorted order: a
        walk of their prefix tree, so a text shared by many sequences is decoded about once; the
        sums of every segment not yet complete are held meanwhile (in float32: twice their states)."""
        flat = [(seg, c) for seg, cs in jobs for c in cs]
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

    def segment_states(self, layout: Layout, jobs: list[tuple[lay.Segment, tuple[int, ...]]],
                        progress: Progress | None, label: str = "") -> Iterator[tuple[lay.Segment, np.ndarray]]:
        """Each job's segment state, computed after its context tokens (jobs in position order, so
        the running sequence only grows where contexts share a prefix); the context is cleared at the end."""
        total = sum(len(c) + len(s.tokens) for s, c in jobs)
        ctx = self.context(max(layout.end, max(len(c) + len(s.tokens) for s, c in jobs)) + 1)
        done = 0
        running: tuple[int, list[int]] = (0, [])  # what seq 0 holds: (start position, tokens)
        for seg, context in jobs:
            def tick(n: int, _name=owner_name(seg.owner) + label) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total, _name)

            running = extend(ctx, running, seg.offset - len(context), list(context) + list(seg.tokens), tick)
            ctx.seq_cp(0, 1, seg.offset, seg.end)
            blob = ctx.save_state(1)
            ctx.seq_rm(1)
            yield seg, blob
        ctx.clear()

    # -- selective recompute (token_rank.py) --------------------------------------------------
    def _check_rankable(self) -> None:
        if not self.settings.type_k == self.settings.type_v == "f16":
            raise ValueError("selective recompute ranks f16 KV states only")

    def _reused(self, layout: Layout, keys: dict[ModPath, str], owner: ModPath) -> ModuleReport:
        size = self.store.module_path(keys[owner]).stat().st_size
        return ModuleReport(owner_name(owner), keys[owner], "reused", layout.tokens_of(owner), size, 0.0)

    def _header(self, layout: Layout, owner: ModPath, key: str) -> dict:
        return {
            "key": key,
            "schema": layout.schema_name,
            "module": owner_name(owner),
            "model": self.fingerprint,
            "llama_cpp": llama_cpp_version(),
            "state_layout": self.settings.state_layout(),
            "encoding": self.encoding,
            "created": time.time(),
        }

    # -- ask ----------------------------------------------------------------------------------
    def prompt_plan(self, layout: Layout, selection: Selection) -> list[tuple[str, object]]:
        """The selected prompt in position order: ("segment", Segment) for cached text, or
        ("fresh", tokens) for a parameter value, computed at ask time."""
        included = {ROOT} | set(selection.modules)
        items: list[tuple[int, str, object]] = [
            (s.offset, "segment", s) for s in layout.segments if s.owner in included
        ]
        for slot in layout.slots:
            if slot.owner not in included:
                continue
            value = param_value(selection, slot.owner, slot.name)
            toks = tuple(self.model.tokenize(value, special=False)) if value is not None else slot.scaffold
            if len(toks) > slot.length:
                raise ParameterTooLong(
                    f"parameter '{owner_name(slot.owner)}/{slot.name}' is {len(toks)} tokens, "
                    f"longer than its length {slot.length}"
                )
            if toks:
                items.append((slot.offset, "fresh", toks))
        items.sort(key=lambda it: it[0])
        return [(kind, obj) for _, kind, obj in items]

    @staticmethod
    def flat_tokens(plan: list[tuple[str, object]]) -> list[int]:
        """A prompt plan's tokens one after another, as a cold prefill from position 0 sees them."""
        return [t for kind, obj in plan for t in (obj.tokens if kind == "segment" else obj)]

    def question_tokens(self, layout: Layout, question: str) -> list[int]:
        text = (lay.QUESTION_SEPARATOR + question) if question and layout.tail_joins else question
        toks = self.model.tokenize(text, special=False) if text else []
        return toks + self.model.tokenize(layout.tail, special=True)

    def ask(
        self,
        schema: Schema,
        selection: Selection,
        question: str,
        *,
        max_tokens: int = 128,
        sampler: Sampler = Sampler(),
        no_cache: bool = False,
        on_text: Callable[[str], None] | None = None,
        progress: Progress | None = None,
        keep_logits: bool = False,
        refresh: float = 0.0,
    ) -> AskResult:
        """Answer ``question`` over the selected modules. ``refresh``: the fraction (0 to 1) of the
        prompt's cached tokens to recompute in its own context, highest recompute scores first
        (token_rank.py; scores missing from the cache are measured and stored first)."""
        if not 0 <= refresh <= 1:
            raise ValueError(f"refresh is a fraction from 0 to 1, not {refresh}")
        if refresh:
            self._check_rankable()
        t0 = time.perf_counter()
        layout = self.layout(schema)
        plan = self.prompt_plan(layout, selection)
        q = self.question_tokens(layout, question)
        warnings: list[str] = []
        compiled: list[ModuleReport] = []
        ranked: list[ModPath] = []
        refreshed = 0
        n_prompt = layout.end + len(q)
        self._check_fits(n_prompt + max_tokens)  # before compiling anything on demand
        if no_cache:
            ctx = self.context(n_prompt + max_tokens)
            tokens = self.flat_tokens(plan) + q
            ctx.decode(tokens, start=0, logits=True)
            cached = 0
            computed = len(tokens)
        else:
            cached, computed, compiled, refreshed = self._stitch(schema, layout, plan, q, max_tokens, warnings,
                                                                 progress, refresh, ranked)
            ctx = self._ctx
        logits = ctx.logits()
        result = generate(self.model, ctx, logits, max_tokens=max_tokens, sampler=sampler, on_text=on_text, t0=t0)
        answer, out_tokens, ttft = result
        return AskResult(
            answer=answer,
            tokens=out_tokens,
            ttft_ms=ttft * 1000,
            total_ms=(time.perf_counter() - t0) * 1000,
            cached_tokens=cached,
            computed_tokens=computed,
            modules=sorted(owner_name(m) for m in selection.modules),
            model=self.model.description,
            warnings=warnings,
            compiled=compiled,
            first_logits=logits if keep_logits else None,
            refreshed_tokens=refreshed,
            ranked=[owner_name(o) for o in ranked],
        )

    def _stitch(self, schema: Schema, layout: Layout, plan: list, q: list[int], max_tokens: int,
                warnings: list[str], progress: Progress | None, refresh: float,
                ranked: list[ModPath]) -> tuple[int, int, list[ModuleReport], int]:
        """Load the plan's cached segments into sequence 0 at their positions, compute the fresh
        parts in between, recompute the ``refresh`` fraction of the cached tokens with the highest
        scores, then the question. Modules missing or damaged are compiled first, and so is a
        module whose cached state llama.cpp refuses (once: a fresh state refused is its failure).
        Returns (cached, computed, compiled modules, recomputed cached tokens)."""
        keys = self.keys(layout)
        self._reset_arena()
        needed = list(dict.fromkeys(obj.owner for kind, obj in plan if kind == "segment"))
        blobs, compiled, fresh = self._gather(schema, layout, keys, needed, warnings, progress, wait=bool(refresh))
        stale = token_rank.stale(layout, plan, self.encoding) if refresh else []
        n_refresh = min(round(refresh * sum(len(obj.tokens) for kind, obj in plan if kind == "segment")),
                        sum(len(seg.tokens) - skip for seg, skip in stale))  # exact states need no recompute
        owners = list(dict.fromkeys(seg.owner for seg, _ in stale))
        scores = rank_cache.scores(self, layout, keys, owners, blobs.__getitem__,
                                   ranked, warnings, progress) if n_refresh else {}
        n_cells = layout.end + len(q) + max_tokens
        if n_refresh:  # a recompute batch holds its tokens' old and new cells at once
            n_cells = min(n_cells + min(n_refresh, token_rank.RECOMPUTE_SEQUENCES - 2), self.model.n_ctx_train)
        ctx = self.context(n_cells, n_seq=token_rank.RECOMPUTE_SEQUENCES if n_refresh else Context.N_SEQ)
        fix = repair.plan(layout, plan, self.encoding, self.repair_tokens) if self.repair_tokens else {}
        while True:
            try:
                cached, computed = fill(ctx, plan, blobs, fix)
                break
            except (ModuleStateRefused, ModuleDamaged) as e:
                if e.owner in fresh:
                    raise e.error if isinstance(e, ModuleDamaged) else e from None
                warnings.append(_damaged(e.owner, e.error) if isinstance(e, ModuleDamaged) else
                                f"llama.cpp refused the cached state of module '{owner_name(e.owner)}'; recomputing it")
                more, recompiled, now = self._gather(schema, layout, keys, [e.owner], warnings, progress, redo=True)
                blobs.update(more)
                compiled += recompiled
                fresh |= now
                ctx.clear()
        refreshed = 0
        if n_refresh:
            first = {seg.offset: max(skip, fix.get(seg.offset, 0)) for seg, skip in stale}
            candidates = [(seg.offset + first[seg.offset], seg.tokens[first[seg.offset]:],
                           scores[seg.owner, seg.offset][first[seg.offset]:]) for seg, _ in stale]
            tokens, positions = token_rank.choose(candidates, n_refresh)
            ctx.recompute(tokens, positions)
            refreshed = len(tokens)
        ctx.decode(q, start=ctx.pos_max(0) + 1, logits=True)
        return cached - refreshed, computed + refreshed + len(q), compiled, refreshed

    def _gather(self, schema: Schema, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath],
                warnings: list[str], progress: Progress | None, *, redo: bool = False, wait: bool = False,
                ) -> tuple[dict[ModPath, dict[int, Blob]], list[ModuleReport], set[ModPath]]:
        """The owners' state blobs by segment offset, the modules compiled for them and which
        owners' blobs were computed now. Missing files and files found damaged (every one, with
        ``redo``) are computed first and stored when the cache can be written. Stored blobs are
        still being read and checked when this returns (a :class:`StateRead`), unless ``wait``
        (then every blob is an array)."""
        blobs: dict[ModPath, dict[int, Blob]] = {}
        to_compile, damaged = [], []
        for owner in owners:
            path = self.store.module_path(keys[owner])
            if redo or not path.exists():
                to_compile.append(owner)
                damaged += [owner] if redo else []
                continue
            try:
                blobs[owner] = self._load_checked(path, keys[owner], layout, owner, wait=wait)
            except (cache_file.CacheFileError, state_blob.BlobError) as e:
                warnings.append(_damaged(owner, e))
                to_compile.append(owner)
                damaged.append(owner)
        if not to_compile:
            return blobs, [], set()
        why = None if redo else self._why_missing(schema)
        if why:
            warnings.append(f"the cache of schema '{schema.name}' was made with {why}; recomputing it for "
                            f"{self.model.description} with these settings")
        unstored = Unstored()
        reports = self._compute(layout, keys, to_compile, redo=damaged, progress=progress, unstored=unstored)
        stored = [o for o in to_compile if o not in unstored.blobs]
        compiled = [r for o, r in zip(to_compile, reports, strict=True) if r.status == "computed" and o in stored]
        if unstored.reason is None:
            try:
                self._record(schema, layout, keys)
            except CacheWriteError as e:
                unstored.reason = str(e)
        if unstored.reason is not None:  # one warning, however many writes failed
            warnings.append(f"{unstored.reason}; answering from states computed now, not stored")
        blobs.update(unstored.blobs)
        for owner in stored:  # a fresh file found damaged is an error (EXIT_CACHE), not recomputed again
            path = self.store.module_path(keys[owner])
            blobs[owner] = self._load_checked(path, keys[owner], layout, owner, wait=wait)
        return blobs, compiled, set(to_compile)

    def _check_header(self, h: dict, key: str) -> None:
        """What any cache file this session loads must say of itself: the key it is stored under,
        this model and this session's state layout."""
        if h.get("key") != key:
            raise cache_file.CacheFileError("its key does not match its name")
        if h.get("model", {}).get("sha256_ends") != self.fingerprint["sha256_ends"]:
            raise cache_file.CacheFileError("it was made with another model")
        if h.get("state_layout") != self.settings.state_layout():
            raise cache_file.CacheFileError("it was made with other context settings")

    def _load_checked(self, path: Path, key: str, layout: Layout, owner: ModPath, *,
                      wait: bool = False) -> dict[int, Blob]:
        """A module file's state blobs by segment offset, being read on all cores: its header is
        checked now, each blob (checksums, then what llama.cpp will see: shape, V layout, positions)
        when it is first asked for, so reading overlaps loading the blobs before it; with ``wait``,
        every blob is read and checked before this returns. Raw blobs are views of the
        memory-mapped file; decoded ones live in the session's arena until the next question."""
        f = cache_file.read(path)
        touch(path)
        try:
            self._check_header(f.header, key)
            expected = [(s.offset, s.tokens) for s in layout.segments_of(owner)]
            if [(r.offset, r.tokens) for r in f.segments] != expected:
                raise cache_file.CacheFileError("its tokens differ from the schema's")
            out = {}
            for i, rec in enumerate(f.segments):
                pending = f.start_blob(i, None if rec.mapped else self._arena.take(rec.raw_size))
                self._reads.append(pending)
                out[rec.offset] = StateRead(pending, lambda blob, rec=rec: self._check_blob(blob, rec))
            return {at: read.get() for at, read in out.items()} if wait else out
        finally:
            f.close()  # a memory map stays alive while a view of it does (a read in progress holds one)

    def _check_blob(self, blob: np.ndarray, rec: cache_file.SegmentRecord) -> None:
        """Raises BlobError unless ``blob`` is a state llama.cpp can take for this segment."""
        info = state_blob.parse(blob)
        k, v = GGML_TYPES[self.settings.type_k], GGML_TYPES[self.settings.type_v]
        if info.n_layer != self.model.n_layer or set(info.k_types) != {k} or set(info.v_types) != {v}:
            raise state_blob.BlobError("its state has another shape than this model's")
        if info.v_trans == self.settings.flash_attn:
            raise state_blob.BlobError("its V layout does not match the flash-attention setting")
        if not np.array_equal(np.sort(info.positions), np.arange(rec.offset, rec.offset + len(rec.tokens))):
            raise state_blob.BlobError("its cell positions differ from the schema's")


def _damaged(owner: ModPath, error: Exception) -> str:
    return f"cache file for module '{owner_name(owner)}' is damaged ({error}); recomputing it"

"""Prefix mode: exact reuse of the longest shared token prefix, for every kind of model.

The schema's default prompt is prefilled once, contiguously from position 0, and states are
stored along the way. A request shares some leading tokens ``d`` with that cached prompt; it
resumes from the deepest stored state at or below ``d`` and recomputes the rest exactly, so its
answer is the ``--no-cache`` answer.

What a "state at position s" is depends on the model (``Model.kind``):

- attention: one full state at the end of the cached prompt; it is loaded and cut back to any
  ``s`` with ``seq_rm``.
- recurrent, and sliding-window attention (whose window cache keeps only the last window of
  cells, so a state cannot be cut back either): full states are stored at sparse checkpoints,
  placed by the dynamic program of :mod:`checkpoint_plan` over the overlap depths requests showed.
- hybrid: the attention cells are stored once, in full, at the end; checkpoints store only the
  recurrent part (``partial``). Resuming at ``s`` loads the full state, overwrites its recurrent
  part with the checkpoint's and cuts the attention cells back to ``s``.

Files: ``<cache>/prefix/<key[:2]>/<key>/<s>.pcm`` (the cache-file format, one segment holding
tokens ``0..s``), ``key`` hashing the model, llama.cpp version, settings and the prompt's tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import numpy as np

from ..store import cache_file
from ..llama import state_blob
from ..store.files import CacheWriteError, module_key, touch
from ..modular.session import AskResult, CompileReport, ModuleReport, Progress, Session, owner_name
from ..llama.backend import BackendError, Context, ContextSettings, llama_cpp_version
from ..pml.schema import Schema
from ..llama.sampling import Sampler, generate
from ..pml.selection import Selection, default_selection

DEFAULT_CHECKPOINTS = 4
CUTTABLE = ("attention",)  # kinds whose one full state is cut back to any prefix


@dataclass(frozen=True)
class Checkpoint:
    position: int
    path: Path


@dataclass(frozen=True)
class ResumePlan:
    overlap: int  # leading tokens the request shares with the cached prompt
    restore_at: int  # the state the request resumes from (0: a cold prefill)
    recomputed: int  # tokens decoded after restoring


class PrefixSession(Session):
    """A :class:`Session` that reuses exact prefixes instead of stitching modules."""

    mode = "prefix"

    def __init__(self, model_path, *, cache_dir, settings: ContextSettings = ContextSettings(),
                 checkpoints: int = DEFAULT_CHECKPOINTS, checkpoint_bytes: int | None = None,
                 codec: str = "none", model=None) -> None:
        """``checkpoints``: states kept inside the prompt besides its end; ``checkpoint_bytes``, when
        given, caps them further to what fits in that many bytes."""
        super().__init__(model_path, cache_dir=cache_dir, settings=settings, codec=codec, stitch=False, model=model)
        if checkpoints < 0:
            raise ValueError("the checkpoint budget cannot be negative")
        self.checkpoints = checkpoints
        self.checkpoint_bytes = checkpoint_bytes

    # -- where things live ------------------------------------------------------------------
    def prompt_tokens(self, schema: Schema, selection: Selection) -> list[int]:
        return self.flat_tokens(self.prompt_plan(self.layout(schema), selection))

    def prompt_key(self, tokens: list[int]) -> str:
        layout = dict(self.settings.state_layout(), mode="prefix", kind=self.model.kind)
        return module_key(model=self.fingerprint, llama_cpp=llama_cpp_version(), state_layout=layout,
                          segments=[(0, tuple(tokens), ((),))])

    def state_dir(self, key: str) -> Path:
        return self.store.root / "prefix" / key[:2] / key

    def history_dir(self, schema: Schema) -> Path:
        """Where the overlap depths of a schema's requests are recorded."""
        from ..store.overlap_log import history_dir

        return history_dir(self.store.root, schema.name, schema.path)

    def stored(self, key: str) -> dict[int, Checkpoint]:
        folder = self.state_dir(key)
        out = {}
        if folder.is_dir():
            for path in folder.glob("*.pcm"):
                if path.stem.isdigit():
                    out[int(path.stem)] = Checkpoint(int(path.stem), path)
        return out

    # -- planning ---------------------------------------------------------------------------
    def plan_positions(self, schema: Schema, tokens: int, boundaries: list[int]) -> list[int]:
        """Checkpoint positions below the prompt's end (whose state is always kept besides):
        the dynamic program over the recorded overlap depths, preferring module boundaries."""
        budget = self.checkpoints
        if self.model.kind in CUTTABLE or budget == 0 or tokens <= 1:
            return []
        from . import checkpoint_plan

        if self.checkpoint_bytes is not None:
            budget = min(budget, checkpoint_plan.checkpoints_for_budget(
                budget_bytes=self.checkpoint_bytes, bytes_per_checkpoint=self._checkpoint_size()))
            if budget == 0:
                return []
        from ..store.overlap_log import OverlapLog, OverlapLogError

        try:
            depths = [o.overlap for o in OverlapLog(self.history_dir(schema)).read()]
        except OverlapLogError:
            depths = []
        return list(checkpoint_plan.plan_for(depths, length=tokens, checkpoints=budget,
                                             boundaries=boundaries))

    def _checkpoint_size(self) -> int:
        """Bytes of one checkpoint: a recurrent state's size does not depend on its position."""
        ctx = self.context(2)
        ctx.decode([self.model.bos if self.model.bos >= 0 else 0], start=0)
        size = len(ctx.save_state(0, partial=self.model.kind == "hybrid"))
        ctx.clear()
        return size

    def _record(self, schema: Schema, *, tokens: int, overlap: int) -> None:
        """Remember how deep this request's prompt followed the cached one (steers placement)."""
        from ..store.overlap_log import OverlapLog, OverlapLogError

        try:
            OverlapLog(self.history_dir(schema)).append(tokens=tokens, overlap=overlap)
        except OverlapLogError:  # e.g. a read-only cache: the answer does not depend on it
            pass

    # -- compile ----------------------------------------------------------------------------
    def compile(self, schema: Schema, *, owners=None, force: bool = False,
                progress: Progress | None = None, ranked: bool = False) -> CompileReport:
        """Prefill the default prompt and store its end state and checkpoints. States already
        stored are reused; the prefill starts from the deepest one below the first missing.
        (``ranked``: prefix states are exact, there is nothing to rank.)"""
        _no_refresh(ranked)
        t0 = time.perf_counter()
        plan = self.prompt_plan(self.layout(schema), default_selection(schema))
        tokens = self.flat_tokens(plan)
        if not tokens:
            return CompileReport(schema.name, "prefix", [], 0.0)
        key = self.prompt_key(tokens)
        starts = list(np.cumsum([len(obj.tokens if kind == "segment" else obj) for kind, obj in plan])[:-1])
        want = sorted(set(self.plan_positions(schema, len(tokens), [int(b) for b in starts])) | {len(tokens)})
        with self.store.locked(key):
            have = self.stored(key)
            for pos, ck in have.items():  # a re-plan drops checkpoints it no longer wants
                if pos not in want:
                    ck.path.unlink(missing_ok=True)
            todo = [p for p in want if force or p not in have]
            reports = [self._report(key, have[p], "reused", 0.0) for p in want if p not in todo]
            if todo:
                reports += self._prefill(key, tokens, todo, have={} if force else have, progress=progress)
        from ..store import manifest  # the schema's entry: what `pc ls` lists and `pc rm` removes

        variant = manifest.Variant(self.fingerprint, llama_cpp_version(), self.settings.state_layout(), manifest.PREFIX)
        manifest.record(self.store, schema_name=schema.name, schema_path=schema.path, variant=variant,
                        codec=self.codec, modules=[], prefix={"key": key, "tokens": len(tokens)})
        reports.sort(key=lambda r: int(r.name.rsplit("@", 1)[1]))
        return CompileReport(schema.name, "prefix", reports, time.perf_counter() - t0)

    def store_states(self, tokens: list[int], positions: list[int], *,
                     progress: Progress | None = None) -> list[ModuleReport]:
        """Prefill ``tokens`` and store states at ``positions`` and at the end, replacing what was
        stored for them (benchmarks compare placements this way)."""
        key = self.prompt_key(tokens)
        with self.store.locked(key):
            for ck in self.stored(key).values():
                ck.path.unlink(missing_ok=True)
            want = sorted({p for p in positions if 0 < p < len(tokens)} | {len(tokens)})
            return self._prefill(key, tokens, want, have={}, progress=progress)

    def resume(self, cached: list[int], request: list[int], *, room: int = 0,
               only: Collection[int] | None = None) -> tuple[Context, ResumePlan]:
        """A context holding ``request``, resumed from the deepest usable stored state of ``cached``
        and decoded the rest of the way: the last token's logits are ready. ``room``: cells left
        free for generation; ``only``: use just the states stored at these positions."""
        ctx = self.context(max(len(request), len(cached)) + room)  # a restored end state holds every cached cell
        plan = self._restore(ctx, self.prompt_key(cached), cached, request, only=only)
        ctx.decode(request[plan.restore_at:], start=plan.restore_at, logits=True)
        return ctx, plan

    def _partial(self, pos: int, length: int) -> bool:
        return self.model.kind == "hybrid" and pos < length

    def _prefill(self, key: str, tokens: list[int], todo: list[int], *, have: dict[int, Checkpoint],
                 progress: Progress | None) -> list[ModuleReport]:
        ctx = self.context(len(tokens) + 1)
        self._arena.reset()  # no blob taken from it is alive here
        start = 0
        resumable = [p for p in have if p <= todo[0] and not self._partial(p, len(tokens))]
        if resumable and self.model.kind not in CUTTABLE:
            start = max(resumable)
            try:
                ctx.load_state(0, self._load_blob(have[start].path, key, tokens[:start], partial=False))
            except (cache_file.CacheFileError, state_blob.BlobError, OSError):
                ctx.clear()
                start = 0
        reports, done, total = [], start, len(tokens)
        for pos in todo:
            t = time.perf_counter()

            def tick(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total, "prefix")

            ctx.decode(tokens[start:pos], start=start, progress=tick)
            start = pos
            partial = self._partial(pos, len(tokens))
            blob = ctx.save_state(0, partial=partial)
            header = {"key": key, "module": f"prefix@{pos}", "model": self.fingerprint,
                      "llama_cpp": llama_cpp_version(), "state_layout": self.settings.state_layout(),
                      "mode": "prefix", "kind": self.model.kind, "partial": partial, "created": time.time()}
            chunks = cache_file.encode(header, [blob], [tuple(tokens[:pos])], [0], codec=self.codec,
                                       split_planes=False)
            path = self.state_dir(key) / f"{pos}.pcm"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CacheWriteError(f"cannot write to the cache at {path.parent}: {e.strerror}") from None
            self.store.write_atomic(path, chunks)
            reports.append(self._report(key, Checkpoint(pos, path), "computed", time.perf_counter() - t))
        ctx.clear()
        return reports

    def _report(self, key: str, ck: Checkpoint, status: str, seconds: float) -> ModuleReport:
        return ModuleReport(f"prefix@{ck.position}", key, status, ck.position, ck.path.stat().st_size, seconds)

    # -- loading ----------------------------------------------------------------------------
    def _load_blob(self, path: Path, key: str, tokens: list[int], *, partial: bool) -> np.ndarray:
        """A stored state, checked to be the one this request needs (a view of the memory-mapped
        file when stored raw, else decoded into the session's arena)."""
        f = cache_file.read(path)
        touch(path)
        try:
            self._check_header(f.header, key)
            if f.header.get("mode") != "prefix":
                raise cache_file.CacheFileError("its key does not match its name")
            if f.header.get("partial") is not partial:
                raise cache_file.CacheFileError("it was made with other context settings")
            if len(f.segments) != 1 or list(f.segments[0].tokens) != tokens:
                raise cache_file.CacheFileError("its tokens differ from the prompt's")
            rec = f.segments[0]
            blob = f.blob(0, None if rec.mapped else self._arena.take(rec.raw_size))
            if self.model.kind in CUTTABLE:  # a plain KV state: its whole structure is checked
                if self.model.kind == "attention":
                    info = state_blob.parse(blob)
                    if info.n_layer != self.model.n_layer or not np.array_equal(
                            np.sort(info.positions), np.arange(len(tokens))):
                        raise state_blob.BlobError("its cells differ from the prompt's")
            elif len(blob) < 8 or int(np.frombuffer(blob[:4], "<u4")[0]) != state_blob.MAGIC:
                raise state_blob.BlobError("not a llama.cpp sequence state (bad magic)")
            return blob
        finally:
            f.close()  # a memory map stays alive while a view of it does

    # -- ask --------------------------------------------------------------------------------
    def resume_plan(self, cached: list[int], request: list[int], stored: list[int]) -> ResumePlan:
        """Where a request resumes: the deepest usable state at or below its overlap, leaving at
        least one token to decode (a state carries no logits)."""
        d = _common_prefix(cached, request)
        limit = min(d, len(request) - 1)
        if self.model.kind in CUTTABLE:
            at = limit if len(cached) in stored else 0
        else:
            at = max((p for p in stored if p <= limit), default=0)
        return ResumePlan(d, at, len(request) - at)

    def ask(self, schema: Schema, selection: Selection, question: str, *, max_tokens: int = 128,
            sampler: Sampler = Sampler(), no_cache: bool = False, on_text=None,
            progress: Progress | None = None, keep_logits: bool = False, refresh: float = 0.0) -> AskResult:
        _no_refresh(refresh)
        if no_cache:
            return super().ask(schema, selection, question, max_tokens=max_tokens, sampler=sampler,
                               no_cache=True, on_text=on_text, progress=progress, keep_logits=keep_logits)
        t0 = time.perf_counter()
        self._arena.reset()  # the previous question's blobs are dead
        layout = self.layout(schema)
        request = self.flat_tokens(self.prompt_plan(layout, selection)) + self.question_tokens(layout, question)
        cached = self.prompt_tokens(schema, default_selection(schema))
        key = self.prompt_key(cached)
        warnings: list[str] = []
        compiled: list[ModuleReport] = []
        ctx, plan = self._prepare(schema, key, cached, request, max_tokens, warnings, compiled, progress)
        ctx.decode(request[plan.restore_at:], start=plan.restore_at, logits=True)
        self._record(schema, tokens=len(request), overlap=plan.overlap)
        logits = ctx.logits()
        answer, out_tokens, ttft = generate(self.model, ctx, logits, max_tokens=max_tokens, sampler=sampler,
                                             on_text=on_text, t0=t0)
        return AskResult(answer=answer, tokens=out_tokens, ttft_ms=ttft * 1000,
                         total_ms=(time.perf_counter() - t0) * 1000, cached_tokens=plan.restore_at,
                         computed_tokens=plan.recomputed, modules=sorted(owner_name(m) for m in selection.modules),
                         model=self.model.description, warnings=warnings, compiled=compiled,
                         first_logits=logits if keep_logits else None)

    def _prepare(self, schema: Schema, key: str, cached: list[int], request: list[int], max_tokens: int,
                 warnings: list[str], compiled: list[ModuleReport], progress: Progress | None):
        """A context holding the state the request resumes from. Missing states are compiled
        first; a damaged one is reported, deleted and recomputed; when the cache cannot be
        written, the request is computed cold."""
        try:
            for attempt in range(2):
                try:
                    if attempt or (cached and len(cached) not in self.stored(key)):
                        compiled += [r for r in self.compile(schema, progress=progress).modules
                                     if r.status == "computed"]
                    ctx = self.context(max(len(request), len(cached)) + max_tokens)
                    return ctx, self._restore(ctx, key, cached, request)
                except DamagedState as e:
                    if attempt:
                        raise
                    warnings.append(f"{e}; recomputing it")
                    _discard(self.state_dir(key) / f"{e.position}.pcm")
        except (DamagedState, CacheWriteError, OSError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            warnings.append(f"cannot use the prefix cache ({why}); answering without it")
        ctx = self.context(len(request) + max_tokens)
        return ctx, ResumePlan(_common_prefix(cached, request), 0, len(request))

    def _restore(self, ctx: Context, key: str, cached: list[int], request: list[int], *,
                 only: Collection[int] | None = None) -> ResumePlan:
        """Load the state the request resumes from into sequence 0 (left empty to start cold)."""
        stored = self.stored(key)
        if only is not None:
            stored = {p: ck for p, ck in stored.items() if p in only}
        plan = self.resume_plan(cached, request, list(stored))
        ctx.clear()
        if plan.restore_at:
            self._load_at(ctx, key, cached, plan.restore_at, stored)
        return plan

    def _load_at(self, ctx: Context, key: str, cached: list[int], at: int, stored: dict[int, Checkpoint]) -> None:
        n = len(cached)
        if self.model.kind in CUTTABLE or (self.model.kind == "hybrid" and at < n):
            _load(ctx, self._checked(stored, n, key, cached, partial=False), n)
            if self.model.kind == "hybrid":
                _load(ctx, self._checked(stored, at, key, cached[:at], partial=True), at, partial=True)
            if at < n:
                ctx.seq_rm(0, at, -1)
        else:
            _load(ctx, self._checked(stored, at, key, cached[:at], partial=False), at)
        if ctx.pos_max(0) != at - 1:
            raise DamagedState(at, f"the restored state ends at {ctx.pos_max(0) + 1}, not {at}")

    def _checked(self, stored: dict[int, Checkpoint], pos: int, key: str, tokens: list[int], *,
                 partial: bool) -> np.ndarray:
        if pos not in stored:
            raise DamagedState(pos, "it is missing")
        try:
            return self._load_blob(stored[pos].path, key, tokens, partial=partial)
        except (cache_file.CacheFileError, state_blob.BlobError, OSError) as e:
            raise DamagedState(pos, str(e)) from None


class DamagedState(Exception):
    """A stored prefix state is missing, unreadable or not the one expected."""

    def __init__(self, position: int, why: str) -> None:
        super().__init__(f"prefix state at token {position}: {why}")
        self.position = position


def _load(ctx: Context, blob: np.ndarray, position: int, *, partial: bool = False) -> None:
    try:
        ctx.load_state(0, blob, partial=partial)
    except BackendError as e:
        raise DamagedState(position, str(e)) from None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:  # a read-only cache: the damaged file stays, and is skipped again next time
        pass


def _no_refresh(asked) -> None:
    if asked:
        raise ValueError("selective recompute is for stitched modules; prefix states are exact")

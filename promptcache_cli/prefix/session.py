"""Prefix mode: exact reuse of the longest shared token prefix, for every kind of model.

The schema's default prompt is prefilled once, contiguously from position 0, and states are
stored along the way (states.py). A request shares some leading tokens ``d`` with that cached
prompt; it resumes from the deepest stored state at or below ``d`` and recomputes the rest exactly,
so its answer is the ``--no-cache`` answer.

What a "state at position s" is depends on the model's memory (llama/memory.py):

- one that can be cut back (attention): one full state at the end of the cached prompt; it is
  loaded and cut back to any ``s`` with ``seq_rm``.
- one that cannot (recurrent, and sliding-window attention, whose window cache keeps only the last
  window of cells): full states are stored at sparse checkpoints, placed by the dynamic program of
  :mod:`.checkpoint_plan` over the overlap depths requests showed.
- one with partial checkpoints (hybrid): the attention cells are stored once, in full, at the end;
  checkpoints store only the recurrent part. Resuming at ``s`` loads the full state, overwrites its
  recurrent part with the checkpoint's and cuts the attention cells back to ``s``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Sequence


from ..core.answer import Prefilled, finish, prefill_uncached
from ..core.results import Answer, CompileReport, ModuleReport, Progress, Staleness
from ..core.runtime import Runtime
from ..errors import (BlobError, CacheFileError, CacheWriteError, DamagedState, OverlapLogError)
from ..llama.bindings import llama_cpp_version
from ..llama.context import Context, ContextSettings
from ..llama.model import Model
from ..llama.sampling import Sampler
from ..pml.schema import Schema
from ..pml.selection import Selection, default_selection
from ..prompt.layout import Layout
from ..prompt.conversation import Conversation
from ..prompt.plan import PromptPlan, owner_name
from ..store import manifest
from ..store.overlap_log import OverlapLog, history_dir
from .restore import ResumePlan, Restorer, common_prefix
from .states import Checkpoint, PrefixStates

if TYPE_CHECKING:
    from ..core.sharing import Shard
    from ..store.remote_tier import CacheObject, Tier

DEFAULT_CHECKPOINTS = 4


class PrefixSession:
    """Reuses exact prefixes of the schema's default prompt instead of stitching modules."""

    mode = "prefix"

    def __init__(self, model_path: str | Path, *, cache_dir: str | Path, settings: ContextSettings = ContextSettings(),
                 checkpoints: int = DEFAULT_CHECKPOINTS, checkpoint_bytes: int | None = None,
                 codec: str = "none", model: Model | None = None, remote: Tier | None = None) -> None:
        """``checkpoints``: states kept inside the prompt besides its end; ``checkpoint_bytes``, when
        given, caps them further to what fits in that many bytes. ``model``: the file at
        ``model_path``, already loaded. ``remote``: the shared store behind the cache directory
        (states missing locally are downloaded from it, computed ones uploaded)."""
        self.runtime = Runtime(model_path, cache_dir=cache_dir, settings=settings, model=model, remote=remote)
        if checkpoints < 0:
            raise ValueError("the checkpoint budget cannot be negative")
        self.states = PrefixStates(self.runtime, codec=codec)
        self.restorer = Restorer(self.runtime, self.states)
        self.checkpoints = checkpoints
        self.checkpoint_bytes = checkpoint_bytes

    # -- what the session holds -------------------------------------------------------------
    @property
    def model(self) -> Model:
        return self.runtime.model

    @property
    def store(self):
        return self.runtime.store

    @property
    def settings(self) -> ContextSettings:
        return self.runtime.settings

    @property
    def codec(self) -> str:
        return self.states.codec

    def close(self) -> None:
        self.runtime.close()

    def layout(self, schema: Schema) -> Layout:
        return self.runtime.layout(schema)

    def prompt_plan(self, layout: Layout, selection: Selection) -> PromptPlan:
        return self.runtime.plan(layout, selection)

    def question_tokens(self, layout: Layout, question: str | Conversation) -> list[int]:
        return self.runtime.question_tokens(layout, question)

    def prompt_tokens(self, schema: Schema, selection: Selection) -> list[int]:
        return self.prompt_plan(self.layout(schema), selection).tokens()

    def cached_prompt(self, schema: Schema) -> list[int]:
        """The prompt whose states are stored: the default prompt up to its first cache="false"
        module (whose states, and so every state after them, are computed for each request)."""
        return self.prompt_plan(self.layout(schema), default_selection(schema)).storable()[0]

    def prompt_key(self, tokens: list[int]) -> str:
        return self.states.key(tokens)

    def state_dir(self, key: str) -> Path:
        return self.states.folder(key)

    def stored(self, key: str) -> dict[int, Checkpoint]:
        return self.states.stored(key)

    def history_dir(self, schema: Schema) -> Path:
        """Where the overlap depths of a schema's requests are recorded."""
        return history_dir(self.store.root, schema.name, schema.path)

    # -- planning ---------------------------------------------------------------------------
    def plan_positions(self, schema: Schema, tokens: int, boundaries: list[int]) -> list[int]:
        """Checkpoint positions below the prompt's end (whose state is always kept besides):
        the dynamic program over the recorded overlap depths, preferring module boundaries."""
        budget = self.checkpoints
        if self.model.memory.can_cut or budget == 0 or tokens <= 1:
            return []
        from . import checkpoint_plan

        if self.checkpoint_bytes is not None:
            budget = min(budget, checkpoint_plan.checkpoints_for_budget(
                budget_bytes=self.checkpoint_bytes, bytes_per_checkpoint=self._checkpoint_size()))
            if budget == 0:
                return []
        try:
            depths = [o.overlap for o in self._overlap_log(schema).read()]
        except OverlapLogError:
            depths = []
        return list(checkpoint_plan.plan_for(depths, length=tokens, checkpoints=budget,
                                             boundaries=boundaries))

    def _checkpoint_size(self) -> int:
        """Bytes of one checkpoint: a recurrent state's size does not depend on its position."""
        ctx = self.runtime.context(2)
        ctx.decode([self.model.bos if self.model.bos >= 0 else 0], start=0)
        size = len(ctx.save_state(0, partial=self.model.memory.partial_checkpoints))
        ctx.clear()
        return size

    def _overlap_log(self, schema: Schema) -> OverlapLog:
        return OverlapLog(self.history_dir(schema), boundary=self.store.boundary)

    def _record_overlap(self, schema: Schema, *, tokens: int, overlap: int) -> None:
        """Remember how deep this request's prompt followed the cached one (steers placement)."""
        try:
            self._overlap_log(schema).append(tokens=tokens, overlap=overlap)
        except OverlapLogError:  # e.g. a read-only cache: the answer does not depend on it
            pass

    def stale(self, schema: Schema, selection: Selection | None = None) -> Staleness:
        """Whether the default prompt's end state must be computed first (not stored yet)."""
        cached = self.prompt_tokens(schema, default_selection(schema))
        if not cached or len(cached) in self.stored(self.prompt_key(cached)):
            return Staleness((), (), 0, None)
        return Staleness(("prefix",), (), len(cached), f"the prompt's prefix states are not stored yet: "
                                                       f"computing {len(cached)} tokens")

    # -- compile ----------------------------------------------------------------------------
    def compile(self, schema: Schema, *, owners=None, force: bool = False,
                progress: Progress | None = None, ranked: bool = False, shard: Shard | None = None,
                skip_in_store: bool = True) -> CompileReport:
        """Prefill the default prompt (up to its first cache="false" module: see
        :meth:`cached_prompt`) and store its end state and checkpoints. States already
        stored are reused; the prefill starts from the deepest one below the first missing.
        (``ranked``: prefix states are exact, there is nothing to rank.) ``shard`` (K, N): only
        when the prompt's key is in share K of N. With a remote store, a prompt whose end state
        the store holds is not computed (``remote``), computed states are uploaded, and cached
        ones the store lacks too (``skip_in_store`` False: computed whatever the store holds)."""
        _no_refresh(ranked)
        t0 = time.perf_counter()
        tokens, starts = self.prompt_plan(self.layout(schema), default_selection(schema)).storable()
        tier = self.runtime.remote
        if not tokens:
            return CompileReport(schema.name, "prefix", (), 0.0)
        key = self.prompt_key(tokens)
        if shard is not None:
            from ..core.sharing import in_shard

            if not in_shard(key, shard):
                report = ModuleReport(f"prefix@{len(tokens)}", key, "other shard", len(tokens), 0, 0.0)
                return CompileReport(schema.name, "prefix", (report,), time.perf_counter() - t0,
                                     remote=str(tier) if tier is not None else None)
        want = sorted(set(self.plan_positions(schema, len(tokens), starts)) | {len(tokens)})
        # the store first, before the local lock: a wait for another machine's upload never holds it
        elsewhere = (tier is not None and skip_in_store and not force and len(tokens) not in self.stored(key)
                     and (self._in_store(key, len(tokens)) or self._computed_elsewhere(key, len(tokens))))
        try:
            with self.store.locked(key):
                have = self.stored(key)
                for pos, ck in have.items():  # a re-plan drops checkpoints it no longer wants
                    if pos not in want:
                        self.store.unlink(ck.path)
                todo = [p for p in want if force or p not in have]
                reports = [self._published(key, tokens, self.states.report(key, have[p], "reused", 0.0))
                           for p in want if p not in todo]
                if todo and elsewhere and len(tokens) not in have:
                    reports.append(ModuleReport(f"prefix@{len(tokens)}", key, "remote", len(tokens), 0, 0.0))
                    todo = []
                if todo:
                    reports += self._prefill(key, tokens, todo, have={} if force else have, progress=progress)
        finally:
            if tier is not None and skip_in_store:
                from ..store.remote import prefix_rel

                tier.release(prefix_rel(key))
        self.record(schema)
        if tier is not None:
            self.record(schema, remote=True)
        reports.sort(key=lambda r: int(r.name.rsplit("@", 1)[1]))
        return CompileReport(schema.name, "prefix", tuple(reports), time.perf_counter() - t0,
                             warnings=tuple(tier.take_warnings()) if tier is not None else (),
                             remote=str(tier) if tier is not None else None)

    # -- the remote store -------------------------------------------------------------------
    def _manifest(self, schema: Schema) -> tuple[manifest.Variant, dict, list[dict]]:
        """The schema's entry: its variant, its stored prompt, and its cache="false" modules."""
        layout = self.layout(schema)
        tokens = self.prompt_plan(layout, default_selection(schema)).storable()[0]
        rt = self.runtime
        variant = manifest.Variant(rt.fingerprint, llama_cpp_version(), rt.settings.state_layout(), manifest.PREFIX)
        modules = [manifest.uncached_module(owner_name(o), layout.tokens_of(o)) for o in layout.uncached_owners()]
        return variant, {"key": self.prompt_key(tokens), "tokens": len(tokens)}, modules

    def record(self, schema: Schema, *, remote: bool = False) -> None:
        """Write the schema's manifest: in the cache directory (what `pc ls` lists and `pc rm`
        removes), or (``remote``) in the store."""
        variant, prefix, modules = self._manifest(schema)
        if not remote:
            manifest.record(self.store, schema_name=schema.name, schema_path=schema.path, variant=variant,
                            codec=self.codec, modules=modules, prefix=prefix)
        elif self.runtime.remote is not None:
            from ..core.sharing import manifest_entry

            self.runtime.remote.publish_manifest(*manifest_entry(schema.name, variant, self.codec, modules, prefix))

    def _computed_elsewhere(self, key: str, position: int) -> bool:
        """Whether another machine holds the lease on the prompt's states and uploads them while
        this one waits (else this session takes the lease and computes them)."""
        from ..store.remote import prefix_rel

        tier = self.runtime.remote
        if tier is None or tier.claim(prefix_rel(key), prefix_rel(key, position)):
            return False
        return tier.wait_for(prefix_rel(key, position))

    def _in_store(self, key: str, position: int) -> bool:
        from ..store.remote import prefix_rel

        tier = self.runtime.remote
        return tier is not None and tier.has(prefix_rel(key, position)) is True

    def _published(self, key: str, tokens: list[int], report: ModuleReport) -> ModuleReport:
        """Upload a state to the remote store (when there is one); the report says whether it was."""
        tier = self.runtime.remote
        if tier is None:
            return report
        obj = self.states.cache_object(key, tokens, report.tokens)
        return replace(report, uploaded=tier.publish(obj.rel, obj.path, self.store) == "uploaded")

    def cache_objects(self, schema: Schema, *, in_store: bool = False) -> list[CacheObject]:
        """The default prompt's states as both tiers know them: those in the cache directory, or
        (``in_store``) those the remote store holds."""
        tokens = self.cached_prompt(schema)
        key = self.prompt_key(tokens)
        if not in_store:
            positions = sorted(self.stored(key))
        else:
            from ..store.remote import prefix_rel

            tier = self.runtime.remote
            assert tier is not None
            positions = sorted(_positions(tier.remote.list(prefix_rel(key)), len(tokens)))
        return [self.states.cache_object(key, tokens, p) for p in positions]

    def _from_store(self, schema: Schema, key: str, cached: list[int], warnings: list[str],
                    downloaded: list[ModuleReport]) -> str | None:
        """Before an ask computes a missing end state: download the prompt's states from the
        remote store, or, when another machine is computing them now (its lease), wait for its
        upload. Returns the lease this session took (it computes them), to release afterwards."""
        tier = self.runtime.remote
        if tier is None or not cached or len(cached) in self.stored(key):
            return None
        from ..store.remote import prefix_rel

        self._fetch(key, cached, warnings, downloaded)
        lease = None
        if len(cached) not in self.stored(key):
            if tier.claim(prefix_rel(key), prefix_rel(key, len(cached))):
                lease = prefix_rel(key)
            elif tier.wait_for(prefix_rel(key, len(cached))):
                self._fetch(key, cached, warnings, downloaded)
            warnings += tier.take_warnings()
        if downloaded:
            try:
                self.record(schema)
            except CacheWriteError:
                pass
        return lease

    def _fetch(self, key: str, cached: list[int], warnings: list[str], downloaded: list[ModuleReport]) -> None:
        """Download the states of prompt ``key`` the store holds and the cache directory lacks,
        each checked before it is put in place."""
        from ..store.remote import prefix_rel

        tier = self.runtime.remote
        assert tier is not None
        listing = tier.list(prefix_rel(key))
        try:
            with self.store.locked(key):  # written through the boundary, under the prompt's lock
                have = self.stored(key)
                for pos in sorted(_positions(listing or [], len(cached)), reverse=True):  # the end state first
                    if pos in have:
                        continue
                    t = time.perf_counter()
                    obj = self.states.cache_object(key, cached, pos)
                    status = tier.fetch(obj, self.store)
                    if status == "downloaded":
                        downloaded.append(ModuleReport(obj.name, key, "downloaded", pos,
                                                       self.store.size(obj.path) or 0, time.perf_counter() - t))
                    elif status in ("offline", "unwritable"):
                        break
        except CacheWriteError:  # no lock file can be made (a read-only cache): nothing can be downloaded
            pass
        warnings += tier.take_warnings()

    def store_states(self, tokens: list[int], positions: list[int], *,
                     progress: Progress | None = None) -> list[ModuleReport]:
        """Prefill ``tokens`` and store states at ``positions`` and at the end, replacing what was
        stored for them (benchmarks compare placements this way)."""
        key = self.prompt_key(tokens)
        with self.store.locked(key):
            for ck in self.stored(key).values():
                self.store.unlink(ck.path)
            want = sorted({p for p in positions if 0 < p < len(tokens)} | {len(tokens)})
            return self._prefill(key, tokens, want, have={}, progress=progress)

    def resume(self, cached: list[int], request: list[int], *, room: int = 0,
               only: Collection[int] | None = None) -> tuple[Context, ResumePlan]:
        """A context holding ``request``, resumed from the deepest usable stored state of ``cached``
        and decoded the rest of the way: the last token's logits are ready. ``room``: cells left
        free for generation; ``only``: use just the states stored at these positions."""
        # a restored end state holds every cached cell
        ctx = self.runtime.context(max(len(request), len(cached)) + room)
        plan = self._restore(ctx, self.prompt_key(cached), cached, request, only=only)
        ctx.decode(request[plan.restore_at:], start=plan.restore_at, logits=True)
        return ctx, plan

    def _partial(self, pos: int, length: int) -> bool:
        return self.model.memory.partial_checkpoints and pos < length

    def _prefill(self, key: str, tokens: list[int], todo: list[int], *, have: dict[int, Checkpoint],
                 progress: Progress | None) -> list[ModuleReport]:
        ctx = self.runtime.context(len(tokens) + 1)
        self.runtime.arena.reset()  # no blob taken from it is alive here
        start = 0
        resumable = [p for p in have if p <= todo[0] and not self._partial(p, len(tokens))]
        if resumable and not self.model.memory.can_cut:
            start = max(resumable)
            try:
                ctx.load_state(0, self.states.load(have[start].path, key, tokens[:start], partial=False))
            except (CacheFileError, BlobError, OSError):
                ctx.clear()
                start = 0
        reports, done, total = [], start, max(todo)
        if progress:
            progress(done, total, "prefix")
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
            path = self.states.write(key, tokens[:pos], ctx.save_state(0, partial=partial), partial=partial)
            report = self.states.report(key, Checkpoint(pos, path), "computed", time.perf_counter() - t)
            reports.append(self._published(key, tokens, report))
        ctx.clear()
        return reports

    # -- ask --------------------------------------------------------------------------------
    def resume_plan(self, cached: list[int], request: list[int], stored: list[int]) -> ResumePlan:
        return self.restorer.plan(cached, request, stored)

    def _restore(self, ctx: Context, key: str, cached: list[int], request: list[int], *,
                 only: Collection[int] | None = None) -> ResumePlan:
        return self.restorer.restore(ctx, key, cached, request, only=only)

    def ask(self, schema: Schema, selection: Selection, question: str | Conversation, *, max_tokens: int = 128,
            sampler: Sampler = Sampler(), no_cache: bool = False, on_text: Callable[[str], None] | None = None,
            progress: Progress | None = None, keep_logits: bool = False, refresh: float = 0.0,
            repair: int = 0, stop: Sequence[str] = ()) -> Answer:
        """Answer ``question`` (:meth:`prefill`, then generate): the `--no-cache` answer, sooner."""
        t0 = time.perf_counter()
        done = self.prefill(schema, selection, question, max_tokens=max_tokens, no_cache=no_cache,
                            progress=progress, refresh=refresh)
        return finish(self.runtime, done, selection=selection, t0=t0, max_tokens=max_tokens, sampler=sampler,
                      on_text=on_text, keep_logits=keep_logits, stop=stop)

    def prefill(self, schema: Schema, selection: Selection, question: str | Conversation, *, max_tokens: int = 128,
                no_cache: bool = False, progress: Progress | None = None, refresh: float = 0.0,
                repair: int = 0) -> Prefilled:
        """A context holding the prompt and the question, resumed from the deepest usable stored
        state, with room for ``max_tokens``. ``repair`` does nothing here: prefix mode computes
        every token the stored state does not hold exactly."""
        _no_refresh(refresh)
        layout = self.layout(schema)
        if no_cache:
            plan = self.prompt_plan(layout, selection)
            q = self.question_tokens(layout, question)
            n_prompt = plan.end + len(q)
            self.runtime.check_fits(n_prompt + max_tokens)
            return prefill_uncached(self.runtime, plan, q, n_prompt + max_tokens, progress)
        return self._resume_request(schema, layout, selection, question, max_tokens, progress)

    def _resume_request(self, schema: Schema, layout: Layout, selection: Selection, question: str | Conversation,
                        max_tokens: int, progress: Progress | None) -> Prefilled:
        self.runtime.arena.reset()  # the previous question's blobs are dead
        request = self.prompt_plan(layout, selection).tokens() + self.question_tokens(layout, question)
        cached = self.cached_prompt(schema)
        key = self.prompt_key(cached)
        warnings: list[str] = []
        compiled: list[ModuleReport] = []
        downloaded: list[ModuleReport] = []
        lease = self._from_store(schema, key, cached, warnings, downloaded)
        try:
            ctx, plan = self._prepare(schema, key, cached, request, max_tokens, warnings, compiled, progress)
        finally:
            if lease is not None:
                self.runtime.remote.release(lease)
        ctx.decode(request[plan.restore_at:], start=plan.restore_at, logits=True)
        # a request always decodes at least its last token, so a state deeper than that serves it not
        self._record_overlap(schema, tokens=len(request), overlap=min(plan.overlap, len(request) - 1))
        return Prefilled(ctx, plan.restore_at, plan.recomputed, 0, warnings, compiled, downloaded=downloaded)

    def _prepare(self, schema: Schema, key: str, cached: list[int], request: list[int], max_tokens: int,
                 warnings: list[str], compiled: list[ModuleReport], progress: Progress | None):
        """A context holding the state the request resumes from. Missing states are compiled
        first; a damaged one is reported, deleted and recomputed; when the cache cannot be
        written, the request is computed cold."""
        try:
            for attempt in range(2):
                try:
                    if attempt or (cached and len(cached) not in self.stored(key)):
                        report = self.compile(schema, progress=progress, skip_in_store=False)
                        compiled += [r for r in report.modules if r.status == "computed"]
                        warnings += report.warnings
                    ctx = self.runtime.context(max(len(request), len(cached)) + max_tokens)
                    return ctx, self._restore(ctx, key, cached, request)
                except DamagedState as e:
                    if attempt:
                        raise
                    warnings.append(f"{e}; recomputing it")
                    self._discard(self.state_dir(key) / f"{e.position}.pcm")
        except (DamagedState, CacheWriteError, OSError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            warnings.append(f"cannot use the prefix cache ({why}); answering without it")
        ctx = self.runtime.context(len(request) + max_tokens)
        return ctx, ResumePlan(common_prefix(cached, request), 0, len(request))

    def _discard(self, path: Path) -> None:
        try:
            self.store.unlink(path)
        except CacheWriteError:  # a read-only cache, or a link: it stays, and is skipped again next time
            pass


def _positions(listing, length: int) -> set[int]:
    """The positions of the states a listing of a prompt's folder in the store names (names that
    are not ``<position>.pcm`` with 0 < position <= length are ignored: never a local path)."""
    out = set()
    for o in listing:
        name = o.rel.rsplit("/", 1)[-1]
        stem = name[:-4] if name.endswith(".pcm") else ""
        if stem.isdigit() and stem == str(int(stem)) and 0 < int(stem) <= length:
            out.add(int(stem))
    return out


def _no_refresh(asked) -> None:
    if asked:
        raise ValueError("selective recompute is for stitched modules; prefix states are exact")

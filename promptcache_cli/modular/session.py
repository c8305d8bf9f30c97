"""Modular mode: compile a schema's modules into cached states, then answer a question by
stitching the selected modules' states into one sequence.

:class:`ModularSession` runs the phases; each lives in its own module: where modules live in the
cache (catalog.py), computing and storing them (compiler.py), reading them back (loader.py),
putting them into one sequence (stitch.py), recomputing the tokens that depend most on their
context (refresh.py, ranking.py) and reusing the cells of earlier questions (tails.py). It
returns dataclasses, reports progress through callbacks and never prints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from ..core.answer import Prefilled, finish, prefill_tokens, prefill_uncached
from ..core.results import Answer, CompileReport, ModuleReport, Progress, Staleness
from ..core.runtime import Runtime
from ..core.tokens import common_prefix
from ..errors import ModuleDamaged, ModuleStateRefused, UnsupportedModel
from ..llama.context import Context, ContextSettings
from ..llama.model import Model
from ..llama.sampling import Sampler
from ..pml.schema import Schema
from ..pml.selection import Selection
from ..prompt.contexts import ENCODINGS
from ..prompt.conversation import Conversation
from ..prompt.layout import Layout, Path as ModPath
from ..prompt.plan import PromptPlan, owner_name
from .catalog import Catalog
from .compiler import Compiler
from .loader import Loader, damaged
from .refresh import RECOMPUTE_SEQUENCES, choose, stale as refresh_stale
from .stitch import fill
from .tails import Held, Tails, decode, filled_as, usable

if TYPE_CHECKING:
    from ..core.sharing import Shard
    from ..prompt.boundaries import Boundary
    from ..store.remote_tier import CacheObject, Tier
    from .text import TextEngine

BoundaryHook = Callable[[Sequence["Boundary"]], Mapping[int, int]]


class ModularSession:
    mode = "modular"

    def __init__(self, model_path: str | Path, *, cache_dir: str | Path, settings: ContextSettings = ContextSettings(),
                 encoding: str = ENCODINGS[0], codec: str = "none", model: Model | None = None,
                 boundary_hook: BoundaryHook | None = None, remote: Tier | None = None, cache_ram: int = 0,
                 positions: str = "packed") -> None:
        """``model``: the file at ``model_path``, already loaded. ``boundary_hook``: an experiment's
        choice of cached tokens to compute afresh at module boundaries (segment offset -> how many
        of its first tokens), given every cached part's :class:`..prompt.boundaries.Boundary`; none by
        default (the benchmarks' boundary repair uses it). ``remote``: the shared store behind the
        cache directory (modules missing locally are downloaded from it, computed ones uploaded).
        ``cache_ram``: bytes of RAM for spans learned from text prompts (0: learned spans go to disk
        at once). ``positions``: ``packed`` (parts in request order, without gaps, states moved where
        they go) or ``static`` (every segment stored and loaded at its layout offset, gaps where
        unselected members would sit: the layout of pc 0.1, kept as an experiment the benchmark
        compares against; no repair or refresh)."""
        if positions not in ("packed", "static"):
            raise ValueError(f"unknown positions {positions!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}")
        if encoding == "average" and not settings.type_k == settings.type_v == "f16":
            raise ValueError("the average encoding averages f16 KV states only")
        model = model if model is not None else Model(str(model_path))
        if not model.memory.can_stitch:
            model.close()  # its memory kind stays known
            raise UnsupportedModel(
                f"{model_path} is a {model.memory.label} model: its state cannot be cut back or stitched from modules; "
                "use prefix mode (--mode prefix, the default for such models)"
            )
        self.runtime = Runtime(model_path, cache_dir=cache_dir, settings=settings, model=model, remote=remote)
        self.catalog = Catalog(self.runtime, encoding=encoding, codec=codec, static=positions == "static")
        self.compiler = Compiler(self.runtime, self.catalog)
        self.loader = Loader(self.runtime, self.catalog, self.compiler)
        self.compiler.cache_object = self.loader.cache_object
        self.boundary_hook = boundary_hook
        self.cache_ram = cache_ram
        self._text: TextEngine | None = None
        self.tails = Tails()  # questions' cells, for questions that begin alike (tails.py)
        self._held: Held | None = None  # what the context holds after the last question

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
    def encoding(self) -> str:
        return self.catalog.encoding

    @property
    def codec(self) -> str:
        return self.catalog.codec

    def close(self) -> None:
        self.runtime.close()

    @property
    def text(self) -> TextEngine:
        """Text prompts: cached text found wherever it stands, learned spans (text.py)."""
        if self._text is None:
            from .text import TextEngine

            self._text = TextEngine(self.runtime, codec=self.codec, ram_bytes=self.cache_ram)
        return self._text

    def layout(self, schema: Schema) -> Layout:
        return self.runtime.layout(schema)

    def keys(self, layout: Layout) -> dict[ModPath, str]:
        return self.catalog.keys(layout)

    def prompt_plan(self, layout: Layout, selection: Selection) -> PromptPlan:
        return self.runtime.plan(layout, selection, static=self.catalog.static)

    def question_tokens(self, layout: Layout, question: str | Conversation) -> list[int]:
        return self.runtime.question_tokens(layout, question)

    def _check_rankable(self) -> None:
        if not self.settings.type_k == self.settings.type_v == "f16":
            raise ValueError("selective recompute ranks f16 KV states only")

    def stale(self, schema: Schema, selection: Selection | None = None) -> Staleness:
        """What compiling ``schema`` (asking about ``selection``) would compute first, and why."""
        layout = self.layout(schema)
        owners = layout.owners() if selection is None else self.prompt_plan(layout, selection).owners
        return self.catalog.stale(schema, layout, self.keys(layout), owners)

    # -- compile ----------------------------------------------------------------------------
    def compile(self, schema: Schema, *, owners: list[ModPath] | None = None, force: bool = False,
                progress: Progress | None = None, ranked: bool = False, shard: Shard | None = None,
                skip_in_store: bool = True) -> CompileReport:
        """Compute and store every module's states that are not cached yet (or ``owners``);
        ``ranked``: also their selective-recompute scores (refresh.py) where missing. ``shard``
        (K, N): only the modules whose key is in share K of N (the others are reported as
        ``other shard``). With a remote store, modules it holds are not computed (``remote``),
        computed ones are uploaded, and cached ones it lacks too (``skip_in_store`` False: modules
        are computed whatever the store holds)."""
        from dataclasses import replace

        t0 = time.perf_counter()
        layout = self.layout(schema)
        self.runtime.check_fits(layout.end + 1)  # before any key is computed
        keys = self.keys(layout)
        tier = self.runtime.remote
        todo = owners if owners is not None else layout.owners()
        reports: list[ModuleReport] = []
        pending = []
        if shard is not None:
            from ..core.sharing import in_shard

            reports += [ModuleReport(owner_name(o), keys[o], "other shard", layout.tokens_of(o), 0, 0.0)
                        for o in todo if not in_shard(keys[o], shard)]
            todo = [o for o in todo if in_shard(keys[o], shard)]
        for owner in todo:
            path = self.catalog.path(keys[owner])
            size = None if force else self.store.size(path)
            if size is not None:
                report = self.catalog.reused(layout, keys, owner, size)
                if tier is not None and self.compiler.publish(keys[owner], path):
                    report = replace(report, uploaded=True)
                reports.append(report)
            elif not force and skip_in_store and tier is not None and self._in_store(keys[owner]):
                reports.append(ModuleReport(owner_name(owner), keys[owner], "remote", layout.tokens_of(owner), 0, 0.0))
            else:
                pending.append(owner)
        if pending:
            reports += self.compiler.compute(layout, keys, pending, redo=pending if force else (), progress=progress)
        order = {owner_name(o): i for i, o in enumerate(layout.owners())}
        reports.sort(key=lambda r: order[r.name])
        self.catalog.record(schema, layout, keys)
        if tier is not None:
            self.compiler.publish_manifest(schema, layout, keys)
        measured: list[ModPath] = []
        warnings: list[str] = []
        if ranked:  # every file is read whole: a damaged one is recomputed first (with a warning)
            from . import ranking

            self._check_rankable()
            self.runtime.reset_arena()
            blobs, recomputed, _ = self.loader.gather(schema, layout, keys, list(todo), warnings, progress, wait=True)
            redone = {r.name: r for r in recomputed}
            reports = [redone.get(r.name, r) for r in reports]
            ranking.scores(self.compiler, layout, keys, list(todo), blobs.__getitem__, measured,
                           warnings, progress)
        if tier is not None:
            warnings += tier.take_warnings()
        return CompileReport(schema.name, self.encoding, tuple(reports), time.perf_counter() - t0,
                             tuple(owner_name(o) for o in measured), tuple(warnings),
                             str(tier) if tier is not None else None)

    def _in_store(self, key: str) -> bool:
        from ..store.remote import module_rel

        tier = self.runtime.remote
        return tier is not None and tier.has(module_rel(key)) is True

    # -- the remote store -------------------------------------------------------------------
    def cache_objects(self, schema: Schema, *, in_store: bool = False) -> list[CacheObject]:
        """The schema's module files as both tiers know them (``in_store``: the same here)."""
        layout = self.layout(schema)
        keys = self.keys(layout)
        return [self.loader.cache_object(layout, keys, o) for o in layout.owners()]

    def record(self, schema: Schema, *, remote: bool = False) -> None:
        """Write the schema's manifest: in the cache directory, or (``remote``) in the store."""
        layout = self.layout(schema)
        keys = self.keys(layout)
        if remote:
            self.compiler.publish_manifest(schema, layout, keys)
        else:
            self.catalog.record(schema, layout, keys)

    # -- ask --------------------------------------------------------------------------------
    def ask(self, schema: Schema, selection: Selection, question: str | Conversation, *, max_tokens: int = 128,
            sampler: Sampler = Sampler(), no_cache: bool = False, on_text: Callable[[str], None] | None = None,
            progress: Progress | None = None, keep_logits: bool = False, refresh: float = 0.0,
            repair: int = 0, stop: Sequence[str] = ()) -> Answer:
        """Answer ``question`` over the selected modules (:meth:`prefill`, then generate); ``on_text``
        receives the answer's text as it grows."""
        t0 = time.perf_counter()
        done = self.prefill(schema, selection, question, max_tokens=max_tokens, no_cache=no_cache,
                            progress=progress, refresh=refresh, repair=repair)
        return finish(self.runtime, done, selection=selection, t0=t0, max_tokens=max_tokens, sampler=sampler,
                      on_text=on_text, keep_logits=keep_logits, stop=stop)

    def prefill(self, schema: Schema, selection: Selection, question: str | Conversation, *, max_tokens: int = 128,
                no_cache: bool = False, progress: Progress | None = None, refresh: float = 0.0,
                repair: int = 0) -> Prefilled:
        """A context holding the prompt and the question, with room for ``max_tokens``. ``repair``:
        how many first tokens of each cached part placed after other text than it was computed
        after are computed afresh, in line. ``refresh``: the fraction (0 to 1) of the prompt's cached
        tokens to recompute in its own context, highest recompute scores first (refresh.py; scores
        missing from the cache are measured and stored first). ``no_cache``: every token computed
        from position 0 (the baseline)."""
        if not 0 <= refresh <= 1:
            raise ValueError(f"refresh is a fraction from 0 to 1, not {refresh}")
        if refresh:
            self._check_rankable()
        if self.catalog.static and (refresh or repair) and not no_cache:
            raise ValueError("static positions (an experiment) answer from the bare cache: no repair or refresh")
        layout = self.layout(schema)
        plan = self.prompt_plan(layout, selection)
        q = self.question_tokens(layout, question)
        n_prompt = plan.end + len(q)
        self.runtime.check_fits(n_prompt + max_tokens)  # before compiling anything on demand
        if no_cache:
            return prefill_uncached(self.runtime, plan, q, n_prompt + max_tokens, progress)
        return self._stitch(schema, layout, plan, q, max_tokens, progress, refresh, repair)

    def _stitch(self, schema: Schema, layout: Layout, plan: PromptPlan, q: list[int], max_tokens: int,
                progress: Progress | None, refresh: float, repair: int = 0) -> Prefilled:
        """Load the plan's cached segments into sequence 0, each moved to its place, compute the
        fresh parts in between, recompute the ``refresh`` fraction of the cached tokens with the
        highest scores, then the question. Modules missing or damaged are compiled first, and so is a
        module whose cached state llama.cpp refuses (once: a fresh state refused is its failure)."""
        keys = self.keys(layout)
        stored_at = self.catalog.stored_at(layout)
        bounds = []
        if refresh or repair or self.boundary_hook:  # (imported here: a plain answer needs none)
            from ..prompt.boundaries import boundaries

            bounds = boundaries(layout, plan, self.encoding)
        fix = dict(self.boundary_hook(bounds)) if self.boundary_hook else {}
        for b in bounds if repair else ():
            if not b.exact:
                fix[b.offset] = max(fix.get(b.offset, 0), min(repair, b.length))
        held, self._held = self._held, None
        if held is not None and held.uses != self.runtime.uses:
            held = None  # the context has answered something else since
        filled = None if refresh or self.boundary_hook else filled_as(plan, keys, stored_at, fix)
        if filled is not None and held is not None and held.prompt == filled:
            again = self._again(held, q, plan.end + len(q) + max_tokens)
            if again is not None:
                return again
        if held is not None:  # the context is about to be cleared
            assert self.runtime.ctx is not None
            self.tails.keep(self.runtime.ctx, held)
        warnings: list[str] = []
        ranked: list[ModPath] = []
        downloaded: list[ModuleReport] = []
        self.runtime.reset_arena()
        blobs, compiled, fresh = self.loader.gather(schema, layout, keys, plan.owners, warnings, progress,
                                                    wait=bool(refresh), downloaded=downloaded)
        stale = refresh_stale(bounds) if refresh else []
        n_refresh = min(round(refresh * sum(len(s.tokens) for s in plan.cached)),
                        sum(len(seg.tokens) - fix.get(seg.offset, 0) for seg, _ in stale))  # exact states: none
        scores = {}
        if n_refresh:
            from . import ranking

            owners = list(dict.fromkeys(seg.owner for seg, _ in stale))
            scores = ranking.scores(self.compiler, layout, keys, owners, blobs.__getitem__,
                                    ranked, warnings, progress)
        n_cells = plan.end + len(q) + max_tokens + max(fix.values(), default=0)  # repaired cells twice, briefly
        if n_refresh:  # a recompute batch holds its tokens' old and new cells at once
            n_cells = min(n_cells + min(n_refresh, RECOMPUTE_SEQUENCES - 2), self.model.n_ctx_train)
        ctx = self.runtime.context(n_cells, n_seq=RECOMPUTE_SEQUENCES if n_refresh else Context.N_SEQ)
        while True:
            try:
                cached, computed = fill(ctx, plan, blobs, stored_at, fix)
                break
            except (ModuleStateRefused, ModuleDamaged) as e:
                if e.owner in fresh:
                    raise e.error if isinstance(e, ModuleDamaged) else e from None
                warnings.append(damaged(e.owner, e.error) if isinstance(e, ModuleDamaged) else
                                f"llama.cpp refused the cached state of module '{owner_name(e.owner)}'; recomputing it")
                more, recompiled, now = self.loader.gather(schema, layout, keys, [e.owner], warnings, progress,
                                                           redo=True)
                blobs.update(more)
                compiled += recompiled
                fresh |= now
                ctx.clear()
        refreshed = 0
        if n_refresh:
            first = {seg.offset: fix.get(seg.offset, 0) for seg, _ in stale}
            candidates = [(at + first[seg.offset], seg.tokens[first[seg.offset]:],
                           scores[seg.owner, seg.offset][first[seg.offset]:]) for seg, at in stale]
            tokens, positions = choose(candidates, n_refresh)
            ctx.recompute(tokens, positions)
            refreshed = len(tokens)
        reused = 0
        if filled is not None:
            reused = self.tails.resume(ctx, filled, plan.end, q, 0)
        decode(ctx, q, plan.end, reused)
        if filled is not None:
            self._held = Held(filled, plan.end, tuple(q), self.runtime.uses)
        repaired = sum(fix.values())
        return Prefilled(ctx, cached - refreshed + reused, computed + refreshed + len(q) - reused,
                         refreshed + repaired, warnings, compiled, [owner_name(o) for o in ranked], downloaded)

    def _again(self, held: Held, q: list[int], n_cells: int) -> Prefilled | None:
        """The question after the prompt the context already holds: the cells the last question
        shares with it kept (or a kept tail's, when it shares more), the rest computed. None when
        the context is too small for this question and its answer."""
        ctx = self.runtime.ctx
        if ctx is None or ctx.n_ctx < n_cells:
            return None
        here = usable(common_prefix(held.tokens, q), q)
        if here < len(held.tokens):
            self.tails.keep(ctx, held)
        ctx.seq_rm(0, held.start + here, -1)
        n = self.tails.resume(ctx, held.prompt, held.start, q, here)
        decode(ctx, q, held.start, n)
        self.runtime.last_ctx = ctx
        self._held = Held(held.prompt, held.start, tuple(q), self.runtime.uses)
        return Prefilled(ctx, held.start + n, len(q) - n)

    # -- text prompts (no schema) -------------------------------------------------------------
    def prefill_text(self, tokens: list[int], contents: list[tuple[int, int]], *, max_tokens: int = 128,
                     no_cache: bool = False, refresh: float = 0.0, repair: int = 0):
        """A context holding a prompt given as tokens (``contents``: where its messages' texts lie),
        its cached text found wherever it stands (text.py), and the plan to learn from (None with
        ``no_cache``)."""
        if not 0 <= refresh <= 1:
            raise ValueError(f"refresh is a fraction from 0 to 1, not {refresh}")
        if refresh:
            self._check_rankable()
        if no_cache:
            return prefill_tokens(self.runtime, tokens, len(tokens) + max_tokens), None
        return self.text.prefill(tokens, contents, max_tokens=max_tokens, repair=repair, refresh=refresh)

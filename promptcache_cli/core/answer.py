"""The last phases of every answer, whatever put the prompt into the context: generate the
answer's tokens (streamed, or all at once) and report them. And the one way to put a prompt into
a context without any cache (the `--no-cache` baseline)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from ..llama.context import Context
from ..llama.sampling import Generation, Sampler
from ..pml.selection import Selection
from ..prompt.plan import PromptPlan, owner_name
from .results import Answer, ModuleReport, Progress, SpanUse
from .runtime import Runtime


@dataclass
class Prefilled:
    """A context holding the prompt and the question, the last token's logits ready, and what it
    took to get there."""

    ctx: Context
    cached: int  # prompt tokens whose states came from the cache
    computed: int  # tokens decoded now
    refreshed: int = 0  # cached tokens recomputed in the prompt's context
    warnings: list[str] = field(default_factory=list)
    compiled: list[ModuleReport] = field(default_factory=list)
    ranked: list[str] = field(default_factory=list)
    downloaded: list[ModuleReport] = field(default_factory=list)
    spans: list[SpanUse] = field(default_factory=list)  # text prompts: the cached runs found


def prefill_uncached(runtime: Runtime, plan: PromptPlan, question: list[int], n_cells: int,
                     progress: Progress | None = None) -> Prefilled:
    """The plan's tokens and the question decoded from position 0 in a context of ``n_cells``
    (``progress`` reports the tokens, as "the prompt")."""
    ctx = runtime.context(n_cells)
    tokens = plan.tokens() + question
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, len(tokens), "the prompt")

    if progress is not None:
        progress(0, len(tokens), "the prompt")
    ctx.decode(tokens, start=0, logits=True, progress=tick)
    return Prefilled(ctx, 0, len(tokens))


def prefill_tokens(runtime: Runtime, tokens: list[int], n_cells: int) -> Prefilled:
    """Tokens decoded from position 0 in a context of ``n_cells``, nothing cached (a text prompt's
    `--no-cache` baseline)."""
    runtime.check_fits(n_cells)
    ctx = runtime.context(n_cells)
    ctx.decode(tokens, start=0, logits=True)
    return Prefilled(ctx, 0, len(tokens))


def stream(runtime: Runtime, done: Prefilled, *, selection: Selection | None, t0: float, max_tokens: int,
           sampler: Sampler, keep_logits: bool, stop: Sequence[str] = (),
           halt: Callable[[], bool] | None = None) -> Iterator[str | Answer]:
    """The answer's text as it grows, then its :class:`Answer` (``t0``: when the ask began;
    ``stop``: strings that end it, left out; ``halt``: asked after each piece whether to end the
    answer there)."""
    logits = done.ctx.logits()
    g = Generation(runtime.model, done.ctx, logits, max_tokens=max_tokens, sampler=sampler, t0=t0, stop=stop,
                   halt=halt)
    yield from g
    yield _report(runtime, done, g, selection=selection, t0=t0, logits=logits if keep_logits else None)


def finish(runtime: Runtime, done: Prefilled, *, selection: Selection | None, t0: float, max_tokens: int,
           sampler: Sampler, on_text: Callable[[str], None] | None, keep_logits: bool,
           stop: Sequence[str] = (), halt: Callable[[], bool] | None = None) -> Answer:
    """The whole answer; ``on_text`` receives its text as it grows."""
    logits = done.ctx.logits()
    g = Generation(runtime.model, done.ctx, logits, max_tokens=max_tokens, sampler=sampler, t0=t0, stop=stop,
                   halt=halt)
    for piece in g:
        if on_text:
            on_text(piece)
    return _report(runtime, done, g, selection=selection, t0=t0, logits=logits if keep_logits else None)


def _report(runtime: Runtime, done: Prefilled, g: Generation, *, selection: Selection | None, t0: float,
            logits: np.ndarray | None) -> Answer:
    assert g.ttft is not None
    return Answer(
        text=g.text,
        tokens=tuple(g.tokens),
        ttft_ms=g.ttft * 1000,
        total_ms=(time.perf_counter() - t0) * 1000,
        cached_tokens=done.cached,
        computed_tokens=done.computed,
        modules=tuple(sorted(owner_name(m) for m in selection.modules)) if selection is not None else
        tuple(dict.fromkeys(s.name for s in done.spans)),
        model=runtime.model.description,
        warnings=tuple(done.warnings),
        compiled=tuple(done.compiled),
        first_logits=logits,
        refreshed_tokens=done.refreshed,
        ranked=tuple(done.ranked),
        downloaded=tuple(done.downloaded),
        spans=tuple(done.spans),
        finish_reason=g.finish_reason,
    )

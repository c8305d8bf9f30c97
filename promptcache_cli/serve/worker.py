"""The threads that run llama.cpp: each owns one session (a llama.cpp context; the model file is
memory-mapped, so its weights are shared), takes jobs from the queue one at a time and sends
their events back to the event loop. The event loop never waits on llama.cpp.

A plain prompt (the bare model) goes request -> prompt tokens -> the deepest usable state
(:meth:`Worker.resume_point`: what the context holds, or a state from the RAM prompt cache) ->
the rest computed. Plain prompts have a context of their own (a schema's question never
displaces them). Before that context's state is lost to another plain prompt it is kept in the
RAM cache when it is worth it (more than half of it would be lost), as llama.cpp's server does;
where states cannot be cut back, the state at the prompt's end is kept as it is computed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from .. import errors
from ..api import Sampler, TextRequest, answer_record
from .jobs import Done, Job, JobQueue
from .metrics import Metrics
from .prompt_cache import Hit, PromptCache
from .wire import ApiError, Usage

if TYPE_CHECKING:
    from ..api import Answer, Session
    from .prompts import Work

KEEP_MIN_TOKENS = 16  # a context holding fewer tokens is not worth a state in RAM


class StopText:
    """Cuts the answer at the first stop string: text that may begin one is held back until it
    cannot (so no part of a stop string is ever sent)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        """The text that can be sent now."""
        if not self.stops:
            return piece
        text = self.pending + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit, self.pending = True, ""
            return text[: min(found)]
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1))
                    if text.endswith(s[:k])), default=0)
        self.pending = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


class Worker(threading.Thread):
    def __init__(self, index: int, session: Session, queue: JobQueue, cache: PromptCache, metrics: Metrics, *,
                 max_tokens_limit: int, learn: bool = False) -> None:
        super().__init__(name=f"pc-worker-{index}", daemon=True)
        self.session = session
        self.queue = queue
        self.cache = cache
        self.metrics = metrics
        self.max_tokens_limit = max_tokens_limit
        self.learn = learn  # chats: cached text found anywhere in them, their new text learned
        self.busy = False

    def run(self) -> None:
        while (job := self.queue.get()) is not None:
            if job.cancelled.is_set():
                self.metrics.job_cancelled()
                continue
            self.busy = True
            job.started = time.perf_counter()
            try:
                self.serve(job)
            except errors.Halted:
                self.metrics.job_cancelled()
            except ApiError as e:
                job.emit("error", e)
            except errors.PcError as e:
                job.emit("error", api_error(e))
            except Exception as e:  # noqa: BLE001 - one bad request never takes the server down
                if os.environ.get("PC_DEBUG"):
                    import traceback

                    traceback.print_exc()
                print(f"pc serve: internal error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                job.emit("error", ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))
            finally:
                self.busy = False
                self.metrics.job_done(time.perf_counter() - job.started)

    # -- one job -------------------------------------------------------------------------------
    def serve(self, job: Job) -> None:
        work: Work = job.work
        stop = StopText(work.sampling.stop)

        def halt() -> bool:
            return stop.hit or job.cancelled.is_set()

        if work.request is not None:
            items = self._schema_answer(work, halt)
        else:
            items = self._plain_answer(work, halt)
        parts: list[str] = []
        answer: Answer | None = None
        for item in items:
            if isinstance(item, str):
                if job.first_token is None:
                    job.first_token = time.perf_counter()
                    self.metrics.ttft(job.first_token - job.received)
                text = stop.feed(item)
                if text:
                    parts.append(text)
                    job.emit("text", text)
            else:
                answer = item
        if job.cancelled.is_set():
            raise errors.Halted()
        assert answer is not None
        tail = stop.flush()
        if tail:
            parts.append(tail)
            job.emit("text", tail)
        if job.first_token is None:
            self.metrics.ttft(time.perf_counter() - job.received)
        usage = Usage(answer.cached_tokens + answer.computed_tokens, answer.cached_tokens, len(answer.tokens))
        self.metrics.answered(cached=answer.cached_tokens, computed=answer.computed_tokens,
                              completion=len(answer.tokens))
        record = None
        if work.record:
            assert work.request is not None
            record = answer_record(answer, mode=self.session.mode, no_cache=work.request.no_cache,
                                   remote=self.session.remote)
        job.emit("done", Done("".join(parts), answer.finish_reason, usage, record))

    def _sampler(self, work: Work) -> Sampler:
        s = work.sampling
        return Sampler(temperature=s.temperature, top_p=s.top_p, seed=s.seed)

    def _max_tokens(self, work: Work, positions: int) -> int:
        """The answer's budget: asked for (within the limit), else what the context leaves."""
        room = self.session.context_length - positions
        if room < 1:
            raise ApiError(400, f"the prompt takes {positions} positions, the model's context "
                           f"{self.session.context_length}", code="context_length_exceeded", param="messages")
        return work.sampling.max_tokens or min(self.max_tokens_limit, room)

    def _schema_answer(self, work: Work, halt) -> Iterator[str | Answer]:
        session = self.session
        assert work.request is not None
        request = work.request
        if work.sampling.max_tokens is None:
            view = session.prompt(request)
            request = replace(request, max_tokens=self._max_tokens(work, max(view.parts[-1].end, view.schema_end)))
        else:
            request = replace(request, max_tokens=work.sampling.max_tokens)
        return session.stream(replace(request, sampler=self._sampler(work)), halt=halt)

    def _plain_answer(self, work: Work, halt) -> Iterator[str | Answer]:
        session = self.session
        if work.messages is not None:
            tokens = session.chat_tokens(work.messages)
        elif work.text is not None:
            tokens = session.text_tokens(work.text)
        else:
            assert work.ids is not None
            tokens = list(work.ids)
            bad = next((t for t in tokens if t >= session.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"token id {bad} is not in the model's vocabulary (0 to {session.vocab_size - 1})",
                               param="prompt")
        if not tokens:
            raise ApiError(400, "the prompt is empty", param="prompt")
        max_tokens = self._max_tokens(work, len(tokens))
        if len(tokens) + max_tokens > session.context_length:
            raise ApiError(400, f"the prompt ({len(tokens)} tokens) and max_tokens ({max_tokens}) exceed the "
                           f"model's context of {session.context_length}", code="context_length_exceeded",
                           param="max_tokens")
        if self.learn and work.messages is not None:  # found wherever it stands, learned for next time
            request = TextRequest(tuple(work.messages), max_tokens=max_tokens, sampler=self._sampler(work), learn=True)
            return session.stream(request, halt=halt)
        hit = self.resume_point(tokens)
        # a state that cannot be cut back serves only prompts it is a whole prefix of, and one token is
        # always computed: kept one token before the prompt's end, it serves this prompt again and every
        # prompt that continues it (the next turn of a chat)
        checkpoints = () if session.states_can_cut or len(tokens) < 2 else (len(tokens) - 1,)
        return session.stream_tokens(tokens, max_tokens=max_tokens, sampler=self._sampler(work),
                                     resume=hit.state if hit else None, checkpoints=checkpoints,
                                     on_state=self.cache.put, halt=halt)

    # -- the prompt cache ------------------------------------------------------------------------
    def resume_point(self, tokens: list[int]) -> Hit | None:
        """The RAM state to resume ``tokens`` from, when it serves more than the context holds
        (None: continue from what the context holds, or compute from the start). What the
        context holds is kept in RAM first when more than half of it would be lost."""
        session = self.session
        held = session.held_tokens()
        here = session.reuse_depth(tokens, held) if held else 0
        hit = self.cache.lookup(tokens, session.reuse_depth, beyond=here)
        if hit is not None or here < len(held) / 2:
            self._keep_held()
        return hit

    def _keep_held(self) -> None:
        held = self.session.held_tokens()
        if len(held) >= KEEP_MIN_TOKENS and held not in self.cache and self.cache.capacity:
            state = self.session.save_held()
            if state is not None:
                self.cache.put(state)


def api_error(e: errors.PcError) -> ApiError:
    """A library error as the HTTP error a client sees."""
    if isinstance(e, (errors.PromptTooLong, errors.ContextFullError)):
        return ApiError(400, str(e), code="context_length_exceeded")
    if isinstance(e, (errors.InputError, errors.UsageError, errors.TemplateError)):
        return ApiError(400, str(e))
    return ApiError(500, str(e), type="server_error")

"""The Starlette app: OpenAI's routes plus ``/v1/pc/ask``, ``/health`` and ``/metrics``.

Every handler reads the body within the size limit, checks it (wire.py), decides the prompt
(prompts.py) and queues a job (jobs.py); a worker thread computes it and sends its events back.
A non-streaming answer is collected while watching for the client going away; a streaming one
is sent as server-sent events once its first event is there (so an error found by the worker,
such as a prompt too long, still gets its HTTP status). A client that goes away cancels its job.
Every error, ours or Starlette's (404, 405), is OpenAI's JSON error object.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import prompts, wire
from .jobs import Done, Job, JobQueue
from .metrics import Metrics
from .prompt_cache import PromptCache
from .wire import ApiError

POLL_SECONDS = 0.25  # how often a waiting request checks whether its client is still there


@dataclass
class State:
    """What the handlers share (built by server.py)."""

    served: prompts.Served
    queue: JobQueue
    cache: PromptCache
    metrics: Metrics
    workers: list[Any]
    api_key: str | None
    max_body: int
    max_tokens_limit: int
    mode: str
    started: float


class ClientGone(Exception):
    """The client went away while its request waited."""


def build(state: State) -> Starlette:
    def route(path: str, name: str, handler: Callable[[Request], Awaitable[Response]], method: str) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                if name != "health":
                    _authorize(request, state.api_key)
                response = await handler(request)
            except ApiError as e:
                response = error(e)
            except ClientGone:
                response = Response(status_code=499)  # nobody reads it; counted as nginx does
            except Exception as e:  # noqa: BLE001 - a bug: one line in the log, a 500 for the client
                _log_internal(e)
                response = error(ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))
            state.metrics.request(name, response.status_code)
            return response

        return Route(path, endpoint, methods=[method], name=name)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": state.served.bare, "schemas": list(state.served.schemas),
                             "mode": state.mode, "workers": len(state.workers), "queued": len(state.queue),
                             "busy": sum(1 for w in state.workers if w.busy)})

    async def metrics(request: Request) -> Response:
        gauges = {
            "pc_queue_length": ("Requests waiting for a worker.", len(state.queue)),
            "pc_workers_busy": ("Workers computing a request.", sum(1 for w in state.workers if w.busy)),
            "pc_prompt_cache_bytes": ("Bytes of prompt states kept in RAM.", state.cache.bytes),
            "pc_prompt_cache_capacity_bytes": ("--cache-ram.", state.cache.capacity),
            "pc_prompt_cache_states": ("Prompt states kept in RAM.", len(state.cache)),
            "pc_prompt_cache_hits": ("Plain prompts resumed from a state in RAM.", state.cache.hits),
        }
        return Response(state.metrics.text(gauges), media_type="text/plain; version=0.0.4")

    def model_object(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": int(state.started), "owned_by": "pc"}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_object(m) for m in state.served.ids()]})

    async def model(request: Request) -> Response:
        model_id = request.path_params["model"]
        state.served.schema_for(model_id)  # a 404 for an unknown one
        return JSONResponse(model_object(model_id))

    async def chat(request: Request) -> Response:
        req = wire.chat_request(await _body(request, state.max_body))
        _check_max_tokens(req.sampling, state.max_tokens_limit)
        work = prompts.chat_work(req, state.served)
        return await _answer(request, state, work, stream=req.stream, usage=req.include_usage, chat=True)

    async def completions(request: Request) -> Response:
        req = wire.completion_request(await _body(request, state.max_body))
        _check_max_tokens(req.sampling, state.max_tokens_limit)
        work = prompts.completion_work(req, state.served)
        return await _answer(request, state, work, stream=req.stream, usage=req.include_usage, chat=False)

    async def ask(request: Request) -> Response:
        req = wire.ask_request(await _body(request, state.max_body))
        _check_max_tokens(req.sampling, state.max_tokens_limit)
        work = prompts.ask_work(req, state.served)
        job = _submit(request, state, work)
        async for kind, value in _events(job, request):
            if kind == "done":
                return JSONResponse(value.record)
        raise AssertionError("a job ends with done or error")  # pragma: no cover

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 405:
            return error(ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                                  code="method_not_allowed"))
        if status == 404:
            return error(ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found"))
        return error(ApiError(status, getattr(exc, "detail", "") or "error", type="server_error"))

    async def internal(request: Request, exc: Exception) -> Response:
        return error(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    routes = [
        route("/health", "health", health, "GET"),
        route("/metrics", "metrics", metrics, "GET"),
        route("/v1/models", "models", models, "GET"),
        route("/v1/models/{model:path}", "model", model, "GET"),
        route("/v1/chat/completions", "chat", chat, "POST"),
        route("/v1/completions", "completions", completions, "POST"),
        route("/v1/pc/ask", "ask", ask, "POST"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: internal})


def _log_internal(e: Exception) -> None:
    if os.environ.get("PC_DEBUG"):
        traceback.print_exception(e)
    print(f"pc serve: internal error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _authorize(request: Request, key: str | None) -> None:
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        what = "no API key given (send 'Authorization: Bearer KEY')" if not header else "incorrect API key"
        raise ApiError(401, what, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def _body(request: Request, limit: int) -> dict[str, Any]:
    length = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    if length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
    except ClientDisconnect:  # it left before sending the whole body
        raise ClientGone() from None
    return wire.parse_json(bytes(body))


def _check_max_tokens(sampling: wire.Sampling, limit: int) -> None:
    if sampling.max_tokens is not None and sampling.max_tokens > limit:
        raise ApiError(400, f"'max_tokens' is {sampling.max_tokens}; this server allows at most {limit}",
                       param="max_tokens")


def _submit(request: Request, state: State, work: prompts.Work) -> Job:
    job = Job(work, asyncio.get_running_loop())
    try:
        state.queue.put(job)
    except ApiError as e:
        if e.code == "queue_full":  # a guess at when a place frees up
            wait = state.metrics.job_seconds * (len(state.queue) + 1) / max(1, len(state.workers))
            e.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise
    return job


async def _events(job: Job, request: Request | None) -> AsyncIterator[tuple[str, Any]]:
    """The job's events up to its end; an error event raises its ApiError. With ``request``, the
    client is watched while waiting (ClientGone, the job cancelled, once it has left)."""
    loop = asyncio.get_running_loop()
    checked = loop.time()
    while True:
        getter = asyncio.ensure_future(job.events.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=POLL_SECONDS)
                # checked every POLL_SECONDS, also while pieces arrive faster than that
                if request is not None and loop.time() - checked >= POLL_SECONDS:
                    checked = loop.time()
                    if await request.is_disconnected():
                        job.cancel()
                        raise ClientGone()
                if done:
                    break
        finally:
            if not getter.done():
                getter.cancel()
        kind, value = getter.result()
        if kind == "error":
            raise value
        yield kind, value
        if kind == "done":
            return


async def _answer(request: Request, state: State, work: prompts.Work, *, stream: bool, usage: bool,
                  chat: bool) -> Response:
    job = _submit(request, state, work)
    reply = wire.Reply(work.model, chat=chat)
    events = _events(job, request)
    if not stream:
        async for kind, value in events:
            if kind == "done":
                return JSONResponse(reply.whole(value.text, value.finish_reason, value.usage))
        raise AssertionError("a job ends with done or error")  # pragma: no cover
    try:
        first = await events.__anext__()  # before the headers: an error keeps its status
    except BaseException:
        job.cancel()
        raise
    return EventStream(_chunks(job, reply, first, usage), job)


async def _chunks(job: Job, reply: wire.Reply, first: tuple[str, Any], usage: bool) -> AsyncIterator[bytes]:
    if reply.chat:
        yield wire.sse(reply.chunk(None if first[0] != "text" else first[1], first=True))
    elif first[0] == "text":
        yield wire.sse(reply.chunk(first[1]))
    event = first
    try:
        rest = _events(job, None)
        while event[0] != "done":
            event = await rest.__anext__()
            if event[0] == "text":
                yield wire.sse(reply.chunk(event[1]))
    except ApiError as e:  # the answer failed midway: say so in the stream, as OpenAI does
        yield wire.sse(e.body())
        yield wire.sse("[DONE]")
        return
    except Exception as e:  # noqa: BLE001 - a bug: logged, and the stream says so
        _log_internal(e)
        yield wire.sse(ApiError(500, f"internal error: {type(e).__name__}", type="server_error").body())
        yield wire.sse("[DONE]")
        return
    done: Done = event[1]
    yield wire.sse(reply.chunk(None, done.finish_reason))
    if usage:
        yield wire.sse(reply.usage_chunk(done.usage))
    yield wire.sse("[DONE]")


class EventStream(StreamingResponse):
    """Server-sent events; however the response ends (the client gone, the server stopping),
    its job is cancelled (a no-op once the job is done)."""

    def __init__(self, chunks: AsyncIterator[bytes], job: Job) -> None:
        super().__init__(chunks, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()

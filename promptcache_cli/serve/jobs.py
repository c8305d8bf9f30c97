"""A job: one request's work, queued for a worker thread, and the events it sends back to the
event loop (text pieces, then the end or an error). The queue is first come, first served, and
bounded: a full queue refuses a job (the server answers 503 with Retry-After) rather than letting
waits pile up.

The worker thread never touches asyncio objects directly: :meth:`Job.emit` hands each event to
the loop with ``call_soon_threadsafe``. A client that goes away sets :attr:`Job.cancelled`; the
worker checks it between prompt batches and after each piece of the answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .wire import ApiError, Usage


@dataclass(frozen=True)
class Done:
    """How an answer ended."""

    text: str  # the whole answer (stop strings cut off)
    finish_reason: str  # "stop" or "length"
    usage: Usage
    record: dict[str, Any] | None = None  # /v1/pc/ask: the object `pc ask --json` prints


class Job:
    def __init__(self, work: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.work = work
        self.loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.received = time.perf_counter()
        self.started: float | None = None  # when a worker took it
        self.first_token: float | None = None

    # -- from the worker thread ------------------------------------------------------------------
    def emit(self, kind: str, value: Any) -> None:
        """Send ``("text", str)``, ``("done", Done)`` or ``("error", ApiError)`` to the loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    # -- from the event loop ---------------------------------------------------------------------
    def cancel(self) -> None:
        self.cancelled.set()


class JobQueue:
    """First come, first served, at most ``capacity`` jobs waiting (the ones running not counted)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        """Queue ``job``, or raise a 503 ApiError when the queue is full or closing."""
        with self._ready:
            if self._closed:
                raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if len(self._jobs) >= self.capacity:
                raise ApiError(503, f"the server is busy: {len(self._jobs)} requests are waiting; retry later",
                               type="server_error", code="queue_full")
            self._jobs.append(job)
            self._ready.notify()

    def get(self) -> Job | None:
        """The next job (blocking), or None once the queue is closed and empty."""
        with self._ready:
            while not self._jobs and not self._closed:
                self._ready.wait()
            return self._jobs.popleft() if self._jobs else None

    def close(self) -> None:
        """No more jobs: workers finish what is queued, then stop."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

"""The physical floor of a cached answer: with the same llama.cpp build and the selected states
already decoded in RAM (numpy arrays), the time to hand them to llama.cpp the way the engine does
(the first into sequence 0, each next one into scratch sequence 1, copied into 0, 1 cleared),
compute only the fresh tokens (parameter values, the question) and pick the first token.

Nothing a cached system does can be faster with this build: it leaves out reading, checking and
decompressing files, the layout and every Python step of the engine.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..api import Session
from ..llama.context import Context
from ..store import cache_file
from .workloads import Question, Workload


class Floor:
    name = "floor"
    label = "physical floor (states in RAM, question only)"

    def __init__(self) -> None:
        self.ctx: Context | None = None
        self._ops: list[tuple[str, object]] = []
        self._question: list[int] = []
        self._key: tuple | None = None

    def prepare(self, session: Session, wl: Workload, q: Question) -> None:
        """Read the question's states from ``session``'s cache files into RAM (untimed)."""
        if self._key == (wl.name, q):
            return
        view = session.prompt(wl.request(q))
        files: dict[str, cache_file.CacheFile] = {}
        ops: list[tuple[str, object]] = []
        try:
            for part in view.parts[:-1]:
                if part.kind in ("fresh", "uncached"):
                    ops.append(("decode", list(part.tokens)))
                    continue
                assert part.file is not None
                path = str(part.file)
                f = files.get(path) or files.setdefault(path, cache_file.read(part.file))
                i = next(i for i, s in enumerate(f.segments) if s.tokens == part.tokens)
                # a private copy in RAM, moved from where it is stored to where the prompt puts it
                ops.append(("load", (np.array(f.blob(i)), part.offset - f.segments[i].offset)))
        finally:
            for f in files.values():
                f.close()
        self._ops, self._question, self._key = ops, list(view.parts[-1].tokens), (wl.name, q)
        need = max(256, -(-(view.schema_end + len(self._question) + 1) // 256) * 256)
        if self.ctx is None or self.ctx.n_ctx < need or self.ctx.model is not session.model:
            self.close()
            self.ctx = Context(session.model, replace(session.settings, n_ctx=need))

    @property
    def ops(self) -> list[tuple[str, object]]:
        """What comes before the question: ("load", (blob, shift)) and ("decode", tokens), in order."""
        return list(self._ops)

    @staticmethod
    def replay(ctx: Context, ops: list[tuple[str, object]]) -> None:
        """Empty ``ctx`` and build the prompt before the question in sequence 0, as the engine does."""
        ctx.clear()
        for kind, obj in ops:
            if kind == "decode":
                ctx.decode(obj, start=ctx.pos_max(0) + 1)
            else:
                blob, delta = obj  # type: ignore[misc]
                if ctx.pos_max(0) < 0:
                    ctx.load_state(0, blob)
                    ctx.seq_add(0, delta)
                else:
                    ctx.load_state(1, blob)
                    ctx.seq_add(1, delta)
                    ctx.seq_cp(1, 0)
                    ctx.seq_rm(1)

    def measure(self) -> float:
        """Milliseconds from an empty context to the first token's id."""
        ctx = self.ctx
        assert ctx is not None
        t0 = time.perf_counter()
        self.replay(ctx, self._ops)
        ctx.decode(self._question, start=ctx.pos_max(0) + 1, logits=True)
        int(np.argmax(ctx.logits()))
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None

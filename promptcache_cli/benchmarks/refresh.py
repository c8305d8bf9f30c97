"""A candidate repair measured by the quality section: selective recompute (after CacheBlend).

A stitched module's cells were computed after other text than the prompt puts before them; most
of them barely change with that context, a few change a lot. Which ones is predictable without
the uncached prompt: compute the module under two contexts (the scaffold and the independent
encoding, both of which a cache can hold) and rank its tokens by how far their K and V rows move
between the two. The repair recomputes the top ``fraction`` of the prompt's cached tokens in the
prompt's real context (:meth:`Context.recompute`), then answers as usual.

`pc` does not offer this yet: the ranking would be computed at compile time and stored with each
module. Here both encodings' states of the prompt are at hand, which gives the same ranking, and
the time to first token counts what `pc ask` would do: load the stitched states, recompute the
chosen tokens, decode the question.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from .. import state_blob
from ..engine import Session, generate
from ..llama_backend import Context
from ..sampling import Sampler
from .perturb import kv_payloads

N_SEQ = 66  # 64 tokens recomputed per batch


def rows(blob: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(cell positions in increasing order, every layer's K and V rows as float32 in that order)."""
    positions = state_blob.parse(blob).positions
    order = np.argsort(positions, kind="stable")
    n, payloads = kv_payloads(blob)
    out = []
    for _, at, n_embd, transposed in payloads:
        a = blob[at : at + 2 * n_embd * n].view(np.float16)
        a = a.reshape(n_embd, n).T if transposed else a.reshape(n, n_embd)
        out.append(a[order].astype(np.float32))
    return positions[order], out


def sensitivity(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, score per position): the relative distance between two state blobs of the same
    cells, summed over every layer's K and V rows."""
    pos_a, rows_a = rows(a)
    pos_b, rows_b = rows(b)
    if not np.array_equal(pos_a, pos_b):
        raise ValueError("the two states hold different cells")
    score = np.zeros(len(pos_a))
    for x, y in zip(rows_a, rows_b, strict=True):
        score += np.linalg.norm(x - y, axis=1) / (np.linalg.norm(x, axis=1) + 1e-6)
    return pos_a, score


def prompt_state(session: Session, schema, sel, question: str, n_prompt: int) -> np.ndarray:
    """The session's stitched states of the prompt (its cached answer's context, question cut off)."""
    session.ask(schema, sel, question, max_tokens=1)
    ctx = session._ctx
    ctx.seq_rm(0, n_prompt, -1)
    return ctx.save_state(0)


class Refresher:
    """Answers with the top ``fraction`` of a stitched prompt's tokens recomputed."""

    def __init__(self, scaffold: Session, independent: Session, fraction: float) -> None:
        self.scaffold, self.independent, self.fraction = scaffold, independent, fraction
        self._ctx: Context | None = None

    def ask(self, schema, sel, question: str, n_tokens: int) -> dict:
        s = self.scaffold
        layout = s.layout(schema)
        prompt = np.asarray(s.flat_tokens(s.prompt_plan(layout, sel)), np.int32)
        q = s.question_tokens(layout, question)
        stitched = prompt_state(s, schema, sel, question, len(prompt))
        positions, score = sensitivity(stitched, prompt_state(self.independent, schema, sel, question, len(prompt)))
        chosen = np.sort(positions[np.argsort(-score, kind="stable")[: round(self.fraction * len(prompt))]])
        need = len(prompt) + len(q) + n_tokens
        if self._ctx is None or self._ctx.n_ctx < need:
            if self._ctx is not None:
                self._ctx.close()
            self._ctx = Context(s.model, replace(s.settings, n_ctx=-(-need // 256) * 256), n_seq=N_SEQ)
        ctx = self._ctx
        ctx.clear()
        t0 = time.perf_counter()
        ctx.load_state(0, stitched)
        ctx.recompute(prompt[chosen], chosen)
        ctx.decode(q, start=len(prompt), logits=True)
        logits = ctx.logits()
        answer, tokens, ttft = generate(s.model, ctx, logits, max_tokens=n_tokens, sampler=Sampler(),
                                        on_text=None, t0=t0)
        return {"answer": answer, "tokens": tokens, "ttft_ms": ttft * 1000, "first_logits": logits,
                "computed_tokens": len(q) + len(chosen)}

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

"""Selective recompute (after CacheBlend): which cached tokens to compute again in a prompt's context.

A stitched module's cells were computed after other text than the prompt puts before them. Most
of them barely change with that context, a few change a lot, and which ones a cache can know at
compile time: compute the module under both encodings (``scaffold`` and ``independent``) and score
each token by how far its K and V rows move between the two (relative distance, summed over every
layer's K and V). `pc compile --ranked` stores the scores with each module; `pc ask --refresh PCT`
recomputes the PCT% of the prompt's cached tokens with the highest scores in the prompt's own
context (:meth:`..llama.context.Context.recompute`) before the question.

A module's scores are stored with the context they were measured against (``against``: the other
encoding and a hash of its context tokens), so scores measured against another context are never
used: they are measured again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xxhash

from ..llama.state_blob import kv_payloads, parse
from ..prompt.contexts import context_tokens
from ..prompt.layout import Layout, Segment

if TYPE_CHECKING:
    from ..prompt.boundaries import Boundary

OTHER = {"scaffold": "independent", "independent": "scaffold", "average": "independent"}
RECOMPUTE_SEQUENCES = 66  # a context for recomputing: 64 tokens per batch (Context.recompute)
MAX_SCORE = 1e5  # what a stored score is clipped to (the reader refuses 1e6 and more)


def against(layout: Layout, segment: Segment, encoding: str, at: int) -> str:
    """What a segment's scores are measured against, when its states are cached with ``encoding``
    and stored at ``at``: the other encoding's context (its last ``at`` tokens at most)."""
    other = OTHER[encoding]
    context = context_tokens(layout, segment, other)
    context = np.asarray(context[len(context) - at:] if len(context) > at else context, dtype="<i4")
    return f"{other}:{xxhash.xxh3_64_hexdigest(context.tobytes())}"


def stale(bounds: list[Boundary]) -> list[tuple[Segment, int]]:
    """The cached parts whose states were computed after other text than the prompt puts before
    them (the others hold exact states), each with its position in the prompt."""
    return [(b.segment, b.position) for b in bounds if not b.exact]


def rows(blob: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(cell positions in increasing order, every layer's K and V rows as float32 in that order)
    of an f16 state blob; ValueError for other KV types."""
    positions = parse(blob).positions
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


def scores(cached: np.ndarray, other: np.ndarray) -> list[float]:
    """A segment's stored scores, one per token in position order (4 significant digits; finite
    and below the reader's limit even for states holding inf or NaN)."""
    _, s = sensitivity(cached, other)
    s = np.clip(np.nan_to_num(s, nan=0.0, posinf=MAX_SCORE), 0.0, MAX_SCORE)
    return [float(f"{x:.4g}") for x in s]


def choose(candidates: list[tuple[int, tuple[int, ...], tuple[float, ...]]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, positions), in position order, of the ``n`` highest-scored tokens among
    ``candidates``: (first position, tokens, scores) per cached run of the prompt."""
    if n <= 0 or not candidates:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    pos = np.concatenate([np.arange(at, at + len(t), dtype=np.int32) for at, t, _ in candidates])
    tok = np.concatenate([np.asarray(t, np.int32) for _, t, _ in candidates])
    score = np.concatenate([np.asarray(s, np.float64) for _, _, s in candidates])
    top = np.sort(np.argsort(-score, kind="stable")[:n])
    return tok[top], pos[top]

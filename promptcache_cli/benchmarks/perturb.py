"""Tiny, controlled perturbations of f16 KV states: how sensitive are greedy answers to noise?

A control for the answer-quality figures: the exact states of a prompt (what `--no-cache`
computes), with every stored K and V value rounded to fewer of its 10 mantissa bits, then the
question and the answer computed as usual. Whatever agreement such a run loses against the
unperturbed answer is the metric's own noise floor for this model, not a loss caused by caching.
"""

from __future__ import annotations

import numpy as np

from ..llama.state_blob import kv_payloads


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """f16 values rounded (to nearest even) to ``bits`` of their 10 mantissa bits (relative error
    at most 2**-(bits+1); 9 bits is a twentieth of q8_0's error or less)."""
    drop = 10 - bits
    u = x.view(np.uint16).astype(np.uint32)
    u = (u + ((u >> drop) & 1) + (1 << (drop - 1)) - 1) >> drop << drop
    return u.astype(np.uint16).view(np.float16)


def rounded_blob(blob: np.ndarray, bits: int) -> np.ndarray:
    """A copy of a state blob with every K and V value rounded to ``bits`` mantissa bits."""
    out = np.array(blob, dtype=np.uint8, copy=True)
    n_cells, payloads = kv_payloads(out)
    for _, at, n_embd, _ in payloads:
        raw = out[at : at + 2 * n_embd * n_cells].view(np.float16)
        raw[:] = round_mantissa(raw, bits)
    return out

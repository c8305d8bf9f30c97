"""Where to keep M prefix checkpoints of a cached prompt: the exact dynamic program over a decayed
histogram of observed overlap depths, the baselines it is measured against, and the objective that
scores them all (design: ../shared/design/sparse-prefix.md). Pure Python and numpy.

Terms. ``length`` (L) is the cached prompt's length in tokens. A request's overlap depth d is how many
leading tokens it shares with the cached prompt (0 <= d <= L). With checkpoint positions
0 < s_1 < ... < s_M < L the request resumes from s(d), the deepest checkpoint <= d (0 if none), and
recomputes the d - s(d) shared tokens in between. Tokens after d are new and computed whatever the
plan, so they are not counted. The state at the end of the cached prompt (position L) is always kept
in addition to the M checkpoints, so a request with d == L recomputes nothing (a depth above L is
treated as L).

The objective: the total over requests of w_i * (d_i - s(d_i)) with exact depths d_i and weights
w_i; the expected recomputed tokens are that total divided by the sum of the weights (every request
counts in the denominator, also those with d == L). Weights decay with age: among n requests the
i-th (0-based) weighs ``decay ** (n - 1 - i)``, i.e. every new request multiplies the counts seen so
far by 0.99; ``decay=1`` weighs a trace's requests equally (its total).

Bins, candidates and exactness. Requests fall into 64-token bins (``bin_tokens``). Checkpoints may
sit only at candidate positions below L: the bin starts (multiples of 64), the shallowest recorded
depth in each bin, and any preferred boundaries (module or role boundaries) the caller passes.
Consecutive candidates cut [0, L) into intervals; each keeps the decayed count and the decayed *sum
of exact depths* of its requests. No candidate lies inside an interval, so all its requests resume
from the same checkpoint c and it costs depth_sum - weight * c exactly. The dynamic program therefore
returns a set of at most M candidates minimizing the exact objective over all such sets (the tests
check it against brute force). Only intervals holding requests become DP nodes: a checkpoint at the
start of an empty interval never beats one at the start of the next interval holding requests, which
keeps the DP small for long prompts (and makes a bin's start useless once the bin holds a request:
its shallowest depth serves the same requests from deeper). Snapping to each bin's shallowest depth
matters because real depths pile up at exact module boundaries. With ``bin_tokens=1`` every position
is a candidate and the DP is the unrestricted optimum (an optimal checkpoint can always be moved up
to a recorded depth): the reference scripts/plan_table.py compares the 64-token plan with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

BIN_TOKENS = 64  # histogram bin width; candidates: its multiples, each bin's shallowest depth, boundaries
DECAY = 0.99  # per new request
BLOCK_TOKENS = 256  # the block baseline's block size, as in block-based prefix caches
STRATEGIES = ("dp", "block", "uniform", "sqrt", "dyadic")
_CHUNK = 512  # DP columns evaluated per numpy step (memory: DP nodes x _CHUNK floats)


# -- the decayed histogram -------------------------------------------------------------------


def decay_weights(n: int, decay: float = DECAY) -> np.ndarray:
    """Weights of n requests in arrival order: the newest weighs 1, each older one ``decay`` times less."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], not {decay}")
    return decay ** np.arange(n - 1, -1, -1, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class DepthHistogram:
    """Requests grouped by the interval between candidates their depth falls in. ``edges[k]`` is
    interval k's start (``edges[0]`` is 0, the free start; the others are the candidates starting an
    interval that holds requests); it ends at ``edges[k + 1]`` or L. ``full`` is the weight of
    requests with d >= L (they cost 0)."""

    length: int
    edges: np.ndarray  # int64, strictly increasing, edges[0] == 0, all < length
    weight: np.ndarray  # float64 per interval: decayed count
    depth_sum: np.ndarray  # float64 per interval: decayed sum of depths
    full: float

    @property
    def total(self) -> float:
        """Decayed number of requests, those at d >= L included."""
        return float(self.weight.sum()) + self.full


def histogram(depths: Sequence[int], *, length: int, weights: Sequence[float] | None = None,
              decay: float = DECAY, bin_tokens: int = BIN_TOKENS, boundaries: Iterable[int] = ()) -> DepthHistogram:
    """The histogram of ``depths`` (in arrival order) for a cached prompt of ``length`` tokens.
    ``weights`` overrides the decay weights."""
    _check_length(length)
    if bin_tokens < 1:
        raise ValueError(f"bin_tokens must be at least 1, not {bin_tokens}")
    d = np.asarray(depths, dtype=np.int64).reshape(-1)
    w = decay_weights(len(d), decay) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(d):
        raise ValueError(f"{len(w)} weights for {len(d)} depths")
    if len(d) and (d.min() < 0 or w.min() < 0):
        raise ValueError("depths and weights must not be negative")
    inside = d < length
    d_in, w_in = d[inside], w[inside]
    # a request resumes from the deepest candidate <= d: its bin's shallowest depth, or a boundary above that
    grid, inverse = np.unique(d_in // bin_tokens, return_inverse=True)
    shallowest = np.full(len(grid), length, dtype=np.int64)
    np.minimum.at(shallowest, inverse, d_in)
    starts = shallowest[inverse]
    bnd = _boundaries(boundaries, length)
    if len(bnd):
        below = np.searchsorted(bnd, d_in, side="right") - 1
        starts = np.where(below >= 0, np.maximum(starts, bnd[np.maximum(below, 0)]), starts)
    edges, inverse = np.unique(np.concatenate([[0], starts]), return_inverse=True)
    inverse = inverse[1:]
    return DepthHistogram(
        length=length, edges=edges.astype(np.int64),
        weight=np.bincount(inverse, weights=w_in, minlength=len(edges)).astype(np.float64),
        depth_sum=np.bincount(inverse, weights=w_in * d_in, minlength=len(edges)).astype(np.float64),
        full=float(w[~inside].sum()),
    )


# -- the objective ---------------------------------------------------------------------------


def recomputed_tokens(positions: Sequence[int], depths: Sequence[int], *, length: int,
                      weights: Sequence[float] | None = None) -> float:
    """Total recomputed tokens: the sum over requests of weight * (d - deepest checkpoint <= d),
    0 for d >= L (the end state is kept). Unweighted (each request 1) without ``weights``."""
    _check_length(length)
    pos = _check_positions(positions, length)
    d = np.minimum(np.asarray(depths, dtype=np.int64).reshape(-1), length)
    w = np.ones(len(d)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(d):
        raise ValueError(f"{len(w)} weights for {len(d)} depths")
    stops = np.concatenate([[0], pos, [length]]).astype(np.int64)
    resume = stops[np.searchsorted(stops, d, side="right") - 1]
    return float(np.dot(w, d - resume))


def expected_recomputed_tokens(positions: Sequence[int], depths: Sequence[int], *, length: int,
                               weights: Sequence[float] | None = None) -> float:
    """Recomputed tokens per request (weighted mean); 0 without requests."""
    w = np.ones(len(depths)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(np.sum(w))
    return recomputed_tokens(positions, depths, length=length, weights=w) / total if total > 0 else 0.0


def histogram_cost(hist: DepthHistogram, positions: Sequence[int]) -> float:
    """The objective from the histogram alone; exact when ``positions`` are candidates of its bins
    (then it equals ``recomputed_tokens`` over the requests it was built from)."""
    pos = _check_positions(positions, hist.length)
    stops = np.concatenate([[0], pos]).astype(np.int64)
    resume = stops[np.searchsorted(stops, hist.edges, side="right") - 1]
    return float(np.sum(hist.depth_sum - hist.weight * resume))


# -- the dynamic program ---------------------------------------------------------------------


def optimal_positions(hist: DepthHistogram, m: int) -> tuple[int, ...]:
    """At most ``m`` bin starts minimizing the histogram's objective, exactly:

        cost(s, j) = sum_{k=s..j} depth_sum[k] - edges[s] * weight[k]   (bins s..j resume at edges[s])
        dp_0[j]    = cost(0, j)                                          (edges[0] = 0: no checkpoint)
        dp_m[j]    = min(dp_{m-1}[j], min_{1 <= s <= j} dp_{m-1}[s-1] + cost(s, j))

    with prefix sums (each cost O(1)): O(K^2 m) time for K bins holding requests, O(K) memory per
    step. Ties keep fewer checkpoints; a checkpoint that saves nothing is not returned."""
    if m < 0:
        raise ValueError(f"the number of checkpoints must not be negative, not {m}")
    e = hist.edges.astype(np.float64)
    k = len(e)
    m = min(m, k - 1)  # more checkpoints than bins holding requests cannot help
    if m <= 0:
        return ()
    pw = np.concatenate([[0.0], np.cumsum(hist.weight)])
    ps = np.concatenate([[0.0], np.cumsum(hist.depth_sum)])
    prev = ps[1:].copy()  # dp_0
    s = np.arange(1, k)
    choice = np.full((m, k), -1, dtype=np.int64)  # -1: no checkpoint in the last step
    for step in range(m):
        base = prev[s - 1] - ps[s] + e[s] * pw[s]  # the s-only part of dp_{m-1}[s-1] + cost(s, j)
        cur = prev.copy()
        for j0 in range(1, k, _CHUNK):
            j = np.arange(j0, min(k, j0 + _CHUNK))
            val = base[:, None] + ps[j + 1][None, :] - e[s][:, None] * pw[j + 1][None, :]
            val[s[:, None] > j[None, :]] = np.inf
            best = np.argmin(val, axis=0)
            better = val[best, np.arange(len(j))] < cur[j]
            cur[j[better]] = val[best[better], np.arange(len(j))[better]]
            choice[step, j[better]] = s[best[better]]
        prev = cur
    picked = []
    j = k - 1
    for step in range(m - 1, -1, -1):
        c = choice[step, j]
        if c >= 0:
            picked.append(int(hist.edges[c]))
            j = c - 1
    return tuple(sorted(picked))


def plan_positions(hist: DepthHistogram, m: int, *, bin_tokens: int = BIN_TOKENS,
                   boundaries: Iterable[int] = ()) -> tuple[int, ...]:
    """The plan: the DP's optimal checkpoints, topped up to ``m`` positions (or every candidate when
    there are fewer) by splitting the widest gaps, preferred boundaries first. Top-ups never change
    the objective (the DP already used every checkpoint that helps); they cover depths not seen yet.
    Without requests below L this is ``default_positions``. Pass the ``bin_tokens`` and
    ``boundaries`` the histogram was built with."""
    if float(hist.weight.sum()) <= 0.0:
        return default_positions(hist.length, m, bin_tokens=bin_tokens, boundaries=boundaries)
    chosen = set(optimal_positions(hist, m))
    bnd = _boundaries(boundaries, hist.length)
    _fill(chosen, m, hist.length, lambda lo, hi: _from_set(bnd, lo, hi))
    _fill(chosen, m, hist.length, lambda lo, hi: _grid_points(lo, hi, bin_tokens))
    return tuple(sorted(chosen))


def plan_for(depths: Sequence[int], *, length: int, checkpoints: int, decay: float = DECAY,
             bin_tokens: int = BIN_TOKENS, boundaries: Iterable[int] = ()) -> tuple[int, ...]:
    """The checkpoint positions for a cached prompt of ``length`` tokens from the overlap depths
    recorded so far (oldest first): what `pc compile` stores."""
    bnd = tuple(boundaries)
    hist = histogram(depths, length=length, decay=decay, bin_tokens=bin_tokens, boundaries=bnd)
    return plan_positions(hist, checkpoints, bin_tokens=bin_tokens, boundaries=bnd)


def default_positions(length: int, m: int, *, bin_tokens: int = BIN_TOKENS,
                      boundaries: Iterable[int] = ()) -> tuple[int, ...]:
    """The plan before any request is recorded: evenly spaced (``uniform_positions``), or the
    preferred boundaries when given (spread out by splitting the widest gaps, topped up with
    bin starts)."""
    bnd = _boundaries(boundaries, length)
    if not len(bnd):
        return uniform_positions(length, m)
    chosen: set[int] = set()
    _fill(chosen, m, length, lambda lo, hi: _from_set(bnd, lo, hi))
    _fill(chosen, m, length, lambda lo, hi: _grid_points(lo, hi, bin_tokens))
    return tuple(sorted(chosen))


def _fill(chosen: set[int], m: int, length: int, points) -> None:
    """Add positions from ``points(lo, hi)`` (the candidates strictly inside (lo, hi)) until there
    are m: each time the one nearest the middle of the widest gap that has one."""
    while len(chosen) < m:
        stops = sorted(chosen | {0, length})
        gaps = sorted(zip(stops, stops[1:], strict=False), key=lambda g: (g[0] - g[1], g[0]))
        for lo, hi in gaps:
            inside = points(lo, hi)
            if len(inside):
                mid = (lo + hi) / 2
                chosen.add(int(min(inside, key=lambda p: (abs(p - mid), p))))
                break
        else:
            return


def _from_set(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return values[(values > lo) & (values < hi)]


def _grid_points(lo: int, hi: int, step: int) -> np.ndarray:
    """The multiples of ``step`` strictly inside (lo, hi) nearest its middle (the one below and the
    one above, when inside): the nearest multiple to the middle is one of them."""
    below = (lo + hi) // 2 // step * step
    near = np.array([below, below + step], dtype=np.int64)
    return near[(near > lo) & (near < hi)]


# -- baselines at equal count -----------------------------------------------------------------


def block_positions(length: int, m: int, *, block: int = BLOCK_TOKENS) -> tuple[int, ...]:
    """Block caching: a state at every multiple of ``block``. With room for m, the m deepest below L
    survive: a prefix cache filling m slots while it reads the prompt front to back evicts the
    oldest (shallowest) first. Fewer than m when the prompt has fewer block boundaries."""
    _check_length(length)
    _check_count(m)
    marks = range(block, length, block)
    return tuple(marks[max(len(marks) - m, 0):]) if m else ()


def uniform_positions(length: int, m: int) -> tuple[int, ...]:
    """m positions splitting [0, L] into m + 1 equal parts (rounded; every position 1..L-1 when
    m >= L - 1)."""
    _check_length(length)
    _check_count(m)
    if m >= length - 1:
        return tuple(range(1, length))
    return tuple(sorted({(2 * i * length + m + 1) // (2 * (m + 1)) for i in range(1, m + 1)}))


def sqrt_positions(length: int, m: int) -> tuple[int, ...]:
    """sqrt(L) spacing: multiples of ceil(sqrt(L)) below L, the m deepest (as for blocks)."""
    _check_length(length)
    step = math.isqrt(length - 1) + 1 if length > 1 else 1  # ceil(sqrt(L))
    return block_positions(length, m, block=step)


def dyadic_positions(length: int, m: int) -> tuple[int, ...]:
    """Powers of two (1, 2, 4, ...) below L, the m largest."""
    _check_length(length)
    _check_count(m)
    powers = [1 << i for i in range(max(length - 1, 1).bit_length()) if (1 << i) < length]
    return tuple(powers[max(len(powers) - m, 0):]) if m else ()


# -- budgets and comparisons ------------------------------------------------------------------


def checkpoints_for_budget(*, budget_bytes: int, bytes_per_checkpoint: int) -> int:
    """How many checkpoints fit a byte budget: floor(budget / bytes per checkpoint)."""
    if bytes_per_checkpoint <= 0:
        raise ValueError(f"bytes per checkpoint must be positive, not {bytes_per_checkpoint}")
    if budget_bytes < 0:
        raise ValueError(f"the byte budget must not be negative, not {budget_bytes}")
    return budget_bytes // bytes_per_checkpoint


@dataclass(frozen=True)
class StrategyResult:
    name: str
    positions: tuple[int, ...]
    expected_recomputed_tokens: float  # per request, weighted
    total_recomputed_tokens: float  # weighted sum


def compare(depths: Sequence[int], *, length: int, checkpoints: int, weights: Sequence[float] | None = None,
            decay: float = DECAY, bin_tokens: int = BIN_TOKENS, boundaries: Iterable[int] = (),
            plan_depths: Sequence[int] | None = None) -> dict[str, StrategyResult]:
    """Every strategy's positions for ``checkpoints`` checkpoints, scored on ``depths`` (weighted by
    ``weights``, else decayed). The DP plans from the same requests unless ``plan_depths`` (weighted
    by ``decay``) is given: then it is scored on requests it has not seen."""
    _check_count(checkpoints)
    bnd = tuple(boundaries)
    w = decay_weights(len(depths), decay) if weights is None else np.asarray(weights, dtype=np.float64)
    if plan_depths is None:
        hist = histogram(depths, length=length, weights=w, bin_tokens=bin_tokens, boundaries=bnd)
    else:
        hist = histogram(plan_depths, length=length, decay=decay, bin_tokens=bin_tokens, boundaries=bnd)
    plans = {
        "dp": plan_positions(hist, checkpoints, bin_tokens=bin_tokens, boundaries=bnd),
        "block": block_positions(length, checkpoints),
        "uniform": uniform_positions(length, checkpoints),
        "sqrt": sqrt_positions(length, checkpoints),
        "dyadic": dyadic_positions(length, checkpoints),
    }
    total_w = float(np.sum(w))
    out = {}
    for name, pos in plans.items():
        total = recomputed_tokens(pos, depths, length=length, weights=w)
        out[name] = StrategyResult(name, pos, total / total_w if total_w > 0 else 0.0, total)
    return out


# -- checks ------------------------------------------------------------------------------------


def _check_length(length: int) -> None:
    if length < 1:
        raise ValueError(f"the cached prompt must be at least 1 token long, not {length}")


def _check_count(m: int) -> None:
    if m < 0:
        raise ValueError(f"the number of checkpoints must not be negative, not {m}")


def _check_positions(positions: Sequence[int], length: int) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    if len(pos) and (pos[0] <= 0 or pos[-1] >= length or np.any(np.diff(pos) <= 0)):
        raise ValueError(f"checkpoint positions must be sorted, distinct and inside (0, {length}): {list(pos)}")
    return pos


def _boundaries(boundaries: Iterable[int], length: int) -> np.ndarray:
    """Preferred boundaries inside (0, L), sorted and distinct."""
    return np.array(sorted({int(b) for b in boundaries if 0 < int(b) < length}), dtype=np.int64)

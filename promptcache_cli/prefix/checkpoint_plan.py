"""Where to keep M prefix checkpoints of a cached prompt: the exact dynamic program over the decayed
overlap depths requests showed, the baselines it is measured against, and the objective that scores
them all (design: ../shared/design/sparse-prefix.md). Pure Python and numpy.

Terms. ``length`` (L) is the cached prompt's length in tokens. A request's overlap depth d is how many
leading tokens it shares with the cached prompt (0 <= d <= L). With checkpoint positions
0 < s_1 < ... < s_M < L the request resumes from s(d), the deepest checkpoint <= d (0, a cold prefill,
if none), and recomputes the d - s(d) shared tokens in between. Tokens after d are new and computed
whatever the plan, so they are not counted. The state at the end of the cached prompt (position L)
is always kept in addition to the M checkpoints, so a request with d == L recomputes nothing (a depth
above L is treated as L). Every position returned lies strictly inside (0, L): a valid place for a
llama.cpp checkpoint that is not the end state itself.

The objective (units: tokens). The total over requests of w_i * (min(d_i, L) - s(d_i)) with the exact
recorded depths d_i and weights w_i; the expected recomputed tokens (tokens per request) are that
total divided by the sum of the weights, every request counting in the denominator, also those with
d >= L. Weights decay with age in arrival (trace) order: among n requests the i-th (0-based, oldest
first) weighs ``decay ** (n - 1 - i)``, i.e. every new request multiplies the weight of those seen so
far by 0.99, the newest weighing 1; ``decay=1`` weighs a trace's requests alike. The planner and every
reported cost use the same weights and the same exact depths: no cost is read off a histogram bin.

Why the distinct observed depths are the only candidates needed (so the DP over them is the optimum
over every set of at most M token positions). Take any plan S and a checkpoint s in S that is not an
observed depth; let s+ be the next stop above it (the next checkpoint, or L). The requests resuming
from s are exactly those with s <= d < s+. If none has such a depth, s serves nobody: dropping it
changes no cost. Otherwise let t be the shallowest observed depth in [s, s+): t > s, no request has a
depth in [s, t), so moving s up to t leaves every request resuming from the same stop and saves each
of them t - s tokens; requests below s or from s+ up are untouched. Either way the cost does not rise
and S has one position fewer off the observed depths; repeating gives a plan at observed depths
(and below L: depths >= L already resume from the end state) that is at least as good, with at most
as many checkpoints. Depth 0 needs no candidate (it recomputes nothing) and position 0 is the cold
start every plan has. Hence with K distinct depths in (0, L) the problem is a partition of K sorted
points, exactly, however long the prompt: at 32k tokens K is at most min(requests, 32k), and in real
traffic, where depths pile up at module and turn boundaries, far smaller.

The dynamic program. ``edges`` are 0 and the K depths; interval k holds the requests at depth
``edges[k]`` (decayed count ``weight[k]``, decayed depth sum ``depth_sum[k]``). With prefix sums PW,
PS of the two, intervals s..j resuming at ``edges[s]`` cost PS(j) - PS(s-1) - edges[s] (PW(j) -
PW(s-1)), and

    dp_0[j] = PS(j)                                               (no checkpoint: resume at 0)
    dp_m[j] = min(dp_{m-1}[j], min_{1 <= s <= j} dp_{m-1}[s-1] + cost(s, j))

For a < b <= c < d, cost(a, d) - cost(a, c) - cost(b, d) + cost(b, c) = (edges[b] - edges[a]) *
(PW(d) - PW(c)) >= 0: the cost is Monge (the quadrangle inequality), adding dp_{m-1}[s-1] (a
function of s alone) keeps it so, and the leftmost best s is therefore non-decreasing in j. Each
step is thus solved by divide and conquer over the columns, O(K log K) instead of O(K^2)
(vectorized level by level with numpy). All: O(M K log K) time, O(M K) memory for
the back-pointers. scripts/plan_exactness.py times it: well under a second for 16 checkpoints over
25k distinct depths (a 32k-token context), where trying every split took over 10 s per
checkpoint.

Binned planning (``bin_tokens`` > 1) is kept only to compare with earlier versions, which planned
over 64-token bins (``BIN_TOKENS``): candidates were then the bin starts, each bin's shallowest depth
and preferred boundaries, optimal among those but not over all positions (it recomputes more
tokens, the more so the more checkpoints: scripts/plan_exactness.py). Positions added beyond what
helps ("top-ups", for depths not seen yet) and the plan before any request is recorded snap to
preferred (module or role) boundaries or to multiples of ``GRID_TOKENS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

BIN_TOKENS = 64  # the bin width earlier versions planned over (bin_tokens=BIN_TOKENS: comparisons only)
GRID_TOKENS = 64  # top-ups and the plan without data snap to multiples of this (or to boundaries)
DECAY = 0.99  # per new request
BLOCK_TOKENS = 256  # the block baseline's block size, as in block-based prefix caches
STRATEGIES = ("dp", "block", "uniform", "sqrt", "dyadic")


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
    requests with d >= L (they cost 0). At token resolution (``bin_tokens=1``, the default) the
    edges are 0 and the distinct depths below L, and interval k holds exactly the requests at depth
    ``edges[k]`` (those at depth 0 in interval 0)."""

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
              decay: float = DECAY, bin_tokens: int = 1, boundaries: Iterable[int] = ()) -> DepthHistogram:
    """The histogram of ``depths`` (in arrival order) for a cached prompt of ``length`` tokens.
    ``weights`` overrides the decay weights. ``bin_tokens=1`` (the default) keeps every distinct
    depth; a wider bin (``BIN_TOKENS``) rebuilds the binned histogram earlier versions planned
    over, whose candidates were the bin starts, each bin's shallowest depth and the ``boundaries``
    (boundaries never matter at token resolution: the depth itself is a deeper candidate)."""
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
    """The objective from the histogram alone. At token resolution every interval holds a single
    depth, so this is exact for any ``positions`` (it equals ``recomputed_tokens`` over the requests
    the histogram was built from); for a binned histogram, only when ``positions`` are candidates."""
    pos = _check_positions(positions, hist.length)
    stops = np.concatenate([[0], pos]).astype(np.int64)
    resume = stops[np.searchsorted(stops, hist.edges, side="right") - 1]
    return float(np.sum(hist.depth_sum - hist.weight * resume))


# -- the dynamic program ---------------------------------------------------------------------


def optimal_positions(hist: DepthHistogram, m: int) -> tuple[int, ...]:
    """At most ``m`` interval starts (at token resolution: observed depths) minimizing the
    histogram's objective, exactly (the module docstring gives the recurrence, and why its cost is
    Monge):

        cost(s, j) = sum_{k=s..j} depth_sum[k] - edges[s] * weight[k]   (intervals s..j resume at edges[s])
        dp_0[j]    = cost(0, j)                                          (edges[0] = 0: no checkpoint)
        dp_m[j]    = min(dp_{m-1}[j], min_{1 <= s <= j} dp_{m-1}[s-1] + cost(s, j))

    O(K log K) per step for K intervals holding requests (divide and conquer on the monotone
    best s), O(m K) back-pointers. Ties keep fewer checkpoints, and the shallower one."""
    if m < 0:
        raise ValueError(f"the number of checkpoints must not be negative, not {m}")
    e = hist.edges.astype(np.float64)
    k = len(e)
    m = min(m, k - 1)  # more checkpoints than intervals holding requests cannot help
    if m <= 0:
        return ()
    pw = np.concatenate([[0.0], np.cumsum(hist.weight)])
    ps = np.concatenate([[0.0], np.cumsum(hist.depth_sum)])
    prev = ps[1:].copy()  # dp_0
    choice = np.full((m, k), -1, dtype=np.int64)  # -1: no checkpoint in the last step
    for step in range(m):
        # dp_{m-1}[s-1] + cost(s, j) = base[s] - e[s] * pw[j+1] + ps[j+1]: the s-only part first
        base = np.empty(k)
        base[0] = np.inf  # position 0 is no checkpoint
        base[1:] = prev[:-1] - ps[1:k] + e[1:] * pw[1:k]
        best, arg = _leftmost_minima(base, e, pw[1:])
        with_cp = best + ps[1:]
        better = with_cp < prev
        prev = np.where(better, with_cp, prev)
        choice[step, better] = arg[better]
    picked = []
    j = k - 1
    for step in range(m - 1, -1, -1):
        c = choice[step, j]
        if c >= 0:
            picked.append(int(hist.edges[c]))
            j = c - 1
    return tuple(sorted(picked))


def _leftmost_minima(base: np.ndarray, slope: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every column j >= 1: the minimum over 1 <= s <= j of base[s] - slope[s] * x[j], and the
    leftmost s reaching it (column 0: inf, -1). ``slope`` increasing and ``x`` non-decreasing make
    the leftmost best s non-decreasing in j, so a column's search is confined to the range its
    already solved neighbours leave (divide and conquer). Each level of the recursion is one batch of
    numpy operations over disjoint column ranges whose row ranges overlap only at their ends: O(K)
    work per level, about log2(K) levels."""
    k = len(base)
    value, where = np.full(k, np.inf), np.full(k, -1, dtype=np.int64)
    if k < 2:
        return value, where
    # open tasks: columns jlo..jhi, their best s within slo..shi
    jlo, jhi = np.array([1]), np.array([k - 1])
    slo, shi = np.array([1]), np.array([k - 1])
    while len(jlo):
        mid = (jlo + jhi) // 2
        n = np.minimum(shi, mid) - slo + 1  # >= 1: slo <= jlo <= mid throughout
        ends = np.cumsum(n)
        starts = ends - n
        s = np.arange(ends[-1]) - np.repeat(starts - slo, n)
        v = base[s] - slope[s] * np.repeat(x[mid], n)
        low = np.minimum.reduceat(v, starts)
        hits = np.flatnonzero(v == np.repeat(low, n))
        opt = s[hits[np.searchsorted(hits, starts)]]  # the first hit in each task's range
        value[mid], where[mid] = low, opt
        left, right = mid > jlo, mid < jhi
        jlo, jhi, slo, shi = (np.concatenate([jlo[left], mid[right] + 1]), np.concatenate([mid[left] - 1, jhi[right]]),
                              np.concatenate([slo[left], opt[right]]), np.concatenate([opt[left], shi[right]]))
    return value, where


def plan_positions(hist: DepthHistogram, m: int, *, boundaries: Iterable[int] = (),
                   grid_tokens: int = GRID_TOKENS) -> tuple[int, ...]:
    """The plan: the DP's optimal checkpoints, topped up to ``m`` positions (or as many as there are
    candidates) by splitting the widest gaps, preferred boundaries first, then multiples of
    ``grid_tokens``. Top-ups never change the objective (the DP already used every checkpoint that
    helps, which happens only when fewer distinct depths than ``m`` were seen); they cover depths not
    seen yet. Without requests below L this is ``default_positions``."""
    if float(hist.weight.sum()) <= 0.0:
        return default_positions(hist.length, m, boundaries=boundaries, grid_tokens=grid_tokens)
    chosen = set(optimal_positions(hist, m))
    bnd = _boundaries(boundaries, hist.length)
    _fill(chosen, m, hist.length, lambda lo, hi: _from_set(bnd, lo, hi))
    _fill(chosen, m, hist.length, lambda lo, hi: _grid_points(lo, hi, grid_tokens))
    return tuple(sorted(chosen))


def plan_for(depths: Sequence[int], *, length: int, checkpoints: int, decay: float = DECAY,
             bin_tokens: int = 1, boundaries: Iterable[int] = ()) -> tuple[int, ...]:
    """The checkpoint positions for a cached prompt of ``length`` tokens from the overlap depths
    recorded so far (oldest first, decayed by ``decay`` per request): what `pc compile` stores.
    Every position is inside (0, length); the end state is stored besides. ``bin_tokens``:
    see ``histogram`` (1, exact, unless comparing with the binned plan)."""
    bnd = tuple(boundaries)
    hist = histogram(depths, length=length, decay=decay, bin_tokens=bin_tokens, boundaries=bnd)
    return plan_positions(hist, checkpoints, boundaries=bnd)


def default_positions(length: int, m: int, *, boundaries: Iterable[int] = (),
                      grid_tokens: int = GRID_TOKENS) -> tuple[int, ...]:
    """The plan before any request is recorded: evenly spaced (``uniform_positions``), or the
    preferred boundaries when given (spread out by splitting the widest gaps, topped up with
    multiples of ``grid_tokens``)."""
    bnd = _boundaries(boundaries, length)
    if not len(bnd):
        return uniform_positions(length, m)
    chosen: set[int] = set()
    _fill(chosen, m, length, lambda lo, hi: _from_set(bnd, lo, hi))
    _fill(chosen, m, length, lambda lo, hi: _grid_points(lo, hi, grid_tokens))
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


def sqrt_step(length: int) -> int:
    """The sqrt baseline's spacing: ceil(sqrt(L))."""
    _check_length(length)
    return math.isqrt(length - 1) + 1 if length > 1 else 1


def sqrt_positions(length: int, m: int) -> tuple[int, ...]:
    """sqrt(L) spacing: multiples of ceil(sqrt(L)) below L, the m deepest (as for blocks)."""
    return block_positions(length, m, block=sqrt_step(length))


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
    expected_recomputed_tokens: float  # tokens per request: the weighted mean over every request
    total_recomputed_tokens: float  # tokens: the weighted sum


def compare(depths: Sequence[int], *, length: int, checkpoints: int, weights: Sequence[float] | None = None,
            decay: float = DECAY, bin_tokens: int = 1, boundaries: Iterable[int] = (),
            plan_depths: Sequence[int] | None = None) -> dict[str, StrategyResult]:
    """Every strategy's positions for ``checkpoints`` checkpoints, each scored exactly on ``depths``
    (``recomputed_tokens`` over the raw depths, weighted by ``weights``, else decayed by ``decay``
    in their order): the DP and the baselines alike. The DP plans from the same requests with the
    same weights unless ``plan_depths`` (weighted by ``decay``) is given: then it is scored on
    requests it has not seen."""
    _check_count(checkpoints)
    bnd = tuple(boundaries)
    depths = np.asarray(depths, dtype=np.int64).reshape(-1)  # converted once for the six scorings
    w = decay_weights(len(depths), decay) if weights is None else np.asarray(weights, dtype=np.float64)
    if plan_depths is None:
        hist = histogram(depths, length=length, weights=w, bin_tokens=bin_tokens, boundaries=bnd)
    else:
        hist = histogram(plan_depths, length=length, decay=decay, bin_tokens=bin_tokens, boundaries=bnd)
    plans = {
        "dp": plan_positions(hist, checkpoints, boundaries=bnd),
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

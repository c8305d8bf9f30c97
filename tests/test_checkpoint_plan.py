"""Checkpoint placement: the DP is exactly optimal at token resolution (brute force over every subset
of positions on small random instances, over every subset of observed depths and other positions on
larger ones, and an independent quadratic DP on large histograms), the binned DP of earlier versions
is optimal over its own candidates, the DP never loses to a baseline on replayed traces, reported
costs equal a plain evaluation of the trace, the baselines' positions, the objective, the decay,
and the edge cases. Pure numpy: no model."""

from __future__ import annotations

import bisect
import importlib.util
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from promptcache_cli.prefix import checkpoint_plan as cp

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def candidates(depths, length: int, boundaries=(), bin_tokens: int = cp.BIN_TOKENS) -> list[int]:
    """The binned candidate set as documented: bin starts, each bin's shallowest depth below L,
    boundaries."""
    inside = [d for d in depths if d < length]
    shallowest = {}
    for d in inside:
        shallowest[d // bin_tokens] = min(d, shallowest.get(d // bin_tokens, d))
    cands = set(range(bin_tokens, length, bin_tokens)) | set(shallowest.values())
    cands |= {b for b in boundaries if 0 < b < length}
    return sorted(cands - {0})


def brute_force(depths, weights, length: int, cands: list[int], m: int) -> float:
    return min(
        cp.recomputed_tokens(subset, depths, length=length, weights=weights)
        for k in range(min(m, len(cands)) + 1)
        for subset in itertools.combinations(cands, k)
    )


def random_case(rng, *, max_length: int):
    length = int(rng.integers(1, max_length))
    n = int(rng.integers(0, 25))
    if rng.random() < 0.5:  # depths piled up at a few points, as at module boundaries
        points = rng.integers(0, length + 1, size=3)
        depths = rng.choice(points, size=n) + rng.integers(0, 3, size=n)
        depths = np.minimum(depths, length)
    else:
        depths = rng.integers(0, length + 1, size=n)
    boundaries = tuple(int(b) for b in rng.integers(-2, length + 3, size=int(rng.integers(0, 3))))
    decay = float(rng.choice([1.0, cp.DECAY, 0.5]))
    return length, [int(d) for d in depths], boundaries, decay


def test_binned_dp_is_optimal_against_brute_force_over_every_candidate_subset():
    """The 64-token-bin DP earlier versions planned with (kept for comparisons): optimal over its
    candidates. (Adapted: the default histogram is exact now, so the bins are asked for.)"""
    rng = np.random.default_rng(20261122)
    checked = choices = 0
    while checked < 400:
        length, depths, boundaries, decay = random_case(rng, max_length=520)
        cands = candidates(depths, length, boundaries)
        if len(cands) > 11:
            continue
        m = int(rng.integers(0, 5))
        weights = cp.decay_weights(len(depths), decay)
        hist = cp.histogram(depths, length=length, decay=decay, boundaries=boundaries, bin_tokens=cp.BIN_TOKENS)
        best = brute_force(depths, weights, length, cands, m)

        dp = cp.optimal_positions(hist, m)
        assert len(dp) <= m and set(dp) <= set(cands) and list(dp) == sorted(set(dp))
        got = cp.recomputed_tokens(dp, depths, length=length, weights=weights)
        assert got == pytest.approx(best, rel=1e-9, abs=1e-9), (length, depths, boundaries, m)
        # the histogram alone scores candidate positions exactly
        assert cp.histogram_cost(hist, dp) == pytest.approx(got, rel=1e-9, abs=1e-9)

        plan = cp.plan_positions(hist, m, boundaries=boundaries)  # topped up: still optimal
        assert cp.recomputed_tokens(plan, depths, length=length, weights=weights) == pytest.approx(
            best, rel=1e-9, abs=1e-9)
        assert all(0 < p < length for p in plan) and list(plan) == sorted(set(plan))
        checked += 1
        choices += 0 < m < len(cands)
    assert choices > 200  # most cases had a real choice to make


def test_one_token_bins_give_the_unrestricted_optimum():
    """With bin_tokens=1 the DP beats or ties every set of m positions whatsoever."""
    rng = np.random.default_rng(7)
    for _ in range(150):
        length, depths, _, decay = random_case(rng, max_length=13)
        m = int(rng.integers(0, 4))
        weights = cp.decay_weights(len(depths), decay)
        best = brute_force(depths, weights, length, list(range(1, length)), m)
        hist = cp.histogram(depths, length=length, decay=decay, bin_tokens=1)
        got = cp.recomputed_tokens(cp.optimal_positions(hist, m), depths, length=length, weights=weights)
        assert got == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_exact_dp_is_optimal_over_every_subset_of_positions():
    """The default (token-resolution) plan beats or ties every set of at most m positions in
    (0, L), topped up or not, and it only ever places checkpoints at observed depths."""
    rng = np.random.default_rng(27)
    for _ in range(300):
        length, depths, boundaries, decay = random_case(rng, max_length=15)
        m = int(rng.integers(0, 6))
        weights = cp.decay_weights(len(depths), decay)
        best = brute_force(depths, weights, length, list(range(1, length)), m)
        hist = cp.histogram(depths, length=length, decay=decay, boundaries=boundaries)
        dp = cp.optimal_positions(hist, m)
        assert len(dp) <= m and set(dp) <= {d for d in depths if 0 < d < length}
        assert cp.recomputed_tokens(dp, depths, length=length, weights=weights) == pytest.approx(best, rel=1e-9, abs=1e-9)
        plan = cp.plan_for(depths, length=length, checkpoints=m, decay=decay, boundaries=boundaries)
        assert all(0 < p < length for p in plan) and list(plan) == sorted(set(plan)) and len(plan) <= m
        assert cp.recomputed_tokens(plan, depths, length=length, weights=weights) == pytest.approx(
            best, rel=1e-9, abs=1e-9)
        # an exact histogram scores any positions exactly, not only its candidates
        for k in range(min(m, length - 1) + 1):
            some = tuple(sorted(int(p) for p in rng.choice(np.arange(1, length), size=k, replace=False)))
            assert cp.histogram_cost(hist, some) == pytest.approx(
                cp.recomputed_tokens(some, depths, length=length, weights=weights), rel=1e-9, abs=1e-9)


def test_exact_dp_is_optimal_over_observed_depths_and_any_other_positions():
    """Longer prompts: brute force over every subset of the observed depths below L plus a few
    positions that are not depths (the proof says those never help), with decayed or arbitrary
    weights."""
    rng = np.random.default_rng(2027)
    checked = 0
    while checked < 300:
        length, depths, _, decay = random_case(rng, max_length=5000)
        observed = {d for d in depths if 0 < d < length}
        others = {int(p) for p in rng.integers(1, length, size=3)} - observed if length > 1 else set()
        cands = sorted(observed | others)
        if len(cands) > 12:
            continue
        m = int(rng.integers(0, 5))
        if rng.random() < 0.3:
            weights = rng.random(len(depths)) * 3
            hist = cp.histogram(depths, length=length, weights=weights)
        else:
            weights = cp.decay_weights(len(depths), decay)
            hist = cp.histogram(depths, length=length, decay=decay)
        best = brute_force(depths, weights, length, cands, m)
        dp = cp.optimal_positions(hist, m)
        assert set(dp) <= observed
        assert cp.recomputed_tokens(dp, depths, length=length, weights=weights) == pytest.approx(
            best, rel=1e-9, abs=1e-9), (length, depths, m)
        checked += 1


def test_dp_with_one_token_bins_never_loses_to_a_baseline():
    rng = np.random.default_rng(11)
    for _ in range(100):
        length, depths, _, _ = random_case(rng, max_length=3000)
        for m in (1, 2, 4, 8):
            dp = cp.plan_for(depths, length=length, checkpoints=m, decay=1.0, bin_tokens=1)
            ours = cp.recomputed_tokens(dp, depths, length=length)
            for baseline in (cp.block_positions, cp.uniform_positions, cp.sqrt_positions, cp.dyadic_positions):
                assert ours <= cp.recomputed_tokens(baseline(length, m), depths, length=length) + 1e-9


def slow_dp(edges, weight, depth_sum, m) -> float:
    """The design's recurrence written out with plain loops: the minimum cost only."""
    k = len(edges)

    def cost(s, j):
        return sum(depth_sum[t] - edges[s] * weight[t] for t in range(s, j + 1))

    prev = [cost(0, j) for j in range(k)]
    for _ in range(m):
        cur = list(prev)
        for j in range(1, k):
            run_w = run_s = 0.0
            for s in range(j, 0, -1):  # bins s..j resume at edges[s]
                run_w += weight[s]
                run_s += depth_sum[s]
                cur[j] = min(cur[j], prev[s - 1] + run_s - edges[s] * run_w)
        prev = cur
    return prev[-1]


def test_dp_matches_the_plain_recurrence_on_a_large_binned_histogram():
    """(Adapted: binned explicitly, which keeps the plain-Python reference affordable; the exact
    histogram of these depths is checked against a vectorized reference below.)"""
    rng = np.random.default_rng(3)
    length = 60_000
    depths = rng.integers(0, length + 1, size=3000)
    hist = cp.histogram(depths, length=length, bin_tokens=cp.BIN_TOKENS)
    assert len(hist.edges) > 600
    for m in (1, 3):
        dp = cp.optimal_positions(hist, m)
        assert len(dp) == m
        expected = slow_dp(hist.edges.tolist(), hist.weight.tolist(), hist.depth_sum.tolist(), m)
        assert cp.histogram_cost(hist, dp) == pytest.approx(expected, rel=1e-9)


def quadratic_dp(edges, weight, depth_sum, m) -> float:
    """The same recurrence, every s tried for every column (numpy over s): the minimum cost only."""
    e = np.asarray(edges, dtype=np.float64)
    pw = np.concatenate([[0.0], np.cumsum(weight)])
    ps = np.concatenate([[0.0], np.cumsum(depth_sum)])
    prev = ps[1:].copy()
    for _ in range(m):
        cur = prev.copy()
        for j in range(1, len(e)):
            s = np.arange(1, j + 1)
            cur[j] = min(cur[j], float(np.min(prev[s - 1] + ps[j + 1] - ps[s] - e[s] * (pw[j + 1] - pw[s]))))
        prev = cur
    return float(prev[-1])


@pytest.mark.parametrize("shape", ["uniform", "clustered", "ties"])
def test_divide_and_conquer_matches_the_quadratic_dp_on_large_exact_histograms(shape):
    """Thousands of distinct depths: the monotone divide and conquer finds the same optimum as
    trying every split. "ties": integer costs (decay 1) with many equal choices."""
    rng = np.random.default_rng({"uniform": 5, "clustered": 6, "ties": 8}[shape])
    length = 40_000
    if shape == "uniform":
        depths, decay = rng.integers(0, length + 1, size=2500), cp.DECAY
    elif shape == "clustered":
        points = rng.integers(0, length, size=40)
        depths, decay = np.minimum(rng.choice(points, size=4000) + rng.integers(0, 300, size=4000), length), cp.DECAY
    else:
        depths, decay = rng.choice(np.arange(0, length, 500), size=3000), 1.0
    hist = cp.histogram(depths, length=length, decay=decay)
    assert len(hist.edges) > (70 if shape == "ties" else 1500)
    for m in (1, 2, 7, 16):
        dp = cp.optimal_positions(hist, m)
        assert len(dp) == min(m, len(hist.edges) - 1)
        expected = quadratic_dp(hist.edges, hist.weight, hist.depth_sum, m)
        assert cp.histogram_cost(hist, dp) == pytest.approx(expected, rel=1e-9)


# -- replayed traces, scored exactly ----------------------------------------------------------


def plain_cost(positions, depths, weights, length: int) -> float:
    """Recomputed tokens per request, evaluated request by request: an evaluator that shares no
    code with checkpoint_plan."""
    stops = [0, *positions, length]
    total = sum(w * (min(d, length) - stops[bisect.bisect_right(stops, min(d, length)) - 1])
                for d, w in zip(depths, weights, strict=True))
    return total / sum(weights)


def trace_makers():
    spec = importlib.util.spec_from_file_location("make_trace", SCRIPTS / "make_trace.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {"conversation": mod.make_trace, "documents": mod.documents_trace, "multilevel": mod.multilevel_trace}


@pytest.mark.parametrize("kind", ["conversation", "documents", "multilevel"])
def test_replayed_trace_the_dp_never_loses_to_a_baseline_at_budgets_1_to_16(kind):
    """Each trace replayed and scored by the plain evaluator with the planner's own weights (decay
    0.99, and every request alike): the DP's plan is never worse than block, uniform, sqrt or
    dyadic placement, nor than the binned DP, at every budget from 1 to 16; and what `compare`
    (hence `pc plan`) reports for every strategy is that exact cost."""
    make = trace_makers()[kind]
    for seed in (0, 1):
        length, trace = make(requests=500, seed=seed)
        depths = [r["overlap"] for r in trace]
        for decay in (cp.DECAY, 1.0):
            weights = [float(w) for w in cp.decay_weights(len(depths), decay)]
            for m in range(1, 17):
                results = cp.compare(depths, length=length, checkpoints=m, decay=decay)
                exact = {name: plain_cost(r.positions, depths, weights, length) for name, r in results.items()}
                for name, r in results.items():
                    assert r.expected_recomputed_tokens == pytest.approx(exact[name], rel=1e-9, abs=1e-9)
                    assert all(0 < p < length for p in r.positions) and len(r.positions) <= m
                for name in ("block", "uniform", "sqrt", "dyadic"):
                    assert exact["dp"] <= exact[name] + 1e-9, (kind, seed, decay, m, name)
                binned = cp.plan_for(depths, length=length, checkpoints=m, decay=decay, bin_tokens=cp.BIN_TOKENS)
                assert exact["dp"] <= plain_cost(binned, depths, weights, length) + 1e-9


# -- the objective --------------------------------------------------------------------------


def test_recomputed_tokens_resume_from_the_deepest_checkpoint_at_or_below_the_depth():
    depths = [0, 50, 100, 250, 300, 999, 1000]
    # 0, 50 (from 0), 0 (at 100), 150 (from 100), 0 (at 300), 699 (from 300), 0 (the end state)
    assert cp.recomputed_tokens((100, 300), depths, length=1000) == 899
    assert cp.recomputed_tokens((), depths, length=1000) == 0 + 50 + 100 + 250 + 300 + 999 + 0
    weights = [1, 1, 1, 2, 1, 0.5, 1]
    assert cp.recomputed_tokens((100, 300), depths, length=1000, weights=weights) == 50 + 300 + 349.5
    assert cp.expected_recomputed_tokens((100, 300), depths, length=1000, weights=weights) == pytest.approx(
        699.5 / 7.5)
    assert cp.expected_recomputed_tokens((100,), [], length=1000) == 0.0


def test_depths_beyond_the_prompt_count_as_its_end():
    assert cp.recomputed_tokens((), [1000, 5000], length=1000) == 0


@pytest.mark.parametrize("positions", [(300, 100), (100, 100), (0, 5), (5, 1000), (-3,)])
def test_positions_must_be_sorted_distinct_and_inside_the_prompt(positions):
    with pytest.raises(ValueError, match="sorted, distinct"):
        cp.recomputed_tokens(positions, [10], length=1000)


# -- the decayed histogram ------------------------------------------------------------------


def test_each_new_request_multiplies_the_earlier_counts_by_the_decay():
    depths = [70, 70, 130, 500, 70, 2000]
    hist = cp.histogram(depths, length=1000)
    assert hist.edges.tolist() == [0, 70, 130, 500]
    assert hist.weight.tolist() == pytest.approx([0, 0.99**5 + 0.99**4 + 0.99, 0.99**3, 0.99**2])
    assert hist.depth_sum.tolist() == pytest.approx([0, 70 * (0.99**5 + 0.99**4 + 0.99), 130 * 0.99**3, 500 * 0.99**2])
    assert hist.full == 1.0  # the newest request, at the end of the prompt
    assert hist.total == pytest.approx(sum(0.99**i for i in range(6)))

    before = cp.histogram(depths[:-2], length=1000)
    after = cp.histogram(depths[:-1], length=1000)
    assert after.weight[1] == pytest.approx(before.weight[1] * 0.99 + 1)
    assert after.weight[3] == pytest.approx(before.weight[3] * 0.99)


def test_recent_traffic_outweighs_old_traffic():
    old, new = [200] * 600, [900] * 100  # equal weights: 600 * 200 > 100 * 700, so 200 wins
    assert cp.plan_for(old + new, length=1000, checkpoints=1) == (900,)
    assert cp.plan_for(old + new, length=1000, checkpoints=1, decay=1.0) == (200,)


def test_decay_must_be_in_zero_one():
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match="decay"):
            cp.decay_weights(3, bad)


def test_boundaries_split_bins_and_become_candidates():
    """In the binned histogram. (Adapted: bins asked for explicitly; at token resolution every
    depth is its own candidate, so boundaries cannot add one and 40 wins either way.)"""
    hist = cp.histogram([10, 40, 41, 300], length=400, boundaries=(40, 0, 400, 999), bin_tokens=cp.BIN_TOKENS)
    assert hist.edges.tolist() == [0, 10, 40, 300]
    depths = [10, 40, 41, 42]
    binned = {"decay": 1.0, "bin_tokens": cp.BIN_TOKENS}
    assert cp.plan_for(depths, length=400, checkpoints=1, **binned) == (10,)  # 40 is inside 10's bin
    assert cp.plan_for(depths, length=400, checkpoints=1, boundaries=(40,), **binned) == (40,)
    exact = cp.histogram([10, 40, 41, 300], length=400, boundaries=(40, 0, 400, 999))
    assert exact.edges.tolist() == [0, 10, 40, 41, 300]
    assert cp.plan_for(depths, length=400, checkpoints=1, decay=1.0) == (40,)  # recomputes 10 + 0 + 1 + 2
    assert cp.plan_for(depths, length=400, checkpoints=1, decay=1.0, boundaries=(40,)) == (40,)


# -- edge cases -----------------------------------------------------------------------------


def test_without_requests_the_plan_is_evenly_spaced_or_at_the_boundaries():
    empty = cp.histogram([], length=1000)
    assert cp.plan_positions(empty, 3) == cp.uniform_positions(1000, 3) == (250, 500, 750)
    assert cp.plan_positions(empty, 2, boundaries=(120, 610, 880)) == (120, 610)
    assert cp.plan_positions(empty, 3, boundaries=(120, 610, 880)) == (120, 610, 880)
    topped = cp.plan_positions(empty, 5, boundaries=(120, 610))
    assert len(topped) == 5 and {120, 610} <= set(topped)
    only_full = cp.histogram([1000, 1000], length=1000)  # every request at the end: nothing to learn
    assert cp.plan_positions(only_full, 3) == (250, 500, 750)


def test_zero_checkpoints():
    hist = cp.histogram([100, 200], length=1000)
    assert cp.optimal_positions(hist, 0) == cp.plan_positions(hist, 0) == ()
    for baseline in (cp.block_positions, cp.uniform_positions, cp.sqrt_positions, cp.dyadic_positions):
        assert baseline(1000, 0) == ()
    with pytest.raises(ValueError):
        cp.optimal_positions(hist, -1)


def test_more_checkpoints_than_candidates_gives_every_candidate():
    depths = [10, 100, 130, 290]
    hist = cp.histogram(depths, length=300)
    assert cp.optimal_positions(hist, 50) == (10, 100, 130, 290)  # every interval holding requests
    plan = cp.plan_positions(hist, 50)
    assert plan == (10, 64, 100, 128, 130, 192, 256, 290)  # plus every bin start: all the candidates
    assert cp.recomputed_tokens(plan, depths, length=300) == 0


def test_prompt_shorter_than_a_bin():
    """(Adapted: the first two assertions are about the binned histogram, asked for explicitly.)"""
    hist = cp.histogram([10, 30, 30, 40], length=40, bin_tokens=cp.BIN_TOKENS)
    assert cp.optimal_positions(hist, 1) == (10,)  # one bin, one candidate: its shallowest depth
    assert cp.plan_positions(hist, 5) == (10,)  # no bin start below 40 to top up with
    exact = cp.histogram([10, 30, 30, 40], length=40, bin_tokens=1)
    assert cp.optimal_positions(exact, 1) == (30,)  # 10 recomputes 20 + 20; 30 recomputes 10
    assert cp.plan_for([10, 30, 30, 40], length=40, checkpoints=1) == (30,)  # the default is exact
    assert cp.plan_positions(exact, 5) == (10, 30)  # every observed depth; no grid point below 40
    assert cp.plan_positions(cp.histogram([], length=40), 2) == (13, 27)
    assert cp.plan_positions(cp.histogram([0, 1], length=1), 3) == ()


def test_a_long_prompt_plans_only_over_bins_holding_requests():
    depths = [300, 301, 5000, 250_000, 999_999]
    hist = cp.histogram(depths, length=1_000_000)
    assert hist.edges.tolist() == [0, 300, 301, 5000, 250_000, 999_999]  # (adapted: 301 is its own depth now)
    assert cp.optimal_positions(hist, 2) == (250_000, 999_999)  # the deepest would recompute the most
    assert cp.optimal_positions(hist, 3) == (5000, 250_000, 999_999)


# -- baselines ------------------------------------------------------------------------------


def test_baseline_positions():
    assert cp.block_positions(4404, 3) == (3840, 4096, 4352)
    assert cp.block_positions(4096, 2) == (3584, 3840)  # 4096 is the end state itself
    assert cp.block_positions(600, 8) == (256, 512)  # a short prompt has fewer block boundaries
    assert cp.uniform_positions(4404, 3) == (1101, 2202, 3303)
    assert cp.uniform_positions(5, 10) == (1, 2, 3, 4)
    assert cp.sqrt_positions(4404, 3) == (4221, 4288, 4355)  # spacing ceil(sqrt(4404)) = 67
    assert cp.sqrt_positions(100, 2) == (80, 90)  # ceil(sqrt(100)) = 10
    assert cp.dyadic_positions(4404, 3) == (1024, 2048, 4096)
    assert cp.dyadic_positions(4096, 20) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    for baseline in (cp.block_positions, cp.uniform_positions, cp.sqrt_positions, cp.dyadic_positions):
        assert baseline(1, 3) == ()


def test_compare_scores_every_strategy_on_the_same_requests():
    depths = [310, 310, 312, 2200, 2210, 4404, 4404, 0]
    results = cp.compare(depths, length=4404, checkpoints=2, decay=1.0)
    assert list(results) == list(cp.STRATEGIES)
    assert results["dp"].positions == (310, 2200)
    for r in results.values():
        assert r.total_recomputed_tokens == cp.recomputed_tokens(r.positions, depths, length=4404)
        assert r.expected_recomputed_tokens == pytest.approx(r.total_recomputed_tokens / len(depths))
    assert results["dp"].total_recomputed_tokens == 2 + 10
    # planned on other requests: scored on these
    held_out = cp.compare(depths, length=4404, checkpoints=1, weights=[1] * len(depths), plan_depths=[2200] * 5)
    assert held_out["dp"].positions == (2200,)


def test_byte_budget():
    assert cp.checkpoints_for_budget(budget_bytes=10_000_000, bytes_per_checkpoint=3_000_000) == 3
    assert cp.checkpoints_for_budget(budget_bytes=2_999_999, bytes_per_checkpoint=3_000_000) == 0
    with pytest.raises(ValueError):
        cp.checkpoints_for_budget(budget_bytes=100, bytes_per_checkpoint=0)
    with pytest.raises(ValueError):
        cp.checkpoints_for_budget(budget_bytes=-1, bytes_per_checkpoint=10)


# -- the scripts behind the bench figures ---------------------------------------------------


def test_make_trace_is_seeded_and_plan_table_reports_every_budget(tmp_path):
    def make(seed: int, out: Path) -> str:
        run = subprocess.run([sys.executable, SCRIPTS / "make_trace.py", "--requests", "400", "--seed", str(seed),
                              "--out", out], capture_output=True, text=True, check=True)
        return run.stderr

    note = make(1, tmp_path / "a.jsonl")
    make(1, tmp_path / "b.jsonl")
    make(2, tmp_path / "c.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    length = int(re.search(r"cached prompt: (\d+) tokens", note)[1])
    depths = [r["overlap"] for r in records]
    assert len(records) == 400 and max(depths) == length and all(r["tokens"] >= r["overlap"] for r in records)
    assert len({d // cp.BIN_TOKENS for d in depths}) > 20  # a spread of depths, not a few spikes

    run = subprocess.run([sys.executable, SCRIPTS / "plan_table.py", tmp_path / "a.jsonl"], capture_output=True,
                         text=True, check=True)
    tables = run.stdout.split("Held out")
    assert len(tables) == 2
    for table in tables:
        rows = {int(m[1]): [float(x.replace(",", "")) for x in m[2].split(" | ")]
                for m in re.finditer(r"^\| (\d) \| ([\d, |]+?) \| [\d.]+x \|$", table, re.MULTILINE)}
        assert sorted(rows) == [1, 2, 4, 8]
        for row in rows.values():  # dp with 64-token bins, dp (token resolution), then the baselines
            assert len(row) == 7
            if table is tables[0]:  # in sample the unrestricted DP is optimal: never above a baseline
                assert row[1] <= min(row[2:])


def test_plan_exactness_reports_every_budget_with_the_exact_dp_first():
    """scripts/plan_exactness.py --quick: both traces, both weightings, budgets 1-16; in every row
    the exact DP recomputes no more than the binned DP or any baseline (the script itself checks
    that `compare` reports the figures its own evaluator gives, and exits non-zero otherwise)."""
    run = subprocess.run([sys.executable, SCRIPTS / "plan_exactness.py", "--quick"], capture_output=True,
                         text=True, check=True)
    sections = re.split(r"^## ", run.stdout, flags=re.MULTILINE)[1:]
    assert [s.split(" ")[0] for s in sections] == ["documents", "documents", "multilevel", "multilevel", "Time"]
    for section in sections[:4]:
        rows = {int(m[1]): [float(x.replace(",", "")) for x in m[2].split(" | ")]
                for m in re.finditer(r"^\| (\d+) \| ([\d,. |]+?) \| [\d.]+x \| [\d.]+x \|$", section, re.MULTILINE)}
        assert sorted(rows) == [1, 2, 4, 8, 16]
        for row in rows.values():  # dp, dp with 64-token bins, block, uniform, sqrt, dyadic
            assert len(row) == 6 and row[0] <= min(row[1:])
    assert len(re.findall(r"^\| 8,192 \| 20,000 \| (uniform|multilevel) \|", sections[4], re.MULTILINE)) == 6

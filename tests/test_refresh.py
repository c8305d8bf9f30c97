"""Context.recompute and the selective-recompute candidate's ranking, on the real default model."""

from __future__ import annotations

import numpy as np
import pytest

from promptcache_cli.benchmarks.refresh import rows, sensitivity
from promptcache_cli.llama_backend import Context, ContextSettings, Model

TEXT = ("The quick brown fox jumps over the lazy dog. The archive room opens at nine, and the access code "
        "is written on the back of the blue folder in the second drawer.")


@pytest.fixture(scope="module")
def model(model_path):
    m = Model(str(model_path))
    yield m
    m.close()


def state_of(model: Model, tokens: list[int]) -> np.ndarray:
    with Context(model, ContextSettings(n_ctx=256)) as ctx:
        ctx.decode(tokens, start=0)
        return ctx.save_state(0)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_recompute_replaces_the_cells_with_their_states_in_the_real_context(model) -> None:
    """A cell computed from the wrong token is recomputed from the right one: it then matches the
    uncached state, the cells before it are untouched, and the next decode continues normally."""
    tokens = model.tokenize(TEXT, special=False)
    at = [6, 15]
    wrong = list(tokens)
    for p in at:
        wrong[p] = model.tokenize(" zebra", special=False)[0]
    exact_blob, wrong_blob = state_of(model, tokens), state_of(model, wrong)
    with Context(model, ContextSettings(n_ctx=256), n_seq=4) as ctx:
        ctx.load_state(0, wrong_blob)
        ctx.recompute([tokens[p] for p in at], at)
        assert ctx.pos_max(0) == len(tokens) - 1 and ctx.pos_max(2) == -1 and ctx.pos_max(3) == -1
        fixed_blob = ctx.save_state(0)
        ctx.decode(model.tokenize(" The", special=False), start=len(tokens), logits=True)
        assert np.isfinite(ctx.logits()).all()
    _, exact = rows(exact_blob)
    _, wrong_rows = rows(wrong_blob)
    _, fixed = rows(fixed_blob)
    for layer in range(len(exact)):
        np.testing.assert_array_equal(fixed[layer][: at[0]], exact[layer][: at[0]])  # before: untouched
    first = at[0]  # it attends only to exact cells: its new state is the uncached one
    assert max(relative(e[first], f[first]) for e, f in zip(exact, fixed, strict=True)) < 0.01
    assert max(relative(e[first], w[first]) for e, w in zip(exact, wrong_rows, strict=True)) > 0.1
    for p in at[1:]:  # it attends to stale cells after the first repair: closer, not exact
        after = sum(relative(e[p], f[p]) for e, f in zip(exact, fixed, strict=True))
        before = sum(relative(e[p], w[p]) for e, w in zip(exact, wrong_rows, strict=True))
        assert after < before / 3


def test_recompute_needs_spare_sequences(model) -> None:
    with Context(model, ContextSettings(n_ctx=256)) as ctx:
        ctx.decode([1, 2, 3], start=0)
        with pytest.raises(ValueError):
            ctx.recompute([2], [1])
    with pytest.raises(ValueError):
        Context(model, ContextSettings(n_ctx=256), n_seq=1)


def test_sensitivity_ranks_the_cells_that_changed(model) -> None:
    tokens = model.tokenize(TEXT, special=False)
    changed = list(tokens)
    changed[20] = model.tokenize(" zebra", special=False)[0]
    a, b = state_of(model, tokens), state_of(model, changed)
    positions, same = sensitivity(a, a)
    assert positions.tolist() == list(range(len(tokens))) and not same.any()
    _, score = sensitivity(a, b)
    assert not score[:20].any() and int(np.argmax(score)) == 20

"""Boundary repair (benchmarks/repair.py, through the boundary hook): which segments it recomputes, and that recomputing them brings the
cached answer to the uncached one (real model, a tiny two-slot schema of real texts)."""

from __future__ import annotations

import pytest

from promptcache_cli.benchmarks import repair
from promptcache_cli.benchmarks import needles, quality
from promptcache_cli.modular.session import ModularSession
from promptcache_cli.prompt.boundaries import boundaries
from promptcache_cli.pml.selection import default_selection


@pytest.fixture(scope="module")
def setup(model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("repair")
    plain = ModularSession(model_path, cache_dir=root / "cache")
    wl = needles.quality(root, plain.model, doc_tokens=48, n_questions=3, slots=2, n_docs=3)
    plain.compile(wl.schema())
    yield plain, wl, root
    plain.close()


def repair_plan(layout, plan, encoding: str, n: int) -> dict[int, int]:
    return repair.plan(boundaries(layout, plan, encoding), n)


def _plan(sess, wl, sel):
    layout = sess.layout(wl.schema())
    return layout, sess.prompt_plan(layout, sel)


def test_default_prompt_needs_no_repair(setup):
    sess, wl, _ = setup
    layout, plan = _plan(sess, wl, default_selection(wl.schema()))
    assert repair_plan(layout, plan, "scaffold", 16) == {}  # every module was computed after exactly this
    assert repair_plan(layout, plan, "independent", 16)  # after the shared prefix only: the second slot differs


def test_other_documents_before_a_module_are_repaired(setup):
    sess, wl, _ = setup
    q = next(q for q in wl.questions if q.modules != ("s1-apache-2-0", "s2-mpl-2-0"))
    layout, plan = _plan(sess, wl, wl.selection(q))
    fix = repair_plan(layout, plan, "scaffold", 8)
    segs = plan.cached
    assert segs[0].offset == 0 and 0 not in fix  # the start of the prompt is always exact
    assert fix and all(n == min(8, len(s.tokens)) for s in segs if (n := fix.get(s.offset)))
    assert repair_plan(layout, plan, "scaffold", 0) == {}


def test_repairing_everything_gives_the_uncached_answer(setup, model_path):
    sess, wl, root = setup
    schema, q = wl.schema(), wl.questions[0]
    sel = wl.selection(q)
    base = sess.ask(schema, sel, q.text, max_tokens=6, no_cache=True, keep_logits=True)
    cached = sess.ask(schema, sel, q.text, max_tokens=6, keep_logits=True)
    full = ModularSession(model_path, cache_dir=root / "cache", boundary_hook=repair.hook(10_000))
    some = ModularSession(model_path, cache_dir=root / "cache", boundary_hook=repair.hook(4))
    try:
        fixed = full.ask(schema, sel, q.text, max_tokens=6, keep_logits=True)
        part = some.ask(schema, sel, q.text, max_tokens=6, keep_logits=True)
    finally:
        full.close()
        some.close()
    layout, plan = _plan(sess, wl, sel)
    n_fixed = sum(repair_plan(layout, plan, "scaffold", 4).values())
    assert part.computed_tokens == cached.computed_tokens + n_fixed
    assert part.cached_tokens + part.computed_tokens == cached.cached_tokens + cached.computed_tokens
    # every module recomputed in its real context, in order: what --no-cache computes, up to the
    # numerical noise of stitched cells (README: a first-token KL below 0.02 with several modules)
    assert quality.kl(base.first_logits, fixed.first_logits) < 0.01
    assert fixed.tokens == base.tokens
    assert quality.kl(base.first_logits, fixed.first_logits) < quality.kl(base.first_logits, cached.first_logits)

"""The selective-recompute scores of cached modules (refresh.py): read from their files, or
measured (each module computed once more under the other encoding) and stored in them
(store/ranks.py). Scores measured against another context than the schema's are measured again.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np

from ..core.results import Progress
from ..errors import CacheWriteError
from ..prompt.contexts import context_tokens
from ..prompt.layout import Layout, Path as ModPath
from ..store import ranks
from . import refresh
from .compiler import Compiler

Scores = dict[tuple[ModPath, int], tuple[float, ...]]  # (owner, segment offset): union members share offsets


def scores(compiler: Compiler, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath],
           states: Callable[[ModPath], dict[int, np.ndarray]], measured: list[ModPath], warnings: list[str],
           progress: Progress | None) -> Scores:
    """The owners' segments' scores: read from their files, or measured where a file has none (or
    has scores against another context) and then stored in it when the cache can be written (else
    one warning). ``states(owner)``: its cached states by segment offset (asked once per owner
    measured); the owners measured now are appended to ``measured``."""
    encoding, store = compiler.catalog.encoding, compiler.runtime.store
    out: Scores = {}
    missing: list[ModPath] = []
    at = compiler.catalog.stored_at(layout)
    for owner in owners:
        want = {s.offset: refresh.against(layout, s, encoding, at[owner, s.offset]) for s in layout.segments_of(owner)}
        got = ranks.stored(store.module_path(keys[owner]), store)  # by the position each segment is stored at
        if all(got.get(at[owner, off], ("", ()))[0] == w for off, w in want.items()):
            out.update({(owner, off): got[at[owner, off]][1] for off in want})
        else:
            missing.append(owner)
    if not missing:
        return out
    other = refresh.OTHER[encoding]
    jobs = sorted(((s, _fit(context_tokens(layout, s, other), at[s.owner, s.offset]), at[s.owner, s.offset])
                   for o in missing for s in layout.segments_of(o)), key=lambda job: job[0].offset)
    left = Counter(seg.owner for seg, _, _ in jobs)
    held: dict[ModPath, dict[int, np.ndarray]] = {}
    for seg, blob in compiler.segment_states(layout, jobs, progress, " (ranking)"):
        mine = held.get(seg.owner) or held.setdefault(seg.owner, states(seg.owner))
        out[seg.owner, seg.offset] = tuple(refresh.scores(mine[seg.offset], blob))
        left[seg.owner] -= 1
        if not left[seg.owner]:
            del held[seg.owner]
    unwritable = None
    for owner in missing:
        measured_ranks = [(refresh.against(layout, s, encoding, at[owner, s.offset]), list(out[owner, s.offset]))
                          for s in layout.segments_of(owner)]
        try:
            ranks.store(store, keys[owner], measured_ranks)
        except CacheWriteError as e:
            unwritable = unwritable or str(e)
    if unwritable:
        warnings.append(f"{unwritable}; the recompute scores measured now are not stored")
    measured += missing
    return out


def _fit(context: tuple[int, ...], at: int) -> tuple[int, ...]:
    """The other encoding's context for a segment stored at ``at``, where both states must sit to
    be compared: its last ``at`` tokens when it is longer (the scores are a ranking, not states)."""
    return context[len(context) - at:] if len(context) > at else context

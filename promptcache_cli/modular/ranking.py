"""The selective-recompute scores of cached modules (token_rank.py): read from their files, or
measured (each module computed once more under the other encoding) and stored in them.

Scores live in the segment records of a module's file header (docs/cache-format.md). Storing them
rewrites only the header, under the module's lock, through the cache's atomic write; scores
measured against another context than the schema's are measured again.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..store import cache_file
from ..prompt import layout as lay
from . import refresh as token_rank
from ..store.files import CacheStore, CacheWriteError
from ..prompt.layout import Layout, Path as ModPath

if TYPE_CHECKING:
    from .session import Progress, Session

Scores = dict[tuple[ModPath, int], tuple[float, ...]]  # (owner, segment offset): union members share offsets


def scores(sess: Session, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath],
           states: Callable[[ModPath], dict[int, np.ndarray]], measured: list[ModPath], warnings: list[str],
           progress: Progress | None) -> Scores:
    """The owners' segments' scores: read from their files, or measured where a file has none (or
    has scores against another context) and then stored in it when the cache can be written (else
    one warning). ``states(owner)``: its cached states by segment offset (asked once per owner
    measured); the owners measured now are appended to ``measured``."""
    out: Scores = {}
    missing: list[ModPath] = []
    for owner in owners:
        want = {s.offset: token_rank.against(layout, s, sess.encoding) for s in layout.segments_of(owner)}
        got = stored(sess.store.module_path(keys[owner]))
        if all(got.get(at, ("", ()))[0] == w for at, w in want.items()):
            out.update({(owner, at): got[at][1] for at in want})
        else:
            missing.append(owner)
    if not missing:
        return out
    other = token_rank.OTHER[sess.encoding]
    jobs = sorted(((s, lay.context_tokens(layout, s, other)) for o in missing for s in layout.segments_of(o)),
                  key=lambda job: job[0].offset)
    left = Counter(seg.owner for seg, _ in jobs)
    held: dict[ModPath, dict[int, np.ndarray]] = {}
    for seg, blob in sess.segment_states(layout, jobs, progress, " (ranking)"):
        mine = held.get(seg.owner) or held.setdefault(seg.owner, states(seg.owner))
        out[seg.owner, seg.offset] = tuple(token_rank.scores(mine[seg.offset], blob))
        left[seg.owner] -= 1
        if not left[seg.owner]:
            del held[seg.owner]
    unwritable = None
    for owner in missing:
        ranks = [(token_rank.against(layout, s, sess.encoding), list(out[owner, s.offset]))
                 for s in layout.segments_of(owner)]
        try:
            store(sess.store, keys[owner], ranks)
        except CacheWriteError as e:
            unwritable = unwritable or str(e)
    if unwritable:
        warnings.append(f"{unwritable}; the recompute scores measured now are not stored")
    measured += missing
    return out


def stored(path: Path) -> dict[int, tuple[str, tuple[float, ...]]]:
    """A module file's scores by segment offset (none when it has none or cannot be read)."""
    try:
        f = cache_file.read(path)
    except cache_file.CacheFileError:
        return {}
    f.close()
    return {r.offset: r.rank for r in f.segments if r.rank is not None}


def store(cache: CacheStore, key: str, ranks: list[tuple[str, list[float]]]) -> None:
    """Rewrite a module file with scores (one per segment), under its lock; a file gone or
    damaged meanwhile is left alone (the next ask recomputes it)."""
    path = cache.module_path(key)
    if not path.exists():
        return
    with cache.locked(key):
        try:
            f = cache_file.read(path)
        except cache_file.CacheFileError:
            return
        try:
            if f.header.get("key") == key and len(f.segments) == len(ranks):
                cache.write_atomic(path, cache_file.with_ranks(f, ranks))
        finally:
            f.close()

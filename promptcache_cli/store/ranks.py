"""Selective-recompute scores stored in module files (``rank`` in a segment record's header,
docs/cache-format.md): reading them, and adding them to a file (only its header is rewritten, under
the module's lock, through the cache's atomic write)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CacheFileError
from . import cache_file
from .files import CacheStore


def stored(path: Path, cache: CacheStore | None = None) -> dict[int, tuple[str, tuple[float, ...]]]:
    """A module file's scores by segment offset (none when it has none or cannot be read);
    ``cache``: the store it is in (read without following a link)."""
    try:
        f = cache.read(path) if cache is not None else cache_file.read(path)
    except CacheFileError:
        return {}
    f.close()
    return {r.offset: r.rank for r in f.segments if r.rank is not None}


def store(cache: CacheStore, key: str, ranks: list[tuple[str, list[float]]]) -> None:
    """Rewrite a module file with scores (one per segment), under its lock; a file gone or
    damaged meanwhile is left alone (the next ask recomputes it)."""
    path = cache.module_path(key)
    if not cache.exists(path):
        return
    with cache.locked(key):
        try:
            f = cache.read(path)
        except CacheFileError:
            return
        try:
            if f.header.get("key") == key and len(f.segments) == len(ranks):
                cache.write_atomic(path, cache_file.with_ranks(f, ranks))
        finally:
            f.close()

"""What both session kinds do with the remote store (store/remote.py): move a schema's cache files
up and down (`pc push`, `pc pull`), publish and read the store's per-schema manifests, tell why
the store holds nothing for this machine, and pick a compile shard's share of the keys."""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from ..errors import BlobError, CacheFileError, CacheFileMissing, CacheWriteError, RemoteError
from ..store import manifest
from ..store.files import CacheStore
from ..store.remote import Missing, manifest_digest, manifest_rel
from ..store.remote_tier import CacheObject, Tier
from .results import Progress, Transfer

Shard = tuple[int, int]  # (K, N): this job computes the keys whose hash is K modulo N


def in_shard(key: str, shard: Shard | None) -> bool:
    """Whether ``key`` (hex) belongs to shard K of N: its first 60 bits modulo N are K. Every key
    is in exactly one shard, whichever machine asks."""
    if shard is None:
        return True
    k, n = shard
    return int(key[:15], 16) % n == k


def check_shard(shard: Shard | None) -> None:
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"a shard is K/N with 0 <= K < N, not {shard[0]}/{shard[1]}")


def _bytes_progress(progress: Progress | None, done: list[int], total: int, name: str) -> Callable[[int], None] | None:
    if progress is None:
        return None

    def tick(n: int) -> None:
        done[0] += n
        progress(done[0], total, name)

    return tick


def push(tier: Tier, store: CacheStore, objects: list[CacheObject], *, force: bool = False,
         progress: Progress | None = None) -> list[Transfer]:
    """Upload the local files of ``objects``, each checked whole first (a damaged local file is
    reported, never uploaded); one already in the store is left as it is unless ``force``. Files
    are read through ``store``'s boundary (a link is never followed: it counts as missing).
    Raises RemoteError when the store cannot be reached."""
    out: list[Transfer] = []
    remote = tier.remote
    total = sum(store.size(o.path) or 0 for o in objects)
    done = [0]
    for obj in objects:
        t = time.perf_counter()
        if not store.exists(obj.path):
            out.append(Transfer(obj.name, obj.key, "missing", 0, 0.0, "not in the local cache"))
            continue
        try:
            obj.check(obj.path)
            with store.open(obj.path) as f:
                size = os.fstat(f.fileno()).st_size
                uploaded = remote.upload(obj.rel, f, replace=force)
        except (CacheFileMissing, OSError, CacheWriteError) as e:  # removed meanwhile, or a link planted
            out.append(Transfer(obj.name, obj.key, "missing", 0, 0.0, f"not in the local cache ({e})"))
            continue
        except (CacheFileError, BlobError) as e:
            out.append(Transfer(obj.name, obj.key, "damaged", 0, 0.0, str(e)))
            continue
        if uploaded:
            tier.bytes_up += size
        done[0] += size
        if progress:
            progress(done[0], total, obj.name)
        out.append(Transfer(obj.name, obj.key, "uploaded" if uploaded else "present", size if uploaded else 0,
                            time.perf_counter() - t))
    return out


def pull(tier: Tier, store: CacheStore, objects: list[CacheObject], *,
         progress: Progress | None = None) -> list[Transfer]:
    """Download what ``objects`` the local cache lacks, each checked before it is put in place.
    Raises RemoteError when the store cannot be reached."""
    out: list[Transfer] = []
    remote = tier.remote
    done = [0]
    total = 0
    for obj in objects:
        if not store.exists(obj.path):
            info = remote.head(obj.rel)
            total += info.bytes if info else 0
    for obj in objects:
        t = time.perf_counter()
        if store.exists(obj.path):
            out.append(Transfer(obj.name, obj.key, "present", 0, 0.0))
            continue
        try:
            with store.locked(obj.key):  # through the boundary, under the key's lock
                n = remote.download(obj.rel, store, obj.path, obj.check,
                                    progress=_bytes_progress(progress, done, total, obj.name))
        except Missing:
            out.append(Transfer(obj.name, obj.key, "missing", 0, 0.0, "not in the store"))
            continue
        except (CacheFileError, BlobError) as e:
            out.append(Transfer(obj.name, obj.key, "damaged", 0, 0.0, str(e)))
            continue
        tier.bytes_down += n
        out.append(Transfer(obj.name, obj.key, "downloaded", n, time.perf_counter() - t))
    return out


def manifest_entry(schema: str, variant: manifest.Variant, codec: str, modules: list[dict],
                   prefix: dict | None = None) -> tuple[str, dict]:
    """The store's manifest of one compiled schema variant: (its relative path, its content).
    One object per schema name, variant and set of files, so machines never rewrite each other's."""
    keys = [m["key"] for m in modules if "key" in m] + ([prefix["key"]] if prefix else [])
    data = {"schema": schema, "model": variant.model, "llama_cpp": variant.llama_cpp,
            "state_layout": variant.state_layout, "encoding": variant.encoding, "codec": codec,
            "mode": manifest.PREFIX if prefix else "modular", "modules": modules, "compiled": time.time()}
    if prefix:
        data["prefix"] = prefix
    return manifest_rel(schema, variant.id, manifest_digest(keys)), data


def remote_mismatch(tier: Tier, schema: str, variant: manifest.Variant, rel: str) -> str | None:
    """When the store holds schema ``schema`` but not this variant's files (manifest ``rel``),
    how what it holds differs, in words; None when it holds nothing for the schema (or cannot
    be asked)."""
    folder = rel.rsplit("/", 1)[0] + "/"
    listing = tier.list(folder)
    if not listing or any(o.rel == rel for o in listing):
        return None
    if any(o.rel.rsplit("/", 1)[-1].startswith(variant.id + "-") for o in listing):
        return "another version of the schema's text"
    diffs: set[str] = set()
    for o in listing[:20]:
        try:
            raw = tier.remote.read_small(o.rel)
            data = json.loads(raw) if raw else None
        except (RemoteError, ValueError):
            continue
        if isinstance(data, dict):
            diffs.update(variant.differences(data))
    return ", ".join(sorted(diffs)) if diffs else None

"""Housekeeping of the remote store behind `pc ls --remote`, `pc verify --remote` and `pc gc
--remote`: dataclasses out, no printing.

The store holds what a cache directory does, under the same relative paths (store/remote.py):
module files, prefix states, and one manifest per compiled schema variant. S3 keeps no access
time, so eviction goes by upload time (an object is never rewritten: keys name content). Objects
are deleted without locks: a machine downloading one meanwhile gets it whole or not at all, and
checks it either way; a missing object is computed again.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import CacheFileError, RemoteError
from . import cache_file
from .files import CacheStore
from .remote import ObjectInfo, Remote

_MODULE = re.compile(r"modules/([0-9a-f]{2})/([0-9a-f]{40})\.pcm")
_STATE = re.compile(r"prefix/([0-9a-f]{2})/([0-9a-f]{40})/([1-9][0-9]{0,9})\.pcm")
_MANIFEST = re.compile(r"schemas/[^/]+/[^/]+\.json")
_LEASE = re.compile(r"leases/.+\.json")


@dataclass(frozen=True)
class RemoteFile:
    rel: str  # below the store's prefix
    key: str  # module key, or a prefix state's prompt key; "" for other objects
    bytes: int
    uploaded: float  # seconds since the epoch
    position: int | None = None  # a prefix state's


@dataclass(frozen=True)
class RemoteModule:
    name: str
    key: str
    tokens: int
    file: RemoteFile | None  # None: not in the store


@dataclass
class RemoteVariant:
    manifest: str  # its relative path
    model: str
    mode: str
    encoding: str
    codec: str
    llama_cpp: str
    modules: list[RemoteModule]
    key: str | None = None  # prefix mode: the prompt's key
    tokens: int | None = None
    states: list[RemoteFile] = field(default_factory=list)


@dataclass
class RemoteSchema:
    schema: str
    variants: list[RemoteVariant]


@dataclass
class RemoteListing:
    remote: str
    schemas: list[RemoteSchema]
    orphans: list[RemoteFile]  # cache files no manifest names
    others: list[RemoteFile]  # objects that are not pc's (left alone by gc)
    total_bytes: int  # every cache file, each counted once


@dataclass(frozen=True)
class RemoteNote:
    file: RemoteFile
    reason: str
    kind: str = "module"  # module | prefix | manifest | lease


@dataclass
class RemoteVerifyReport:
    remote: str
    checked: int
    damaged: list[RemoteNote]


@dataclass
class RemoteGcReport:
    remote: str
    removed: list[RemoteNote]  # with a dry run: what would be removed
    dry_run: bool
    total_before: int
    total_after: int


def _classify(objects: list[ObjectInfo]) -> tuple[list[RemoteFile], list[RemoteFile], list[RemoteFile]]:
    """(cache files, manifests, others)."""
    files, manifests, others = [], [], []
    for o in objects:
        if m := _MODULE.fullmatch(o.rel):
            if m[1] == m[2][:2]:
                files.append(RemoteFile(o.rel, m[2], o.bytes, o.modified))
                continue
        elif m := _STATE.fullmatch(o.rel):
            if m[1] == m[2][:2]:
                files.append(RemoteFile(o.rel, m[2], o.bytes, o.modified, int(m[3])))
                continue
        elif _MANIFEST.fullmatch(o.rel):
            manifests.append(RemoteFile(o.rel, "", o.bytes, o.modified))
            continue
        others.append(RemoteFile(o.rel, "", o.bytes, o.modified))
    return files, manifests, others


def _kind(f: RemoteFile) -> str:
    return "module" if f.position is None else "prefix"


def _manifest(remote: Remote, rel: str) -> dict | None:
    raw = remote.read_small(rel)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _refs(data: dict) -> tuple[list[tuple[str, str, int]], str | None, int | None]:
    """(modules as (name, key, tokens), prefix key, prefix tokens) of a manifest; malformed parts skipped."""
    mods = [(str(m.get("name", "?")), m["key"], m["tokens"] if isinstance(m.get("tokens"), int) else 0)
            for m in data.get("modules") or [] if isinstance(m, dict) and isinstance(m.get("key"), str)]
    ref = data.get("prefix")
    key = ref.get("key") if isinstance(ref, dict) and isinstance(ref.get("key"), str) else None
    tokens = ref.get("tokens") if isinstance(ref, dict) and isinstance(ref.get("tokens"), int) else None
    return mods, key, tokens


def list_remote(remote: Remote) -> RemoteListing:
    files, manifests, others = _classify(remote.list())
    modules = {f.key: f for f in files if f.position is None}
    states: dict[str, list[RemoteFile]] = {}
    for f in sorted((f for f in files if f.position is not None), key=lambda f: f.position or 0):
        states.setdefault(f.key, []).append(f)
    by_schema: dict[str, list[RemoteVariant]] = {}
    used: set[str] = set()
    for m in manifests:
        data = _manifest(remote, m.rel)
        if data is None:
            others.append(m)
            continue
        mods, key, tokens = _refs(data)
        v = RemoteVariant(m.rel, str((data.get("model") or {}).get("name", "?")), str(data.get("mode", "modular")),
                          str(data.get("encoding")), str(data.get("codec")), str(data.get("llama_cpp")),
                          [RemoteModule(name, k, t, modules.get(k)) for name, k, t in mods], key, tokens,
                          states.get(key, []) if key else [])
        used |= {k for _, k, _ in mods} | ({key} if key else set())
        by_schema.setdefault(str(data.get("schema", m.rel.split("/")[1])), []).append(v)
    schemas = [RemoteSchema(name, by_schema[name]) for name in sorted(by_schema)]
    orphans = [f for f in files if f.key not in used]
    return RemoteListing(str(remote), schemas, orphans, others, sum(f.bytes for f in files))


def verify_remote(remote: Remote, root, *, progress: Callable[[int, int, str], None] | None = None
                  ) -> RemoteVerifyReport:
    """Download each cache file into a temporary file in the cache directory (beside where it
    would go) and check it whole: every checksum, and that it is the file its name says."""
    store = CacheStore(root)
    files, manifests, others = _classify(remote.list())
    damaged: list[RemoteNote] = []
    total, done = sum(f.bytes for f in files), 0
    for f in files:
        near = store.root / f.rel
        try:
            with remote.scratch(f.rel, store, near) as (path, _):
                try:
                    cf = cache_file.verify(path, opener=store.boundary.opener)
                except CacheFileError as e:
                    damaged.append(RemoteNote(f, str(e), _kind(f)))
                else:
                    cf.close()
                    if why := cache_file.mismatch(cf, f.key, f.position, clip=40):
                        damaged.append(RemoteNote(f, why, _kind(f)))
        except RemoteError as e:
            if remote.head(f.rel) is not None:  # not deleted meanwhile
                raise e from None
        finally:
            _prune(store, near.parent)
        done += f.bytes
        if progress:
            progress(done, total, f.rel)
    for m in manifests:
        if _manifest(remote, m.rel) is None and remote.head(m.rel) is not None:
            damaged.append(RemoteNote(m, "not a manifest (JSON object)", "manifest"))
    return RemoteVerifyReport(str(remote), len(files) + len(manifests), damaged)


def _prune(store: CacheStore, folder) -> None:
    """Remove the folders verifying left empty, up to the cache root (through the boundary: a
    link is never removed or followed)."""
    root = store.root
    while folder != root and root in folder.parents:
        if not store.boundary.rmdir(folder):
            return
        folder = folder.parent


def gc_remote(remote: Remote, *, max_size: int | None = None, older_than: float | None = None,
              dry_run: bool = False, now: float | None = None, grace: float = 0.0) -> RemoteGcReport:
    """Delete cache files uploaded more than ``older_than`` seconds ago, then the oldest until the
    rest take at most ``max_size`` bytes; then the manifests that name no cache file left, and the
    leases (remote_tier.py) of machines that stopped renewing them LEASE_SECONDS ago or longer
    (killed while computing; a lease's holder renews it every LEASE_SECONDS / 3). Files uploaded
    in the last ``grace`` seconds stay (a machine may be downloading one it was just told of)."""
    if max_size is None and older_than is None:
        raise ValueError("gc needs max_size or older_than")
    now = time.time() if now is None else now
    files, manifests, others = _classify(remote.list())
    total_before = total = sum(f.bytes for f in files)
    removed: list[RemoteNote] = []
    gone: set[str] = set()
    for f in sorted(files, key=lambda f: (f.uploaded, f.rel)):
        if now - f.uploaded < grace:
            continue
        if older_than is not None and now - f.uploaded > older_than:
            reason = "uploaded longer ago than the age limit"
        elif max_size is not None and total > max_size:
            reason = "uploaded first, over the size limit"
        else:
            continue
        if not dry_run:
            remote.delete(f.rel)
        total -= f.bytes
        gone.add(f.rel)
        removed.append(RemoteNote(f, reason, _kind(f)))
    left = {f.key for f in files if f.rel not in gone}
    for m in manifests:
        data = _manifest(remote, m.rel)
        if data is None:
            continue
        mods, key, _ = _refs(data)
        if not ({k for _, k, _ in mods} | ({key} if key else set())) & left:
            if not dry_run:
                remote.delete(m.rel)
            removed.append(RemoteNote(m, "names no cache file left", "manifest"))
    for o in others:
        if _LEASE.fullmatch(o.rel) and _lease_dead(remote, o, now):
            if not dry_run:
                remote.delete(o.rel)
            removed.append(RemoteNote(o, "a lease its holder stopped renewing", "lease"))
    return RemoteGcReport(str(remote), removed, dry_run, total_before, total)


def _lease_dead(remote: Remote, lease: RemoteFile, now: float) -> bool:
    """Whether a lease expired LEASE_SECONDS ago or longer (one that cannot be read: uploaded
    that long ago), so that no machine is about to take it over."""
    from .remote_tier import LEASE_SECONDS

    if now - lease.uploaded < LEASE_SECONDS:
        return False
    raw = remote.read_small(lease.rel, limit=4096)
    if raw is None:  # released meanwhile, or not a lease of ours
        return False
    try:
        expires = json.loads(raw)["expires"]
    except (ValueError, KeyError, TypeError):
        expires = None
    if not isinstance(expires, (int, float)):
        return True
    return now - expires >= LEASE_SECONDS

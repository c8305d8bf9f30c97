"""Cache housekeeping behind `pc ls`, `pc verify`, `pc gc` and `pc rm`: dataclasses out, no printing.

Module files are content-addressed and may be shared by several schemas; the manifests in
``<cache>/schemas`` say which uses which. A module file's access time is its last use (the engine
sets it on every load): files read here get theirs back. A file is removed only under its lock.
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from . import cache_file, manifest
from .cache_store import CacheStore, CacheWriteError
from .errors import InputError

STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a writer that died
LOCK_TIMEOUT = 0.2  # seconds to wait for a module's lock before leaving the file alone


@dataclass(frozen=True)
class FileInfo:
    path: Path
    key: str  # module key (the file name's stem); "" for temporary and lock files
    bytes: int
    last_used: float | None  # a module file's access time (its last use); None for other files


@dataclass(frozen=True)
class ModuleEntry:
    name: str
    key: str
    tokens: int
    bytes: int  # on disk; 0 when the file is missing
    ratio: float | None  # raw state bytes / bytes on disk; None when missing or unreadable
    last_used: float | None
    present: bool


@dataclass
class VariantEntry:
    model: str
    encoding: str
    codec: str
    llama_cpp: str
    modules: list[ModuleEntry]


@dataclass
class SchemaEntry:
    schema: str
    path: str | None  # the schema file, as recorded when it was compiled
    manifest: Path
    variants: list[VariantEntry]


@dataclass
class Listing:
    schemas: list[SchemaEntry]
    orphans: list[FileInfo]  # module files no manifest references
    total_bytes: int  # all module files on disk, each counted once


@dataclass
class VerifyReport:
    checked: int
    damaged: list[Note]
    stale_temporary: list[FileInfo]  # reported, not damage


@dataclass(frozen=True)
class Note:
    file: FileInfo
    reason: str  # why it is damaged, was (or would be) removed, or was left in place
    kind: str = "module"  # module | temporary | lock


@dataclass
class GcReport:
    removed: list[Note]  # with a dry run: what would be removed
    skipped: list[Note]  # module files left in place: locked, or used since the scan
    dry_run: bool
    total_before: int  # bytes of all module files
    total_after: int


@dataclass
class RmReport:
    schema: str
    path: str | None
    manifest: Path
    removed: list[Note]
    skipped: list[Note]
    kept: list[tuple[str, str]]  # (module name, key) of files another schema still uses


# -- reading -------------------------------------------------------------------------------------


def _stat_all(root: Path, *patterns: str):
    for p in sorted(p for pattern in patterns for p in Path(root).glob(pattern)):
        with suppress(FileNotFoundError):  # removed meanwhile
            yield p, p.stat()


def module_files(root: Path) -> list[FileInfo]:
    return [FileInfo(p, p.stem, st.st_size, st.st_atime) for p, st in _stat_all(root, "modules/*/*.pcm")]


def stale_temporary_files(root: Path, now: float) -> list[FileInfo]:
    """Temporary files of atomic writes (module files and manifests) older than an hour."""
    return [FileInfo(p, "", st.st_size, None) for p, st in _stat_all(root, "modules/*/.tmp-*", "schemas/.tmp-*")
            if now - st.st_mtime >= STALE_TMP_SECONDS]


def _refs(variants) -> list[tuple[str, str, int]]:
    """(name, key, tokens) of every module the manifest variants list; malformed entries skipped."""
    return [(str(m.get("name", "?")), m["key"], int(m.get("tokens") or 0))
            for v in variants if isinstance(v, dict)
            for m in v.get("modules") or [] if isinstance(m, dict) and isinstance(m.get("key"), str)]


@contextmanager
def _atime_kept(path: Path):
    """Reading a file may set its access time (relatime); put it back: it records the last use."""
    st = path.stat()
    try:
        yield
    finally:
        with suppress(OSError):
            if path.stat().st_atime_ns != st.st_atime_ns:
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _raw_bytes(path: Path) -> int | None:
    try:
        with _atime_kept(path):
            f = cache_file.read(path)
    except (OSError, cache_file.CacheFileError):
        return None
    f.close()
    return sum(s.raw_size for s in f.segments)


def _entry(name: str, key: str, tokens: int, f: FileInfo | None, raw: int | None) -> ModuleEntry:
    ratio = raw / f.bytes if f and raw and f.bytes else None
    return ModuleEntry(name, key, tokens, f.bytes if f else 0, ratio, f.last_used if f else None, f is not None)


def list_cache(root: Path) -> Listing:
    """Every schema's variants and modules with their files' sizes, ratios and last use."""
    files = {f.key: f for f in module_files(root)}
    raw = {key: _raw_bytes(f.path) for key, f in files.items()}
    schemas = []
    for mpath, data in manifest.load_all(root):
        variants = []
        for v in sorted((v for v in data["variants"].values() if isinstance(v, dict)),
                        key=lambda v: v.get("compiled") or 0):
            mods = [_entry(name, key, tokens, files.get(key), raw.get(key)) for name, key, tokens in _refs([v])]
            variants.append(VariantEntry(str((v.get("model") or {}).get("name", "?")), str(v.get("encoding")),
                                         str(v.get("codec")), str(v.get("llama_cpp")), mods))
        schemas.append(SchemaEntry(str(data.get("schema", mpath.stem)), data.get("path"), mpath, variants))
    used = {m.key for s in schemas for v in s.variants for m in v.modules}
    orphans = [f for key, f in files.items() if key not in used]
    return Listing(schemas, orphans, sum(f.bytes for f in files.values()))


def verify_cache(root: Path, *, now: float | None = None) -> VerifyReport:
    """Read every module file whole, checking every checksum. Leftover temporary files are
    listed too; they are not damage."""
    files, damaged = module_files(root), []
    for f in files:
        try:
            with _atime_kept(f.path):
                cf = cache_file.verify(f.path)
        except (OSError, cache_file.CacheFileError) as e:
            if f.path.exists():  # not removed since the scan
                damaged.append(Note(f, str(e)))
            continue
        cf.close()
        if cf.header.get("key") != f.key:
            damaged.append(Note(f, f"its header names another key ({cf.header.get('key')})"))
    return VerifyReport(len(files), damaged, stale_temporary_files(root, time.time() if now is None else now))


# -- removing ------------------------------------------------------------------------------------


def _cache_errors(fn):
    """An OSError while removing (a read-only cache, ...) becomes a CacheWriteError (exit 5)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            raise CacheWriteError(f"cannot change the cache: {e.filename or ''}: {e.strerror}") from None
    return wrapper


def _remove(store: CacheStore, key: str, timeout: float, f: FileInfo | None = None, *,
            unless_used: bool = False) -> str | None:
    """Under the module's lock (waiting at most ``timeout``) unlink module file ``f`` and the lock
    file, or with ``f`` None a lock file whose module file is gone. Returns why not, or None."""
    lock = store.lock(key)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        return "locked: being written"
    try:
        if f is None and store.module_path(key).exists():
            return "its module file was written meanwhile"
        if f is not None and unless_used and f.path.stat().st_atime != f.last_used:
            return "used since the scan"
        if f is not None:
            f.path.unlink()
        Path(lock.lock_file).unlink(missing_ok=True)  # a process waiting on it sees the unlinked inode, retries
        return None
    except FileNotFoundError:
        return "already gone"
    finally:
        lock.release()


@_cache_errors
def gc(root: Path, *, max_size: int | None = None, older_than: float | None = None, dry_run: bool = False,
       now: float | None = None, lock_timeout: float = LOCK_TIMEOUT) -> GcReport:
    """Remove the module files unused for more than ``older_than`` seconds, then the least recently
    used ones until all take at most ``max_size`` bytes; also temporary files older than an hour and
    lock files whose module file is gone. Locked module files are left alone."""
    if max_size is None and older_than is None:
        raise ValueError("gc needs max_size or older_than")
    now = time.time() if now is None else now
    store = CacheStore(Path(root))
    files = sorted(module_files(root), key=lambda f: (f.last_used, f.key))  # least recently used first
    total_before = total = sum(f.bytes for f in files)
    removed, skipped = [], []  # of Note
    for f in files:
        if older_than is not None and now - f.last_used > older_than:
            reason = "unused for longer than the age limit"
        elif max_size is not None and total > max_size:
            reason = "least recently used, over the size limit"
        else:
            continue
        why = None if dry_run else _remove(store, f.key, lock_timeout, f, unless_used=True)
        if why:
            skipped.append(Note(f, why))
        else:
            total -= f.bytes
            removed.append(Note(f, reason))
    for t in stale_temporary_files(root, now):
        if not dry_run:
            t.path.unlink(missing_ok=True)
        removed.append(Note(t, "temporary file older than an hour", "temporary"))
    for lock in sorted(Path(root).glob("modules/*/*.pcm.lock")):
        key = lock.name.removesuffix(".pcm.lock")
        if Path(f"{store.module_path(key)}.lock") == lock and not store.module_path(key).exists():
            if dry_run or _remove(store, key, lock_timeout) is None:
                removed.append(Note(FileInfo(lock, "", 0, None), "lock file of a missing module", "lock"))
    return GcReport(removed, skipped, dry_run, total_before, total)


@_cache_errors
def remove_schema(root: Path, schema: str, *, lock_timeout: float = LOCK_TIMEOUT) -> RmReport:
    """Remove a schema's manifest (``schema``: its file's path or its name) and every module file
    it references that no other manifest references."""
    entries = manifest.load_all(root)
    target = os.path.abspath(schema)
    hits = [e for e in entries if e[1].get("path") == target] or [e for e in entries if e[1].get("schema") == schema]
    if not hits:
        raise InputError(f"no compiled schema '{schema}' in the cache {root} (`pc ls` lists them)")
    if len(hits) > 1:
        raise InputError(f"schema name '{schema}' matches {len(hits)} compiled schemas "
                         f"({', '.join(str(d.get('path')) for _, d in hits)}): give the schema file's path")
    mpath, data = hits[0]
    others = {key for p, d in entries if p != mpath for _, key, _ in _refs(d["variants"].values())}
    files = {f.key: f for f in module_files(root)}
    store = CacheStore(Path(root))
    report = RmReport(str(data.get("schema")), data.get("path"), mpath, [], [], [])
    for key, name in {key: name for name, key, _ in _refs(data["variants"].values())}.items():
        if key in others:
            report.kept.append((name, key))
        elif key in files:
            why = _remove(store, key, lock_timeout, files[key])
            if why:
                report.skipped.append(Note(files[key], why))
            else:
                report.removed.append(Note(files[key], f"module '{name}' of '{report.schema}'"))
    with FileLock(f"{mpath}.lock") as lock:
        mpath.unlink(missing_ok=True)
        Path(lock.lock_file).unlink(missing_ok=True)
    return report

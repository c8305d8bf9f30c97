"""Cache housekeeping behind `pc ls`, `pc verify`, `pc gc` and `pc rm`: dataclasses out, no printing.

Two kinds of cache files: module files (``modules/<key[:2]>/<key>.pcm``), content-addressed and
possibly shared by several schemas, and prefix-mode states (``prefix/<key[:2]>/<key>/<position>.pcm``,
``key`` the prompt's), one folder per prefilled prompt. The manifests in ``<cache>/schemas`` say
which schema uses which. A cache file's access time is its last use (the engines set it on every
load): files read here get theirs back. A file is removed only under its key's lock, the lock its
writer holds (``CacheStore.lock``). A schema's prefix-mode overlap record
(``prefix/history/<manifest name>/``) goes with the schema.
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from . import cache_file, manifest
from .files import CacheStore
from ..errors import CacheWriteError, InputError
from .overlap_log import LOG_NAME

STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a writer that died
LOCK_TIMEOUT = 0.2  # seconds to wait for a module's lock before leaving the file alone


@dataclass(frozen=True)
class FileInfo:
    path: Path
    key: str  # module key, or a prefix state's prompt key (its folder); "" for other files
    bytes: int
    last_used: float | None  # a cache file's access time (its last use); None for other files
    position: int | None = None  # a prefix state's: it holds tokens 0..position; None for other files


@dataclass(frozen=True)
class StateEntry:
    """A prefix-mode state on disk."""

    path: Path
    position: int
    tokens: int | None  # tokens it holds, as its header says; None when unreadable
    bytes: int
    ratio: float | None  # raw state bytes / bytes on disk; None when unreadable
    last_used: float
    partial: bool | None  # a hybrid model's checkpoint: its recurrent part only; None when unreadable


@dataclass(frozen=True)
class ModuleEntry:
    name: str
    key: str
    tokens: int
    bytes: int  # on disk; 0 when the file is missing
    ratio: float | None  # raw state bytes / bytes on disk; None when missing or unreadable
    last_used: float | None
    present: bool
    cached: bool = True  # False: a cache="false" module, computed for each request (no key, no file)


@dataclass
class VariantEntry:
    model: str
    encoding: str
    codec: str
    llama_cpp: str
    modules: list[ModuleEntry]
    mode: str = "modular"  # or "prefix": no modules, but ``states``
    key: str | None = None  # prefix mode: the prompt's key (its states' folder)
    tokens: int | None = None  # prefix mode: the default prompt's length
    states: list[StateEntry] = field(default_factory=list)  # prefix mode, by position
    family: str | None = None  # the model's GGUF architecture, as compiled (None: an older manifest)
    memory: str | None = None  # its memory kind (attention, swa, recurrent, hybrid)


@dataclass
class SchemaEntry:
    schema: str
    path: str | None  # the schema file, as recorded when it was compiled
    manifest: Path
    variants: list[VariantEntry]


@dataclass
class Listing:
    schemas: list[SchemaEntry]
    orphans: list[FileInfo]  # module files and prefix states no manifest references
    total_bytes: int  # all module files and prefix states on disk, each counted once


@dataclass
class VerifyReport:
    checked: int
    damaged: list[Note]
    stale_temporary: list[FileInfo]  # reported, not damage


@dataclass(frozen=True)
class Note:
    file: FileInfo
    reason: str  # why it is damaged, was (or would be) removed, or was left in place
    kind: str = "module"  # module | prefix | history | temporary | lock


@dataclass
class GcReport:
    removed: list[Note]  # with a dry run: what would be removed
    skipped: list[Note]  # cache files left in place: locked, or used since the scan
    dry_run: bool
    total_before: int  # bytes of all module files and prefix states
    total_after: int


@dataclass
class RmReport:
    schema: str
    path: str | None
    manifest: Path
    removed: list[Note]
    skipped: list[Note]
    kept: list[tuple[str, str]]  # (module name or "prefix", key) of files another schema still uses


# -- reading -------------------------------------------------------------------------------------


def _stat_all(root: Path, *patterns: str):
    for p in sorted(p for pattern in patterns for p in Path(root).glob(pattern)):
        with suppress(FileNotFoundError):  # removed meanwhile
            yield p, p.stat()


def module_files(root: Path) -> list[FileInfo]:
    return [FileInfo(p, p.stem, st.st_size, st.st_atime) for p, st in _stat_all(root, "modules/*/*.pcm")]


def prefix_files(root: Path) -> list[FileInfo]:
    """Prefix-mode states, ``prefix/<key[:2]>/<key>/<position>.pcm`` (not the overlap records)."""
    return [FileInfo(p, p.parent.name, st.st_size, st.st_atime, int(p.stem))
            for p, st in _stat_all(root, "prefix/??/*/*.pcm") if p.stem.isdigit()]


def _kind(f: FileInfo) -> str:
    return "module" if f.position is None else "prefix"


def _by_key(files: list[FileInfo]) -> dict[str, list[FileInfo]]:
    out: dict[str, list[FileInfo]] = {}
    for f in sorted(files, key=lambda f: f.position or 0):
        out.setdefault(f.key, []).append(f)
    return out


def _prefix_dir(root: Path, key: str) -> Path:
    return Path(root) / "prefix" / key[:2] / key  # PrefixSession.state_dir


def stale_temporary_files(root: Path, now: float) -> list[FileInfo]:
    """Temporary files of atomic writes (cache files, manifests, overlap records) older than an hour."""
    patterns = ("modules/*/.tmp-*", "schemas/.tmp-*", "prefix/*/*/.tmp-*")  # prefix/history/<schema>/ too
    return [FileInfo(p, "", st.st_size, None) for p, st in _stat_all(root, *patterns)
            if now - st.st_mtime >= STALE_TMP_SECONDS]


def _refs(variants) -> list[tuple[str, str, int]]:
    """(name, key, tokens) of every module the manifest variants list; malformed entries skipped."""
    return [(str(m.get("name", "?")), m["key"], int(m.get("tokens") or 0))
            for v in variants if isinstance(v, dict)
            for m in v.get("modules") or [] if isinstance(m, dict) and isinstance(m.get("key"), str)]


def _modules(v: dict, files: dict[str, FileInfo], raw: dict[str, int | None]) -> list[ModuleEntry]:
    """A manifest variant's modules in its order: module files, and cache="false" modules (no key,
    no file); malformed entries skipped."""
    out = []
    for m in v.get("modules") or []:
        if not isinstance(m, dict):
            continue
        if isinstance(m.get("key"), str):
            key = m["key"]
            out.append(_entry(str(m.get("name", "?")), key, int(m.get("tokens") or 0), files.get(key), raw.get(key)))
        elif m.get("cache") is False:
            tokens = m.get("tokens") if isinstance(m.get("tokens"), int) else 0
            out.append(ModuleEntry(str(m.get("name", "?")), "", tokens, 0, None, None, False, cached=False))
    return out


def _prefix_key(variant) -> str | None:
    """The prompt key of a prefix-mode manifest variant; None for others and malformed entries."""
    ref = variant.get("prefix") if isinstance(variant, dict) else None
    return ref["key"] if isinstance(ref, dict) and isinstance(ref.get("key"), str) else None


def _prefix_keys(variants) -> set[str]:
    return {k for v in variants if (k := _prefix_key(v)) is not None}


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


def _read_header(path: Path) -> cache_file.CacheFile | None:
    """A cache file's header and segment records (its payload unread); None when unreadable."""
    try:
        with _atime_kept(path):
            f = cache_file.read(path)
    except (OSError, cache_file.CacheFileError):
        return None
    f.close()
    return f


def _raw_bytes(path: Path) -> int | None:
    f = _read_header(path)
    return None if f is None else sum(s.raw_size for s in f.segments)


def _entry(name: str, key: str, tokens: int, f: FileInfo | None, raw: int | None) -> ModuleEntry:
    ratio = raw / f.bytes if f and raw and f.bytes else None
    return ModuleEntry(name, key, tokens, f.bytes if f else 0, ratio, f.last_used if f else None, f is not None)


def _state(f: FileInfo) -> StateEntry:
    cf = _read_header(f.path)
    if cf is None:
        return StateEntry(f.path, f.position, None, f.bytes, None, f.last_used, None)
    raw = sum(s.raw_size for s in cf.segments)
    return StateEntry(f.path, f.position, sum(len(s.tokens) for s in cf.segments), f.bytes,
                      raw / f.bytes if raw and f.bytes else None, f.last_used, cf.header.get("partial") is True)


def _variant(v: dict, files: dict[str, FileInfo], raw: dict[str, int | None],
             states: dict[str, list[StateEntry]]) -> VariantEntry:
    entry = VariantEntry(str((v.get("model") or {}).get("name", "?")), str(v.get("encoding")), str(v.get("codec")),
                         str(v.get("llama_cpp")),
                         _modules(v, files, raw))
    model = v.get("model") if isinstance(v.get("model"), dict) else {}
    entry.family = model.get("family") if isinstance(model.get("family"), str) else None
    entry.memory = model.get("memory") if isinstance(model.get("memory"), str) else None
    key = _prefix_key(v)
    if key is not None:
        tokens = v["prefix"].get("tokens")
        entry.mode, entry.key, entry.states = manifest.PREFIX, key, states.get(key, [])
        entry.tokens = tokens if isinstance(tokens, int) else None
    return entry


def list_cache(root: Path) -> Listing:
    """Every schema's variants: modules, or prefix states, with their files' sizes, ratios and
    last use; then the cache files no manifest references."""
    files = {f.key: f for f in module_files(root)}
    raw = {key: _raw_bytes(f.path) for key, f in files.items()}
    prefix = _by_key(prefix_files(root))
    states = {key: [_state(f) for f in group] for key, group in prefix.items()}
    schemas = []
    for mpath, data in manifest.load_all(root):
        variants = [_variant(v, files, raw, states)
                    for v in sorted((v for v in data["variants"].values() if isinstance(v, dict)),
                                    key=lambda v: v.get("compiled") or 0)]
        schemas.append(SchemaEntry(str(data.get("schema", mpath.stem)), data.get("path"), mpath, variants))
    used = {m.key for s in schemas for v in s.variants for m in v.modules}
    used |= {v.key for s in schemas for v in s.variants if v.key is not None}
    orphans = [f for key, f in files.items() if key not in used]
    orphans += [f for key, group in prefix.items() if key not in used for f in group]
    total = sum(f.bytes for f in files.values()) + sum(f.bytes for group in prefix.values() for f in group)
    return Listing(schemas, orphans, total)


def _mismatch(cf: cache_file.CacheFile, f: FileInfo) -> str | None:
    """How a whole, intact file contradicts its name, if it does."""
    if cf.header.get("key") != f.key:
        return f"its header names another key ({cf.header.get('key')})"
    if f.position is not None:
        held = sum(len(s.tokens) for s in cf.segments)
        if held != f.position or cf.header.get("mode") != "prefix":
            return f"its header describes another state ({cf.header.get('module')}, {held} tokens)"
    return None


def verify_cache(root: Path, *, now: float | None = None) -> VerifyReport:
    """Read every module file and prefix state whole, checking every checksum. Leftover
    temporary files are listed too; they are not damage."""
    files, damaged = module_files(root) + prefix_files(root), []
    for f in files:
        try:
            with _atime_kept(f.path):
                cf = cache_file.verify(f.path)
        except (OSError, cache_file.CacheFileError) as e:
            if f.path.exists():  # not removed since the scan
                damaged.append(Note(f, str(e), _kind(f)))
            continue
        cf.close()
        if why := _mismatch(cf, f):
            damaged.append(Note(f, why, _kind(f)))
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


def _in_use(store: CacheStore, key: str) -> bool:
    """Whether ``key`` still has a module file or prefix states (then its lock file stays)."""
    return store.module_path(key).exists() or any(_prefix_dir(store.root, key).glob("*.pcm"))


def _remove(store: CacheStore, key: str, timeout: float, f: FileInfo | None = None, *,
            unless_used: bool = False) -> str | None:
    """Under the key's lock (waiting at most ``timeout``) unlink cache file ``f`` (a module file
    or a prefix state), or with ``f`` None nothing; then, when the key has no file left, its
    prefix folder and lock file. Returns why not, or None."""
    lock = store.lock(key)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        return "locked: being written"
    try:
        if f is None and _in_use(store, key):
            return "its cache files were written meanwhile"
        if f is not None and unless_used and f.path.stat().st_atime != f.last_used:
            return "used since the scan"
        if f is not None:
            f.path.unlink()
        if not _in_use(store, key):
            with suppress(OSError):  # absent, or holding a temporary file
                _prefix_dir(store.root, key).rmdir()
            Path(lock.lock_file).unlink(missing_ok=True)  # a process waiting on it sees the unlinked inode, retries
        return None
    except FileNotFoundError:
        return "already gone"
    finally:
        lock.release()


def _remove_history(folder: Path, timeout: float) -> tuple[FileInfo, str | None] | None:
    """Remove a schema's overlap record folder under the record's lock (``overlap_log``).
    Returns (the record, why not or None), or None when there is no record."""
    if not folder.is_dir():
        return None
    lock = FileLock(str(folder / LOG_NAME) + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        return FileInfo(folder / LOG_NAME, "", 0, None), "locked: being written"
    try:
        files = [p for p in folder.iterdir() if p.is_file() and p.name != Path(lock.lock_file).name]
        info = FileInfo(folder / LOG_NAME, "", sum(p.stat().st_size for p in files), None)
        for p in files:
            p.unlink()
        Path(lock.lock_file).unlink(missing_ok=True)
    finally:
        lock.release()
    with suppress(OSError):  # not empty: a request was recorded meanwhile
        folder.rmdir()
    return info, None


@_cache_errors
def gc(root: Path, *, max_size: int | None = None, older_than: float | None = None, dry_run: bool = False,
       now: float | None = None, lock_timeout: float = LOCK_TIMEOUT) -> GcReport:
    """Remove the cache files (module files and prefix states) unused for more than ``older_than``
    seconds, then the least recently used ones until all take at most ``max_size`` bytes; also
    temporary files older than an hour and lock files whose key has no file left. Locked files are
    left alone. Evicting some of a prompt's prefix states is fine: an ask resumes from an earlier
    one, and a missing end state is recomputed."""
    if max_size is None and older_than is None:
        raise ValueError("gc needs max_size or older_than")
    now = time.time() if now is None else now
    store = CacheStore(Path(root))
    files = sorted(module_files(root) + prefix_files(root),
                   key=lambda f: (f.last_used, f.key, f.position or 0))  # least recently used first
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
            skipped.append(Note(f, why, _kind(f)))
        else:
            total -= f.bytes
            removed.append(Note(f, reason, _kind(f)))
    for t in stale_temporary_files(root, now):
        if not dry_run:
            t.path.unlink(missing_ok=True)
        removed.append(Note(t, "temporary file older than an hour", "temporary"))
    for lock in sorted(Path(root).glob("modules/*/*.pcm.lock")):
        key = lock.name.removesuffix(".pcm.lock")
        if Path(f"{store.module_path(key)}.lock") == lock and not _in_use(store, key):
            if dry_run or _remove(store, key, lock_timeout) is None:
                removed.append(Note(FileInfo(lock, "", 0, None), "lock file of a missing cache file", "lock"))
    if not dry_run:  # the span index forgets the files gone (text prompts would skip them anyway)
        from .span_index import compact

        compact(Path(root), lambda key: store.module_path(key).exists())
    return GcReport(removed, skipped, dry_run, total_before, total)


@_cache_errors
def remove_schema(root: Path, schema: str, *, lock_timeout: float = LOCK_TIMEOUT) -> RmReport:
    """Remove a schema's manifest (``schema``: its file's path or its name), every module file and
    prefix state it references that no other manifest references, and its overlap record."""
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
    others |= {key for p, d in entries if p != mpath for key in _prefix_keys(d["variants"].values())}
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
    states = _by_key(prefix_files(root))
    for key in sorted(_prefix_keys(data["variants"].values())):
        if key in others:
            report.kept.append(("prefix", key))
            continue
        for f in states.get(key, []):
            why = _remove(store, key, lock_timeout, f)
            note = Note(f, why or f"prefix state at token {f.position} of '{report.schema}'", "prefix")
            (report.skipped if why else report.removed).append(note)
    history = _remove_history(Path(root) / "prefix" / "history" / mpath.stem, lock_timeout)  # overlap_log.history_dir
    if history is not None:
        info, why = history
        (report.skipped if why else report.removed).append(Note(info, why or "overlap record", "history"))
    with FileLock(f"{mpath}.lock") as lock:
        mpath.unlink(missing_ok=True)
        Path(lock.lock_file).unlink(missing_ok=True)
    return report

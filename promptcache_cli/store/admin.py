"""Cache housekeeping behind `pc ls`, `pc verify`, `pc gc` and `pc rm`: dataclasses out, no printing.

Two kinds of cache files: module files (``modules/<key[:2]>/<key>.pcm``), content-addressed and
possibly shared by several schemas, and prefix-mode states (``prefix/<key[:2]>/<key>/<position>.pcm``,
``key`` the prompt's), one folder per prefilled prompt. The manifests in ``<cache>/schemas`` say
which schema uses which. A cache file's access time is its last use (the engines set it on every
load): files read here get theirs back. A file is removed only under its key's lock, the lock its
writer holds (``CacheStore.lock``). A schema's prefix-mode overlap record
(``prefix/history/<manifest name>/``) goes with the schema.

Every walk, read and removal goes through the cache folder's boundary (boundary.py): symbolic
links inside the cache are never followed and never removed (`pc verify` lists them). Removals
live in small helpers (:func:`remove_file`, :func:`remove_history`, :func:`remove_manifest`,
:func:`remove_temporary`) for any command that evicts.
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from typing import Callable, Union

from . import cache_file, manifest
from .boundary import TEMPORARY_PREFIX, Boundary, Entry, LockTimeout
from .files import CacheStore
from ..errors import CacheLinkError, CacheWriteError, InputError, did_you_mean
from .overlap_log import LOG_NAME

STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a writer that died
ORPHAN_GRACE_SECONDS = 60  # a cache file written since may belong to a compile about to record it
LOCK_TIMEOUT = 0.2  # seconds to wait for a module's lock before leaving the file alone
GRACE_SECONDS = 60.0  # gc leaves files used this recently alone (docs/design.md, "Housekeeping beside asks")
LINK_LEFT = "a symbolic link: left alone"


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
    links: list[Path] = field(default_factory=list)  # symbolic links inside the cache: never followed, left alone


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


Match = Union[str, Callable[[str], bool]]  # a folder or file name, or a test of one


def _select(root: Path, *pattern: Match, kind: str = "file") -> list[Entry]:
    """The entries ``root/<pattern...>`` of ``kind`` (the last name's test; the others are
    folders), sorted by path; links are neither followed nor returned (:func:`links` lists them)."""
    b = Boundary(root)
    found: list[Entry] = []

    def walk(folder: tuple[str, ...], rest: tuple[Match, ...]) -> None:
        try:
            entries = b.entries(folder)
        except (OSError, CacheWriteError):  # missing, unreadable, or a link: nothing of ours there
            return
        for e in entries:
            name, test = e.path.name, rest[0]
            if not (name == test if isinstance(test, str) else test(name)):
                continue
            if len(rest) == 1:
                if e.kind == kind:
                    found.append(e)
            elif e.kind == "dir":
                walk(folder + (name,), rest[1:])

    walk((), pattern)
    return found


def _any(name: str) -> bool:
    return True


def _suffix(suffix: str) -> Callable[[str], bool]:
    return lambda name: name.endswith(suffix) and not name.startswith(TEMPORARY_PREFIX)


def _temporary(name: str) -> bool:
    return name.startswith(TEMPORARY_PREFIX)


def module_files(root: Path) -> list[FileInfo]:
    return [FileInfo(e.path, e.path.stem, e.stat.st_size, e.stat.st_atime)
            for e in _select(root, "modules", _any, _suffix(".pcm"))]


def prefix_files(root: Path) -> list[FileInfo]:
    """Prefix-mode states, ``prefix/<key[:2]>/<key>/<position>.pcm`` (not the overlap records)."""
    return [FileInfo(e.path, e.path.parent.name, e.stat.st_size, e.stat.st_atime, int(e.path.stem))
            for e in _select(root, "prefix", lambda n: len(n) == 2, _any, _suffix(".pcm")) if e.path.stem.isdigit()]


def links(root: Path) -> list[Path]:
    """Every symbolic link inside the cache folder: `pc` never follows one, nor removes it."""
    return Boundary(root).links()


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
    found = (_select(root, "modules", _any, _temporary) + _select(root, "schemas", _temporary)
             + _select(root, "prefix", _any, _any, _temporary))  # prefix/history/<schema>/ too
    return [FileInfo(e.path, "", e.stat.st_size, None) for e in sorted(found, key=lambda e: e.path)
            if now - e.stat.st_mtime >= STALE_TMP_SECONDS]


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
def _atime_kept(path: Path, b: Boundary):
    """Reading a file may set its access time (relatime); put it back: it records the last use."""
    st = b.stat(path)
    try:
        yield
    finally:
        with suppress(OSError, CacheWriteError):
            if b.stat(path).st_atime_ns != st.st_atime_ns:
                b.utime(path, (st.st_atime_ns, st.st_mtime_ns))


def _read_header(path: Path, b: Boundary) -> cache_file.CacheFile | None:
    """A cache file's header and segment records (its payload unread); None when unreadable.
    ``b``: the cache folder's boundary."""
    try:
        with _atime_kept(path, b):
            f = cache_file.read(path, opener=b.opener)
    except (OSError, CacheWriteError, cache_file.CacheFileError):
        return None
    f.close()
    return f


def _raw_bytes(path: Path, b: Boundary) -> int | None:
    f = _read_header(path, b)
    return None if f is None else sum(s.raw_size for s in f.segments)


def _entry(name: str, key: str, tokens: int, f: FileInfo | None, raw: int | None) -> ModuleEntry:
    ratio = raw / f.bytes if f and raw and f.bytes else None
    return ModuleEntry(name, key, tokens, f.bytes if f else 0, ratio, f.last_used if f else None, f is not None)


def _state(f: FileInfo, b: Boundary) -> StateEntry:
    cf = _read_header(f.path, b)
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
    b = Boundary(root)
    raw = {key: _raw_bytes(f.path, b) for key, f in files.items()}
    prefix = _by_key(prefix_files(root))
    states = {key: [_state(f, b) for f in group] for key, group in prefix.items()}
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


def verify_cache(root: Path, *, now: float | None = None) -> VerifyReport:
    """Read every module file and prefix state whole, checking every checksum. Leftover
    temporary files and symbolic links inside the cache are listed too; they are not damage
    (links are never followed: a file behind one is neither read nor counted)."""
    files, damaged = module_files(root) + prefix_files(root), []
    b = Boundary(root)
    for f in files:
        try:
            with _atime_kept(f.path, b):
                cf = cache_file.verify(f.path, opener=b.opener)
        except (OSError, CacheWriteError, cache_file.CacheFileError) as e:
            if not isinstance(e, (FileNotFoundError, cache_file.CacheFileMissing)):  # not removed since the scan
                damaged.append(Note(f, str(e), _kind(f)))
            continue
        cf.close()
        if why := cache_file.mismatch(cf, f.key, f.position):
            damaged.append(Note(f, why, _kind(f)))
    return VerifyReport(len(files), damaged, stale_temporary_files(root, time.time() if now is None else now),
                        links(root))


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
    if store.exists(store.module_path(key)):
        return True
    try:
        states = store.boundary.entries(_prefix_dir(store.root, key))
        return any(e.kind == "file" and e.path.suffix == ".pcm" for e in states)
    except (OSError, CacheWriteError):
        return False


def remove_file(store: CacheStore, key: str, timeout: float, f: FileInfo | None = None, *,
                unless_used: bool = False) -> str | None:
    """Under the key's lock (waiting at most ``timeout``) unlink cache file ``f`` (a module file
    or a prefix state), or with ``f`` None nothing; then, when the key has no file left, its
    prefix folder and lock file. ``unless_used``: leave ``f`` if it was used since it was listed.
    Returns why not, or None. Never follows a link, never removes one (store/boundary.py)."""
    lock = store.lock(key)
    try:
        lock.acquire(timeout=timeout)
    except LockTimeout:
        return "locked: being written"
    except CacheLinkError:
        return LINK_LEFT
    try:
        if f is None and _in_use(store, key):
            return "its cache files were written meanwhile"
        if f is not None and unless_used and store.boundary.stat(f.path).st_atime != f.last_used:
            return "used since the scan"
        if f is not None:
            store.boundary.unlink(f.path, missing_ok=False)
        if not _in_use(store, key):
            store.boundary.rmdir(_prefix_dir(store.root, key))  # absent, or holding a temporary file: stays
            lock.remove()  # a process waiting on it opens the lock file anew
        return None
    except FileNotFoundError:
        return "already gone"
    except CacheLinkError:
        return LINK_LEFT
    finally:
        lock.release()


def remove_history(root: Path, folder: Path, timeout: float) -> tuple[list[Note], list[Note]]:
    """Remove a schema's overlap record folder under the record's lock (``overlap_log``):
    (removed, left in place), as notes of kind ``history``. Links in it, or the folder being a
    link, are left alone."""
    b = Boundary(root)
    record = FileInfo(folder / LOG_NAME, "", 0, None)
    try:
        b.entries(folder)
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    except CacheLinkError:
        return [], [Note(record, LINK_LEFT, "history")]
    lock = b.lock(f"{folder / LOG_NAME}.lock")
    try:
        lock.acquire(timeout=timeout)
    except LockTimeout:
        return [], [Note(record, "locked: being written", "history")]
    try:
        entries = [e for e in b.entries(folder) if e.path.name != Path(lock.lock_file).name]
        files = [e for e in entries if e.kind == "file"]
        left = [Note(FileInfo(e.path, "", 0, None), LINK_LEFT, "history") for e in entries if e.kind == "link"]
        for e in files:
            b.unlink(e.path)
        lock.remove()
    finally:
        lock.release()
    b.rmdir(folder)  # stays when not empty: a request was recorded meanwhile, or a link is in it
    info = FileInfo(folder / LOG_NAME, "", sum(e.stat.st_size for e in files), None)
    return [Note(info, "overlap record", "history")], left


def remove_temporary(root: Path, f: FileInfo) -> bool:
    """Remove a temporary file found by :func:`stale_temporary_files` (never through a link)."""
    try:
        return Boundary(root).unlink(f.path)
    except (OSError, CacheWriteError):
        return False


def remove_manifest(root: Path, path: Path) -> None:
    """Remove a schema's manifest and its lock file, under that lock."""
    store = CacheStore(Path(root))
    with manifest.lock(store, path) as lock:
        store.boundary.unlink(path)
        lock.remove()


@_cache_errors
def gc(root: Path, *, max_size: int | None = None, older_than: float | None = None, dry_run: bool = False,
       now: float | None = None, lock_timeout: float = LOCK_TIMEOUT, grace: float = GRACE_SECONDS,
       orphans: bool = False) -> GcReport:
    """Remove the cache files (module files and prefix states) no manifest references (``orphans``:
    left behind when a schema was edited and recompiled; not those written in the last
    ``ORPHAN_GRACE_SECONDS``, which a compile may be about to record), those unused for more than
    ``older_than`` seconds, then the least recently used ones until all take at most ``max_size``
    bytes; also temporary files older than an hour and lock files whose key has no file left.
    Locked files, and files used (read or written) in the last ``grace`` seconds, are left alone:
    an ask may be about to read them (docs/design.md). Evicting some of a prompt's prefix states is
    fine: an ask resumes from an earlier one, and a missing end state is recomputed. Links inside
    the cache are never followed nor removed."""
    if max_size is None and older_than is None and not orphans:
        raise ValueError("gc needs max_size, older_than or orphans")
    now = time.time() if now is None else now
    store = CacheStore(Path(root))
    files = sorted(module_files(root) + prefix_files(root),
                   key=lambda f: (f.last_used, f.key, f.position or 0))  # least recently used first
    used = _referenced(root) if orphans else set()
    unreferenced = {id(f) for f in files if f.key not in used} if orphans else set()
    total_before = total = sum(f.bytes for f in files)
    removed, skipped = [], []  # of Note
    for f in files:
        if id(f) in unreferenced:
            reason = "no schema references it"
            if now - _mtime(store, f.path, now) < ORPHAN_GRACE_SECONDS:
                skipped.append(Note(f, "no schema references it yet: written in the last minute", _kind(f)))
                continue
        elif older_than is not None and now - f.last_used > older_than:
            reason = "unused for longer than the age limit"
        elif max_size is not None and total > max_size:
            reason = "least recently used, over the size limit"
        else:
            continue
        if now - f.last_used < grace:
            why = f"used in the last {grace:g} s"
        else:
            why = None if dry_run else remove_file(store, f.key, lock_timeout, f, unless_used=True)
        if why:
            skipped.append(Note(f, why, _kind(f)))
        else:
            total -= f.bytes
            removed.append(Note(f, reason, _kind(f)))
    for t in stale_temporary_files(root, now):
        if dry_run or remove_temporary(root, t):
            removed.append(Note(t, "temporary file older than an hour", "temporary"))
    for e in _select(root, "modules", _any, _suffix(".pcm.lock")):
        key = e.path.name.removesuffix(".pcm.lock")
        if Path(f"{store.module_path(key)}.lock") == e.path and not _in_use(store, key):
            if dry_run or remove_file(store, key, lock_timeout) is None:
                removed.append(Note(FileInfo(e.path, "", 0, None), "lock file of a missing cache file", "lock"))
    if not dry_run:  # the span index forgets the files gone (text prompts would skip them anyway)
        from .span_index import compact

        compact(store.boundary, lambda key: store.exists(store.module_path(key)))
    return GcReport(removed, skipped, dry_run, total_before, total)


@_cache_errors
def remove_schema(root: Path, schema: str, *, lock_timeout: float = LOCK_TIMEOUT) -> RmReport:
    """Remove a schema's manifest (``schema``: its file's path or its name), every module file and
    prefix state it references that no other manifest references, and its overlap record."""
    entries = manifest.load_all(root)
    target = os.path.abspath(schema)
    hits = [e for e in entries if e[1].get("path") == target] or [e for e in entries if e[1].get("schema") == schema]
    if not hits:
        known = [str(d.get("schema")) for _, d in entries] + [str(d.get("path")) for _, d in entries if d.get("path")]
        raise InputError(f"no compiled schema '{schema}' in the cache {root} (`pc ls` lists them)"
                         f"{did_you_mean(schema, known)}")
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
            why = remove_file(store, key, lock_timeout, files[key])
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
            why = remove_file(store, key, lock_timeout, f)
            note = Note(f, why or f"prefix state at token {f.position} of '{report.schema}'", "prefix")
            (report.skipped if why else report.removed).append(note)
    record = Path(root) / "prefix" / "history" / mpath.stem  # overlap_log.history_dir
    gone, left = remove_history(root, record, lock_timeout)
    report.removed += gone
    report.skipped += left
    remove_manifest(root, mpath)
    return report


def _referenced(root: Path) -> set[str]:
    """The keys of every module file and prefix-state folder some manifest references."""
    entries = manifest.load_all(root)
    return ({key for _, d in entries for _, key, _ in _refs(d["variants"].values())}
            | {key for _, d in entries for key in _prefix_keys(d["variants"].values())})


def _mtime(store: CacheStore, path: Path, default: float) -> float:
    """A cache file's modification time, its link never followed (``default`` when gone)."""
    st = store.boundary.file_stat(path)
    return default if st is None else st.st_mtime


def names_by_key(root: Path) -> dict[str, tuple[str, ...]]:
    """``schema/module`` (``schema/prefix`` for prefix states) of every cache file key the
    manifests reference, for messages that name a file by what it holds."""
    out: dict[str, list[str]] = {}
    for mpath, data in manifest.load_all(root):
        schema = str(data.get("schema", mpath.stem))
        for name, key, _ in _refs(data["variants"].values()):
            out.setdefault(key, []).append(f"{schema}/{name}")
        for key in _prefix_keys(data["variants"].values()):
            out.setdefault(key, []).append(f"{schema}/prefix")
    return {key: tuple(dict.fromkeys(names)) for key, names in out.items()}

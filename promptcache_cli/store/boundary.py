"""The cache folder's boundary: every write, delete, lock and append `pc` makes in its cache goes
through a :class:`Boundary`, which never leaves the folder.

A cache folder may be shared (a team, a fleet, a cron host with several users), so anyone who can
write into it can plant a symbolic link there: ``modules/zz -> /home/someone``. Following it, a
`pc gc` would delete files outside the cache, a `pc ask` would write into someone's folder. Here:

- a path is named relative to the cache folder (``root``); one that leaves it lexically
  (``..``, another folder) raises :class:`~promptcache_cli.errors.OutsideCache`;
- the path is then walked one folder at a time from the cache folder itself, each opened with
  ``O_NOFOLLOW | O_DIRECTORY`` relative to the one before (``dir_fd``), and the operation itself is
  made relative to the last folder's descriptor with ``O_NOFOLLOW`` on the file. No check is
  separate from its use: a folder swapped for a link between two steps is caught by the step that
  opens it (time-of-check to time-of-use races have no gap to use);
- a symbolic link met on the way, or as the file itself, raises
  :class:`~promptcache_cli.errors.CacheLinkError` (a CacheWriteError: exit 5, or an ask answering
  from states computed in memory). Links inside the cache are never followed and never deleted:
  `pc verify` lists them (:meth:`Boundary.walk` reports them), the user decides.

The cache folder itself may be a link (``~/.cache/promptcache_cli -> /data/pc``): the user chose
it; its resolved path is the boundary.

Reading goes through here too (:meth:`Boundary.opener`), so a link reads as a missing file.
Writes are atomic (:meth:`Boundary.atomic`: a temporary file in the target's folder, synced,
renamed over the target, the folder synced). Locks (:meth:`Boundary.lock`) are ``flock`` locks on
lock files opened without following links; they interoperate with any other ``flock`` user of the
same file (the ``filelock`` package on Linux).

For a remote tier: download into :meth:`Boundary.atomic` (it yields a binary file; the file
appears under its name only when the block ends without an error), under the key's lock
(:meth:`Boundary.lock`), and name the target with a path under the cache folder built from the
key; a key that would leave the folder is refused before anything is created.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from ..errors import CacheLinkError, CacheWriteError, OutsideCache

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)  # what opening a link with O_NOFOLLOW gives
TEMPORARY_PREFIX = ".tmp-"
LOCK_POLL = 0.02  # seconds between attempts while waiting for a lock with a timeout


class LockTimeout(Exception):
    """A lock was not acquired within its timeout."""


@dataclass(frozen=True)
class Entry:
    """One name in a cache folder, as :meth:`Boundary.entries` sees it (links not followed)."""

    path: Path
    kind: str  # "file" | "dir" | "link" | "other" (a FIFO, a socket, a device)
    stat: os.stat_result


class Boundary:
    """Operations confined to the folder ``root`` (see the module's docstring). Paths are named
    as the rest of `pc` names them, built from ``root`` (``root / "modules" / ...``: relative to
    the working folder when ``root`` is); a tuple of names is relative to ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._abs = os.path.abspath(self.root)

    # -- naming ----------------------------------------------------------------------------------
    def parts(self, path: Path | str) -> tuple[str, ...]:
        """``path``'s components below the cache folder; raises OutsideCache for a path that is
        not below it (``..`` anywhere counts as leaving)."""
        p = os.fspath(path)
        raw = os.path.relpath(os.path.abspath(p), self._abs)
        parts = tuple(x for x in raw.split(os.sep) if x not in ("", "."))
        if not parts or ".." in parts:
            raise OutsideCache(f"{p} is not inside the cache folder {self.root}; pc writes only there")
        return parts

    def path(self, parts: tuple[str, ...]) -> Path:
        return self.root.joinpath(*parts)

    # -- folders ---------------------------------------------------------------------------------
    def _root_fd(self, create: bool) -> int:
        try:
            return os.open(self._abs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
        try:
            os.makedirs(self._abs, exist_ok=True)
        except FileExistsError:  # a file where the folder should be
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self._abs) from None
        return os.open(self._abs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _step(self, dfd: int, name: str, where: tuple[str, ...], create: bool) -> int:
        """Open folder ``name`` in ``dfd`` without following a link (made first with ``create``)."""
        for _ in range(2):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=dfd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile by another process
                    os.mkdir(name, 0o777, dir_fd=dfd)
            except OSError as e:
                if e.errno in _LINK_ERRNOS:
                    self._not_a_folder(dfd, name, where)
                raise
        return os.open(name, _DIR_FLAGS, dir_fd=dfd)

    def _not_a_folder(self, dfd: int, name: str, where: tuple[str, ...]) -> None:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise _link(self.path(where))
        raise CacheWriteError(f"cannot use the cache: {self.path(where)} is not a folder")

    def _folder(self, parts: tuple[str, ...], *, create: bool = False) -> int:
        """A descriptor of the folder ``parts`` (below the cache folder), walked without following
        links; raises FileNotFoundError when missing (and not ``create``), CacheLinkError on a link."""
        fd = self._root_fd(create)
        try:
            for i, name in enumerate(parts):
                nfd = self._step(fd, name, parts[: i + 1], create)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def folder(self, path: Path | str | tuple[str, ...] = (), *, create: bool = False) -> Iterator[int]:
        """A descriptor of a folder inside the cache (the cache folder itself for ``()``)."""
        parts = path if isinstance(path, tuple) else self.parts(path)
        fd = self._folder(parts, create=create)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _parent(self, path: Path | str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        parts = self.parts(path)
        with self.folder(parts[:-1], create=create) as dfd:
            yield dfd, parts[-1]

    def mkdirs(self, folder: Path | str) -> None:
        """Make ``folder`` and its parents inside the cache (links refused)."""
        with self.folder(folder, create=True):
            pass

    # -- files -----------------------------------------------------------------------------------
    def open(self, path: Path | str, flags: int = os.O_RDONLY, mode: int = 0o644, *, create_dirs: bool = False) -> int:
        """``os.open`` of a file inside the cache, never through a link (a link raises
        CacheLinkError, a missing folder FileNotFoundError)."""
        with self._parent(path, create=create_dirs) as (dfd, name):
            try:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
            except OSError as e:
                if e.errno in _LINK_ERRNOS and _is_link(dfd, name):
                    raise _link(Path(path)) from None
                raise

    def opener(self, path: str, flags: int) -> int:
        """For ``open(path, mode, opener=boundary.opener)`` (a FIFO planted under a cache file's
        name opens without waiting for a writer, and reads as an empty, damaged file)."""
        return self.open(path, flags | os.O_NONBLOCK)

    def stat(self, path: Path | str) -> os.stat_result:
        """The entry itself (a link is not followed); FileNotFoundError when missing."""
        with self._parent(path) as (dfd, name):
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)

    def file_stat(self, path: Path | str) -> os.stat_result | None:
        """A regular file's stat, or None when it is missing, a link or anything else."""
        try:
            st = self.stat(path)
        except (OSError, CacheWriteError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def utime(self, path: Path | str, ns: tuple[int, int] | None = None) -> None:
        """Set a file's access and modification times (now when ``ns`` is None); a link's own."""
        with self._parent(path) as (dfd, name):
            os.utime(name, ns=ns, dir_fd=dfd, follow_symlinks=False)

    def unlink(self, path: Path | str, *, missing_ok: bool = True) -> bool:
        """Remove a regular file. A link (or anything but a regular file) is left alone: raises
        CacheLinkError (CacheWriteError). Returns whether a file was removed."""
        try:
            with self._parent(path) as (dfd, name):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise _link(Path(path))
                if not stat.S_ISREG(st.st_mode):
                    raise CacheWriteError(f"cannot remove {path}: not a regular file")
                os.unlink(name, dir_fd=dfd)
                return True
        except FileNotFoundError:
            if missing_ok:
                return False
            raise

    def rmdir(self, path: Path | str) -> bool:
        """Remove an empty folder (a link is never removed: rmdir does not follow one, and fails).
        Returns whether it was removed."""
        try:
            with self._parent(path) as (dfd, name):
                os.rmdir(name, dir_fd=dfd)
                return True
        except (OSError, CacheWriteError):
            return False

    @contextlib.contextmanager
    def atomic(self, path: Path | str, *, check: Callable[[Path], None] | None = None) -> Iterator[BinaryIO]:
        """Write a file atomically: yields a binary file under a temporary name in the target's
        folder (made when missing); when the block ends without an error the file is synced and
        renamed over ``path`` (a link there is refused, not replaced), else removed.
        ``check(temporary path)``, when given, runs on the whole synced file before the rename
        (a download checked before it is put in place: read it through :meth:`opener`); what it
        raises removes the temporary file and propagates."""
        parts = self.parts(path)
        with self.folder(parts[:-1], create=True) as dfd:
            name = parts[-1]
            tmp = f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                if check is not None:
                    check(self.path(parts[:-1] + (tmp,)))
                if _is_link(dfd, name):
                    raise _link(Path(path))
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:  # also Ctrl-C: never leave a temporary file behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            with contextlib.suppress(OSError):
                os.fsync(dfd)

    def write_atomic(self, path: Path | str, chunks: Iterable, *, check: Callable[[Path], None] | None = None) -> int:
        """:meth:`atomic` with ``chunks`` (bytes-like; a stream: what it raises removes the
        temporary file and propagates); returns the bytes written."""
        n = 0
        with self.atomic(path, check=check) as f:
            for c in chunks:
                f.write(c)
                n += len(c)
        return n

    @contextlib.contextmanager
    def scratch(self, near: Path | str) -> Iterator[tuple[BinaryIO, Path]]:
        """A temporary file (and its path) in ``near``'s folder (made when missing), never put in
        place and removed on leaving: a file only looked at (`pc verify --remote`). A crashed
        process's leftover is found by `pc gc` (:data:`TEMPORARY_PREFIX`)."""
        parts = self.parts(near)
        with self.folder(parts[:-1], create=True) as dfd:
            tmp = f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            try:
                with os.fdopen(fd, "w+b") as f:
                    yield f, self.path(parts[:-1] + (tmp,))
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)

    def lock(self, path: Path | str) -> FileLock:
        """An inter-process lock on the lock file ``path`` (not acquired yet)."""
        return FileLock(self, path)

    # -- walking ---------------------------------------------------------------------------------
    def entries(self, folder: Path | str | tuple[str, ...] = ()) -> list[Entry]:
        """The names in a folder inside the cache, sorted, links reported as links (never
        followed). A missing folder or one that is a link has no entries here: it raises
        FileNotFoundError or CacheLinkError."""
        parts = folder if isinstance(folder, tuple) else self.parts(folder)
        with self.folder(parts) as dfd:
            out = []
            with os.scandir(dfd) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed meanwhile
                        continue
                    kind = ("link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                            else "file" if stat.S_ISREG(st.st_mode) else "other")
                    out.append(Entry(self.path(parts + (e.name,)), kind, st))
        return sorted(out, key=lambda x: x.path.name)

    def walk(self, folder: tuple[str, ...] = (), *, depth: int = 64) -> Iterator[Entry]:
        """Every entry below ``folder``, folders before their contents, never following a link
        (``os.walk(followlinks=False)``, by descriptors). Folders that vanish or cannot be read
        are skipped."""
        try:
            found = self.entries(folder)
        except (OSError, CacheWriteError):
            return
        for e in found:
            yield e
            if e.kind == "dir" and depth > 0:
                yield from self.walk(folder + (e.path.name,), depth=depth - 1)

    def links(self) -> list[Path]:
        """Every symbolic link inside the cache folder."""
        return [e.path for e in self.walk() if e.kind == "link"]


class FileLock:
    """``flock`` on a lock file inside the cache, opened without following a link (a link there
    raises CacheLinkError) and never truncated. A lock file removed while waiting for it (`pc gc`
    removes the lock files of keys with no file left, under the lock) is opened again."""

    def __init__(self, boundary: Boundary, path: Path | str) -> None:
        self.boundary = boundary
        self.lock_file = str(path)
        self._fd: int | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> FileLock:
        """Wait for the lock (at most ``timeout`` seconds: then LockTimeout)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.lock_file} is locked already by this object")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            fd = self.boundary.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644, create_dirs=True)
            try:
                if not _flock(fd, deadline):
                    raise LockTimeout(f"{self.lock_file}: locked by another process")
                if self._same_file(fd):
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # removed or replaced while we waited: lock the file that is there now

    def _same_file(self, fd: int) -> bool:
        try:
            now = self.boundary.stat(self.lock_file)
        except (FileNotFoundError, NotADirectoryError):
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def remove(self) -> None:
        """Remove the lock file while holding the lock (a process waiting on it opens it anew)."""
        if self._fd is None:
            raise RuntimeError("remove() needs the lock held")
        with contextlib.suppress(FileNotFoundError):
            if self._same_file(self._fd):
                self.boundary.unlink(self.lock_file)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock(fd: int, deadline: float | None) -> bool:
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL)


def _is_link(dfd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _link(path: Path) -> CacheLinkError:
    return CacheLinkError(f"{path} is a symbolic link inside the cache: pc never follows or removes links there "
                          "(`pc verify` lists them; remove the link, or point --cache-dir at the folder itself)")

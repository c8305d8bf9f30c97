"""Where cache files live, how they are written and locked.

Files are content-addressed (keys.py), so a changed schema, model, llama.cpp build or context
setting simply misses and recomputes, and unchanged modules are reused. Writes go to a temporary
file in the same folder, are synced and renamed into place, so a reader sees a whole file or none.
Every operation goes through the cache folder's boundary (boundary.py): nothing outside the
folder is ever written, locked or deleted, and links inside it are never followed.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

from ..errors import CacheWriteError
from .boundary import Boundary, FileLock

if TYPE_CHECKING:
    from .cache_file import CacheFile

ENV_CACHE_DIR = "PC_CACHE_DIR"


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("promptcache_cli", appauthor=False))


class CacheStore:
    """A cache folder: where module files live, and every write, lock, delete and read of them,
    through the folder's :class:`~.boundary.Boundary` (never outside it, never through a link)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.boundary = Boundary(self.root)

    def module_path(self, key: str) -> Path:
        return self.root / "modules" / key[:2] / f"{key}.pcm"

    def lock(self, key: str) -> FileLock:
        """An inter-process lock for computing one module (two compiles never duplicate work)."""
        return self.boundary.lock(f"{self.module_path(key)}.lock")

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold :meth:`lock`; a lock file that cannot be created (read-only cache, a link) is a
        CacheWriteError."""
        lock = self.lock(key)
        try:
            lock.acquire()
        except OSError as e:
            raise CacheWriteError(f"cannot write to the cache at {Path(lock.lock_file).parent}: {e.strerror}") from None
        try:
            yield
        finally:
            lock.release()

    def write_atomic(self, path: Path, chunks: Iterable, *, check: Callable[[Path], None] | None = None) -> int:
        """Write ``chunks`` to ``path`` via a synced temporary file and a rename. ``chunks`` may
        be a stream (a download): an error it raises removes the temporary file and propagates.
        ``check(temporary path)``, when given, runs on the whole synced file before the rename;
        whatever it raises removes the temporary file and propagates (nothing is put in place):
        read it with :meth:`read` (through the boundary)."""
        try:
            return self.boundary.write_atomic(path, chunks, check=check)
        except OSError as e:
            where = path.parent if isinstance(e, (PermissionError, FileNotFoundError, NotADirectoryError)) else path
            what = "to the cache at" if where == path.parent else "cache file"
            raise CacheWriteError(f"cannot write {what} {where}: {e.strerror}") from None

    def read(self, path: Path) -> CacheFile:
        """A cache file opened (header checked, payload mapped) without following a link;
        CacheFileMissing when it is not there (or is a link)."""
        from . import cache_file

        return cache_file.read(path, opener=self.boundary.opener)

    def open(self, path: Path) -> BinaryIO:
        """A cache file opened for reading without following a link (an upload's source);
        OSError when it is missing, CacheLinkError (a CacheWriteError) when it is a link."""
        return os.fdopen(self.boundary.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")

    def size(self, path: Path) -> int | None:
        """A cache file's size, or None when it is missing (or not a regular file)."""
        st = self.boundary.file_stat(path)
        return None if st is None else st.st_size

    def exists(self, path: Path) -> bool:
        return self.size(path) is not None

    def touch(self, path: Path) -> None:
        """Mark a cache file as used now (its access time; `pc gc` evicts least recently used)."""
        try:
            st = self.boundary.stat(path)
            self.boundary.utime(path, (time.time_ns(), st.st_mtime_ns))
        except (OSError, CacheWriteError):  # gone, or a read-only cache: it still answers
            pass

    def unlink(self, path: Path) -> bool:
        """Remove a cache file (never a link: CacheLinkError); False when it was not there."""
        try:
            return self.boundary.unlink(path)
        except OSError as e:
            raise CacheWriteError(f"cannot remove {path}: {e.strerror}") from None

    @contextlib.contextmanager
    def scratch(self, near: Path, chunks: Iterable) -> Iterator[Path]:
        """``chunks`` written to a temporary file in ``near``'s folder (where a crashed writer's
        leftovers are found by `pc gc`), removed on leaving: a file only looked at (`pc verify
        --remote`), never put in place. Made through the boundary (no link followed)."""
        with contextlib.ExitStack() as stack:
            try:
                f, path = stack.enter_context(self.boundary.scratch(near))
            except OSError as e:
                raise CacheWriteError(f"cannot write to the cache at {near.parent}: {e.strerror}") from None
            try:
                for c in chunks:
                    f.write(c)
                f.flush()
            except OSError as e:
                raise CacheWriteError(f"cannot write to the cache at {near.parent}: {e.strerror}") from None
            yield path

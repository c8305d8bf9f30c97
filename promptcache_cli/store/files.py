"""Where cache files live, how they are written and locked.

Files are content-addressed (keys.py), so a changed schema, model, llama.cpp build or context
setting simply misses and recomputes, and unchanged modules are reused. Writes go to a temporary
file in the same folder, are synced and renamed into place, so a reader sees a whole file or none.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import CacheWriteError

ENV_CACHE_DIR = "PC_CACHE_DIR"


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("promptcache_cli", appauthor=False))


def touch(path: Path) -> None:
    """Mark a module file as used now (its access time; `pc gc` evicts least recently used)."""
    try:
        os.utime(path, (time.time(), path.stat().st_mtime))
    except OSError:  # a read-only cache still answers
        pass


class CacheStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def module_path(self, key: str) -> Path:
        return self.root / "modules" / key[:2] / f"{key}.pcm"

    def lock(self, key: str):
        """An inter-process lock for computing one module (two compiles never duplicate work)."""
        from filelock import FileLock

        path = self.module_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheWriteError(f"cannot write to the cache at {path.parent}: {e.strerror}") from None
        return FileLock(str(path) + ".lock")

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold :meth:`lock`; a lock file that cannot be created (read-only cache) is a
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
        whatever it raises removes the temporary file and propagates (nothing is put in place)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        except OSError as e:
            raise CacheWriteError(f"cannot write to the cache at {path.parent}: {e.strerror}") from None
        n = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for c in chunks:
                    f.write(c)
                    n += len(c)
                f.flush()
                os.fsync(f.fileno())
            if check is not None:
                check(Path(tmp))
            os.replace(tmp, path)
        except BaseException as e:  # also Ctrl-C: never leave a temporary file behind
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise CacheWriteError(f"cannot write cache file {path}: {e.strerror}") from None
            raise
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
        return n

    @contextlib.contextmanager
    def scratch(self, near: Path, chunks: Iterable) -> Iterator[Path]:
        """``chunks`` written to a temporary file in ``near``'s folder (where a crashed writer's
        leftovers are found by `pc gc`), removed on leaving: a file only looked at (`pc verify
        --remote`), never put in place."""
        try:
            near.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=near.parent)
        except OSError as e:
            raise CacheWriteError(f"cannot write to the cache at {near.parent}: {e.strerror}") from None
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    for c in chunks:
                        f.write(c)
            except OSError as e:
                raise CacheWriteError(f"cannot write to the cache at {near.parent}: {e.strerror}") from None
            yield Path(tmp)
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

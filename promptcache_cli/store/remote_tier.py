"""The remote store as a session sees it (store/remote.py is the client): cache files fetched
and checked, or published; a failure turned into one warning per outage, after which the store is
left alone for :data:`OFFLINE_SECONDS` (so an unreachable store costs one bounded wait); and leases,
so that of several machines about to compute one file, one does and the others wait for its upload."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BlobError, CacheFileError, CacheWriteError, RemoteError
from .files import CacheStore
from .remote import Missing, ObjectInfo, Remote, lease_rel

OFFLINE_SECONDS = 60.0  # after a failure, sessions leave the store alone this long
LEASE_SECONDS = 60.0  # a lease on computing a key lasts this long unless its holder renews it
LEASE_WAIT = 900.0  # seconds at most a session waits for another machine's lease (renewed all along)
POLL_SECONDS = 0.5  # how often a waiting session looks for the object


@dataclass(frozen=True)
class CacheObject:
    """One cache file as both tiers know it."""

    name: str  # module name, or prefix@<position>
    key: str
    rel: str  # relative path, the same below the cache root and the remote prefix
    path: Path  # in the local cache
    tokens: int
    check: Callable[[Path], None]  # raises CacheFileError or BlobError unless the file is this object


@dataclass
class Tier:
    """The remote store as a session sees it: a failure is one warning, then the store is left
    alone for OFFLINE_SECONDS (each request already retried with backoff within its bound).
    Uploads refused for want of permission stop for the session (a read-only fleet member).
    Counts the bytes it moves."""

    remote: Remote
    warnings: list[str] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0
    damaged: set[str] = field(default_factory=set)  # relative paths whose copy in the store is damaged
    _offline_until: float = 0.0
    _read_only: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # downloads run on threads
    _leases: set[str] = field(default_factory=set)  # lease objects this session holds (renewed on a thread)
    _renewer: threading.Thread | None = None

    def __str__(self) -> str:
        return str(self.remote)

    @property
    def online(self) -> bool:
        return time.monotonic() >= self._offline_until

    def take_warnings(self) -> list[str]:
        out, self.warnings = self.warnings, []
        return out

    def _failed(self, e: RemoteError) -> None:
        with self._lock:
            if self.online:
                self.warnings.append(f"{e}; working from the local cache")
            self._offline_until = time.monotonic() + OFFLINE_SECONDS

    def has(self, rel: str) -> bool | None:
        """Whether the store holds ``rel``; None when it cannot be asked."""
        if not self.online:
            return None
        try:
            return self.remote.head(rel) is not None
        except RemoteError as e:
            self._failed(e)
            return None

    def list(self, rel_prefix: str) -> list[ObjectInfo] | None:
        if not self.online:
            return None
        try:
            return self.remote.list(rel_prefix)
        except RemoteError as e:
            self._failed(e)
            return None

    def fetch(self, obj: CacheObject, store: CacheStore, *, progress: Callable[[int], None] | None = None) -> str:
        """Download ``obj`` into the local cache, checked: ``downloaded``, ``missing`` (not in the
        store), ``damaged`` (the store's copy is damaged or foreign: a warning says why, nothing
        is put in place, and the next upload of it replaces it), ``unwritable`` (the local cache)
        or ``offline``."""
        if not self.online:
            return "offline"
        try:
            n = self.remote.download(obj.rel, store, obj.path, obj.check, progress=progress)
        except Missing:
            return "missing"
        except RemoteError as e:
            self._failed(e)
            return "offline"
        except (CacheFileError, BlobError) as e:
            with self._lock:
                self.warnings.append(f"remote {self.remote} holds a damaged copy of {obj.name} ({e}); recomputing it")
                self.damaged.add(obj.rel)
            return "damaged"
        except CacheWriteError:  # the local cache cannot be written: the session computes without it
            return "unwritable"
        with self._lock:
            self.bytes_down += n
        return "downloaded"

    def publish(self, rel: str, path: Path, store: CacheStore, *, replace: bool = False) -> str:
        """Upload a local cache file (opened through ``store``'s boundary: a link is never
        followed): ``uploaded``, ``present`` (the store had it), ``offline`` or ``refused`` (not
        allowed to write: warned once). A copy found damaged in the store (:meth:`fetch`), or
        ``replace``, is overwritten."""
        if not self.online:
            return "offline"
        if self._read_only:
            return "refused"
        try:
            with store.open(path) as f:
                size = os.fstat(f.fileno()).st_size
                done = self.remote.upload(rel, f, replace=replace or rel in self.damaged)
        except (OSError, CacheWriteError):  # gone meanwhile (`pc gc`), or a link: nothing to upload
            return "offline"
        except RemoteError as e:
            if "access denied" in str(e) or "not authenticated" in str(e):
                self._read_only = True
                self.warnings.append(f"{e}; not uploading (this machine only reads the store)")
                return "refused"
            self._failed(e)
            return "offline"
        self.damaged.discard(rel)
        if done:
            self.bytes_up += size
        return "uploaded" if done else "present"

    # -- leases: one machine computes a key while the others wait for its upload ---------------
    def claim(self, rel: str, rel_end: str | None = None) -> bool:
        """Whether this session should compute the cache file at ``rel`` (a file, or a prompt's
        folder with ``rel_end`` its end state): True when it now holds the lease on it (a
        conditional upload of ``leases/<rel>.json``; renewed every LEASE_SECONDS / 3 until
        :meth:`release`), or when the store cannot take one; False when another machine holds a
        live lease, or uploaded the file meanwhile (then :meth:`wait_for` it)."""
        lease = lease_rel(rel)
        if not self.online or self._read_only or lease in self._leases:
            return True
        try:
            if not self.remote.upload(lease, self._lease_body()):
                if self._lease_alive(lease):
                    return False
                self.remote.upload(lease, self._lease_body(), replace=True)  # its holder is gone: taken over
            self._hold(lease)
            target = rel_end or rel
            if target not in self.damaged and self.remote.head(target) is not None:  # done since we looked
                self.release(rel)
                return False
            return True
        except RemoteError as e:
            if "access denied" in str(e):
                self._read_only = True
            else:
                self._failed(e)
            return True

    def release(self, rel: str) -> None:
        lease = lease_rel(rel)
        with self._lock:
            held = lease in self._leases
            self._leases.discard(lease)
        if held and self.online:
            try:
                self.remote.delete(lease)
            except RemoteError as e:
                self._failed(e)

    def wait_for(self, rel: str) -> bool:
        """Wait while another machine's lease on ``rel`` lives (LEASE_WAIT at most): True once the
        store holds the object, False when the lease ended without it (compute it here then)."""
        lease = lease_rel(rel)
        deadline = time.monotonic() + LEASE_WAIT
        while time.monotonic() < deadline and self.online:
            try:
                if self.remote.head(rel) is not None:
                    return True
                if not self._lease_alive(lease):
                    return self.remote.head(rel) is not None
            except RemoteError as e:
                self._failed(e)
                return False
            time.sleep(POLL_SECONDS)
        return False

    def _lease_body(self) -> bytes:
        import socket

        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + LEASE_SECONDS}).encode()

    def _lease_alive(self, lease: str) -> bool:
        raw = self.remote.read_small(lease, limit=4096)
        try:
            expires = json.loads(raw)["expires"] if raw else 0
        except (ValueError, KeyError, TypeError):
            return False
        return isinstance(expires, (int, float)) and expires > time.time()

    def _hold(self, lease: str) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew, name="pc-lease", daemon=True)
                self._renewer.start()

    def _renew(self) -> None:
        while True:
            time.sleep(LEASE_SECONDS / 3)
            with self._lock:
                leases = list(self._leases)
            if not leases:
                return
            for lease in leases:
                try:
                    self.remote.upload(lease, self._lease_body(), replace=True)
                except RemoteError:
                    pass  # the waiters see it expire and compute themselves

    def publish_manifest(self, rel: str, data: dict) -> None:
        """Upload a schema's remote manifest (an index for `pc ls --remote`; failures are quiet
        after the one warning)."""
        if not self.online or self._read_only:
            return
        try:
            self.remote.upload(rel, json.dumps(data, indent=1, sort_keys=True).encode())
        except RemoteError as e:
            self._failed(e)

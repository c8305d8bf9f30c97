"""Running the server: the listening socket (bound before the model loads, so a busy port or a
refused address fails at once), the worker threads, uvicorn on the socket, and the way out:
SIGTERM or Ctrl-C stops accepting connections, lets every request in flight (the queued ones too)
finish, stops the workers and returns (`pc serve` then exits 0).
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ListenError
from .app import State, build
from .jobs import JobQueue
from .metrics import Metrics
from .prompt_cache import PromptCache
from .prompts import Served
from .worker import Worker

if TYPE_CHECKING:
    from ..api import Schema, Session


@dataclass(frozen=True)
class Limits:
    max_body: int = 4 << 20  # bytes of a request body
    max_tokens: int = 2048  # the most tokens one answer may ask for (and the default budget)
    queue: int = 64  # requests waiting for a worker before the server answers 503
    cache_ram: int = 2 << 30  # bytes of plain prompts' states kept in RAM
    learn: bool = False  # plain chats: cached text found anywhere, new text learned (api.TextRequest)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def listen(host: str, port: int, *, api_key: str | None, no_auth: bool = False) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: any free one). An address other than
    loopback needs an API key, or ``no_auth`` (`--no-auth`)."""
    if not api_key and not no_auth and not is_loopback(host):
        raise ListenError(f"refusing to serve {host} without an API key: anyone who can reach it could use it; "
                          "set --api-key (or PC_API_KEY), or pass --no-auth to allow it")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def run(sock: socket.socket, sessions: list[Session], *, schemas: dict[str, Schema], bare: str, api_key: str | None,
        limits: Limits = Limits()) -> None:
    """Serve on ``sock`` until SIGTERM or Ctrl-C, one worker per session, then drain and return."""
    import uvicorn

    metrics = Metrics()
    cache = PromptCache(limits.cache_ram, prefixes_redundant=sessions[0].states_can_cut)
    queue = JobQueue(limits.queue)
    workers = [Worker(i, s, queue, cache, metrics, max_tokens_limit=limits.max_tokens, learn=limits.learn)
               for i, s in enumerate(sessions)]
    state = State(Served(bare, schemas), queue, cache, metrics, workers, api_key, limits.max_body, limits.max_tokens,
                  sessions[0].mode, time.time())
    config = uvicorn.Config(build(state), log_level="warning", access_log=False, lifespan="off",
                            server_header=False, timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    for w in workers:
        w.start()
    # uvicorn catches SIGTERM and SIGINT while it runs, drains, then raises them again for the
    # handlers it found: ours do nothing more, so `pc serve` returns and exits 0
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        queue.close()
        for w in workers:
            w.join()
        sock.close()


def _stopped(signum, frame) -> None:
    """Raised again by uvicorn once it has drained: nothing left to do."""

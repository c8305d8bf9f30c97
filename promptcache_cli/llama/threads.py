"""How many threads llama.cpp computes on, and how they wait for each other.

llama-cpp-python's llama.cpp is built with OpenMP (libgomp): every operation of a graph ends at an
OpenMP barrier, where by default a thread that arrives first spins for about 300,000 rounds
(a few milliseconds) before it sleeps. On an idle machine that saves a wake-up per barrier; on a
busy one a descheduled thread makes every other thread spin through its time slice, and a cached
answer's first token came 17 to 26 times later (docs/design.md, "Threads"). libgomp reads its
settings once, when it loads with llama.cpp's libraries, so :func:`set_wait_policy` must run
before that: `pc` calls it first thing (__main__.py) and bindings.py again before it loads them.
A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is left as it is.

The number of threads: ``--threads`` (``threads=`` in the Python API), else $PC_THREADS, else
:func:`default_threads`.
"""

from __future__ import annotations

import os

from ..errors import UsageError

ENV_THREADS = "PC_THREADS"
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # either one set: the user's choice stands
SPINCOUNT = "0"  # threads sleep at once at a barrier (measured: experiments/thread_policy.py)
MAX_THREADS = 1024


def set_wait_policy() -> None:
    """Make OpenMP's threads sleep instead of spin when they wait, unless the user chose how they
    wait. Has an effect only before libgomp is loaded (it reads its environment then)."""
    if not any(name in os.environ for name in WAIT_VARIABLES):
        os.environ["GOMP_SPINCOUNT"] = SPINCOUNT


def env_threads() -> int | None:
    """Threads from $PC_THREADS (1 to 1024), None when unset; anything else is a UsageError."""
    raw = os.environ.get(ENV_THREADS, "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= MAX_THREADS:
        raise UsageError(f"{ENV_THREADS} must be a number of threads from 1 to {MAX_THREADS}, not {raw!r}")
    return int(raw)


def default_threads() -> int:
    """One thread per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def threads(option: int = 0) -> int:
    """The threads to compute on: ``option`` when positive, else $PC_THREADS, else the default."""
    if option < 0 or option > MAX_THREADS:
        raise ValueError(f"threads must be 0 (the default) to {MAX_THREADS}, not {option}")
    return option or env_threads() or default_threads()

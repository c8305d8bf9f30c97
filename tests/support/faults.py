"""Fault injection for `pc` processes, shared by the fault tests and scripts/fault_table.py.

- a read-only cache: the folder loses its write bits; when running as root (who writes anyway)
  the child also drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, as any other user would lack them;
- a full disk: RLIMIT_FSIZE in the child with SIGXFSZ ignored, so a write past the limit fails
  with EFBIG mid-file, as ENOSPC would;
- peak memory: ``start(..., measured=True)`` runs pc under the benchmarks' tiny launcher, which
  forks it from a bare interpreter and reports its own ru_maxrss (Linux carries a process's peak
  across exec, so a child spawned straight from a large pytest would report pytest's size);
- damage to cache files: seeded random cuts, bit flips, overwrites, appends and swaps.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from promptcache_cli.store import cache_file
from promptcache_cli.benchmarks.processes import LAUNCHER

from ..conftest import license_excerpt

PC = [sys.executable, "-m", "promptcache_cli"]
TIMEOUT = 600  # seconds per process; the machine is shared
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


@dataclass
class Proc:
    code: int
    out: str
    err: str
    seconds: float
    max_rss: int  # bytes: the child's own peak resident set when started measured, else an upper bound

    @property
    def err_lines(self) -> list[str]:
        return self.err.rstrip("\n").splitlines() if self.err.strip() else []


def drop_root_write_bypass() -> None:
    """In a child before exec: without CAP_DAC_OVERRIDE a root process obeys write bits."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: writes past ``limit`` bytes fail with EFBIG instead of killing the child."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def chain(*fns: Callable[[], None] | None) -> Callable[[], None] | None:
    fns = tuple(f for f in fns if f is not None)
    if not fns:
        return None

    def run() -> None:
        for f in fns:
            f()
    return run


def env_for(cache: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PC_DEBUG", "PC_THREADS")}
    env.update(extra)
    if cache is not None:
        env["PC_CACHE_DIR"] = str(cache)
    return env


def start(args: list, *, cache: Path | None, preexec: Callable[[], None] | None = None, stdin: bytes | None = None,
          measured: bool = False, **env: str) -> subprocess.Popen:
    """Start pc; ``stdin`` bytes are fed by :func:`finish` (no bytes: stdin is /dev/null).

    ``measured``: pc runs as the child of a bare launcher interpreter, so its ru_maxrss is its own
    (signals sent to the returned process reach the launcher, not pc: not for the kill tests).
    """
    argv = PC + [str(a) for a in args]
    report = None
    if measured:
        fd, report = tempfile.mkstemp(prefix="pc-rusage-", suffix=".json")
        os.close(fd)
        argv = [sys.executable, "-S", "-c", LAUNCHER, report, json.dumps(argv), str(TIMEOUT)]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(cache, **env), preexec_fn=preexec)
    p.stdin_data = stdin
    p.rusage_report = report
    return p


def _feed(p: subprocess.Popen) -> None:
    try:
        p.stdin.write(p.stdin_data)
        p.stdin.close()
    except BrokenPipeError:  # pc stopped reading (it refused the input): fine
        pass


def finish(p: subprocess.Popen, t0: float, timeout: float = TIMEOUT,
           before_reap: Callable[[], None] | None = None) -> Proc:
    """Feed stdin, read both pipes, then reap the child with os.wait4 for its peak memory."""
    data: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k=k, s=s: data.__setitem__(k, s.read()))
               for k, s in (("out", p.stdout), ("err", p.stderr))]
    if getattr(p, "stdin_data", None) is not None:
        readers.append(threading.Thread(target=_feed, args=(p,)))
    for r in readers:
        r.start()
    for r in readers:
        r.join(timeout)
    if any(r.is_alive() for r in readers):
        p.kill()
        raise TimeoutError(f"pc did not finish in {timeout} s")
    if before_reap is not None:
        before_reap()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode, max_rss = os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024
    report = getattr(p, "rusage_report", None)
    if report is not None:
        with open(report, encoding="utf-8") as f:
            got = json.load(f)
        os.unlink(report)
        p.returncode, max_rss = got["code"], got["maxrss_kib"] * 1024
    p.stdout.close()
    p.stderr.close()
    return Proc(p.returncode, data["out"].decode("utf-8", "replace"), data["err"].decode("utf-8", "replace"),
                time.perf_counter() - t0, max_rss)


def run(args: list, *, cache: Path | None, preexec: Callable[[], None] | None = None, stdin: bytes | None = None,
        **env: str) -> Proc:
    t0 = time.perf_counter()
    return finish(start(args, cache=cache, preexec=preexec, stdin=stdin, **env), t0)


def signal_after(args: list, *, cache: Path | None, delay: float, sig: int, **env: str) -> Proc:
    """Start pc, send ``sig`` after ``delay`` seconds (if it still runs), collect what it did."""
    t0 = time.perf_counter()
    p = start(args, cache=cache, **env)
    timer = threading.Timer(delay, os.kill, (p.pid, sig))  # the pid stays ours until reaped

    def stop_timer() -> None:
        timer.cancel()
        timer.join()

    timer.start()
    try:
        return finish(p, t0, before_reap=stop_timer)
    finally:
        stop_timer()


def wait_for_llama(pid: int, timeout: float = 120.0) -> bool:
    """True once the process has mapped llama.cpp's library (past start-up, inside `pc ask`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "libllama" in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            return False
        time.sleep(0.01)
    return False


DOCS = {"bsd": "BSD.txt", "mpl": "MPL-2.0.txt", "apache": "Apache-2.0.txt"}


def write_docs(folder: Path, revision: int) -> Path:
    """A three-module schema of license excerpts; each revision changes the first document, so
    every module file (computed after it) gets a new key.

    The modules sit side by side without whitespace between them, so the layout has no one-token
    glue segments, and the whole default prompt fits one batch: every module file's bytes are
    then the same whichever process computed it, alone or with others (llama.cpp computes a
    one-token batch through another kernel, which changes the low bits of what follows)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, source) in enumerate(DOCS.items(), 1):
        text = license_excerpt(source, 500)
        if i == 1:
            text += f"\nRevision {revision}."
        (folder / f"{name}.txt").write_text(f"Document {i}:\n{text}\n[end of document {i}]", encoding="utf-8")
    modules = "".join(f'<module name="{name}" src="{name}.txt"/>' for name in DOCS)
    path = folder / "schema.xml"
    path.write_text('<schema name="faults"><system>You answer questions about the documents, quoting them.'
                    f"</system><user>{modules}</user></schema>\n", encoding="utf-8")
    return path


# -- the cache on disk --------------------------------------------------------------------------


def module_files(cache: Path) -> list[Path]:
    return sorted((cache / "modules").rglob("*.pcm")) if (cache / "modules").is_dir() else []


def temporary_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob(".tmp-*")) if cache.is_dir() else []


def snapshot(cache: Path) -> dict[str, bytes]:
    """Every regular file's bytes except lock files (which only ever exist empty)."""
    if not cache.is_dir():
        return {}
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def damaged_files(cache: Path) -> list[str]:
    """Module files that do not read back whole (every checksum), with the reason."""
    bad = []
    for p in module_files(cache):
        try:
            cache_file.verify(p).close()
        except cache_file.CacheFileError as e:
            bad.append(f"{p.name}: {e}")
    return bad


def make_read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~0o222)


def make_writable(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o200)


# -- damage ---------------------------------------------------------------------------------------

DAMAGE_KINDS = ("truncate", "empty", "flip-bits", "overwrite-run", "append", "swap")


def damage(path: Path, kind: str, rnd: random.Random, other: Path | None = None) -> str:
    """Damage one module file in place; returns a description. ``swap`` puts another module's
    whole, valid file under this file's name."""
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        cut = rnd.randrange(1, len(data))
        del data[cut:]
        what = f"cut to {cut} of {len(path.read_bytes())} bytes"
    elif kind == "empty":
        data = bytearray()
        what = "emptied"
    elif kind == "flip-bits":
        spots = sorted(rnd.randrange(len(data)) for _ in range(rnd.randint(1, 4)))
        for at in spots:
            data[at] ^= 1 << rnd.randrange(8)
        what = f"bits flipped at {spots}"
    elif kind == "overwrite-run":
        at = rnd.randrange(len(data))
        n = rnd.randint(1, 4096)
        data[at : at + n] = rnd.randbytes(min(n, len(data) - at))
        what = f"{n} random bytes at {at}"
    elif kind == "append":
        extra = rnd.randbytes(rnd.randint(1, 64))
        data += extra
        what = f"{len(extra)} bytes appended"
    elif kind == "swap":
        assert other is not None and other != path
        data = bytearray(other.read_bytes())
        what = f"replaced by {other.name}"
    else:
        raise ValueError(kind)
    path.write_bytes(bytes(data))
    return what


def forge_refused_state(path: Path) -> None:
    """Rewrite a module file so that it passes every check pc makes (checksums, key, model,
    layer count, KV types, positions) but its K rows are half as wide as the model's, which
    llama.cpp refuses when it loads the state."""
    import struct

    import numpy as np

    f = cache_file.read(path)
    try:
        header = {k: v for k, v in f.header.items() if k not in ("format", "codec", "segments")}
        codec = f.header["codec"]
        records = list(f.segments)
        blobs = [np.array(f.blob(i)) for i in range(len(records))]
    finally:
        f.close()
    out = []
    for blob in blobs:
        b = blob.tobytes()
        n_cells = struct.unpack_from("<I", b, 12)[0]
        at = 16 + 12 * n_cells
        v_trans, n_layer = struct.unpack_from("<II", b, at)
        parts = [b[:at + 8]]
        at += 8
        for _ in range(n_layer):  # K: type, row bytes, rows -> half-width rows
            k_type, row = struct.unpack_from("<iQ", b, at)
            at += 12
            rows = np.frombuffer(b, np.uint8, n_cells * row, at).reshape(n_cells, row)
            parts.append(struct.pack("<iQ", k_type, row // 2) + rows[:, : row // 2].tobytes())
            at += n_cells * row
        parts.append(b[at:])  # V unchanged
        out.append(np.frombuffer(b"".join(parts), np.uint8))
    chunks = cache_file.encode(header, out, [r.tokens for r in records], [r.offset for r in records],
                               codec=codec, split_planes=False)
    path.write_bytes(b"".join(bytes(c) for c in chunks))


# -- housekeeping beside asks ---------------------------------------------------------------------


@dataclass
class Race:
    """One round of :func:`gc_beside_asks`: each ask's run, and the gc loop's."""

    asks: list[tuple[tuple[str, ...], Proc]]  # (the ask's extra options, its run)
    gcs: list[Proc]
    evicted: int  # files the gc loop removed while the asks ran


def gc_beside_asks(question: str, schema: Path, cache: Path, requests: list[tuple[str, ...]], *,
                   n_asks: int = 8, gc_args: tuple[str, ...] = ("--max-size", "1", "--grace", "0s"),
                   **env: str) -> Race:
    """``n_asks`` concurrent `pc ask` (the ``requests``' options in turn) while `pc gc` runs in a
    loop beside them, evicting everything it may (``--grace 0s``: no grace period, so only the
    asks' leases protect what they read), until the last ask ends."""
    stop = threading.Event()
    gcs: list[Proc] = []

    def loop() -> None:
        while not stop.is_set():
            gcs.append(run(["gc", *gc_args, "--json"], cache=cache, **env))

    t0 = time.perf_counter()
    sweeper = threading.Thread(target=loop)
    sweeper.start()
    try:
        started = [(r, start(["ask", question, "-s", schema, "-n", "8", "--json", *r], cache=cache, **env))
                   for r in (requests[k % len(requests)] for k in range(n_asks))]
        asks = [(r, finish(p, t0)) for r, p in started]
    finally:
        stop.set()
        sweeper.join()
    evicted = 0
    for g in gcs:
        try:
            evicted += len(json.loads(g.out)["removed"]) if g.code == 0 else 0
        except (ValueError, KeyError):
            pass
    return Race(asks, gcs, evicted)

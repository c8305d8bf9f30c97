"""The record of observed overlap depths that checkpoint placement plans from, and the reader for
trace files in the same format.

One JSON object per line, ``{"tokens": N, "overlap": D, "time": T}``: a request's prompt length,
how many leading tokens it shared with the cached prompt, and when (Unix time). The record lives
in ``overlap.jsonl`` in the folder the caller chooses (``<cache dir>/prefix/<schema key>/``).

Appends from several processes are safe: each line is one ``write`` to a file opened with
``O_APPEND``, under an inter-process lock that compaction also takes, so no line is lost to a
rename. The record is bounded: once the file outgrows ``max_lines`` lines of 128 bytes it is
compacted to its last ``max_lines`` well-formed lines (temporary file, then rename). A line cut
short by a killed writer is skipped on reading and never glued to the next one.

A trace file given by a user is read strictly instead: bad input raises ``TraceError`` with a
one-line "FILE:LINE: message" (the CLI maps it to exit code 3).
"""

from __future__ import annotations

import json
import os
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CacheWriteError, OverlapLogError, TraceError

if TYPE_CHECKING:
    from .boundary import Boundary

LOG_NAME = "overlap.jsonl"
MAX_LINES = 10_000
LINE_BYTES = 128  # a generous bound on a line's size: compaction starts at max_lines * LINE_BYTES
LOCK_TIMEOUT = 10.0  # seconds
MAX_TOKENS = 1 << 31


def history_dir(cache_root: Path | str, schema_name: str, schema_path: str | None) -> Path:
    """Where a schema's prefix-mode requests are recorded in a cache directory."""
    from .manifest import manifest_path

    return Path(cache_root) / "prefix" / "history" / manifest_path(Path(cache_root), schema_name, schema_path).stem


@dataclass(frozen=True)
class Observation:
    tokens: int  # the request's prompt length
    overlap: int  # leading tokens shared with the cached prompt
    time: float | None = None


class OverlapLog:
    def __init__(self, directory: Path | str, *, max_lines: int = MAX_LINES, boundary: Boundary | None = None) -> None:
        """``boundary``: the cache folder's (the record lives inside it); by default the record's
        own folder bounds it. Either way a link on the way is never followed."""
        if max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, not {max_lines}")
        from .boundary import Boundary

        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        self.max_lines = max_lines
        self.boundary = boundary if boundary is not None else Boundary(self.directory)

    def _lock(self):
        return self.boundary.lock(str(self.path) + ".lock")

    def append(self, *, tokens: int, overlap: int, time: float | None = None) -> None:
        """Record one request; compacts the file when it has grown past its bound."""
        _check(tokens, overlap)
        from .boundary import LockTimeout

        lock = self._lock()
        try:
            lock.acquire(timeout=LOCK_TIMEOUT)  # makes the record's folder
            try:
                when = _time.time() if time is None else float(time)
                line = json.dumps({"tokens": tokens, "overlap": overlap, "time": round(when, 3)}) + "\n"
                fd = self.boundary.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":  # a writer died mid-line
                        line = "\n" + line
                    size += os.write(fd, line.encode())
                finally:
                    os.close(fd)
                if size > self.max_lines * LINE_BYTES:
                    self._compact_locked()
            finally:
                lock.release()
        except LockTimeout:
            raise OverlapLogError(f"{self.path}: locked by another process for over {LOCK_TIMEOUT:.0f} s") from None
        except OSError as e:
            raise OverlapLogError(f"{self.path}: cannot record the request: {e.strerror or e}") from None
        except CacheWriteError as e:  # a link on the way
            raise OverlapLogError(f"{self.path}: cannot record the request: {e}") from None

    def read(self) -> list[Observation]:
        """The last ``max_lines`` well-formed records, oldest first; [] when there is no record.
        Malformed lines (a torn last line, stray bytes) are skipped."""
        try:
            with open(self.path, "rb", opener=self.boundary.opener) as f:
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise OverlapLogError(f"{self.path}: cannot read the record: {e.strerror or e}") from None
        except CacheWriteError as e:
            raise OverlapLogError(f"{self.path}: cannot read the record: {e}") from None
        return _parse_lenient(data)[-self.max_lines:]

    def compact(self) -> None:
        """Rewrite the record as its last ``max_lines`` well-formed lines."""
        from .boundary import LockTimeout

        lock = self._lock()
        try:
            lock.acquire(timeout=LOCK_TIMEOUT)
            try:
                self._compact_locked()
            finally:
                lock.release()
        except LockTimeout:
            raise OverlapLogError(f"{self.path}: locked by another process for over {LOCK_TIMEOUT:.0f} s") from None
        except OSError as e:
            raise OverlapLogError(f"{self.path}: cannot compact the record: {e.strerror or e}") from None
        except CacheWriteError as e:
            raise OverlapLogError(f"{self.path}: cannot compact the record: {e}") from None

    def _compact_locked(self) -> None:
        try:
            with open(self.path, "rb", opener=self.boundary.opener) as f:
                data = f.read()
        except FileNotFoundError:
            return
        keep = _parse_lenient(data)[-self.max_lines:]
        text = "".join(json.dumps({"tokens": o.tokens, "overlap": o.overlap, "time": o.time}) + "\n" for o in keep)
        self.boundary.write_atomic(self.path, [text.encode()])


def _parse_lenient(data: bytes) -> list[Observation]:
    out = []
    for raw in data.split(b"\n"):
        try:
            out.append(_observation(json.loads(raw)))
        except (ValueError, TypeError, KeyError, RecursionError):  # decode errors are ValueErrors
            continue
    return out


def read_trace(path: Path | str) -> list[Observation]:
    """A user's trace file: JSON lines ``{"tokens": N, "overlap": D}`` (other keys, such as
    ``time``, are ignored; blank lines are skipped). Raises TraceError naming the file and line."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    out = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TraceError(f"{path}:{number}: not UTF-8 text") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"{path}:{number}: not JSON ({e.msg} at column {e.colno})") from None
        except ValueError:  # Python refuses integers of thousands of digits
            raise TraceError(f"{path}:{number}: not a request: a number with too many digits") from None
        except RecursionError:
            raise TraceError(f"{path}:{number}: not a request: nested too deeply") from None
        try:
            out.append(_observation(obj))
        except (ValueError, TypeError, KeyError) as e:
            raise TraceError(f"{path}:{number}: {_reason(e)}") from None
    return out


def _observation(obj) -> Observation:
    if not isinstance(obj, dict):
        raise TypeError('expected an object like {"tokens": N, "overlap": D}')
    for key in ("tokens", "overlap"):
        if key not in obj:
            raise KeyError(f"missing '{key}'")
    tokens, overlap = obj["tokens"], obj["overlap"]
    _check(tokens, overlap)
    return Observation(tokens, overlap, _time_of(obj.get("time")))


def _time_of(when) -> float | None:
    if when is None:
        return None
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not abs(when) < 1e15 or when != when:
        raise TypeError(f"'time' must be a Unix time in seconds, not {_show(when)}")
    return float(when)


def _check(tokens, overlap) -> None:
    for key, value in (("tokens", tokens), ("overlap", overlap)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOKENS:
            raise ValueError(f"'{key}' must be an integer from 0 to {MAX_TOKENS}, not {_show(value)}")
    if overlap > tokens:
        raise ValueError(f"'overlap' ({overlap}) is larger than 'tokens' ({tokens})")


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or value == value else "NaN"
    return text if len(text) <= 40 else text[:37] + "..."


def _reason(exc: Exception) -> str:
    return exc.args[0] if isinstance(exc, KeyError) else str(exc)

"""What the `pc` command modules share: the common options, writing to stdout and stderr (every
line on stderr one safe line: :func:`one_line`), and option parsers for sizes, ages and finite
numbers. Imports only Typer, so `pc` starts fast."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

import typer

ModelOpt = typer.Option(None, "--model", envvar="PC_MODEL", metavar="FILE", show_envvar=False, hidden=True,
                        help="GGUF model file (default: $PC_MODEL, else SmolLM2-135M-Instruct).")
CacheOpt = typer.Option(None, "--cache-dir", envvar="PC_CACHE_DIR", metavar="DIR", show_envvar=False,
                        help="Cache folder (default: $PC_CACHE_DIR or the user's).")
HiddenCacheOpt = typer.Option(None, "--cache-dir", envvar="PC_CACHE_DIR", metavar="DIR", hidden=True)
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
RemoteOpt = typer.Option(  # short: `pc ask --help` fits a screen; docs/usage.md and docs/fleet.md say more
    None, "--remote", envvar="PC_REMOTE", show_envvar=False, metavar="URL",
    help="Shared store behind the cache, s3://bucket/prefix (default: $PC_REMOTE; docs/fleet.md).")
RemoteSideOpt = typer.Option(
    None, "--remote", metavar="[URL]",
    help="Work on the remote store instead of the cache directory: s3://bucket/prefix, or $PC_REMOTE when "
    "--remote has no URL.")


def remote_flag(args: list[str]) -> list[str]:
    """``--remote`` without a URL after it (the next word is not ``scheme://...``) becomes
    ``--remote=``: the store in $PC_REMOTE (:func:`resolve_remote`)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == "--remote" and (i + 1 == len(out) or "://" not in out[i + 1]):
            out[i] = "--remote="
    return out


def resolve_remote(value: Optional[str], *, required: bool = False) -> Optional[str]:
    """The remote store a command uses: its --remote URL; ``--remote`` alone means $PC_REMOTE."""
    from .. import errors

    if value == "":
        import os

        value = os.environ.get("PC_REMOTE", "").strip()
        if not value:
            raise errors.UsageError("--remote without a URL uses $PC_REMOTE, which is not set "
                                    "(give --remote s3://bucket/prefix)")
    if not value and required:
        raise errors.UsageError("no remote store: give --remote s3://bucket/prefix or set PC_REMOTE")
    return value or None


class StdoutClosed(Exception):
    """stdout was closed by the reader (e.g. `| head -c 20`)."""


class ClosedStdoutGuard:
    """Wraps stdout so a reader that went away (EPIPE) raises StdoutClosed from any write: print,
    rich or streamed answers alike (Typer would turn a BrokenPipeError into exit 1), and any other
    write error (a full disk) raises errors.OutputError."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise StdoutClosed() from None
        except OSError as e:
            raise _output_error(e) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise StdoutClosed() from None
        except OSError as e:
            raise _output_error(e) from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _output_error(e: OSError):
    from ..errors import OutputError

    return OutputError(f"cannot write to stdout: {e.strerror or e}")


_left_to_os: list[object] | None = None  # a list once __main__ has called leave_to_os()


def leave_to_os() -> None:
    """This process ends with os._exit once its command returns (__main__): what :func:`outlive`
    is given is left for the operating system to reclaim."""
    global _left_to_os
    _left_to_os = []


def outlive(obj: object) -> None:
    """Keep ``obj`` (a session: its model and context) alive until the process ends, when the
    process ends with os._exit: freeing a model and a 4k-token context ourselves took about 20 ms
    after the answer was out, which the answer's reader waits for. In process (tests, the
    benchmark), it is freed as usual."""
    if _left_to_os is not None:
        _left_to_os.append(obj)


def write_out(text: str) -> None:
    """Write to stdout now (answers stream token by token)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def emit_json(obj: dict) -> None:
    write_out(json.dumps(obj, ensure_ascii=False) + "\n")


MAX_LINE = 1000  # characters of one message on stderr; longer ones keep their start and end

# what never reaches a terminal raw: C0 and C1 controls (newlines, ESC, CSI U+009B), bidirectional
# overrides and isolates (U+202E ...), other invisible format characters, line and paragraph
# separators, and lone surrogates (undecodable bytes of a file name)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
                     "\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(text: str) -> str:
    def one(m: re.Match) -> str:
        ch = m.group()
        n = ord(ch)
        return _NAMED.get(ch) or (f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")

    return _UNSAFE.sub(one, text)


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` as one safe line: control, bidirectional and invisible characters escaped
    (``\\n``, ``\\x9b``, ``\\u202e``), and at most about ``limit`` characters (a longer text keeps its
    start and its end, and says how long it was)."""
    if len(text) <= limit:
        safe = _escape(text)
        if len(safe) <= limit:
            return safe
    head = _escape(text[:limit])[: limit * 3 // 4]
    tail = _escape(text[-limit:])[-(limit // 5):]
    return f"{head} ...[{len(text)} characters, cut]... {tail}"


def write_err(message: str) -> None:
    """One message on stderr, as one line (:func:`one_line`: every message `pc` writes there goes
    through this). A stderr that cannot be written (closed, a full disk, a reader gone) loses it:
    the exit code still tells."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(one_line(message) + "\n")
        stream.flush()
    except (OSError, ValueError):  # ValueError: closed
        pass


def finite(value: Optional[float]) -> Optional[float]:
    """A Typer callback: NaN and infinity are usage errors (they pass min/max checks)."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30,
               "ti": 2**40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """Bytes from ``123456``, ``500M``, ``2G``, ``1.5GB`` (k, M, G, T: powers of 1000; KiB, MiB,
    GiB, TiB: powers of 1024)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"'{text}' is not a size: give bytes or a number with a unit, like 500M, 2G, 1.5GB, 800MiB")
    return int(float(m[1]) * _SIZE_UNITS[(m[2] or "").lower()])


def parse_age(text: str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``2w`` or ``45s``."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw])\s*", text)
    if not m:
        raise ValueError(f"'{text}' is not an age: give a number and a unit s, m, h, d or w, like 30d, 12h, 90m")
    return float(m[1]) * _AGE_UNITS[m[2]]


def option_parser(parse):
    """A Typer option parser whose errors keep their message (exit 2 via main())."""
    def parser(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    return parser


def within(low: float, high: float | None = None):
    """A Typer option callback refusing values outside [low, high] (exit 2, as Typer's own ``min``
    and ``max`` do, without their range notes, which would crowd ``--help``)."""
    def check(value):
        finite(value)  # NaN passes both comparisons
        if value is not None and (value < low or (high is not None and value > high)):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise typer.BadParameter(f"{value} is not {bound}")
        return value
    return check


def cache_root(cache_dir: Optional[str]) -> Path:
    from ..api import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

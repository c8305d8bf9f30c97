"""What the `pc` command modules share: the common options, writing to stdout and stderr, and
option parsers for sizes and ages. Imports only Typer (rich when an error is written), so `pc`
starts fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

ModelOpt = typer.Option(None, "--model", envvar="PC_MODEL", help="GGUF model file (default: SmolLM2-135M-Instruct).")
CacheOpt = typer.Option(None, "--cache-dir", envvar="PC_CACHE_DIR", help="Cache directory (default: user cache dir).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
RemoteOpt = typer.Option(
    None, "--remote", envvar="PC_REMOTE", metavar="URL",
    help="Shared store behind the cache: s3://bucket/prefix (endpoint and credentials from the AWS variables "
    "and files; see docs/fleet.md). Missing states are downloaded before anything is computed; computed ones "
    "are uploaded. --remote alone: $PC_REMOTE.")
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


def write_err(message: str) -> None:
    """One message on stderr. A stderr that cannot be written (closed, a full disk) loses it:
    the exit code still tells."""
    from rich.console import Console

    try:
        Console(stderr=True, highlight=False, soft_wrap=True).print(message, markup=False)
    except OSError:
        pass


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


def cache_root(cache_dir: Optional[str]) -> Path:
    from ..api import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

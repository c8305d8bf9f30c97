"""The options `pc compile` and `pc ask` share, what they name (a schema file, or plain files with
``-f``), opening a session from them, and the progress bar. Imports only Typer: the library is
imported when a command runs. The cache settings are hidden from ``--help`` (which fits a screen)
and listed in docs/usage.md."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from enum import Enum
from typing import Optional

import typer

from .. import errors
from .common import cache_root, outlive, resolve_remote, within


REPAIR_DEFAULT = 0  # api.DEFAULT_REPAIR (not imported: `pc` starts without the library; a test keeps them equal)


class Encoding(str, Enum):
    independent = "independent"
    scaffold = "scaffold"
    average = "average"


class Compression(str, Enum):
    none = "none"
    zstd = "zstd"


class Mode(str, Enum):
    auto = "auto"
    modular = "modular"
    prefix = "prefix"


class KvType(str, Enum):
    f16 = "f16"
    q8_0 = "q8_0"


SchemaOpt = typer.Option(None, "--schema", "-s", metavar="FILE", show_default=False, help="A schema file (PML).")
FileOpt = typer.Option([], "--file", "-f", metavar="FILE", show_default=False,
                       help="A text file to ask about ('-': stdin); repeatable.")
SystemOpt = typer.Option(None, "--system", metavar="TEXT", show_default=False,
                         help="With -f: the system prompt.")
ThreadsOpt = typer.Option(0, "--threads", callback=within(0, 1024), metavar="N", show_default=False,
                          help="Threads (default: $PC_THREADS or one per core).")
TimingsOpt = typer.Option(None, "--timings/--no-timings", hidden=True,
                          help="Timing line on stderr (default: on a terminal).")

EncodingOpt = typer.Option(
    Encoding.scaffold, "--encoding", hidden=True,
    help="How modules are encoded: 'scaffold' (after the default prompt before it, or the first prompt "
    "the schema allows that repeats no text where the default one does), 'average' "
    "(the mean of the states after up to 8 prompts the schema allows before it, its unions switched "
    "member by member; slower to compile) or 'independent' "
    "(after the shared prefix only; edits invalidate less).",
)
KvTypeOpt = typer.Option(
    KvType.f16, "--kv-type", hidden=True,
    help="KV cache type: f16, or q8_0 (smaller states, flash attention on).",
)
ModeOpt = typer.Option(
    Mode.auto, "--mode", hidden=True,
    help="'modular': stitch each module's cached states (attention models); 'prefix': resume from the "
    "longest cached prefix, answers identical to --no-cache; 'auto': prefix for recurrent and hybrid "
    "models, modular otherwise.",
)
CheckpointsOpt = typer.Option(
    4, "--checkpoints", min=0, max=1024, hidden=True,
    help="Prefix mode, recurrent and hybrid models: states kept inside the prompt besides its end, "
    "placed where past requests diverged.",
)
CompressionOpt = typer.Option(
    Compression.none, "--compression", hidden=True,
    help="Cache file codec: none (memory-mapped, handed over without a copy; fastest) or zstd "
    "(f16 high bytes compressed: smaller, slower to load).",
)


def open_session(model: Optional[str], cache_dir: Optional[str], encoding: Encoding, compression: Compression,
                 kv_type: KvType, mode: Mode = Mode.auto, checkpoints: int = 4, checkpoint_bytes: int | None = None,
                 *, threads: int = 0, remote: Optional[str] = None, remote_required: bool = False):
    """A session for the command's options (the model loaded, a prefix model in prefix mode);
    ``remote``: the --remote option's value (``""``: $PC_REMOTE)."""
    from .. import api

    if encoding == Encoding.average and kv_type != KvType.f16:
        raise errors.UsageError(f"--encoding average needs f16 KV states, not --kv-type {kv_type.value}")
    root = cache_root(cache_dir)
    url = resolve_remote(remote, required=remote_required)
    sess = api.open_session(model, cache_dir=root, mode=mode.value, encoding=encoding.value,
                            compression=compression.value, kv_type=kv_type.value, checkpoints=checkpoints,
                            checkpoint_bytes=checkpoint_bytes, threads=threads, remote=url or "")
    outlive(sess)  # a `pc` process leaves it to the operating system
    return sess


def check_refresh(on: bool, option: str, kv_type: KvType, mode: Mode) -> None:
    """Selective recompute needs modular mode (stitched modules) and f16 KV states."""
    if on and mode == Mode.prefix:
        raise errors.UsageError(f"{option} works in modular mode only (prefix mode computes the prompt exactly)")
    if on and kv_type != KvType.f16:
        raise errors.UsageError(f"{option} needs f16 KV states, not --kv-type {kv_type.value}")


def schema_path(positional: Optional[str], option: Optional[str], command: str,
                required: bool = True) -> Optional[str]:
    """The schema a command names, as ``SCHEMA`` or ``-s/--schema SCHEMA`` (the same spelling on
    every command that takes one)."""
    if positional and option and positional != option:
        raise errors.UsageError(f"two schemas given ({positional} and -s {option}): give one")
    path = positional or option
    if path is None and required:
        raise errors.UsageError(f"pc {command} needs a schema: -s SCHEMA (see `pc {command} --help`)")
    return path


def schema_for(schema: Optional[str], files: list[str], system: Optional[str], command: str, read_stdin):
    """The schema a command works on: a schema file (``-s``), or one made from plain files
    (``-f``, ``-f -`` for stdin) with ``--system``."""
    from .. import api

    if files and schema:
        raise errors.UsageError("-f FILE and -s SCHEMA are two ways to give the context: use one")
    if system is not None and not files:
        raise errors.UsageError("--system goes with -f FILE (a schema has its own system prompt)")
    if not files:
        if not schema:
            raise errors.UsageError(f"pc {command} needs -f FILE (a text file) or -s SCHEMA "
                                    f"(see `pc {command} --help`)")
        return api.load_schema(schema)
    if files.count("-") > 1:
        raise errors.UsageError("-f - (stdin) can be given once")
    docs = []
    for f in files:
        if f == "-":
            docs.append(api.document_from_bytes(read_stdin(None, "the document"), name="stdin"))
        else:
            docs.append(api.read_document(f))
    return api.documents_schema(docs, system=system)


def read_stdin(limit: Optional[int], what: str) -> bytes:
    """Up to ``limit`` bytes of stdin (the pml limit when None); InputError beyond it."""
    from .. import api

    if limit is None:
        limit = api.MAX_DOCUMENT_BYTES
    if sys.stdin is None or sys.stdin.isatty():
        raise errors.InputError(f"{what} on stdin: nothing is piped in")
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise errors.InputError(f"{what} on stdin is longer than {limit >> 20} MiB")
    return data


@contextmanager
def _interrupt_deferred():
    """Hold a Ctrl-C that comes while the bar draws or erases itself until it is done: a
    KeyboardInterrupt in the middle of a frame leaves part of it on the screen for good. (Python
    runs signal handlers on the main thread only, where the library reports progress.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


class ProgressBar:
    """A progress bar on stderr while states are computed, on a terminal only: it appears with
    the first progress report (never while nothing is computed), shows what is computed, tokens
    done of the total and the time left, and is erased once the work is done (:meth:`stop`, which
    `pc ask` calls before the answer's first word). Pass :meth:`update` as the library's
    ``progress`` callback (None when there is no terminal)."""

    def __init__(self, enabled: bool, verb: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.verb = verb
        self._bar = None
        self._task = None
        self._stopped = False

    @property
    def update(self):
        return self._update if self.enabled else None

    def _update(self, done: int, total: int, name: str) -> None:
        if self._stopped:
            return
        with _interrupt_deferred():  # Ctrl-C mid-frame would leave half a bar on the screen
            self._draw(done, total, name)

    def _draw(self, done: int, total: int, name: str) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=24),
                TextColumn("{task.completed:,}/{task.total:,} tokens"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True, redirect_stdout=False, redirect_stderr=False,
            )
            self._task = self._bar.add_task(self.verb, total=max(total, 1))
            self._bar.start()
        self._bar.update(self._task, completed=min(done, total), total=max(total, 1),
                         description=f"{self.verb} {name}")

    def stop(self) -> None:
        """Erase the bar (no-op when it never showed); later reports are ignored."""
        self._stopped = True
        if self._bar is not None:
            with _interrupt_deferred():
                self._bar.stop()
                self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def progress_bar(enabled: bool, verb: str = "computing") -> ProgressBar:
    return ProgressBar(enabled, verb)

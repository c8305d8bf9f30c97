"""The options `pc compile` and `pc ask` share, opening a session from them, and the progress bar.
Imports only Typer: the library is imported when a command runs."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Optional

import typer

from .. import errors
from .common import cache_root, outlive, resolve_remote


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


EncodingOpt = typer.Option(
    Encoding.scaffold, "--encoding",
    help="How modules are encoded: 'scaffold' (after the default prompt before it, or the first prompt "
    "the schema allows that repeats no text where the default one does), 'average' "
    "(the mean of the states after up to 8 prompts the schema allows before it, its unions switched "
    "member by member; slower to compile) or 'independent' "
    "(after the shared prefix only; edits invalidate less).",
)
KvTypeOpt = typer.Option(
    KvType.f16, "--kv-type",
    help="KV cache type: f16, or q8_0 (smaller states, flash attention on).",
)
ModeOpt = typer.Option(
    Mode.auto, "--mode",
    help="'modular': stitch each module's cached states (attention models); 'prefix': resume from the "
    "longest cached prefix, answers identical to --no-cache; 'auto': prefix for recurrent and hybrid "
    "models, modular otherwise.",
)
CheckpointsOpt = typer.Option(
    4, "--checkpoints", min=0, max=1024,
    help="Prefix mode, recurrent and hybrid models: states kept inside the prompt besides its end, "
    "placed where past requests diverged.",
)
CompressionOpt = typer.Option(
    Compression.none, "--compression",
    help="Cache file codec: none (memory-mapped, handed over without a copy; fastest) or zstd "
    "(f16 high bytes compressed: smaller, slower to load).",
)


def open_session(model: Optional[str], cache_dir: Optional[str], encoding: Encoding, compression: Compression,
                 kv_type: KvType, mode: Mode = Mode.auto, checkpoints: int = 4, checkpoint_bytes: int | None = None,
                 threads: int = 0, remote: Optional[str] = None, remote_required: bool = False):
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


def progress_bar(enabled: bool):
    """A rich progress bar on stderr (only on a terminal), as a (context manager, callback)."""
    from contextlib import nullcontext

    if not enabled or not sys.stderr.isatty():
        return nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} tokens"),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        redirect_stdout=False, redirect_stderr=False,  # rich would send stdout (the answer) to the terminal
    )
    task = bar.add_task("compiling", total=None)

    def update(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done, total=total, description=f"compiling {name}")

    return bar, update

"""`pc push SCHEMA` and `pc pull SCHEMA`: move a schema's cache files to and from the remote store
(store/remote.py). A line per file and a summary on stderr (a progress bar on a terminal);
``--json``: one object on stdout."""

from __future__ import annotations

from typing import Optional

import typer

from .. import errors
from .common import CacheOpt, JsonOpt, ModelOpt, RemoteOpt, emit_json, write_err
from .options import (CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, KvType, KvTypeOpt, Mode,
                      ModeOpt, open_session)


PUSH_HELP = """Upload a schema's cache files to the remote store, each checked whole first; files
the store holds already are not sent again. Exit 5: a local file damaged or missing.

\b
  pc push schemas/gpl-manual.xml --remote s3://bucket/pc   # after pc compile

Setting up a store and a fleet: docs/fleet.md"""

PULL_HELP = """Download a schema's cache files from the remote store, each checked before it is
put in place. Exit 5: a file missing or damaged; 11: the store unreachable.

\b
  pc pull schemas/gpl-manual.xml --remote s3://bucket/pc

Setting up a store and a fleet: docs/fleet.md"""


def push(
    schema: str = typer.Argument(..., metavar="SCHEMA", help="Schema file (PML)."),
    remote: Optional[str] = RemoteOpt,
    force: bool = typer.Option(False, "--force", help="Upload files the store holds already (replacing them)."),
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = CacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    as_json: bool = JsonOpt,
) -> None:
    _transfer("push", schema, remote, model, cache_dir, encoding, compression, kv_type, mode, checkpoints, as_json,
              force=force)


def pull(
    schema: str = typer.Argument(..., metavar="SCHEMA", help="Schema file (PML)."),
    remote: Optional[str] = RemoteOpt,
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = CacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    as_json: bool = JsonOpt,
) -> None:
    _transfer("pull", schema, remote, model, cache_dir, encoding, compression, kv_type, mode, checkpoints, as_json)


def _transfer(direction: str, schema: str, remote, model, cache_dir, encoding, compression, kv_type, mode,
              checkpoints, as_json: bool, *, force: bool = False) -> None:
    from ..api import load_schema

    sch = load_schema(schema)
    sess = open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, remote=remote,
                        remote_required=True)
    bar, update = _bytes_bar(direction)
    with bar:
        if direction == "push":
            report = sess.push(sch, force=force, progress=update)
        else:
            report = sess.pull(sch, progress=update)
    for w in report.warnings:
        write_err(f"warning: {w}")
    moved = "uploaded" if direction == "push" else "downloaded"
    for f in report.files:
        why = f" ({f.reason})" if f.reason else ""
        write_err(f"{f.status:>10}  {f.name:<32} {f.bytes / 1e6:9.2f} MB{why}")
    bad = [f for f in report.files if f.status in ("missing", "damaged")]
    if as_json:
        emit_json({
            "schema": report.schema, "remote": report.remote, "direction": direction, "mode": sess.mode,
            "model": sess.model_name, "cache_dir": str(sess.cache_dir), "seconds": round(report.seconds, 3),
            "bytes": report.bytes, "ok": not bad, "warnings": list(report.warnings),
            "files": [{"module": f.name, "key": f.key, "status": f.status, "bytes": f.bytes,
                       "seconds": round(f.seconds, 3), **({"reason": f.reason} if f.reason else {})}
                      for f in report.files],
        })
    n = sum(f.status == moved for f in report.files)
    present = sum(f.status == "present" for f in report.files)
    rate = f", {report.bytes / report.seconds / 1e6:.0f} MB/s" if report.bytes and report.seconds > 0 else ""
    where = "in the store" if direction == "push" else "in the cache"
    write_err(f"{direction} '{report.schema}' {'to' if direction == 'push' else 'from'} {report.remote}: "
              f"{n} {moved} ({report.bytes / 1e6:.2f} MB in {report.seconds:.2f} s{rate}), {present} already {where}"
              + (f", {len(bad)} missing or damaged" if bad else ""))
    if bad:
        hint = ("`pc compile` makes missing files" if direction == "push"
                else "`pc compile --remote` on one machine fills the store")
        write_err(f"pc: {len(bad)} file(s) of '{report.schema}' missing or damaged ({hint})")
        raise typer.Exit(errors.EXIT_CACHE)


def _bytes_bar(direction: str):
    """A progress bar over bytes on stderr (only on a terminal), as a (context manager, callback)."""
    import sys
    from contextlib import nullcontext

    if not sys.stderr.isatty():
        return nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(direction, total=None)

    def update(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done, total=total or None, description=f"{direction} {name}")

    return bar, update

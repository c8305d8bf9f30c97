"""`pc compile` (precompute a schema's states) and `pc inspect` (show its layout)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import CacheOpt, JsonOpt, ModelOpt, emit_json, option_parser, parse_size, write_err
from .options import (CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, FileOpt, KvType, KvTypeOpt,
                      Mode, ModeOpt, SchemaOpt, SystemOpt, ThreadsOpt, check_refresh, open_session, progress_bar,
                      read_stdin, schema_for, schema_path)

COMPILE_HELP = """Compute and store the states of a schema's modules (or of text files, -f) not
cached yet; then `pc ask` answers from the cache.

\b
  pc compile schemas/gpl-manual.xml       (or -s schemas/gpl-manual.xml)
  pc compile -f notes.txt

More options (--model, --encoding, --compression, --kv-type, --mode, --checkpoints):
docs/usage.md#pc-compile"""

INSPECT_HELP = """Show a schema's layout: every element's offset and token length; computes nothing.

\b
  pc inspect schemas/licenses.xml
  pc inspect -f notes.txt --json

More: docs/usage.md#pc-inspect"""

SchemaArg = typer.Argument(None, metavar="[SCHEMA]", show_default=False, hidden=True)  # as -s SCHEMA


def compile(
    schema_arg: Optional[str] = SchemaArg,
    schema: Optional[str] = SchemaOpt,
    files: list[str] = FileOpt,
    system: Optional[str] = SystemOpt,
    force: bool = typer.Option(False, "--force", help="Recompute what is cached too."),
    ranked: bool = typer.Option(
        False, "--ranked", help="Also store recompute scores (for pc ask --refresh)."),
    threads: int = ThreadsOpt,
    as_json: bool = JsonOpt,
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = CacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    checkpoint_bytes: Optional[int] = typer.Option(
        None, "--checkpoint-bytes", parser=option_parser(parse_size), metavar="SIZE", hidden=True,
        help="Prefix mode: keep no more checkpoints than fit in SIZE (500M, 2G, bytes).",
    ),
) -> None:
    path = schema_path(schema_arg, schema, "compile", required=not files)
    sch = schema_for(path, files, system, "compile", read_stdin)
    check_refresh(ranked, "--ranked", kv_type, mode)
    sess = open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, checkpoint_bytes,
                        threads=threads)
    check_refresh(ranked, "--ranked", kv_type, Mode(sess.mode))
    if not force:
        reason = sess.stale(sch).reason
        if reason:
            write_err(reason)
    with progress_bar(not as_json) as bar:
        report = sess.compile(sch, force=force, progress=bar.update, ranked=ranked)
    rows = [
        {"module": m.name, "status": m.status, "tokens": m.tokens, "bytes": m.bytes,
         "seconds": round(m.seconds, 3), "key": m.key}
        for m in report.modules
    ]
    for w in report.warnings:
        write_err(f"warning: {w}")
    if as_json:
        emit_json({"schema": report.schema, "mode": sess.mode, "encoding": report.encoding,
                   "model": sess.model_name, "cache_dir": str(sess.cache_dir),
                   "seconds": round(report.seconds, 3), "modules": rows, "ranked": list(report.ranked)})
        return
    computed = [r for r in rows if r["status"] == "computed"]
    reused = [r for r in rows if r["status"] == "reused"]
    for r in rows:
        write_err(f"{r['status']:>8}  {r['module']:<32} {r['tokens']:>6} tokens {r['bytes'] / 1e6:8.2f} MB")
    write_err(
        f"compiled '{report.schema}': {len(computed)} computed, {len(reused)} reused; "
        f"{_tokens_total(report, rows):,} tokens, {report.seconds:.1f} s, "
        f"{'prefix mode' if report.encoding == 'prefix' else report.encoding}"
    )
    if ranked:
        write_err(f"recompute scores: {len(report.ranked)} module(s) measured now, the others already had them")


def _tokens_total(report, rows: list[dict]) -> int:
    """Tokens a compile covers: module lengths add up; prefix states are nested prefixes."""
    if report.encoding == "prefix":
        return max((r["tokens"] for r in rows), default=0)
    return sum(r["tokens"] for r in rows)


def inspect(
    schema_arg: Optional[str] = SchemaArg,
    schema: Optional[str] = SchemaOpt,
    files: list[str] = FileOpt,
    system: Optional[str] = SystemOpt,
    as_json: bool = JsonOpt,
    model: Optional[str] = ModelOpt,
) -> None:
    from ..api import inspect_schema

    path = schema_path(schema_arg, schema, "inspect", required=not files)
    sch = schema_for(path, files, system, "inspect", read_stdin)
    lo = inspect_schema(sch, model=model)
    rows = [
        {"name": e.name or e.kind, "kind": e.kind, "path": "/".join(e.path), "offset": e.offset,
         "length": e.length, "source": e.source, "depth": e.depth}
        | ({"cached": e.cached} if e.kind == "module" else {})
        for e in lo.elements
    ]
    if as_json:
        emit_json({"schema": lo.schema, "model": lo.model, "family": lo.family, "memory": lo.memory,
                   "mode": lo.mode, "length": lo.length, "elements": rows})
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"schema '{lo.schema}': {lo.length} positions ({lo.model}: {lo.family}, {lo.memory} memory, "
                    f"{lo.mode} mode)")
    for col in ("offset", "length", "kind", "name", "source"):
        t.add_column(col, justify="right" if col in ("offset", "length") else "left")
    for r in rows:
        name = r["name"] + (" (uncached)" if r.get("cached") is False else "")
        t.add_row(str(r["offset"]), str(r["length"]), r["kind"], "  " * r["depth"] + name, r["source"])
    Console().print(t)

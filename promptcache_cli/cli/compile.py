"""`pc compile` (precompute a schema's states) and `pc inspect` (show its layout)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import CacheOpt, JsonOpt, ModelOpt, emit_json, option_parser, parse_size, write_err
from .options import (CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, KvType, KvTypeOpt, Mode,
                      ModeOpt, check_refresh, open_session, progress_bar)


def compile(
    schema: str = typer.Argument(..., help="Schema file (PML)."),
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = CacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    checkpoint_bytes: Optional[int] = typer.Option(
        None, "--checkpoint-bytes", parser=option_parser(parse_size), metavar="SIZE",
        help="Prefix mode: keep no more checkpoints than fit in SIZE (500M, 2G, bytes).",
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even the modules already cached."),
    ranked: bool = typer.Option(
        False, "--ranked", help="Also store each module's recompute scores for `pc ask --refresh` "
        "(one more prefill of every module)."),
    as_json: bool = JsonOpt,
) -> None:
    """Precompute every module's attention states (or the default prompt's prefix states) and store them."""
    from ..api import load_schema

    sch = load_schema(schema)
    check_refresh(ranked, "--ranked", kv_type, mode)
    sess = open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, checkpoint_bytes)
    check_refresh(ranked, "--ranked", kv_type, Mode(sess.mode))
    bar, update = progress_bar(not as_json)
    with bar:
        report = sess.compile(sch, force=force, progress=update, ranked=ranked)
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
        write_err(f"{r['status']:>8}  {r['module']:<32} {r['tokens']:>6} tokens  {r['bytes'] / 1e6:8.2f} MB")
    write_err(
        f"compiled '{report.schema}': {len(computed)} computed, {len(reused)} reused, "
        f"{_tokens_total(report, rows)} tokens in {report.seconds:.2f} s "
        f"({'prefix mode' if report.encoding == 'prefix' else report.encoding + ' encoding'})"
    )
    if ranked:
        write_err(f"recompute scores: {len(report.ranked)} module(s) measured now, the others already had them")


def _tokens_total(report, rows: list[dict]) -> int:
    """Tokens a compile covers: module lengths add up; prefix states are nested prefixes."""
    if report.encoding == "prefix":
        return max((r["tokens"] for r in rows), default=0)
    return sum(r["tokens"] for r in rows)


def inspect(
    schema: str = typer.Argument(..., help="Schema file (PML)."),
    model: Optional[str] = ModelOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print the schema's layout: every element's offset and token length. Computes no states."""
    from ..api import inspect_schema, load_schema

    sch = load_schema(schema)
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

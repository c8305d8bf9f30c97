"""`pc compile` (precompute a schema's states) and `pc inspect` (show its layout)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import CacheOpt, JsonOpt, ModelOpt, RemoteOpt, emit_json, option_parser, parse_size, write_err
from .options import (CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, KvType, KvTypeOpt, Mode,
                      ModeOpt, check_refresh, open_session, progress_bar)


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 0 <= K < N (a Kubernetes indexed Job's $JOB_COMPLETION_INDEX is K)."""
    import re

    m = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text)
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f"'{text}' is not a shard: give K/N with 0 <= K < N, like 0/4 ... 3/4")
    return int(m[1]), int(m[2])


def compile(
    schemas: list[str] = typer.Argument(..., metavar="SCHEMA...", help="Schema files (PML), or folders of *.xml."),
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
    shard_text: Optional[str] = typer.Option(
        None, "--shard", metavar="K/N",
        help="Compute only share K of N (0 <= K < N) of the modules, split by their keys: N jobs with "
        "K = 0 ... N-1 over the same schemas and --remote compute every module once between them."),
    remote: Optional[str] = RemoteOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Precompute every module's attention states (or the default prompt's prefix states) and store them.

    With --remote, modules the store holds are skipped and computed ones are uploaded."""
    import time

    from ..api import load_schema

    t0 = time.perf_counter()
    shard = option_parser(parse_shard)(shard_text) if shard_text is not None else None
    files = _schema_files(schemas)
    loaded = [load_schema(f) for f in files]  # every schema is checked before any work
    check_refresh(ranked, "--ranked", kv_type, mode)
    sess = open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, checkpoint_bytes,
                        remote=remote)
    check_refresh(ranked, "--ranked", kv_type, Mode(sess.mode))
    out = []
    for sch in loaded:
        bar, update = progress_bar(not as_json)
        with bar:
            report = sess.compile(sch, force=force, progress=update, ranked=ranked, shard=shard)
        out.append(_report(sess, report, as_json=as_json, ranked=ranked))
    if as_json:
        if len(schemas) == 1 and len(files) == 1 and files[0] == schemas[0]:
            emit_json(out[0])
        else:
            down, up = sess.remote_bytes
            emit_json({"schemas": out, "shard": f"{shard[0]}/{shard[1]}" if shard else None, "remote": sess.remote,
                       "uploaded_bytes": up, "seconds": round(time.perf_counter() - t0, 3)})
    elif len(loaded) > 1:
        write_err(f"compiled {len(loaded)} schemas in {time.perf_counter() - t0:.2f} s")


def _schema_files(args: list[str]) -> list[str]:
    """The schema files named, a folder standing for its *.xml files (sorted)."""
    import os
    from pathlib import Path

    from .. import errors

    files: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(str(p) for p in Path(arg).glob("*.xml") if p.is_file())
            if not found:
                raise errors.InputError(f"{arg}: a folder with no schema files (*.xml)")
            files += found
        else:
            files.append(arg)
    return list(dict.fromkeys(files))


def _report(sess, report, *, as_json: bool, ranked: bool) -> dict:
    """Render one schema's compile report on stderr; its JSON object."""
    rows = [
        {"module": m.name, "status": m.status, "tokens": m.tokens, "bytes": m.bytes,
         "seconds": round(m.seconds, 3), "key": m.key, **({"uploaded": m.uploaded} if report.remote else {})}
        for m in report.modules
    ]
    for w in report.warnings:
        write_err(f"warning: {w}")
    obj = {"schema": report.schema, "mode": sess.mode, "encoding": report.encoding,
           "model": sess.model_name, "cache_dir": str(sess.cache_dir),
           "seconds": round(report.seconds, 3), "modules": rows, "ranked": list(report.ranked),
           "warnings": list(report.warnings)}
    if report.remote:
        obj["remote"] = report.remote
    if as_json:
        return obj
    computed = [r for r in rows if r["status"] == "computed"]
    reused = [r for r in rows if r["status"] == "reused"]
    for r in rows:
        mark = "  uploaded" if r.get("uploaded") else ""
        write_err(f"{r['status']:>11}  {r['module']:<32} {r['tokens']:>6} tokens  {r['bytes'] / 1e6:8.2f} MB{mark}")
    elsewhere = ""
    if report.remote or any(r["status"] == "other shard" for r in rows):
        n_store = sum(r["status"] == "remote" for r in rows)
        n_other = sum(r["status"] == "other shard" for r in rows)
        n_up = sum(bool(r.get("uploaded")) for r in rows)
        elsewhere = (f", {n_store} in the store, {n_other} in other shards" if n_other else
                     f", {n_store} in the store") + (f"; {n_up} uploaded to {report.remote}" if report.remote else "")
    write_err(
        f"compiled '{report.schema}': {len(computed)} computed, {len(reused)} reused{elsewhere}, "
        f"{_tokens_total(report, rows)} tokens in {report.seconds:.2f} s "
        f"({'prefix mode' if report.encoding == 'prefix' else report.encoding + ' encoding'})"
    )
    if ranked:
        write_err(f"recompute scores: {len(report.ranked)} module(s) measured now, the others already had them")
    return obj


def _tokens_total(report, rows: list[dict]) -> int:
    """Tokens a compile covers: module lengths add up; prefix states are nested prefixes."""
    here = [r for r in rows if r["status"] in ("computed", "reused")]
    if report.encoding == "prefix":
        return max((r["tokens"] for r in here), default=0)
    return sum(r["tokens"] for r in here)


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

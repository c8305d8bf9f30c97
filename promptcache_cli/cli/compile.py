"""`pc compile` (precompute a schema's states) and `pc inspect` (show its layout)."""

from __future__ import annotations

from typing import Optional

import typer

from .. import errors
from .common import CacheOpt, JsonOpt, ModelOpt, RemoteOpt, emit_json, option_parser, parse_size, write_err
from .options import (CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, FileOpt, KvType, KvTypeOpt,
                      Mode, ModeOpt, SchemaOpt, SystemOpt, ThreadsOpt, check_refresh, open_session, progress_bar,
                      read_stdin, schema_for, schema_path)

COMPILE_HELP = """Compute and store the states of a schema's modules (or of text files, -f) not
cached yet; then `pc ask` answers from the cache.

\b
  pc compile schemas/gpl-manual.xml       (or -s schemas/gpl-manual.xml)
  pc compile -f notes.txt
  pc compile schemas/ --remote s3://team/pc   (every *.xml, shared)

More options (--model, --encoding, --compression, --kv-type, --mode, --checkpoints):
docs/usage.md#pc-compile"""

INSPECT_HELP = """Show a schema's layout: every element's offset and token length; computes nothing.

\b
  pc inspect schemas/licenses.xml
  pc inspect -f notes.txt --json

More: docs/usage.md#pc-inspect"""

SchemaArg = typer.Argument(None, metavar="[SCHEMA]", show_default=False, hidden=True)  # as -s SCHEMA
SchemasArg = typer.Argument(None, metavar="[SCHEMA...]", show_default=False, hidden=True)  # files or folders


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 0 <= K < N (a Kubernetes indexed Job's $JOB_COMPLETION_INDEX is K)."""
    import re

    m = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text)
    if not m or not int(m[1]) < int(m[2]):
        raise ValueError(f"'{text}' is not a shard: give K/N with 0 <= K < N, like 0/4 ... 3/4")
    return int(m[1]), int(m[2])


def compile(
    schemas: Optional[list[str]] = SchemasArg,
    schema: Optional[str] = SchemaOpt,
    files: list[str] = FileOpt,
    system: Optional[str] = SystemOpt,
    force: bool = typer.Option(False, "--force", help="Recompute what is cached too."),
    ranked: bool = typer.Option(
        False, "--ranked", help="Also store recompute scores (for pc ask --refresh)."),
    shard_text: Optional[str] = typer.Option(
        None, "--shard", metavar="K/N", hidden=True,
        help="Compute only share K of N (0 <= K < N) of the modules, split by their keys: N jobs with "
        "K = 0 ... N-1 over the same schemas and --remote compute every module once between them."),
    remote: Optional[str] = RemoteOpt,
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
    import time

    from ..api import load_schema

    t0 = time.perf_counter()
    shard = option_parser(parse_shard)(shard_text) if shard_text is not None else None
    named = list(schemas or []) + ([schema] if schema else [])
    if files:  # -f FILE: one schema made of the files
        if named:
            raise errors.UsageError("-f FILE and -s SCHEMA are two ways to give the context: use one")
        loaded = [schema_for(None, files, system, "compile", read_stdin)]
        paths = named = ["-f"]
    else:
        if system is not None:
            raise errors.UsageError("--system goes with -f FILE (a schema has its own system prompt)")
        if not named:
            raise errors.UsageError("pc compile needs -f FILE (a text file) or -s SCHEMA (see `pc compile --help`)")
        paths = _schema_files(named)
        loaded = [load_schema(f) for f in paths]  # every schema is checked before any work
    check_refresh(ranked, "--ranked", kv_type, mode)
    sess = open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, checkpoint_bytes,
                        threads=threads, remote=remote)
    check_refresh(ranked, "--ranked", kv_type, Mode(sess.mode))
    out = []
    for sch in loaded:
        # why states are computed: said when computing starts (an error before that is one line)
        reasons = [] if force else [r for r in (sess.stale(sch).reason,) if r]
        with progress_bar(not as_json) as bar:

            def progress(done: int, total: int, name: str, bar=bar, reasons=reasons) -> None:
                while reasons:
                    write_err(reasons.pop())
                if bar.update is not None:
                    bar.update(done, total, name)

            report = sess.compile(sch, force=force, progress=progress, ranked=ranked, shard=shard)
        if reasons and any(m.status == "computed" for m in report.modules):  # computed without a progress report
            write_err(reasons.pop())
        out.append(_report(sess, report, as_json=as_json, ranked=ranked))
    if as_json:
        if len(named) == 1 and paths == named:
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
    width = max([8] + [len(r["status"]) for r in rows])  # "other shard" and "remote" rows widen it
    for r in rows:
        mark = "  uploaded" if r.get("uploaded") else ""
        write_err(f"{r['status']:>{width}}  {r['module']:<32} {r['tokens']:>6} tokens {r['bytes'] / 1e6:8.2f} MB{mark}")
    elsewhere = ""
    if report.remote or any(r["status"] == "other shard" for r in rows):
        n_store = sum(r["status"] == "remote" for r in rows)
        n_other = sum(r["status"] == "other shard" for r in rows)
        n_up = sum(bool(r.get("uploaded")) for r in rows)
        elsewhere = (f", {n_store} in the store, {n_other} in other shards" if n_other else
                     f", {n_store} in the store") + (f"; {n_up} uploaded to {report.remote}" if report.remote else "")
    write_err(
        f"compiled '{report.schema}': {len(computed)} computed, {len(reused)} reused{elsewhere}; "
        f"{_tokens_total(report, rows):,} tokens, {report.seconds:.1f} s, "
        f"{'prefix mode' if report.encoding == 'prefix' else report.encoding}"
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

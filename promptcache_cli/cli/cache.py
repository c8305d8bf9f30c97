"""`pc ls`, `pc verify`, `pc gc`, `pc rm` and `pc path`: rendering what the library reports about the
cache directory (store/admin.py). Registered in app.py; the library is imported when a command
runs, so `pc` starts fast.
"""

from __future__ import annotations

from typing import Optional

import typer

from .. import errors
from .common import (CacheOpt, JsonOpt, RemoteSideOpt, cache_root, emit_json, option_parser, parse_age, parse_size,
                     resolve_remote, write_err, write_out)


def _iso(ts: Optional[float]) -> Optional[str]:
    from datetime import datetime

    return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _when(ts: Optional[float]) -> str:
    return (_iso(ts) or "")[:16].replace("T", " ")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _file_json(f) -> dict:
    out = {"path": str(f.path), "key": f.key or None, "bytes": f.bytes, "last_used": _iso(f.last_used)}
    if f.position is not None:  # a prefix state
        out["position"] = f.position
    return out


def _note_json(n) -> dict:
    return {"kind": n.kind, **_file_json(n.file), "reason": n.reason}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _freed(report) -> int:
    return sum(n.file.bytes for n in report.removed)


def _ratio(r: Optional[float]) -> Optional[float]:
    return None if r is None else round(r, 3)


def _variant_json(v) -> dict:
    out = {"model": v.model, "family": v.family, "memory": v.memory, "mode": v.mode, "encoding": v.encoding,
           "codec": v.codec, "llama_cpp": v.llama_cpp,
           "modules": [{"name": m.name, "key": m.key or None, "tokens": m.tokens, "bytes": m.bytes,
                        "ratio": _ratio(m.ratio), "last_used": _iso(m.last_used), "present": m.present}
                       | ({} if m.cached else {"cached": False}) for m in v.modules]}
    if v.mode == "prefix":
        out.update(key=v.key, tokens=v.tokens, states=[
            {"position": st.position, "tokens": st.tokens, "bytes": st.bytes, "ratio": _ratio(st.ratio),
             "last_used": _iso(st.last_used), "partial": st.partial, "path": str(st.path)} for st in v.states])
    return out


def _ls_rows(listing):
    """(schema, name, tokens, size, ratio, last used, variant) per module file or prefix state."""
    for s in listing.schemas:
        for v in s.variants:
            how = f"{v.model}{f' ({v.family}, {v.memory})' if v.family else ''} · {v.encoding} · {v.codec}"
            for m in v.modules:
                size = _size(m.bytes) if m.present else "missing" if m.cached else "uncached"
                yield (s.schema, m.name, str(m.tokens), size,
                       f"{m.ratio:.2f}x" if m.ratio else "", _when(m.last_used), how)
            for st in v.states:
                yield (s.schema, f"prefix@{st.position}{' (partial)' if st.partial else ''}",
                       str(st.tokens if st.tokens is not None else st.position), _size(st.bytes),
                       f"{st.ratio:.2f}x" if st.ratio else "", _when(st.last_used), how)
            if v.mode == "prefix" and not v.states:
                yield s.schema, "prefix", str(v.tokens or ""), "missing", "", "", how
    for f in listing.orphans:
        name = f.key[:16] if f.position is None else f"{f.key[:16]}@{f.position}"
        yield "(no schema)", name, "", _size(f.bytes), "", _when(f.last_used), ""


def ls_cmd(cache_dir: Optional[str] = CacheOpt, remote: Optional[str] = RemoteSideOpt, as_json: bool = JsonOpt) -> None:
    """List the cached schemas and their module files or prefix states.

    Per file: tokens, size on disk, compression ratio, last use. With --remote: the store's files and the
    schemas its manifests name, with upload times."""
    if remote is not None:
        from .remote_cache import ls_remote

        return ls_remote(resolve_remote(remote, required=True), as_json)
    from ..api import list_cache

    root = cache_root(cache_dir)
    listing = list_cache(root)
    if as_json:
        emit_json({
            "cache_dir": str(root),
            "schemas": [{"schema": s.schema, "path": s.path, "variants": [_variant_json(v) for v in s.variants]}
                        for s in listing.schemas],
            "orphans": [_file_json(f) for f in listing.orphans],
            "total_bytes": listing.total_bytes,
        })
        return
    if not listing.schemas and not listing.orphans:
        write_err(f"the cache {root} holds no cache files")
        return
    from rich.console import Console
    from rich.table import Table

    n_files = len({m.key for s in listing.schemas for v in s.variants for m in v.modules if m.present})
    n_files += sum(f.position is None for f in listing.orphans)
    n_states = len({st.path for s in listing.schemas for v in s.variants for st in v.states})
    n_states += sum(f.position is not None for f in listing.orphans)
    t = Table(title=f"{root}: {_count(n_files, 'module file')}, {_count(n_states, 'prefix state')}, "
                    f"{_size(listing.total_bytes)}")
    columns = ("schema", "module", "tokens", "size", "ratio", "last used", "model (family, memory) · encoding · codec")
    for col in columns:
        t.add_column(col, justify="right" if col in ("tokens", "size", "ratio") else "left")
    for row in _ls_rows(listing):
        t.add_row(*row)
    console = Console(markup=False, highlight=False)  # names and paths are shown as they are
    if not console.is_terminal:
        console = Console(markup=False, highlight=False, width=200)
    console.print(t)


def verify_cmd(cache_dir: Optional[str] = CacheOpt, remote: Optional[str] = RemoteSideOpt,
               as_json: bool = JsonOpt) -> None:
    """Read every cache file whole and check every checksum; exit 5 if any is damaged.

    With --remote: download each of the store's files into a temporary file in the cache directory and check
    it the same way."""
    if remote is not None:
        from .remote_cache import verify_remote

        return verify_remote(resolve_remote(remote, required=True), cache_dir, as_json)
    from ..api import verify_cache

    root = cache_root(cache_dir)
    report = verify_cache(root)
    if as_json:
        emit_json({
            "cache_dir": str(root), "checked": report.checked, "ok": not report.damaged,
            "damaged": [{"kind": d.kind, **_file_json(d.file), "reason": d.reason} for d in report.damaged],
            "stale_temporary": [{"path": str(f.path), "bytes": f.bytes} for f in report.stale_temporary],
        })
    else:
        for d in report.damaged:
            write_out(f"damaged   {d.file.path}: {d.reason}\n")
        for f in report.stale_temporary:
            write_out(f"leftover  {f.path} ({_size(f.bytes)}, a temporary file older than an hour; "
                      "`pc gc` removes it)\n")
    if report.damaged:
        write_err(f"pc: {len(report.damaged)} of {_count(report.checked, 'cache file')} damaged "
                  "(`pc ask` recomputes a damaged module or prefix state when it needs it)")
        raise typer.Exit(errors.EXIT_CACHE)
    if not as_json:
        write_err(f"{_count(report.checked, 'cache file')} intact in {root}")


def gc_cmd(
    max_size: Optional[int] = typer.Option(
        None, "--max-size", parser=option_parser(parse_size), metavar="SIZE",
        help="Remove least recently used module files and prefix states until they take at most SIZE "
        "(500M, 2G, 1.5GB, bytes).",
    ),
    older_than: Optional[float] = typer.Option(
        None, "--older-than", parser=option_parser(parse_age), metavar="AGE",
        help="Remove module files and prefix states not used for longer than AGE (30d, 12h, 90m, 2w).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    cache_dir: Optional[str] = CacheOpt,
    remote: Optional[str] = RemoteSideOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Evict module files and prefix states by last use; also remove stale temporary and lock files.

    With --remote: delete the store's files by upload time (the store keeps no last use), then manifests
    naming none left."""
    from ..api import collect_garbage

    if max_size is None and older_than is None:
        write_err("pc: gc needs --max-size SIZE or --older-than AGE, or both (see `pc gc --help`)")
        raise typer.Exit(errors.EXIT_USAGE)
    if remote is not None:
        from .remote_cache import gc_remote

        return gc_remote(resolve_remote(remote, required=True), max_size, older_than, dry_run, as_json)
    root = cache_root(cache_dir)
    report = collect_garbage(root, max_size=max_size, older_than=older_than, dry_run=dry_run)
    if as_json:
        emit_json({
            "cache_dir": str(root), "dry_run": dry_run, "removed": [_note_json(n) for n in report.removed],
            "skipped": [_note_json(n) for n in report.skipped], "bytes_freed": _freed(report),
            "total_before": report.total_before, "total_after": report.total_after,
        })
        return
    verb = "would remove" if dry_run else "removed"
    for n in report.removed:
        write_err(f"{verb}  {n.file.path}  {_size(n.file.bytes)}  ({n.reason})")
    for n in report.skipped:
        write_err(f"kept  {n.file.path}  ({n.reason})")
    write_err(f"{'would free' if dry_run else 'freed'} {_size(_freed(report))} "
              f"in {_count(len(report.removed), 'file')}; "
              f"cache files {'would ' if dry_run else ''}take {_size(report.total_after)}")


def rm_cmd(
    schema: str = typer.Argument(..., help="The schema: its file's path, or its name as `pc ls` shows it."),
    cache_dir: Optional[str] = CacheOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Remove a schema from the cache, with the files no other schema uses.

    That is its manifest, its overlap record, and its module files and prefix states."""
    from ..api import remove_schema

    root = cache_root(cache_dir)
    report = remove_schema(root, schema)
    if as_json:
        emit_json({
            "cache_dir": str(root), "schema": report.schema, "path": report.path, "manifest": str(report.manifest),
            "removed": [_note_json(n) for n in report.removed], "skipped": [_note_json(n) for n in report.skipped],
            "kept": [{"name": name, "key": key} for name, key in report.kept], "bytes_freed": _freed(report),
        })
        return
    for n in report.skipped:
        write_err(f"kept  {n.file.path}  ({n.reason})")
    n_modules, n_states = (sum(n.kind == kind for n in report.removed) for kind in ("module", "prefix"))
    write_err(f"removed schema '{report.schema}': {_count(n_modules, 'module file')}, "
              f"{_count(n_states, 'prefix state')}, {_size(_freed(report))} freed; "
              f"kept {len(report.kept)} used by other schemas")


def path_cmd(cache_dir: Optional[str] = CacheOpt) -> None:
    """Print the cache directory."""
    write_out(f"{cache_root(cache_dir)}\n")

"""`pc ls`, `pc verify`, `pc gc`, `pc rm` and `pc path`: rendering what the library reports about the
cache directory (store/admin.py). Registered in app.py; the library is imported when a command
runs, so `pc` starts fast.
"""

from __future__ import annotations

from typing import Optional

import typer

from .. import errors
from .common import (CacheOpt, JsonOpt, RemoteSideOpt, cache_root, emit_json, one_line, option_parser,
                     parse_age, parse_size, resolve_remote, write_err, write_out)
from .options import SchemaOpt, schema_path

LS_HELP = """List the cached schemas and files: per module, tokens, size, last use.

\b
  pc ls
  pc ls --json

Modules a schema declares but no compile or question needed yet show as "not built".
--remote: the remote store's files instead. More: docs/usage.md#managing-the-cache"""

VERIFY_HELP = """Read every cache file whole and check every checksum; exit 5 if any is damaged.

\b
  pc verify

Damaged files are named with the schema and module they hold; `pc ask` recomputes them when it
needs them. --remote: the remote store's files (each downloaded to a temporary file).
More: docs/usage.md#managing-the-cache"""

GC_HELP = """Remove cache files: unused ones (--orphans), old ones, least recently used ones.

\b
  pc gc --orphans            # files no schema uses any more (after edits)
  pc gc --max-size 2G --dry-run

Also removes stale temporary and lock files. --remote: the remote store's files, by upload
time. More: docs/usage.md#managing-the-cache"""

RM_HELP = """Remove a schema from the cache, with the files no other schema uses. SCHEMA (or
-s SCHEMA): its file, or its name as `pc ls` shows it.

\b
  pc rm schemas/licenses.xml
  pc rm -s licenses

More: docs/usage.md#managing-the-cache"""

PATH_HELP = """Print the cache folder ($PC_CACHE_DIR, else the user's cache folder).

\b
  pc path
  du -sh "$(pc path)"

More: docs/usage.md#managing-the-cache"""


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


NAME_WIDTH = 30  # the module column of `pc ls`: the table fits 80 columns


def _where(path: Optional[str]) -> str:
    """A schema file's path as `pc ls` shows it: relative to the working folder when inside it."""
    import os

    if not path:
        return "no schema file: pc ask -f or the Python API"
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def _ls_lines(listing) -> list[str]:
    """`pc ls` as text lines of at most 80 columns: per schema, its file and, per variant (model,
    encoding, codec: once), one row per module file or prefix state."""
    head = f"  {'module':<{NAME_WIDTH}} {'tokens':>7} {'size':>9} {'ratio':>6}  last used"
    out: list[str] = []
    for s in listing.schemas:
        out += ["", _fit(f"{s.schema}  ({_where(s.path)})", 80)]
        for v in s.variants:
            codec = "no compression" if v.codec == "none" else f"{v.codec} compression"
            kind = "prefix mode" if v.mode == "prefix" else f"{v.encoding} encoding"
            model = f"{v.model}{f' ({v.family}, {v.memory})' if v.family else ''}"
            line = f"  {model}, {kind}, {codec}"
            out += [line, head] if len(line) <= 80 else [_fit(f"  {model}", 80), f"  {kind}, {codec}", head]
            for m in v.modules:
                size = _size(m.bytes) if m.present else "not built" if m.cached else "uncached"
                ratio = f"{m.ratio:.2f}x" if m.ratio else ""
                out.append(f"  {_fit(m.name, NAME_WIDTH):<{NAME_WIDTH}} {m.tokens:>7} {size:>9} {ratio:>6}  "
                           f"{_when(m.last_used)}".rstrip())
            for st in v.states:
                name = f"prefix@{st.position}{' (partial)' if st.partial else ''}"
                tokens = st.tokens if st.tokens is not None else st.position
                ratio = f"{st.ratio:.2f}x" if st.ratio else ""
                out.append(f"  {_fit(name, NAME_WIDTH):<{NAME_WIDTH}} {tokens:>7} {_size(st.bytes):>9} {ratio:>6}  "
                           f"{_when(st.last_used)}".rstrip())
            if v.mode == "prefix" and not v.states:
                out.append(f"  {'prefix':<{NAME_WIDTH}} {v.tokens or '':>7} {'not built':>9}")
    if listing.orphans:
        size = _size(sum(f.bytes for f in listing.orphans))
        out += ["", f"no schema uses these ({size}; `pc gc --orphans` removes them)", head]
        for f in listing.orphans:
            name = f.key[:16] if f.position is None else f"{f.key[:16]}@{f.position}"
            out.append(f"  {name:<{NAME_WIDTH}} {'':>7} {_size(f.bytes):>9} {'':>6}  {_when(f.last_used)}".rstrip())
    return out


def ls_cmd(cache_dir: Optional[str] = CacheOpt, remote: Optional[str] = RemoteSideOpt, as_json: bool = JsonOpt) -> None:
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
    n_files = len({m.key for s in listing.schemas for v in s.variants for m in v.modules if m.present})
    n_files += sum(f.position is None for f in listing.orphans)
    n_states = len({st.path for s in listing.schemas for v in s.variants for st in v.states})
    n_states += sum(f.position is not None for f in listing.orphans)
    states = f", {_count(n_states, 'prefix state')}" if n_states else ""
    head = f"{root}: {_count(n_files, 'module file')}{states}, {_size(listing.total_bytes)}"
    lines = [_fit(head, 80)] + _ls_lines(listing)  # a long cache path is cut at its start
    write_out("\n".join(lines) + "\n")


def _names(root) -> dict:
    from ..api import cache_names

    try:
        return cache_names(root)
    except OSError:
        return {}


def _label(f, names: dict) -> str:
    """What a cache file holds (``schema/module``), else what it is."""
    got = names.get(f.key)
    if got:
        return ", ".join(got[:2]) + (f" (+{len(got) - 2})" if len(got) > 2 else "")
    return "prefix state of no schema" if f.position is not None else "module of no schema"


def _rel(path, root) -> str:
    from pathlib import Path

    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def verify_cmd(cache_dir: Optional[str] = CacheOpt, remote: Optional[str] = RemoteSideOpt,
               as_json: bool = JsonOpt) -> None:
    if remote is not None:
        from .remote_cache import verify_remote

        return verify_remote(resolve_remote(remote, required=True), cache_dir, as_json)
    from ..api import verify_cache

    root = cache_root(cache_dir)
    report = verify_cache(root)
    names = _names(root) if report.damaged else {}
    if as_json:
        emit_json({
            "cache_dir": str(root), "checked": report.checked, "ok": not report.damaged,
            "damaged": [{"kind": d.kind, **_file_json(d.file), "reason": d.reason,
                         "holds": list(names.get(d.file.key, ()))} for d in report.damaged],
            "stale_temporary": [{"path": str(f.path), "bytes": f.bytes} for f in report.stale_temporary],
            "links": [str(p) for p in report.links],
        })
    else:
        for d in report.damaged:
            write_out(f"damaged   {_label(d.file, names)}  {d.file.path}: {d.reason}\n")
        for f in report.stale_temporary:
            write_out(f"leftover  {f.path} ({_size(f.bytes)}, a temporary file older than an hour; "
                      "`pc gc` removes it)\n")
        for p in report.links:
            write_out(f"link      {one_line(str(p))}: a symbolic link inside the cache; pc never follows it "
                      "nor removes it\n")
    if report.damaged:
        write_err(f"pc: {len(report.damaged)} of {_count(report.checked, 'cache file')} damaged "
                  "(`pc ask` recomputes a damaged module or prefix state when it needs it)")
        raise typer.Exit(errors.EXIT_CACHE)
    if not as_json:
        write_err(f"{_count(report.checked, 'cache file')} intact in {root}")


def gc_cmd(
    orphans: bool = typer.Option(False, "--orphans", help="Remove the files no schema uses any more."),
    max_size: Optional[int] = typer.Option(
        None, "--max-size", parser=option_parser(parse_size), metavar="SIZE",
        help="Remove least recently used files down to SIZE (500M, 2G).",
    ),
    older_than: Optional[float] = typer.Option(
        None, "--older-than", parser=option_parser(parse_age), metavar="AGE",
        help="Remove files unused for longer than AGE (30d, 12h, 90m).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    grace: Optional[float] = typer.Option(
        None, "--grace", parser=option_parser(parse_age), metavar="AGE",
        help="Leave files used in the last AGE alone (default 60s): an ask may be about to read them. "
        "With --remote: files uploaded in the last AGE (default none).",
    ),
    cache_dir: Optional[str] = CacheOpt,
    remote: Optional[str] = RemoteSideOpt,
    as_json: bool = JsonOpt,
) -> None:
    from ..api import collect_garbage

    if max_size is None and older_than is None and not orphans:
        write_err("pc: gc needs --orphans, --max-size SIZE or --older-than AGE (see `pc gc --help`)")
        raise typer.Exit(errors.EXIT_USAGE)
    if remote is not None:
        if orphans:
            raise errors.UsageError("--orphans works on the cache directory; with --remote, use --max-size or "
                                    "--older-than")
        from .remote_cache import gc_remote

        return gc_remote(resolve_remote(remote, required=True), max_size, older_than, dry_run, as_json, grace)
    root = cache_root(cache_dir)
    names = _names(root)  # before removing: what each file held
    report = collect_garbage(root, max_size=max_size, older_than=older_than, dry_run=dry_run, orphans=orphans,
                             grace=grace)
    if as_json:
        emit_json({
            "cache_dir": str(root), "dry_run": dry_run,
            "removed": [{**_note_json(n), "holds": list(names.get(n.file.key, ()))} for n in report.removed],
            "skipped": [{**_note_json(n), "holds": list(names.get(n.file.key, ()))} for n in report.skipped],
            "bytes_freed": _freed(report), "total_before": report.total_before, "total_after": report.total_after,
        })
        return
    verb = "would remove" if dry_run else "removed"
    for n in report.removed:
        what = _label(n.file, names) if n.kind in ("module", "prefix") else n.kind + " file"
        write_err(f"{verb}  {what}  {_rel(n.file.path, root)}  {_size(n.file.bytes)}  ({n.reason})")
    for n in report.skipped:
        write_err(f"kept  {_label(n.file, names)}  {_rel(n.file.path, root)}  ({n.reason})")
    write_err(f"{'would free' if dry_run else 'freed'} {_size(_freed(report))} "
              f"in {_count(len(report.removed), 'file')}; "
              f"cache files {'would ' if dry_run else ''}take {_size(report.total_after)}")


def rm_cmd(
    schema_arg: Optional[str] = typer.Argument(None, metavar="[SCHEMA]", show_default=False, hidden=True),
    schema: Optional[str] = SchemaOpt,
    cache_dir: Optional[str] = CacheOpt,
    as_json: bool = JsonOpt,
) -> None:
    from ..api import remove_schema

    root = cache_root(cache_dir)
    report = remove_schema(root, schema_path(schema_arg, schema, "rm"))
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
    write_out(f"{cache_root(cache_dir)}\n")

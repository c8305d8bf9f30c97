"""`pc ls --remote`, `pc verify --remote` and `pc gc --remote`: rendering what the library reports
about the remote store (store/remote_admin.py). Called from cache.py when --remote is given."""

from __future__ import annotations

from typing import Optional

import typer

from .. import errors
from .common import cache_root, emit_json, write_err, write_out


def _iso(ts: Optional[float]) -> Optional[str]:
    from datetime import datetime

    return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _file_json(f) -> dict:
    out = {"object": f.rel, "key": f.key or None, "bytes": f.bytes, "uploaded": _iso(f.uploaded)}
    if f.position is not None:
        out["position"] = f.position
    return out


def _note_json(n) -> dict:
    return {"kind": n.kind, **_file_json(n.file), "reason": n.reason}


def ls_remote(url: str, as_json: bool) -> None:
    from ..api import list_remote

    listing = list_remote(url)
    if as_json:
        emit_json({
            "remote": listing.remote,
            "schemas": [{"schema": s.schema, "variants": [{
                "manifest": v.manifest, "model": v.model, "mode": v.mode, "encoding": v.encoding, "codec": v.codec,
                "llama_cpp": v.llama_cpp,
                "modules": [{"name": m.name, "key": m.key, "tokens": m.tokens, "present": m.file is not None,
                             "bytes": m.file.bytes if m.file else 0,
                             "uploaded": _iso(m.file.uploaded) if m.file else None} for m in v.modules],
                **({"key": v.key, "tokens": v.tokens, "states": [_file_json(st) for st in v.states]}
                   if v.mode == "prefix" else {}),
            } for v in s.variants]} for s in listing.schemas],
            "orphans": [_file_json(f) for f in listing.orphans],
            "others": [_file_json(f) for f in listing.others],
            "total_bytes": listing.total_bytes,
        })
        return
    if not listing.schemas and not listing.orphans:
        write_err(f"the store {listing.remote} holds no cache files")
        return
    from rich.console import Console
    from rich.table import Table

    n_files = len({m.key for s in listing.schemas for v in s.variants for m in v.modules if m.file})
    n_states = len({st.rel for s in listing.schemas for v in s.variants for st in v.states})
    t = Table(title=f"{listing.remote}: {n_files} module file(s), {n_states} prefix state(s), "
                    f"{len(listing.orphans)} without a manifest, {_size(listing.total_bytes)}")
    for col in ("schema", "module", "tokens", "size", "uploaded", "model · encoding · codec"):
        t.add_column(col, justify="right" if col in ("tokens", "size") else "left")
    for s in listing.schemas:
        for v in s.variants:
            how = f"{v.model} · {v.encoding} · {v.codec}"
            for m in v.modules:
                t.add_row(s.schema, m.name, str(m.tokens), _size(m.file.bytes) if m.file else "missing",
                          (_iso(m.file.uploaded) or "")[:16].replace("T", " ") if m.file else "", how)
            for st in v.states:
                t.add_row(s.schema, f"prefix@{st.position}", str(st.position), _size(st.bytes),
                          (_iso(st.uploaded) or "")[:16].replace("T", " "), how)
            if v.mode == "prefix" and not v.states:
                t.add_row(s.schema, "prefix", str(v.tokens or ""), "missing", "", how)
    for f in listing.orphans:
        name = f.key[:16] if f.position is None else f"{f.key[:16]}@{f.position}"
        t.add_row("(no manifest)", name, "", _size(f.bytes), (_iso(f.uploaded) or "")[:16].replace("T", " "), "")
    console = Console(markup=False, highlight=False)
    if not console.is_terminal:
        console = Console(markup=False, highlight=False, width=200)
    console.print(t)


def verify_remote(url: str, cache_dir: Optional[str], as_json: bool) -> None:
    from ..api import verify_remote as verify

    report = verify(url, cache_dir=cache_root(cache_dir))
    if as_json:
        emit_json({"remote": report.remote, "checked": report.checked, "ok": not report.damaged,
                   "damaged": [_note_json(n) for n in report.damaged]})
    else:
        for n in report.damaged:
            write_out(f"damaged   {report.remote}/{n.file.rel}: {n.reason}\n")
    if report.damaged:
        write_err(f"pc: {len(report.damaged)} of {report.checked} objects in {report.remote} damaged "
                  "(`pc ask` and `pc compile` recompute such a file and replace it in the store)")
        raise typer.Exit(errors.EXIT_CACHE)
    if not as_json:
        write_err(f"{report.checked} object(s) intact in {report.remote}")


def gc_remote(url: str, max_size: Optional[int], older_than: Optional[float], dry_run: bool, as_json: bool,
              grace: Optional[float] = None) -> None:
    from ..api import collect_remote_garbage

    report = collect_remote_garbage(url, max_size=max_size, older_than=older_than, dry_run=dry_run, grace=grace)
    freed = sum(n.file.bytes for n in report.removed)
    if as_json:
        emit_json({"remote": report.remote, "dry_run": dry_run, "removed": [_note_json(n) for n in report.removed],
                   "bytes_freed": freed, "total_before": report.total_before, "total_after": report.total_after})
        return
    verb = "would delete" if dry_run else "deleted"
    for n in report.removed:
        write_err(f"{verb}  {report.remote}/{n.file.rel}  {_size(n.file.bytes)}  ({n.reason})")
    write_err(f"{'would free' if dry_run else 'freed'} {_size(freed)} in {len(report.removed)} object(s); "
              f"cache files in the store {'would ' if dry_run else ''}take {_size(report.total_after)}")

"""The `pc` command: parse options, call the library, render. Answers go to stdout; progress,
warnings and timings to stderr; ``--json`` prints one object on stdout instead."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import errors

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Answer questions about long, reused context fast: compile a schema's modules into "
    "cached attention states once, then ask from the cache.",
)

ModelOpt = typer.Option(None, "--model", envvar="PC_MODEL", help="GGUF model file (default: SmolLM2-135M-Instruct).")
CacheOpt = typer.Option(None, "--cache-dir", envvar="PC_CACHE_DIR", help="Cache directory (default: user cache dir).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")


class Encoding(str, Enum):
    independent = "independent"
    scaffold = "scaffold"
    average = "average"


class Compression(str, Enum):
    none = "none"
    zstd = "zstd"


MAX_QUESTION_BYTES = 1 << 20


class Mode(str, Enum):
    auto = "auto"
    modular = "modular"
    prefix = "prefix"


class KvType(str, Enum):
    f16 = "f16"
    q8_0 = "q8_0"


class StdoutClosed(Exception):
    """stdout was closed by the reader (e.g. `| head -c 20`)."""


EncodingOpt = typer.Option(
    Encoding.scaffold, "--encoding",
    help="How modules are encoded: 'scaffold' (after the default prompt before it, or the first prompt "
    "the schema allows that repeats no text where the default one does), 'average' "
    "(the mean of the states after up to 8 prompts the schema allows before it, its unions switched "
    "member by member: measured closest to uncached answers; compiling took 3.8x and 7.9x as long on the "
    "benchmark's schemas) or 'independent' "
    "(after the shared prefix only; edits invalidate less).",
)
KvTypeOpt = typer.Option(
    KvType.f16, "--kv-type",
    help="KV cache type: f16, or q8_0 (about 1.9x smaller states, flash attention on).",
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
    "(f16 high bytes compressed: ~1.17x smaller, slower to load).",
)


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(message, markup=False)


def _session(model: Optional[str], cache_dir: Optional[str], encoding: Encoding, compression: Compression,
             kv_type: KvType, mode: Mode = Mode.auto, checkpoints: int = 4, checkpoint_bytes: int | None = None):
    from .cache_store import default_cache_dir
    from .llama_backend import ContextSettings
    from .models import resolve_model
    from .sessions import open_session

    if encoding == Encoding.average and kv_type != KvType.f16:
        raise errors.UsageError(f"--encoding average needs f16 KV states, not --kv-type {kv_type.value}")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    settings = ContextSettings.for_kv_type(kv_type.value)
    return open_session(resolve_model(model), cache_dir=root, mode=mode.value, encoding=encoding.value,
                        codec=compression.value, settings=settings, checkpoints=checkpoints,
                        checkpoint_bytes=checkpoint_bytes)


def _load_schema(path: str):
    from .pml import load_schema

    return load_schema(path)


class _ClosedStdoutGuard:
    """Wraps stdout so a reader that went away (EPIPE) raises StdoutClosed from any write: print,
    rich or streamed answers alike. Typer would turn a BrokenPipeError into exit 1."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise StdoutClosed() from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise StdoutClosed() from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _out(text: str) -> None:
    """Write to stdout now (answers stream token by token)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _emit_json(obj: dict) -> None:
    _out(json.dumps(obj, ensure_ascii=False) + "\n")


def _progress_bar(enabled: bool):
    """A rich progress bar on stderr (only on a terminal), as a (context manager, callback)."""
    from contextlib import nullcontext

    if not enabled or not sys.stderr.isatty():
        return nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} tokens"),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    )
    task = bar.add_task("compiling", total=None)

    def update(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done, total=total, description=f"compiling {name}")

    return bar, update


_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30,
               "ti": 2**40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """Bytes from ``123456``, ``500M``, ``2G``, ``1.5GB`` (k, M, G, T: powers of 1000; KiB, MiB,
    GiB, TiB: powers of 1024)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"'{text}' is not a size: give bytes or a number with a unit, like 500M, 2G, 1.5GB, 800MiB")
    return int(float(m[1]) * _SIZE_UNITS[(m[2] or "").lower()])


def parse_age(text: str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``2w`` or ``45s``."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw])\s*", text)
    if not m:
        raise ValueError(f"'{text}' is not an age: give a number and a unit s, m, h, d or w, like 30d, 12h, 90m")
    return float(m[1]) * _AGE_UNITS[m[2]]


def _option_parser(parse):
    """A Typer option parser whose errors keep their message (exit 2 via main())."""
    def parser(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    return parser


# -- commands ---------------------------------------------------------------------------------


@app.command()
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
        None, "--checkpoint-bytes", parser=_option_parser(parse_size), metavar="SIZE",
        help="Prefix mode: keep no more checkpoints than fit in SIZE (500M, 2G, bytes).",
    ),
    force: bool = typer.Option(False, "--force", help="Recompute even the modules already cached."),
    ranked: bool = typer.Option(
        False, "--ranked", help="Also store each module's recompute scores for `pc ask --refresh` "
        "(one more prefill of every module)."),
    as_json: bool = JsonOpt,
) -> None:
    """Precompute every module's attention states (or the default prompt's prefix states) and store them."""
    sch = _load_schema(schema)
    _check_refresh(ranked, "--ranked", kv_type, mode)
    sess = _session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, checkpoint_bytes)
    _check_refresh(ranked, "--ranked", kv_type, Mode(sess.mode))
    bar, update = _progress_bar(not as_json)
    with bar:
        report = sess.compile(sch, force=force, progress=update, ranked=ranked)
    rows = [
        {"module": m.name, "status": m.status, "tokens": m.tokens, "bytes": m.bytes,
         "seconds": round(m.seconds, 3), "key": m.key}
        for m in report.modules
    ]
    for w in report.warnings:
        _err(f"warning: {w}")
    if as_json:
        _emit_json({"schema": report.schema, "mode": sess.mode, "encoding": report.encoding,
                    "model": sess.model.description, "cache_dir": str(sess.store.root),
                    "seconds": round(report.seconds, 3), "modules": rows, "ranked": report.ranked})
        return
    computed = [r for r in rows if r["status"] == "computed"]
    reused = [r for r in rows if r["status"] == "reused"]
    for r in rows:
        _err(f"{r['status']:>8}  {r['module']:<32} {r['tokens']:>6} tokens  {r['bytes'] / 1e6:8.2f} MB")
    _err(
        f"compiled '{report.schema}': {len(computed)} computed, {len(reused)} reused, "
        f"{_tokens_total(report, rows)} tokens in {report.seconds:.2f} s "
        f"({'prefix mode' if report.encoding == 'prefix' else report.encoding + ' encoding'})"
    )
    if ranked:
        _err(f"recompute scores: {len(report.ranked)} module(s) measured now, the others already had them")


def _check_refresh(on: bool, option: str, kv_type: KvType, mode: Mode) -> None:
    """Selective recompute needs modular mode (stitched modules) and f16 KV states."""
    if on and mode == Mode.prefix:
        raise errors.UsageError(f"{option} works in modular mode only (prefix mode computes the prompt exactly)")
    if on and kv_type != KvType.f16:
        raise errors.UsageError(f"{option} needs f16 KV states, not --kv-type {kv_type.value}")


def _tokens_total(report, rows: list[dict]) -> int:
    """Tokens a compile covers: module lengths add up; prefix states are nested prefixes."""
    if report.encoding == "prefix":
        return max((r["tokens"] for r in rows), default=0)
    return sum(r["tokens"] for r in rows)


@app.command()
def ask(
    question: Optional[str] = typer.Argument(None, help="The question; '-' or nothing reads it from stdin."),
    schema: str = typer.Option(..., "--schema", "-s", help="Schema file (PML)."),
    module: list[str] = typer.Option([], "--module", "-m", help="Import a module (a/b when nested); repeatable."),
    param: list[str] = typer.Option([], "--param", "-p", help="Parameter NAME=VALUE or module/NAME=VALUE; repeatable."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="A <prompt> file: modules, parameters, question."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", min=1, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, help="0 is greedy (reproducible)."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    seed: Optional[int] = typer.Option(None, "--seed"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Prefill the same prompt from scratch (the baseline)."),
    refresh: float = typer.Option(
        0.0, "--refresh", min=0.0, max=100.0, metavar="PCT",
        help="Recompute the PCT% of the cached tokens whose states depend most on their context "
        "(answers closer to --no-cache; each costs about what prefilling a token does; see pc compile --ranked)."),
    as_json: bool = JsonOpt,
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = CacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    timings: Optional[bool] = typer.Option(
        None, "--timings/--no-timings", help="Timing line on stderr (default: on a terminal)."
    ),
) -> None:
    """Answer a question over the schema's modules, loading their states from the cache."""
    from .sampling import Sampler
    from .selection import SelectionError, select_cli, select_imports

    sch = _load_schema(schema)
    if prompt:
        from .pml import load_prompt

        pr = load_prompt(prompt)
        if pr.schema != sch.name:
            raise errors.InputError(f"{prompt}: prompt is for schema '{pr.schema}', not '{sch.name}'")
        if module or param:
            raise errors.InputError("--prompt chooses modules and parameters itself; drop --module/--param")
        try:
            selection = select_imports(sch, pr.imports)
        except SelectionError as e:  # name the prompt file: "FILE:LINE: message"
            where = f"{prompt}:{e.line}" if e.line is not None else prompt
            raise errors.InputError(f"{where}: {e.message}") from None
        if question is not None and question != "-":
            raise errors.InputError("--prompt carries the question; drop the QUESTION argument")
        text = pr.question
    else:
        selection = select_cli(sch, modules=module, params=param)
        text = _read_question(question)
    if not text.strip():
        raise errors.InputError("empty question")
    try:
        sampler = Sampler(temperature=temperature, top_p=top_p if top_p > 0 else 1.0, seed=seed)
    except ValueError as e:
        raise errors.InputError(str(e)) from None
    if refresh and no_cache:
        raise errors.UsageError("--refresh recomputes cached tokens; --no-cache computes them all already")
    _check_refresh(bool(refresh), "--refresh", kv_type, mode)
    sess = _session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints)
    _check_refresh(bool(refresh), "--refresh", kv_type, Mode(sess.mode))
    on_text = None if as_json else _out
    bar, update = _progress_bar(not as_json)
    with bar:
        res = sess.ask(sch, selection, text, max_tokens=max_tokens, sampler=sampler, no_cache=no_cache,
                       on_text=on_text, progress=update, refresh=refresh / 100)
    for w in res.warnings:
        _err(f"warning: {w}")
    if res.compiled:
        _err(f"compiled {len(res.compiled)} module(s) on demand: {', '.join(m.name for m in res.compiled)}")
    if res.ranked:
        _err(f"measured the recompute scores of {len(res.ranked)} module(s) on demand: {', '.join(res.ranked)}")
    if as_json:
        _emit_json({
            "answer": res.answer, "ttft_ms": round(res.ttft_ms, 2), "total_ms": round(res.total_ms, 2),
            "cached_tokens": res.cached_tokens, "computed_tokens": res.computed_tokens,
            "refreshed_tokens": res.refreshed_tokens,
            "generated_tokens": len(res.tokens), "modules": res.modules, "model": res.model,
            "no_cache": no_cache, "mode": sess.mode, "warnings": res.warnings,
        })
        return
    _out("\n")
    if timings if timings is not None else sys.stderr.isatty():
        mode = "no cache" if no_cache else f"{res.cached_tokens} cached tokens"
        mode += f", {res.refreshed_tokens} recomputed" if res.refreshed_tokens else ""
        _err(f"[{mode}, {res.computed_tokens} computed; first token {res.ttft_ms:.0f} ms, total {res.total_ms:.0f} ms]")


def _read_question(question: Optional[str]) -> str:
    if question is not None and question != "-":
        return question
    if question is None and sys.stdin.isatty():
        raise errors.InputError("no question: pass it as an argument or on stdin")
    data = sys.stdin.buffer.read(MAX_QUESTION_BYTES + 1)
    if len(data) > MAX_QUESTION_BYTES:
        raise errors.InputError(f"the question on stdin is longer than {MAX_QUESTION_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InputError("the question on stdin is not UTF-8") from None


@app.command()
def inspect(
    schema: str = typer.Argument(..., help="Schema file (PML)."),
    model: Optional[str] = ModelOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print the schema's layout: every element's offset and token length. Computes no states."""
    from .layout import build
    from .llama_backend import Model
    from .models import resolve_model

    sch = _load_schema(schema)
    m = Model(str(resolve_model(model)))
    lo = build(sch, m, m.chat_template())
    rows = [
        {"name": e.name or e.kind, "kind": e.kind, "path": "/".join(e.path), "offset": e.offset,
         "length": e.length, "source": e.source, "depth": e.depth}
        for e in lo.elements
    ]
    if as_json:
        _emit_json({"schema": sch.name, "model": m.description, "length": lo.end, "elements": rows})
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"schema '{sch.name}': {lo.end} positions ({m.description})")
    for col in ("offset", "length", "kind", "name", "source"):
        t.add_column(col, justify="right" if col in ("offset", "length") else "left")
    for r in rows:
        t.add_row(str(r["offset"]), str(r["length"]), r["kind"], "  " * r["depth"] + r["name"], r["source"])
    Console().print(t)


@app.command()
def path(cache_dir: Optional[str] = CacheOpt) -> None:
    """Print the cache directory."""
    from .cache_store import default_cache_dir

    _out(f"{Path(cache_dir).expanduser() if cache_dir else default_cache_dir()}\n")


# -- cache housekeeping: ls, verify, gc, rm ----------------------------------------------------

def _cache_root(cache_dir: Optional[str]) -> Path:
    from .cache_store import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


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
    out = {"model": v.model, "mode": v.mode, "encoding": v.encoding, "codec": v.codec, "llama_cpp": v.llama_cpp,
           "modules": [{"name": m.name, "key": m.key, "tokens": m.tokens, "bytes": m.bytes, "ratio": _ratio(m.ratio),
                        "last_used": _iso(m.last_used), "present": m.present} for m in v.modules]}
    if v.mode == "prefix":
        out.update(key=v.key, tokens=v.tokens, states=[
            {"position": st.position, "tokens": st.tokens, "bytes": st.bytes, "ratio": _ratio(st.ratio),
             "last_used": _iso(st.last_used), "partial": st.partial, "path": str(st.path)} for st in v.states])
    return out


def _ls_rows(listing):
    """(schema, name, tokens, size, ratio, last used, variant) per module file or prefix state."""
    for s in listing.schemas:
        for v in s.variants:
            how = f"{v.model} · {v.encoding} · {v.codec}"
            for m in v.modules:
                yield (s.schema, m.name, str(m.tokens), _size(m.bytes) if m.present else "missing",
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


def _register_commands() -> None:
    from .bench_command import bench
    from .plan_command import plan

    app.command("plan")(plan)
    app.command("bench")(bench)


_register_commands()


@app.command("ls")
def ls_cmd(cache_dir: Optional[str] = CacheOpt, as_json: bool = JsonOpt) -> None:
    """List the cached schemas with their module files or prefix states: tokens, size, compression
    ratio, last use."""
    from .cache_admin import list_cache

    root = _cache_root(cache_dir)
    listing = list_cache(root)
    if as_json:
        _emit_json({
            "cache_dir": str(root),
            "schemas": [{"schema": s.schema, "path": s.path, "variants": [_variant_json(v) for v in s.variants]}
                        for s in listing.schemas],
            "orphans": [_file_json(f) for f in listing.orphans],
            "total_bytes": listing.total_bytes,
        })
        return
    if not listing.schemas and not listing.orphans:
        _err(f"the cache {root} holds no cache files")
        return
    from rich.console import Console
    from rich.table import Table

    n_files = len({m.key for s in listing.schemas for v in s.variants for m in v.modules if m.present})
    n_files += sum(f.position is None for f in listing.orphans)
    n_states = len({st.path for s in listing.schemas for v in s.variants for st in v.states})
    n_states += sum(f.position is not None for f in listing.orphans)
    t = Table(title=f"{root}: {_count(n_files, 'module file')}, {_count(n_states, 'prefix state')}, "
                    f"{_size(listing.total_bytes)}")
    for col in ("schema", "module", "tokens", "size", "ratio", "last used", "model · encoding · codec"):
        t.add_column(col, justify="right" if col in ("tokens", "size", "ratio") else "left")
    for row in _ls_rows(listing):
        t.add_row(*row)
    console = Console(markup=False, highlight=False)  # names and paths are shown as they are
    if not console.is_terminal:
        console = Console(markup=False, highlight=False, width=200)
    console.print(t)


@app.command("verify")
def verify_cmd(cache_dir: Optional[str] = CacheOpt, as_json: bool = JsonOpt) -> None:
    """Read every cache file whole and check every checksum; exit 5 if any is damaged."""
    from .cache_admin import verify_cache

    root = _cache_root(cache_dir)
    report = verify_cache(root)
    if as_json:
        _emit_json({
            "cache_dir": str(root), "checked": report.checked, "ok": not report.damaged,
            "damaged": [{"kind": d.kind, **_file_json(d.file), "reason": d.reason} for d in report.damaged],
            "stale_temporary": [{"path": str(f.path), "bytes": f.bytes} for f in report.stale_temporary],
        })
    else:
        for d in report.damaged:
            _out(f"damaged   {d.file.path}: {d.reason}\n")
        for f in report.stale_temporary:
            _out(f"leftover  {f.path} ({_size(f.bytes)}, a temporary file older than an hour; `pc gc` removes it)\n")
    if report.damaged:
        _err(f"pc: {len(report.damaged)} of {_count(report.checked, 'cache file')} damaged "
             "(`pc ask` recomputes a damaged module or prefix state when it needs it)")
        raise typer.Exit(errors.EXIT_CACHE)
    if not as_json:
        _err(f"{_count(report.checked, 'cache file')} intact in {root}")


@app.command("gc")
def gc_cmd(
    max_size: Optional[int] = typer.Option(
        None, "--max-size", parser=_option_parser(parse_size), metavar="SIZE",
        help="Remove least recently used module files and prefix states until they take at most SIZE "
        "(500M, 2G, 1.5GB, bytes).",
    ),
    older_than: Optional[float] = typer.Option(
        None, "--older-than", parser=_option_parser(parse_age), metavar="AGE",
        help="Remove module files and prefix states not used for longer than AGE (30d, 12h, 90m, 2w).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    cache_dir: Optional[str] = CacheOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Evict module files and prefix states by last use; also remove stale temporary and lock files."""
    from .cache_admin import gc

    if max_size is None and older_than is None:
        _err("pc: gc needs --max-size SIZE or --older-than AGE, or both (see `pc gc --help`)")
        raise typer.Exit(errors.EXIT_USAGE)
    root = _cache_root(cache_dir)
    report = gc(root, max_size=max_size, older_than=older_than, dry_run=dry_run)
    if as_json:
        _emit_json({
            "cache_dir": str(root), "dry_run": dry_run, "removed": [_note_json(n) for n in report.removed],
            "skipped": [_note_json(n) for n in report.skipped], "bytes_freed": _freed(report),
            "total_before": report.total_before, "total_after": report.total_after,
        })
        return
    verb = "would remove" if dry_run else "removed"
    for n in report.removed:
        _err(f"{verb}  {n.file.path}  {_size(n.file.bytes)}  ({n.reason})")
    for n in report.skipped:
        _err(f"kept  {n.file.path}  ({n.reason})")
    _err(f"{'would free' if dry_run else 'freed'} {_size(_freed(report))} in {_count(len(report.removed), 'file')}; "
         f"cache files {'would ' if dry_run else ''}take {_size(report.total_after)}")


@app.command("rm")
def rm_cmd(
    schema: str = typer.Argument(..., help="The schema: its file's path, or its name as `pc ls` shows it."),
    cache_dir: Optional[str] = CacheOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Remove a schema from the cache: its manifest, its overlap record, and the module files and
    prefix states no other schema uses."""
    from .cache_admin import remove_schema

    root = _cache_root(cache_dir)
    report = remove_schema(root, schema)
    if as_json:
        _emit_json({
            "cache_dir": str(root), "schema": report.schema, "path": report.path, "manifest": str(report.manifest),
            "removed": [_note_json(n) for n in report.removed], "skipped": [_note_json(n) for n in report.skipped],
            "kept": [{"name": name, "key": key} for name, key in report.kept], "bytes_freed": _freed(report),
        })
        return
    for n in report.skipped:
        _err(f"kept  {n.file.path}  ({n.reason})")
    n_modules, n_states = (sum(n.kind == kind for n in report.removed) for kind in ("module", "prefix"))
    _err(f"removed schema '{report.schema}': {_count(n_modules, 'module file')}, "
         f"{_count(n_states, 'prefix state')}, {_size(_freed(report))} freed; "
         f"kept {len(report.kept)} used by other schemas")


def main() -> None:
    """Entry point: run the app, turning every known error into one line and an exit code."""
    if not isinstance(sys.stdout, _ClosedStdoutGuard):
        sys.stdout = _ClosedStdoutGuard(sys.stdout)
    try:
        rv = app(standalone_mode=False)
        if rv == errors.EXIT_INTERRUPTED:  # Typer turns Ctrl-C into this exit code
            _err("pc: interrupted")
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except KeyboardInterrupt:
        _err("pc: interrupted")
        sys.exit(errors.EXIT_INTERRUPTED)
    except (BrokenPipeError, StdoutClosed):
        _quiet_broken_pipe()
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that maps errors to exit codes
        if type(exc).__name__ == "Abort":  # click's Ctrl-C at a prompt
            _err("pc: interrupted")
            sys.exit(errors.EXIT_INTERRUPTED)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's usage errors
            if not exc.format_message():  # `pc` alone: the help is printed already, nothing to add
                sys.exit(errors.EXIT_USAGE)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _err(f"pc: {exc.format_message()}{hint}".replace("\n", " "))
            sys.exit(errors.EXIT_USAGE)
        code = errors.exit_code_for(exc)
        if code is None:
            if os.environ.get("PC_DEBUG"):
                raise
            _err(f"pc: internal error: {type(exc).__name__}: {exc}")
            sys.exit(errors.EXIT_INTERNAL)
        _err(f"pc: {exc}")
        sys.exit(code)


def _quiet_broken_pipe() -> None:
    """stdout was closed (e.g. `pc ask ... | head -c 20`): stop quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

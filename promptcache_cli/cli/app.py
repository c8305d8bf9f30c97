"""The `pc` command: parse options, call the library, render. Answers go to stdout; progress,
warnings and timings to stderr; ``--json`` prints one object on stdout instead."""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Optional

import typer

from .. import errors
from .common import (CacheOpt, ClosedStdoutGuard, JsonOpt, ModelOpt, StdoutClosed, cache_root, emit_json,
                     option_parser, outlive, parse_size, write_err, write_out)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Answer questions about long, reused context fast: compile a schema's modules into "
    "cached attention states once, then ask from the cache.",
)


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


EncodingOpt = typer.Option(
    Encoding.scaffold, "--encoding",
    help="How modules are encoded: 'scaffold' (after the default prompt before it, or the first prompt "
    "the schema allows that repeats no text where the default one does), 'average' "
    "(the mean of the states after up to 8 prompts the schema allows before it, its unions switched "
    "member by member: measured closest to uncached answers; compiling took 2.8x-3.8x and 7.9x as long on the "
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


def _session(model: Optional[str], cache_dir: Optional[str], encoding: Encoding, compression: Compression,
             kv_type: KvType, mode: Mode = Mode.auto, checkpoints: int = 4, checkpoint_bytes: int | None = None):
    from ..llama.backend import ContextSettings
    from ..llama.model_file import resolve_model
    from ..api import open_session

    if encoding == Encoding.average and kv_type != KvType.f16:
        raise errors.UsageError(f"--encoding average needs f16 KV states, not --kv-type {kv_type.value}")
    root = cache_root(cache_dir)
    settings = ContextSettings.for_kv_type(kv_type.value)
    sess = open_session(resolve_model(model), cache_dir=root, mode=mode.value, encoding=encoding.value,
                        codec=compression.value, settings=settings, checkpoints=checkpoints,
                        checkpoint_bytes=checkpoint_bytes)
    outlive(sess)  # a `pc` process leaves it to the operating system
    return sess


def _load_schema(path: str):
    from ..pml.schema import load_schema

    return load_schema(path)


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
        write_err(f"warning: {w}")
    if as_json:
        emit_json({"schema": report.schema, "mode": sess.mode, "encoding": report.encoding,
                    "model": sess.model.description, "cache_dir": str(sess.store.root),
                    "seconds": round(report.seconds, 3), "modules": rows, "ranked": report.ranked})
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
    from ..llama.sampling import Sampler
    from ..pml.selection import SelectionError, select_cli, select_imports

    sch = _load_schema(schema)
    if prompt:
        from ..pml.schema import load_prompt

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
    on_text = None if as_json else write_out
    bar, update = _progress_bar(not as_json)
    with bar:
        res = sess.ask(sch, selection, text, max_tokens=max_tokens, sampler=sampler, no_cache=no_cache,
                       on_text=on_text, progress=update, refresh=refresh / 100)
    for w in res.warnings:
        write_err(f"warning: {w}")
    if res.compiled:
        write_err(f"compiled {len(res.compiled)} module(s) on demand: {', '.join(m.name for m in res.compiled)}")
    if res.ranked:
        write_err(f"measured the recompute scores of {len(res.ranked)} module(s) on demand: {', '.join(res.ranked)}")
    if as_json:
        emit_json({
            "answer": res.answer, "ttft_ms": round(res.ttft_ms, 2), "total_ms": round(res.total_ms, 2),
            "cached_tokens": res.cached_tokens, "computed_tokens": res.computed_tokens,
            "refreshed_tokens": res.refreshed_tokens,
            "generated_tokens": len(res.tokens), "modules": res.modules, "model": res.model,
            "no_cache": no_cache, "mode": sess.mode, "warnings": res.warnings,
        })
        return
    write_out("\n")
    if timings if timings is not None else sys.stderr.isatty():
        mode = "no cache" if no_cache else f"{res.cached_tokens} cached tokens"
        mode += f", {res.refreshed_tokens} recomputed" if res.refreshed_tokens else ""
        write_err(f"[{mode}, {res.computed_tokens} computed; "
                  f"first token {res.ttft_ms:.0f} ms, total {res.total_ms:.0f} ms]")


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
    from ..prompt.layout import build
    from ..llama.backend import Model
    from ..llama.model_file import resolve_model

    sch = _load_schema(schema)
    m = Model(str(resolve_model(model)))
    lo = build(sch, m, m.chat_template())
    rows = [
        {"name": e.name or e.kind, "kind": e.kind, "path": "/".join(e.path), "offset": e.offset,
         "length": e.length, "source": e.source, "depth": e.depth}
        for e in lo.elements
    ]
    if as_json:
        emit_json({"schema": sch.name, "model": m.description, "length": lo.end, "elements": rows})
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
    write_out(f"{cache_root(cache_dir)}\n")


def _register_commands() -> None:
    from .bench import bench
    from .cache import gc_cmd, ls_cmd, rm_cmd, verify_cmd
    from .plan import plan

    for name, fn in (("plan", plan), ("bench", bench), ("ls", ls_cmd), ("verify", verify_cmd), ("gc", gc_cmd),
                     ("rm", rm_cmd)):
        app.command(name)(fn)


_register_commands()


def main() -> None:
    """Entry point: run the app, turning every known error into one line and an exit code."""
    if not isinstance(sys.stdout, ClosedStdoutGuard):
        sys.stdout = ClosedStdoutGuard(sys.stdout)
    try:
        rv = app(standalone_mode=False)
        if rv == errors.EXIT_INTERRUPTED:  # Typer turns Ctrl-C into this exit code
            write_err("pc: interrupted")
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except KeyboardInterrupt:
        write_err("pc: interrupted")
        sys.exit(errors.EXIT_INTERRUPTED)
    except (BrokenPipeError, StdoutClosed):
        _quiet_broken_pipe()
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that maps errors to exit codes
        if type(exc).__name__ == "Abort":  # click's Ctrl-C at a prompt
            write_err("pc: interrupted")
            sys.exit(errors.EXIT_INTERRUPTED)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's usage errors
            if not exc.format_message():  # `pc` alone: the help is printed already, nothing to add
                sys.exit(errors.EXIT_USAGE)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            write_err(f"pc: {exc.format_message()}{hint}".replace("\n", " "))
            sys.exit(errors.EXIT_USAGE)
        code = errors.exit_code_for(exc)
        if code is None:
            if os.environ.get("PC_DEBUG"):
                raise
            write_err(f"pc: internal error: {type(exc).__name__}: {exc}")
            sys.exit(errors.EXIT_INTERNAL)
        write_err(f"pc: {exc}")
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

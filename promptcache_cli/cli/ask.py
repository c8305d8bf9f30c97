"""`pc ask`: build a request from the options (a schema, or plain files with ``-f``), answer it
through the library, render the answer (stdout) and its timings and warnings (stderr). On a
terminal, a progress bar shows while states are computed and is gone before the answer starts."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .. import errors
from .common import (HiddenCacheOpt, JsonOpt, ModelOpt, RemoteOpt, emit_json, finite, within, write_err,
                     write_out)
from .options import (REPAIR_DEFAULT, CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, FileOpt,
                      KvType, KvTypeOpt, Mode, ModeOpt, SchemaOpt, SystemOpt, ThreadsOpt, TimingsOpt, check_refresh,
                      open_session, progress_bar, read_stdin, schema_for)

MAX_QUESTION_BYTES = 1 << 20

HELP = """Answer a question about text files (-f) or a schema (-s), from the cache.

\b
  pc ask -f notes.txt "When is the deadline?"
  pc ask -s schemas/licenses.xml -m bsd "May I sell copies?"

QUESTION: '-' or none reads it from stdin. More options (--model, --cache-dir, --temperature,
--seed, --mode, --refresh, ...): docs/usage.md#pc-ask"""


def ask(
    question: Optional[str] = typer.Argument(None, metavar="[QUESTION]", show_default=False, hidden=True),
    files: list[str] = FileOpt,
    schema: Optional[str] = SchemaOpt,
    text: Optional[str] = typer.Option(
        None, "--text", metavar="FILE",
        help="A whole prompt and question; cached text reused."),
    module: list[str] = typer.Option([], "--module", "-m", metavar="MOD",
                                     help="Import a module (a/b when nested); repeatable."),
    param: list[str] = typer.Option([], "--param", "-p", metavar="NAME=VALUE",
                                    help="A parameter's value (module/NAME=VALUE); repeatable."),
    system: Optional[str] = SystemOpt,
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", callback=within(1), metavar="N", show_default=False,
                                   help="Most tokens to generate (128)."),
    stop: list[str] = typer.Option([], "--stop", metavar="TEXT", help="End the answer before TEXT; repeatable."),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", callback=within(0.01, 10), metavar="X",
                                         show_default=False, help="Above 1 (try 1.2) discourages repeats."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", callback=within(0), metavar="T", hidden=True,
                                      help="0 (default) is greedy: reproducible."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute the whole prompt (the baseline)."),
    threads: int = ThreadsOpt,
    as_json: bool = JsonOpt,
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, hidden=True, callback=finite),
    seed: Optional[int] = typer.Option(None, "--seed", hidden=True),
    prompt: Optional[str] = typer.Option(None, "--prompt", hidden=True,
                                         help="A <prompt> file: modules, parameters, question."),
    learn: bool = typer.Option(
        False, "--learn", hidden=True, help="With --text: store the long runs of the prompt computed now, so their "
        "next appearance in any prompt is found (pc gc bounds the cache)."),
    refresh: float = typer.Option(
        0.0, "--refresh", min=0.0, max=100.0, metavar="PCT", hidden=True, callback=finite,
        help="Recompute the PCT% of the cached tokens whose states depend most on their context "
        "(answers closer to --no-cache; each costs about what prefilling a token does; see pc compile --ranked)."),
    repair: Optional[int] = typer.Option(
        None, "--repair", min=0, max=4096, metavar="N", hidden=True,
        help="Compute afresh the first N tokens of every cached part placed after other text than its states were "
        f"computed after (answers closer to --no-cache; default {REPAIR_DEFAULT}, 0 for the fastest answer)."),
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = HiddenCacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    remote: Optional[str] = RemoteOpt,
    timings: Optional[bool] = TimingsOpt,
) -> None:
    from dataclasses import replace

    from ..api import Request, Sampler, TextRequest, answer_record

    if text is not None:
        if schema or files or module or param or prompt or system:
            raise errors.UsageError("--text takes the whole prompt from a file: "
                                    "drop -s, -f, -m, -p, --prompt and --system")
        if question is not None:
            raise errors.UsageError("--text FILE holds the question too; drop the QUESTION argument")
    elif learn:
        raise errors.UsageError("--learn stores text of --text prompts; a schema's modules are stored by pc compile")
    try:
        sampler = Sampler(temperature=temperature, top_p=top_p if top_p > 0 else 1.0, seed=seed,
                          repeat_penalty=repeat_penalty)
    except ValueError as e:
        raise errors.InputError(str(e)) from None
    options = {"repair": repair} if repair is not None else {}
    request: Request | TextRequest
    if text is not None:
        body = _read_text(text)
        if not body.strip():
            raise errors.InputError(f"{text}: the prompt is empty")
        request = TextRequest.from_text(body, max_tokens=max_tokens, sampler=sampler, no_cache=no_cache, learn=learn,
                                        refresh=refresh / 100, stop=tuple(stop), **options)
    else:
        request = _schema_request(question, files, schema, module, param, system, prompt)
        try:
            request = replace(request, max_tokens=max_tokens, sampler=sampler, no_cache=no_cache,
                              refresh=refresh / 100, stop=tuple(stop), **options)
        except ValueError as e:
            raise errors.InputError(str(e)) from None
    if refresh and no_cache:
        raise errors.UsageError("--refresh recomputes cached tokens; --no-cache computes them all already")
    check_refresh(bool(refresh), "--refresh", kv_type, mode)
    sess = open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, threads=threads,
                        remote=remote)
    check_refresh(bool(refresh), "--refresh", kv_type, Mode(sess.mode))
    # why states are computed: said when computing starts (a prompt too long for the context is
    # refused before that, in one line)
    reasons = [] if no_cache or isinstance(request, TextRequest) else [r for r in (sess.stale(request).reason,) if r]
    bar = progress_bar(not as_json)
    wrote: list[bool] = []

    def progress(done: int, total: int, name: str) -> None:
        while reasons:
            write_err(reasons.pop())
        if bar.update is not None:
            bar.update(done, total, name)

    def on_text(text: str) -> None:
        if not wrote:
            bar.stop()  # the bar is gone before the answer starts
            wrote.append(True)
        write_out(text)

    try:
        with bar:
            res = sess.ask(request, on_text=None if as_json else on_text, progress=progress)
    except KeyboardInterrupt:
        if wrote and sys.stdout.isatty():  # "pc: interrupted" on a line of its own
            write_out("\n")
        raise
    if not as_json:
        write_out("\n")  # the answer's line ends before anything else is written
    if reasons and res.compiled:  # computed without a progress report
        write_err(reasons.pop())
    for w in res.warnings:
        write_err(f"warning: {w}")
    if res.downloaded:
        write_err(f"downloaded {len(res.downloaded)} module(s) from {sess.remote}: "
                  f"{', '.join(m.name for m in res.downloaded)} ({sum(m.bytes for m in res.downloaded) / 1e6:.1f} MB)")
    if res.compiled:
        write_err(f"compiled {len(res.compiled)} module(s) on demand: {', '.join(m.name for m in res.compiled)}")
    if res.ranked:
        write_err(f"measured the recompute scores of {len(res.ranked)} module(s) on demand: {', '.join(res.ranked)}")
    if as_json:
        record = answer_record(res, mode=sess.mode, no_cache=no_cache, remote=sess.remote)
        if hasattr(request, "messages"):  # a text prompt: what was found, and learned
            record["spans"] = [_span(s) for s in res.spans]
            record["learned"] = [_span(s) for s in res.learned]
        emit_json(record)
        return
    if timings if timings is not None else sys.stderr.isatty():
        what = "no cache" if no_cache else f"{res.cached_tokens:,} cached tokens"
        what += f", {res.refreshed_tokens:,} recomputed" if res.refreshed_tokens else ""
        what += f", {len(res.spans)} cached run(s) found" if res.spans else ""
        what += f", {sum(s.tokens for s in res.learned):,} tokens learned" if res.learned else ""
        end = "; -n reached" if res.finish_reason == "length" else ""
        write_err(f"[{what}, {res.computed_tokens:,} computed; "
                  f"first token {_ms(res.ttft_ms)}, total {_ms(res.total_ms)}{end}]")


def _ms(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _schema_request(question, files, schema, module, param, system, prompt):
    """The request of a schema (-s) or of text files (-f): its modules, parameters and question."""
    from dataclasses import replace

    from ..api import Request, append_question, request_from_prompt, select

    if prompt and files:
        raise errors.UsageError("--prompt names its schema's modules; use it with -s SCHEMA, not -f")
    stdin_doc = "-" in files
    if stdin_doc and question in (None, "-"):
        raise errors.UsageError("with -f -, the document comes on stdin: give the question as an argument")
    sch = schema_for(schema, files, system, "ask", read_stdin)
    if prompt:
        if module or param:
            raise errors.InputError("--prompt chooses modules and parameters itself; drop --module/--param")
        request = request_from_prompt(prompt, schema=sch)
        select(sch, request)  # a selection error names the prompt file and line
        # a question-less prompt file is answered as it is; a QUESTION beside it is appended
        if question is not None:
            request = replace(request, question=append_question(request.question, _read_question(question)))
        return request
    select(sch, Request(sch, "", modules=module, params=param))  # before reading stdin
    request = Request(sch, _read_question(question), modules=module, params=param)
    if not request.question.strip():
        raise errors.InputError("empty question")
    return request


def _span(s) -> dict:
    return {"name": s.name, "key": s.key, "start": s.start, "tokens": s.tokens, "exact": s.exact}


def _read_text(path: str) -> str:
    """A --text file (or stdin for '-'), UTF-8, at most MAX_QUESTION_BYTES."""
    if path == "-":
        data = read_stdin(MAX_QUESTION_BYTES, "the prompt")
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_QUESTION_BYTES + 1)
        except OSError as e:
            raise errors.InputError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_QUESTION_BYTES:
        raise errors.InputError(f"{path}: the prompt is longer than {MAX_QUESTION_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InputError(f"{path}: the prompt is not UTF-8") from None


def _read_question(question: Optional[str]) -> str:
    if question is not None and question != "-":
        return question
    if question is None and sys.stdin.isatty():
        raise errors.InputError("no question: pass it as an argument or on stdin")
    data = read_stdin(MAX_QUESTION_BYTES, "the question")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InputError("the question on stdin is not UTF-8") from None

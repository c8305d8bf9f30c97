"""`pc ask`: build a request from the options, answer it through the library, render the answer
(stdout) and its timings and warnings (stderr)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .. import errors
from .common import CacheOpt, JsonOpt, ModelOpt, RemoteOpt, emit_json, write_err, write_out
from .options import (REPAIR_DEFAULT, CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, KvType,
                      KvTypeOpt, Mode, ModeOpt, check_refresh, open_session, progress_bar)

MAX_QUESTION_BYTES = 1 << 20


def ask(
    question: Optional[str] = typer.Argument(
        None, help="The question; '-' or nothing reads it from stdin. With --prompt: appended to the "
        "file's question ('-' reads it from stdin; nothing: the file as it is)."),
    schema: Optional[str] = typer.Option(None, "--schema", "-s", help="Schema file (PML)."),
    text: Optional[str] = typer.Option(
        None, "--text", metavar="FILE",
        help="No schema: FILE ('-': stdin) is the whole user message, question included; cached text is found "
        "wherever it stands in it."),
    learn: bool = typer.Option(
        False, "--learn", help="With --text: store the long runs of the message computed now, so their next "
        "appearance in any prompt is found (pc gc bounds the cache)."),
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
    repair: Optional[int] = typer.Option(
        None, "--repair", min=0, max=4096, metavar="N",
        help="Compute afresh the first N tokens of every cached part placed after other text than its states were "
        f"computed after (answers closer to --no-cache; default {REPAIR_DEFAULT}, 0 for the fastest answer)."),
    as_json: bool = JsonOpt,
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = CacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    remote: Optional[str] = RemoteOpt,
    timings: Optional[bool] = typer.Option(
        None, "--timings/--no-timings", help="Timing line on stderr (default: on a terminal)."
    ),
) -> None:
    """Answer a question over the schema's modules (or any text, --text), loading their states from the cache."""
    from dataclasses import replace

    from ..api import (
        Request,
        Sampler,
        TextRequest,
        append_question,
        load_schema,
        request_from_prompt,
        select,
    )

    if text is not None:
        if schema or module or param or prompt:
            raise errors.UsageError("--text takes the whole prompt from a file: "
                                    "drop --schema, --module, --param, --prompt")
        if question is not None:
            raise errors.UsageError("--text FILE holds the question too; drop the QUESTION argument")
    elif schema is None:
        raise errors.UsageError("give a schema (--schema FILE) or a whole prompt (--text FILE)")
    elif learn:
        raise errors.UsageError("--learn stores text of --text prompts; a schema's modules are stored by pc compile")
    if text is not None:
        try:
            sampler = Sampler(temperature=temperature, top_p=top_p if top_p > 0 else 1.0, seed=seed)
        except ValueError as e:
            raise errors.InputError(str(e)) from None
        body = _read_text(text)
        if not body.strip():
            raise errors.InputError(f"{text}: the prompt is empty")
        request_t = TextRequest.from_text(body, max_tokens=max_tokens, sampler=sampler, no_cache=no_cache, learn=learn,
                                          refresh=refresh / 100, **({"repair": repair} if repair is not None else {}))
        _answer(request_t, model=model, cache_dir=cache_dir, remote=remote, encoding=encoding, compression=compression,
                kv_type=kv_type, mode=mode, checkpoints=checkpoints, as_json=as_json, timings=timings,
                no_cache=no_cache, refresh=refresh)
        return
    assert schema is not None
    sch = load_schema(schema)
    if prompt:
        if module or param:
            raise errors.InputError("--prompt chooses modules and parameters itself; drop --module/--param")
        request = request_from_prompt(prompt, schema=sch)
        select(sch, request)  # a selection error names the prompt file and line
        # a question-less prompt file is answered as it is; a QUESTION beside it is appended
        if question is not None:
            request = replace(request, question=append_question(request.question, _read_question(question)))
    else:
        select(sch, Request(sch, "", modules=module, params=param))  # before reading stdin
        request = Request(sch, _read_question(question), modules=module, params=param)
        if not request.question.strip():
            raise errors.InputError("empty question")
    try:
        sampler = Sampler(temperature=temperature, top_p=top_p if top_p > 0 else 1.0, seed=seed)
    except ValueError as e:
        raise errors.InputError(str(e)) from None
    request = replace(request, max_tokens=max_tokens, sampler=sampler, no_cache=no_cache, refresh=refresh / 100,
                      **({"repair": repair} if repair is not None else {}))
    _answer(request, model=model, cache_dir=cache_dir, remote=remote, encoding=encoding, compression=compression,
            kv_type=kv_type,
            mode=mode, checkpoints=checkpoints, as_json=as_json, timings=timings, no_cache=no_cache, refresh=refresh)


def _answer(request, *, model, cache_dir, remote, encoding, compression, kv_type, mode, checkpoints, as_json: bool,
            timings: Optional[bool], no_cache: bool, refresh: float) -> None:
    if refresh and no_cache:
        raise errors.UsageError("--refresh recomputes cached tokens; --no-cache computes them all already")
    check_refresh(bool(refresh), "--refresh", kv_type, mode)
    sess = open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, remote=remote)
    check_refresh(bool(refresh), "--refresh", kv_type, Mode(sess.mode))
    on_text = None if as_json else write_out
    bar, update = progress_bar(not as_json)
    with bar:
        res = sess.ask(request, on_text=on_text, progress=update)
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
        from ..api import answer_record

        record = answer_record(res, mode=sess.mode, no_cache=no_cache, remote=sess.remote)
        if hasattr(request, "messages"):  # a text prompt: what was found, and learned
            record["spans"] = [_span(s) for s in res.spans]
            record["learned"] = [_span(s) for s in res.learned]
        emit_json(record)
        return
    write_out("\n")
    if timings if timings is not None else sys.stderr.isatty():
        what = "no cache" if no_cache else f"{res.cached_tokens} cached tokens"
        what += f", {res.refreshed_tokens} recomputed" if res.refreshed_tokens else ""
        what += f", {len(res.spans)} cached run(s) found" if res.spans else ""
        what += f", {sum(s.tokens for s in res.learned)} tokens learned" if res.learned else ""
        write_err(f"[{what}, {res.computed_tokens} computed; "
                  f"first token {res.ttft_ms:.0f} ms, total {res.total_ms:.0f} ms]")


def _span(s) -> dict:
    return {"name": s.name, "key": s.key, "start": s.start, "tokens": s.tokens, "exact": s.exact}


def _read_text(path: str) -> str:
    """A --text file (or stdin for '-'), UTF-8, at most MAX_QUESTION_BYTES."""
    if path == "-":
        if sys.stdin.isatty():
            raise errors.InputError("--text -: no prompt on stdin")
        data = sys.stdin.buffer.read(MAX_QUESTION_BYTES + 1)
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
    data = sys.stdin.buffer.read(MAX_QUESTION_BYTES + 1)
    if len(data) > MAX_QUESTION_BYTES:
        raise errors.InputError(f"the question on stdin is longer than {MAX_QUESTION_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InputError("the question on stdin is not UTF-8") from None

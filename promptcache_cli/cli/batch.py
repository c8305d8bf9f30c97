"""`pc batch FILE|-`: many questions, one model load. JSON lines in (one request each), JSON lines
out in the same order, each the object `pc ask --json` prints, or for a line that failed an
object saying why; the other lines go on. A progress bar on stderr (on a terminal), a summary
line there at the end; the exit code says whether any line failed."""

from __future__ import annotations

import json
import sys
from typing import IO, Any, Iterator, Optional

import typer

from .. import errors
from .common import CacheOpt, ModelOpt, RemoteOpt, emit_json, write_err
from .options import (CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, KvType, KvTypeOpt, Mode,
                      ModeOpt, ThreadsOpt, open_session)

MAX_LINE_BYTES = 1 << 20
FIELDS = {"schema", "question", "modules", "params", "prompt", "max_tokens", "temperature", "top_p", "seed",
          "no_cache", "file", "system", "stop", "repeat_penalty"}


HELP = """Answer JSON lines of questions with one model load; each output line is what
`pc ask --json` prints, in input order.

\b
  pc batch questions.jsonl > answers.jsonl
  echo '{"file": "notes.txt", "question": "When is it due?"}' | pc batch -

Each line: "schema" (or "file": a path or a list, with "system"), "question", optionally
"modules", "params", "prompt", "max_tokens", "stop", "temperature", ...: docs/usage.md#pc-batch-file"""


def batch(
    file: str = typer.Argument(..., metavar="FILE|-", help="JSON lines, one request each ('-': stdin)."),
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = CacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    threads: int = ThreadsOpt,
    remote: Optional[str] = RemoteOpt,
) -> None:
    source = _open(file)
    total = _count(file) if file != "-" else None
    sess = open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, threads=threads,
                        remote=remote)
    done = failed = 0
    bar, task = _progress(total)
    with bar:
        for number, line in _lines(source):
            try:
                record = _answer(sess, line)
            except errors.PcError as e:
                record = {"line": number, "error": str(e), "exit_code": errors.exit_code_for(e)}
            except Exception as e:  # noqa: BLE001 - one bad line never stops the others
                record = {"line": number, "error": f"internal error: {type(e).__name__}: {e}",
                          "exit_code": errors.EXIT_INTERNAL}
            failed += "error" in record
            done += 1
            emit_json(record)
            if task is not None:
                bar.update(task, advance=1, description=f"{done} answered" + (f", {failed} failed" if failed else ""))
    if failed:
        write_err(f"pc: {failed} of {done} line{'s' if done != 1 else ''} failed (each says why in its output line)")
        raise typer.Exit(errors.EXIT_PARTIAL)


def _open(file: str) -> IO[bytes]:
    if file == "-":
        return sys.stdin.buffer
    try:
        return open(file, "rb")  # noqa: SIM115 - read to the end of the command
    except OSError as e:
        raise errors.InputError(f"cannot read {file}: {e.strerror}") from None


def _count(file: str) -> int:
    with open(file, "rb") as f:
        return sum(1 for line in f if line.strip())


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes | str]]:
    """(line number, its bytes) for each non-blank line; a line too long comes as an error text."""
    number = 0
    while True:
        raw = source.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of it
                raw = source.readline(MAX_LINE_BYTES)
            yield number, f"line {number} is longer than {MAX_LINE_BYTES >> 20} MiB"
            continue
        if raw.strip():
            yield number, raw


def _answer(sess, line: bytes | str) -> dict[str, Any]:
    from dataclasses import replace

    from ..api import Request, Sampler, answer_record, documents_schema, read_document, request_from_prompt, select

    if isinstance(line, str):
        raise errors.InputError(line)
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.InputError(f"not a JSON object: {e}") from None
    if not isinstance(obj, dict):
        raise errors.InputError("not a JSON object")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise errors.InputError(f"unknown field '{unknown[0]}' (a line takes {', '.join(sorted(FIELDS))})")
    if "file" in obj:  # text files, each cached by its content (as `pc ask -f`)
        if "schema" in obj or "prompt" in obj:
            raise errors.InputError("'file' and 'schema' (or 'prompt') are two ways to give the context: use one")
        files = _field(obj, "file", (str, list))
        files = [files] if isinstance(files, str) else files
        if not files or not all(isinstance(f, str) for f in files):
            raise errors.InputError("'file' must be a path or a non-empty list of paths")
        sch = documents_schema([read_document(f) for f in files], system=_field(obj, "system", str))
    else:
        if "system" in obj:
            raise errors.InputError("'system' goes with 'file' (a schema has its own system prompt)")
        sch = sess.schema(_field(obj, "schema", str, required=True))
    prompt = _field(obj, "prompt", str)
    question = _field(obj, "question", str)
    if prompt is not None:
        if "modules" in obj or "params" in obj:
            raise errors.InputError("a <prompt> file chooses modules and parameters itself; drop modules and params")
        request = request_from_prompt(prompt, schema=sch)
        if question is not None:
            raise errors.InputError("a <prompt> file carries the question; drop 'question'")
    else:
        modules = _field(obj, "modules", list) or []
        params = _field(obj, "params", (dict, list)) or {}
        if not all(isinstance(m, str) for m in modules):
            raise errors.InputError("'modules' must be a list of module names")
        if isinstance(params, dict) and not all(isinstance(v, str) for v in params.values()):
            raise errors.InputError("'params' must map names to string values")
        if isinstance(params, list) and not all(isinstance(p, str) for p in params):
            raise errors.InputError("'params' must be a list of NAME=VALUE strings")
        request = Request(sch, question or "", modules=modules, params=params)
    select(sch, request)
    if not request.question.strip():
        raise errors.InputError("empty question")
    max_tokens = _field(obj, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise errors.InputError("'max_tokens' must be at least 1")
    try:
        sampler = Sampler(temperature=_number(obj, "temperature", 0.0), top_p=_number(obj, "top_p", 1.0),
                          seed=_field(obj, "seed", int), repeat_penalty=_number(obj, "repeat_penalty", 1.0))
        stop = _field(obj, "stop", (str, list)) or ()
        no_cache = bool(_field(obj, "no_cache", bool))
        request = replace(request, max_tokens=max_tokens or 128, sampler=sampler, no_cache=no_cache,
                          stop=(stop,) if isinstance(stop, str) else tuple(stop))
    except ValueError as e:
        raise errors.InputError(str(e)) from None
    res = sess.ask(request)
    return answer_record(res, mode=sess.mode, no_cache=no_cache, remote=sess.remote)


def _field(obj: dict, key: str, kind, *, required: bool = False):
    value = obj.get(key)
    if value is None:
        if required:
            raise errors.InputError(f"'{key}' is missing")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
        raise errors.InputError(f"'{key}' must be {names.get(kind, 'an object or a list')}")
    return value


def _number(obj: dict, key: str, default: float) -> float:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.InputError(f"'{key}' must be a number")
    return float(value)


def _progress(total: int | None):
    """A rich progress bar of lines on stderr (only on a terminal), and its task."""
    from contextlib import nullcontext

    if not sys.stderr.isatty():
        return nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True,
                   redirect_stdout=False, redirect_stderr=False)  # stdout carries the answers, never the bar
    return bar, bar.add_task("answering", total=total)

"""`pc serve`: an OpenAI-compatible server answering from the cache. The options are read here;
the server itself (serve/, Starlette and uvicorn) is imported only when the command runs, so no
other command pays for it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .. import errors
from .common import HiddenCacheOpt, ModelOpt, RemoteOpt, option_parser, parse_size, write_err
from .options import (CheckpointsOpt, Compression, CompressionOpt, Encoding, EncodingOpt, KvType, KvTypeOpt, Mode,
                      ModeOpt, open_session, progress_bar)


HELP = """Serve the OpenAI API from the cache: each schema is a model; the bare model answers
any chat, reusing the states of recent prompts.

\b
  pc serve schemas/gpl-manual.xml --port 8080
  curl -s localhost:8080/v1/models

Limits (--queue, --max-tokens-limit, --max-body), --cache-dir and the cache settings:
docs/usage.md#pc-serve-schema"""


def serve(
    schemas: list[str] = typer.Argument(None, metavar="[SCHEMA]...", show_default=False,
                                        help="Schemas to serve, each a model named by its PML name."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDR", show_default=False,
                             help="Address to listen on (127.0.0.1)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, metavar="N", show_default=False,
                             help="Port (8080; 0: any free one, printed at start)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="PC_API_KEY", metavar="KEY", show_envvar=False,
                                          help="Require 'Authorization: Bearer KEY' ($PC_API_KEY)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Allow an address other than loopback without a key."),
    parallel: int = typer.Option(1, "--parallel", min=1, max=64, metavar="N", show_default=False,
                                 help="Workers, each with its own context (1)."),
    cache_ram: int = typer.Option("2GiB", "--cache-ram", metavar="SIZE", parser=option_parser(parse_size),
                                  show_default=False, help="RAM for recent plain prompts' states (2GiB; 0: none)."),
    learn: bool = typer.Option(False, "--learn",
                               help="Bare model: reuse cached text anywhere; learn new."),
    queue: int = typer.Option(64, "--queue", min=1, hidden=True, help="Requests waiting for a worker before the "
                              "server answers 503 (with Retry-After)."),
    max_tokens_limit: int = typer.Option(2048, "--max-tokens-limit", min=1, hidden=True,
                                         help="The most tokens a request may ask for (also the budget of one "
                                         "that gives no max_tokens)."),
    max_body: int = typer.Option("4MiB", "--max-body", metavar="SIZE", parser=option_parser(parse_size), hidden=True,
                                 help="The largest request body accepted (413 beyond)."),
    model: Optional[str] = ModelOpt,
    cache_dir: Optional[str] = HiddenCacheOpt,
    encoding: Encoding = EncodingOpt,
    compression: Compression = CompressionOpt,
    kv_type: KvType = KvTypeOpt,
    mode: Mode = ModeOpt,
    checkpoints: int = CheckpointsOpt,
    remote: Optional[str] = RemoteOpt,
) -> None:
    from ..api import load_schema
    from ..serve.server import Limits, listen, run

    if max_body < 1024:
        raise errors.UsageError("--max-body must be at least 1KiB")
    sock = listen(host, port, api_key=api_key, no_auth=no_auth)
    loaded = {}
    for path in schemas or []:
        sch = load_schema(path)
        if sch.name in loaded:
            raise errors.UsageError(f"two schemas are named '{sch.name}' ({loaded[sch.name].path} and {path}): "
                                    "the name is the model id")
        loaded[sch.name] = sch
    threads = 0 if parallel == 1 else max(1, (os.cpu_count() or 1) // parallel)
    sessions = [open_session(model, cache_dir, encoding, compression, kv_type, mode, checkpoints, threads=threads,
                             remote=remote) for _ in range(parallel)]
    if learn and sessions[0].mode != "modular":
        raise errors.UsageError(f"--learn moves cached states to where a text stands, which needs modular mode; "
                                f"this model runs in {sessions[0].mode} mode")
    bar = progress_bar(True)
    with bar:
        for sch in loaded.values():
            report = sessions[0].compile(sch, progress=bar.update)
            for w in report.warnings:
                write_err(f"warning: {w}")
            computed = sum(1 for m in report.modules if m.status == "computed")
            if computed:
                write_err(f"compiled {sch.name}: {computed} of {len(report.modules)} state(s) computed "
                          f"in {report.seconds:.1f} s")
    bare = Path(sessions[0].model_path).name.removesuffix(".gguf")
    name, port = sock.getsockname()[:2]
    shown = f"[{name}]" if ":" in name else name
    write_err(f"pc serve: listening on http://{shown}:{port}/v1 (models: {', '.join([*loaded, bare])}; "
              f"{parallel} worker{'s' if parallel > 1 else ''}; {sessions[0].mode} mode)")
    run(sock, sessions, schemas=loaded, bare=bare, api_key=api_key,
        limits=Limits(max_body=max_body, max_tokens=max_tokens_limit, queue=queue, cache_ram=cache_ram,
                      learn=learn))
    write_err("pc serve: stopped")

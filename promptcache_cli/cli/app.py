"""The `pc` command: the Typer app and its entry point. Each command lives in a module of its own
(compile.py, ask.py, cache.py, plan.py, bench.py) and calls the library; answers go to stdout,
progress, warnings and timings to stderr, and ``--json`` prints one object on stdout instead.
``main`` turns every known error into one line and its exit code."""

from __future__ import annotations

import os
import sys

import typer

from .. import errors
from .ask import HELP as ASK_HELP, ask
from .batch import HELP as BATCH_HELP, batch
from .bench import HELP as BENCH_HELP, bench
from .cache import (GC_HELP, LS_HELP, PATH_HELP, RM_HELP, VERIFY_HELP, gc_cmd, ls_cmd, path_cmd, rm_cmd,
                    verify_cmd)
from .common import ClosedStdoutGuard, StdoutClosed, remote_flag, write_err
from .compile import COMPILE_HELP, INSPECT_HELP, compile, inspect
from .plan import HELP as PLAN_HELP, plan
from .remote import PULL_HELP, PUSH_HELP, pull, push
from .serve import HELP as SERVE_HELP, serve

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="""\b
Answer questions about long text fast, from cached states; docs/usage.md
  pc ask -f notes.txt "When is the deadline?"   (or -s schemas/gpl-manual.xml)
""",
)

SHORT = {
    "ask": "Answer a question about files (-f) or a schema (-s).",
    "compile": "Compute and store a schema's (or files') states.",
    "inspect": "Show a schema's layout: offsets and token lengths.",
    "ls": "List what the cache holds.",
    "verify": "Check every cache file's checksums.",
    "gc": "Remove unused, old or least recently used cache files.",
    "rm": "Remove a schema's cache files.",
    "path": "Print the cache folder.",
    "plan": "Prefix mode: where to keep checkpoints.",
    "bench": "Run the benchmark suite.",
    "serve": "Serve an OpenAI-compatible API over HTTP.",
    "batch": "Answer JSON lines of questions with one model load.",
    "push": "Upload a schema's cache files to the remote store.",
    "pull": "Download a schema's cache files from the remote store.",
}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"pc (promptcache_cli) {version('promptcache_cli')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


for _name, _command, _help in (
        ("ask", ask, ASK_HELP), ("compile", compile, COMPILE_HELP), ("inspect", inspect, INSPECT_HELP),
        ("ls", ls_cmd, LS_HELP), ("verify", verify_cmd, VERIFY_HELP), ("gc", gc_cmd, GC_HELP),
        ("rm", rm_cmd, RM_HELP), ("path", path_cmd, PATH_HELP), ("plan", plan, PLAN_HELP),
        ("bench", bench, BENCH_HELP), ("serve", serve, SERVE_HELP), ("batch", batch, BATCH_HELP),
        ("push", push, PUSH_HELP), ("pull", pull, PULL_HELP)):
    app.command(_name, help=_help, short_help=SHORT[_name])(_command)


def _click_command():
    """The click command Typer makes of the app, its completion options' help made shorter.
    (Completion costs `pc ask` nothing measurable: typer.main imports its completion modules
    either way, and building the two options took 0.15 ms: docs/design.md.)"""
    command = typer.main.get_command(app)
    for param in command.params:
        if param.name == "show_completion":
            param.help = "Print the completion script (to install it yourself)."
        elif param.name == "install_completion":
            param.help = "Install completion for this shell (bash, zsh, fish)."
    return command


def main() -> None:
    """Entry point: run the app, turning every known error into one line and an exit code."""
    if not isinstance(sys.stdout, ClosedStdoutGuard):
        sys.stdout = ClosedStdoutGuard(sys.stdout)
    try:
        rv = _click_command()(args=remote_flag(sys.argv[1:]), standalone_mode=False, prog_name="pc")
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
            if type(exc).__name__ == "NoArgsIsHelpError":  # `pc` alone: the help, on stdout
                sys.stdout.write(exc.format_message() + "\n")
                sys.exit(errors.EXIT_USAGE)
            if not exc.format_message():  # the help is printed already, nothing to add
                sys.exit(errors.EXIT_USAGE)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            message = exc.format_message()
            if getattr(exc, "possibilities", None) and getattr(exc, "option_name", None):  # an unknown option
                *others, last = sorted(exc.possibilities)  # click's closest (difflib), up to three
                close = f"{', '.join(others)} or {last}" if others else last
                message = f"No such option: {exc.option_name}; did you mean {close}?"
            write_err(f"pc: {message}{hint}".replace("\n", " "))
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

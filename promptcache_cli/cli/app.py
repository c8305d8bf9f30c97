"""The `pc` command: the Typer app and its entry point. Each command lives in a module of its own
(compile.py, ask.py, cache.py, plan.py, bench.py) and calls the library; answers go to stdout,
progress, warnings and timings to stderr, and ``--json`` prints one object on stdout instead.
``main`` turns every known error into one line and its exit code."""

from __future__ import annotations

import os
import sys

import typer

from .. import errors
from .ask import ask
from .batch import batch
from .bench import bench
from .cache import gc_cmd, ls_cmd, path_cmd, rm_cmd, verify_cmd
from .common import ClosedStdoutGuard, StdoutClosed, remote_flag, write_err
from .compile import compile, inspect
from .plan import plan
from .remote import pull, push
from .serve import serve

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Answer questions about long, reused context fast: compile a schema's modules into "
    "cached attention states once, then ask from the cache.",
)

for _name, _command in (("compile", compile), ("ask", ask), ("inspect", inspect), ("path", path_cmd),
                        ("plan", plan), ("bench", bench), ("ls", ls_cmd), ("verify", verify_cmd), ("gc", gc_cmd),
                        ("rm", rm_cmd), ("serve", serve), ("batch", batch), ("push", push), ("pull", pull)):
    app.command(_name)(_command)


def main() -> None:
    """Entry point: run the app, turning every known error into one line and an exit code."""
    if not isinstance(sys.stdout, ClosedStdoutGuard):
        sys.stdout = ClosedStdoutGuard(sys.stdout)
    try:
        rv = app(args=remote_flag(sys.argv[1:]), standalone_mode=False)
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

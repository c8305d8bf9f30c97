"""`pc` and `python -m promptcache_cli`: the CLI, imported under a Ctrl-C guard, and a quick exit.

A `pc ask` first starts loading its model on a thread (preload.py), which runs beside the imports.
Importing the CLI (Typer, rich, and through them most of what `pc` needs) takes a good hundred
milliseconds. Until it is done, a Ctrl-C ends `pc` at once from the signal handler (one line,
exit 130): a KeyboardInterrupt raised there could land inside the import machinery, where Python
reports it as "ignored" and goes on, or end in a traceback. Only the interpreter's own start-up,
before this file runs, is outside the guard: a Ctrl-C there ends as Python decides (killed by the
signal, one of its "Fatal Python error" paragraphs, or reported by its site module, which then
goes on). After the imports a Ctrl-C is a KeyboardInterrupt again, which the CLI turns into the
same line and code once it has cleaned up (cli.main).

Once the command has returned, the process ends with ``os._exit``: every file it wrote is synced
and renamed, every lock released and every output flushed by then, and what is left (the model,
its context, the interpreter's own teardown) the operating system reclaims faster than freeing
it piece by piece: about 40 ms of a cached `pc ask` at ~4k tokens (cli/common.py, outlive).
"""

from __future__ import annotations

import errno
import os
import signal
import sys

INTERRUPTED = 130  # errors.EXIT_INTERRUPTED, which is imported only once the guard is up


class _ClosedStdout:
    """stdout when `pc` started with it closed (``>&-``): the first write fails, and `pc` exits 8
    (cli.common.ClosedStdoutGuard); a command that writes nothing there is not affected."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1


def _standard_streams() -> None:
    """Give a standard stream closed at start (``<&-``, ``>&-``, ``2>&-``) /dev/null as its
    descriptor, before anything is opened: otherwise the next file `pc` opens (a model, a lock
    file, a cache file) would get descriptor 0, 1 or 2, and an answer could be written into it.
    A closed stdout then fails its first write (exit 8), a closed stderr loses the messages (the
    exit code still tells), a closed stdin reads as empty."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            closed.append(fd)
    if 0 in closed or sys.stdin is None:
        sys.stdin = open(0, encoding="utf-8", closefd=False)
    if 1 in closed or sys.stdout is None:
        sys.stdout = _ClosedStdout()
    if 2 in closed or sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)


def main() -> None:
    _standard_streams()
    guarded = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # an ignored SIGINT stays ignored
    if guarded:
        signal.signal(signal.SIGINT, _interrupted)
    from .llama import preload, threads

    threads.set_wait_policy()  # before llama.cpp's libraries (and libgomp with them) load
    path = preload.wanted(sys.argv[1:])
    if path:
        preload.start(path)
    from .cli.app import main as run
    from .cli.common import leave_to_os

    if guarded:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    leave_to_os()
    try:
        run()
        code = 0
    except SystemExit as e:
        code = e.code
    _exit(code)


def _interrupted(signum, frame) -> None:
    """Ctrl-C while `pc` starts: one line and exit 130, now (nothing is written yet, and the
    preload thread may be inside llama.cpp)."""
    try:
        os.write(2, b"pc: interrupted\n")
    except OSError:
        pass
    os._exit(INTERRUPTED)


def _exit(code) -> None:
    """End the process with ``code`` after flushing stdout and stderr, without the interpreter's
    teardown. A code that is not a number is left to Python (it prints it)."""
    from .cli.common import write_err
    from .errors import EXIT_OUTPUT, OutputError

    if code is None:
        code = 0
    if not isinstance(code, int):
        raise SystemExit(code)
    try:
        sys.stdout.flush()
    except OutputError as e:  # a full disk: exit 8 (cli.main has reported any earlier error)
        if code == 0:
            write_err(f"pc: {e}")
            code = EXIT_OUTPUT
    except Exception:  # noqa: BLE001 - the reader went away (StdoutClosed): quiet, as cli.main does
        pass
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - nowhere left to report it
        pass
    os._exit(code)


if __name__ == "__main__":
    main()

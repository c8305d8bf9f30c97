"""`pc` and `python -m promptcache_cli`: the CLI, imported under a Ctrl-C guard.

Importing the CLI (Typer, rich, and through them most of what `pc` needs) takes a few tens of
milliseconds; a Ctrl-C that lands then ends like any other Ctrl-C (one line, exit 130), not with
a KeyboardInterrupt traceback. Only the interpreter's own start-up, before this file runs, is
outside the guard: a Ctrl-C there ends as Python decides (killed by the signal, or Python's
"Fatal Python error" about its site module).
"""

from __future__ import annotations

import sys

from .errors import EXIT_INTERRUPTED


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("pc: interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    run()


if __name__ == "__main__":
    main()

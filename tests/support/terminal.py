"""Running `pc` the way a person sees it: under a pseudo-terminal (pexpect), its output rendered by a
terminal emulator (pyte) into the screen's lines, snapshots taken while it runs."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pexpect
import pyte

from .pc_process import TIMEOUT

BAR = "━"  # rich's progress bar is drawn with it


@dataclass
class Screen:
    code: int  # the exit code (128 + N when killed by signal N)
    lines: list[str]  # the screen at the end, each line's trailing blanks and the trailing empty lines dropped
    frames: list[list[str]] = field(default_factory=list)  # the screen after each chunk of output
    raw: bytes = b""  # everything `pc` wrote to the terminal
    cursor_hidden: bool = False

    cols: int = 80

    @property
    def text(self) -> str:
        """The screen's text, lines the terminal wrapped (full to the last column) joined again."""
        out = ""
        for i, line in enumerate(self.lines):
            out += line + ("" if len(line) == self.cols and i + 1 < len(self.lines) else "\n")
        return out

    def seen(self, pattern: str) -> list[str]:
        """Every line of every snapshot matching the regular expression ``pattern``."""
        rx = re.compile(pattern)
        return [line for frame in self.frames for line in frame if rx.search(line)]


def _lines(screen: pyte.Screen) -> list[str]:
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run(*args: str | Path, cols: int = 80, rows: int = 50, cache: Path | None = None,
        on_frame: Callable[[list[str], pexpect.spawn], None] | None = None, timeout: float = TIMEOUT,
        **env: str) -> Screen:
    """`pc ARGS` under a ``cols`` x ``rows`` pseudo-terminal (stdin, stdout and stderr all the
    terminal); ``on_frame(lines, child)`` is called after each chunk of output (to send a key)."""
    full = dict(os.environ, TERM="xterm-256color", **env)
    full.pop("COLUMNS", None)
    full.pop("LINES", None)
    if cache is not None:
        full["PC_CACHE_DIR"] = str(cache)
    child = pexpect.spawn(sys.executable, ["-m", "promptcache_cli", *map(str, args)], dimensions=(rows, cols),
                          env=full, timeout=timeout, echo=False)
    screen = pyte.Screen(cols, rows)
    stream = pyte.ByteStream(screen)
    frames: list[list[str]] = []
    raw = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            child.kill(signal.SIGKILL)
            raise AssertionError(f"pc {' '.join(map(str, args))} ran longer than {timeout} s:\n" + "\n".join(_lines(screen)))
        try:
            data = child.read_nonblocking(65536, timeout=0.2)
        except pexpect.TIMEOUT:
            continue
        except pexpect.EOF:
            break
        raw += data
        stream.feed(data)
        frames.append(_lines(screen))
        if on_frame is not None:
            on_frame(frames[-1], child)
    child.close()
    code = child.exitstatus if child.exitstatus is not None else 128 + (child.signalstatus or 0)
    return Screen(code, _lines(screen), frames, bytes(raw), screen.cursor.hidden, cols)


def words(text: str) -> str:
    """``text`` with every run of whitespace one space: a terminal wraps long lines."""
    return " ".join(text.split())

"""Real text nobody in this project wrote: the license texts Debian ships and Python's own
reference documentation (``pydoc_data.topics``), cut to token budgets, with facts planted in them."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

LICENSES = Path("/usr/share/common-licenses")
SHIPPED = Path(__file__).resolve().parent.parent.parent / "schemas" / "docs"  # copies, when Debian's are missing


class Tokenizer(Protocol):
    def tokenize(self, text: str, *, special: bool) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...


class CorpusError(Exception):
    """A text the benchmark needs is not on this machine."""


def text(source: str) -> str:
    """A real text by name: ``license:GPL-3`` or ``python:compound`` (a topic of Python's
    reference documentation)."""
    kind, _, name = source.partition(":")
    if kind == "license":
        for path in (LICENSES / name, SHIPPED / f"{name}.txt"):
            if path.is_file():
                return path.read_text(encoding="utf-8", errors="replace")
        raise CorpusError(f"license text {name!r} not found in {LICENSES} or {SHIPPED}")
    if kind == "python":
        from pydoc_data.topics import topics

        if name not in topics:
            raise CorpusError(f"Python documentation topic {name!r} not found")
        return topics[name]
    raise CorpusError(f"unknown text source {source!r}")


def count(tok: Tokenizer, body: str) -> int:
    """Tokens of a module's text the way the layout counts them (PML strips module text)."""
    return len(tok.tokenize(body.strip(), special=False))


def take_lines(tok: Tokenizer, body: str, n_tokens: int) -> str:
    """The longest run of whole leading lines of ``body`` with at most ``n_tokens`` tokens."""
    lines = body.splitlines(keepends=True)
    lo, hi = 0, len(lines)
    while lo < hi:  # binary search on the number of lines
        mid = (lo + hi + 1) // 2
        if count(tok, "".join(lines[:mid])) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return "".join(lines[:lo]).strip()


def plant(body: str, sentence: str, *, at: int) -> str:
    """``body`` with ``sentence`` inserted as its own line at the first line break from character ``at``."""
    cut = body.find("\n", at)
    if cut < 0:
        return body + "\n" + sentence
    return body[:cut] + "\n" + sentence + body[cut:]


def cuts(tok: Tokenizer, body: str, around: int, *, spread: int = 16) -> dict[int, str]:
    """Prefixes of ``body`` cut at token boundaries, by their exact length as a module (round trip
    through the tokenizer checked), for lengths near ``around``."""
    ids = tok.tokenize(body.strip(), special=False)
    out: dict[int, str] = {}
    for n in range(max(1, around - spread), min(len(ids), around + spread) + 1):
        piece = b"".join(tok.token_bytes(t) for t in ids[:n]).decode("utf-8", errors="ignore").strip()
        out.setdefault(count(tok, piece), piece)
    return out

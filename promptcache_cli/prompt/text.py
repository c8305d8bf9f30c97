"""Prompts without a schema: a chat's messages rendered by the model's own chat template, with where
each message's text lies (natural boundaries for what gets learned), and where a long run of text
may be cut into spans worth storing.

Message texts are tokenized as plain text (control tokens such as ``<|im_start|>`` written in them
stay text); only the template's glue is parsed for control tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import InputError
from . import chat_template
from .layout import Tokenizer

LEARN_MIN = 64  # the shortest run of fresh text worth storing
LEARN_TARGET = 256  # runs are cut at the first paragraph break after this many tokens,
LEARN_MAX = 512  # and at this many tokens where no paragraph ends (fixed chunks, as LMCache cuts)


@dataclass(frozen=True)
class ChatPrompt:
    tokens: tuple[int, ...]  # up to and including the generation prompt
    contents: tuple[tuple[int, int], ...]  # each message's text: [start, end) in ``tokens``


def chat_prompt(messages: Sequence[tuple[str, str]], tok: Tokenizer, template: str | None) -> ChatPrompt:
    """A chat's tokens as the model's template renders it, ending with the generation prompt; the
    beginning-of-sequence token first where the model wants one and the template writes none."""
    if not messages:
        raise InputError("a chat needs at least one message")
    bos = tok.token_text(tok.bos) if tok.bos >= 0 else ""
    glue = chat_template.render(template, [role for role, _ in messages], bos_token=bos).glue
    out: list[int] = []
    contents = []
    if tok.add_bos and tok.bos >= 0 and not glue[0].startswith(bos or "\0"):
        out.append(tok.bos)
    for i, (_, text) in enumerate(messages):
        out += tok.tokenize(glue[i], special=True)
        start = len(out)
        out += tok.tokenize(text, special=False)
        contents.append((start, len(out)))
    out += tok.tokenize(glue[-1], special=True)
    return ChatPrompt(tuple(out), tuple(contents))


def learn_cuts(start: int, end: int, text_of: Callable[[int], str], *, minimum: int = LEARN_MIN,
               target: int = LEARN_TARGET, maximum: int = LEARN_MAX) -> list[tuple[int, int]]:
    """Spans worth storing in the run of positions [start, end): cut at paragraph breaks (after a
    token ending a blank line) once a span holds ``target`` tokens, at ``maximum`` tokens where no
    paragraph ends; a last piece shorter than ``minimum`` joins the span before it (or, alone, is
    not stored). ``text_of(position)``: that token's text."""
    if end - start < minimum:
        return []
    cuts: list[tuple[int, int]] = []
    a = start
    prev = ""
    for i in range(start, end):
        piece = text_of(i)
        n = i + 1 - a
        breaks = "\n\n" in piece or (piece.startswith("\n") and prev.endswith("\n"))
        if (n >= target and breaks) or n >= maximum:
            cuts.append((a, i + 1))
            a = i + 1
        prev = piece
    if a < end:
        if end - a < minimum and cuts:
            cuts[-1] = (cuts[-1][0], end)
        elif end - a >= minimum:
            cuts.append((a, end))
    return cuts

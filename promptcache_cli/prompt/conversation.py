"""Conversations rendered by the model's own chat template (chat_template.py):

- after a schema's prompt (:func:`turn_tokens`): the prompt ends inside a user turn (the schema's
  last one, or one the template opened after it); the conversation's first user turn goes there,
  the later turns follow as the template renders them, then the generation prompt;
- a whole chat without a schema (:func:`chat_tokens`): every message as the template renders it.

Message texts are tokenized as plain text (control tokens such as ``<|im_start|>`` written in them
stay text); only the template's glue is parsed for control tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError, TemplateError
from . import chat_template
from .layout import QUESTION_SEPARATOR, Layout, Tokenizer

Turn = tuple[str, str]  # (role, text)


@dataclass(frozen=True)
class Conversation:
    """A question after earlier turns: ``history`` holds (role, text) pairs, the first a user
    turn; ``question`` is the next user turn."""

    history: tuple[Turn, ...]
    question: str


def turn_tokens(layout: Layout, conversation: Conversation, tok: Tokenizer, template: str | None) -> list[int]:
    """The tokens after a schema's prompt for ``conversation``, up to the generation prompt."""
    turns = list(conversation.history) + [("user", conversation.question)]
    if turns[0][0] != "user":
        raise InputError(f"a conversation after the schema's prompt starts with a user turn, not '{turns[0][0]}'")
    roles = list(layout.roles)
    bos = _bos_text(tok)
    glue = chat_template.render(template, roles + [role for role, _ in turns[1:]], bos_token=bos).glue
    if glue[: len(roles)] != chat_template.render(template, roles, bos_token=bos).glue[: len(roles)]:
        raise TemplateError("the model's chat template renders the schema's turns differently when more turns "
                            "follow; this model cannot continue a conversation after a schema")
    first = turns[0][1]
    out = tok.tokenize((QUESTION_SEPARATOR + first) if first and layout.tail_joins else first, special=False)
    for i, (_, text) in enumerate(turns[1:]):
        out += tok.tokenize(glue[len(roles) + i], special=True) + tok.tokenize(text, special=False)
    return out + tok.tokenize(glue[-1], special=True)


def chat_tokens(messages: Sequence[Turn], tok: Tokenizer, template: str | None) -> list[int]:
    """A whole chat's tokens as the template renders it, ending with the generation prompt; the
    beginning-of-sequence token first where the model wants one and the template writes none."""
    if not messages:
        raise InputError("a chat needs at least one message")
    bos = _bos_text(tok)
    glue = chat_template.render(template, [role for role, _ in messages], bos_token=bos).glue
    out: list[int] = []
    if tok.add_bos and tok.bos >= 0 and not glue[0].startswith(bos or "\0"):
        out.append(tok.bos)
    for i, (_, text) in enumerate(messages):
        out += tok.tokenize(glue[i], special=True) + tok.tokenize(text, special=False)
    return out + tok.tokenize(glue[-1], special=True)


def _bos_text(tok: Tokenizer) -> str:
    return tok.token_text(tok.bos) if tok.bos >= 0 else ""

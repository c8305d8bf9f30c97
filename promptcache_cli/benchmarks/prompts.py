"""One prompt for every system: the tokens `pc ask --no-cache` decodes, and the same as text.

``pc`` renders the schema through the model's chat template (``layout``): the selected modules in
position order, parameter values in place, the question after a blank line, then the template's
generation prompt. The text given to llama-cpp-python is exactly those tokens turned back into
text (control tokens such as ``<|im_start|>`` written out). llama-cpp-python tokenizes that text
whole, so it can come out a few tokens different where ``pc`` tokenized pieces separately (module
boundaries); both counts are recorded with every measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..modular.session import Session
from .workloads import Question, Workload


@dataclass(frozen=True)
class Prompt:
    tokens: tuple[int, ...]
    text: str


def render(session: Session, wl: Workload, q: Question) -> Prompt:
    schema = wl.schema()
    layout = session.layout(schema)
    plan = session.prompt_plan(layout, wl.selection(q))
    tokens = [t for kind, obj in plan for t in (obj.tokens if kind == "segment" else obj)]
    tokens += session.question_tokens(layout, q.text)
    return Prompt(tuple(tokens), text_of(session.model, tokens))


def text_of(model, tokens: list[int]) -> str:
    """Tokens as text; control tokens (which have no plain bytes) written out as their text."""
    parts = []
    for t in tokens:
        piece = model.token_bytes(t)
        parts.append(piece if piece else model.token_text(t).encode("utf-8"))
    return b"".join(parts).decode("utf-8", errors="replace")

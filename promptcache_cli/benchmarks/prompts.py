"""One prompt for every system: the tokens `pc ask --no-cache` decodes, and the same as text.

``pc`` renders the schema through the model's chat template: the selected modules in position
order, parameter values in place, the question after a blank line, then the template's generation
prompt (:meth:`promptcache_cli.Session.prompt`). The text given to llama-cpp-python is exactly
those tokens turned back into text (control tokens such as ``<|im_start|>`` written out).
llama-cpp-python tokenizes that text whole, so it can come out a few tokens different where ``pc``
tokenized pieces separately (module boundaries); both counts are recorded with every measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api import Session
from .workloads import Question, Workload


@dataclass(frozen=True)
class Prompt:
    tokens: tuple[int, ...]
    text: str


def render(session: Session, wl: Workload, q: Question) -> Prompt:
    tokens = session.prompt(wl.request(q)).tokens
    return Prompt(tokens, session.text_of(tokens))

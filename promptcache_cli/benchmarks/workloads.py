"""The speed workloads, each a PML schema over real text plus the questions asked of it.

- ``docqa``: document question answering. A pool of documents and ``slots`` unions, each union
  holding every document; a question picks one document per slot, so every question imports a
  different subset of documents in a different order (the only way a static layout can reorder:
  each document is cached once per slot it may appear in). Total context about ``level`` tokens.
- ``prefix``: one shared system prompt and one long document, questions with varying tails (short
  questions, and long ones carrying a pasted excerpt): the case prefix caches are built for.
- ``params``: a union of answer styles, two of them with a parameter filled per question, then a
  subset of documents: parameterized and union prompts.

Warm-up questions are asked (untimed) by every system before the measured ones: they let the
caches of llama-cpp-python see every document once, as ``pc compile`` does; no measured question
repeats a warm-up's document order.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import api
from . import corpus

if TYPE_CHECKING:
    from .. import Schema

SYSTEM = "You answer questions about the documents the user gives, briefly and accurately."
MAX_PROMPT = 7868  # SmolLM2 was trained on 8,192 positions: an 8k prompt plus a 32-token answer stays under ~7,900
DOCQA_POOL = ("license:GPL-3", "license:MPL-1.1", "python:compound", "python:typesseq")
DOCQA_QUESTIONS = (
    "Which of these documents talks about warranties?",
    "Summarize the first document in one sentence.",
    "What is the second document about?",
    "Does any document mention the word 'copy'? Quote it.",
    "Name one rule stated in the last document.",
    "Which document is the longest, and what is it about?",
    "List the topics these documents cover.",
    "What does the first document say about changes or modifications?",
)
PREFIX_SOURCE = "license:LGPL-2.1"
PREFIX_QUESTIONS = (
    "Can I link a proprietary program against this library?",
    "What must I provide when I distribute a modified copy?",
    "Does the license cover running the program?",
    "Summarize section 6 in one sentence.",
    "Is there any warranty?",
    "Who may change the terms of this license?",
)
PARAM_DOCS = {"bsd": ("license:BSD", 400), "artistic": ("license:Artistic", 600),
              "apache": ("license:Apache-2.0", 700), "mpl": ("license:MPL-2.0", 700)}
CLIENT = '<parameter name="client" length="8" scaffold="a client"/>'
AUDIENCE = '<parameter name="audience" length="8" scaffold="a class"/>'
PARAM_VALUES = {"lawyer": ("client", ("ACME Corp", "Globex", "Initech", "Umbrella Ltd", "Soylent")),
                "teacher": ("audience", ("first-year students", "retirees", "engineers", "children"))}


@dataclass(frozen=True)
class Question:
    modules: tuple[str, ...]
    text: str
    params: tuple[str, ...] = ()
    expected: str | None = None  # a substring the answer must contain (planted facts)


@dataclass
class Workload:
    name: str
    kind: str  # docqa | prefix | params | quality
    level: int  # nominal total context in tokens
    schema_path: Path
    warmup: list[Question]
    questions: list[Question]
    note: str
    _schema: Schema | None = field(default=None, repr=False)

    def schema(self) -> Schema:
        if self._schema is None:
            self._schema = api.load_schema(self.schema_path)
        return self._schema

    def request(self, q: Question, **options) -> api.Request:
        """The request asking ``q`` (``options``: the other Request fields)."""
        return api.Request(self.schema(), q.text, modules=q.modules, params=q.params, **options)

    def selection(self, q: Question):
        return api.select(self.schema(), self.request(q))


def slug(source: str) -> str:
    """A module-name-safe short name for a text source: ``license:MPL-1.1`` -> ``mpl-1-1``."""
    return re.sub(r"[^a-z0-9]+", "-", source.split(":", 1)[1].lower()).strip("-")


def _write(folder: Path, name: str, xml: str, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for fname, body in files.items():
        (folder / fname).write_text(body + "\n", encoding="utf-8")
    path = folder / f"{name}.xml"
    path.write_text(xml, encoding="utf-8")
    return path


def docqa(folder: Path, tok: corpus.Tokenizer, *, level: int, n_questions: int, slots: int = 3,
          pool: tuple[str, ...] = DOCQA_POOL, seed: int = 0) -> Workload:
    """Subsets of documents in different orders at a total context of about ``level`` tokens."""
    per_doc = (min(level, MAX_PROMPT) - 64) // slots  # 64: template, system prompt, separators, question
    names = [slug(s) for s in pool]
    files = {f"{n}.txt": corpus.take_lines(tok, corpus.text(s), per_doc) for n, s in zip(names, pool, strict=True)}
    unions = "\n".join(
        "    <union>" + "".join(f'<module name="s{i}-{n}" src="{n}.txt"/>' for n in names) + "</union>"
        for i in range(1, slots + 1)
    )
    name = f"docqa-{level}"
    xml = f'<schema name="{name}">\n  <system>{SYSTEM}</system>\n  <user>\n{unions}\n  </user>\n</schema>\n'
    path = _write(folder / name, name, xml, files)
    rng = random.Random(seed)
    orders = list(itertools.permutations(names, slots))
    rng.shuffle(orders)
    if n_questions > len(orders):
        raise ValueError(f"{name}: {n_questions} questions asked for, only {len(orders)} document orders")
    ask = [DOCQA_QUESTIONS[i % len(DOCQA_QUESTIONS)] for i in range(n_questions + len(names))]
    rng.shuffle(ask)
    questions = [Question(tuple(f"s{i}-{n}" for i, n in enumerate(order, 1)), q)
                 for order, q in zip(orders[:n_questions], ask, strict=False)]
    warmup = [Question((f"s1-{n}",), ask[n_questions + i]) for i, n in enumerate(names)]
    note = (f"{len(pool)} documents ({', '.join(pool)}), {slots} slots; each question picks a different "
            f"ordered choice of {slots}; warm-up: each document alone in slot 1")
    return Workload(name, "docqa", level, path, warmup, questions, note)


def prefix(folder: Path, tok: corpus.Tokenizer, *, level: int, n_questions: int, seed: int = 0,
           sources: tuple[str, ...] = (PREFIX_SOURCE,), pasted: bool = True, max_prompt: int = MAX_PROMPT) -> Workload:
    """One system prompt and one document of about ``level`` tokens (``sources`` one after the
    other); the tails vary (half of them carry a pasted excerpt unless ``pasted`` is off)."""
    text = "\n\n".join(corpus.text(s) for s in sources)
    body = corpus.take_lines(tok, text, min(level, max_prompt) - 160)
    excerpt = corpus.take_lines(tok, corpus.text("python:exceptions"), 90)
    name = f"prefix-{level}"
    xml = (f'<schema name="{name}">\n  <system>{SYSTEM}</system>\n'
           f'  <user>\n    <module name="doc" src="doc.txt"/>\n  </user>\n</schema>\n')
    path = _write(folder / name, name, xml, {"doc.txt": body})
    rng = random.Random(seed)
    tails = []
    for i in range(n_questions + 1):
        q = PREFIX_QUESTIONS[i % len(PREFIX_QUESTIONS)]
        tails.append(f"Here is a note from a colleague:\n{excerpt}\n\n{q}" if i % 2 and pasted else q)
    rng.shuffle(tails)
    questions = [Question(("doc",), t) for t in tails[1:]]
    note = (f"system prompt + {' + '.join(sources)} ({len(PREFIX_QUESTIONS)} questions"
            + ("; half of the tails carry a pasted excerpt of Python's documentation of about 90 tokens)"
               if pasted else ")") + "; warm-up: one question")
    return Workload(name, "prefix", level, path, [Question(("doc",), tails[0])], questions, note)


def params(folder: Path, tok: corpus.Tokenizer, *, n_questions: int, seed: int = 0) -> Workload:
    """A union of answer styles with parameters, then two or three of four license texts."""
    files = {f"{n}.txt": corpus.take_lines(tok, corpus.text(src), k) for n, (src, k) in PARAM_DOCS.items()}
    docs = "\n".join(f'    <module name="{n}" src="{n}.txt"/>' for n in PARAM_DOCS)
    xml = f"""<schema name="params">
  <system>
    You answer questions about software licenses.
    <union scaffold="plain">
      <module name="plain">Use plain words a newcomer understands.</module>
      <module name="lawyer">Answer like a lawyer writing to {CLIENT}, citing section numbers.</module>
      <module name="teacher">Explain it to {AUDIENCE} as a patient teacher would.</module>
    </union>
  </system>
  <user>
{docs}
  </user>
</schema>
"""
    path = _write(folder / "params", "params", xml, files)
    rng = random.Random(seed)
    subsets = [s for k in (2, 3) for s in itertools.combinations(PARAM_DOCS, k)]
    questions: list[Question] = []
    for i in itertools.count():
        if len(questions) == n_questions + 1:
            break
        style = ("plain", "lawyer", "teacher")[i % 3]
        chosen = tuple(rng.choice(subsets))
        values = ()
        if style in PARAM_VALUES:
            pname, options = PARAM_VALUES[style]
            values = (f"{style}/{pname}={rng.choice(options)}",)
        q = rng.choice(("May I sell copies?", "Which of these licenses mentions patents?",
                        "What must I keep when I redistribute?", "Can I change the code and keep it private?"))
        made = Question((style, *chosen), q, values)
        if made not in questions:  # no measured prompt repeats another one exactly
            questions.append(made)
    note = ("system prompt with a union of 3 answer styles (2 with an 8-token parameter, filled per question), "
            "then 2 or 3 of 4 license texts; warm-up: one question")
    return Workload("params", "params", 0, path, questions[:1], questions[1:], note)

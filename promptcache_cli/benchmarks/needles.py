"""The answer-quality question set: real texts with planted facts (needles) whose answers are known.

Every document is cut to exactly the same number of tokens and offered in every one of ``slots``
unions, so a question imports a different subset of documents in a different order and the cached
prompt has no position gaps (the uncached prompt has none either): what differs between a cached
and an uncached answer is only what each module's states were computed after. Each union's
scaffold is a different document, so the scaffold encoding computes each module after a default
prompt the question usually does not use, as the reference implementation does.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

from . import corpus
from .workloads import SYSTEM, Question, Workload, _write, slug

NEEDLES = {  # source: (planted sentence, question, expected substring of a correct answer)
    "license:Apache-2.0": ("The project mascot is a green owl named Pim.", "What is the name of the project mascot?",
                           "Pim"),
    "license:MPL-2.0": ("The access code for the archive room is 4417.",
                        "What is the access code for the archive room?", "4417"),
    "license:Artistic": ("The maintainer of this package lives in Lisbon.",
                         "In which city does the maintainer of the package live?", "Lisbon"),
    "license:CC0-1.0": ("Releases of this work ship every 6 weeks.", "How many weeks are there between releases?",
                        "6"),
    "license:LGPL-3": ("The support hotline can be reached at extension 2931.",
                       "What is the extension of the support hotline?", "2931"),
    "python:execmodel": ("The build server of this project is named Aurora.",
                         "What is the name of the build server?", "Aurora"),
}


def found(expected: str | None, answer: str) -> bool | None:
    """Whether an answer states the planted fact: ``expected`` as a whole word or number, so
    "6" is found in "every 6 weeks" but not in "16" or "1.6" (None: the question has no needle)."""
    if expected is None:
        return None
    return re.search(rf"(?<![\w.]){re.escape(expected)}(?!\w)", answer) is not None


class NeedleError(Exception):
    """A text could not be cut to the exact length the quality set needs."""


def quality(folder: Path, tok: corpus.Tokenizer, *, doc_tokens: int, n_questions: int, slots: int = 3,
            n_docs: int = len(NEEDLES), seed: int = 0, scaffolds: bool = True, name: str = "quality") -> Workload:
    """``scaffolds``: each union's scaffold is a different document (the reference implementation's
    setting); without, no union has one (the document workload's setting: every document is then
    computed after the shared prefix alone, one file per document whatever its slot)."""
    sources = list(NEEDLES)[:n_docs]
    names = [slug(s) for s in sources]
    options = []
    for i, src in enumerate(sources):
        full, fact = corpus.text(src), NEEDLES[src][0]
        at = int(len(corpus.take_lines(tok, full, doc_tokens - 40)) * (0.2 + 0.15 * (i % 5)))  # 20% .. 80% in
        body = corpus.plant(corpus.take_lines(tok, full, doc_tokens + 60), fact, at=at)
        options.append({n: cut for n, cut in corpus.cuts(tok, body, doc_tokens).items() if fact in cut})
    common = sorted(set.intersection(*(set(o) for o in options)), key=lambda n: abs(n - doc_tokens))
    if not common:
        raise NeedleError(f"cannot cut the quality texts to one common length near {doc_tokens} tokens")
    files = {f"{name}.txt": o[common[0]] for name, o in zip(names, options, strict=True)}
    unions = "\n".join(
        (f'    <union scaffold="s{i}-{names[(i - 1) % len(names)]}">' if scaffolds else "    <union>")
        + "".join(f'<module name="s{i}-{n}" src="{n}.txt"/>' for n in names) + "</union>"
        for i in range(1, slots + 1)
    )
    xml = f'<schema name="{name}">\n  <system>{SYSTEM}</system>\n  <user>\n{unions}\n  </user>\n</schema>\n'
    path = _write(folder / name, name, xml, files)
    rng = random.Random(seed)
    orders = list(itertools.permutations(range(len(names)), slots))
    rng.shuffle(orders)
    if n_questions > len(orders):
        raise ValueError(f"{n_questions} quality questions asked for, only {len(orders)} document orders")
    questions = []
    for k, order in enumerate(orders[:n_questions]):
        asked = sources[order[k % slots]]  # the fact asked about sits in slot 1, 2, 3, 1, ...
        _, q, want = NEEDLES[asked]
        questions.append(Question(tuple(f"s{i}-{names[d]}" for i, d in enumerate(order, 1)), q, expected=want))
    note = (f"{len(sources)} texts of exactly {common[0]} tokens, each with a planted fact, {slots} slots; "
            "each question picks a different ordered choice of documents and asks for one planted fact")
    note += "" if scaffolds else "; no union has a scaffold member"
    return Workload(name, "quality", 0, path, [], questions, note)

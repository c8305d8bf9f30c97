"""The RAG workload: what a retrieval-augmented application sends, with no schema.

Eight documents of about 1k tokens of real text (license texts and Python's reference
documentation), each with a planted fact. Each request pastes 3 of the 8 into one user message in
random order, each after a short header, then asks for the planted fact of one of them. Warm-up
requests (untimed) show every document once first, as an application's first requests would, so
caches that learn (`pc` with ``learn``, llama.cpp's prompt cache) have seen each document; no
measured request repeats a warm-up's order or an earlier request.

Systems answer the same requests side by side (the order rotated request by request): `pc` without
a cache, `pc` finding cached text and learning (at ``--repair 0`` and at the default), and, through
an OpenAI client (serving.py), the servers. Per request: time to first token, the 32 greedy tokens
(against the uncached answer, beside the noise control: the uncached prompt's exact states rounded
to 9 mantissa bits, then the question), whether the planted fact is stated, the first token's KL
against the uncached distribution; per system the bytes it keeps.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .. import api
from . import corpus
from .needles import NEEDLES, found
from .perturb import rounded_blob
from .quality import CONTROL_BITS, _discordance, common_prefix, kl
from .systems import dir_bytes
from .workloads import SYSTEM

Progress = Callable[[str], None]
DOCS = {  # source: (planted sentence, question, expected): the quality set's six, and two more
    **NEEDLES,
    "license:GPL-3": ("The plant in the lobby is a fern called Otto.", "What is the fern in the lobby called?", "Otto"),
    "python:typesseq": ("The team meets every Thursday in room 12.", "On which day of the week does the team meet?",
                        "Thursday"),
}
DOC_TOKENS = 1000
CONTROL = f"exact-m{CONTROL_BITS}"


@dataclass(frozen=True)
class RagQuestion:
    docs: tuple[int, ...]  # which documents, in prompt order
    text: str  # the question
    expected: str | None  # the planted fact's answer (None: a warm-up)


@dataclass
class RagWorkload:
    titles: list[str]
    bodies: list[str]
    warmup: list[RagQuestion]
    questions: list[RagQuestion]
    note: str = ""

    def message(self, q: RagQuestion) -> str:
        """The user message: the documents, each after a short header, then the question."""
        parts = [f"Document {i}: {self.titles[d]}\n\n{self.bodies[d]}" for i, d in enumerate(q.docs, 1)]
        return "Use these documents to answer.\n\n" + "\n\n".join(parts) + f"\n\nQuestion: {q.text}"

    def messages(self, q: RagQuestion) -> list[tuple[str, str]]:
        return [("system", SYSTEM), ("user", self.message(q))]

    def request(self, q: RagQuestion, **options) -> api.TextRequest:
        return api.TextRequest(self.messages(q), **options)


def build(tok: corpus.Tokenizer, *, n_questions: int, n_docs: int = len(DOCS), per_request: int = 3,
          doc_tokens: int = DOC_TOKENS, seed: int = 0) -> RagWorkload:
    sources = list(DOCS)[:n_docs]
    bodies = []
    for i, src in enumerate(sources):
        full, fact = corpus.text(src), DOCS[src][0]
        body = corpus.take_lines(tok, full, doc_tokens)
        bodies.append(corpus.plant(body, fact, at=int(len(body) * (0.2 + 0.15 * (i % 5)))))
    titles = [src.split(":", 1)[1] for src in sources]
    rng = random.Random(seed)
    order = list(range(n_docs))
    warmup = [RagQuestion(tuple(order[i:i + per_request]), "Summarize these documents in one sentence.", None)
              for i in range(0, n_docs, per_request)]
    warmup[-1] = RagQuestion(tuple((order[-per_request:])), warmup[-1].text, None)
    seen = {w.docs for w in warmup}
    questions: list[RagQuestion] = []
    while len(questions) < n_questions:
        docs = tuple(rng.sample(range(n_docs), per_request))
        if docs in seen:
            continue
        seen.add(docs)
        asked = docs[len(questions) % per_request]  # the fact asked about sits first, second, third, first, ...
        _, question, want = DOCS[sources[asked]]
        questions.append(RagQuestion(docs, question, want))
    note = (f"{n_docs} documents of about {doc_tokens} tokens ({', '.join(sources)}), each with a planted fact; "
            f"{per_request} per request in random order after a short header, then a question about one planted "
            f"fact; {len(warmup)} warm-up requests show every document first")
    return RagWorkload(titles, bodies, warmup, questions, note)


@dataclass
class PcText:
    """`pc` answering text prompts in process: no cache, or finding and learning cached text.
    Systems with the same ``cache`` share one session and cache (they differ in how they answer
    from it, not in what it holds)."""

    name: str
    label: str
    no_cache: bool = False
    repair: int | None = None  # None: the default
    refresh: float = 0.0
    cache: str | None = None  # the cache folder's name (default: the system's)
    session: api.Session | None = field(default=None, repr=False)
    folder: Path | None = None
    owner: bool = True  # this system opened the session (and closes it)

    def open(self, model_path: Path, root: Path, opened: dict[Path, api.Session] | None = None) -> None:
        self.folder = root / (self.cache or self.name)
        if opened is not None and self.folder in opened:
            self.session, self.owner = opened[self.folder], False
            return
        self.session = api.open_session(model_path, cache_dir=self.folder, mode="modular")
        if opened is not None:
            opened[self.folder] = self.session

    def ask(self, wl: RagWorkload, q: RagQuestion, n_tokens: int, keep_logits: bool = True) -> api.Answer:
        assert self.session is not None
        extra = {"repair": self.repair} if self.repair is not None else {}
        return self.session.ask(wl.request(q, max_tokens=n_tokens, no_cache=self.no_cache, learn=not self.no_cache,
                                           keep_logits=keep_logits, refresh=self.refresh, **extra))

    def bytes(self) -> int | None:
        return None if self.no_cache or self.folder is None else dir_bytes(self.folder)

    def close(self) -> None:
        if self.session is not None and self.owner:
            self.session.close()
        self.session = None


def in_process_systems(repairs: tuple[int, ...] = ()) -> list[PcText]:
    """--no-cache; pc finding and learning text at --repair 0, at the default, and at ``repairs``
    (one shared cache: the warm-ups are learned once)."""
    out = [PcText("nocache", "pc, no cache", no_cache=True),
           PcText("pc-r0", "pc, text found and learned, --repair 0", repair=0, cache="pc")]
    if api.DEFAULT_REPAIR:
        out.append(PcText("pc", f"pc, text found and learned (default: --repair {api.DEFAULT_REPAIR})"))
    out += [PcText(f"pc-r{n}", f"pc, text found and learned, --repair {n}", repair=n, cache="pc")
            for n in repairs if n and n != api.DEFAULT_REPAIR]
    return out


def question_start(session: api.Session, wl: RagWorkload, q: RagQuestion) -> int:
    """Where the question begins in the prompt's tokens (the control rounds the states before it)."""
    full = session.chat_tokens(wl.messages(q))
    body = wl.message(q)
    head = session.chat_tokens([("system", SYSTEM), ("user", body[: body.rindex("\n\nQuestion: ")])])
    return common_prefix(full, head)


def control(session: api.Session, tokens_before: int, n_prompt: int, prompt: list[int], n_tokens: int) -> dict:
    """The noise control on the session's last (uncached) answer: its prompt's exact states before the
    question, every K and V value rounded to CONTROL_BITS mantissa bits, then the rest computed."""
    from ..llama.sampling import Sampler, generate

    ctx = session.last_context
    assert ctx is not None and ctx.pos_max(0) >= n_prompt - 1
    ctx.seq_rm(0, tokens_before, -1)
    blob = rounded_blob(ctx.save_state(0), CONTROL_BITS)
    ctx.clear()
    ctx.load_state(0, blob)
    t0 = time.perf_counter()
    ctx.decode(prompt[tokens_before:], start=tokens_before, logits=True)
    logits = ctx.logits()
    answer, tokens, ttft = generate(session.model, ctx, logits, max_tokens=n_tokens, sampler=Sampler(), on_text=None,
                                    t0=t0)
    return {"answer": answer, "tokens": tokens, "ttft_ms": ttft * 1000, "first_logits": logits}


def server_specs(model_path: Path, root: Path, *, llama_server: Path | None, peers_python: Path | None,
                 threads: int) -> tuple[list, list[str]]:
    """The servers compared (through the OpenAI client, streaming): `pc serve --learn`, and the peers
    found; and a note for each peer not found."""
    from . import servers

    pc = servers.pc_spec([], model=model_path, cache_dir=root / "pc-serve", cache_ram=0)
    specs = [replace(pc, argv=[*pc.argv, "--learn"], label="pc serve --learn (OpenAI client)")]
    missing = []
    if llama_server is not None and llama_server.exists():
        specs.append(servers.llama_server_spec(llama_server, model=model_path, threads=threads))
    else:
        missing.append(f"llama.cpp's llama-server --cache-reuse 256 (no binary at {llama_server}; PC_LLAMA_SERVER)")
    if peers_python is not None and peers_python.exists():
        specs.append(servers.llama_cpp_python_spec(peers_python, model=model_path, cache_ram=2 << 30,
                                                   threads=threads))
    else:
        missing.append(f"llama-cpp-python's server (no environment at {peers_python}; make installs it)")
    return specs, missing


def run_servers(specs: list, root: Path, wl: RagWorkload, rows: list[dict], tokenize: Callable[[str], list[int]], *,
                n_tokens: int, progress: Progress) -> dict[str, dict]:
    """Each server, one at a time: the warm-ups (untimed), then every question, streamed; its answers
    are added to ``rows`` under its name. Returns each server's label and what it reports keeping."""
    from . import servers, serving

    logs = root / "server-logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec in specs:
        running = servers.start(spec, logs)
        try:
            for w in wl.warmup:
                serving.chat(running, serving.Turn(_openai(wl.messages(w))), 1)
            answers = []
            for q in wl.questions:
                r = serving.chat(running, serving.Turn(_openai(wl.messages(q))), n_tokens)
                answers.append({"answer": r.text, "tokens": tokenize(r.text)[:n_tokens], "ttft_ms": r.ttft_ms,
                                "cached_tokens": r.cached_tokens, "computed_tokens": None})
            memory = running.memory()
        finally:
            running.stop()
        name = "serve-" + spec.name
        with_peer(rows, name, answers, n_tokens)
        out[name] = {"label": spec.label, "bytes": dir_bytes(root / "pc-serve") if spec.name == "pc" else None,
                     "peak_rss_bytes": memory.get("peak_rss_bytes")}
        progress(f"rag: {spec.label} answered {len(answers)} questions")
    return out


def _openai(messages: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": r, "content": t} for r, t in messages]


def run_in_process(model_path: Path, root: Path, wl: RagWorkload, *, n_tokens: int, progress: Progress,
                   systems: list[PcText] | None = None, servers: list | None = None,
                   missing: list[str] | None = None) -> dict:
    """Every in-process system answers the warm-ups, then each question side by side; then each of
    ``servers`` (:func:`server_specs`) answers them all through the OpenAI client."""
    chosen = systems if systems is not None else in_process_systems()
    opened: dict[Path, api.Session] = {}
    for s in chosen:
        s.open(model_path, root, opened)
    base = next(s for s in chosen if s.no_cache)
    rows: list[dict] = []
    try:
        t = time.perf_counter()
        for w in wl.warmup:
            for s in chosen:
                if not s.no_cache and s.owner:  # once per cache
                    s.ask(wl, w, 1, keep_logits=False)
        progress(f"rag: warm-ups learned in {time.perf_counter() - t:.0f} s")
        for i, q in enumerate(wl.questions):
            row: dict = {"docs": list(q.docs), "question": q.text, "expected": q.expected}
            order = chosen[i % len(chosen):] + chosen[: i % len(chosen)]
            order.remove(base)
            got = {}
            for s in [base] + order:  # the uncached answer first: the control reuses its states
                r = s.ask(wl, q, n_tokens)
                got[s.name] = {"answer": r.text, "tokens": list(r.tokens), "ttft_ms": r.ttft_ms,
                               "first_logits": r.first_logits, "cached_tokens": r.cached_tokens,
                               "computed_tokens": r.computed_tokens, "spans": len(r.spans)}
                if s is base:
                    assert base.session is not None
                    prompt = base.session.chat_tokens(wl.messages(q))
                    got[CONTROL] = control(base.session, question_start(base.session, wl, q), len(prompt), prompt,
                                           n_tokens)
            ref = got["nocache"]
            row["prompt_tokens"] = ref["computed_tokens"]
            for name, r in got.items():
                row[name] = {k: v for k, v in r.items() if k != "first_logits"}
                row[name].update(correct=found(q.expected, r["answer"]),
                                 exact_match=r["tokens"][:n_tokens] == ref["tokens"][:n_tokens],
                                 common_prefix=common_prefix(r["tokens"], ref["tokens"]),
                                 kl=kl(ref["first_logits"], r["first_logits"]))
            rows.append(row)
            progress(f"rag: question {i + 1}/{len(wl.questions)}")
        sizes = {s.name: s.bytes() for s in chosen}
        tokenize = base.session.tokenize if base.session is not None else None
        served = run_servers(servers or [], root, wl, rows, lambda t: tokenize(t) if tokenize else [],
                             n_tokens=n_tokens, progress=progress)
    finally:
        for s in chosen:
            s.close()
    names = [s.name for s in chosen] + list(served) + [CONTROL]
    return {"note": wl.note, "questions": len(rows), "generated_tokens": n_tokens, "control": CONTROL,
            "prompt_tokens": float(statistics.median(r["prompt_tokens"] for r in rows)) if rows else None,
            "systems": {**{s.name: {"label": s.label, "bytes": sizes[s.name], "repair": s.repair,
                                    "refresh": s.refresh} for s in chosen}, **served},
            "missing_systems": list(missing if missing is not None else MISSING),
            "summary": summarize(rows, names, n_tokens), "rows": rows}


MISSING = ("the servers (pc serve --learn, llama-server --cache-reuse 256, llama-cpp-python's server): "
           "not asked for in this run",)


def summarize(rows: list[dict], names: list[str], n_tokens: int = 32) -> dict:
    out = {}
    for name in names:
        have = [r for r in rows if name in r]
        if not have:
            continue
        agree = {k: sum(r[name]["tokens"][:k] == r["nocache"]["tokens"][:k] for r in have) / len(have)
                 for k in sorted({1, min(4, n_tokens), n_tokens})}
        out[name] = {
            "median_ttft_ms": float(statistics.median(r[name]["ttft_ms"] for r in have)),
            "needle_accuracy": sum(bool(r[name]["correct"]) for r in have) / len(have),
            **_discordance([bool(r[name]["correct"]) for r in have], [bool(r["nocache"]["correct"]) for r in have]),
            "agreement": {str(k): v for k, v in agree.items()},
            "median_kl": _median_or_none([r[name]["kl"] for r in have]),
            "mean_cached_tokens": float(np.mean([r[name].get("cached_tokens") or 0 for r in have])),
            "answers": len(have),
        }
    return out


def with_peer(rows: list[dict], name: str, answers: list[dict], n_tokens: int = 32) -> None:
    """Add a server's answers (text, tokens as this model tokenizes them, TTFT) to the rows (no
    first-token distribution: its KL is None)."""
    for row, a in zip(rows, answers, strict=True):
        row[name] = dict(a, correct=found(row["expected"], a["answer"]),
                         exact_match=a["tokens"][:n_tokens] == row["nocache"]["tokens"][:n_tokens],
                         common_prefix=common_prefix(a["tokens"], row["nocache"]["tokens"]), kl=None)


def _median_or_none(xs: list) -> float | None:
    have = [x for x in xs if x is not None]
    return float(statistics.median(have)) if have else None

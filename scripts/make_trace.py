#!/usr/bin/env python3
"""Write a synthetic but realistic overlap trace for checkpoint placement: JSON lines
{"tokens": N, "overlap": D}, one per request, seeded (the same arguments give the same bytes).
Three kinds (``--kind``):

conversation (the default). The cached prompt is a system prompt (~300 tokens), one document (1-4k
tokens) and a conversation about it (a few question/answer turns). Requests against it:

  other document   shares the system prompt only (plus 0-3 tokens of the document header)
  new branch       the same document, a new question after turn t of the conversation (t = 0:
                   right after the document), sharing 0-5 tokens of the question's opening words
  edited document  the document revised at a uniformly random point: shares everything before it
  full reuse       continues the cached conversation: shares the whole prompt
  cold             another system prompt: shares nothing, or the template's first tokens

documents. A shared system prompt of ~2k tokens, then a document. The documents are revisions of
one another: sections of 40-400 tokens, a revision keeping the first k sections and changing the
rest (its tail), so requests share the system prompt plus a varying head of the document:

  revised tail     shares the system prompt and the first k sections (plus 0-6 tokens: the
                   changed section's opening words), k uniform over the sections (45%)
  other document   shares the system prompt (plus 0-3 tokens of a document header) (30%)
  edited inside    revised at a uniformly random token of the document (10%)
  same document    the cached document again, a new question: shares all of it (10%)
  cold             another system prompt: shares 0-3 tokens (5%)

multilevel. A 600-token system prompt, 1,800 tokens of tool documentation, then per-user
conversation histories up to 3,500 tokens (``history_tokens``). Users arrive over time; each
request is the next turn of one active user's conversation and shares everything up to the end of
that user's previous answer (the previous prompt is the cached one it resumes). Besides:

  new conversation   a user starts over: shares the system prompt and the tool docs (+0-3)
  other tools        another tool set: shares the system prompt only (+0-3)
  regenerate         the previous answer regenerated: shares the history before it
  cold               shares 0-3 tokens

A history reaching ``history_tokens`` ends its conversation (the user starts over). The depths
therefore pile up at 600 and 2,400 and spread over every user's turn boundaries above.

    python scripts/make_trace.py [--kind conversation|documents|multilevel] [--requests 2000]
                                 [--seed 0] [--out FILE]

The cached prompt's length goes to stderr (it is the deepest overlap: pass it as --length).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

KINDS = {  # request kind -> share of the traffic
    "other document": 0.35,
    "new branch": 0.30,
    "edited document": 0.10,
    "full reuse": 0.20,
    "cold": 0.05,
}


def make_trace(*, requests: int, seed: int) -> tuple[int, list[dict]]:
    """(cached prompt length, requests in arrival order)."""
    rng = np.random.default_rng(seed)
    system = int(rng.integers(280, 330))
    docs = [int(n) for n in rng.integers(1000, 4001, size=4)]  # docs[0] is in the cached prompt
    turns = [int(q + a) for q, a in zip(rng.integers(15, 80, size=5), rng.integers(60, 260, size=5), strict=True)]
    turn_ends = np.cumsum([0] + turns)  # conversation offsets after turn t
    length = system + docs[0] + int(turn_ends[-1])
    kinds = list(KINDS)
    picks = rng.choice(len(kinds), size=requests, p=list(KINDS.values()))
    out = []
    for pick in picks:
        kind = kinds[pick]
        question = int(rng.integers(12, 120))
        if kind == "other document":
            doc = docs[int(rng.integers(1, len(docs)))]
            overlap, tokens = system + int(rng.integers(0, 4)), system + doc + question
        elif kind == "new branch":
            t = int(rng.integers(0, len(turns)))  # a new question after turn t (not the last: that is full reuse)
            overlap = system + docs[0] + int(turn_ends[t]) + int(rng.integers(0, 6))
            tokens = max(overlap + 1, system + docs[0] + int(turn_ends[t]) + question)
        elif kind == "edited document":
            overlap = system + int(rng.integers(0, docs[0]))
            tokens = system + docs[0] + int(rng.integers(-50, 50)) + question
        elif kind == "full reuse":
            overlap, tokens = length, length + question
        else:
            overlap = int(rng.integers(0, 4))
            tokens = int(rng.integers(200, 400)) + question
        out.append({"tokens": max(tokens, overlap), "overlap": overlap})
    return length, out


def documents_trace(*, requests: int, seed: int) -> tuple[int, list[dict]]:
    """A shared ~2k-token system prompt with varying document tails: (cached prompt length,
    requests in arrival order)."""
    rng = np.random.default_rng(seed)
    system = int(rng.integers(1990, 2110))
    sections = [int(n) for n in rng.integers(40, 401, size=int(rng.integers(6, 13)))]
    ends = np.cumsum([0] + sections)  # document offsets after section k
    doc = int(ends[-1])
    length = system + doc
    kinds = ("revised tail", "other document", "edited inside", "same document", "cold")
    picks = rng.choice(len(kinds), size=requests, p=[0.45, 0.30, 0.10, 0.10, 0.05])
    out = []
    for pick in picks:
        kind = kinds[pick]
        question = int(rng.integers(12, 120))
        if kind == "revised tail":
            k = int(rng.integers(0, len(sections)))  # keeps sections 0..k-1
            overlap = system + int(ends[k]) + int(rng.integers(0, 7))
            tokens = system + int(ends[k]) + int(rng.integers(200, 2500)) + question
        elif kind == "other document":
            overlap, tokens = system + int(rng.integers(0, 4)), system + int(rng.integers(300, 3000)) + question
        elif kind == "edited inside":
            overlap = system + int(rng.integers(0, doc))
            tokens = system + doc + int(rng.integers(-50, 50)) + question
        elif kind == "same document":
            overlap, tokens = length, length + question
        else:
            overlap, tokens = int(rng.integers(0, 4)), int(rng.integers(200, 400)) + question
        out.append({"tokens": max(tokens, overlap + 1), "overlap": min(overlap, length)})
    return length, out


def multilevel_trace(*, requests: int, seed: int, system: int = 600, tools: int = 1800,
                     history_tokens: int = 3500, users: int = 40) -> tuple[int, list[dict]]:
    """System prompt, tool docs, per-user histories: (deepest overlap, requests in arrival order).
    ``users`` conversations are active at a time."""
    rng = np.random.default_rng(seed)
    shared = system + tools
    history = [0] * users  # tokens of each active user's conversation so far (its answers included)
    last_turn = [0] * users  # the last turn's size (question + answer), for regenerations
    kinds = ("next turn", "new conversation", "other tools", "regenerate", "cold")
    picks = rng.choice(len(kinds), size=requests, p=[0.70, 0.12, 0.08, 0.06, 0.04])
    out = []
    for pick in picks:
        kind = kinds[pick]
        u = int(rng.integers(0, users))
        question = int(rng.integers(20, 151))
        answer = int(rng.integers(50, 401))
        if kind == "next turn" and history[u] + question + answer <= history_tokens:
            overlap = shared + history[u]
            history[u] += question + answer
            last_turn[u] = question + answer
        elif kind == "regenerate" and history[u]:
            overlap = shared + history[u] - last_turn[u] + question  # the question is kept, the answer redone
            answer = 0
        elif kind == "other tools":
            overlap = system + int(rng.integers(0, 4))
        elif kind == "cold":
            overlap = int(rng.integers(0, 4))
        else:  # a new conversation (also when the history is full)
            overlap = shared + int(rng.integers(0, 4))
            history[u] = question + answer
            last_turn[u] = question + answer
        out.append({"tokens": overlap + question + 1, "overlap": overlap})
    return max(r["overlap"] for r in out), out


KIND_MAKERS = {"conversation": make_trace, "documents": documents_trace, "multilevel": multilevel_trace}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=sorted(KIND_MAKERS), default="conversation")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="output file (default: stdout)")
    args = ap.parse_args()
    length, trace = KIND_MAKERS[args.kind](requests=args.requests, seed=args.seed)
    text = "".join(json.dumps(r) + "\n" for r in trace)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    print(f"{len(trace)} requests; cached prompt: {length} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a synthetic but realistic overlap trace for checkpoint placement: JSON lines
{"tokens": N, "overlap": D}, one per request, seeded (the same arguments give the same bytes).

The cached prompt is a system prompt (~300 tokens), one document (1-4k tokens) and a conversation
about it (a few question/answer turns). Requests against it:

  other document   shares the system prompt only (plus 0-3 tokens of the document header)
  new branch       the same document, a new question after turn t of the conversation (t = 0:
                   right after the document), sharing 0-5 tokens of the question's opening words
  edited document  the document revised at a uniformly random point: shares everything before it
  full reuse       continues the cached conversation: shares the whole prompt
  cold             another system prompt: shares nothing, or the template's first tokens

    python scripts/make-trace.py [--requests 2000] [--seed 0] [--out FILE]

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="output file (default: stdout)")
    args = ap.parse_args()
    length, trace = make_trace(requests=args.requests, seed=args.seed)
    text = "".join(json.dumps(r) + "\n" for r in trace)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    print(f"{len(trace)} requests; cached prompt: {length} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()

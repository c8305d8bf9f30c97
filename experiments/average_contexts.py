#!/usr/bin/env python3
"""Experiment: how many contexts `--encoding average` needs. Its states are the mean over up to
``prompt.contexts.AVERAGED_CONTEXTS`` (8) prompts the schema allows before each module; compiling costs one
pass over every context. This compiles the quality set of `make bench` (needles.quality: 5 texts of
450 tokens with a planted fact, 3 slots, 60 questions) with the scaffold encoding and with the
average encoding capped at each count, side by side in one process, and compares 32 greedy tokens
with `--no-cache`: same 32 tokens, median KL of the first token, needles found; plus compile time.
``--docqa LEVEL`` also compiles the document workload of that size (compile time only: it has no
planted facts).

    python experiments/average_contexts.py [--counts 1,2,4,8] [--questions 60] [--docqa 4096] [--out rows.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import promptcache_cli as pc  # noqa: E402
from promptcache_cli.benchmarks import needles, workloads  # noqa: E402
from promptcache_cli.benchmarks.quality import kl  # noqa: E402
from promptcache_cli.prompt import contexts as ctxs  # noqa: E402  (the cap is this experiment's knob)


def context_work(sess: pc.Session, schema, encoding: str) -> tuple[int, int]:
    """(contexts, context tokens) summed over the schema's segments: what compiling passes over,
    before sharing common prefixes."""
    layout = sess.engine.runtime.layout(schema)
    n = tokens = 0
    for seg in layout.segments:
        found = ctxs.contexts(layout, seg, encoding)
        n += len(found)
        tokens += sum(len(c) + len(seg.tokens) for c in found)
    return n, tokens


def compile_timed(sess: pc.Session, schema) -> float:
    t = time.perf_counter()
    sess.compile(schema)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="1,2,4,8", help="context caps to measure (comma separated)")
    ap.add_argument("--questions", type=int, default=60)
    ap.add_argument("--docs", type=int, default=5, help="texts with a planted fact (at most 6)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--docqa", type=int, default=0, help="also time compiling the docqa workload of this size")
    ap.add_argument("--out", type=Path, help="write every row as JSON here")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    model = pc.resolve_model()
    default_cap = ctxs.AVERAGED_CONTEXTS
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = pc.open_session(model, cache_dir=root / "nocache", mode="modular")
        wl = needles.quality(root / "wl", base.model, doc_tokens=450, n_questions=args.questions, n_docs=args.docs)
        schema = wl.schema()
        refs = [base.ask(wl.request(q, max_tokens=args.tokens, no_cache=True, keep_logits=True))
                for q in wl.questions]
        docqa = (workloads.docqa(root / "docqa", base.model, level=args.docqa, n_questions=1).schema()
                 if args.docqa else None)
        for name, encoding, cap in [("scaffold", "scaffold", default_cap)] + [(f"average-{c}", "average", c)
                                                                             for c in counts]:
            ctxs.AVERAGED_CONTEXTS = cap  # read at call time by contexts() (keys, compile, ask)
            sess = pc.open_session(model, cache_dir=root / name, mode="modular", encoding=encoding)
            try:
                row = {"name": name, "cap": cap if encoding == "average" else None}
                row["contexts"], row["context_tokens"] = context_work(sess, schema, encoding)
                row["compile_s"] = compile_timed(sess, schema)
                if docqa is not None:
                    row["docqa_contexts"], row["docqa_context_tokens"] = context_work(sess, docqa, encoding)
                    row["docqa_compile_s"] = compile_timed(sess, docqa)
                same, kls, found = [], [], []
                for q, ref in zip(wl.questions, refs, strict=True):
                    r = sess.ask(wl.request(q, max_tokens=args.tokens, keep_logits=True))
                    same.append(r.tokens[: args.tokens] == ref.tokens[: args.tokens])
                    kls.append(kl(ref.first_logits, r.first_logits))
                    found.append(bool(needles.found(q.expected, r.text)))
                row.update(same32=float(np.mean(same)), median_kl=statistics.median(kls), mean_kl=float(np.mean(kls)),
                           needles=float(np.mean(found)), found=found)
            finally:
                sess.close()
                ctxs.AVERAGED_CONTEXTS = default_cap
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        nocache_found = float(np.mean([bool(needles.found(q.expected, r.text))
                                       for q, r in zip(wl.questions, refs, strict=True)]))
        base.close()
    scaffold = rows[0]
    print(f"{len(wl.questions)} questions, {args.tokens} greedy tokens; "
          f"--no-cache finds {nocache_found:.0%} of needles")
    head = "| cache | contexts | context tokens | compile s (x scaffold) | same 32 tokens | median KL | needles |"
    if docqa is not None:
        head += f" docqa-{args.docqa} compile s (x scaffold) |"
    print(head)
    print("|" + " --- |" * head.count(" |"))
    for r in rows:
        line = (f"| {r['name']} | {r['contexts']} | {r['context_tokens']:,} | {r['compile_s']:.0f} "
                f"({r['compile_s'] / scaffold['compile_s']:.1f}x) | {r['same32']:.0%} | {r['median_kl']:.4f} | "
                f"{r['needles']:.0%} |")
        if docqa is not None:
            line += f" {r['docqa_compile_s']:.0f} ({r['docqa_compile_s'] / scaffold['docqa_compile_s']:.1f}x) |"
        print(line)
    if args.out:
        args.out.write_text(json.dumps({"nocache_needles": nocache_found, "rows": rows,
                                        "nocache_found": [bool(needles.found(q.expected, r.text))
                                                          for q, r in zip(wl.questions, refs, strict=True)]}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Separate the two causes of q8_0 answer drift: KV quantization, and the flash-attention kernel
llama.cpp needs for a quantized V cache. Same question set as the quality part of `make bench`
(promptcache_cli.benchmarks.needles); prints the share of questions whose greedy tokens are
identical between two cache settings. Flash attention with f16 states is no setting of the public
API (``kv_type`` q8_0 turns it on, f16 off): this experiment opens that session kind directly.

    python experiments/kv_agreement.py [--tokens 32] [--questions 30] [--doc-tokens 450]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import promptcache_cli as pc  # noqa: E402
from promptcache_cli.api import open_engine  # noqa: E402
from promptcache_cli.benchmarks import needles  # noqa: E402
from promptcache_cli.llama.context import ContextSettings  # noqa: E402

SETTINGS = {
    "f16": ContextSettings(),
    "f16+fa": ContextSettings(flash_attn=True),
    "q8_0+fa": ContextSettings(type_k="q8_0", type_v="q8_0", flash_attn=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--doc-tokens", type=int, default=450, help="length of each text with a planted fact")
    args = ap.parse_args()
    model = pc.resolve_model()
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {k: open_engine(model, cache_dir=Path(tmp) / k, mode="modular", settings=v)
                    for k, v in SETTINGS.items()}
        wl = needles.quality(Path(tmp), sessions["f16"].model, doc_tokens=args.doc_tokens,
                             n_questions=args.questions)
        schema = wl.schema()
        answers: dict[str, list[list[int]]] = {k: [] for k in sessions}
        for sess in sessions.values():
            sess.compile(schema)
        for q in wl.questions:
            sel = wl.selection(q)
            for name, sess in sessions.items():
                answers[name].append(sess.ask(schema, sel, q.text, max_tokens=args.tokens).tokens)
        for sess in sessions.values():
            sess.close()

    def same(a: str, b: str) -> float:
        return sum(x == y for x, y in zip(answers[a], answers[b], strict=True)) / len(answers[a])

    print(f"questions: {len(answers['f16'])}, {args.tokens} greedy tokens each")
    print(f"q8_0+fa vs f16+fa (quantization alone):    {same('q8_0+fa', 'f16+fa'):.0%}")
    print(f"f16+fa  vs f16    (flash attention alone): {same('f16+fa', 'f16'):.0%}")
    print(f"q8_0+fa vs f16    (both, what users see):  {same('q8_0+fa', 'f16'):.0%}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Separate the two causes of q8_0 answer drift: KV quantization, and the flash-attention kernel
llama.cpp needs for a quantized V cache. Same question set as `scripts/bench.py` (quality part);
prints the share of questions whose 16 greedy tokens are identical between two cache settings.

    python scripts/kv_agreement.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import bench  # noqa: E402
from promptcache_cli import pml  # noqa: E402
from promptcache_cli.engine import Session  # noqa: E402
from promptcache_cli.llama_backend import ContextSettings  # noqa: E402
from promptcache_cli.models import resolve_model  # noqa: E402
from promptcache_cli.selection import select_cli  # noqa: E402

SETTINGS = {
    "f16": ContextSettings(),
    "f16+fa": ContextSettings(flash_attn=True),
    "q8_0+fa": ContextSettings(type_k="q8_0", type_v="q8_0", flash_attn=True),
}


def main() -> None:
    model = resolve_model(None)
    with tempfile.TemporaryDirectory() as tmp:
        schema = pml.load_schema(bench.quality_schema(Path(tmp)))
        sessions = {k: Session(model, cache_dir=Path(tmp) / k, settings=v) for k, v in SETTINGS.items()}
        answers: dict[str, list[list[int]]] = {k: [] for k in sessions}
        for sess in sessions.values():
            sess.compile(schema)
        for modules, question, _ in bench.quality_cases():
            sel = select_cli(schema, modules=modules, params=[])
            for name, sess in sessions.items():
                answers[name].append(sess.ask(schema, sel, question, max_tokens=16).tokens)

    def same(a: str, b: str) -> float:
        return sum(x == y for x, y in zip(answers[a], answers[b], strict=True)) / len(answers[a])

    print(f"questions: {len(answers['f16'])}")
    print(f"q8_0+fa vs f16+fa (quantization alone):    {same('q8_0+fa', 'f16+fa'):.0%}")
    print(f"f16+fa  vs f16    (flash attention alone): {same('f16+fa', 'f16'):.0%}")
    print(f"q8_0+fa vs f16    (both, what users see):  {same('q8_0+fa', 'f16'):.0%}")


if __name__ == "__main__":
    main()

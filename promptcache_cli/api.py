"""Open the right kind of session for a model: modular stitching, or exact prefix reuse."""

from __future__ import annotations

from pathlib import Path

from .llama import preload
from .modular.session import Session
from .llama.backend import ContextSettings, Model
from .prefix.session import DEFAULT_CHECKPOINTS, PrefixSession

MODES = ("auto", "modular", "prefix")
PREFIX_KINDS = ("recurrent", "hybrid", "swa")  # what `auto` serves in prefix mode: states that cannot be stitched


def open_session(model_path: str | Path, *, cache_dir: str | Path, mode: str = "auto",
                 settings: ContextSettings = ContextSettings(), encoding: str | None = None, codec: str = "none",
                 checkpoints: int = DEFAULT_CHECKPOINTS, checkpoint_bytes: int | None = None) -> Session:
    """``auto`` picks prefix mode for recurrent, hybrid and sliding-window models and modular
    stitching otherwise. Modular stitching of such a model raises UnsupportedModel."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    model = Model(str(model_path), loaded=preload.take(str(model_path)))
    try:
        if mode == "prefix" or (mode == "auto" and model.kind in PREFIX_KINDS):
            return PrefixSession(model_path, cache_dir=cache_dir, settings=settings, codec=codec,
                                 checkpoints=checkpoints, checkpoint_bytes=checkpoint_bytes, model=model)
        extra = {"encoding": encoding} if encoding else {}
        return Session(model_path, cache_dir=cache_dir, settings=settings, codec=codec, model=model, **extra)
    except BaseException:
        model.close()
        raise

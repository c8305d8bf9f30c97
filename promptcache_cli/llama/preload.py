"""Load the model on a thread while `pc ask` imports the rest of itself.

A cold `pc ask` spends a good hundred milliseconds importing Python modules (Typer, numpy, ...)
and then tens of milliseconds in llama.cpp loading the model, which needs no Python lock (its log
lines go to a C no-op: bindings.py). Started first, on a thread of its own, the load runs
beside the imports. The thread only loads; the command takes the handle when it opens its session
(:func:`take`), or loads the model itself where the thread guessed another file or failed, so
every error is reported exactly as without the thread.
"""

from __future__ import annotations

import os
import threading

ENV_SWITCH = "PC_PRELOAD"  # "0": load on the main thread, after the imports

_job: tuple[str, threading.Thread, dict] | None = None


def wanted(args: list[str]) -> str | None:
    """The model file a `pc` command line will load, when it is worth loading early: `pc ask`
    only (the other commands are long anyway or load no model), not with PC_PRELOAD=0 or one
    thread (PC_THREADS=1 or --threads 1: one core per `pc`, start-up stays on one thread too)."""
    if not args or args[0] != "ask" or os.environ.get(ENV_SWITCH, "").strip() == "0":
        return None
    if os.environ.get("PC_THREADS", "").strip() == "1" and not any(a.startswith("--threads") for a in args):
        return None
    from .model_file import resolve_model

    option = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--model" and i + 1 < len(args):
            option = args[i + 1]
        elif arg.startswith("--model="):
            option = arg[len("--model="):]
        elif (arg == "--threads" and args[i + 1:i + 2] == ["1"]) or arg == "--threads=1":
            return None
    try:
        return str(resolve_model(option))
    except Exception:  # noqa: BLE001 - no model to be found: the command says so itself
        return None


def start(path: str) -> None:
    """Begin loading the GGUF file at ``path`` on a daemon thread."""
    global _job
    result: dict = {}

    def run() -> None:
        try:
            from .bindings import gguf_problem, load_model_file

            if gguf_problem(path) is None:
                result["handle"] = load_model_file(path) or None
        except BaseException:  # noqa: BLE001 - the command loads the model again and reports why
            pass

    thread = threading.Thread(target=run, name="pc-preload", daemon=True)
    thread.start()
    _job = (path, thread, result)


def take(path: str):
    """llama.cpp's handle of the model at ``path`` loaded by :func:`start` (once), or None:
    nothing started, another file started (that one is freed), or the load failed."""
    global _job
    if _job is None:
        return None
    started, thread, result = _job
    _job = None
    thread.join()
    handle = result.get("handle")
    if handle is not None and started != path:
        from .bindings import C

        C.llama_model_free(handle)
        return None
    return handle

"""Exit codes, and which library error maps to which. README's table is generated from this."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: one line on stderr, PC_DEBUG=1 shows the traceback
EXIT_USAGE = 2  # bad command-line options (also Typer's own code)
EXIT_INPUT = 3  # schema, prompt, module, parameter or question problem
EXIT_MODEL = 4  # model file missing, unreadable, not GGUF, or unusable (template, kind)
EXIT_CACHE = 5  # the cache cannot be written or read
EXIT_TOO_LONG = 6  # the prompt does not fit the model's context
EXIT_BACKEND = 7  # llama.cpp failed while computing
EXIT_OUTPUT = 8  # stdout cannot be written (not a closed pipe: that ends quietly with 0)
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug; PC_DEBUG=1 prints the traceback)",
    EXIT_USAGE: "bad command-line usage (or a bad PC_THREADS)",
    EXIT_INPUT: "bad schema, prompt, module, parameter or question",
    EXIT_MODEL: "model missing, unreadable, not a GGUF, or unsupported for this mode",
    EXIT_CACHE: "cache unusable: pc compile cannot write it, a freshly written file reads back damaged, "
                "or pc verify found a damaged file",
    EXIT_TOO_LONG: "prompt longer than the model's context",
    EXIT_BACKEND: "llama.cpp failed while computing (or refused a state it had just computed)",
    EXIT_OUTPUT: "stdout cannot be written (a full disk, an I/O error)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_code_for(exc: BaseException) -> int | None:
    """The documented exit code for a known library error, None for anything else."""
    from .store.cache_file import CacheFileError
    from .store.files import CacheWriteError
    from .prompt.chat_template import TemplateError
    from .modular.session import ParameterTooLong, PromptTooLong
    from .llama.backend import BackendError, ContextFullError, ModelLoadError
    from .llama.model_file import ModelNotFound
    from .pml.schema import PmlError
    from .pml.selection import SelectionError
    from .llama.state_blob import BlobError

    table: list[tuple[type, int]] = [
        (PmlError, EXIT_INPUT),
        (SelectionError, EXIT_INPUT),
        (ParameterTooLong, EXIT_INPUT),
        (InputError, EXIT_INPUT),
        (UsageError, EXIT_USAGE),
        (ModelNotFound, EXIT_MODEL),
        (ModelLoadError, EXIT_MODEL),
        (TemplateError, EXIT_MODEL),
        (CacheWriteError, EXIT_CACHE),
        (CacheFileError, EXIT_CACHE),
        (BlobError, EXIT_CACHE),
        (PromptTooLong, EXIT_TOO_LONG),
        (ContextFullError, EXIT_TOO_LONG),
        (BackendError, EXIT_BACKEND),
        (OutputError, EXIT_OUTPUT),
    ]
    for cls, code in table:
        if isinstance(exc, cls):
            return code
    return None


class InputError(Exception):
    """A problem with what the user typed that the CLI itself detects."""


class OutputError(Exception):
    """stdout cannot be written: a full disk or an I/O error (a reader that went away is not one)."""


class UsageError(Exception):
    """A bad setting outside the options, such as an environment variable."""

"""Every error `pc` reports, each carrying the exit code it ends `pc` with, and the table of exit
codes (README's table is generated from ``EXIT_CODES``).

A leaf: this module imports nothing of ours, so any module may raise these. The CLI maps an
exception to its code with :func:`exit_code_for`; anything else is a bug (exit 1). A few exceptions
at the end are signals between our own modules: they carry no exit code and never reach a user.
"""

from __future__ import annotations

from typing import ClassVar, Iterable

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: one line on stderr, PC_DEBUG=1 shows the traceback
EXIT_USAGE = 2  # bad command-line options (also Typer's own code)
EXIT_INPUT = 3  # schema, prompt, module, parameter or question problem
EXIT_MODEL = 4  # model file missing, unreadable, not GGUF, or unusable (template, kind)
EXIT_CACHE = 5  # the cache cannot be written or read
EXIT_TOO_LONG = 6  # the prompt does not fit the model's context
EXIT_BACKEND = 7  # llama.cpp failed while computing
EXIT_OUTPUT = 8  # stdout cannot be written (not a closed pipe: that ends quietly with 0)
EXIT_PARTIAL = 9  # pc batch: one or more lines failed (each reported in its own output line)
EXIT_LISTEN = 10  # pc serve cannot listen where it was told to
EXIT_REMOTE = 11  # the remote store (--remote) cannot be reached, or refused the request
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug; PC_DEBUG=1 prints the traceback)",
    EXIT_USAGE: "bad command-line usage (or a bad PC_THREADS)",
    EXIT_INPUT: "bad schema, prompt, module, parameter or question",
    EXIT_MODEL: "model missing, unreadable, not a GGUF, or unsupported for this mode",
    EXIT_CACHE: "cache unusable: pc compile cannot write it, a freshly written file reads back damaged, "
                "or pc verify (push, pull) found a damaged (or missing) file",
    EXIT_TOO_LONG: "prompt longer than the model's context",
    EXIT_BACKEND: "llama.cpp failed while computing (or refused a state it had just computed)",
    EXIT_OUTPUT: "stdout cannot be written (a full disk, an I/O error)",
    EXIT_PARTIAL: "pc batch: one or more lines failed (each reported in its own output line)",
    EXIT_LISTEN: "pc serve cannot listen on the address (in use, not permitted, or not loopback without a key)",
    EXIT_REMOTE: "remote store (--remote) unreachable or refusing the request (pc push, pull, ls/verify/gc --remote)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class PcError(Exception):
    """An error `pc` reports as one line and ends with ``exit_code``."""

    exit_code: ClassVar[int] = EXIT_INTERNAL


def exit_code_for(exc: BaseException) -> int | None:
    """The documented exit code for one of our errors, None for anything else (a bug)."""
    return exc.exit_code if isinstance(exc, PcError) else None


def did_you_mean(word: str, choices: Iterable[object]) -> str:
    """``"; did you mean 'x'?"`` naming the choices closest to a mistyped ``word`` (difflib's
    ratio of at least 0.6; up to two), or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


# -- what the user typed (exit 2 and 3) -------------------------------------------------------


class UsageError(PcError):
    """A bad setting outside the options, such as an environment variable."""

    exit_code = EXIT_USAGE


class InputError(PcError):
    """A problem with what the user typed (a schema, prompt, module, parameter or question)."""

    exit_code = EXIT_INPUT


class PmlError(InputError):
    """A schema or prompt problem, rendered as one line: ``FILE:LINE: <element>: message``."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 element: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.element = element
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            where = self.file
        else:
            where = f"line {self.line}" if self.file is None else f"{self.file}:{self.line}"
        return ": ".join(part for part in (where, self.element, self.message) if part)


class SelectionError(InputError):
    """A request that does not fit the schema; one line, prefixed by the prompt line if known."""

    def __init__(self, message: str, line: int | None = None):
        self.message = message
        self.line = line
        super().__init__(message if line is None else f"line {line}: {message}")


class ParameterTooLong(InputError):
    """A parameter value has more tokens than its slot."""


# -- the model (exit 4) and llama.cpp (exit 7) ------------------------------------------------


class ModelNotFound(PcError):
    """No model file given and the default model is not installed (or its file is missing)."""

    exit_code = EXIT_MODEL


class TemplateError(PcError):
    """The model's chat template cannot be rendered for this conversation."""

    exit_code = EXIT_MODEL


class BackendError(PcError):
    """llama.cpp refused or failed an operation."""

    exit_code = EXIT_BACKEND


class ModelLoadError(BackendError):
    """The model file is missing, unreadable or not a GGUF llama.cpp can load."""

    exit_code = EXIT_MODEL


class UnsupportedModel(ModelLoadError):
    """The model loads but cannot be used the way it was asked to be (e.g. stitching a
    recurrent model's state)."""


class StateRefused(BackendError):
    """llama.cpp refused to load a state blob."""


class ContextFullError(BackendError):
    """The prompt does not fit into the context."""

    exit_code = EXIT_TOO_LONG


class PromptTooLong(PcError):
    """The prompt does not fit into the model's context."""

    exit_code = EXIT_TOO_LONG


# -- the cache (exit 5) and stdout (exit 8) ---------------------------------------------------


class CacheWriteError(PcError):
    """The cache directory cannot be written (read-only, full disk, ...)."""

    exit_code = EXIT_CACHE


class OutsideCache(CacheWriteError):
    """A path `pc` was about to write, lock or delete is not inside the cache folder."""


class CacheLinkError(CacheWriteError):
    """A symbolic link inside the cache folder where `pc` would write, lock, delete or read: links
    there are never followed and never removed (store/boundary.py)."""


class CacheFileError(PcError):
    """The file is not a complete, intact cache file of this format (docs/cache-format.md)."""

    exit_code = EXIT_CACHE


class CacheFileMissing(CacheFileError):
    """The cache file is not there (never written, or removed meanwhile by `pc gc`, `pc rm` or
    another host): it is computed like any missing file, not reported as damaged."""


class BlobError(PcError):
    """The bytes are not a well-formed state blob of the expected shape."""

    exit_code = EXIT_CACHE


class OutputError(PcError):
    """stdout cannot be written: a full disk or an I/O error (a reader that went away is not one)."""

    exit_code = EXIT_OUTPUT


class ListenError(PcError):
    """`pc serve` cannot listen where it was told to (the address in use, a port not permitted,
    or an address other than loopback without an API key)."""

    exit_code = EXIT_LISTEN
class RemoteError(PcError):
    """The remote store cannot be reached, timed out or refused a request. The message names the
    store (``s3://bucket/prefix``) and the reason, never a credential."""

    exit_code = EXIT_REMOTE


# -- signals between our modules: no exit code, never shown as they are -----------------------


class Halted(Exception):
    """A prompt's computation was stopped by its ``halt`` callback (a server's client gone)."""


class OverlapLogError(Exception):
    """The overlap record cannot be written (unwritable folder, full disk, lock held too long).
    Callers answering a question should warn and go on: the record only steers checkpoint placement."""


class TraceError(ValueError):
    """A trace file that cannot be read: one line, "FILE:LINE: message"."""


class ModuleStateRefused(StateRefused):
    """llama.cpp refused a module's state blob (the session recomputes the module once)."""

    def __init__(self, owner: tuple[str, ...], error: StateRefused) -> None:
        super().__init__(str(error))
        self.owner, self.error = owner, error


class ModuleDamaged(Exception):
    """A module's stored state turned out damaged when it was needed (the session recomputes it)."""

    def __init__(self, owner: tuple[str, ...], error: CacheFileError | BlobError) -> None:
        super().__init__(str(error))
        self.owner, self.error = owner, error


class DamagedState(Exception):
    """A stored prefix state is missing, unreadable or not the one expected."""

    def __init__(self, position: int, why: str) -> None:
        super().__init__(f"prefix state at token {position}: {why}")
        self.position = position

"""promptcache_cli: answer questions about long, reused context fast, by caching llama.cpp states.

The public API (docs/python-api.md)::

    import promptcache_cli as pc

    with pc.open_session() as session:
        session.compile("schemas/gpl-manual.xml")
        print(session.ask(pc.Request("schemas/gpl-manual.xml", "Can I sell copies?")).text)

Names are imported on first use (PEP 562): `pc` imports this package on every start, and a
`pc ask` must not pay for what it does not use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: this file runs before pc's Ctrl-C guard (__main__), so it imports nothing

_API = ("COMPRESSIONS", "DEFAULT_CHECKPOINTS", "DEFAULT_REPAIR", "ENCODINGS", "KV_TYPES", "MAX_DOCUMENT_BYTES", "MODES",
        "Request", "Session", "TextRequest", "answer_record", "cache_names", "collect_garbage",
        "collect_remote_garbage", "default_cache_dir", "default_model_path", "document_from_bytes",
        "documents_schema", "inspect_schema", "list_cache", "list_remote", "open_session", "read_document",
        "remove_schema", "request_from_prompt",
        "request_from_prompt_text", "resolve_model", "select", "verify_cache", "verify_remote")
_ERRORS = ("EXIT_CODES", "BackendError", "BlobError", "CacheFileError", "CacheWriteError", "ContextFullError",
           "InputError", "ListenError", "ModelLoadError", "ModelNotFound", "OutputError", "ParameterTooLong", "PcError",
           "PmlError", "PromptTooLong", "RemoteError", "SelectionError", "StateRefused", "TemplateError",
           "UnsupportedModel", "UsageError", "exit_code_for")
_WHERE = {
    **{name: "api" for name in _API},
    **{name: "errors" for name in _ERRORS},
    "Answer": "core.results", "CompileReport": "core.results", "ModuleReport": "core.results",
    "SpanUse": "core.results", "Staleness": "core.results", "Transfer": "core.results",
    "TransferReport": "core.results",
    "PromptState": "core.tokens", "Conversation": "prompt.conversation",
    "PromptPart": "core.views", "PromptView": "core.views", "SchemaLayout": "core.views",
    "Boundary": "prompt.boundaries", "Sampler": "llama.sampling", "Schema": "pml.schema", "load_schema": "pml.schema",
    "Document": "pml.documents",
}

__all__ = [
    "Answer", "BackendError", "BlobError", "Boundary", "COMPRESSIONS", "CacheFileError", "CacheWriteError",
    "CompileReport", "ContextFullError", "Conversation", "DEFAULT_CHECKPOINTS", "DEFAULT_REPAIR", "Document",
    "ENCODINGS", "EXIT_CODES", "InputError", "KV_TYPES", "ListenError", "MAX_DOCUMENT_BYTES", "MODES",
    "ModelLoadError", "ModelNotFound", "ModuleReport", "OutputError", "ParameterTooLong", "PcError", "PmlError",
    "PromptPart", "PromptState", "PromptTooLong", "PromptView", "RemoteError", "Request", "Sampler", "Schema",
    "SchemaLayout", "SelectionError", "Session", "SpanUse", "Staleness", "StateRefused", "TemplateError",
    "TextRequest", "Transfer", "TransferReport", "UnsupportedModel", "UsageError", "answer_record", "cache_names",
    "collect_garbage", "collect_remote_garbage", "default_cache_dir", "default_model_path", "document_from_bytes",
    "documents_schema", "exit_code_for", "inspect_schema", "list_cache", "list_remote", "load_schema",
    "open_session", "read_document", "remove_schema", "request_from_prompt", "request_from_prompt_text",
    "resolve_model", "select", "verify_cache", "verify_remote",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and editors see
    from typing import Any

    from .api import (COMPRESSIONS, DEFAULT_CHECKPOINTS, DEFAULT_REPAIR, ENCODINGS, KV_TYPES, MAX_DOCUMENT_BYTES,
                      MODES, Request, Session, TextRequest, answer_record, cache_names, collect_garbage,
                      collect_remote_garbage, default_cache_dir, default_model_path, document_from_bytes,
                      documents_schema, inspect_schema, list_cache, list_remote, open_session, read_document,
                      remove_schema, request_from_prompt, request_from_prompt_text, resolve_model, select,
                      verify_cache, verify_remote)
    from .core.results import Answer, CompileReport, ModuleReport, SpanUse, Staleness, Transfer, TransferReport
    from .core.tokens import PromptState
    from .core.views import PromptPart, PromptView, SchemaLayout
    from .errors import (EXIT_CODES, BackendError, BlobError, CacheFileError, CacheWriteError, ContextFullError,
                         InputError, ListenError, ModelLoadError, ModelNotFound, OutputError, ParameterTooLong,
                         PcError, PmlError, PromptTooLong, RemoteError, SelectionError, StateRefused, TemplateError,
                         UnsupportedModel, UsageError, exit_code_for)
    from .llama.sampling import Sampler
    from .pml.documents import Document
    from .pml.schema import Schema, load_schema
    from .prompt.boundaries import Boundary
    from .prompt.conversation import Conversation

"""A request's prompt, decided in the event loop (pure Python: nothing here calls llama.cpp).

- A served schema as ``model``: a library :class:`~promptcache_cli.api.Request`. The modules and
  parameter values come from the request's ``pc`` object (none: the schema's default prompt);
  the last message, a user message, is the question; the messages before it are the conversation,
  continuing the schema's last user turn. The schema sets the system prompt, so a system message
  is refused.
- The bare model: the messages (rendered by the model's chat template) or the text (control
  tokens parsed) or the token ids to answer; a worker tokenizes them, then the RAM prompt cache
  finds the state to resume from (worker.py, prompt_cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .. import api
from ..errors import InputError
from .wire import ApiError, AskRequest, ChatRequest, CompletionRequest, Extension, Sampling, bad

if TYPE_CHECKING:
    from ..api import Request, Schema


@dataclass(frozen=True)
class Served:
    """The models a server answers for: its schemas by PML name, and the bare model."""

    bare: str
    schemas: dict[str, Schema]

    def ids(self) -> list[str]:
        return [*self.schemas, self.bare]

    def schema_for(self, model: str) -> Schema | None:
        """The schema ``model`` names, None for the bare model; a 404 for anything else."""
        if model in self.schemas:
            return self.schemas[model]
        if model == self.bare:
            return None
        raise ApiError(404, f"the model '{model}' does not exist here; this server serves: {', '.join(self.ids())}",
                       code="model_not_found", param="model")


@dataclass(frozen=True)
class Work:
    """What a worker computes for one request."""

    model: str  # the id answered under
    sampling: Sampling
    request: Request | None = None  # a schema's question
    messages: tuple[tuple[str, str], ...] | None = None  # the bare model: a chat,
    text: str | None = None  # or a raw prompt,
    ids: tuple[int, ...] | None = None  # or its tokens
    record: bool = False  # answer with the object `pc ask --json` prints (POST /v1/pc/ask)


def chat_work(req: ChatRequest, served: Served) -> Work:
    schema = served.schema_for(req.model)
    if schema is None:
        _no_extension(req.pc)
        return Work(req.model, req.sampling, messages=req.messages)
    roles = [role for role, _ in req.messages]
    if "system" in roles:
        raise bad(f"the schema '{schema.name}' sets the system prompt: send no system message "
                  "(or ask the bare model)", f"messages[{roles.index('system')}]")
    if roles[-1] != "user":
        raise bad("the last message must be the user's question", f"messages[{len(roles) - 1}]")
    if roles[0] != "user":
        raise bad("the conversation after the schema's prompt starts with a user message", "messages[0]")
    *history, (_, question) = req.messages
    return Work(req.model, req.sampling, request=_request(schema, question, req.pc, history=tuple(history)))


def completion_work(req: CompletionRequest, served: Served) -> Work:
    schema = served.schema_for(req.model)
    if schema is None:
        _no_extension(req.pc)
        if isinstance(req.prompt, str):
            return Work(req.model, req.sampling, text=req.prompt)
        return Work(req.model, req.sampling, ids=req.prompt)
    if not isinstance(req.prompt, str):
        raise bad(f"with the schema '{schema.name}' as model, 'prompt' is the question, as text", "prompt")
    return Work(req.model, req.sampling, request=_request(schema, req.prompt, req.pc))


def ask_work(req: AskRequest, served: Served) -> Work:
    schema = served.schema_for(req.schema)
    if schema is None:
        raise bad("'schema' must name a served schema, not the bare model", "schema")
    if req.prompt is not None:
        try:
            request = api.request_from_prompt_text(req.prompt, schema=schema)
            api.select(schema, request)
        except InputError as e:
            raise bad(str(e), "prompt") from None
    else:
        request = _request(schema, req.question or "", Extension(req.modules, req.params))
    return Work(req.schema, req.sampling, request=replace(request, no_cache=req.no_cache), record=True)


def _request(schema: Schema, question: str, ext: Extension | None, *,
             history: tuple[tuple[str, str], ...] = ()) -> Request:
    if not question.strip():
        raise bad("the question (the last user message) is empty", "messages")
    ext = ext or Extension()
    request = api.Request(schema, question, modules=ext.modules or (), params=ext.params, history=history,
                          no_cache=ext.no_cache)
    try:
        api.select(schema, request)  # unknown modules and parameters: a 400 before queueing
    except InputError as e:
        raise bad(str(e), "pc") from None
    return request


def _no_extension(ext: Extension | None) -> None:
    if ext is not None and (ext.modules or ext.params):
        raise bad("modules and parameters ('pc') need a served schema as 'model'", "pc")

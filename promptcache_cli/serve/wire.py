"""The OpenAI wire format: request bodies checked field by field into plain dataclasses, and
answers, stream chunks and errors as the JSON objects OpenAI's API sends.

Fields that change what is computed and are not supported (``n`` above 1, tools, log
probabilities, penalties) are refused with a 400 naming them; fields that do not (``user``,
``metadata``) are ignored, as other OpenAI-compatible servers do. Every error is
``{"error": {"message", "type", "param", "code"}}`` with its HTTP status.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4
MAX_STOP_CHARS = 512


class ApiError(Exception):
    """An error answered as OpenAI does: an HTTP status and ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# -- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None  # None: until the model stops (capped by the server's limit)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Extension:
    """The ``pc`` object of a request (``extra_body={"pc": {...}}`` with the openai client)."""

    modules: tuple[str, ...] | None = None  # None: the schema's default prompt
    params: tuple[str, ...] = ()
    no_cache: bool = False


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[tuple[str, str], ...]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    pc: Extension | None = None


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str | tuple[int, ...]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    pc: Extension | None = None


@dataclass(frozen=True)
class AskRequest:
    """``POST /v1/pc/ask``: what `pc ask --json` takes (a <prompt> document as text)."""

    schema: str
    question: str | None
    modules: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    prompt: str | None = None
    sampling: Sampling = field(default_factory=lambda: Sampling(128))
    no_cache: bool = False


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8") from None
    except ValueError as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise bad("the request body must be a JSON object")
    return obj


def chat_request(body: dict[str, Any]) -> ChatRequest:
    model = _str(body, "model", required=True)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty array of messages", "messages")
    messages = tuple(_message(m, i) for i, m in enumerate(raw))
    _unsupported(body, chat=True)
    stream, include_usage = _stream(body)
    return ChatRequest(model, messages, _sampling(body, default_max=None, chat=True), stream, include_usage,
                       _extension(body))


def completion_request(body: dict[str, Any]) -> CompletionRequest:
    model = _str(body, "model", required=True)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            raise bad("'prompt' must be a string or an array of token ids (one prompt per request)", "prompt")
        prompt = tuple(prompt)
    elif not isinstance(prompt, str):
        raise bad("'prompt' must be a string", "prompt")
    _unsupported(body, chat=False)
    stream, include_usage = _stream(body)
    return CompletionRequest(model, prompt, _sampling(body, default_max=16, chat=False), stream, include_usage,
                             _extension(body))


def ask_request(body: dict[str, Any]) -> AskRequest:
    schema = _str(body, "schema", required=False) or _str(body, "model", required=False)
    if not schema:
        raise bad("'schema' must name a served schema (GET /v1/models lists them)", "schema")
    question = _str(body, "question", required=False)
    prompt = _str(body, "prompt", required=False)
    if prompt is None and not (question or "").strip():
        raise bad("'question' must be a non-empty string (or give a <prompt> document as 'prompt')", "question")
    if prompt is not None and ("modules" in body or "params" in body):
        raise bad("a <prompt> document chooses modules and parameters itself; drop 'modules' and 'params'", "prompt")
    return AskRequest(schema, question, _modules(body.get("modules", []), "modules") or (),
                      _params(body.get("params", {}), "params"), prompt, _sampling(body, default_max=128, chat=False),
                      _bool(body, "no_cache"))


def _str(body: dict, key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise bad(f"'{key}' must be a {'non-empty ' if required else ''}string", key)
    return value


def _bool(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"'{key}' must be true or false", key)
    return value


def _number(body: dict, key: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"'{key}' must be a number", key)
    if value < lo or value > hi or (lo_open and value == lo):
        raise bad(f"'{key}' must be {'above' if lo_open else 'at least'} {lo:g} and at most {hi:g}, not {value:g}", key)
    return float(value)


def _int(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{key}' must be an integer", key)
    return value


def _message(m: Any, i: int) -> tuple[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad(f"{where} must be an object with 'role' and 'content'", where)
    role = m.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role must be one of system, developer, user, assistant (not {json.dumps(role)})",
                  f"{where}.role")
    if m.get("tool_calls") or m.get("function_call"):
        raise bad(f"{where}: tool calls are not supported", f"{where}.tool_calls")
    return ROLES[role], _content(m.get("content"), f"{where}.content")


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}[{j}] must be a text part ({{\"type\": \"text\", \"text\": ...}}); "
                          "images, audio and files are not supported", f"{where}[{j}]")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"{where} must be a string or an array of text parts", where)


def _sampling(body: dict, *, default_max: int | None, chat: bool) -> Sampling:
    max_tokens = _int(body, "max_completion_tokens") if chat and "max_completion_tokens" in body else None
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens")
    if max_tokens is None:
        max_tokens = default_max
    elif max_tokens < 1:
        raise bad(f"'max_tokens' must be at least 1, not {max_tokens}", "max_tokens")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)  # greedy by default, as `pc ask`
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = _int(body, "seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise bad("'stop' must be a string or an array of strings", "stop")
    if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise bad(f"'stop' takes up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters", "stop")
    return Sampling(max_tokens, temperature, top_p, seed, stops)


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not isinstance(opts, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    return stream, _bool(opts, "include_usage")


def _unsupported(body: dict, *, chat: bool) -> None:
    n = _int(body, "n")
    if n is not None and n != 1:
        raise bad("'n' must be 1: one answer per request", "n")
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, 0.0, -2.0, 2.0):
            raise bad(f"'{key}' is not supported (leave it out or give 0)", key)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("log probabilities are not supported", "logprobs")
    if body.get("logit_bias"):
        raise bad("'logit_bias' is not supported", "logit_bias")
    if chat:
        for key in ("tools", "functions"):
            if body.get(key):
                raise bad(f"'{key}' is not supported", key)
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            raise bad("'response_format' supports only {\"type\": \"text\"}", "response_format")
    else:
        if body.get("echo"):
            raise bad("'echo' is not supported", "echo")
        best_of = _int(body, "best_of")
        if best_of is not None and best_of != 1:
            raise bad("'best_of' must be 1", "best_of")
        if body.get("suffix"):
            raise bad("'suffix' is not supported", "suffix")


def _extension(body: dict) -> Extension | None:
    ext = body.get("pc")
    if ext is None:
        return None
    if not isinstance(ext, dict):
        raise bad("'pc' must be an object: {\"modules\": [...], \"params\": {...}}", "pc")
    unknown = sorted(set(ext) - {"modules", "params", "no_cache"})
    if unknown:
        raise bad(f"'pc' has no field '{unknown[0]}' (it takes modules, params, no_cache)", f"pc.{unknown[0]}")
    return Extension(_modules(ext.get("modules"), "pc.modules"), _params(ext.get("params", {}), "pc.params"),
                     _bool(ext, "no_cache"))


def _modules(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise bad(f"'{where}' must be an array of module names", where)
    return tuple(value)


def _params(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, dict):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise bad(f"'{where}' must map parameter names to string values", where)
        return tuple(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list) and all(isinstance(p, str) and "=" in p for p in value):
        return tuple(value)
    raise bad(f"'{where}' must be an object of NAME: VALUE strings (or an array of \"NAME=VALUE\")", where)


# -- answers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    def json(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


class Reply:
    """The ids and times one answer's objects share, chat or text completion."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self.chat = chat
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def whole(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage.json()}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage.json()}

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage.json()}


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode("utf-8")

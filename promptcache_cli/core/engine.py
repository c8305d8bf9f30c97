"""The protocol both session kinds follow (:class:`..modular.session.ModularSession` and
:class:`..prefix.session.PrefixSession`): the public API (api.py) drives either through it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from ..llama.context import ContextSettings
from ..llama.model import Model
from ..llama.sampling import Sampler
from ..pml.schema import Schema
from ..pml.selection import Selection
from ..prompt.conversation import Conversation
from ..store.files import CacheStore
from .answer import Prefilled
from .results import Answer, CompileReport, Progress, Staleness
from .runtime import Runtime

if TYPE_CHECKING:
    from ..store.remote_tier import CacheObject


class Engine(Protocol):
    mode: str  # "modular" or "prefix"
    runtime: Runtime

    @property
    def model(self) -> Model: ...

    @property
    def store(self) -> CacheStore: ...

    @property
    def settings(self) -> ContextSettings: ...

    def compile(self, schema: Schema, *, force: bool = False, progress: Progress | None = None,
                ranked: bool = False, shard: tuple[int, int] | None = None,
                skip_in_store: bool = True) -> CompileReport: ...

    def cache_objects(self, schema: Schema, *, in_store: bool = False) -> list[CacheObject]: ...

    def record(self, schema: Schema, *, remote: bool = False) -> None: ...

    def ask(self, schema: Schema, selection: Selection, question: str | Conversation, *, max_tokens: int = 128,
            sampler: Sampler = Sampler(), no_cache: bool = False, on_text: Callable[[str], None] | None = None,
            progress: Progress | None = None, keep_logits: bool = False, refresh: float = 0.0,
            repair: int = 0, stop: Sequence[str] = ()) -> Answer: ...

    def stale(self, schema: Schema, selection: Selection | None = None) -> Staleness: ...

    def prefill(self, schema: Schema, selection: Selection, question: str | Conversation, *, max_tokens: int = 128,
                no_cache: bool = False, progress: Progress | None = None, refresh: float = 0.0,
                repair: int = 0) -> Prefilled: ...

    def close(self) -> None: ...

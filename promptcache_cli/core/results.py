"""What sessions return: frozen dataclasses, and the progress callback's type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

Progress = Callable[[int, int, str], None]  # (tokens done, tokens total, module name)


@dataclass(frozen=True)
class ModuleReport:
    """One module file (modular mode) or one prefix state (``prefix@<position>``) a compile or an
    ask reused or computed."""

    name: str
    key: str
    status: str  # reused | computed | downloaded; a compile also: remote (in the store) | other shard
    tokens: int
    bytes: int
    seconds: float
    uploaded: bool = False  # sent to the remote store now


@dataclass(frozen=True)
class CompileReport:
    schema: str
    encoding: str  # the module encoding, or "prefix"
    modules: tuple[ModuleReport, ...]
    seconds: float
    ranked: tuple[str, ...] = ()  # modules whose recompute scores were measured now
    warnings: tuple[str, ...] = ()
    remote: str | None = None  # the remote store (s3://bucket/prefix), when one is in use


@dataclass(frozen=True)
class SpanUse:
    """A run of a prompt's tokens served by (or stored in) a cache file: text found in any prompt
    (``pc ask --text``), or learned from one (``--learn``)."""

    name: str  # the schema and module whose file it is (``schema/module``), or ``learned``
    key: str  # the file's key
    start: int  # its first position in the prompt
    tokens: int
    exact: bool = False  # its states were computed after exactly the text before it here


@dataclass(frozen=True)
class Staleness:
    """What a compile or an ask would compute before answering, and why, in one line for a
    person (``reason``; None when nothing is to be computed)."""

    missing: tuple[str, ...]  # modules (or "prefix") whose states are not cached, in prompt order
    changed: tuple[str, ...]  # of those, the modules whose own text changed (or is new) since the last compile
    tokens: int  # the tokens of the missing modules
    reason: str | None


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: tuple[int, ...]  # the answer's token ids
    ttft_ms: float  # from the start of the ask to the first token's id
    total_ms: float
    cached_tokens: int  # prompt tokens whose states came from the cache
    computed_tokens: int  # prompt tokens computed now (fresh parts, recomputed ones, the question)
    modules: tuple[str, ...]  # the selected modules, sorted
    model: str
    warnings: tuple[str, ...]
    compiled: tuple[ModuleReport, ...]  # modules (or prefix states) compiled on demand
    first_logits: np.ndarray | None = None  # with ``keep_logits``: the prompt's last logits
    refreshed_tokens: int = 0  # cached tokens recomputed in the prompt's context (``refresh``)
    ranked: tuple[str, ...] = ()  # modules whose recompute scores were measured now
    spans: tuple[SpanUse, ...] = ()  # text prompts: the cached runs found in the prompt
    learned: tuple[SpanUse, ...] = ()  # text prompts with ``learn``: the runs stored for next time
    finish_reason: str = "stop"  # "stop": end of turn, a stop string, or halted; "length": max_tokens (or the context)
    downloaded: tuple[ModuleReport, ...] = ()  # modules (or prefix states) fetched from the remote store


@dataclass(frozen=True)
class Transfer:
    """One cache file `pc push` or `pc pull` moved, or why not."""

    name: str  # module name, or prefix@<position>
    key: str
    status: str  # uploaded | downloaded | present (already there) | missing | damaged
    bytes: int  # moved (0 unless uploaded or downloaded)
    seconds: float
    reason: str = ""  # for damaged: why


@dataclass(frozen=True)
class TransferReport:
    schema: str
    remote: str
    direction: str  # push | pull
    files: tuple[Transfer, ...]
    seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

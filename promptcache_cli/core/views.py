"""What :meth:`promptcache_cli.Session.prompt` and :func:`promptcache_cli.inspect_schema` return:
looks inside a prompt or a schema, computing nothing (a module of its own: `pc ask` never needs it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..prompt.layout import Element


@dataclass(frozen=True)
class PromptPart:
    """One part of a prompt, as :meth:`Session.prompt` shows it."""

    kind: str  # "cached" (a module's states from the cache), "fresh" (a parameter value), "uncached"
    # (a cache="false" module's text, computed for each request) or "question"
    module: str  # the owning module (``(schema)`` for the schema's own text), "" for the others
    offset: int  # its first position (a fresh part follows the prompt so far)
    tokens: tuple[int, ...]
    file: Path | None = None  # modular mode: the cache file holding a cached part's states

    @property
    def end(self) -> int:
        return self.offset + len(self.tokens)


@dataclass(frozen=True)
class PromptView:
    """What a request's prompt is made of, in position order (nothing is computed)."""

    parts: tuple[PromptPart, ...]
    schema_end: int  # positions the prompt takes before the question

    @property
    def tokens(self) -> tuple[int, ...]:
        """Every token as a cold prefill from position 0 sees them, the question included."""
        return tuple(t for p in self.parts for t in p.tokens)

    @property
    def gaps(self) -> int:
        """Position gaps between consecutive parts: 0, parts follow each other (kept for callers
        that measured the gaps of static layouts)."""
        return sum(1 for a, b in zip(self.parts, self.parts[1:], strict=False) if a.end != b.offset)


@dataclass(frozen=True)
class SchemaLayout:
    """A schema's static positions for a model (`pc inspect`)."""

    schema: str
    model: str
    length: int  # positions the schema takes
    elements: tuple[Element, ...]
    family: str = "?"  # the model's GGUF architecture (llama, qwen2, gemma3, lfm2, mamba2...)
    memory: str = "?"  # its memory kind (attention, swa, recurrent, hybrid)
    mode: str = "?"  # the mode `--mode auto` serves it in (modular or prefix)

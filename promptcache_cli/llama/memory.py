"""The kinds of llama.cpp memory a model has, each a small class saying what its states allow.

A session asks these questions instead of comparing kind names:

- ``can_stitch``: a module's cells can be cut out of one sequence and loaded beside other
  modules' cells at their positions (modular mode). Only plain attention: a recurrent state is one
  summary of everything before it, and a sliding window keeps only its last cells.
- ``can_cut``: one full state can be cut back to any prefix (``seq_rm``), so prefix mode stores
  only the state at the end of the cached prompt.
- ``partial_checkpoints``: a checkpoint stores only the part that cannot be cut back (a hybrid
  model's recurrent layers); it is restored over the full end state cut back to its position.
- ``plain_kv``: a state blob is a plain KV cache :mod:`.state_blob` can parse cell by cell.
- ``can_shift``: cached cells can be moved to other positions (llama.cpp re-rotates their K,
  RoPE): a module's states load at any position. Plain attention can; the live context confirms it
  (``llama_memory_can_shift``, :attr:`.context.Context.can_shift`), which some architectures deny.

``state_sections`` says what a state blob of the kind holds, section by section, for the strict
reader (:func:`.state_blob.parse_state`): "kv" a full KV cache, "swa" a sliding-window KV cache,
"rs" a recurrent state; a partial state (llama.cpp's PARTIAL_ONLY) leaves out what can be cut back.

``name`` is what cache keys and file headers record; it never changes for a kind.
"""

from __future__ import annotations

from typing import ClassVar


class Memory:
    name: ClassVar[str]
    label: ClassVar[str]  # as messages name it
    can_stitch: ClassVar[bool] = False
    can_cut: ClassVar[bool] = False
    partial_checkpoints: ClassVar[bool] = False
    plain_kv: ClassVar[bool] = False
    can_shift: ClassVar[bool] = False

    def state_sections(self, *, partial: bool = False, swa: bool = False) -> tuple[str, ...]:
        """The sections of this memory's state blobs, in order (``swa``: the model also has
        sliding-window layers, as a hybrid may)."""
        raise NotImplementedError

    @property
    def prefers_prefix(self) -> bool:
        """`--mode auto` serves the model in prefix mode: its states cannot be stitched."""
        return not self.can_stitch

    def __repr__(self) -> str:
        return f"<{type(self).__name__} memory>"


class Attention(Memory):
    """A plain KV cache: one cell per token, any cells removable or copyable."""

    name = "attention"
    label = "attention"
    can_stitch = True
    can_cut = True
    plain_kv = True
    can_shift = True

    def state_sections(self, *, partial: bool = False, swa: bool = False) -> tuple[str, ...]:
        return ("kv",)


class SlidingWindow(Memory):
    """Sliding-window attention: the window cache keeps only the last cells, so a state can
    neither be cut back nor stitched."""

    name = "swa"
    label = "sliding-window attention"

    def state_sections(self, *, partial: bool = False, swa: bool = True) -> tuple[str, ...]:
        """The full-attention layers' cache, then the window layers' (a partial state: only that)."""
        return ("swa",) if partial else ("kv", "swa")


class Recurrent(Memory):
    """A recurrent state (Mamba, RWKV): one fixed-size summary of every token so far."""

    name = "recurrent"
    label = "recurrent"

    def state_sections(self, *, partial: bool = False, swa: bool = False) -> tuple[str, ...]:
        return ("rs",)


class Hybrid(Memory):
    """Recurrent layers beside attention layers: the attention cells can be cut back, the
    recurrent part cannot, so checkpoints store only the recurrent part."""

    name = "hybrid"
    label = "hybrid"
    partial_checkpoints = True

    def state_sections(self, *, partial: bool = False, swa: bool = False) -> tuple[str, ...]:
        """The attention layers' cache (two with sliding-window layers), then the recurrent state;
        a partial state leaves out what can be cut back (the full-attention cache)."""
        attention = ("kv", "swa") if swa else ("kv",)
        return (*attention[1:], "rs") if partial else (*attention, "rs")


KINDS: dict[str, Memory] = {m.name: m for m in (Attention(), SlidingWindow(), Recurrent(), Hybrid())}


def memory(*, recurrent: bool, hybrid: bool, n_swa: int) -> Memory:
    """The memory of a model llama.cpp describes so (``llama_model_is_recurrent``, ``_is_hybrid``,
    ``_n_swa``)."""
    if recurrent:
        return KINDS["recurrent"]
    if hybrid:
        return KINDS["hybrid"]
    if n_swa > 0:
        return KINDS["swa"]
    return KINDS["attention"]

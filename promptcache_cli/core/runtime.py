"""What both session kinds hold: a loaded model, a llama.cpp context sized on demand (and a second
one for prompts given as tokens, once there is one), the cache store, the layouts of the schemas
asked about, and the arena decoded state blobs live in.

A :class:`Runtime` is reused question to question; it never prints and keeps no per-question
state beyond the context's cells and the arena's blobs (both reset by the next question).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CacheFileError, PromptTooLong
from ..llama.context import Context, ContextSettings
from ..llama.model import Model
from ..pml.schema import Schema
from ..pml.selection import Selection
from ..prompt import layout as lay
from ..prompt.conversation import Conversation, turn_tokens
from ..prompt.plan import PromptPlan, plan_prompt, question_tokens
from ..store.arena import Arena
from ..store.cache_file import Pending
from ..store.files import CacheStore
from ..store.keys import model_fingerprint

if TYPE_CHECKING:
    from ..store.remote_tier import Tier  # imported only where a remote is in use
    from ..store.span_index import SpanIndex


class Runtime:
    def __init__(self, model_path: str | Path, *, cache_dir: str | Path, settings: ContextSettings,
                 model: Model | None = None, remote: Tier | None = None) -> None:
        """``model``: the file at ``model_path``, already loaded (else it is loaded here);
        ``remote``: the shared store behind the cache directory (store/remote.py), if any."""
        self.model_path = str(model_path)
        self.model = model if model is not None else Model(self.model_path)
        # its identity, as keys and headers record it (keys hash only its size and ends), with the
        # family and memory kind manifests show (`pc ls`)
        self.fingerprint = {**model_fingerprint(self.model_path), "family": self.model.family,
                            "memory": self.model.memory.name}
        self.store = CacheStore(Path(cache_dir))
        self.remote = remote
        self.settings = settings
        self.ctx: Context | None = None  # the context the last question was answered in
        self.uses = 0  # calls of context(): another one means the context may hold something else now
        # prompts given as tokens (a server's plain chats) have a context of their own, so a
        # schema's question between two turns of a chat leaves the chat's cells where they are
        self.token_ctx: Context | None = None
        self.token_uses = 0
        self.last_ctx: Context | None = None  # whichever of the two answered last
        self.arena = Arena()  # decoded blobs of compressed cache files, reused question to question
        self._reads: list[Pending] = []  # reads started since the arena was last reset
        self._layouts: dict[int, tuple[Schema, lay.Layout]] = {}
        self._span_index: SpanIndex | None = None

    def close(self) -> None:
        for ctx in (self.ctx, self.token_ctx):
            if ctx is not None:
                ctx.close()
        self.ctx = self.token_ctx = self.last_ctx = None
        self.reset_arena()
        self.arena.close()
        self.model.close()

    @property
    def span_index(self) -> SpanIndex:
        """The index of every stored segment's text for this model and state layout (text prompts
        look cached text up in it; compiles and learning add to it)."""
        if self._span_index is None:
            from ..llama.bindings import llama_cpp_version
            from ..store.keys import FORMAT_TAG
            from ..store.span_index import SpanIndex, variant_id

            variant = variant_id(self.fingerprint, llama_cpp_version(), self.settings.state_layout(), FORMAT_TAG)
            self._span_index = SpanIndex(self.store.boundary, variant)
        return self._span_index

    # -- memory ---------------------------------------------------------------------------------
    def reset_arena(self) -> None:
        """The previous question's blobs are dead: once no read still writes into the arena (a
        question that failed midway may leave some running), its memory is reused."""
        for pending in self._reads:
            pending.wait()
        self._reads.clear()
        self.arena.reset()

    def reading(self, pending: Pending) -> Pending:
        """Note a read that writes into the arena (waited for before the arena is reused)."""
        self._reads.append(pending)
        return pending

    def context(self, n_cells: int, *, n_seq: int = Context.N_SEQ, clear: bool = True) -> Context:
        """A context with at least ``n_cells`` cells and ``n_seq`` sequences (reused while big
        enough), cleared (``clear=False``: holding what it held, unless it had to be replaced;
        :attr:`uses` counts the calls that may have changed what it holds)."""
        self.ctx = self.last_ctx = self._sized(self.ctx, n_cells, n_seq, clear)
        self.uses += 1
        return self.ctx

    def token_context(self, n_cells: int, *, clear: bool = True) -> Context:
        """:meth:`context` for prompts given as tokens: a second context, created on first use
        (:attr:`token_uses` counts its calls)."""
        self.token_ctx = self.last_ctx = self._sized(self.token_ctx, n_cells, Context.N_SEQ, clear)
        self.token_uses += 1
        return self.token_ctx

    def handed_out(self) -> Context | None:
        """The context that answered last, for a caller that may change its cells: neither
        context's cells are reused after this."""
        self.uses += 1
        self.token_uses += 1
        return self.last_ctx

    def _sized(self, ctx: Context | None, n_cells: int, n_seq: int, clear: bool) -> Context:
        need = max(256, -(-n_cells // 256) * 256)
        self.check_fits(n_cells)
        need = min(need, self.model.n_ctx_train)
        if ctx is None or ctx.n_ctx < need or ctx.N_SEQ < n_seq:
            if ctx is not None:
                ctx.close()
            return Context(self.model, replace(self.settings, n_ctx=need), n_seq=n_seq)
        if clear:
            ctx.clear()
        return ctx

    def check_fits(self, n_cells: int) -> None:
        if n_cells > self.model.n_ctx_train:
            raise PromptTooLong(
                f"the prompt and answer need {n_cells} positions, "
                f"the model's context is {self.model.n_ctx_train}"
            )

    # -- prompts --------------------------------------------------------------------------------
    def layout(self, schema: Schema) -> lay.Layout:
        hit = self._layouts.get(id(schema))
        if hit is None or hit[0] is not schema:  # ids are reused once a schema is freed
            at_least = lay.min_positions(schema) + 1  # and a token of answer
            if at_least > self.model.n_ctx_train:  # refused before the slow part: tokenizing every text
                raise PromptTooLong(f"the schema takes at least {at_least - 1} positions, "
                                    f"the model's context is {self.model.n_ctx_train}")
            hit = self._layouts[id(schema)] = (schema, lay.build(schema, self.model, self.model.chat_template()))
        return hit[1]

    def plan(self, layout: lay.Layout, selection: Selection, *, static: bool = False) -> PromptPlan:
        return plan_prompt(layout, selection, self.model, static=static)

    def question_tokens(self, layout: lay.Layout, question: str | Conversation) -> list[int]:
        """The question's tokens after the prompt (and the conversation's earlier turns, if any),
        up to the generation prompt."""
        if isinstance(question, Conversation):
            return turn_tokens(layout, question, self.model, self.model.chat_template())
        return question_tokens(layout, question, self.model)

    # -- cache files ----------------------------------------------------------------------------
    def check_header(self, h: dict, key: str) -> None:
        """What any cache file a session loads must say of itself: the key it is stored under,
        this model and this session's state layout."""
        if h.get("key") != key:
            raise CacheFileError("its key does not match its name")
        if h.get("model", {}).get("sha256_ends") != self.fingerprint["sha256_ends"]:
            raise CacheFileError("it was made with another model")
        if h.get("state_layout") != self.settings.state_layout():
            raise CacheFileError("it was made with other context settings")

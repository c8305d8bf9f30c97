"""States of recent plain prompts kept in RAM, least recently used evicted past ``--cache-ram``
bytes, as llama.cpp's server keeps its prompt cache. This is the seam between a request's prompt
tokens and the state it resumes from (:meth:`PromptCache.lookup`); the workers own the
llama.cpp contexts, this only holds states (shared by every worker, so it is locked).

What a state serves is the session's call (``depth``): any prompt sharing a prefix with it where
states can be cut back (attention), only prompts it is a whole prefix of otherwise.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence


class State(Protocol):
    """What the cache keeps: a prompt's tokens and its state's size (api.Session's PromptState)."""

    tokens: tuple[int, ...]

    @property
    def nbytes(self) -> int: ...


Depth = Callable[[Sequence[int], Sequence[int]], int]  # (request tokens, state tokens) -> usable depth


@dataclass(frozen=True)
class Hit:
    state: State
    depth: int  # leading tokens of the request it serves


class PromptCache:
    def __init__(self, capacity: int, *, prefixes_redundant: bool) -> None:
        """``capacity``: bytes of states kept (0 keeps none); ``prefixes_redundant``: a state
        serves every request a state of a prefix of its tokens serves (states that can be cut
        back), so those are dropped when it arrives."""
        self.capacity = capacity
        self.prefixes_redundant = prefixes_redundant
        self._states: OrderedDict[tuple[int, ...], State] = OrderedDict()  # oldest use first
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, tokens: Sequence[int]) -> bool:
        return tuple(tokens) in self._states

    def lookup(self, tokens: Sequence[int], depth: Depth, *, beyond: int = 0) -> Hit | None:
        """The state serving the most leading ``tokens``, when that is more than ``beyond`` (what
        the context already holds serves); it is marked as used. None otherwise: a state that
        would not be used keeps its place in the eviction order."""
        with self._lock:
            best: Hit | None = None
            for state in self._states.values():
                d = depth(tokens, state.tokens)
                if d > beyond and (best is None or d > best.depth):
                    best = Hit(state, d)
            if best is None:
                self.misses += 1
                return None
            self.hits += 1
            self._states.move_to_end(best.state.tokens)
            return best

    def put(self, state: State) -> None:
        """Keep ``state`` (the most recently used now), evicting the least recently used states
        past the capacity. A state larger than the whole capacity is not kept."""
        if state.nbytes > self.capacity or not state.tokens:
            return
        with self._lock:
            self._drop(state.tokens)
            if self.prefixes_redundant:
                for tokens in [t for t in self._states if len(t) <= len(state.tokens)
                               and state.tokens[: len(t)] == t]:
                    self._drop(tokens)
            self._states[state.tokens] = state
            self._bytes += state.nbytes
            while self._bytes > self.capacity:
                self._drop(next(iter(self._states)))

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._bytes = 0

    def _drop(self, tokens: tuple[int, ...]) -> None:
        old = self._states.pop(tokens, None)
        if old is not None:
            self._bytes -= old.nbytes

"""Reused memory for decoded (decompressed) state blobs.

A zstd cache file's blobs are decoded into memory before llama.cpp copies them into its KV cache.
Fresh memory costs a page fault per 4 KiB on first touch (about 23,000 for the 93 MB of states of
a 4k-token prompt), and the allocator gives large blocks back to the system once other work has
churned memory, so a question asked after other work paid those faults again: measured on the
4k-token document workload with an uncached question in between, 238 ms median time to first
token with fresh buffers, 149 ms with this arena. An arena keeps its blocks: the first question
faults their pages in, later ones reuse them. The first question's faults happen in the threads
that decode into the blocks, on both cores and while the main thread creates the llama.cpp
context; prefaulting the blocks on the main thread instead (MAP_POPULATE) made a cold `pc ask
--compression zstd` at ~4k slower: 418 ms against 381 ms (medians of 21 alternating runs).
Blobs taken from it are valid until the next :meth:`Arena.reset`.
"""

from __future__ import annotations

import numpy as np

_ALIGN = 64


class Arena:
    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._block = 0  # the block being carved
        self._used = 0  # bytes used in it

    def reset(self) -> None:
        """Every blob taken so far is dead; their memory is reused."""
        self._block = self._used = 0

    def take(self, n: int) -> np.ndarray:
        """``n`` bytes of (uninitialised) memory."""
        while self._block < len(self._blocks) and self._used + n > len(self._blocks[self._block]):
            self._block, self._used = self._block + 1, 0  # this block is full: the next one
        if self._block == len(self._blocks):
            self._blocks.append(np.empty(max(n, 32 << 20), dtype=np.uint8))
        out = self._blocks[self._block][self._used : self._used + n]
        self._used += -(-n // _ALIGN) * _ALIGN
        return out

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self._blocks)

    def close(self) -> None:
        self._blocks.clear()
        self.reset()


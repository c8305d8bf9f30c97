"""Hand-built zstd frames (RFC 8878), so the attacks do not depend on what a compressor emits.

A frame here is: magic, frame header descriptor, window descriptor, an optional 8-byte frame
content size (FCS), then blocks. An RLE block repeats one byte up to 128 KiB times and costs
4 bytes, so a few KiB of blocks expand to hundreds of MiB.
"""

from __future__ import annotations

import struct

ZSTD_MAGIC = 0xFD2FB528
_BLOCK_MAX = 1 << 17  # 128 KiB, the window below (exponent 7: 2**(10+7))
_WINDOW = 0x38


def _header(content_size: int | None) -> bytes:
    if content_size is None:
        return struct.pack("<IBB", ZSTD_MAGIC, 0x00, _WINDOW)  # no FCS field: size unknown
    return struct.pack("<IBBQ", ZSTD_MAGIC, 0xC0, _WINDOW, content_size)  # 8-byte FCS


def rle_bomb(n_bytes: int, *, declare: bool, byte: int = 0) -> bytes:
    """A frame that decompresses to ``n_bytes`` copies of ``byte``; with ``declare`` its header
    states that size (as ``ZstdCompressor.compress`` does), without it the size is unknown."""
    blocks, left = [], n_bytes
    while left:
        k = min(left, _BLOCK_MAX)
        left -= k
        last = 0 if left else 1
        blocks.append(((k << 3) | (1 << 1) | last).to_bytes(3, "little") + bytes([byte]))
    return _header(n_bytes if declare else None) + b"".join(blocks)


def raw_frame(data: bytes, *, claimed_size: int | None) -> bytes:
    """One raw (stored) block holding ``data``, under a header claiming ``claimed_size`` bytes
    of content (a lie when it differs from ``len(data)``)."""
    assert 0 < len(data) <= _BLOCK_MAX
    return _header(claimed_size) + ((len(data) << 3) | 1).to_bytes(3, "little") + data

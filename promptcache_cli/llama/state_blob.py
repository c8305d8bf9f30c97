"""Parse and validate llama.cpp per-sequence state blobs (plain KV cache) before llama.cpp sees
them: a malformed blob can crash the process inside ``llama_state_seq_set_data``.

Layout (little endian), as written by ``llama_state_seq_get_data`` in llama.cpp of
llama-cpp-python 0.3.36::

    u32 magic 0xaf143cd8, i32 seq_id, u32 n_stream
    per stream: u32 cell_count; cell_count x {i32 pos; u32 n_seq_id (=1); i32 seq_id}
                u32 v_trans; u32 n_layer
                per layer: i32 k_type; u64 k_row_bytes; cell_count * k_row_bytes
                V not transposed: per layer: i32 v_type; u64 v_row_bytes; cell_count * v_row_bytes
                V transposed:     per layer: i32 v_type; u32 v_elem_bytes; u32 n_embd_v;
                                  then n_embd_v columns of cell_count * v_elem_bytes
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BlobError

MAGIC = 0xAF143CD8
_MAX_LAYERS = 4096
_MAX_ROW = 1 << 24


@dataclass(frozen=True)
class BlobInfo:
    n_cells: int
    positions: np.ndarray  # int32, one per cell, in stored order
    v_trans: bool
    n_layer: int
    k_types: tuple[int, ...]
    v_types: tuple[int, ...]
    nbytes: int

    def shape_key(self) -> tuple:
        """What must match the live context for llama.cpp to accept the blob."""
        return (self.v_trans, self.n_layer, self.k_types, self.v_types)


class _Reader:
    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        if n < 0 or self.pos + n > len(self.buf):
            have = len(self.buf) - self.pos
            raise BlobError(f"truncated state blob: need {n} bytes at offset {self.pos}, have {have}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(self.take(4).view("<u4")[0])

    def i32(self) -> int:
        return int(self.take(4).view("<i4")[0])

    def u64(self) -> int:
        return int(self.take(8).view("<u8")[0])


def parse(blob: np.ndarray | bytes | memoryview) -> BlobInfo:
    """Validate a single-stream blob and describe it; raises :class:`BlobError`."""
    buf = np.frombuffer(blob, dtype=np.uint8) if not isinstance(blob, np.ndarray) else blob
    r = _Reader(buf)
    if r.u32() != MAGIC:
        raise BlobError("not a llama.cpp sequence state (bad magic)")
    r.i32()  # seq id it was saved from; loading uses the destination's
    if r.u32() != 1:
        raise BlobError("state blob has more than one stream (kv_unified must be on)")
    n_cells = r.u32()
    if n_cells == 0:
        raise BlobError("state blob holds no cells")
    if n_cells * 12 > len(buf):
        raise BlobError(f"state blob claims {n_cells} cells, larger than the blob")
    cells = r.take(12 * n_cells).view("<i4").reshape(n_cells, 3)
    if not np.all(cells[:, 1] == 1):
        raise BlobError("state blob cell is not tied to exactly one sequence")
    positions = cells[:, 0].copy()
    if positions.min() < 0:
        raise BlobError("state blob has a negative position")
    v_trans = r.u32()
    if v_trans not in (0, 1):
        raise BlobError(f"state blob has an invalid v_trans flag {v_trans}")
    n_layer = r.u32()
    if not 0 < n_layer <= _MAX_LAYERS:
        raise BlobError(f"state blob has an implausible layer count {n_layer}")
    k_types = []
    for _ in range(n_layer):
        k_types.append(r.i32())
        row = r.u64()
        if not 0 < row <= _MAX_ROW:
            raise BlobError(f"state blob has an implausible K row size {row}")
        r.take(row * n_cells)
    v_types = []
    for _ in range(n_layer):
        v_types.append(r.i32())
        if v_trans:
            elem, n_embd = r.u32(), r.u32()
            if not (0 < elem <= 8 and 0 < n_embd <= _MAX_ROW):
                raise BlobError("state blob has an implausible V column shape")
            r.take(elem * n_embd * n_cells)
        else:
            row = r.u64()
            if not 0 < row <= _MAX_ROW:
                raise BlobError(f"state blob has an implausible V row size {row}")
            r.take(row * n_cells)
    if r.pos != len(buf):
        raise BlobError(f"state blob has {len(buf) - r.pos} trailing bytes")
    return BlobInfo(n_cells, positions, bool(v_trans), n_layer, tuple(k_types), tuple(v_types), len(buf))


def kv_payloads(blob: np.ndarray) -> tuple[int, list[tuple[str, int, int, bool]]]:
    """(n_cells, [(kind, byte offset, n_embd, transposed)]) for every f16 K and V payload of a
    state blob :func:`parse` accepted (layout above); raises ValueError for other KV types."""
    def u32(at: int) -> int:
        return int(blob[at : at + 4].view("<u4")[0])

    def u64(at: int) -> int:
        return int(blob[at : at + 8].view("<u8")[0])

    n_cells = u32(12)
    at = 16 + 12 * n_cells
    v_trans, n_layer = u32(at), u32(at + 4)
    at += 8
    out = []
    for _ in range(n_layer):
        if u32(at) != 1:
            raise ValueError("K is not f16")
        row = u64(at + 4)
        out.append(("k", at + 12, row // 2, False))
        at += 12 + row * n_cells
    for _ in range(n_layer):
        if u32(at) != 1:
            raise ValueError("V is not f16")
        if v_trans:
            elem, n_embd = u32(at + 4), u32(at + 8)
            out.append(("v", at + 12, n_embd, True))
            at += 12 + elem * n_embd * n_cells
        else:
            row = u64(at + 4)
            out.append(("v", at + 12, row // 2, False))
            at += 12 + row * n_cells
    if at != len(blob):
        raise ValueError("state blob size does not match its layout")
    return n_cells, out

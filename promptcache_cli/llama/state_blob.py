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

That is a plain KV cache (:func:`parse`). Other memories write several sections back to back after
the magic and the sequence id (:func:`parse_state`; which sections a memory writes:
``Memory.state_sections`` in memory.py, from llama.cpp's ``state_write`` of each memory class)::

    "kv" section: u32 n_stream, then per stream as above (a stream with no cells stops after its count)
    "rs" section (recurrent state, llama-memory-recurrent.cpp):
                u32 cell_count; cell_count x {i32 pos; u32 n_seq_id (=0 for one sequence)}
                u32 s_trans (=0); u32 n_layer (every layer of the model)
                per recurrent layer: i32 r_type; u64 r_row_bytes; cell_count * r_row_bytes
                per recurrent layer: i32 s_type; u64 s_row_bytes; cell_count * s_row_bytes

Interleaved sliding-window attention (Gemma 2/3) writes two "kv" sections (the full-attention
layers' cache, then the window layers'; a partial state only the latter); a hybrid (LFM2, Granite
4, Jamba) a "kv" then an "rs" section (partial: the "rs" section only); a recurrent model one "rs"
section. Every recurrent layer has one R row (conv state) and one S row (SSM or WKV state) per
cell, of one size each across layers (an S row may be empty: LFM2's short convolutions have none).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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


def _start(blob: np.ndarray | bytes | memoryview) -> _Reader:
    buf = np.frombuffer(blob, dtype=np.uint8) if not isinstance(blob, np.ndarray) else blob
    r = _Reader(buf)
    if r.u32() != MAGIC:
        raise BlobError("not a llama.cpp sequence state (bad magic)")
    r.i32()  # seq id it was saved from; loading uses the destination's
    return r


def parse(blob: np.ndarray | bytes | memoryview) -> BlobInfo:
    """Validate a single-stream blob of a plain KV cache and describe it; raises :class:`BlobError`."""
    r = _start(blob)
    info = _kv_section(r, allow_empty=False)
    if r.pos != len(r.buf):
        raise BlobError(f"state blob has {len(r.buf) - r.pos} trailing bytes")
    return replace(info, nbytes=len(r.buf))


def _kv_section(r: _Reader, *, allow_empty: bool) -> BlobInfo:
    """One KV cache's part of a blob, from its stream count on."""
    start = r.pos
    if r.u32() != 1:
        raise BlobError("state blob has more than one stream (kv_unified must be on)")
    n_cells = r.u32()
    if n_cells == 0:
        if not allow_empty:
            raise BlobError("state blob holds no cells")
        return BlobInfo(0, np.zeros(0, np.int32), False, 0, (), (), r.pos - start)
    if n_cells * 12 > len(r.buf) - r.pos:
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
    return BlobInfo(n_cells, positions, bool(v_trans), n_layer, tuple(k_types), tuple(v_types), r.pos - start)


@dataclass(frozen=True)
class RecurrentInfo:
    """The recurrent section of a state: one cell per sequence (its last position)."""

    n_cells: int
    positions: np.ndarray  # int32
    n_layer: int  # the model's layers, as llama.cpp writes them
    n_recurrent: int  # layers with a recurrent state
    r_type: int
    r_row: int
    s_type: int
    s_row: int
    nbytes: int


@dataclass(frozen=True)
class StateInfo:
    """Every section of a state blob, in order: :class:`BlobInfo` ("kv") or :class:`RecurrentInfo` ("rs")."""

    sections: tuple[BlobInfo | RecurrentInfo, ...]
    nbytes: int

    @property
    def kv(self) -> tuple[BlobInfo, ...]:
        return tuple(s for s in self.sections if isinstance(s, BlobInfo))

    @property
    def recurrent(self) -> RecurrentInfo | None:
        return next((s for s in self.sections if isinstance(s, RecurrentInfo)), None)


SECTIONS = ("kv", "swa", "rs")  # a full KV cache, a sliding-window KV cache, a recurrent state


def parse_state(blob: np.ndarray | bytes | memoryview, sections: tuple[str, ...]) -> StateInfo:
    """Validate a blob made of ``sections`` (in order; "swa" is parsed as "kv", a recurrent
    section can only come last) and describe it; raises :class:`BlobError`."""
    if not sections or any(s not in SECTIONS for s in sections) or "rs" in sections[:-1]:
        raise ValueError(f"not a state layout: {sections!r}")
    r = _start(blob)
    out = tuple(_rs_section(r) if kind == "rs" else _kv_section(r, allow_empty=False) for kind in sections)
    if r.pos != len(r.buf):
        raise BlobError(f"state blob has {len(r.buf) - r.pos} trailing bytes")
    return StateInfo(out, len(r.buf))


def check_prefix_state(info: StateInfo, sections: tuple[str, ...], *, n_tokens: int, n_layer: int,
                       window: int = 0, partial: bool = False) -> None:
    """Raise :class:`BlobError` unless ``info`` (parsed as ``sections``) is exactly the state of a
    sequence's first ``n_tokens`` positions in a model of ``n_layer`` layers: a full KV cache holds
    positions ``0..n_tokens-1``, a window cache the last ``window`` of them, a recurrent state one
    cell at ``n_tokens - 1``; the sections' layers add up to the model's (a partial state may leave
    some out: a hybrid's attention layers, an interleaved-SWA model's full-attention layers)."""
    layers = 0
    for kind, sec in zip(sections, info.sections, strict=True):
        if isinstance(sec, RecurrentInfo):
            if sec.n_cells != 1 or int(sec.positions[0]) != n_tokens - 1:
                raise BlobError("its recurrent state is not at the prompt's end")
            if sec.n_layer != n_layer:
                raise BlobError("it was made by a model of another depth")
            layers += sec.n_recurrent
            continue
        want = np.arange(max(0, n_tokens - window) if kind == "swa" else 0, n_tokens)
        if not np.array_equal(np.sort(sec.positions), want):
            raise BlobError("its cells differ from the prompt's")
        layers += sec.n_layer
    if layers > n_layer or (layers < n_layer and not partial):
        raise BlobError("its layers differ from the model's")


def _rs_section(r: _Reader) -> RecurrentInfo:
    """A recurrent section; it runs to the end of the blob (how many layers have a state is known
    only from there: R entries, then as many S entries)."""
    start = r.pos
    n_cells = r.u32()
    if not 0 < n_cells <= 256:
        raise BlobError(f"state blob has an implausible recurrent cell count {n_cells}")
    cells = r.take(8 * n_cells).view("<i4").reshape(n_cells, 2)
    if not np.all(cells[:, 1] == 0):
        raise BlobError("state blob recurrent cell names sequences (a whole-context state?)")
    positions = cells[:, 0].copy()
    if positions.min() < 0:
        raise BlobError("state blob has a negative position")
    if r.u32() != 0:
        raise BlobError("state blob has a transposed recurrent state")
    n_layer = r.u32()
    if not 0 < n_layer <= _MAX_LAYERS:
        raise BlobError(f"state blob has an implausible layer count {n_layer}")
    entries = []
    while r.pos < len(r.buf):
        if len(entries) == 2 * n_layer:
            raise BlobError(f"state blob has {len(r.buf) - r.pos} trailing bytes")
        kind = r.i32()
        row = r.u64()
        if not 0 <= row <= _MAX_ROW:
            raise BlobError(f"state blob has an implausible recurrent row size {row}")
        r.take(row * n_cells)
        entries.append((kind, row))
    half = len(entries) // 2
    if len(entries) == 0 or len(entries) % 2:
        raise BlobError("state blob recurrent layers do not come in R and S pairs")
    rs, ss = entries[:half], entries[half:]
    if len(set(rs)) != 1 or len(set(ss)) != 1 or rs[0][1] == 0:
        raise BlobError("state blob recurrent rows differ from layer to layer")
    return RecurrentInfo(n_cells, positions, n_layer, half, rs[0][0], rs[0][1], ss[0][0], ss[0][1], r.pos - start)


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

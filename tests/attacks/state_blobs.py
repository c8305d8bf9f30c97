"""Synthetic llama.cpp sequence-state blobs (the layout in ``state_blob``'s docstring) and
hostile variants of them. ``make`` writes a well-formed blob unless told to lie about a field."""

from __future__ import annotations

import struct

from promptcache_cli.llama import state_blob

F16 = 1  # GGML_TYPE_F16


def make(*, positions=(10, 11, 12), v_trans: bool = False, n_layer: int = 2, k_row: int = 8, v_row: int = 6,
         v_elem: int = 2, n_embd_v: int = 3, k_type: int = F16, v_type: int = F16, magic: int = state_blob.MAGIC,
         seq_id: int = 0, n_stream: int = 1, cell_count: int | None = None, n_seq_id: int = 1,
         v_trans_flag: int | None = None, n_layer_field: int | None = None, layers: int | None = None,
         v_layers: int | None = None) -> bytes:
    """A blob of ``len(positions)`` cells. The ``*_field``/``cell_count``/``v_trans_flag``
    arguments override what the header says without changing what follows; ``layers`` and
    ``v_layers`` are how many K and V layers are actually written."""
    n = len(positions)
    out = [struct.pack("<IiII", magic, seq_id, n_stream, n if cell_count is None else cell_count)]
    out += [struct.pack("<iIi", p, n_seq_id, seq_id) for p in positions]
    flag = int(v_trans) if v_trans_flag is None else v_trans_flag
    out.append(struct.pack("<II", flag, n_layer if n_layer_field is None else n_layer_field))
    layers = n_layer if layers is None else layers
    for il in range(layers):
        out.append(struct.pack("<iQ", k_type, k_row) + bytes((il + j) % 251 for j in range(n * k_row)))
    for il in range(layers if v_layers is None else v_layers):
        if v_trans:
            data = bytes((3 * il + j) % 241 for j in range(n * v_elem * n_embd_v))
            out.append(struct.pack("<iII", v_type, v_elem, n_embd_v) + data)
        else:
            out.append(struct.pack("<iQ", v_type, v_row) + bytes((7 * il + j) % 239 for j in range(n * v_row)))
    return b"".join(out)


HOSTILE = {
    "empty": lambda: b"",
    "magic_only": lambda: make()[:4],
    "bad_magic": lambda: make(magic=0xDEADBEEF),
    "magic_byteswapped": lambda: make(magic=int.from_bytes(state_blob.MAGIC.to_bytes(4, "little"), "big")),
    "n_stream_0": lambda: make(n_stream=0),
    "n_stream_2": lambda: make(n_stream=2),
    "n_stream_max": lambda: make(n_stream=0xFFFFFFFF),
    "zero_cells": lambda: make(positions=()),
    "zero_cells_declared": lambda: make(cell_count=0),
    "cells_exceed_buffer": lambda: make(cell_count=0xFFFFFFFF),
    "cells_just_exceed_buffer": lambda: make(cell_count=len(make()) // 12 + 1),
    "cells_one_more_than_written": lambda: make(cell_count=4),
    "cells_one_fewer_than_written": lambda: make(cell_count=2),
    "n_seq_id_0": lambda: make(n_seq_id=0),
    "n_seq_id_2": lambda: make(n_seq_id=2),
    "position_negative": lambda: make(positions=(10, -1, 12)),
    "position_int_min": lambda: make(positions=(-(2**31), 11, 12)),
    "v_trans_2": lambda: make(v_trans_flag=2),
    "v_trans_max": lambda: make(v_trans_flag=0xFFFFFFFF),
    "v_trans_flag_lies_0": lambda: make(v_trans=True, v_trans_flag=0),
    "v_trans_flag_lies_1": lambda: make(v_trans=False, v_trans_flag=1),
    "n_layer_0": lambda: make(n_layer_field=0),
    "n_layer_4097": lambda: make(n_layer_field=4097),
    "n_layer_max": lambda: make(n_layer_field=0xFFFFFFFF),
    "n_layer_more_than_written": lambda: make(n_layer_field=3),
    "n_layer_fewer_than_written": lambda: make(n_layer_field=1),
    "k_row_0": lambda: make(k_row=0),
    # an implausible row or column size is refused before its data would be read: none is written
    "k_row_over_max": lambda: make(n_layer=1, layers=0) + struct.pack("<iQ", F16, (1 << 24) + 1),
    "k_row_max": lambda: make(n_layer=1, layers=0) + struct.pack("<iQ", F16, 2**64 - 1),
    "k_row_fills_rest": lambda: make(n_layer=1, layers=0) + struct.pack("<iQ", F16, 100) + bytes(299),
    "v_row_0": lambda: make(v_row=0),
    "v_row_over_max": lambda: make(n_layer=1, v_layers=0) + struct.pack("<iQ", F16, (1 << 24) + 1),
    "v_elem_0": lambda: make(v_trans=True, v_elem=0),
    "v_elem_9": lambda: make(v_trans=True, v_elem=9),
    "v_n_embd_0": lambda: make(v_trans=True, n_embd_v=0),
    "v_n_embd_over_max": lambda: make(v_trans=True, n_layer=1, v_layers=0) + struct.pack("<iII", F16, 2, (1 << 24) + 1),
    "trailing_byte": lambda: make() + b"\0",
    "trailing_blob": lambda: make() + make(),
    "truncated_one_byte": lambda: make()[:-1],
    "truncated_in_cells": lambda: make()[:20],
    "truncated_in_v": lambda: make(v_trans=True)[:-5],
}

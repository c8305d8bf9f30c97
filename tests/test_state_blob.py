"""The llama.cpp sequence-state validator: synthetic blobs of the documented layout, hostile
variants (generators in ``tests/attacks/state_blobs.py``), a seeded fuzz loop and real blobs from
the default model. Every malformed blob must raise ``state_blob.BlobError`` and nothing else."""

from __future__ import annotations

import random
import struct
import time

import numpy as np
import pytest

from promptcache_cli.store import cache_file
from promptcache_cli.llama import state_blob

from .attacks import state_blobs as blobs


@pytest.mark.parametrize("v_trans", [False, True])
@pytest.mark.parametrize("as_type", [bytes, memoryview, np.ndarray])
def test_synthetic_blob_parses(v_trans, as_type):
    data = blobs.make(positions=(10, 12, 11, 40), v_trans=v_trans, n_layer=3, k_type=8, v_type=1)
    arg = np.frombuffer(data, np.uint8) if as_type is np.ndarray else as_type(data)
    info = state_blob.parse(arg)
    assert info.n_cells == 4
    assert info.positions.dtype == np.int32 and info.positions.tolist() == [10, 12, 11, 40]  # stored order
    assert info.v_trans is v_trans and info.n_layer == 3
    assert info.k_types == (8, 8, 8) and info.v_types == (1, 1, 1)
    assert info.nbytes == len(data)
    assert info.shape_key() == (v_trans, 3, (8, 8, 8), (1, 1, 1))


def test_layout_bytes_are_as_documented():
    """One cell, one layer, no V transposition: every field at its documented offset."""
    data = blobs.make(positions=(7,), n_layer=1, k_row=2, v_row=4, seq_id=5)
    assert struct.unpack_from("<IiIIiIiII", data) == (state_blob.MAGIC, 5, 1, 1, 7, 1, 5, 0, 1)
    assert struct.unpack_from("<iQ", data, 36) == (blobs.F16, 2) and len(data) == 36 + 12 + 2 + 12 + 4
    assert state_blob.parse(data).positions.tolist() == [7]


@pytest.mark.parametrize("v_trans", [False, True])
def test_edge_values_accepted(v_trans):
    """The largest plausible shapes parse (no data is large: one cell of one byte per row)."""
    data = blobs.make(positions=(0, 2**31 - 1), v_trans=v_trans, n_layer=4096, k_row=1, v_row=1, v_elem=8,
                      n_embd_v=1)
    info = state_blob.parse(data)
    assert info.n_layer == 4096 and info.positions.tolist() == [0, 2**31 - 1]


@pytest.mark.parametrize("name", list(blobs.HOSTILE))
def test_hostile_blob_refused(name):
    with pytest.raises(state_blob.BlobError):
        state_blob.parse(blobs.HOSTILE[name]())


@pytest.mark.parametrize("v_trans", [False, True])
def test_every_truncation_refused(v_trans):
    data = blobs.make(v_trans=v_trans)
    for n in range(len(data)):
        with pytest.raises(state_blob.BlobError):
            state_blob.parse(data[:n])


def _check_info(info: state_blob.BlobInfo, data: bytes) -> None:
    """What a blob that parses must satisfy whatever its bytes."""
    assert info.nbytes == len(data) and info.n_cells == len(info.positions) > 0
    assert info.n_cells * 12 <= len(data) and int(info.positions.min()) >= 0
    assert 0 < info.n_layer <= 4096 and len(info.k_types) == len(info.v_types) == info.n_layer
    assert isinstance(info.v_trans, bool)


def test_fuzz_bytes():
    """Seeded flips, cuts, insertions and overwrites of valid blobs: BlobError or a sane result."""
    rnd = random.Random(1234)
    bases = [blobs.make(v_trans=v, positions=tuple(range(5, 5 + n)), n_layer=layers)
             for v in (False, True) for n, layers in ((1, 1), (3, 2), (6, 4))]
    t = time.perf_counter()
    refused = 0
    for _ in range(4000):
        buf = bytearray(rnd.choice(bases))
        kind = rnd.randrange(4)
        if kind == 0:
            for _ in range(rnd.randint(1, 4)):
                buf[rnd.randrange(len(buf))] ^= 1 << rnd.randrange(8)
        elif kind == 1:
            del buf[rnd.randrange(len(buf)):]
        elif kind == 2:
            at = rnd.randrange(len(buf) + 1)
            buf[at:at] = rnd.randbytes(rnd.randint(1, 16))
        else:
            at = rnd.randrange(len(buf))
            buf[at : at + 4] = rnd.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x01\0\0\0", rnd.randbytes(4)])
        data = bytes(buf)
        try:
            info = state_blob.parse(data)
        except state_blob.BlobError:
            refused += 1
            continue
        _check_info(info, data)
    assert refused > 1000
    assert time.perf_counter() - t < 10


def test_fuzz_fields():
    """Seeded random field values through the builder: valid combinations parse exactly, invalid
    ones raise BlobError; a header field that lies about what follows is refused or (when the lie
    happens to be consistent) describes a sane blob."""
    rnd = random.Random(4321)
    pick = lambda *xs: rnd.choice(xs)  # noqa: E731
    maybe = lambda good, *bad: good if rnd.random() < 0.9 else rnd.choice(bad)  # noqa: E731
    t = time.perf_counter()
    n_valid = 0
    for _ in range(2000):
        kw = dict(
            positions=tuple(maybe(rnd.choice([0, 1, 9, 2**31 - 1]), -1, -(2**31)) for _ in range(maybe(pick(1, 2, 3), 0))),
            v_trans=pick(False, True), n_layer=pick(1, 2, 3), k_row=maybe(pick(1, 4), 0), v_row=maybe(pick(1, 4), 0),
            v_elem=maybe(pick(1, 2, 8), 0, 9), n_embd_v=maybe(pick(1, 3), 0), n_stream=maybe(1, 0, 2),
            n_seq_id=maybe(1, 0, 2), magic=maybe(state_blob.MAGIC, 0),
        )
        if rnd.random() < 0.2:
            kw[pick("cell_count", "v_trans_flag", "n_layer_field")] = pick(0, 1, 2, 4, 4097, 0xFFFFFFFF)
        if rnd.random() < 0.1:
            kw["layers"] = pick(0, 1, 4)
        data = blobs.make(**kw)
        well_formed = (kw["magic"] == state_blob.MAGIC and kw["n_stream"] == 1 and kw["n_seq_id"] == 1
                       and kw["positions"] and min(kw["positions"]) >= 0 and kw["k_row"] > 0
                       and (kw["n_embd_v"] > 0 and 0 < kw["v_elem"] <= 8 if kw["v_trans"] else kw["v_row"] > 0))
        lies = {"cell_count", "v_trans_flag", "n_layer_field", "layers"} & set(kw)
        if well_formed and not lies:
            n_valid += 1
            info = state_blob.parse(data)
            assert info.positions.tolist() == list(kw["positions"]) and info.n_layer == kw["n_layer"]
            assert info.v_trans == kw["v_trans"]
        elif not lies:
            with pytest.raises(state_blob.BlobError):
                state_blob.parse(data)
        else:
            try:
                _check_info(state_blob.parse(data), data)  # a lie can still describe a valid blob
            except state_blob.BlobError:
                pass
    assert 300 < n_valid < 1700  # both kinds are exercised
    assert time.perf_counter() - t < 10


# -- real blobs from the default model -----------------------------------------------------------


@pytest.fixture(scope="module")
def model(model_path):
    from promptcache_cli.llama.model import Model

    m = Model(str(model_path))
    yield m
    m.close()


@pytest.mark.parametrize("flash_attn", [False, True])
def test_real_blob(model, flash_attn, tmp_path):
    from promptcache_cli.llama.context import GGML_TYPES, Context, ContextSettings

    tokens = model.tokenize("The quick brown fox jumps", special=False)
    with Context(model, ContextSettings(n_ctx=256, flash_attn=flash_attn)) as ctx:
        ctx.decode(tokens, start=10)
        blob = ctx.save_state(0)
        info = state_blob.parse(blob)
        assert info.positions.tolist() == list(range(10, 10 + len(tokens)))
        assert info.n_layer == model.n_layer and info.n_cells == len(tokens)
        assert info.v_trans is (not flash_attn)  # V is transposed when flash attention is off
        assert set(info.k_types) == set(info.v_types) == {GGML_TYPES["f16"]}
        assert info.nbytes == blob.nbytes

        # the blob survives the cache file byte for byte, and llama.cpp takes it back
        path = tmp_path / "real.pcm"
        path.write_bytes(b"".join(bytes(c) for c in cache_file.encode(
            {}, [blob], [tuple(tokens)], [10], codec="zstd", split_planes=True)))
        f = cache_file.verify(path)
        try:
            stored = np.array(f.blob(0))
        finally:
            f.close()
        assert np.array_equal(stored, blob) and state_blob.parse(stored).shape_key() == info.shape_key()
        ctx.load_state(1, stored)
        assert ctx.pos_max(1) == 10 + len(tokens) - 1

    for bad in (blob[:-1], np.concatenate([blob, blob[:1]]), blob[: blob.nbytes // 2]):
        with pytest.raises(state_blob.BlobError):
            state_blob.parse(bad)

"""Byte-level fuzzing of the two readers that take bytes from disk: ``state_blob.parse`` and
``cache_file.read`` / ``parse_header`` / ``CacheFile.blob``. Whatever the bytes, each either
accepts them (and what it returns is consistent) or raises its own named error: BlobError,
CacheFileError. Any other exception fails the test, and Hypothesis shrinks it to a small input.

Complements the seeded loops in test_state_blob.py and test_cache_file.py: here Hypothesis picks
the bytes, the edits and arbitrary JSON headers, and shrinks what it finds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from promptcache_cli.store import cache_file as cf
from promptcache_cli.llama import state_blob

from .attacks import cache_files as attacks, state_blobs

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- edits of valid bytes -------------------------------------------------------------------------

EDITS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
        st.tuples(st.just("cut"), st.integers(0, 1 << 20)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("overwrite"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("u32"), st.integers(0, 1 << 20), st.sampled_from([0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF])),
    ),
    min_size=1,
    max_size=4,
)


def apply(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for edit in edits:
        at = edit[1] % (len(buf) + 1)
        if edit[0] == "flip" and buf:
            buf[at % len(buf)] ^= 1 << edit[2]
        elif edit[0] == "cut":
            del buf[at:]
        elif edit[0] == "insert":
            buf[at:at] = edit[2]
        elif edit[0] == "overwrite":
            buf[at : at + len(edit[2])] = edit[2]
        elif edit[0] == "u32" and len(buf) >= 4:
            at = min(at, len(buf) - 4)
            buf[at : at + 4] = struct.pack("<I", edit[2])
    return bytes(buf)


# -- state blobs ----------------------------------------------------------------------------------


def check_blob(data: bytes) -> None:
    try:
        info = state_blob.parse(data)
    except state_blob.BlobError:
        return
    assert info.nbytes == len(data)
    assert info.n_cells == len(info.positions) > 0 and int(info.positions.min()) >= 0
    assert info.n_layer == len(info.k_types) == len(info.v_types) > 0


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(struct.pack("<IiII", state_blob.MAGIC, 0, 1, 0xFFFFFFFF))
def test_state_blob_parse_arbitrary_bytes(data: bytes) -> None:
    check_blob(data)


@FUZZ
@given(v_trans=st.booleans(), n_cells=st.integers(1, 5), n_layer=st.integers(1, 3), edits=EDITS)
def test_state_blob_parse_edited_blobs(v_trans: bool, n_cells: int, n_layer: int, edits) -> None:
    blob = state_blobs.make(positions=tuple(range(7, 7 + n_cells)), v_trans=v_trans, n_layer=n_layer)
    check_blob(apply(blob, edits))


# -- cache files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_files() -> list[tuple[bytes, list[np.ndarray]]]:
    """Small valid files of every codec and plane layout, several frames each, with their blobs."""
    rng = np.random.default_rng(3)
    blobs = [rng.standard_normal(60).astype(np.float16).view(np.uint8), np.tile(np.arange(40, dtype=np.uint8), 2)]
    out = []
    for codec in ("none", "zstd"):  # the first two files are raw
        for split in (False, True):
            chunks = cf.encode({"key": "k"}, blobs, [(1, 2), (3,)], [0, 2], codec=codec, split_planes=split)
            out.append((b"".join(bytes(c) for c in chunks), blobs))
    return out


def read_outcome(path: Path, expect: list[np.ndarray] | None) -> str:
    """'refused' (CacheFileError) or 'read' (every blob decoded; equal to ``expect`` if given)."""
    try:
        f = cf.read(path)
    except cf.CacheFileError:
        return "refused"
    try:
        got = [np.array(f.blob(i)) for i in range(len(f.segments))]
    except cf.CacheFileError:
        return "refused"
    finally:
        f.close()
    for rec, blob in zip(f.segments, got, strict=True):
        assert blob.nbytes == rec.raw_size
    if expect is not None:
        assert len(got) == len(expect) and all(np.array_equal(a, b) for a, b in zip(got, expect, strict=True))
    return "read"


@FUZZ
@given(st.binary(max_size=1024))
@example(cf.MAGIC)
@example(cf._PRELUDE.pack(cf.MAGIC, cf.VERSION, 1 << 30, 0))
def test_cache_file_read_arbitrary_bytes(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "any.pcm"
    path.write_bytes(data)
    read_outcome(path, None)


@FUZZ
@given(which=st.integers(0, 3), edits=EDITS)
def test_cache_file_read_edited_files(fuzz_dir: Path, valid_files, which: int, edits) -> None:
    data, blobs = valid_files[which]
    path = fuzz_dir / "edited.pcm"
    edited = apply(data, edits)
    path.write_bytes(edited)
    outcome = read_outcome(path, blobs)  # anything read must be exactly the original blobs
    if edited != data and which < 2:  # raw frames: checksums and exact tiling catch every edit
        assert outcome == "refused", edits


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["plane", "raw_at", "raw", "at", "size", "codec", "xxh3", "offset", "tokens", "raw_size", "frames"]


@st.composite
def headers(draw) -> bytes:
    """JSON headers shaped like the real one, with any value anywhere."""
    def frame() -> dict:
        return draw(st.dictionaries(st.sampled_from(FIELDS), JSON | st.sampled_from(["all", "lo", "hi", "none", "zstd"])
                                    | st.integers(0, 64), max_size=8))

    segments = [dict(draw(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5)),
                     frames=[frame() for _ in range(draw(st.integers(0, 3)))])
                for _ in range(draw(st.integers(0, 3)))]
    head = {"codec": draw(st.sampled_from(["none", "zstd", "lz4", 1, None])), "segments": segments}
    if draw(st.booleans()):
        head = draw(JSON)
    return json.dumps(head, allow_nan=True).encode()


def slots(node) -> list[tuple[object, object]]:
    """Every (container, key) of a JSON tree, depth first."""
    keys = range(len(node)) if isinstance(node, list) else list(node) if isinstance(node, dict) else []
    out = []
    for k in keys:
        out.append((node, k))
        out += slots(node[k])
    return out


@st.composite
def edited_headers(draw, valid: bytes) -> bytes:
    """A valid file's header with a few values replaced by any JSON, or removed."""
    head = json.loads(attacks.raw_parts(valid)[0])
    for _ in range(draw(st.integers(1, 3))):
        where = [s for s in slots(head) if s[1] not in ("key",)]
        container, key = draw(st.sampled_from(where))
        if draw(st.integers(0, 9)) == 0:
            del container[key]
        else:
            container[key] = draw(JSON | st.integers(-2, 2**33) | st.sampled_from(["all", "lo", "hi", "none", "zstd"]))
    return json.dumps(head, allow_nan=True).encode()


@FUZZ
@given(body=st.one_of(headers(), st.binary(max_size=512)), size=st.integers(0, 4096))
@example(body=b"[" * 100_000, size=0)
@example(body=b'{"codec": "none", "segments": [{"offset": 1e400}]}', size=0)
def test_parse_header_any_json_or_bytes(body: bytes, size: int) -> None:
    base = cf._PRELUDE.size + len(body)
    try:
        _, segments = cf.parse_header(body, base=base, size=base + size)
    except cf.CacheFileError:
        return
    check_accepted(segments, base=base, size=base + size)


def check_accepted(segments: list, *, base: int, size: int) -> None:
    """What parse_header accepts: well-typed records whose frames tile the payload exactly."""
    at = base
    for rec in segments:
        assert type(rec.offset) is int and type(rec.raw_size) is int and rec.raw_size > 0
        assert rec.tokens and all(type(t) is int and t >= 0 for t in rec.tokens)
        for f in rec.frames:
            assert f.at == at and type(f.size) is int and f.size > 0 and f.codec in ("none", "zstd")
            assert f.plane in cf.PLANES and type(f.raw) is int and type(f.raw_at) is int
            at += f.size
    assert at == size


@FUZZ
@given(which=st.integers(0, 3), data=st.data())
def test_forged_headers_with_valid_checksums(fuzz_dir: Path, valid_files, which: int, data) -> None:
    """A header edited (or made up) behind a correct checksum: refused, or every blob decodes."""
    valid = valid_files[which][0]
    body = data.draw(st.one_of(edited_headers(valid), headers()))
    _, payload = attacks.raw_parts(valid)
    path = fuzz_dir / "forged.pcm"
    path.write_bytes(attacks.forge(body, payload))
    try:
        f = cf.read(path)
    except cf.CacheFileError:
        return
    check_accepted(f.segments, base=cf._PRELUDE.size + len(body), size=f.size)
    f.close()
    read_outcome(path, None)

"""The cache file format (docs/cache-format.md): pinned bytes, round trips, hostile files, fuzz.

Every hostile file must raise ``cache_file.CacheFileError``: never another exception, never a crash.
Generators of the hostile files are in ``tests/attacks/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from promptcache_cli.store import cache_file as cf
from promptcache_cli.store.files import CacheStore
from promptcache_cli.store.keys import module_key

from .attacks import cache_files as attacks

COMBOS = [("none", False), ("none", True), ("zstd", False), ("zstd", True)]

# -- pinned bytes --------------------------------------------------------------------------------

PIN_MODEL = {"name": "m.gguf", "sha256_ends": "ab" * 16, "size": 1000}
PIN_LAYOUT = {"flash_attn": False, "kv_unified": True, "type_k": "f16", "type_v": "f16"}
PIN_KEY = "1ca296de85714cea0ecdcb509979b32b3e7a155b"  # the example file's header (docs/cache-format.md)
PIN_MODULE_KEY = "bf4076affc4d22fa8e840fec77649a27deba4261"  # the key of the segment below, format pcache-2
PIN_HEADER = {"key": PIN_KEY, "schema": "demo", "module": "intro", "model": PIN_MODEL, "llama_cpp": "0.3.36",
              "state_layout": PIN_LAYOUT, "encoding": "scaffold"}
PIN_BLOB = np.frombuffer(bytes(range(16)) * 4, dtype=np.uint8)
# (codec, split_planes) -> (file size, sha256 of the file, its 24-byte prelude). The zstd files
# depend on the compressor's output (zstandard 0.25, level 3): re-pin if only those two change.
PINNED = {
    ("none", False): (574, "99f18eebaad4de472c5c60e27dff205be343e94f30a625aa9c9ac8f4bd6a9b86",
                      "5043414348450d0a01000000e6010000185c55fd0a8b1499"),
    ("none", True): (667, "1130aaa15959ed3b7be98f38a650809fc6e6cfb232f22919fcc4808e597eab2c",
                     "5043414348450d0a01000000430200000e92b9096f958d48"),
    ("zstd", False): (542, "0cabdebe79ca1f38d155899778af6918b174fab86c6d9208b4ddd1c4a1650588",
                      "5043414348450d0a01000000e60100005d461d042c2672ef"),
    ("zstd", True): (658, "1f0f2c6edc71deb53cefd8021af5612f8fc3a9e694a7c70455e2932b39d8a780",
                     "5043414348450d0a0100000043020000ed7e4e74b4cdb66e"),
}


def pinned_file(codec: str, split: bool) -> bytes:
    chunks = cf.encode(PIN_HEADER, [PIN_BLOB], [(1, 2, 3)], [10], codec=codec, split_planes=split)
    return b"".join(bytes(c) for c in chunks)


def write(tmp_path, data: bytes, name: str = "f.pcm"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def put(path, data: bytes) -> None:
    """Replace ``path`` by a new file, as the cache's writer does (rename, never rewrite in place:
    truncating a file that a reader still maps faults that reader with SIGBUS)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_all(path) -> list[np.ndarray]:
    """Read a file and decode every segment's blob (copies), closing the map."""
    f = cf.read(path)
    try:
        return [np.array(f.blob(i)) for i in range(len(f.segments))]
    finally:
        f.close()


def test_module_key_is_pinned():
    key = module_key(model=PIN_MODEL, llama_cpp="0.3.36", state_layout=PIN_LAYOUT,
                     segments=[(10, (1, 2, 3), ((7, 8),))])
    assert key == PIN_MODULE_KEY
    # the spec's recipe, spelled out
    meta = {"format": "pcache-2", "model": {"sha256_ends": "ab" * 16, "size": 1000}, "llama_cpp": "0.3.36",
            "state_layout": PIN_LAYOUT}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    h.update(struct.pack("<3q", 10, 3, 2) + struct.pack("<3i", 1, 2, 3) + struct.pack("<2i", 7, 8))
    assert h.hexdigest()[:40] == PIN_MODULE_KEY
    assert CacheStore(Path("/c")).module_path(key) == Path("/c/modules/bf") / f"{key}.pcm"


@pytest.mark.parametrize("codec,split", COMBOS)
def test_pinned_bytes(tmp_path, codec, split):
    data = pinned_file(codec, split)
    size, sha, prelude = PINNED[codec, split]
    assert data[:24].hex() == prelude
    magic, version, hlen, hsum = struct.unpack("<8sIIQ", data[:24])
    assert (magic, version) == (b"PCACHE\r\n", 1)
    body = data[24 : 24 + hlen]
    assert body == json.dumps(json.loads(body), separators=(",", ":"), sort_keys=True).encode()
    assert hsum == int(attacks.xxh(body), 16)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
    f = cf.read(write(tmp_path, data))
    try:
        assert np.array_equal(f.blob(0), PIN_BLOB)
        assert f.codec == codec and f.size == size
        assert (f.segments[0].offset, f.segments[0].tokens, f.segments[0].raw_size) == (10, (1, 2, 3), 64)
        assert {k: f.header[k] for k in PIN_HEADER} == PIN_HEADER
    finally:
        f.close()


def test_pinned_planes_layout():
    """The spec's example: with split planes, lo (even bytes) then hi (odd bytes), raw."""
    data = pinned_file("none", True)
    head, payload = attacks.parts(data)
    frames = head["segments"][0]["frames"]
    assert [(x["plane"], x["raw_at"], x["raw"], x["at"], x["codec"]) for x in frames] == [
        ("lo", 0, 32, 0, "none"), ("hi", 0, 32, 32, "none")]
    assert payload == bytes(range(0, 16, 2)) * 4 + bytes(range(1, 16, 2)) * 4


def test_output_does_not_depend_on_header_key_order():
    a = pinned_file("zstd", True)
    reordered = dict(reversed(list(PIN_HEADER.items())))
    b = b"".join(bytes(c) for c in cf.encode(reordered, [PIN_BLOB], [(1, 2, 3)], [10], codec="zstd",
                                             split_planes=True))
    assert a == b


def test_encode_refuses_bad_arguments():
    with pytest.raises(ValueError):
        cf.encode({}, [PIN_BLOB], [(1,)], [0], codec="lz4", split_planes=False)
    with pytest.raises(ValueError):
        cf.encode({}, [PIN_BLOB[:63]], [(1,)], [0], codec="none", split_planes=True)


# -- round trips ---------------------------------------------------------------------------------


def _blobs(rng: np.random.Generator) -> list[np.ndarray]:
    f16 = rng.standard_normal(300).astype(np.float16).view(np.uint8)  # like a KV cache: 600 bytes
    return [f16, rng.integers(0, 256, 1000, dtype=np.uint8), np.zeros(130, np.uint8), np.array([7, 9], np.uint8)]


@pytest.mark.parametrize("frame_bytes", [cf.FRAME_BYTES, 64, 1])
@pytest.mark.parametrize("codec,split", COMBOS)
def test_round_trip(tmp_path, monkeypatch, codec, split, frame_bytes):
    monkeypatch.setattr(cf, "FRAME_BYTES", frame_bytes)  # at write and read time
    blobs = _blobs(np.random.default_rng(1))
    tokens = [(5, 6, 7), (8,), tuple(range(100)), (1, 1)]
    offsets = [0, 3, 4, 104]
    chunks = cf.encode({"key": "k"}, blobs, tokens, offsets, codec=codec, split_planes=split)
    path = write(tmp_path, b"".join(bytes(c) for c in chunks))
    f = cf.verify(path)
    try:
        assert [(s.offset, s.tokens, s.raw_size) for s in f.segments] == [
            (o, t, b.nbytes) for o, t, b in zip(offsets, tokens, blobs, strict=True)]
        for i, blob in enumerate(blobs):
            planes = [blob.nbytes] if not split else [blob.nbytes // 2] * 2
            assert len(f.segments[i].frames) == sum(-(-n // frame_bytes) for n in planes)
            assert all(fr.raw <= frame_bytes for fr in f.segments[i].frames)
            assert np.array_equal(f.blob(i), blob)
        assert f.header["key"] == "k" and f.codec == codec
    finally:
        f.close()


def test_raw_single_plane_is_a_view_of_the_map(tmp_path):
    path = write(tmp_path, pinned_file("none", False))
    f = cf.read(path)
    view = f.blob(0)
    assert not view.flags.owndata and np.shares_memory(view, f._buf)
    f.close()  # the map outlives close while a view is alive
    assert np.array_equal(view, PIN_BLOB)


def test_smaller_frames_read_with_default_frame_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(cf, "FRAME_BYTES", 16)
    data = pinned_file("zstd", True)
    monkeypatch.undo()
    assert np.array_equal(load_all(write(tmp_path, data))[0], PIN_BLOB)


def test_frame_larger_than_frame_bytes_is_refused(tmp_path, monkeypatch):
    path = write(tmp_path, pinned_file("none", False))
    monkeypatch.setattr(cf, "FRAME_BYTES", 32)
    with pytest.raises(cf.CacheFileError):
        cf.read(path)


def test_write_atomic_leaves_only_the_file(tmp_path):
    store = CacheStore(tmp_path)
    path = store.module_path(PIN_KEY)
    chunks = cf.encode(PIN_HEADER, [PIN_BLOB], [(1, 2, 3)], [10], codec="zstd", split_planes=True)
    assert store.write_atomic(path, chunks) == len(pinned_file("zstd", True))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert np.array_equal(load_all(path)[0], PIN_BLOB)


# -- hostile files -------------------------------------------------------------------------------

XFAIL: dict[str, str] = {}  # hostile cases the reader does not refuse yet (none at the moment)


def _params(table: dict) -> list:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=XFAIL[name])) if name in XFAIL else name
            for name in table]


@pytest.mark.parametrize("name", _params(attacks.READ))
def test_hostile_file_refused_by_read(tmp_path, name):
    path = write(tmp_path, attacks.READ[name]())
    with pytest.raises(cf.CacheFileError):
        cf.read(path).close()


# checksum fields that are not 16 hex digits are malformed headers, refused before any frame is read
REFUSED_WITH_HEADER = {"frame_checksum_negative", "frame_checksum_too_long"}


@pytest.mark.parametrize("name", _params(attacks.BLOB_STAGE))
def test_damaged_frame_refused_when_decoded(tmp_path, name):
    path = write(tmp_path, attacks.BLOB_STAGE[name]())
    if name in REFUSED_WITH_HEADER:
        with pytest.raises(cf.CacheFileError, match="checksum"):
            cf.read(path)
        return
    f = cf.read(path)  # the header is intact: damage shows only in frames
    t = time.perf_counter()
    try:
        with pytest.raises(cf.CacheFileError):
            for i in range(len(f.segments)):
                f.blob(i)
    finally:
        f.close()
    assert time.perf_counter() - t < 1.0
    with pytest.raises(cf.CacheFileError):
        cf.verify(path)


@pytest.mark.parametrize("codec,split", COMBOS)
def test_a_started_read_outlives_closing_the_file_and_reports_damage_on_every_call(tmp_path, codec, split):
    """Reads run on the frame pool while the engine goes on (and closes the file): the result is
    the blob, or the damage, however often it is asked for."""
    rng = np.random.default_rng(0)
    blob = rng.normal(0, 1, (5 * cf.FRAME_BYTES // 2) // 2).astype(np.float16).view(np.uint8)  # frames on both cores
    data = b"".join(bytes(c) for c in cf.encode(PIN_HEADER, [blob], [(1,)], [0], codec=codec, split_planes=split))
    f = cf.read(write(tmp_path, data))
    pending = f.start_blob(0)
    f.close()
    assert np.array_equal(pending.result(), blob)
    last = f.segments[0].frames[-1]
    damaged = bytearray(data)
    damaged[last.at + last.size // 2] ^= 0x40
    f = cf.read(write(tmp_path, bytes(damaged), "damaged.pcm"))
    pending = f.start_blob(0)
    f.close()
    for _ in range(2):
        with pytest.raises(cf.CacheFileError):
            pending.result()


def test_zstd_bomb_with_stated_size_allocates_nothing(tmp_path):
    path = write(tmp_path, attacks.BLOB_STAGE["zstd_bomb_declared"]())
    assert path.stat().st_size < 10_000
    f = cf.read(path)
    tracemalloc.start()
    try:
        with pytest.raises(cf.CacheFileError):
            f.blob(0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        f.close()
    assert peak < 1 << 20, f"decoding a 64-byte frame allocated {peak >> 20} MiB"


def test_zstd_bomb_without_stated_size_stops_at_raw(tmp_path):
    path = write(tmp_path, attacks.BLOB_STAGE["zstd_bomb_undeclared"]())
    f = cf.read(path)
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(cf.CacheFileError):
            f.blob(0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        f.close()
    assert time.perf_counter() - t < 0.5 and peak < 1 << 20


@pytest.mark.parametrize("codec,split", COMBOS)
def test_every_truncation_and_extension_is_refused(tmp_path, codec, split):
    """Cut at every length: inside the prelude, the header, the payload, one byte short."""
    data = pinned_file(codec, split)
    path = tmp_path / "f.pcm"
    for n in range(len(data)):
        put(path, data[:n])
        with pytest.raises(cf.CacheFileError):
            cf.read(path)
    for extra in (b"\0", b"x" * 1000, data):
        put(path, data + extra)
        with pytest.raises(cf.CacheFileError):
            cf.read(path)


def test_unreadable_paths(tmp_path):
    for path in (tmp_path / "missing.pcm", tmp_path):
        with pytest.raises(cf.CacheFileError):
            cf.read(path)


def test_every_segment_checked(tmp_path):
    """Damage in the last of several segments is found by verify, and only that blob fails."""
    data = attacks.encoded("none", False, n_segments=3)
    path = write(tmp_path, attacks.flip(data, -1))
    f = cf.read(path)
    try:
        assert np.array_equal(f.blob(0), attacks.BLOB) and np.array_equal(f.blob(1), attacks.BLOB)
        with pytest.raises(cf.CacheFileError):
            f.blob(2)
    finally:
        f.close()
    with pytest.raises(cf.CacheFileError):
        cf.verify(path)


def test_blob_error_returns_after_all_frame_work(tmp_path, monkeypatch):
    monkeypatch.setattr(cf, "FRAME_BYTES", 16)
    data = b"".join(bytes(c) for c in cf.encode({}, [np.arange(256, dtype=np.uint8)], [(1,)], [0], codec="zstd",
                                                split_planes=False))
    path = write(tmp_path, attacks.flip(data, attacks.payload_start(data) + 2))  # frame 0 is damaged
    active = []
    decode = cf._decode_into

    def slow(out, frame, stored):
        active.append(frame)
        try:
            if frame.raw_at:
                time.sleep(0.05)
            decode(out, frame, stored)
        finally:
            active.remove(frame)

    monkeypatch.setattr(cf, "_decode_into", slow)
    f = cf.read(path)
    try:
        with pytest.raises(cf.CacheFileError):
            f.blob(0)
        in_flight = len(active)
    finally:
        time.sleep(0.3)  # let the stragglers finish before the map and the file go
        f.close()
    assert in_flight == 0, f"{in_flight} frames still decoding from the map after blob() raised"


# -- fuzz ----------------------------------------------------------------------------------------


def _fuzz_bases(monkeypatch) -> list[tuple[bytes, list[np.ndarray]]]:
    monkeypatch.setattr(cf, "FRAME_BYTES", 64)  # several frames per plane, at write and read time
    rng = np.random.default_rng(7)
    blobs = [rng.standard_normal(120).astype(np.float16).view(np.uint8), np.tile(np.arange(50, dtype=np.uint8), 3)]
    bases = []
    for codec, split in COMBOS:
        chunks = cf.encode({"key": "k"}, blobs, [(1, 2), (3,)], [0, 2], codec=codec, split_planes=split)
        bases.append((b"".join(bytes(c) for c in chunks), blobs))
    return bases


def _outcome(path, blobs) -> str:
    try:
        got = load_all(path)
    except cf.CacheFileError:
        return "refused"
    assert len(got) == len(blobs) and all(np.array_equal(g, b) for g, b in zip(got, blobs, strict=True))
    return "intact"


def test_fuzz_bytes(tmp_path, monkeypatch):
    """Random flips, cuts, insertions and overwrites: a file is refused or yields the right blobs."""
    bases = _fuzz_bases(monkeypatch)
    rnd = random.Random(20240601)
    path = tmp_path / "fuzz.pcm"
    seen = {"refused": 0, "intact": 0}
    t = time.perf_counter()
    for _ in range(3000):
        data, blobs = rnd.choice(bases)
        buf = bytearray(data)
        kind = rnd.randrange(5)
        if kind == 0:  # flip 1-4 bits anywhere
            for _ in range(rnd.randint(1, 4)):
                buf[rnd.randrange(len(buf))] ^= 1 << rnd.randrange(8)
        elif kind == 1:  # flip a bit in the payload only
            start = attacks.payload_start(data)
            buf[rnd.randrange(start, len(buf))] ^= 1 << rnd.randrange(8)
        elif kind == 2:  # truncate
            del buf[rnd.randrange(len(buf)):]
        elif kind == 3:  # insert or append bytes
            at = rnd.randrange(len(buf) + 1)
            buf[at:at] = rnd.randbytes(rnd.randint(1, 8))
        else:  # overwrite a run of bytes
            at = rnd.randrange(len(buf))
            buf[at : at + 8] = rnd.randbytes(8)
        put(path, bytes(buf))
        seen[_outcome(path, blobs)] += 1
    assert seen["refused"] > 2500  # nearly every mutation is caught; the rest changed nothing
    assert time.perf_counter() - t < 10


_NASTY = [-1, 0, 1, 2, 31, 32, 63, 64, 65, 2**31, 2**62, "1", "", 1.5, None, True, [], {}, "all", "lo", "zstd"]


def test_fuzz_header_fields(tmp_path, monkeypatch):
    """Random header edits behind a correct header checksum: refused, or the blobs are intact.
    (Integers of 2**63 and more are among the hostile files above.)"""
    bases = _fuzz_bases(monkeypatch)
    rnd = random.Random(99)
    path = tmp_path / "fuzz.pcm"
    seen = {"refused": 0, "intact": 0}
    t = time.perf_counter()
    for _ in range(2000):
        data, blobs = rnd.choice(bases)
        head, payload = attacks.parts(data)
        for _ in range(rnd.randint(1, 3)):
            records = [s for s in head["segments"] if isinstance(s, dict)]
            records += [f for s in records if isinstance(s.get("frames"), list) for f in s["frames"]
                        if isinstance(f, dict)]
            target = rnd.choice(records)
            if not target:
                continue
            key = rnd.choice(sorted(target))
            if rnd.random() < 0.15:
                del target[key]
            elif key == "tokens":
                target[key] = rnd.choice([[], [rnd.choice(_NASTY)], "12", None])
            else:
                target[key] = rnd.choice(_NASTY)
        if rnd.random() < 0.2:
            payload = payload[: rnd.randrange(len(payload) + 1)]
        put(path, attacks.forge(head, payload))
        seen[_outcome(path, blobs)] += 1
    assert seen["refused"] > 1500
    assert time.perf_counter() - t < 10


def test_scores_round_trip_and_replace_without_touching_the_payload(tmp_path):
    """Selective-recompute scores ride in the header: `with_ranks` rewrites only the header."""
    blobs = [PIN_BLOB, PIN_BLOB[::-1].copy()]
    plain = b"".join(bytes(c) for c in cf.encode(PIN_HEADER, blobs, [(1, 2, 3), (4, 5)], [10, 20], codec="zstd",
                                                 split_planes=True))
    path = write(tmp_path, plain)
    f = cf.read(path)
    assert [s.rank for s in f.segments] == [None, None]
    ranks = [("independent:00ff", [0.5, 0.0, 12.25]), None]
    ranked = b"".join(bytes(c) for c in cf.with_ranks(f, ranks))
    f.close()
    put(path, ranked)
    f = cf.read(path)
    try:
        assert f.segments[0].rank == ("independent:00ff", (0.5, 0.0, 12.25)) and f.segments[1].rank is None
        assert ranked[f.payload_at :] == plain[len(plain) - (len(ranked) - f.payload_at) :]
        assert [np.array_equal(f.blob(i), b) for i, b in enumerate(blobs)] == [True, True]
        again = b"".join(bytes(c) for c in cf.with_ranks(f, [None, None]))
    finally:
        f.close()
    assert again == plain  # taking the scores out gives the original bytes back
    with pytest.raises(ValueError):
        cf.encode(PIN_HEADER, blobs[:1], [(1, 2, 3)], [10], codec="none", split_planes=False,
                  ranks=[("independent:0", [0.1])])

"""Hostile cache files (docs/cache-format.md), as generators.

``READ`` attacks must be refused by ``cache_file.read`` (prelude, header, tiling); ``BLOB``
attacks pass ``read`` and must be refused when the damaged segment is decoded (``blob``,
``verify``): they only show in frame bytes or checksums. Every generator returns whole file bytes.
Header attacks re-forge the prelude with the header's correct checksum, so they reach the checks
behind it.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Callable

import numpy as np
import xxhash
import zstandard

from promptcache_cli.store import cache_file as cf

from . import zstd_frames

BLOB = np.frombuffer(bytes(range(16)) * 4, dtype=np.uint8)  # 64 bytes that zstd can shrink
TOKENS = (1, 2, 3)
OFFSET = 10
HEADER = {
    "key": "0" * 40,
    "schema": "demo",
    "module": "intro",
    "model": {"name": "m.gguf", "sha256_ends": "ab" * 16, "size": 1000},
    "llama_cpp": "0.3.36",
    "state_layout": {"flash_attn": False, "kv_unified": True, "type_k": "f16", "type_v": "f16"},
    "encoding": "scaffold",
}

READ: dict[str, Callable[[], bytes]] = {}
BLOB_STAGE: dict[str, Callable[[], bytes]] = {}


def attack(table: dict, name: str | None = None):
    def register(fn):
        table[name or fn.__name__] = fn
        return fn

    return register


# -- building blocks -----------------------------------------------------------------------------


def xxh(data: bytes) -> str:
    return f"{xxhash.xxh3_64_intdigest(data):016x}"


def encoded(codec: str = "none", split: bool = False, *, n_segments: int = 1) -> bytes:
    """A valid file made by the reference writer: ``n_segments`` copies of BLOB."""
    chunks = cf.encode(HEADER, [BLOB] * n_segments, [TOKENS] * n_segments,
                       [OFFSET + 100 * i for i in range(n_segments)], codec=codec, split_planes=split)
    return b"".join(bytes(c) for c in chunks)


def payload_start(data: bytes) -> int:
    return cf._PRELUDE.size + cf._PRELUDE.unpack_from(data)[2]


def raw_parts(data: bytes) -> tuple[bytes, bytes]:
    """A valid file's header bytes and payload."""
    end = payload_start(data)
    return data[cf._PRELUDE.size : end], data[end:]


def parts(data: bytes) -> tuple[dict, bytes]:
    """A valid file's header (as a dict) and payload."""
    body, payload = raw_parts(data)
    return json.loads(body), payload


def forge(header: dict | bytes, payload: bytes = b"", *, magic: bytes = cf.MAGIC, version: int = cf.VERSION,
          hlen: int | None = None, hsum: int | None = None) -> bytes:
    """File bytes around ``header``; the prelude is correct unless told otherwise."""
    body = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    hlen = len(body) if hlen is None else hlen
    hsum = xxhash.xxh3_64_intdigest(body) if hsum is None else hsum
    return cf._PRELUDE.pack(magic, version, hlen, hsum) + body + payload


def frame(plane: str, raw_at: int, raw: bytes, at: int, *, stored: bytes | None = None,
          codec: str = "none") -> dict:
    stored = raw if stored is None else stored
    return {"plane": plane, "raw_at": raw_at, "raw": len(raw), "at": at, "size": len(stored), "codec": codec,
            "xxh3": xxh(raw)}


def segment(frames: list[dict], raw_size: int = 64) -> dict:
    return {"offset": OFFSET, "tokens": list(TOKENS), "raw_size": raw_size, "frames": frames}


def two_frames() -> tuple[dict, bytes]:
    """A valid hand-built file: BLOB as two raw 32-byte frames of plane ``all``."""
    raw = BLOB.tobytes()
    frames = [frame("all", 0, raw[:32], 0), frame("all", 32, raw[32:], 32)]
    return dict(HEADER, format=1, codec="none", segments=[segment(frames)]), raw


def edited(codec: str, split: bool, edit: Callable[[dict], object]) -> bytes:
    """A valid file whose header was changed by ``edit`` (in place), re-forged with a correct
    header checksum."""
    head, payload = parts(encoded(codec, split))
    edit(head)
    return forge(head, payload)


def seg0(head: dict) -> dict:
    return head["segments"][0]


def frame0(head: dict) -> dict:
    return head["segments"][0]["frames"][0]


def flip(data: bytes, at: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[at] ^= 1 << bit
    return bytes(out)


# -- prelude -------------------------------------------------------------------------------------

READ["empty"] = lambda: b""
READ["magic_only"] = lambda: cf.MAGIC
READ["prelude_only"] = lambda: encoded()[: cf._PRELUDE.size]
READ["bad_magic"] = lambda: b"PKZIP\r\n\0" + encoded()[8:]
READ["magic_newline_translated"] = lambda: encoded().replace(b"\r\n", b"\n", 1)  # a text-mode copy
READ["version_0"] = lambda: forge(*parts(encoded()), version=0)
READ["version_future"] = lambda: forge(*parts(encoded()), version=2)
READ["version_max"] = lambda: forge(*parts(encoded()), version=0xFFFFFFFF)
READ["header_length_huge"] = lambda: forge(*parts(encoded()), hlen=0xFFFFFFFF)
READ["header_length_over_max"] = lambda: forge(*parts(encoded()), hlen=cf.MAX_HEADER + 1)
READ["header_length_past_end"] = lambda: forge(parts(encoded())[0], hlen=10_000)
READ["header_length_short"] = lambda: forge(*raw_parts(encoded()), hlen=len(raw_parts(encoded())[0]) - 1)
READ["header_length_zero"] = lambda: forge(b"", parts(encoded())[1])
READ["header_checksum_wrong"] = lambda: forge(*parts(encoded()), hsum=xxhash.xxh3_64_intdigest(b"x"))
READ["header_byte_flipped"] = lambda: flip(encoded(), cf._PRELUDE.size + 5)
READ["header_checksum_flipped"] = lambda: flip(encoded(), 16, 7)

# -- header syntax -------------------------------------------------------------------------------

for _name, _body in {
    "header_not_utf8": b"\xff\xfe{}",
    "header_not_json": b"{\"codec\": \"none\", ",
    "header_json_array": b"[]",
    "header_json_string": b"\"none\"",
    "header_json_null": b"null",
    "header_json_number": b"1",
    "header_empty_object": b"{}",
    "header_nul_bytes": b"\0" * 64,
    "header_int_5000_digits": b"{\"codec\":\"none\",\"segments\":[{\"offset\":" + b"9" * 5000 + b"}]}",
    "header_nan": b"{\"codec\":\"none\",\"segments\":[{\"offset\":NaN,\"tokens\":[1],\"raw_size\":64,\"frames\":[]}]}",
}.items():
    READ[_name] = partial(forge, _body)


# -- header fields (each a checksum-correct header with one thing wrong) -------------------------

def _set(where: Callable[[dict], dict], key: str, value) -> Callable[[dict], None]:
    def edit(head: dict) -> None:
        where(head)[key] = value

    return edit


def _drop(where: Callable[[dict], dict], key: str) -> Callable[[dict], None]:
    return lambda head: where(head).pop(key)


_top = lambda head: head  # noqa: E731
for _key in ("codec", "segments"):
    READ[f"missing_{_key}"] = partial(edited, "none", False, _drop(_top, _key))
for _key in ("offset", "tokens", "raw_size", "frames"):
    READ[f"segment_missing_{_key}"] = partial(edited, "none", False, _drop(seg0, _key))
for _key in ("plane", "raw_at", "raw", "at", "size", "codec", "xxh3"):
    READ[f"frame_missing_{_key}"] = partial(edited, "none", False, _drop(frame0, _key))

for _name, (_where, _key, _value) in {
    "codec_unknown": (_top, "codec", "lz4"),
    "codec_null": (_top, "codec", None),
    "codec_uppercase": (_top, "codec", "ZSTD"),
    "segments_null": (_top, "segments", None),
    "segments_object": (_top, "segments", {"0": {}}),
    "segments_string": (_top, "segments", "segments"),
    "segments_of_numbers": (_top, "segments", [1]),
    "tokens_null": (seg0, "tokens", None),
    "tokens_number": (seg0, "tokens", 3),
    "tokens_empty": (seg0, "tokens", []),
    "tokens_nested": (seg0, "tokens", [[1], [2]]),
    "tokens_of_null": (seg0, "tokens", [None]),
    "offset_negative": (seg0, "offset", -1),
    "offset_null": (seg0, "offset", None),
    "offset_list": (seg0, "offset", [10]),
    "raw_size_zero": (seg0, "raw_size", 0),
    "raw_size_negative": (seg0, "raw_size", -64),
    "raw_size_larger": (seg0, "raw_size", 128),
    "raw_size_smaller": (seg0, "raw_size", 32),
    "raw_size_not_a_number": (seg0, "raw_size", "sixty-four"),
    "frames_empty": (seg0, "frames", []),
    "frames_null": (seg0, "frames", None),
    "frames_object": (seg0, "frames", {"plane": "all"}),
    "frame_is_list": (seg0, "frames", [["all", 0, 64]]),
    "frame_raw_at_negative": (frame0, "raw_at", -1),
    "frame_raw_at_shifted": (frame0, "raw_at", 1),
    "frame_raw_zero": (frame0, "raw", 0),
    "frame_raw_negative": (frame0, "raw", -64),
    "frame_raw_huge": (frame0, "raw", 2**64),
    "frame_at_negative": (frame0, "at", -1),
    "frame_at_shifted": (frame0, "at", 1),
    "frame_at_huge": (frame0, "at", 2**64),
    "frame_size_negative": (frame0, "size", -64),
    "frame_size_huge": (frame0, "size", 2**64),
    "frame_size_differs_from_raw": (frame0, "size", 63),
    "frame_xxh3_number": (frame0, "xxh3", 12345),
    "frame_xxh3_not_hex": (frame0, "xxh3", "not-a-checksum!!"),
    "frame_xxh3_null": (frame0, "xxh3", None),
    "frame_plane_unknown": (frame0, "plane", "mid"),
    "frame_plane_uppercase": (frame0, "plane", "ALL"),
    "frame_plane_number": (frame0, "plane", 0),
    "frame_plane_null": (frame0, "plane", None),
    "frame_codec_unknown": (frame0, "codec", "gzip"),
    "frame_codec_null": (frame0, "codec", None),
    # selective-recompute scores (token_rank.py): one finite number >= 0 per token, and a string
    "rank_not_an_object": (seg0, "rank", [0.1, 0.2, 0.3]),
    "rank_scores_short": (seg0, "rank", {"against": "independent:0", "scores": [0.1, 0.2]}),
    "rank_scores_long": (seg0, "rank", {"against": "independent:0", "scores": [0.1] * 4}),
    "rank_scores_negative": (seg0, "rank", {"against": "independent:0", "scores": [0.1, -0.2, 0.3]}),
    "rank_scores_huge": (seg0, "rank", {"against": "independent:0", "scores": [0.1, 1e300, 0.3]}),
    "rank_scores_strings": (seg0, "rank", {"against": "independent:0", "scores": ["0.1", "0.2", "0.3"]}),
    "rank_scores_booleans": (seg0, "rank", {"against": "independent:0", "scores": [True, False, True]}),
    "rank_scores_null": (seg0, "rank", {"against": "independent:0", "scores": None}),
    "rank_scores_missing": (seg0, "rank", {"against": "independent:0"}),
    "rank_against_number": (seg0, "rank", {"against": 7, "scores": [0.1, 0.2, 0.3]}),
    "rank_against_missing": (seg0, "rank", {"scores": [0.1, 0.2, 0.3]}),
}.items():
    READ[_name] = partial(edited, "none", False, _set(_where, _key, _value))



def _score_literal(literal: bytes) -> bytes:
    """A valid file whose segment has scores with a JSON extension Python's parser accepts (NaN, Infinity)."""
    head, payload = parts(encoded())
    seg0(head)["rank"] = {"against": "independent:0", "scores": [0.1, "@", 0.3]}
    return forge(json.dumps(head, separators=(",", ":")).encode().replace(b'"@"', literal), payload)


READ["rank_scores_nan"] = partial(_score_literal, b"NaN")
READ["rank_scores_infinity"] = partial(_score_literal, b"Infinity")


@attack(READ)
def frame_size_zero_zstd() -> bytes:
    head, payload = parts(encoded("zstd"))
    frame0(head)["size"] = 0
    return forge(head, b"")


# -- tiling: frames against the payload and against their plane --------------------------------


@attack(READ)
def frames_overlap_in_payload() -> bytes:
    head, raw = two_frames()
    seg0(head)["frames"][1]["at"] = 16
    return forge(head, raw[:48])


@attack(READ)
def frames_gap_in_payload() -> bytes:
    head, raw = two_frames()
    seg0(head)["frames"][1]["at"] = 40
    return forge(head, raw[:32] + b"\0" * 8 + raw[32:])


@attack(READ)
def frames_swapped_in_payload() -> bytes:
    head, raw = two_frames()
    a, b = seg0(head)["frames"]
    a["at"], b["at"] = 32, 0
    return forge(head, raw[32:] + raw[:32])


@attack(READ)
def frames_overlap_in_plane() -> bytes:
    head, raw = two_frames()
    b = seg0(head)["frames"][1]
    b.update(frame("all", 16, raw[16:48], 32))
    seg0(head)["raw_size"] = 64
    return forge(head, raw[:32] + raw[16:48])


@attack(READ)
def frames_gap_in_plane() -> bytes:
    head, raw = two_frames()
    seg0(head)["frames"][1].update(frame("all", 40, raw[40:], 32))
    return forge(head, raw[:32] + raw[40:])


@attack(READ)
def frames_out_of_order_in_plane() -> bytes:
    head, raw = two_frames()
    seg0(head)["frames"] = [frame("all", 32, raw[32:], 0), frame("all", 0, raw[:32], 32)]
    return forge(head, raw[32:] + raw[:32])


@attack(READ)
def frame_missing() -> bytes:
    head, raw = two_frames()
    seg0(head)["frames"].pop()
    return forge(head, raw[:32])


@attack(READ)
def frame_short() -> bytes:
    head, raw = two_frames()
    seg0(head)["frames"][1] = frame("all", 32, raw[32:48], 32)
    return forge(head, raw[:48])


@attack(READ)
def frame_duplicated() -> bytes:
    head, raw = two_frames()
    frames = seg0(head)["frames"]
    frames.append(dict(frames[1], at=64))
    return forge(head, raw + raw[32:])


@attack(READ)
def payload_padded() -> bytes:
    return encoded() + b"\0"


@attack(READ)
def payload_truncated() -> bytes:
    return encoded()[:-1]


@attack(READ)
def segments_swapped() -> bytes:
    head, payload = parts(encoded(n_segments=2))
    head["segments"].reverse()
    return forge(head, payload)


# -- planes --------------------------------------------------------------------------------------


def _split_edit(edit: Callable[[list], None]) -> bytes:
    head, payload = parts(encoded("none", True))
    edit(seg0(head)["frames"])
    return forge(head, payload)


READ["planes_all_and_lo"] = lambda: _split_edit(lambda fs: fs[1].update(plane="all"))
READ["planes_all_and_hi"] = lambda: _split_edit(lambda fs: fs[0].update(plane="all"))
READ["planes_lo_twice"] = lambda: _split_edit(lambda fs: fs[1].update(plane="lo", raw_at=32))
READ["planes_hi_only"] = lambda: _split_edit(lambda fs: fs.pop(0))


@attack(READ)
def planes_lo_only() -> bytes:
    head, payload = parts(encoded("none", True))
    seg0(head)["frames"].pop()
    return forge(head, payload[:32])


@attack(READ)
def planes_of_odd_raw_size() -> bytes:
    """63 bytes as a 32-byte low plane and a 31-byte high plane: consistent, but a blob of
    16-bit values cannot have an odd size."""
    raw = BLOB.tobytes()[:63]
    lo, hi = raw[0::2], raw[1::2]
    frames = [frame("lo", 0, lo, 0), frame("hi", 0, hi, len(lo))]
    return forge(dict(HEADER, format=1, codec="none", segments=[segment(frames, 63)]), lo + hi)


# -- frame bytes: caught when a blob is decoded --------------------------------------------------

BLOB_STAGE["bit_flip_raw_all"] = lambda: flip(encoded("none"), -20, 3)  # the zero-copy path
BLOB_STAGE["bit_flip_raw_lo"] = lambda: flip(encoded("none", True), -40, 0)
BLOB_STAGE["bit_flip_raw_hi"] = lambda: flip(encoded("none", True), -1, 7)
BLOB_STAGE["bit_flip_zstd_all"] = lambda: flip(encoded("zstd"), -3, 1)
BLOB_STAGE["bit_flip_zstd_all_first_byte"] = lambda: flip(encoded("zstd"), payload_start(encoded("zstd")), 0)
BLOB_STAGE["bit_flip_raw_lo_of_zstd_file"] = lambda: flip(encoded("zstd", True), payload_start(encoded("zstd", True)), 2)
BLOB_STAGE["bit_flip_zstd_hi"] = lambda: flip(encoded("zstd", True), -2, 4)
BLOB_STAGE["frame_checksum_wrong"] = lambda: edited("none", False, _set(frame0, "xxh3", "0" * 16))
BLOB_STAGE["frame_checksum_wrong_zstd"] = lambda: edited("zstd", False, _set(frame0, "xxh3", "f" * 16))
BLOB_STAGE["frame_checksum_negative"] = lambda: edited("none", False, _set(frame0, "xxh3", "-1"))
BLOB_STAGE["frame_checksum_too_long"] = lambda: edited("none", False, _set(frame0, "xxh3", "1" * 40))


@attack(BLOB_STAGE)
def frame_checksum_of_stored_bytes() -> bytes:
    """A writer bug: the checksum of the compressed bytes rather than the raw ones."""
    head, payload = parts(encoded("zstd"))
    frame0(head)["xxh3"] = xxh(payload)
    return forge(head, payload)


def _zstd_file(stored: bytes, raw: int = 64, xxh3: str | None = None) -> bytes:
    f = {"plane": "all", "raw_at": 0, "raw": raw, "at": 0, "size": len(stored), "codec": "zstd",
         "xxh3": xxh3 or xxh(BLOB.tobytes())}
    return forge(dict(HEADER, format=1, codec="zstd", segments=[segment([f], raw)]), stored)


_cctx = zstandard.ZstdCompressor(level=3)
BLOB_STAGE["zstd_decompresses_shorter"] = lambda: _zstd_file(_cctx.compress(BLOB.tobytes()[:32]))
BLOB_STAGE["zstd_decompresses_longer"] = lambda: _zstd_file(_cctx.compress(BLOB.tobytes() + b"\0" * 16))
BLOB_STAGE["zstd_decompresses_to_nothing"] = lambda: _zstd_file(_cctx.compress(b""))
BLOB_STAGE["zstd_not_zstd"] = lambda: _zstd_file(BLOB.tobytes())
BLOB_STAGE["zstd_truncated_frame"] = lambda: _zstd_file(_cctx.compress(bytes(range(256)) * 4)[:-3], raw=1024)
BLOB_STAGE["zstd_size_lies_short"] = lambda: _zstd_file(zstd_frames.raw_frame(BLOB.tobytes(), claimed_size=32))
BLOB_STAGE["zstd_size_lies_long"] = lambda: _zstd_file(zstd_frames.raw_frame(BLOB.tobytes(), claimed_size=65))
# a bomb: about 8 KiB of RLE blocks that expand to 1 GiB, its size not stated in the frame
BLOB_STAGE["zstd_bomb_undeclared"] = lambda: _zstd_file(zstd_frames.rle_bomb(1 << 30, declare=False))
# the same bomb stating its 64 MiB size in the frame header, as a compressor does
BLOB_STAGE["zstd_bomb_declared"] = lambda: _zstd_file(zstd_frames.rle_bomb(64 << 20, declare=True))
# a frame header claiming 2**62 bytes of content (no such allocation can succeed)
BLOB_STAGE["zstd_claims_exabytes"] = lambda: _zstd_file(zstd_frames.raw_frame(BLOB.tobytes(), claimed_size=1 << 62))
# a correct frame followed by bytes that are not part of it
BLOB_STAGE["zstd_trailing_bytes"] = lambda: _zstd_file(_cctx.compress(BLOB.tobytes()) + b"junk")


# -- reader leniency: values of the wrong JSON type or range that a strict reader refuses --------

READ["ints_as_strings"] = lambda: edited("none", False, lambda h: (seg0(h).update(offset="10", tokens=["1", "2", "3"]),
                                                                   frame0(h).update(raw="64", size="64")))
READ["ints_as_floats"] = lambda: edited("none", False, lambda h: seg0(h).update(offset=10.5, tokens=[1.9, 2, 3]))
READ["ints_as_booleans"] = lambda: edited("none", False, lambda h: seg0(h).update(tokens=[True, 2, 3]))
READ["tokens_as_string"] = lambda: edited("none", False, _set(seg0, "tokens", "123"))
READ["token_negative"] = lambda: edited("none", False, _set(seg0, "tokens", [-1, 2, 3]))
READ["token_huge"] = lambda: edited("none", False, _set(seg0, "tokens", [2**40, 2, 3]))
READ["offset_huge"] = lambda: edited("none", False, _set(seg0, "offset", 2**64))
READ["raw_size_huge"] = lambda: edited("none", False, _set(seg0, "raw_size", 2**64))
READ["header_infinity"] = lambda: forge(json.dumps(dict(HEADER, codec="none", segments=[segment([], 64)]))
                                        .replace('"offset": 10', '"offset": Infinity').encode())
READ["header_number_1e400"] = lambda: forge(json.dumps(dict(HEADER, codec="none", segments=[segment([], 64)]))
                                            .replace('"raw_size": 64', '"raw_size": 1e400').encode())
READ["header_deeply_nested"] = lambda: forge(b'{"codec":"none","segments":' + b"[" * 100_000 + b"]" * 100_000 + b"}")

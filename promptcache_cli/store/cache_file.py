"""The on-disk format of one cached module: its segments' tokens, positions and state blobs.
Specified in docs/cache-format.md; this module is the reference reader and writer.

::

    0    8 bytes  magic b"PCACHE\\r\\n"
    8    u32      format version (1)
    12   u32      header length H (<= 16 MiB)
    16   u64      xxh3_64 of the header bytes
    24   H bytes  header: UTF-8 JSON
    24+H          payload: the frames listed in the header, in order, tiling it exactly

A segment's state blob (llama.cpp's bytes) is stored as one or more *planes*: ``all`` (the blob
as is) or, for f16 KV caches, ``lo`` and ``hi`` (the even and odd bytes: the low and high byte
of every 16-bit value). Each plane is cut into frames of at most ``FRAME_BYTES`` raw bytes; a
frame is stored raw (``none``) or zstd-compressed (``zstd``), and carries the xxh3_64 of its raw
bytes. The default codec keeps the ``lo`` plane raw (it does not compress) and compresses the
``hi`` plane (sign, exponent, top mantissa bits: about 1.4x). Frames decode independently, on all
cores, straight into the buffer handed to llama.cpp; a single raw ``all`` plane is handed over as a
view of the memory-mapped file, without a copy. A segment may carry selective-recompute scores
(``rank``, modular/refresh.py) in the header; adding them rewrites only the header.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait as wait_all
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from ..errors import CacheFileError, CacheFileMissing, CacheLinkError

MAGIC = b"PCACHE\r\n"
VERSION = 1
MAX_HEADER = 16 << 20
FRAME_BYTES = 4 << 20
CODECS = ("none", "zstd")  # what `--compression` offers
PLANES = {"all": (0, 1), "lo": (0, 2), "hi": (1, 2)}  # plane -> (first byte, stride) in the blob
_PRELUDE = struct.Struct("<8sIIQ")


@dataclass(frozen=True)
class Frame:
    plane: str
    raw_at: int  # offset of its raw bytes within the plane
    raw: int  # raw size
    at: int  # absolute file offset of the stored bytes
    size: int  # stored size
    codec: str
    xxh3: int


@dataclass(frozen=True)
class SegmentRecord:
    offset: int
    tokens: tuple[int, ...]
    raw_size: int
    frames: tuple[Frame, ...]
    rank: tuple[str, tuple[float, ...]] | None = None  # (against, one score per token): modular/refresh.py

    @property
    def stored_size(self) -> int:
        return sum(f.size for f in self.frames)

    @property
    def mapped(self) -> bool:
        """Stored as one raw plane: read as a view of the memory-mapped file, without a copy."""
        return bool(self.frames) and all(f.plane == "all" and f.codec == "none" for f in self.frames)


def _checksum(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


# -- writing -------------------------------------------------------------------------------------


def encode(header: dict[str, Any], blobs: list[np.ndarray], tokens: list[tuple[int, ...]],
           offsets: list[int], *, codec: str, split_planes: bool, level: int = 3,
           ranks: list[tuple[str, list[float]] | None] | None = None) -> list[bytes | memoryview]:
    """The file's bytes as a list of chunks. ``split_planes`` (f16 KV) stores the low and high
    bytes as separate planes; with codec ``zstd`` the high plane is compressed. ``ranks``: per
    segment, its selective-recompute scores (modular/refresh.py) or None."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level)
    records, payload, pos = [], [], 0
    for blob, toks, off in zip(blobs, tokens, offsets, strict=True):
        blob = np.ascontiguousarray(blob, dtype=np.uint8)
        if split_planes and blob.nbytes % 2:
            raise ValueError("a 16-bit state blob has an odd length")
        # (plane, compress it?): the low bytes of f16 values are noise to zstd, stored raw
        planes = [("lo", False), ("hi", codec == "zstd")] if split_planes else [("all", codec == "zstd")]
        frames = []
        for plane, compress in planes:
            first, stride = PLANES[plane]
            data = memoryview(np.ascontiguousarray(blob[first::stride])).cast("B")
            for raw_at in range(0, len(data), FRAME_BYTES):
                chunk = data[raw_at : raw_at + FRAME_BYTES]
                stored = cctx.compress(chunk) if compress else chunk
                frames.append({"plane": plane, "raw_at": raw_at, "raw": len(chunk), "at": pos,
                               "size": len(stored), "codec": "zstd" if compress else "none",
                               "xxh3": f"{_checksum(chunk):016x}"})
                payload.append(stored)
                pos += len(stored)
        records.append({"offset": off, "tokens": list(toks), "raw_size": int(blob.nbytes), "frames": frames})
    _set_ranks(records, ranks)
    return _file(dict(header, format=VERSION, codec=codec, segments=records), payload)


def with_ranks(f: CacheFile, ranks: list[tuple[str, list[float]] | None]) -> list[bytes | memoryview]:
    """An open file's bytes again, with its segments' scores replaced by ``ranks``: a new header
    before the very same payload (frame offsets count from the payload's start)."""
    records = [dict(r) for r in f.header["segments"]]
    _set_ranks(records, ranks)
    return _file(dict(f.header, segments=records), [memoryview(f._buf[f.payload_at :])])


def _set_ranks(records: list[dict], ranks: list[tuple[str, list[float]] | None] | None) -> None:
    for rec, rank in zip(records, ranks or [None] * len(records), strict=True):
        rec.pop("rank", None)
        if rank is not None:
            if len(rank[1]) != len(rec["tokens"]):
                raise ValueError("a segment's scores do not match its tokens")
            rec["rank"] = {"against": rank[0], "scores": list(rank[1])}


def _file(head: dict, payload: list) -> list[bytes | memoryview]:
    body = json.dumps(head, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    return [_PRELUDE.pack(MAGIC, VERSION, len(body), _checksum(body)), body, *payload]


# -- reading -------------------------------------------------------------------------------------


@dataclass
class CacheFile:
    header: dict[str, Any]
    segments: list[SegmentRecord]
    size: int
    payload_at: int  # file offset of the payload (the first frame)
    _map: mmap.mmap | None
    _buf: np.ndarray

    @property
    def codec(self) -> str:
        return self.header["codec"]

    def blob(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Segment ``i``'s state blob, every frame's checksum verified: :meth:`start_blob`, waited for."""
        return self.start_blob(i, out).result()

    def start_blob(self, i: int, out: np.ndarray | None = None) -> Pending:
        """Start reading segment ``i``'s state blob on all cores; :meth:`Pending.result` waits for
        it. A single raw plane is a zero-copy view of the memory-mapped file (its checksums are
        what is waited for); otherwise frames decode in parallel into ``out`` (uint8, exactly the
        blob's size) or a new buffer (a ``lo`` and a ``hi`` frame over the same bytes are decoded
        and interleaved together, in one pass over cache-warm memory). Closing the file meanwhile
        is safe: the map lives on while a read holds a view of it."""
        rec, buf = self.segments[i], self._buf
        if rec.mapped:
            start = rec.frames[0].at
            view = buf[start : start + rec.raw_size]
            return Pending(view, _start(lambda f: _verify(f, buf[f.at : f.at + f.size]), rec.frames))
        if out is None:
            out = np.empty(rec.raw_size, dtype=np.uint8)
        elif out.dtype != np.uint8 or out.shape != (rec.raw_size,):
            raise ValueError(f"a {rec.raw_size}-byte blob cannot decode into {out.dtype} {out.shape}")
        pairs = _plane_pairs(rec.frames) if sys.byteorder == "little" else None
        if pairs is not None:
            words = out.view(np.uint16)
            return Pending(out, _start(lambda pair: _decode_pair_into(words, *pair, buf), pairs))
        return Pending(out, _start(lambda f: _decode_into(out, f, buf[f.at : f.at + f.size]), rec.frames))

    def close(self) -> None:
        self._buf = np.empty(0, np.uint8)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a blob view is still alive; the map closes with it
                pass
            self._map = None


def read(path: str | os.PathLike, *, opener=None) -> CacheFile:
    """Open a cache file: the prelude and header are read and checked (header checksum, frames
    tiling planes and payload exactly) before the payload is memory-mapped. Frame checksums are
    checked when a blob is read. ``opener``: as ``open``'s (the cache's boundary passes one that
    never follows a link). A file that is not there (or is a link, or under one) raises
    CacheFileMissing."""
    try:
        with open(path, "rb", opener=opener) as f:
            size = os.fstat(f.fileno()).st_size
            prelude = f.read(_PRELUDE.size)
            if len(prelude) < _PRELUDE.size:
                raise CacheFileError(f"truncated cache file ({size} bytes)")
            magic, version, hlen, hsum = _PRELUDE.unpack(prelude)
            if magic != MAGIC:
                raise CacheFileError("not a promptcache file (bad magic)")
            if version != VERSION:
                raise CacheFileError(f"cache file format {version}, this pc reads {VERSION}")
            if hlen > MAX_HEADER or _PRELUDE.size + hlen > size:
                raise CacheFileError(f"cache header length {hlen} does not fit the file")
            body = f.read(hlen)
            if _checksum(body) != hsum:
                raise CacheFileError("cache header checksum mismatch")
            header, segments = parse_header(body, base=_PRELUDE.size + hlen, size=size)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise CacheFileMissing(f"cannot read cache file: {e.strerror}") from None
    except CacheLinkError as e:
        raise CacheFileMissing(str(e)) from None
    except OSError as e:
        raise CacheFileError(f"cannot read cache file: {e.strerror}") from None
    return CacheFile(header, segments, size, _PRELUDE.size + hlen, mm, np.frombuffer(mm, dtype=np.uint8))


_MAX_INT = 1 << 48  # no size, offset or position in a cache file comes near this
_MAX_TOKEN = 1 << 31


def _int(value: Any, *, limit: int = _MAX_INT) -> int:
    """A JSON integer in [0, limit): no strings, floats or booleans."""
    if type(value) is not int or not 0 <= value < limit:
        raise CacheFileError(f"malformed cache header: {value!r:.40} is not an integer in range")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise CacheFileError(f"malformed cache header: {value!r:.40} is not a string")
    return value


def _hex64(value: Any) -> int:
    if type(value) is not str or len(value) != 16 or any(c not in "0123456789abcdef" for c in value):
        raise CacheFileError("malformed cache header: a checksum is not 16 hex digits")
    return int(value, 16)


def parse_header(body: bytes, *, base: int, size: int) -> tuple[dict, list[SegmentRecord]]:
    """Decode and validate a header; frame offsets come back absolute."""
    try:
        header = json.loads(body)
        if not isinstance(header, dict) or header.get("codec") not in CODECS:
            raise CacheFileError("malformed cache header: no known codec")
        if type(header.get("segments")) is not list:
            raise CacheFileError("malformed cache header: no segment list")
        segments = [
            SegmentRecord(
                _int(s["offset"]), tuple(_int(t, limit=_MAX_TOKEN) for t in _list(s["tokens"])), _int(s["raw_size"]),
                tuple(Frame(_str(f["plane"]), _int(f["raw_at"]), _int(f["raw"]), base + _int(f["at"]),
                            _int(f["size"]), _str(f["codec"]), _hex64(f["xxh3"])) for f in _list(s["frames"])),
                _rank(s.get("rank"), len(s["tokens"])),
            )
            for s in header["segments"]
        ]
    except CacheFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        raise CacheFileError(f"malformed cache header: {type(e).__name__} {e}"[:200]) from None
    at = base
    for rec in segments:
        if rec.raw_size == 0 or not rec.tokens:
            raise CacheFileError("cache segment with no state or no tokens")
        planes = {f.plane for f in rec.frames}
        if planes not in ({"all"}, {"lo", "hi"}):
            raise CacheFileError(f"cache segment has planes {sorted(planes)}")
        if planes == {"lo", "hi"} and rec.raw_size % 2:
            raise CacheFileError("byte planes of an odd-sized state")
        for plane in planes:
            first, stride = PLANES[plane]
            expect, length = 0, len(range(first, rec.raw_size, stride))
            for f in (f for f in rec.frames if f.plane == plane):
                if f.codec not in ("none", "zstd"):
                    raise CacheFileError(f"unknown frame codec {f.codec!r:.20}")
                if f.raw_at != expect or not 0 < f.raw <= FRAME_BYTES:
                    raise CacheFileError("frames do not tile their plane")
                if f.codec == "none" and f.size != f.raw:
                    raise CacheFileError("a raw frame's stored size differs from its size")
                expect += f.raw
            if expect != length:
                raise CacheFileError("frames do not cover their plane")
        for f in rec.frames:
            if f.at != at or f.size <= 0:
                raise CacheFileError("frames do not tile the cache file")
            at += f.size
    if at != size:
        raise CacheFileError(f"cache file is {size} bytes, its frames end at {at} (truncated or padded)")
    return header, segments


def verify(path: str | os.PathLike, *, opener=None) -> CacheFile:
    """Read every frame of every segment (all checksums); raises CacheFileError on damage."""
    f = read(path, opener=opener)
    try:
        for i in range(len(f.segments)):
            f.blob(i)
    except BaseException:
        f.close()
        raise
    return f


_MAX_SCORE = 1e6  # a score sums relative distances over layers: far below this


def _rank(value: Any, n_tokens: int) -> tuple[str, tuple[float, ...]] | None:
    """A segment's optional scores: what they were measured against, one finite score >= 0 per token."""
    if value is None:
        return None
    if type(value) is not dict:
        raise CacheFileError("malformed cache header: a segment's rank is not an object")
    scores = _list(value["scores"])
    if len(scores) != n_tokens or not all(type(x) in (int, float) and 0 <= x < _MAX_SCORE for x in scores):
        raise CacheFileError("malformed cache header: a segment's scores do not give one number per token")
    return _str(value["against"]), tuple(float(x) for x in scores)


def _list(value: Any) -> list:
    if type(value) is not list:
        raise CacheFileError("malformed cache header: expected a list")
    return value


# -- frame decoding ----------------------------------------------------------------------------

_pool: ThreadPoolExecutor | None = None


class Pending:
    """A blob whose frames are being read on the frame pool."""

    def __init__(self, blob: np.ndarray, futures: list[Future]) -> None:
        self._blob, self._futures = blob, futures

    def wait(self) -> None:
        """Return once no thread works on this blob any more (its errors are kept for :meth:`result`)."""
        wait_all(self._futures)

    def result(self) -> np.ndarray:
        """The blob, once every frame's work has finished; raises the first frame's error (again on
        every call). When this returns or raises, no thread still reads the file for it."""
        self.wait()
        for fut in self._futures:
            if fut.exception() is not None:
                raise fut.exception()
        return self._blob


def _start(fn, items) -> list[Future]:
    """Run ``fn`` on every item on all cores (here and now when there is one item or one core)."""
    global _pool
    if len(items) <= 1 or (os.cpu_count() or 1) == 1:
        done = []
        for item in items:
            fut: Future = Future()
            try:
                fut.set_result(fn(item))
            except Exception as e:
                fut.set_exception(e)
            done.append(fut)
        return done
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count(), thread_name_prefix="pc-frames")
    return [_pool.submit(fn, item) for item in items]


def _verify(frame: Frame, raw) -> None:
    if _checksum(raw) != frame.xxh3:
        raise CacheFileError(f"checksum mismatch in a {frame.plane} frame at byte {frame.at}")


_scratch = threading.local()  # per decoding thread: a reused buffer for decompressed frames


def _raw_frame(frame: Frame, stored: np.ndarray, slot: int) -> np.ndarray:
    """A frame's raw bytes, checksum verified: the stored bytes themselves, or the frame
    decompressed into this thread's reused scratch buffer ``slot`` (valid until its next use)."""
    if frame.codec != "zstd":
        _verify(frame, stored)
        return stored
    import zstandard

    bufs = _scratch.__dict__.setdefault("bufs", {})
    buf = bufs.get(slot)
    if buf is None or len(buf) < frame.raw:
        buf = bufs[slot] = np.empty(max(frame.raw, FRAME_BYTES), dtype=np.uint8)
    raw = buf[: frame.raw]
    try:
        declared = zstandard.frame_content_size(stored)  # checked first: never trust a size field
        if declared not in (-1, frame.raw):
            raise CacheFileError(f"compressed frame at byte {frame.at} declares {declared} bytes, not {frame.raw}")
        reader = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=True)
        got = 0
        while got < frame.raw:
            n = reader.readinto(raw[got:])
            if not n:
                break
            got += n
        if got != frame.raw or reader.read(1):  # too short, or more data than declared
            raise CacheFileError(f"compressed frame at byte {frame.at} has the wrong size")
    except (zstandard.ZstdError, MemoryError) as e:
        raise CacheFileError(f"corrupt compressed frame at byte {frame.at}: {e}") from None
    _verify(frame, raw)
    return raw


def _decode_into(out: np.ndarray, frame: Frame, stored: np.ndarray) -> None:
    raw = _raw_frame(frame, stored, 0)
    first, stride = PLANES[frame.plane]
    start = first + frame.raw_at * stride
    out[start : start + frame.raw * stride : stride] = raw


def _plane_pairs(frames: tuple[Frame, ...]) -> list[tuple[Frame, Frame]] | None:
    """(lo, hi) frames covering the same bytes of their planes, when every frame has its partner
    (the writer cuts both planes alike); None otherwise."""
    lo = {(f.raw_at, f.raw): f for f in frames if f.plane == "lo"}
    hi = {(f.raw_at, f.raw): f for f in frames if f.plane == "hi"}
    if not lo or lo.keys() != hi.keys() or len(lo) + len(hi) != len(frames):
        return None
    return [(lo[k], hi[k]) for k in sorted(lo)]


def _decode_pair_into(words: np.ndarray, lo: Frame, hi: Frame, buf: np.ndarray) -> None:
    """Interleave a lo and a hi frame into 16-bit little-endian words: word = lo | hi << 8."""
    lo_raw = _raw_frame(lo, buf[lo.at : lo.at + lo.size], 0)
    hi_raw = _raw_frame(hi, buf[hi.at : hi.at + hi.size], 1)
    dst = words[lo.raw_at : lo.raw_at + lo.raw]
    np.left_shift(hi_raw, 8, out=dst, dtype=np.uint16, casting="unsafe")
    np.bitwise_or(dst, lo_raw, out=dst, casting="unsafe")


def mismatch(cf: CacheFile, key: str, position: int | None, *, clip: int | None = None) -> str | None:
    """How a whole, intact file contradicts its name (its key, and for a prefix state the
    position it is filed under), if it does; header values quoted up to ``clip`` characters."""
    def quoted(value: object) -> str:
        return str(value)[:clip] if clip is not None else str(value)

    if cf.header.get("key") != key:
        return f"its header names another key ({quoted(cf.header.get('key'))})"
    if position is not None:
        held = sum(len(s.tokens) for s in cf.segments)
        if held != position or cf.header.get("mode") != "prefix":
            return f"its header describes another state ({quoted(cf.header.get('module'))}, {held} tokens)"
    return None

"""The on-disk format of one cached module: its segments' tokens, positions and state blobs.

::

    0   8 bytes  magic b"PCACHE\\r\\n"
    8   u32      format version (1)
    12  u32      header length H (<= 16 MiB)
    16  H bytes  header: UTF-8 JSON (see ``write``)
    16+H frames  payload; every frame's [offset, offset+size) is listed in the header, counted
                 from the payload's start; frames tile the rest of the file exactly, in order.

Each segment's state blob is split into frames of at most ``FRAME_BYTES`` raw bytes; a frame is
stored raw (codec ``none``, memory-mapped and handed over without a copy) or as one zstd frame
with its content checksum (codec ``zstd``), decompressed on all cores into one buffer.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"PCACHE\r\n"
VERSION = 1
MAX_HEADER = 16 << 20
FRAME_BYTES = 4 << 20
CODECS = ("zstd", "none")
_PRELUDE = struct.Struct("<8sII")


class CacheFileError(Exception):
    """The file is not a complete, intact cache file of this format."""


@dataclass(frozen=True)
class SegmentRecord:
    offset: int
    tokens: tuple[int, ...]
    raw_size: int
    frames: tuple[tuple[int, int, int], ...]  # (file offset, stored size, raw size)


@dataclass
class CacheFile:
    header: dict[str, Any]
    segments: list[SegmentRecord]
    _map: mmap.mmap | None
    _buf: np.ndarray

    @property
    def codec(self) -> str:
        return self.header["codec"]

    def blob(self, i: int, *, threads: int = 0) -> np.ndarray:
        """The state blob of segment ``i`` (a zero-copy view for codec ``none``)."""
        rec = self.segments[i]
        if self.codec == "none":
            start = rec.frames[0][0]
            return self._buf[start : start + rec.raw_size]
        return _decompress(self._buf, rec, threads=threads)

    def close(self) -> None:
        self._buf = np.empty(0, np.uint8)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive; the map closes with it
                pass
            self._map = None


def encode(header: dict[str, Any], blobs: list[np.ndarray], tokens: list[tuple[int, ...]],
           offsets: list[int], *, codec: str, level: int = 3) -> list[bytes | memoryview]:
    """The file's bytes as a list of chunks (header first). ``header`` gets ``codec`` and
    ``segments`` filled in."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    frames_per_seg: list[list[bytes | memoryview]] = []
    for blob in blobs:
        mv = memoryview(np.ascontiguousarray(blob, dtype=np.uint8)).cast("B")
        chunks = [mv[i : i + FRAME_BYTES] for i in range(0, len(mv), FRAME_BYTES)]
        if codec == "zstd":
            import zstandard

            cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
            chunks = [cctx.compress(c) for c in chunks]
        frames_per_seg.append(chunks)
    records = []
    pos = 0  # frame offsets count from the start of the payload, right after the header
    for blob, chunks, toks, off in zip(blobs, frames_per_seg, tokens, offsets, strict=True):
        frames, raw_left = [], int(blob.nbytes)
        for c in chunks:
            raw = min(FRAME_BYTES, raw_left)
            frames.append([pos, len(c), raw])
            pos += len(c)
            raw_left -= raw
        records.append({"offset": off, "tokens": list(toks), "raw_size": int(blob.nbytes), "frames": frames})
    head = dict(header, codec=codec, segments=records)
    body = json.dumps(head, separators=(",", ":"), sort_keys=True).encode()
    out: list[bytes | memoryview] = [_PRELUDE.pack(MAGIC, VERSION, len(body)), body]
    for chunks in frames_per_seg:
        out.extend(chunks)
    return out


def read(path: str | os.PathLike) -> CacheFile:
    """Open and validate a cache file's structure (frames are checked when decoded). The header
    is read and checked before anything is memory-mapped."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prelude = f.read(_PRELUDE.size)
            if len(prelude) < _PRELUDE.size:
                raise CacheFileError(f"truncated cache file ({size} bytes)")
            magic, version, hlen = _PRELUDE.unpack(prelude)
            if magic != MAGIC:
                raise CacheFileError("not a promptcache file (bad magic)")
            if version != VERSION:
                raise CacheFileError(f"cache file format {version}, this pc reads {VERSION}")
            if hlen > MAX_HEADER or _PRELUDE.size + hlen > size:
                raise CacheFileError(f"cache header length {hlen} does not fit the file")
            header, segments = _parse(f.read(hlen), _PRELUDE.size + hlen, size)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise CacheFileError(f"cannot read cache file: {e.strerror}") from None
    return CacheFile(header, segments, mm, np.frombuffer(mm, dtype=np.uint8))


def _parse(raw_header: bytes, base: int, size: int) -> tuple[dict, list[SegmentRecord]]:
    try:
        header = json.loads(raw_header)
        if header.get("codec") not in CODECS:
            raise CacheFileError(f"unknown codec {header.get('codec')!r}")
        segments = [
            SegmentRecord(int(s["offset"]), tuple(int(t) for t in s["tokens"]), int(s["raw_size"]),
                          tuple((int(a), int(b), int(c)) for a, b, c in s["frames"]))
            for s in header["segments"]
        ]
    except CacheFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CacheFileError(f"malformed cache header: {e}") from None
    pos = 0
    for rec in segments:
        if not rec.frames or sum(r for _, _, r in rec.frames) != rec.raw_size:
            raise CacheFileError("frame sizes do not add up to the segment size")
        for start, stored, raw in rec.frames:
            if start != pos or stored <= 0 or raw <= 0 or raw > FRAME_BYTES:
                raise CacheFileError("frames do not tile the cache file")
            pos += stored
    if base + pos != size:
        raise CacheFileError(f"cache file is {size} bytes, its frames end at {base + pos} (truncated or padded)")
    if header["codec"] == "none" and any(s != r for rec in segments for _, s, r in rec.frames):
        raise CacheFileError("raw frame sizes disagree")
    segments = [SegmentRecord(r.offset, r.tokens, r.raw_size,
                              tuple((base + a, b, c) for a, b, c in r.frames)) for r in segments]
    return header, segments


_pool: ThreadPoolExecutor | None = None


def _decompress(buf: np.ndarray, rec: SegmentRecord, *, threads: int) -> np.ndarray:
    import zstandard

    out = np.empty(rec.raw_size, dtype=np.uint8)
    starts = np.cumsum([0] + [r for _, _, r in rec.frames])

    def one(i: int) -> None:
        start, stored, raw = rec.frames[i]
        try:
            data = zstandard.ZstdDecompressor().decompress(buf[start : start + stored], max_output_size=raw)
        except zstandard.ZstdError as e:
            raise CacheFileError(f"corrupt compressed frame: {e}") from None
        if len(data) != raw:
            raise CacheFileError("compressed frame has the wrong size")
        out[starts[i] : starts[i] + raw] = np.frombuffer(data, dtype=np.uint8)

    global _pool
    n = threads or os.cpu_count() or 1
    if len(rec.frames) == 1 or n == 1:
        for i in range(len(rec.frames)):
            one(i)
    else:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=n)
        list(_pool.map(one, range(len(rec.frames))))
    return out

"""The span index: which cache files hold which token runs, so cached text is found in any prompt.

Every stored segment of at least ``CHUNK`` tokens (a schema module's text, a learned span of a
prompt) is cut into chunks of ``CHUNK`` tokens at offsets 0, CHUNK, 2*CHUNK, ... of the segment;
each chunk's hash (XXH3-64 of its tokens as little-endian int32) is recorded with the file's key,
the segment's index in the file and the chunk's offset in the segment. A prompt is looked up by
hashing every window of ``CHUNK`` tokens (prompt/recognize.py): a window equal to a recorded chunk
names a file, a segment and an alignment, which the caller checks against the file's tokens.

One index per model and state layout (files of another model or setting can never load), under
``<cache>/spans/<variant>.idx``: fixed records of ``RECORD`` bytes, appended under a lock, every
access through the cache folder's boundary (boundary.py: never through a link)::

    u64 chunk hash; 20 bytes key (the file name's 40 hex digits); u32 segment; u32 offset;
    u32 check (the low 32 bits of XXH3-64 of the 36 bytes before it)

Readers take every whole record whose check holds and ignore the rest (a record cut short by a
killed writer, one being appended); an appender first cuts a torn tail off. Records of files gone
(evicted by `pc gc`, removed) are skipped by the caller when the file is missing and dropped when
`pc gc` compacts the index (:func:`compact`). The index is a hint: a file is used only after its
own header (key, model, settings, tokens) checks out.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import xxhash

from ..errors import CacheWriteError
from .boundary import Boundary

CHUNK = 32  # tokens per indexed chunk (a run shorter than 2 * CHUNK - 1 may go unfound)
CONTEXT_TAIL = 32  # context tokens a file records (which of several files with one text fits a prompt best)
RECORD = 40
_DTYPE = np.dtype([("hash", "<u8"), ("key", "S20"), ("segment", "<u4"), ("offset", "<u4"), ("check", "<u4")])
assert _DTYPE.itemsize == RECORD


def variant_id(model: dict, llama_cpp: str, state_layout: dict, format_tag: str) -> str:
    """The index a model and state layout use (the key's inputs other than the segments)."""
    blob = json.dumps([model.get("sha256_ends"), model.get("size"), llama_cpp, state_layout, format_tag],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def context_record(context: Sequence[int]) -> dict:
    """What a cache file records of one segment's context (``segment_contexts`` in its header):
    its length, hash (XXH3-64 of its tokens as little-endian int32, hex) and last tokens."""
    arr = np.asarray(context, dtype="<i4")
    return {"length": len(arr), "xxh3": xxhash.xxh3_64_hexdigest(arr.tobytes()),
            "tail": [int(t) for t in arr[max(0, len(arr) - CONTEXT_TAIL):]]}


def index_path(root: Path, variant: str) -> Path:
    return Path(root) / "spans" / f"{variant}.idx"


def chunk_hash(tokens: np.ndarray) -> int:
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(tokens, dtype="<i4").tobytes())


def window_hashes(tokens: Iterable[int]) -> np.ndarray:
    """The hash of every window of ``CHUNK`` tokens (one per start, ``len - CHUNK + 1`` of them)."""
    buf = np.ascontiguousarray(np.fromiter(tokens, dtype="<i4"))
    raw = buf.tobytes()
    n = len(buf) - CHUNK + 1
    out = np.empty(max(n, 0), dtype="<u8")
    width = 4 * CHUNK
    for i in range(n):
        out[i] = xxhash.xxh3_64_intdigest(raw[4 * i : 4 * i + width])
    return out


def chunks(tokens: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """(offset, hash) of a segment's indexed chunks."""
    arr = np.asarray(tokens, dtype="<i4")
    return [(at, chunk_hash(arr[at : at + CHUNK])) for at in range(0, len(arr) - CHUNK + 1, CHUNK)]


def _records(key: str, segments: list[tuple[int, ...]]) -> bytes:
    rows = [(h, bytes.fromhex(key), i, at, 0) for i, toks in enumerate(segments) for at, h in chunks(toks)]
    if not rows:
        return b""
    arr = np.array(rows, dtype=_DTYPE)
    raw = arr.view(np.uint8).reshape(len(arr), RECORD)
    for r in range(len(arr)):
        arr["check"][r] = xxhash.xxh3_64_intdigest(raw[r, :36].tobytes()) & 0xFFFFFFFF
    return arr.tobytes()


@dataclass(frozen=True)
class Entry:
    key: str
    segment: int
    offset: int  # of the chunk in the segment


class SpanIndex:
    """One variant's index, read on first use and again whenever the file grew."""

    def __init__(self, boundary: Boundary, variant: str) -> None:
        self.boundary = boundary
        self.path = index_path(boundary.root, variant)
        self._size = -1
        self._by_hash: dict[int, list[Entry]] = {}

    def add(self, key: str, segments: list[tuple[int, ...]]) -> None:
        """Record a file's segments (their token tuples, in file order). CacheWriteError when the
        index cannot be written."""
        data = _records(key, segments)
        if not data:
            return
        try:
            with self.boundary.lock(f"{self.path}.lock"):
                fd = self.boundary.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, create_dirs=True)
                with os.fdopen(fd, "ab") as f:
                    end = os.fstat(fd).st_size
                    if end % RECORD:  # a writer killed mid-record: drop its tail before appending
                        f.truncate(end - end % RECORD)
                    f.write(data)
        except OSError as e:
            raise CacheWriteError(f"cannot write the span index {self.path}: {e.strerror}") from None

    def _refresh(self) -> None:
        st = self.boundary.file_stat(self.path)
        size = st.st_size if st is not None else 0
        if size == self._size:
            return
        self._size = size
        self._by_hash = {}
        for e_hash, entry in _read(self.boundary, self.path):
            self._by_hash.setdefault(e_hash, []).append(entry)

    def lookup(self, hashes: np.ndarray) -> list[tuple[int, Entry]]:
        """(window index, entry) for every window hash recorded (in window order)."""
        self._refresh()
        if not self._by_hash:
            return []
        out = []
        known = np.fromiter(self._by_hash, dtype="<u8", count=len(self._by_hash))
        for i in np.flatnonzero(np.isin(hashes, known)):
            out += [(int(i), e) for e in self._by_hash[int(hashes[i])]]
        return out

    def __len__(self) -> int:
        self._refresh()
        return sum(len(v) for v in self._by_hash.values())


def _raw(boundary: Boundary, path: Path) -> tuple[bytes, np.ndarray]:
    """An index file's bytes, and its whole records as rows of ``RECORD`` bytes (read through
    the boundary: a link raises CacheWriteError, never followed)."""
    with open(path, "rb", opener=boundary.opener) as f:
        data = f.read()
    n = len(data) // RECORD
    return data, np.frombuffer(data, dtype=np.uint8, count=n * RECORD).reshape(n, RECORD)


def _key(row: np.ndarray) -> str:
    return bytes(row[8:28]).hex()  # (not the "key" field: numpy drops an "S" field's trailing zero bytes)


def _read(boundary: Boundary, path: Path) -> list[tuple[int, Entry]]:
    try:
        data, raw = _raw(boundary, path)
    except (OSError, CacheWriteError):  # missing, or a link (never followed)
        return []
    n = len(raw)
    arr = np.frombuffer(data, dtype=_DTYPE, count=n)
    out = []
    for r in range(n):
        if xxhash.xxh3_64_intdigest(raw[r, :36].tobytes()) & 0xFFFFFFFF != int(arr["check"][r]):
            continue
        out.append((int(arr["hash"][r]), Entry(_key(raw[r]), int(arr["segment"][r]), int(arr["offset"][r]))))
    return out


def compact(boundary: Boundary, exists: Callable[[str], bool], *, dry_run: bool = False) -> int:
    """Drop every index's records of files that no longer exist; returns how many were dropped."""
    dropped = 0
    try:
        entries = boundary.entries(("spans",))
    except (OSError, CacheWriteError):  # no index yet, or a link in its place (left alone)
        return 0
    for e in entries:
        if e.kind != "file" or not e.path.name.endswith(".idx"):
            continue
        with suppress(OSError, CacheWriteError):
            with boundary.lock(f"{e.path}.lock"):
                data, raw = _raw(boundary, e.path)
                n = len(raw)
                keep = [r for r in range(n) if exists(_key(raw[r]))]
                dropped += n - len(keep) + (len(data) % RECORD > 0)
                if not dry_run and (len(keep) < n or len(data) % RECORD):
                    boundary.write_atomic(e.path, [raw[keep].tobytes()])
    return dropped

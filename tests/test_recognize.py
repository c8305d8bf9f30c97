"""Finding cached text in any prompt, without a model: the span index on disk (records, torn
writes, compaction), the matching of prompt runs against stored segments (edges that tokenize
differently, overlaps, the shortest run worth loading), and where fresh text is cut for learning."""

from __future__ import annotations

import os
import random

import numpy as np

from promptcache_cli.prompt import recognize
from promptcache_cli.prompt.text import learn_cuts
from promptcache_cli.store import span_index as si
from promptcache_cli.store.boundary import Boundary


def _doc(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 49000) for _ in range(n)]


def _index(tmp_path, files: dict[str, list[list[int]]]) -> si.SpanIndex:
    idx = si.SpanIndex(Boundary(tmp_path), "v")
    for key, segments in files.items():
        idx.add(key, [tuple(s) for s in segments])
    return idx


def _find(idx, prompt, files, **kw):
    hits = idx.lookup(si.window_hashes(prompt))
    return recognize.find(prompt, hits, lambda key, seg: files[key][seg] if key in files else None, **kw)


KEY_A, KEY_B, KEY_C = "aa" * 20, "bb" * 20, "00" * 19 + "c0"


def test_a_document_is_found_wherever_it_stands_its_edges_left_out(tmp_path):
    a, b = _doc(1, 300), _doc(2, 200)
    files = {KEY_A: [a], KEY_B: [_doc(9, 50), b]}
    idx = _index(tmp_path, files)
    # b first, then a whose first and last tokens tokenize differently inside the larger text
    prompt = _doc(3, 17) + b + _doc(4, 5) + [7] + a[1:-2] + [8, 9] + _doc(5, 40)
    found = _find(idx, prompt, files)
    assert [(m.key, m.segment, m.seg_start, m.start, m.length) for m in found] == [
        (KEY_B, 1, 0, 17, 200),
        (KEY_A, 0, 1, 17 + 200 + 5 + 1, 297),
    ]
    for m in found:
        seg = files[m.key][m.segment]
        assert prompt[m.start:m.end] == seg[m.seg_start:m.seg_start + m.length]


def test_overlapping_runs_resolve_longest_first_and_short_leftovers_are_dropped(tmp_path):
    a = _doc(1, 400)
    files = {KEY_A: [a], KEY_B: [a[300:400] + _doc(6, 100)], KEY_C: [a[:40]]}
    idx = _index(tmp_path, files)
    prompt = [1, 2, 3] + a + _doc(6, 100)[:80] + [5, 5]
    found = _find(idx, prompt, files)
    assert [(m.key, m.start, m.length) for m in found] == [(KEY_A, 3, 400), (KEY_B, 403, 80)]
    assert all(m.length >= recognize.MIN_MATCH for m in found)
    assert [(m.start, m.length) for m in _find(idx, a[:40], files)] == [(0, 40)]


def test_the_preferred_file_wins_among_equal_texts(tmp_path):
    a = _doc(1, 128)
    files = {KEY_A: [a], KEY_B: [a]}
    idx = _index(tmp_path, files)
    prompt = [4] * 10 + a
    assert [m.key for m in _find(idx, prompt, files, prefer=lambda m: m.key == KEY_B)] == [KEY_B]
    assert [m.key for m in _find(idx, prompt, files, prefer=lambda m: m.key == KEY_A)] == [KEY_A]


def test_files_gone_are_skipped_and_short_runs_are_not_found(tmp_path):
    a = _doc(1, 200)
    files = {KEY_A: [a]}
    idx = _index(tmp_path, files)
    assert _find(idx, [1] + a + [2], {}) == []  # the file is gone: its records name nothing
    assert _find(idx, a[33:33 + 2 * si.CHUNK - 2], files) == []  # no whole indexed chunk inside: not found
    assert _find(idx, a[:si.CHUNK], files) == [recognize.Match(KEY_A, 0, 0, 0, si.CHUNK)]


def test_index_records_survive_torn_writes_and_are_compacted(tmp_path):
    a, b = _doc(1, 100), _doc(2, 100)
    idx = _index(tmp_path, {KEY_A: [a]})
    n = len(idx)
    assert n == 100 // si.CHUNK
    with open(idx.path, "ab") as f:  # a writer killed mid-record
        f.write(b"\x01" * 17)
    assert len(si.SpanIndex(Boundary(tmp_path), "v")) == n  # the torn tail is ignored
    idx.add(KEY_B, [tuple(b)])  # the next writer cuts it off first
    assert os.path.getsize(idx.path) % si.RECORD == 0
    fresh = si.SpanIndex(Boundary(tmp_path), "v")
    assert len(fresh) == 2 * n
    raw = bytearray(idx.path.read_bytes())
    raw[3] ^= 0xFF  # a damaged record: its check fails, it is skipped
    idx.path.write_bytes(bytes(raw))
    assert len(si.SpanIndex(Boundary(tmp_path), "v")) == 2 * n - 1
    dropped = si.compact(Boundary(tmp_path), lambda key: key == KEY_B)
    assert dropped == n  # KEY_A's records (the damaged one too) are gone
    assert {e.key for _, e in si.SpanIndex(Boundary(tmp_path), "v").lookup(si.window_hashes(a + b))} == {KEY_B}


def test_window_hashes_equal_chunk_hashes():
    a = _doc(1, 100)
    w = si.window_hashes(a)
    assert len(w) == 100 - si.CHUNK + 1
    for at, h in si.chunks(tuple(a)):
        assert w[at] == h
    assert si.window_hashes(a[:10]).shape == (0,)
    assert w.dtype == np.dtype("<u8")


def test_context_record():
    rec = si.context_record(list(range(100)))
    assert rec["length"] == 100 and rec["tail"] == list(range(100 - si.CONTEXT_TAIL, 100))
    assert si.context_record([])["tail"] == [] and si.context_record([5])["tail"] == [5]


def test_learn_cuts_at_paragraph_breaks_within_bounds():
    texts = {}
    for i in range(2000):
        texts[i] = "\n\n" if i % 100 == 99 else " w"
    cuts = learn_cuts(0, 2000, texts.__getitem__, minimum=64, target=256, maximum=512)
    assert cuts[0][0] == 0 and cuts[-1][1] == 2000
    assert all(b - a >= 64 for a, b in cuts)
    assert all(b == a2 for (_, b), (a2, _) in zip(cuts, cuts[1:], strict=False))
    assert all(texts[b - 1] == "\n\n" for _, b in cuts[:-1])  # each cut right after a blank line
    no_breaks = learn_cuts(0, 1100, lambda i: " w", minimum=64, target=256, maximum=512)
    assert no_breaks == [(0, 512), (512, 1024), (1024, 1100)]
    assert learn_cuts(0, 63, lambda i: " w") == []
    assert learn_cuts(0, 530, lambda i: " w", maximum=512) == [(0, 530)]  # a short tail joins the span before


def test_ram_spans_keep_the_most_recently_used_within_their_budget():
    from promptcache_cli.modular.text import RamSpan, RamSpans, Source

    def span(key: str, seed: int, nbytes: int) -> RamSpan:
        toks = tuple(_doc(seed, 100))
        return RamSpan(Source(key, "learned", 0, toks, None, None), np.zeros(nbytes, np.uint8), {}, si.chunks(toks))

    ram = RamSpans(250)
    a, b, c = span(KEY_A, 1, 100), span(KEY_B, 2, 100), span(KEY_C, 3, 100)
    ram.put(a)
    ram.put(b)
    assert ram.get(KEY_A) is a  # A used last: B is the least recently used now
    ram.put(c)
    assert KEY_B not in ram and KEY_A in ram and KEY_C in ram and ram.bytes == 200
    hits = ram.lookup(si.window_hashes(list(b.source.tokens) + list(a.source.tokens)))
    assert {e.key for _, e in hits} == {KEY_A}  # B's chunks went with it
    ram.put(span("dd" * 20, 4, 300))  # larger than the whole budget: not kept
    assert len(ram) == 2

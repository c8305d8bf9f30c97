import numpy as np
import pytest

from promptcache_cli.store.arena import Arena


def test_blobs_taken_between_resets_do_not_overlap():
    arena = Arena()
    a, b = arena.take(1000), arena.take(5000)
    a[:], b[:] = 1, 2
    assert (a == 1).all() and (b == 2).all()
    assert not np.shares_memory(a, b)


def test_reset_reuses_the_same_memory():
    arena = Arena()
    first = arena.take(4096)
    held = arena.nbytes
    arena.reset()
    again = arena.take(4096)
    assert np.shares_memory(first, again)
    assert arena.nbytes == held


def test_grows_by_whole_blocks_for_blobs_larger_than_a_block():
    arena = Arena()
    small = arena.take(10)
    big = arena.take(40 << 20)  # larger than the 32 MiB default block
    assert len(big) == 40 << 20 and not np.shares_memory(small, big)
    assert arena.nbytes >= (32 << 20) + (40 << 20)
    arena.reset()
    assert np.shares_memory(arena.take(40 << 20), big)  # the first block is too small: the second is reused
    arena.close()
    assert arena.nbytes == 0


def test_decoding_into_a_buffer_of_the_wrong_size_is_refused(tmp_path):
    from promptcache_cli.store import cache_file as cf

    blob = np.arange(64, dtype=np.uint8)
    data = b"".join(bytes(c) for c in cf.encode({"key": "k"}, [blob], [(1,)], [0], codec="zstd", split_planes=True))
    path = tmp_path / "x.pcm"
    path.write_bytes(data)
    f = cf.read(path)
    try:
        np.testing.assert_array_equal(f.blob(0, np.empty(64, np.uint8)), blob)
        with pytest.raises(ValueError):
            f.blob(0, np.empty(63, np.uint8))
    finally:
        f.close()

"""Hostile inputs, kept as generators rather than binaries: each function returns the bytes of one
damaged or forged file, named after what is wrong with it. ``cache_files`` holds cache files
(docs/cache-format.md), ``state_blobs`` llama.cpp sequence-state blobs, ``zstd_frames``
hand-built zstd frames (bombs, forged content sizes)."""

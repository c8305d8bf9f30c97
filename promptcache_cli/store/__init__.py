"""The cache directory: the file format, keys, atomic writes and locks, manifests, housekeeping."""

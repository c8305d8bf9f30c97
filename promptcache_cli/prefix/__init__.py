"""Prefix mode: exact reuse of the longest cached token prefix, with sparse checkpoints."""

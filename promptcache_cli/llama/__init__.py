"""The llama.cpp boundary: the only package that imports ``llama_cpp``."""

"""The llama.cpp boundary: the only package that imports ``llama_cpp`` (bindings, model, context, state blobs, sampling)."""

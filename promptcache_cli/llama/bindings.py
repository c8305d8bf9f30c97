"""llama-cpp-python's ctypes bindings, and what needs nothing else: the backend's start and
loading a model file. It imports neither numpy nor the rest of `pc`, so a thread can load the model
while the command imports everything else (preload.py); model.py and context.py wrap the rest of
the C API. The only module that imports ``llama_cpp`` (the import-linter contracts in
pyproject.toml keep it so)."""

from __future__ import annotations

import ctypes
import os
import re
import sys

from .threads import set_wait_policy


def _bindings():
    """llama-cpp-python's ctypes bindings (``llama_cpp.llama_cpp``) and the package's version.

    The package's ``__init__`` also imports the high-level ``Llama`` and its chat formats (jinja2
    and more), which `pc` never uses: 40 to 50 ms of every cold `pc` process (measured with numpy
    already imported). So the bindings are imported under a bare stand-in for the package, which
    is dropped afterwards: a later ``import llama_cpp`` runs the real ``__init__``, reusing the
    bindings already loaded. The version is read from the ``__init__`` source; where that fails,
    or the package is imported already, the package is imported in full."""
    import importlib
    import importlib.util

    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        version = None
        if spec is not None and spec.origin and spec.submodule_search_locations is not None:
            try:
                with open(spec.origin, encoding="utf-8") as f:
                    found = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
                version = found and found.group(1)
            except OSError:
                pass
        if version:
            sys.modules["llama_cpp"] = importlib.util.module_from_spec(spec)
            try:
                return importlib.import_module("llama_cpp.llama_cpp"), version
            finally:
                del sys.modules["llama_cpp"]
    import llama_cpp

    return sys.modules["llama_cpp.llama_cpp"], llama_cpp.__version__


set_wait_policy()  # before libgomp loads with llama.cpp's libraries: it reads its settings then
C, VERSION = _bindings()


def llama_cpp_version() -> str:
    """llama-cpp-python's version (cache keys record it: states of another build never load)."""
    return VERSION


# llama.cpp's log lines are dropped by a C function that takes no arguments and does nothing
# (Py_IsInitialized, called with the callback's three: harmless in the C calling conventions
# Python runs on), not by Python code: no log line takes the GIL, so a model loads on one thread
# beside Python code on another (preload.py), and a Ctrl-C never lands inside a log callback,
# where ctypes would print it as "Exception ignored" and lose it.
_silent_log = ctypes.cast(ctypes.pythonapi.Py_IsInitialized, C.llama_log_callback)
_initialized = False


def init_backend() -> None:
    global _initialized
    if not _initialized:
        C.llama_log_set(_silent_log, ctypes.c_void_p(0))
        C.llama_backend_init()
        _initialized = True


def gguf_problem(path: str) -> str | None:
    """Why ``path`` cannot be a model file (missing, not a regular file, unreadable, not GGUF),
    or None. Opened without waiting: a FIFO or a device is named, never read from."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"model file not found: {path}"
    except IsADirectoryError:
        return f"model file {path} is not a regular file (a folder)"
    except OSError as e:
        return f"cannot read model file {path}: {e.strerror}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"model file {path} is not a regular file"
        magic = os.read(fd, 4)
    except OSError as e:
        return f"cannot read model file {path}: {e.strerror}"
    finally:
        os.close(fd)
    if magic != b"GGUF":
        return f"not a GGUF model file: {path}"
    return None


def load_model_file(path: str):
    """llama.cpp's handle of the model at ``path`` (memory-mapped), or a null pointer when it
    cannot load it. The GIL is released while llama.cpp reads the file."""
    init_backend()
    params = C.llama_model_default_params()
    params.use_mmap = True
    return C.llama_model_load_from_file(os.fsencode(path), params)

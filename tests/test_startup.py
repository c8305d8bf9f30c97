"""What a cold `pc` process loads: only llama-cpp-python's ctypes bindings, not its high-level
package (llama_bindings._bindings), which import without numpy (the preload thread needs nothing
more), and numpy.random only when sampling with a temperature.
Each case runs in a fresh interpreter, as `pc` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest

from promptcache_cli.llama.sampling import Sampler


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_the_bindings_load_without_the_high_level_package():
    got = _run(
        "import json, sys\n"
        "from promptcache_cli.llama import context as b\nfrom promptcache_cli.llama.bindings import llama_cpp_version\n"
        "print(json.dumps({'mods': sorted(m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'jinja2')),"
        " 'version': llama_cpp_version()}))"
    )
    assert "llama_cpp.llama_cpp" in got["mods"]
    assert not {"llama_cpp", "llama_cpp.llama", "llama_cpp.llama_chat_format", "jinja2"} & set(got["mods"])
    assert got["version"] == version("llama_cpp_python")  # the version the cache keys carry


def test_the_bindings_and_a_model_load_need_no_numpy(model_path):
    got = _run(
        "import json, sys\n"
        "from promptcache_cli.llama import bindings as b\n"
        f"h = b.load_model_file({str(model_path)!r})\n"
        "print(json.dumps({'loaded': bool(h), 'numpy': 'numpy' in sys.modules,"
        " 'problem': b.gguf_problem(sys.executable)}))"
    )
    assert got["loaded"] and not got["numpy"]
    assert got["problem"] == f"not a GGUF model file: {sys.executable}"


def test_the_full_package_still_imports_afterwards_and_shares_the_bindings():
    got = _run(
        "import json\n"
        "from promptcache_cli.llama import context as b\nfrom promptcache_cli.llama.bindings import llama_cpp_version\n"
        "import llama_cpp\n"
        "from llama_cpp import Llama, LlamaDiskCache\n"
        "print(json.dumps({'same': llama_cpp.llama_cpp is b.C and llama_cpp.llama_decode is b.C.llama_decode,"
        " 'version': llama_cpp.__version__ == llama_cpp_version(), 'llama': callable(Llama)}))"
    )
    assert got == {"same": True, "version": True, "llama": True}


def test_after_a_full_import_the_backend_uses_it():
    got = _run(
        "import json, llama_cpp\n"
        "from promptcache_cli.llama import context as b\nfrom promptcache_cli.llama.bindings import llama_cpp_version\n"
        "print(json.dumps([b.C is llama_cpp.llama_cpp, llama_cpp_version() == llama_cpp.__version__]))"
    )
    assert got == [True, True]


SERVER_STACK = ("starlette", "uvicorn", "anyio", "h11", "httptools", "uvloop", "fastapi", "pydantic", "openai",
                "httpx", "promptcache_cli.serve")


def test_pc_ask_imports_no_part_of_the_server(tmp_path):
    """A real `pc ask` process (Python's -X importtime lists every module it imports on stderr)."""
    schema = tmp_path / "s.xml"
    schema.write_text('<schema name="s"><user>The sky is blue.</user></schema>', encoding="utf-8")
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "promptcache_cli", "ask", "-n", "1", "-s",
                          str(schema), "What color?"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PC_CACHE_DIR": str(tmp_path / "cache")}, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "promptcache_cli.cli.ask" in imported and "promptcache_cli.cli.serve" in imported  # the list is real
    loaded = {m for m in imported for stack in SERVER_STACK if m == stack or m.startswith(stack + ".")}
    assert loaded == set()


def test_greedy_answers_need_no_random_generator():
    assert Sampler().rng() is None
    assert Sampler().pick(np.array([0.1, 2.0, -1.0]), None) == 1
    rng = Sampler(temperature=0.7, seed=5).rng()
    assert isinstance(rng, np.random.Generator)
    with pytest.raises(AssertionError):
        Sampler(temperature=0.7).pick(np.zeros(3), None)

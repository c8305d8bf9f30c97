"""Load: eight concurrent `pc ask` processes on one cache while a `pc compile` of the same schema
runs, first into an empty cache (they race to compute the same modules) and then over a full one
with `--force` (the compile replaces every file while the asks read them).

Every answer must equal the answer the same request gets from an uncontended cache; the cache
must verify afterwards and hold, module for module, the same states as the uncontended one; and
each ask's peak memory (ru_maxrss) must stay within the model file, the states it uses and a
fixed allowance (MEMORY_ALLOWANCE). Memory is bounded, time is not asserted.

All processes run with PC_THREADS=1: nine processes share two cores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from promptcache_cli.store import cache_file
from promptcache_cli.llama.model_file import default_model_path

from .support import faults

QUESTION = "Which license is the second document?"
REQUESTS = [(), ("-m", "bsd"), ("-m", "apache")]  # default selection, a first module, a later one
N_ASKS = 8
THREADS = {"PC_THREADS": "1"}
# Python, numpy, llama.cpp's code, compute buffers, logits and the answer's own KV cells: a fixed
# part that does not grow with the cache (measured about 60-70 MB on x86_64 with SmolLM2-135M).
MEMORY_ALLOWANCE = 160 << 20
# States appear up to three times: the computed copy before it is written (asks that compile on
# demand), the memory-mapped file (a raw cache file is handed over without a copy) and the KV cells.
STATE_COPIES = 3


def ask_args(schema: Path, request: tuple, *extra: str) -> list:
    return ["ask", QUESTION, "-s", schema, "-n", "8", "--json", *request, *extra]


def answer(proc: faults.Proc) -> str:
    assert proc.code == 0 and "Traceback" not in proc.err, f"exit {proc.code}: {proc.err}"
    return json.loads(proc.out)["answer"]


def states_by_module(cache: Path) -> dict[str, list[bytes]]:
    """module name -> each segment's state bytes."""
    out = {}
    for path in faults.module_files(cache):
        f = cache_file.read(path)
        try:
            out[f.header["module"]] = [bytes(np.asarray(f.blob(i))) for i in range(len(f.segments))]
        finally:
            f.close()
    return out


def file_sizes(cache: Path) -> dict[str, int]:
    out = {}
    for path in faults.module_files(cache):
        f = cache_file.read(path)
        out[f.header["module"]] = f.size
        f.close()
    return out


@dataclass
class Reference:
    schema: Path
    answers: dict[tuple, str]
    states: dict[str, list[bytes]]
    sizes: dict[str, int]

    def state_bytes(self, request: tuple) -> int:
        """Bytes of the module files a request loads: the schema's own segments and its modules."""
        names = {"(schema)"} | ({request[1]} if request else set(self.sizes))
        return sum(self.sizes[n] for n in names)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("load")
    schema = faults.write_docs(root / "docs", 1)
    cache = root / "reference-cache"
    assert faults.run(["compile", schema], cache=cache, **THREADS).code == 0
    answers = {r: answer(faults.run(ask_args(schema, r), cache=cache, **THREADS)) for r in REQUESTS}
    # the first module alone is the same prompt at the same positions as without the cache
    assert answer(faults.run(ask_args(schema, ("-m", "bsd"), "--no-cache"), cache=cache, **THREADS)) \
        == answers[("-m", "bsd")]
    return Reference(schema, answers, states_by_module(cache), file_sizes(cache))


def race(ref: Reference, cache: Path, *compile_extra: str) -> tuple[faults.Proc, list[tuple[tuple, faults.Proc]]]:
    t0 = time.perf_counter()
    compiling = faults.start(["compile", ref.schema, *compile_extra], cache=cache, **THREADS)
    asks = [(REQUESTS[i % len(REQUESTS)], faults.start(ask_args(ref.schema, REQUESTS[i % len(REQUESTS)]),
                                                         cache=cache, measured=True, **THREADS))
            for i in range(N_ASKS)]
    done = [(request, faults.finish(p, t0)) for request, p in asks]
    return faults.finish(compiling, t0), done


def check(ref: Reference, cache: Path, compiled: faults.Proc, asks: list[tuple[tuple, faults.Proc]]) -> None:
    assert compiled.code == 0, compiled.err
    model = default_model_path().stat().st_size
    for request, proc in asks:
        assert answer(proc) == ref.answers[request], (request, proc.err)
        assert "damaged" not in proc.err and "warning" not in proc.err, proc.err
        bound = model + STATE_COPIES * ref.state_bytes(request) + MEMORY_ALLOWANCE
        assert proc.max_rss <= bound, (request, proc.max_rss, bound)
    assert faults.run(["verify"], cache=cache).code == 0
    assert faults.temporary_files(cache) == []
    assert states_by_module(cache) == ref.states  # the same states as the uncontended cache, bit for bit


def test_eight_asks_race_a_compile_into_an_empty_cache(reference: Reference, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    compiled, asks = race(reference, cache)
    check(reference, cache, compiled, asks)


def test_eight_asks_read_while_a_forced_compile_replaces_every_file(reference: Reference, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert faults.run(["compile", reference.schema], cache=cache, **THREADS).code == 0
    compiled, asks = race(reference, cache, "--force")
    check(reference, cache, compiled, asks)

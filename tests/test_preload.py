"""Loading the model on a thread while `pc ask` imports the rest of itself (preload.py): which
command lines start it, that the session takes the very handle the thread loaded (real default
model), that a wrong guess or a failed load falls back to an ordinary load, and that answers and
errors are the same with and without it (real processes)."""

from __future__ import annotations

import pytest

from promptcache_cli.llama import preload
from promptcache_cli.llama.bindings import C
from promptcache_cli.api import open_engine

from .conftest import write_schema
from .support.pc_process import ok, one_line_error, pc


@pytest.fixture(autouse=True)
def _no_job_left():
    yield
    if preload._job is not None:  # a test that failed midway: its handle is freed, not left to the next one
        preload.take(preload._job[0])


@pytest.fixture
def env(monkeypatch, model_path):
    for name in ("PC_PRELOAD", "PC_THREADS", "PC_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_only_ask_loads_early_and_the_model_is_the_one_the_command_will_use(env, model_path, tmp_path):
    default = str(model_path)
    assert preload.wanted(["ask", "-s", "x.xml", "a question"]) == default
    assert preload.wanted(["ask", "--model", "/m/a.gguf", "q"]) == "/m/a.gguf"
    assert preload.wanted(["ask", "--model=/m/b.gguf", "q"]) == "/m/b.gguf"
    assert preload.wanted(["ask", "--", "--model", "/m/c.gguf"]) == default  # after --: the question's words
    assert preload.wanted(["ask", "--model"]) == default  # no value: Typer reports it
    for args in ([], ["compile", "s.xml"], ["ls"], ["--help"], ["bench"], ["inspect", "s.xml"]):
        assert preload.wanted(args) is None, args
    env.setenv("PC_MODEL", str(tmp_path / "env.gguf"))
    assert preload.wanted(["ask", "q"]) == str(tmp_path / "env.gguf")
    assert preload.wanted(["ask", "--model", "/m/a.gguf", "q"]) == "/m/a.gguf"  # the option wins, as in Typer
    env.setenv("PC_PRELOAD", "0")
    assert preload.wanted(["ask", "q"]) is None
    env.setenv("PC_PRELOAD", "1")
    env.setenv("PC_THREADS", "1")  # one core per pc: start-up stays on one thread too
    assert preload.wanted(["ask", "q"]) is None


def test_the_session_takes_the_handle_the_thread_loaded(env, model_path, tmp_path):
    preload.start(str(model_path))
    _, thread, result = preload._job
    thread.join()
    handle = result["handle"]
    assert handle
    sess = open_engine(model_path, cache_dir=tmp_path / "cache")
    try:
        assert ctypes_address(sess.model._ptr) == ctypes_address(handle)
        assert preload.take(str(model_path)) is None  # taken once
        assert sess.model.n_vocab > 1000 and sess.model.kind == "attention"
    finally:
        sess.close()


def test_a_wrong_guess_or_a_failed_load_leaves_an_ordinary_load(env, model_path, tmp_path):
    preload.start(str(model_path))
    assert preload.take(str(tmp_path / "other.gguf")) is None  # another file: the loaded one is freed
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_bytes(b"not a model at all")
    for path in (not_gguf, tmp_path / "missing.gguf"):
        preload.start(str(path))
        assert preload.take(str(path)) is None
    assert preload._job is None and preload.take(str(model_path)) is None  # nothing left, nothing started
    sess = open_engine(model_path, cache_dir=tmp_path / "cache")  # and the ordinary load still works
    sess.close()


def test_a_file_replaced_after_the_thread_loaded_it_is_reported_as_it_is_now(env, model_path, tmp_path):
    import shutil

    from promptcache_cli.llama.model import Model
    from promptcache_cli.errors import ModelLoadError

    copy = tmp_path / "model.gguf"
    shutil.copyfile(model_path, copy)
    preload.start(str(copy))
    _, thread, _ = preload._job
    thread.join()
    swap = tmp_path / "swap"
    swap.write_bytes(b"no longer a model")
    swap.replace(copy)  # a new file under the name; the loaded one stays mapped until freed
    with pytest.raises(ModelLoadError, match="not a GGUF model file"):
        Model(str(copy), loaded=preload.take(str(copy)))


def test_answers_and_errors_are_the_same_with_and_without_it(tmp_path, monkeypatch):
    schema = write_schema(tmp_path / "s", """
        <schema name="pre">
          <module name="doc">Releases of the Widget project ship every 6 weeks from the main branch.</module>
        </schema>""")
    cache = tmp_path / "cache"
    ok(pc("compile", schema, cache_dir=cache))
    runs = {}
    for switch in ("1", "0", "1"):
        monkeypatch.setenv("PC_PRELOAD", switch)
        run = ok(pc("ask", "-s", schema, "-n", "12", "--json", "How often are releases?", cache_dir=cache))
        runs.setdefault(switch, []).append(run.json())
    answers = {r["answer"] for rs in runs.values() for r in rs}
    assert len(answers) == 1 and answers != {""}
    assert all(r["cached_tokens"] > 0 and r["warnings"] == [] for rs in runs.values() for r in rs)
    for switch in ("1", "0"):
        monkeypatch.setenv("PC_PRELOAD", switch)
        bad = one_line_error(pc("ask", "--model", tmp_path / "s" / "schema.xml", "-s", schema, "q", cache_dir=cache), 4)
        assert "not a GGUF model file" in bad
        gone = one_line_error(pc("ask", "--model=" + str(tmp_path / "gone.gguf"), "-s", schema, "q", cache_dir=cache), 4)
        assert "model file not found" in gone


def ctypes_address(ptr) -> int:
    import ctypes

    return ctypes.cast(ptr, ctypes.c_void_p).value


def test_model_log_lines_reach_no_python_code():
    """llama.cpp's log callback is a C function (no GIL, no Python frame): the preload thread's
    load runs beside Python code, and a Ctrl-C never lands inside a callback."""
    import ctypes

    from promptcache_cli.llama import bindings as llama_bindings

    cb = llama_bindings._silent_log
    assert ctypes.cast(cb, ctypes.c_void_p).value == ctypes.cast(ctypes.pythonapi.Py_IsInitialized, ctypes.c_void_p).value
    assert C.llama_log_callback is type(cb)

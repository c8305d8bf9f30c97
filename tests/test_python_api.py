"""The public Python API (docs/python-api.md): the five-line example as the page shows it, with
the real default model, answering what `pc ask` answers; lazy names; streaming; errors' codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import promptcache_cli as pc
from promptcache_cli import errors

from .conftest import write_schema
from .support.pc_process import ok, pc as run_pc

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "python-api.md"


def five_lines() -> str:
    """The page's first Python block, after its 'tests/test_python_api.py runs this block' mark."""
    text = PAGE.read_text(encoding="utf-8")
    after = text.split("tests/test_python_api.py runs this block", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_five_line_example_answers_as_pc_ask_does(tmp_path, monkeypatch):
    code = five_lines()
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    cache = tmp_path / "cache"
    monkeypatch.setenv("PC_CACHE_DIR", str(cache))
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # the library never prints
    cli = ok(run_pc("ask", "-s", ROOT / "schemas" / "travel.xml", "-m", "tokyo", "-p", "duration=3 days",
                    "What should I see first?", "--json", cache_dir=cache)).json()
    assert cli["answer"].strip() and run.stdout == cli["answer"] + "\n"
    assert cli["warnings"] == [] and cli["cached_tokens"] > 0  # the example's compile is what pc ask reuses
    assert "compiled" not in run_pc("ask", "-s", ROOT / "schemas" / "travel.xml", "-m", "tokyo", "-p",
                                    "duration=3 days", "Hi", "-n", "1", cache_dir=cache).err


def test_importing_the_package_imports_nothing_else():
    code = ("import sys, promptcache_cli\n"
            "print(sorted(m for m in sys.modules if m.startswith('promptcache_cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == ["promptcache_cli"]


def test_every_public_name_resolves():
    assert pc.__all__ == sorted(pc.__all__)
    for name in pc.__all__:
        assert getattr(pc, name) is not None, name
    assert set(dir(pc)) >= set(pc.__all__)
    with pytest.raises(AttributeError):
        pc.no_such_name  # noqa: B018


def test_errors_carry_their_exit_codes():
    expected = {
        pc.InputError: errors.EXIT_INPUT, pc.PmlError: errors.EXIT_INPUT, pc.SelectionError: errors.EXIT_INPUT,
        pc.ParameterTooLong: errors.EXIT_INPUT, pc.UsageError: errors.EXIT_USAGE,
        pc.ModelNotFound: errors.EXIT_MODEL, pc.TemplateError: errors.EXIT_MODEL,
        pc.ModelLoadError: errors.EXIT_MODEL, pc.UnsupportedModel: errors.EXIT_MODEL,
        pc.CacheWriteError: errors.EXIT_CACHE, pc.CacheFileError: errors.EXIT_CACHE, pc.BlobError: errors.EXIT_CACHE,
        pc.PromptTooLong: errors.EXIT_TOO_LONG, pc.ContextFullError: errors.EXIT_TOO_LONG,
        pc.BackendError: errors.EXIT_BACKEND, pc.StateRefused: errors.EXIT_BACKEND, pc.OutputError: errors.EXIT_OUTPUT,
        pc.ListenError: errors.EXIT_LISTEN,
        pc.RemoteError: errors.EXIT_REMOTE,
    }
    for cls, code in expected.items():
        assert issubclass(cls, pc.PcError) and cls.exit_code == code, cls
        assert pc.exit_code_for(cls("x") if cls is not pc.PmlError else cls("x", file="f")) == code
    assert pc.exit_code_for(ValueError("x")) is None and pc.exit_code_for(errors.DamagedState(3, "x")) is None
    assert set(pc.EXIT_CODES) == {0, *expected.values(), errors.EXIT_INTERNAL, errors.EXIT_INTERRUPTED,
                                  errors.EXIT_PARTIAL}


def test_requests_take_parameters_as_a_mapping_or_as_strings():
    a = pc.Request("s.xml", "q", modules=["a"], params={"name": "Alice", "m/x": "1"})
    b = pc.Request("s.xml", "q", modules=("a",), params=["name=Alice", "m/x=1"])
    assert a == b and a.params == ("name=Alice", "m/x=1") and a.modules == ("a",)
    with pytest.raises(AttributeError):
        a.question = "other"  # frozen


def test_stream_yields_the_answer_ask_gives(tmp_path):
    schema = write_schema(tmp_path / "s", """
        <schema name="pets"><system>Answer briefly.</system>
        <user><module name="me">My name is <parameter name="name" length="4"/>. My cat is called Tom.</module></user>
        </schema>""")
    request = pc.Request(schema, "What is my cat called?", modules=["me"], params={"name": "Alice"}, max_tokens=12)
    with pc.open_session(cache_dir=tmp_path / "cache") as session:
        assert session.mode == "modular" and session.cache_dir == tmp_path / "cache"
        report = session.compile(schema)
        assert [m.status for m in report.modules] == ["computed", "computed"]
        asked = session.ask(request)
        items = list(session.stream(request))
        view = session.prompt(request)
    *pieces, answer = items
    assert all(isinstance(p, str) for p in pieces) and isinstance(answer, pc.Answer)
    assert "".join(pieces) == answer.text == asked.text and answer.tokens == asked.tokens
    assert answer.cached_tokens + answer.computed_tokens == asked.cached_tokens + asked.computed_tokens
    # asked again over the same prompt: the modules and the parameter value stay in place, the question is computed
    assert answer.computed_tokens == len(view.parts[-1].tokens) < asked.computed_tokens
    assert [p.kind for p in view.parts] == ["cached", "cached", "fresh", "cached", "question"]  # schema, me, name, me
    assert len(view.tokens) == asked.cached_tokens + asked.computed_tokens and view.gaps == 0  # parts packed, no gaps
    assert all(p.file is not None and p.file.is_file() for p in view.parts if p.kind == "cached")


def test_unknown_settings_are_refused_before_the_model_loads(tmp_path):
    with pytest.raises(ValueError, match="unknown mode"):
        pc.open_session(tmp_path / "missing.gguf", cache_dir=tmp_path, mode="fast")
    with pytest.raises(pc.ModelLoadError):
        pc.open_session(tmp_path / "missing.gguf", cache_dir=tmp_path)

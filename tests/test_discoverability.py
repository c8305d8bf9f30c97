"""What a person finds without reading the docs: `pc --version`, shell completion, one spelling of
the schema option on every command that takes one, "did you mean" for mistyped commands, modules,
parameters, union members and schemas, an over-long parameter's error saying what to change,
`--threads` on every command that computes, and the OpenMP wait policy set before llama.cpp loads."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from promptcache_cli import errors
from promptcache_cli.errors import did_you_mean
from promptcache_cli.llama import preload, threads

from .conftest import write_schema
from .support.pc_process import ok, one_line_error, pc

STYLES = """\
<schema name="styles">
  <system>Answer briefly.
    <union scaffold="plain">
      <module name="plain">Use plain words.</module>
      <module name="lawyer">Write to <parameter name="client" length="4" scaffold="a client"/>.</module>
    </union>
  </system>
  <user>
    <module name="python">Python.<module name="global">global makes a name module-wide.</module></module>
  </user>
</schema>
"""


@pytest.fixture
def styles(tmp_path) -> Path:
    return write_schema(tmp_path / "s", STYLES)


def test_version_and_completion() -> None:
    assert ok(pc("--version")).out == f"pc (promptcache_cli) {version('promptcache_cli')}\n"
    # Typer detects the shell from the parent process: run it from bash, as a user would
    import shlex
    import subprocess
    import sys

    cmd = shlex.join([sys.executable, "-m", "promptcache_cli", "--show-completion"])
    shown = subprocess.run(["bash", "-c", f"{cmd}; exit $?"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    script = shown.stdout
    assert "_pc_completion" in script and "complete " in script
    help_text = ok(pc("--help")).out
    assert "--install-completion" in help_text and "--show-completion" in help_text


@pytest.mark.parametrize("command", ["compile", "inspect", "rm", "ask", "plan"])
def test_every_command_taking_a_schema_takes_dash_s(command) -> None:
    out = ok(pc(command, "--help")).out
    assert "-s, --schema FILE" in out


def test_schema_as_argument_or_option_alike(styles, tmp_path) -> None:
    by_arg = ok(pc("inspect", styles, "--json")).json()
    assert ok(pc("inspect", "-s", styles, "--json")).json() == by_arg
    err = one_line_error(pc("inspect", styles, "-s", tmp_path / "other.xml"), errors.EXIT_USAGE)
    assert "two schemas given" in err
    ok(pc("compile", "-s", styles))
    assert ok(pc("rm", "-s", "styles", "--json")).json()["schema"] == "styles"


@pytest.mark.parametrize("args, hint", [
    (["comple"], "Did you mean 'compile'?"),
    (["ask", "-s", "SCHEMA", "-m", "lawer", "q"], "did you mean 'lawyer'?"),  # a union member
    (["ask", "-s", "SCHEMA", "-m", "globl", "q"], "did you mean 'python/global'?"),  # nested
    (["ask", "-s", "SCHEMA", "-m", "lawyer", "-p", "clent=ACME", "q"], "did you mean 'client'?"),
    (["ask", "-s", "SCHEMA", "-p", "client=ACME", "q"], "module 'lawyer' has it: import it with -m"),
    (["ask", "-s", "SCHEMA", "--modle", "x", "q"], "No such option: --modle; did you mean --mode, --model or --module?"),
])
def test_did_you_mean(styles, args, hint) -> None:
    run = pc(*[str(styles) if a == "SCHEMA" else a for a in args])
    assert run.code in (errors.EXIT_USAGE, errors.EXIT_INPUT)
    assert hint in one_line_error(run, run.code)


def test_did_you_mean_a_schema_to_remove(styles) -> None:
    ok(pc("compile", styles))
    err = one_line_error(pc("rm", "stiles"), errors.EXIT_INPUT)
    assert "did you mean 'styles'?" in err
    assert did_you_mean("zzz", ["styles"]) == ""


def test_an_over_long_parameter_says_how_much_to_shorten_or_what_to_raise(styles) -> None:
    value = "client=ACME Corporation International Holdings of Delaware"  # 8 tokens
    err = one_line_error(pc("ask", "-s", styles, "-m", "lawyer", "-p", value, "q"), errors.EXIT_INPUT)
    assert "parameter 'lawyer/client' is" in err and "more than its length 4: shorten the value by" in err
    assert 'raise length="4" to at least' in err


def test_threads_option_and_the_wait_policy(monkeypatch, tmp_path) -> None:
    for command in ("ask", "compile", "bench"):
        assert "--threads N" in ok(pc(command, "--help")).out
    err = one_line_error(pc("compile", "-f", "x", "--threads", "0x"), errors.EXIT_USAGE)
    assert "--threads" in err
    monkeypatch.delenv("PC_THREADS", raising=False)
    assert threads.threads(3) == 3 and threads.threads() == threads.default_threads()
    monkeypatch.setenv("PC_THREADS", "2")
    assert threads.threads() == 2 and threads.threads(1) == 1
    monkeypatch.setenv("PC_THREADS", "lots")
    with pytest.raises(errors.UsageError):
        threads.threads()
    monkeypatch.delenv("PC_THREADS")
    assert preload.wanted(["ask", "--threads", "1", "q"]) is None  # one thread: start-up stays on one too
    assert preload.wanted(["ask", "--threads=1", "q"]) is None
    assert preload.wanted(["ask", "--threads", "2", "q"]) is not None


def _environment_after_loading(**env: str) -> dict:
    code = ("import os, json; from promptcache_cli.llama import bindings; "
            "print(json.dumps({k: os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}))")
    full = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**full, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


def test_the_wait_policy_is_set_before_llama_cpp_loads_unless_the_user_chose() -> None:
    assert _environment_after_loading() == {"GOMP_SPINCOUNT": threads.SPINCOUNT, "OMP_WAIT_POLICY": None}
    assert _environment_after_loading(OMP_WAIT_POLICY="ACTIVE") == {"GOMP_SPINCOUNT": None,
                                                                     "OMP_WAIT_POLICY": "ACTIVE"}
    assert _environment_after_loading(GOMP_SPINCOUNT="5000")["GOMP_SPINCOUNT"] == "5000"

"""End-to-end tests of the `pc` command: real subprocesses, the real default model
(SmolLM2-135M), small schemas written into temporary folders, and a cache that never is the
user's (PC_CACHE_DIR and XDG_CACHE_HOME always point into tmp_path).

What every command must honour: the answer (or one JSON object with --json) alone on stdout;
errors as one line on stderr, never a traceback, with the exit code documented in errors.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from promptcache_cli.store import cache_file
from promptcache_cli import errors

from .support.pc_process import PC, TIMEOUT, Run, ok, pc


SYSTEM = "<system>You are a helpful assistant. Answer briefly.</system>"

# One module: the cached and the no-cache prompts are the same text, so greedy answers match.
FACTS = f"""\
<schema name="facts">
  {SYSTEM}
  <user>
    <module name="fact">The secret color is blue. The secret animal is a cat.</module>
  </user>
</schema>
"""

# A union of two members with different facts, and a module with a parameter.
PETS = f"""\
<schema name="pets">
  {SYSTEM}
  <user>
    <union scaffold="cat">
      <module name="cat">My pet is a cat named Tom.</module>
      <module name="dog">My pet is a dog named Rex.</module>
    </union>
    <module name="me">My name is <parameter name="name" length="6"/>.</module>
  </user>
</schema>
"""

# Three independent modules, for the compile / edit / reuse cycle.
FRUIT = f"""\
<schema name="fruit">
  {SYSTEM}
  <user>
    <module name="apple">Apples are red.</module>
    <module name="banana">Bananas are {{banana}}.</module>
    <module name="cherry">Cherries are dark red.</module>
  </user>
</schema>
"""

# For `pc inspect` only (no states computed): unequal union members, two parameters.
LAYOUT = """\
<schema name="layout">
  <system>Be brief.</system>
  <user>
    <module name="intro">Hello there.</module>
    <union scaffold="short">
      <module name="short">A.</module>
      <module name="long">A much longer member with many more words in it.</module>
    </union>
    <module name="me">My name is <parameter name="name" length="{length}"/> and I live in <parameter name="city" length="4"/>.</module>
  </user>
</schema>
"""

REPEAT = "Repeat the sentence above."  # the tiny model gets this one right


# -- running the command ----------------------------------------------------------------------


def assert_one_line_error(run: Run, code: int) -> None:
    assert "Traceback" not in run.err, run.err
    assert run.code == code, f"exit {run.code}, stderr: {run.err}"
    assert run.out == "", run.out
    assert run.err.strip(), "no error message"
    assert run.err.rstrip("\n").count("\n") == 0, f"more than one stderr line:\n{run.err}"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command gets a private cache; the user's cache dir is hidden too."""
    cache = tmp_path / "pc-cache"
    monkeypatch.setenv("PC_CACHE_DIR", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for var in ("PC_MODEL", "PC_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return cache


@dataclass
class Shared:
    root: Path
    cache: Path
    facts: Path
    pets: Path


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    """FACTS and PETS compiled once into one cache, for the tests that only read it."""
    root = tmp_path_factory.mktemp("shared")
    s = Shared(root, root / "cache", write(root, "facts.xml", FACTS), write(root, "pets.xml", PETS))
    for schema in (s.facts, s.pets):
        report = ok(pc("compile", schema, "--json", cache_dir=s.cache)).json()
        assert {m["status"] for m in report["modules"]} == {"computed"}
    return s


@pytest.fixture(scope="module")
def facts_answer(shared: Shared) -> dict:
    return ok(pc("ask", "What is the secret color?", "-s", shared.facts, "--json",
                 cache_dir=shared.cache)).json()


# -- pc path ----------------------------------------------------------------------------------


def test_path_prints_pc_cache_dir(cache_dir: Path, tmp_path: Path) -> None:
    run = ok(pc("path"))
    assert run.out == f"{cache_dir}\n"
    assert run.err == ""
    other = tmp_path / "elsewhere"
    assert ok(pc("path", "--cache-dir", other)).out == f"{other}\n"


# -- pc compile -------------------------------------------------------------------------------


def test_compile_reports_then_reuses_then_recomputes_only_the_edited_module(
    tmp_path: Path, cache_dir: Path
) -> None:
    """With --encoding independent, an edit (same length) invalidates only the edited module."""
    schema = write(tmp_path, "fruit.xml", FRUIT.format(banana="yellow"))
    enc = ("--encoding", "independent")

    first = ok(pc("compile", schema, "--json", *enc)).json()
    assert first["schema"] == "fruit"
    assert first["cache_dir"] == str(cache_dir)
    rows = first["modules"]
    assert isinstance(rows, list) and rows
    for row in rows:
        assert isinstance(row["module"], str) and row["module"]
        assert row["status"] == "computed"
        assert isinstance(row["tokens"], int) and row["tokens"] > 0
        assert isinstance(row["bytes"], int) and row["bytes"] > 0
    names = [r["module"] for r in rows]
    assert {"apple", "banana", "cherry"} <= set(names)
    assert names.index("apple") < names.index("banana") < names.index("cherry")
    # the states went into PC_CACHE_DIR and nowhere else
    assert any(p.is_file() for p in cache_dir.rglob("*"))
    assert not (tmp_path / "xdg-cache").exists() or not any((tmp_path / "xdg-cache").rglob("*"))

    second = ok(pc("compile", schema, "--json", *enc)).json()
    assert [(r["module"], r["status"]) for r in second["modules"]] == [(n, "reused") for n in names]
    assert [r["tokens"] for r in second["modules"]] == [r["tokens"] for r in rows]

    # human output: the table goes to stderr, nothing to stdout
    human = ok(pc("compile", schema, *enc))
    assert human.out == ""
    assert "reused" in human.err

    schema.write_text(FRUIT.format(banana="green"), encoding="utf-8")
    third = ok(pc("compile", schema, "--json", *enc)).json()
    status = {r["module"]: r["status"] for r in third["modules"]}
    assert status == {n: ("computed" if n == "banana" else "reused") for n in names}
    keys = {r["module"]: r["key"] for r in rows}
    new_keys = {r["module"]: r["key"] for r in third["modules"]}
    assert new_keys["banana"] != keys["banana"]
    assert {n: k for n, k in new_keys.items() if n != "banana"} == {
        n: k for n, k in keys.items() if n != "banana"}


def test_default_scaffold_encoding_recompiles_the_edited_module_and_what_follows(tmp_path: Path) -> None:
    """The default encoding computes each module after the default prompt before it, so an edit
    invalidates that module and every module after it, never one before it."""
    schema = write(tmp_path, "fruit.xml", FRUIT.format(banana="yellow"))
    first = ok(pc("compile", schema, "--json")).json()
    assert {r["status"] for r in first["modules"]} == {"computed"}
    schema.write_text(FRUIT.format(banana="green"), encoding="utf-8")
    status = {r["module"]: r["status"] for r in ok(pc("compile", schema, "--json")).json()["modules"]}
    assert (status["apple"], status["banana"], status["cherry"]) == ("reused", "computed", "computed")


# -- pc ask -----------------------------------------------------------------------------------


def test_ask_json_after_compile_uses_the_cache(facts_answer: dict) -> None:
    res = facts_answer
    assert {"answer", "ttft_ms", "cached_tokens", "computed_tokens", "modules", "model"} <= set(res)
    assert isinstance(res["answer"], str) and res["answer"].strip()
    assert isinstance(res["ttft_ms"], (int, float)) and res["ttft_ms"] > 0
    assert res["cached_tokens"] > 0
    assert res["computed_tokens"] > 0  # at least the question
    assert res["modules"] == ["fact"]
    assert isinstance(res["model"], str) and res["model"]
    assert "blue" in res["answer"].lower()


def test_ask_no_cache_gives_the_same_answer(shared: Shared, facts_answer: dict) -> None:
    base = ok(pc("ask", "What is the secret color?", "-s", shared.facts, "--json", "--no-cache",
                 cache_dir=shared.cache)).json()
    assert base["cached_tokens"] == 0
    assert base["answer"] == facts_answer["answer"]
    # the same prompt, all of it computed
    everything = facts_answer["cached_tokens"] + facts_answer["computed_tokens"]
    assert base["computed_tokens"] == everything
    assert base["modules"] == facts_answer["modules"]


def test_ask_plain_stdout_is_only_the_answer(shared: Shared, facts_answer: dict) -> None:
    run = ok(pc("ask", "What is the secret color?", "-s", shared.facts, cache_dir=shared.cache))
    assert run.out == facts_answer["answer"] + "\n"
    assert run.err == ""  # stderr is not a terminal: no timings, no progress bar
    timed = ok(pc("ask", "What is the secret color?", "-s", shared.facts, "--timings",
                  cache_dir=shared.cache))
    assert timed.out == run.out
    assert timed.err.rstrip("\n").count("\n") == 0 and "cached tokens" in timed.err


def test_ask_without_compile_compiles_on_demand(
    tmp_path: Path, cache_dir: Path, facts_answer: dict
) -> None:
    schema = write(tmp_path, "facts.xml", FACTS)
    first = ok(pc("ask", "What is the secret color?", "-s", schema, "--json"))
    res = first.json()
    assert "on demand" in first.err and "fact" in first.err
    assert res["answer"] == facts_answer["answer"]  # same states as `pc compile` makes
    assert any(p.is_file() for p in cache_dir.rglob("*"))

    again = ok(pc("ask", "What is the secret color?", "-s", schema, "--json"))
    assert again.err == ""
    assert again.json()["answer"] == res["answer"]
    report = ok(pc("compile", schema, "--json")).json()
    assert {r["status"] for r in report["modules"]} == {"reused"}


@pytest.mark.parametrize("how", ["argument", "dash", "no-argument"])
def test_question_from_stdin(shared: Shared, how: str) -> None:
    base = ["ask", "-s", shared.pets, "-m", "dog"]
    if how == "argument":
        run = pc(*base, REPEAT, cache_dir=shared.cache)
    elif how == "dash":
        run = pc(*base, "-", stdin=REPEAT + "\n", cache_dir=shared.cache)
    else:
        run = pc(*base, stdin=REPEAT + "\n", cache_dir=shared.cache)
    ok(run)
    assert "Rex" in run.out and "Tom" not in run.out
    assert run.out.endswith("\n") and run.err == ""


def test_module_selects_a_union_member(shared: Shared) -> None:
    answers = {}
    for member, fact, other in (("cat", "Tom", "Rex"), ("dog", "Rex", "Tom")):
        res = ok(pc("ask", REPEAT, "-s", shared.pets, "-m", member, "--json",
                    cache_dir=shared.cache)).json()
        assert res["modules"] == [member]
        assert res["cached_tokens"] > 0
        assert fact in res["answer"] and other not in res["answer"], res["answer"]
        answers[member] = res["answer"]
    assert answers["cat"] != answers["dog"]


def test_parameter_value_reaches_the_model(shared: Shared) -> None:
    for name, other in (("Alice", "Bob"), ("Bob", "Alice")):
        res = ok(pc("ask", REPEAT, "-s", shared.pets, "-m", "me", "-p", f"name={name}", "--json",
                    cache_dir=shared.cache)).json()
        assert res["modules"] == ["me"]
        assert name in res["answer"] and other not in res["answer"], res["answer"]
    # qualified form module/NAME=VALUE
    res = ok(pc("ask", REPEAT, "-s", shared.pets, "-m", "me", "-p", "me/name=Alice", "--json",
                cache_dir=shared.cache)).json()
    assert "Alice" in res["answer"]


def test_prompt_file_chooses_modules_parameters_and_question(shared: Shared) -> None:
    prompt = write(shared.root, "alice.prompt.xml",
                   f'<prompt schema="pets">\n  <me name="Alice"/>\n  {REPEAT}\n</prompt>\n')
    res = ok(pc("ask", "-s", shared.pets, "--prompt", prompt, "--json",
                cache_dir=shared.cache)).json()
    assert res["modules"] == ["me"]
    assert "Alice" in res["answer"]
    # exactly what the same choice on the command line gives
    cli = ok(pc("ask", REPEAT, "-s", shared.pets, "-m", "me", "-p", "name=Alice", "--json",
                cache_dir=shared.cache)).json()
    assert res["answer"] == cli["answer"]
    for key in ("cached_tokens", "computed_tokens"):
        assert res[key] == cli[key]

    dog = write(shared.root, "dog.prompt.xml", f'<prompt schema="pets"><dog/>{REPEAT}</prompt>\n')
    res = ok(pc("ask", "-s", shared.pets, "--prompt", dog, "--json", cache_dir=shared.cache)).json()
    assert res["modules"] == ["dog"]
    assert "Rex" in res["answer"] and "Tom" not in res["answer"]


# -- pc inspect -------------------------------------------------------------------------------


def _line(source: str) -> int:
    m = re.search(r":(\d+)", source)
    assert m, source
    return int(m.group(1))


def test_inspect_json_layout(tmp_path: Path) -> None:
    schema = write(tmp_path, "layout.xml", LAYOUT.format(length=6))
    run = ok(pc("inspect", schema, "--json"))
    assert run.err == ""
    lo = run.json()
    assert lo["schema"] == "layout"
    elements = lo["elements"]
    for e in elements:
        assert isinstance(e["name"], str) and e["name"]
        assert isinstance(e["kind"], str) and e["kind"]
        assert isinstance(e["offset"], int) and e["offset"] >= 0
        assert isinstance(e["length"], int) and e["length"] >= 0
        assert e["offset"] + e["length"] <= lo["length"]
    by = {(e["kind"], e["name"]): e for e in elements}
    intro, short, long_ = by["module", "intro"], by["module", "short"], by["module", "long"]
    me, name, city = by["module", "me"], by["parameter", "name"], by["parameter", "city"]
    union = next(e for e in elements if e["kind"] == "union")

    # union members share the union's offset; the union is as long as its longest member
    assert short["offset"] == long_["offset"] == union["offset"]
    assert short["length"] < long_["length"] == union["length"]
    # parameters reserve exactly their length
    assert (name["length"], city["length"]) == (6, 4)
    assert name["offset"] + 6 < city["offset"]  # " and I live in" between them
    assert me["offset"] < name["offset"] and city["offset"] + 4 < me["offset"] + me["length"]
    # offsets strictly follow document order
    assert intro["offset"] + intro["length"] <= union["offset"]
    assert intro["offset"] < union["offset"] < me["offset"] < name["offset"] < city["offset"]
    assert union["offset"] + union["length"] <= me["offset"]
    assert me["offset"] + me["length"] <= lo["length"]
    assert [e["offset"] for e in elements] == sorted(e["offset"] for e in elements)
    named = [e for e in elements if e["kind"] in ("module", "union", "parameter")]
    in_source_order = sorted(named, key=lambda e: _line(e["source"]))
    offsets = [e["offset"] for e in in_source_order]
    assert offsets == sorted(offsets)

    # the human table goes to stdout and names every module
    table = ok(pc("inspect", schema))
    for word in ("intro", "short", "long", "me", "name", "city"):
        assert word in table.out


def test_inspect_parameter_length_moves_everything_after_it(tmp_path: Path) -> None:
    def layout(length: int) -> dict:
        schema = write(tmp_path, f"layout{length}.xml", LAYOUT.format(length=length))
        lo = ok(pc("inspect", schema, "--json")).json()
        return lo | {"by": {(e["kind"], e["name"]): e for e in lo["elements"]}}

    six, nine = layout(6), layout(9)
    assert nine["length"] == six["length"] + 3
    assert nine["by"]["parameter", "name"]["length"] == 9
    assert nine["by"]["module", "me"]["length"] == six["by"]["module", "me"]["length"] + 3
    assert nine["by"]["parameter", "city"]["offset"] == six["by"]["parameter", "city"]["offset"] + 3
    for key in (("module", "intro"), ("module", "long"), ("parameter", "name")):
        assert nine["by"][key]["offset"] == six["by"][key]["offset"]


def test_refresh_recomputes_cached_tokens_and_ranked_stores_their_scores(shared: Shared, tmp_path: Path) -> None:
    """`--refresh` on a prompt that is not the default one: the scores are measured on demand
    (one stderr line, once), then read from the cache; `compile --ranked` measures them ahead."""
    args = ("ask", "What is my pet called?", "-s", shared.pets, "-m", "dog", "-m", "me", "-p", "name=Ann",
            "-n", "8")
    plain = ok(pc(*args, "--json", cache_dir=shared.cache)).json()
    first = ok(pc(*args, "--refresh", "50", cache_dir=tmp_path / "c"))
    assert "measured the recompute scores of" in first.err and first.err.count("\n") <= 3
    again = ok(pc(*args, "--refresh", "50", "--json", cache_dir=tmp_path / "c")).json()
    assert again["refreshed_tokens"] > 0 and again["answer"] == first.out.rstrip("\n")
    assert again["cached_tokens"] + again["computed_tokens"] == plain["cached_tokens"] + plain["computed_tokens"]
    assert again["computed_tokens"] == plain["computed_tokens"] + again["refreshed_tokens"]
    assert plain["refreshed_tokens"] == 0
    compiled = ok(pc("compile", shared.pets, "--ranked", "--json", cache_dir=tmp_path / "r")).json()
    assert compiled["ranked"] and {m["status"] for m in compiled["modules"]} == {"computed"}
    ranked = ok(pc(*args, "--refresh", "50", "--json", cache_dir=tmp_path / "r"))
    assert "recompute scores" not in ranked.err and ranked.json()["answer"] == again["answer"]
    assert ok(pc("compile", shared.pets, "--ranked", "--json", cache_dir=tmp_path / "r")).json()["ranked"] == []


# -- errors -----------------------------------------------------------------------------------


def _error_cases(tmp: Path, pets: Path) -> dict[str, tuple[list, int]]:
    bad_xml = write(tmp, "bad.xml", '<schema name="bad"><module name="a">text</schema>\n')
    not_gguf = write(tmp, "model.gguf", "this is not a model\n")
    other = write(tmp, "other.prompt.xml",
                  f'<prompt schema="travel"><me name="Bob"/>{REPEAT}</prompt>\n')
    return {
        "malformed-xml": (["ask", "hi", "-s", bad_xml], errors.EXIT_INPUT),
        "malformed-xml-compile": (["compile", bad_xml], errors.EXIT_INPUT),
        "unknown-module": (["ask", "hi", "-s", pets, "-m", "horse"], errors.EXIT_INPUT),
        "unknown-parameter": (["ask", "hi", "-s", pets, "-m", "me", "-p", "age=3"],
                              errors.EXIT_INPUT),
        "parameter-too-long": (["ask", "hi", "-s", pets, "-m", "me", "-p",
                                "name=Bartholomew Maximilian Fitzgerald the Third"],
                               errors.EXIT_INPUT),
        "missing-schema": (["ask", "hi", "-s", tmp / "nope.xml"], errors.EXIT_INPUT),
        "missing-schema-compile": (["compile", tmp / "nope.xml"], errors.EXIT_INPUT),
        "missing-model": (["ask", "hi", "-s", pets, "--model", tmp / "nope.gguf"],
                          errors.EXIT_MODEL),
        "not-gguf-model": (["ask", "hi", "-s", pets, "--model", not_gguf], errors.EXIT_MODEL),
        "not-gguf-model-compile": (["compile", pets, "--model", not_gguf], errors.EXIT_MODEL),
        "empty-question": (["ask", "", "-s", pets], errors.EXIT_INPUT),
        "blank-question": (["ask", "  \n ", "-s", pets], errors.EXIT_INPUT),
        "empty-stdin": (["ask", "-", "-s", pets], errors.EXIT_INPUT),
        "prompt-for-another-schema": (["ask", "-s", pets, "--prompt", other], errors.EXIT_INPUT),
        "refresh-over-100": (["ask", "hi", "-s", pets, "--refresh", "150"], errors.EXIT_USAGE),
        "refresh-negative": (["ask", "hi", "-s", pets, "--refresh", "-1"], errors.EXIT_USAGE),
        "refresh-with-no-cache": (["ask", "hi", "-s", pets, "--refresh", "5", "--no-cache"], errors.EXIT_USAGE),
        "refresh-in-prefix-mode": (["ask", "hi", "-s", pets, "--refresh", "5", "--mode", "prefix"],
                                   errors.EXIT_USAGE),
        "refresh-with-q8_0": (["ask", "hi", "-s", pets, "--refresh", "5", "--kv-type", "q8_0"], errors.EXIT_USAGE),
        "ranked-in-prefix-mode": (["compile", pets, "--ranked", "--mode", "prefix"], errors.EXIT_USAGE),
        "ranked-with-q8_0": (["compile", pets, "--ranked", "--kv-type", "q8_0"], errors.EXIT_USAGE),
    }


ERROR_CASES = [  # the keys of _error_cases, listed here for parametrize
    "malformed-xml", "malformed-xml-compile", "unknown-module", "unknown-parameter",
    "parameter-too-long", "missing-schema", "missing-schema-compile", "missing-model",
    "not-gguf-model", "not-gguf-model-compile", "empty-question", "blank-question", "empty-stdin",
    "prompt-for-another-schema", "refresh-over-100", "refresh-negative", "refresh-with-no-cache",
    "refresh-in-prefix-mode", "refresh-with-q8_0", "ranked-in-prefix-mode", "ranked-with-q8_0",
]


def test_error_case_list_is_complete(tmp_path: Path) -> None:
    assert sorted(ERROR_CASES) == sorted(_error_cases(tmp_path, tmp_path / "pets.xml"))


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_is_one_line_with_documented_exit_code(case: str, tmp_path: Path) -> None:
    pets = write(tmp_path, "pets.xml", PETS)
    args, code = _error_cases(tmp_path, pets)[case]
    run = pc(*args)
    assert_one_line_error(run, code)
    assert run.err.startswith("pc: ")
    # nothing was computed for a request that fails
    assert not any(p.is_file() for p in (tmp_path / "pc-cache").rglob("*"))


def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    pets = write(tmp_path, "pets.xml", PETS)
    run = pc("ask", "hi", "-s", pets, "--max-tokens", "0")
    assert "Traceback" not in run.err
    assert run.code == errors.EXIT_USAGE
    assert run.out == ""
    assert "--max-tokens" in run.err


def test_pc_alone_shows_the_help_and_exits_as_a_usage_error() -> None:
    run = pc()
    assert run.code == errors.EXIT_USAGE
    assert "Usage: " in run.out and "compile" in run.out and run.err == ""


def test_bad_option_error_is_one_line(tmp_path: Path) -> None:
    pets = write(tmp_path, "pets.xml", PETS)
    assert_one_line_error(pc("ask", "hi", "-s", pets, "--max-tokens", "0"), errors.EXIT_USAGE)


@pytest.mark.parametrize("option", ["--encoding", "--compression"])
def test_bad_choice_option_is_a_usage_error(option: str, tmp_path: Path) -> None:
    pets = write(tmp_path, "pets.xml", PETS)
    assert_one_line_error(pc("ask", "hi", "-s", pets, option, "bogus"), errors.EXIT_USAGE)


# -- closed stdout ----------------------------------------------------------------------------


def _ask_then_close_stdout(schema: Path, cache: Path) -> tuple[bytes, int, str]:
    """`pc ask ... | head -c 5`: read 5 bytes of the answer, close the pipe, let pc go on."""
    env = dict(os.environ, PC_CACHE_DIR=str(cache))
    proc = subprocess.Popen(
        PC + ["ask", "Write a long story about a cat.", "-s", str(schema), "-n", "128"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        head = proc.stdout.read(5)
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return head, code, err


@pytest.fixture(scope="module")
def closed_stdout(shared: Shared) -> tuple[bytes, int, str]:
    return _ask_then_close_stdout(shared.facts, shared.cache)


def test_closed_stdout_is_quiet(closed_stdout: tuple[bytes, int, str]) -> None:
    head, code, err = closed_stdout
    assert len(head) == 5
    assert err == "", err  # no BrokenPipeError traceback, no "Exception ignored" line
    assert code == 0


@pytest.mark.parametrize("command", [
    ["path"],  # print()
    ["inspect", str(Path(__file__).resolve().parent.parent / "schemas" / "travel.xml")],  # a rich table
])
def test_closed_stdout_is_quiet_for_every_command(command: list[str]) -> None:
    """The reader is gone before the command writes (as in `pc path | true`): exit 0, no output."""
    proc = subprocess.Popen(PC + command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=TIMEOUT) == 0
    assert err == b""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
@pytest.mark.parametrize("command, code", [
    (["path"], errors.EXIT_OK),  # the path goes to stdout, nothing to stderr
    (["ask", "-s", "no-such-schema.xml", "hi"], errors.EXIT_INPUT),  # its one line is lost
    (["gc", "--max-size", "5Q"], errors.EXIT_USAGE),
])
def test_an_unwritable_stderr_keeps_the_exit_code(command: list[str], code: int) -> None:
    """stderr on a full disk: whatever cannot be said is lost, the exit code still tells, and no
    traceback is attempted."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(PC + command, stdout=subprocess.PIPE, stderr=full, timeout=TIMEOUT)
    assert proc.returncode == code


def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """SIGINT during a long prefill: exit 130, "interrupted" on stderr, no cache file."""
    import signal
    import time

    gpl = Path(__file__).resolve().parent.parent / "schemas" / "gpl-manual.xml"
    env = dict(os.environ, PC_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "promptcache_cli", "ask", "-s", str(gpl), "hello"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    time.sleep(3)  # model loaded, compiling the ~4,000-token document on demand
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = err.decode().strip().splitlines()
    if len(lines) == 2:  # why it computes, said when computing started
        assert lines[0].startswith("not compiled yet: computing "), lines
    assert lines[-1:] == ["pc: interrupted"] and len(lines) <= 2, lines
    assert out == b""
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert all(p.suffix == ".pcm" for p in files), files  # no temporary file left behind
    for p in files:  # modules finished before the interrupt are whole, valid files
        cache_file.read(p).close()

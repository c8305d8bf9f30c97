"""Faults around real `pc` processes: a read-only cache, a full disk (a file-size limit hit
mid-write), kill -9 and Ctrl-C at seeded random moments, damaged cache files, a closed stdout.

The rule for all of them: the command ends cleanly (an answer, or one line and a documented exit
code), the cache keeps every whole file it had, and no partial file is ever loaded.

The schema (faults.write_docs) has no one-token glue segments, so answers from a cache built in
pieces (killed compiles, on-demand asks) can be compared exactly with answers from one
uninterrupted `pc compile`.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from promptcache_cli import errors

from .support import faults

QUESTION = "Which license is the second document?"
N_TOKENS = "8"


def ask_args(schema: Path, *extra: str) -> list:
    return ["ask", QUESTION, "-s", schema, "-n", N_TOKENS, "--json", *extra]


def answer(proc: faults.Proc) -> str:
    assert proc.code == 0, f"exit {proc.code}: {proc.err}"
    assert "Traceback" not in proc.err, proc.err
    return json.loads(proc.out)["answer"]


def warnings_in(proc: faults.Proc) -> list[str]:
    return [line for line in proc.err_lines if line.startswith("warning:")]


WHY = re.compile(r"^(not compiled yet|.+ not in the cache \(removed since\)|.+ (changed|is new)): "
                 r"(computing|recompiling) ")


def said(proc: faults.Proc) -> list[str]:
    """stderr's lines without the one saying why modules are computed (printed as computing
    starts, before whatever ends it)."""
    lines = proc.err_lines
    return lines[1:] if lines and WHY.match(lines[0]) else lines


def assert_one_line_error(proc: faults.Proc, code: int) -> None:
    assert "Traceback" not in proc.err, proc.err
    assert proc.code == code, f"exit {proc.code}, stderr: {proc.err}"
    assert proc.out == ""
    assert len(said(proc)) == 1 and said(proc)[0].startswith("pc: "), proc.err


@dataclass
class Docs:
    v1: Path
    v2: Path
    ref_v1: str  # answers from one uninterrupted `pc compile` and `pc ask` in a cache of their own
    ref_v2: str


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Docs:
    root = tmp_path_factory.mktemp("docs")
    v1, v2 = faults.write_docs(root / "v1", 1), faults.write_docs(root / "v2", 2)
    refs = []
    for schema in (v1, v2):
        cache = root / f"ref-cache-{schema.parent.name}"
        assert faults.run(["compile", schema], cache=cache).code == 0
        refs.append(answer(faults.run(ask_args(schema), cache=cache)))
    return Docs(v1, v2, *refs)


@pytest.fixture(scope="module")
def read_only_works(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (visibly) where a read-only folder cannot be made: root without CAP_SETPCAP."""
    folder = tmp_path_factory.mktemp("ro-probe")
    faults.make_read_only(folder)
    try:
        probe = subprocess.run(["sh", "-c", f"touch '{folder}/x'"], preexec_fn=faults.drop_root_write_bypass,
                               capture_output=True)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot drop root's write bypass here: {e}")
    if probe.returncode == 0:
        pytest.skip("this user writes into read-only folders; cannot test a read-only cache")


# -- a read-only cache ---------------------------------------------------------------------------


def test_read_only_empty_cache_answers_by_computing_and_warns_once(docs: Docs, tmp_path: Path,
                                                                    read_only_works) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    faults.make_read_only(cache)
    proc = faults.run(ask_args(docs.v1), cache=cache, preexec=faults.drop_root_write_bypass)
    assert answer(proc) == docs.ref_v1
    assert said(proc) == warnings_in(proc), proc.err  # the warning is all stderr says, beside why it computes
    assert len(warnings_in(proc)) == 1, proc.err
    assert "Permission denied" in proc.err and str(cache) in proc.err
    assert faults.snapshot(cache) == {} and not any(cache.iterdir())


def test_read_only_warm_cache_answers_from_it_and_computes_what_it_lacks(docs: Docs, tmp_path: Path,
                                                                          read_only_works) -> None:
    cache = tmp_path / "cache"
    assert faults.run(["compile", docs.v1], cache=cache).code == 0
    faults.make_read_only(cache)
    before = faults.snapshot(cache)

    warm = faults.run(ask_args(docs.v1), cache=cache, preexec=faults.drop_root_write_bypass)
    assert answer(warm) == docs.ref_v1
    assert warm.err == ""  # everything came from the cache: nothing to write, nothing to say

    other = faults.run(ask_args(docs.v2), cache=cache, preexec=faults.drop_root_write_bypass)
    assert answer(other) == docs.ref_v2  # every module of v2 computed in memory
    assert len(warnings_in(other)) == 1 and said(other) == warnings_in(other), other.err
    assert faults.snapshot(cache) == before
    faults.make_writable(cache)


@pytest.mark.parametrize("warm", [False, True], ids=["empty", "compiled"])
def test_compile_into_read_only_cache_exits_5_with_one_line(docs: Docs, tmp_path: Path, warm: bool,
                                                             read_only_works) -> None:
    cache = tmp_path / "cache"
    if warm:  # every module is there; only the manifest would be written
        assert faults.run(["compile", docs.v1], cache=cache).code == 0
    else:
        cache.mkdir()
    faults.make_read_only(cache)
    before = faults.snapshot(cache)
    proc = faults.run(["compile", docs.v1], cache=cache, preexec=faults.drop_root_write_bypass)
    assert_one_line_error(proc, errors.EXIT_CACHE)
    assert "Permission denied" in proc.err and str(cache) in proc.err
    assert faults.snapshot(cache) == before
    faults.make_writable(cache)


def test_cache_dir_that_is_a_file(docs: Docs, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file\n")
    proc = faults.run(ask_args(docs.v1), cache=not_a_dir)
    assert answer(proc) == docs.ref_v1
    assert len(warnings_in(proc)) == 1 and str(not_a_dir) in proc.err, proc.err
    assert_one_line_error(faults.run(["compile", docs.v1], cache=not_a_dir), errors.EXIT_CACHE)
    assert not_a_dir.read_text() == "a file\n"


# -- a full disk ---------------------------------------------------------------------------------

FSIZE_LIMIT = 64 * 1024  # below every module file of this schema, above the manifest


def test_file_size_limit_mid_write_keeps_the_old_cache(docs: Docs, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert faults.run(["compile", docs.v1], cache=cache).code == 0
    before = faults.snapshot(cache)
    assert all(len(data) > FSIZE_LIMIT for name, data in before.items() if name.endswith(".pcm"))
    limited = faults.file_size_limit(FSIZE_LIMIT)

    for args in (["compile", docs.v2], ["compile", docs.v1, "--force"]):
        proc = faults.run(args, cache=cache, preexec=limited)
        assert_one_line_error(proc, errors.EXIT_CACHE)
        assert "File too large" in proc.err, proc.err
        assert faults.snapshot(cache) == before  # old files and manifest untouched
        assert faults.temporary_files(cache) == []  # the half-written temporary file was removed

    proc = faults.run(ask_args(docs.v2), cache=cache, preexec=limited)
    assert answer(proc) == docs.ref_v2
    assert len(warnings_in(proc)) == 1 and "File too large" in proc.err, proc.err
    assert faults.snapshot(cache) == before and faults.temporary_files(cache) == []
    assert answer(faults.run(ask_args(docs.v1), cache=cache)) == docs.ref_v1
    assert faults.run(["verify"], cache=cache).code == 0


# -- kill -9 and Ctrl-C at random moments ------------------------------------------------------------


def test_kill_9_at_random_points_during_compile(docs: Docs, tmp_path: Path) -> None:
    """Seeded random moments across a whole compile: after each kill every visible module file
    is whole, the old version still answers from its cache, and a final compile finishes the job
    with the same answer as an uninterrupted one."""
    cache = tmp_path / "cache"
    assert faults.run(["compile", docs.v1], cache=cache).code == 0
    old = faults.snapshot(cache)
    t0 = time.perf_counter()
    assert faults.run(["compile", docs.v2], cache=tmp_path / "timing").code == 0
    span = time.perf_counter() - t0  # how long a whole compile takes on this machine now
    rnd = random.Random(97)
    for i in range(4):
        delay = rnd.uniform(0.1, span)
        killed = faults.signal_after(["compile", docs.v2], cache=cache, delay=delay, sig=signal.SIGKILL)
        now = faults.snapshot(cache)
        assert all(now.get(name) == data for name, data in old.items() if name.endswith(".pcm")), (i, delay)
        assert faults.damaged_files(cache) == [], (i, delay, killed.code)
        again = faults.run(ask_args(docs.v1), cache=cache)
        assert answer(again) == docs.ref_v1 and "damaged" not in again.err, (i, delay)
    final = faults.run(["compile", docs.v2], cache=cache)
    assert final.code == 0, final.err
    assert answer(faults.run(ask_args(docs.v2), cache=cache)) == docs.ref_v2
    assert faults.damaged_files(cache) == []
    assert faults.run(["verify"], cache=cache).code == 0  # left-over temporary files are no damage


def test_ctrl_c_at_random_points_during_ask(docs: Docs, tmp_path: Path) -> None:
    """SIGINT at seeded random moments after start-up, while an ask loads the model, compiles on
    demand, loads states or generates: exit 130 with one line, or a whole answer; never a
    temporary file left, never a damaged file, and the next ask answers right."""
    cache = tmp_path / "cache"
    rnd = random.Random(130)
    outcomes = []
    for i in range(6):
        cold = not faults.module_files(cache)  # then it compiles on demand for seconds: land in that
        t0 = time.perf_counter()
        p = faults.start(ask_args(docs.v1), cache=cache)
        assert faults.wait_for_llama(p.pid), "pc never loaded llama.cpp"
        time.sleep(rnd.uniform(0.0, 1.0 if cold else 0.5))
        p.send_signal(signal.SIGINT)
        proc = faults.finish(p, t0)
        if proc.code == errors.EXIT_INTERRUPTED:
            assert said(proc) == ["pc: interrupted"] and proc.out == "", proc.err
        else:
            assert answer(proc) == docs.ref_v1
        assert faults.temporary_files(cache) == [], i
        assert faults.damaged_files(cache) == [], i
        outcomes.append(proc.code)
        if i % 2:  # every other round starts from an empty cache again
            for f in faults.module_files(cache):
                f.unlink()
    assert errors.EXIT_INTERRUPTED in outcomes, outcomes  # the signal did land mid-ask
    assert answer(faults.run(ask_args(docs.v1), cache=cache)) == docs.ref_v1


# -- damaged cache files -------------------------------------------------------------------------


def test_damaged_cache_files_are_detected_recomputed_and_answered_right(docs: Docs, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert faults.run(["compile", docs.v1], cache=cache).code == 0
    rnd = random.Random(5)
    kinds = list(faults.DAMAGE_KINDS) + [rnd.choice(faults.DAMAGE_KINDS) for _ in range(4)]
    for kind in kinds:
        files = faults.module_files(cache)
        victim = rnd.choice(files)
        what = faults.damage(victim, kind, rnd, other=rnd.choice([f for f in files if f != victim]))
        proc = faults.run(ask_args(docs.v1), cache=cache)
        assert answer(proc) == docs.ref_v1, (kind, what)
        assert any("damaged" in w and "recomputing" in w for w in warnings_in(proc)), (kind, what, proc.err)
        assert faults.damaged_files(cache) == [], (kind, what)  # replaced by a whole file
        again = faults.run(ask_args(docs.v1), cache=cache)
        assert answer(again) == docs.ref_v1 and again.err == "", (kind, what)


# -- a closed stdout -----------------------------------------------------------------------------


def test_pipe_into_head_ends_quietly(docs: Docs, tmp_path: Path) -> None:
    """`pc ask ... | head -c 20` in a real shell: pc exits 0 and says nothing."""
    cache = tmp_path / "cache"
    assert faults.run(["compile", docs.v1], cache=cache).code == 0
    cmd = " ".join(f"'{a}'" for a in faults.PC + ["ask", "Write a long story about a cat.", "-s", str(docs.v1),
                                                   "-n", "200"])
    script = f"set -o pipefail; {cmd} 2>err.txt | head -c 20 > head.txt; echo $? > status.txt"
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=faults.env_for(cache), timeout=faults.TIMEOUT,
                   check=True)
    assert len((tmp_path / "head.txt").read_bytes()) == 20
    assert (tmp_path / "status.txt").read_text().strip() == "0"  # pipefail: pc's own status
    assert (tmp_path / "err.txt").read_text() == ""


# -- closed standard streams (issue 20) ----------------------------------------------------------


def _shell(cmd: list, redirects: str, cache: Path, cwd: Path) -> tuple[int, str, str]:
    """Run pc in a real shell with ``redirects`` (``>&-`` closes stdout before pc starts), its
    stdout and stderr captured in files unless closed."""
    line = " ".join(f"'{a}'" for a in faults.PC + [str(a) for a in cmd])
    script = f"{line} {redirects}; echo $? > status.txt"
    for name in ("out.txt", "err.txt"):
        (cwd / name).write_text("")
    subprocess.run(["bash", "-c", script], cwd=cwd, env=faults.env_for(cache), timeout=faults.TIMEOUT, check=True)
    return (int((cwd / "status.txt").read_text()), (cwd / "out.txt").read_text(), (cwd / "err.txt").read_text())


def test_closed_stdout_exits_8_with_one_line(docs: Docs, tmp_path: Path) -> None:
    """`pc ask ... >&-`: stdout is not there to write to (not a reader gone away): exit 8, one
    line; the cache it wrote is whole (no file of it was given descriptor 1)."""
    cache = tmp_path / "cache"
    code, _, err = _shell(ask_args(docs.v1), ">&- 2>err.txt", cache, tmp_path)
    assert code == errors.EXIT_OUTPUT and "compiled 4 module(s) on demand" in err, err
    code, _, err = _shell(ask_args(docs.v1), ">&- 2>err.txt", cache, tmp_path)  # from the cache: no report
    assert code == errors.EXIT_OUTPUT, err
    assert err.count("\n") == 1 and err.startswith("pc: cannot write to stdout"), err
    assert faults.damaged_files(cache) == [] and faults.module_files(cache)
    assert answer(faults.run(ask_args(docs.v1), cache=cache)) == docs.ref_v1


def test_closed_stderr_and_stdin_still_answer(docs: Docs, tmp_path: Path) -> None:
    """`2>&-`: the answer is printed, exit 0 (the messages are lost; the exit code still tells);
    `<&-`: a question given as an argument needs no stdin."""
    cache = tmp_path / "cache"
    code, out, _ = _shell(ask_args(docs.v1, "--timings"), "2>&- >out.txt", cache, tmp_path)
    assert code == 0 and json.loads(out)["answer"] == docs.ref_v1
    code, out, err = _shell(ask_args(docs.v1), "<&- >out.txt 2>err.txt", cache, tmp_path)
    assert code == 0 and json.loads(out)["answer"] == docs.ref_v1 and err == "", err
    code, out, err = _shell(["ask", "-", "-s", docs.v1], "<&- >out.txt 2>err.txt", cache, tmp_path)
    assert code == errors.EXIT_INPUT and out == "" and err.count("\n") == 1, err  # an empty question
    assert faults.damaged_files(cache) == []


def test_compile_whose_stderr_reader_went_away_keeps_its_files(docs: Docs, tmp_path: Path) -> None:
    """A compile whose report meets EPIPE on stderr: exit 0, every file written and whole."""
    import os

    cache = tmp_path / "cache"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before pc writes a byte
    try:
        proc = subprocess.run(faults.PC + ["compile", str(docs.v1)], stdout=subprocess.PIPE, stderr=write_end,
                              env=faults.env_for(cache), timeout=faults.TIMEOUT, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and proc.stdout == b""
    assert len(faults.module_files(cache)) == 4 and faults.damaged_files(cache) == []  # the schema's and 3 modules
    again = faults.run(ask_args(docs.v1), cache=cache)
    assert answer(again) == docs.ref_v1 and again.err == ""  # all from the cache

"""Run every hostile input and fault against real `pc` processes N times and print the table issue 7
asks for: case, tries, what happened, whether anything was lost; then the load test's count of
correct answers and each `pc ask`'s peak memory against its bound.

    .venv/bin/python scripts/fault_table.py [--tries 3] [--only hostile|faults|load] [--out FILE]

Progress goes to stderr, the markdown table to stdout (and to --out). Run it on a quiet machine:
times are printed for information (the issue asks for "within a second"), never judged here.
The cases are the tests' own: tests/support/hostile_inputs.py, tests/support/faults.py and
tests/test_cache_boundary.py (links inside the cache, sentinel files outside it).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import faults, hostile_inputs  # noqa: E402
from tests.test_load import (  # noqa: E402
    MEMORY_ALLOWANCE, N_ASKS, REQUESTS, STATE_COPIES, THREADS, file_sizes, states_by_module,
)

from promptcache_cli import default_model_path  # noqa: E402

QUESTION = "Which license is the second document?"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ask_args(schema: Path, *extra: str) -> list:
    return ["ask", QUESTION, "-s", schema, "-n", "8", "--json", *extra]


def answer_of(proc: faults.Proc) -> str | None:
    try:
        return json.loads(proc.out)["answer"] if proc.code == 0 else None
    except ValueError:
        return None


def clean_line(proc: faults.Proc) -> bool:
    return "Traceback" not in proc.err and len(proc.err_lines) == 1 and proc.err_lines[0].startswith("pc: ")


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int, str, str]] = []

    def add(self, case: str, tries: int, outcomes: Counter, lost: int, seconds: list[float]) -> None:
        what = "; ".join(f"{n}x {o}" if len(outcomes) > 1 or n != tries else o for o, n in outcomes.most_common())
        if seconds:
            what += f" ({min(seconds):.2f}-{max(seconds):.2f} s)"
        self.rows.append((case, tries, what, "nothing" if lost == 0 else f"{lost} of {tries} tries lost data"))
        log(f"  {case}: {what}; lost: {self.rows[-1][3]}")

    def markdown(self) -> str:
        out = ["| case | tries | what happened | anything lost |", "| --- | ---: | --- | --- |"]
        cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731 - a pipe inside a cell
        out += [f"| {cell(c)} | {t} | {cell(w)} | {cell(lost)} |" for c, t, w, lost in self.rows]
        return "\n".join(out)


# -- hostile input --------------------------------------------------------------------------------


def hostile(table: Table, work: Path, tries: int) -> None:
    log("hostile input")
    for case in hostile_inputs.cases(work / "inputs"):
        outcomes, lost, seconds = Counter(), 0, []
        for i in range(tries):
            cache = work / f"cache-{i}"
            proc = hostile_inputs.run(case, cache)
            seconds.append(proc.seconds)
            ok = proc.code == case.code and clean_line(proc) and proc.out == "" and all(s in proc.err for s in
                                                                                        case.says)
            outcomes[f"exit {proc.code}, one line" if ok else f"UNEXPECTED exit {proc.code}: {proc.err[-200:]!r}"] += 1
            lost += bool(cache.exists() and any(cache.rglob("*")))  # nothing may be written for bad input
            shutil.rmtree(cache, ignore_errors=True)
        table.add(f"{case.name} (`{case.args[0]}`)", tries, outcomes, lost, seconds)


# -- faults ---------------------------------------------------------------------------------------


class Docs:
    def __init__(self, work: Path) -> None:
        self.v1, self.v2 = faults.write_docs(work / "v1", 1), faults.write_docs(work / "v2", 2)
        self.ref = {}
        for schema in (self.v1, self.v2):
            cache = work / f"ref-{schema.parent.name}"
            faults.run(["compile", schema], cache=cache)
            self.ref[schema] = answer_of(faults.run(ask_args(schema), cache=cache))
            assert self.ref[schema] is not None, "the reference run failed"


def module_snapshot(cache: Path) -> dict[str, bytes]:
    return {k: v for k, v in faults.snapshot(cache).items() if k.endswith(".pcm")}


def kept(before: dict[str, bytes], cache: Path) -> bool:
    now = faults.snapshot(cache)
    return all(now.get(k) == v for k, v in before.items())


def answered(proc: faults.Proc, expected: str, warnings: int | None = None) -> str:
    got = answer_of(proc)
    if got is None:
        return f"FAILED exit {proc.code}: {proc.err[-200:]!r}"
    if got != expected:
        return "WRONG answer"
    n = sum(line.startswith("warning:") for line in proc.err_lines)
    if warnings is not None and n != warnings:
        return f"answered right, {n} warnings (expected {warnings})"
    return "answered right" + (f", {n} warning line{'s' * (n != 1)}" if warnings is not None else "")


def read_only(table: Table, docs: Docs, work: Path, tries: int) -> None:
    probe = work / "probe"
    probe.mkdir()
    faults.make_read_only(probe)
    p = faults.run(["compile", docs.v1], cache=probe, preexec=faults.drop_root_write_bypass)
    if p.code == 0:
        table.rows.append(("read-only cache", 0, "not run: this user writes into read-only folders", "-"))
        return
    for n, (label, warm, args, want) in enumerate((
        ("read-only empty cache: `pc ask`", False, ask_args(docs.v1), ("answer", docs.ref[docs.v1], 1)),
        ("read-only cache of another revision: `pc ask`", True, ask_args(docs.v2), ("answer", docs.ref[docs.v2], 1)),
        ("read-only full cache: `pc ask`", True, ask_args(docs.v1), ("answer", docs.ref[docs.v1], 0)),
        ("read-only empty cache: `pc compile`", False, ["compile", docs.v1], ("exit", 5)),
        ("read-only full cache: `pc compile`", True, ["compile", docs.v1], ("exit", 5)),
    )):
        outcomes, lost, seconds = Counter(), 0, []
        for i in range(tries):
            cache = work / f"ro-{n}-{i}"
            if warm:
                faults.run(["compile", docs.v1], cache=cache)
            else:
                cache.mkdir()
            faults.make_read_only(cache)
            before = faults.snapshot(cache)
            proc = faults.run(args, cache=cache, preexec=faults.drop_root_write_bypass)
            seconds.append(proc.seconds)
            if want[0] == "answer":
                outcomes[answered(proc, want[1], want[2])] += 1
            else:
                outcomes[f"exit {proc.code}, one line" if clean_line(proc) else f"UNEXPECTED {proc.err!r}"] += 1
            lost += faults.snapshot(cache) != before
            faults.make_writable(cache)
        table.add(label, tries, outcomes, lost, seconds)


def full_disk(table: Table, docs: Docs, work: Path, tries: int) -> None:
    limit = faults.file_size_limit(64 * 1024)
    for n, (label, args, want) in enumerate((
        ("file-size limit mid-write: `pc compile` of a new revision", ["compile", docs.v2], ("exit", 5)),
        ("file-size limit mid-write: `pc compile --force`", ["compile", docs.v1, "--force"], ("exit", 5)),
        ("file-size limit mid-write: `pc ask` of a new revision", ask_args(docs.v2), ("answer", docs.ref[docs.v2], 1)),
    )):
        outcomes, lost, seconds = Counter(), 0, []
        for i in range(tries):
            cache = work / f"fsize-{n}-{i}"
            faults.run(["compile", docs.v1], cache=cache)
            before = faults.snapshot(cache)
            proc = faults.run(args, cache=cache, preexec=limit)
            seconds.append(proc.seconds)
            if want[0] == "answer":
                outcomes[answered(proc, want[1], want[2])] += 1
            else:
                ok = proc.code == 5 and clean_line(proc)
                why = proc.err_lines[0].rsplit(": ", 1)[-1] if ok else ""
                outcomes[f"exit 5, one line (\"{why}\")" if ok else f"UNEXPECTED {proc.err!r}"] += 1
            temp = faults.temporary_files(cache)
            lost += faults.snapshot(cache) != before or bool(temp) or bool(faults.damaged_files(cache))
        table.add(label, tries, outcomes, lost, seconds)


def kill_9(table: Table, docs: Docs, work: Path, tries: int) -> None:
    cache = work / "kill9"
    faults.run(["compile", docs.v1], cache=cache)
    old = module_snapshot(cache)
    t0 = time.perf_counter()
    faults.run(["compile", docs.v2], cache=work / "kill9-timing")
    span = time.perf_counter() - t0
    rnd = random.Random(9)
    outcomes, lost = Counter(), 0
    for i in range(tries):
        if i % 3 == 0:  # start over now and then, so kills land early in a compile too
            for f in faults.module_files(cache):
                if f.name not in {Path(k).name for k in old}:
                    f.unlink()
        delay = rnd.uniform(0.1, span)
        faults.signal_after(["compile", docs.v2], cache=cache, delay=delay, sig=signal.SIGKILL)
        bad = faults.damaged_files(cache)
        after = faults.run(ask_args(docs.v1), cache=cache)
        ok = not bad and answer_of(after) == docs.ref[docs.v1] and "damaged" not in after.err
        outcomes["old revision answers right, every file whole" if ok else f"FAILED {bad} {after.err!r}"] += 1
        lost += not kept(old, cache)
    final = faults.run(["compile", docs.v2], cache=cache)
    recovered = final.code == 0 and answer_of(faults.run(ask_args(docs.v2), cache=cache)) == docs.ref[docs.v2]
    table.add(f"`kill -9` of `pc compile` at random moments (0.1-{span:.1f} s)", tries, outcomes, lost, [])
    case, n, what, gone = table.rows[-1]
    then = "a full compile then recovered, new revision answered right" if recovered else "NOT RECOVERED"
    table.rows[-1] = (case, n, f"{what}; {then}", gone)


def ctrl_c(table: Table, docs: Docs, work: Path, tries: int) -> None:
    rnd = random.Random(130)
    for label, after_start in (("Ctrl-C during `pc ask` (0-3 s after llama.cpp is loaded)", True),
                               ("Ctrl-C during `pc ask` start-up (0-0.4 s after exec, Python importing)", False)):
        cache = work / f"ctrlc-{after_start}"
        outcomes, lost, seconds = Counter(), 0, []
        for i in range(tries):
            if i % 2:
                shutil.rmtree(cache, ignore_errors=True)
            t0 = time.perf_counter()
            p = faults.start(ask_args(docs.v1), cache=cache)
            if after_start:
                faults.wait_for_llama(p.pid)
                time.sleep(rnd.uniform(0.0, 3.0))
            else:
                time.sleep(rnd.uniform(0.0, 0.4))
            p.send_signal(signal.SIGINT)
            proc = faults.finish(p, t0)
            seconds.append(proc.seconds)
            if proc.code == 130 and proc.err_lines == ["pc: interrupted"] and proc.out == "":
                outcomes["exit 130, one line"] += 1
            elif answer_of(proc) == docs.ref[docs.v1] and "Traceback" not in proc.err:
                outcomes["finished first: right answer"] += 1
            else:
                last = proc.err_lines[-1][:60] if proc.err_lines else ""
                outcomes[f"exit {proc.code} with {len(proc.err_lines)} stderr lines ({last})"] += 1
            lost += bool(faults.temporary_files(cache)) or bool(faults.damaged_files(cache))
        table.add(label, tries, outcomes, lost, seconds)


def closed_stdout(table: Table, docs: Docs, work: Path, tries: int) -> None:
    import subprocess

    cache = work / "closed"
    faults.run(["compile", docs.v1], cache=cache)
    cmd = " ".join(f"'{a}'" for a in faults.PC + ["ask", "Write a long story about a cat.", "-s", str(docs.v1),
                                                   "-n", "200"])
    outcomes = Counter()
    for _ in range(tries):
        script = f"set -o pipefail; {cmd} 2>err.txt | head -c 20 > head.txt; echo $? > status.txt"
        subprocess.run(["bash", "-c", script], cwd=work, env=faults.env_for(cache), check=False)
        status = (work / "status.txt").read_text().strip()
        err = (work / "err.txt").read_text()
        outcomes[f"exit {status}, {len((work / 'head.txt').read_bytes())} bytes read, stderr "
                 f"{'empty' if not err else repr(err[-80:])}"] += 1
    table.add("closed stdout: `pc ask ... | head -c 20`", tries, outcomes, 0, [])


def closed_streams(table: Table, docs: Docs, work: Path, tries: int) -> None:
    """Standard streams closed before pc starts, and a compile whose stderr reader is gone."""
    import os
    import subprocess

    from tests.test_faults import _shell

    cache = work / "streams"
    faults.run(["compile", docs.v1], cache=cache)
    for label, redirects, want in (("closed stdout: `pc ask ... >&-`", ">&- 2>err.txt", "exit 8"),
                                   ("closed stderr: `pc ask ... 2>&-`", "2>&- >out.txt", "answer"),
                                   ("closed stdin: `pc ask QUESTION ... <&-`", "<&- >out.txt 2>err.txt", "answer")):
        outcomes, lost = Counter(), 0
        for _ in range(tries):
            code, out, err = _shell(ask_args(docs.v1), redirects, cache, work)
            if want == "exit 8":
                ok = code == 8 and err.count("\n") == 1 and err.startswith("pc: ")
                outcomes["exit 8, one line" if ok else f"UNEXPECTED exit {code}: {err[-120:]!r}"] += 1
            else:
                got = json.loads(out)["answer"] if code == 0 and out else None
                outcomes["answer printed, exit 0" if got == docs.ref[docs.v1] else f"UNEXPECTED exit {code}"] += 1
            lost += bool(faults.damaged_files(cache))
        table.add(label, tries, outcomes, lost, [])
    outcomes, lost = Counter(), 0
    for i in range(tries):
        fresh = work / f"epipe-{i}"
        read_end, write_end = os.pipe()
        os.close(read_end)
        proc = subprocess.run(faults.PC + ["compile", str(docs.v1)], stdout=subprocess.PIPE, stderr=write_end,
                              env=faults.env_for(fresh), check=False)
        os.close(write_end)
        whole = len(faults.module_files(fresh)) == 4 and not faults.damaged_files(fresh)
        outcomes[f"exit {proc.returncode}, files {'kept whole' if whole else 'MISSING'}"] += 1
        lost += not whole
    table.add("EPIPE on stderr during `pc compile`", tries, outcomes, lost, [])


def damaged(table: Table, docs: Docs, work: Path, tries: int) -> None:
    rnd = random.Random(5)
    cache = work / "damaged"
    faults.run(["compile", docs.v1], cache=cache)
    for kind in faults.DAMAGE_KINDS:
        outcomes, lost = Counter(), 0
        for _ in range(tries):
            files = faults.module_files(cache)
            victim = rnd.choice(files)
            faults.damage(victim, kind, rnd, other=rnd.choice([f for f in files if f != victim]))
            proc = faults.run(ask_args(docs.v1), cache=cache)
            detected = any("damaged" in line for line in proc.err_lines)
            seen = "detected, recomputed, " if detected else "NOT DETECTED, "
            outcomes[seen + answered(proc, docs.ref[docs.v1])] += 1
            lost += bool(faults.damaged_files(cache))
        table.add(f"damaged cache file: {kind}", tries, outcomes, lost, [])


# -- the cache's boundary (issue 20) -------------------------------------------------------------


def boundary(table: Table, docs: Docs, work: Path, tries: int) -> None:
    """Links inside the cache to folders of sentinel files outside it (tests/test_cache_boundary.py):
    each command runs on a fresh copy; "lost" counts tries where anything outside changed."""
    from tests.test_cache_boundary import link_everywhere, sentinels, state

    schema = docs.v1
    template = work / "template"
    faults.run(["compile", schema], cache=template)
    prefix_ref = answer_of(faults.run(ask_args(schema, "--mode", "prefix"), cache=template))
    cases = (
        ("`pc gc --max-size 1 --grace 0s`", ["gc", "--max-size", "1", "--grace", "0s"], "exit 0"),
        ("`pc gc --older-than 0s --grace 0s`", ["gc", "--older-than", "0s", "--grace", "0s"], "exit 0"),
        ("`pc rm SCHEMA`", ["rm", schema], "exit 0"),
        ("`pc ask` (modular)", ask_args(schema), docs.ref[schema]),
        ("`pc ask --mode prefix`", ask_args(schema, "--mode", "prefix"), prefix_ref),
        ("`pc compile --force`", ["compile", schema, "--force"], "exit 0"),
        ("`pc compile --mode prefix --force`", ["compile", schema, "--mode", "prefix", "--force"], "exit 0"),
        ("`pc verify`", ["verify"], "exit 0"),
    )
    for n, (label, args, want) in enumerate(cases):
        outcomes, lost, seconds = Counter(), 0, []
        for i in range(tries):
            cache = work / f"b-{n}-{i}"
            shutil.copytree(template, cache, symlinks=True)
            outside = sentinels(work / f"outside-{n}-{i}")
            links = link_everywhere(cache, outside)
            before = state(outside)
            proc = faults.run(args, cache=cache)
            seconds.append(proc.seconds)
            if want == "exit 0":
                ok = proc.code == 0 and "Traceback" not in proc.err
                outcomes["exit 0" if ok else f"UNEXPECTED exit {proc.code}: {proc.err[-120:]!r}"] += 1
            else:
                outcomes[answered(proc, want)] += 1
            lost += state(outside) != before or not all(p.is_symlink() for p in links)
        table.add(f"links to sentinel folders inside the cache: {label}", tries, outcomes, lost, seconds)


def race(work: Path, rounds: int) -> str:
    """The gc-beside-asks load test (tests/test_gc_beside_asks.py), ``rounds`` times."""
    from tests.test_gc_beside_asks import QUESTION as Q, REQUESTS as R, THREADS as T

    log("race")
    work.mkdir(parents=True)
    schema = faults.write_docs(work / "docs", 1)
    refs = {r: answer_of(faults.run(["ask", Q, "-s", schema, "-n", "8", "--json", *r], cache=work / "ref", **T))
            for r in set(R)}
    passed, evicted, failures = 0, 0, Counter()
    for i in range(rounds):
        cache = work / f"race-{i}"
        if i % 2:
            faults.run(["compile", schema], cache=cache, **T)
        got = faults.gc_beside_asks(Q, schema, cache, R, **T)
        right = sum(answer_of(p) == refs[r] for r, p in got.asks)
        for r, p in got.asks:
            if answer_of(p) != refs[r]:
                why = (f"exit {p.code}: {p.err_lines[-1][:100] if p.err_lines else ''}" if answer_of(p) is None
                       else f"another answer ({' '.join(r) or 'default'}): {answer_of(p)!r}")
                failures[why] += 1
                log(f"    {why}")
        passed += right == len(got.asks) and all(g.code == 0 for g in got.gcs)
        evicted += got.evicted
        log(f"  round {i + 1}: {right}/{len(got.asks)} right, {len(got.gcs)} gc runs, {got.evicted} files evicted")
        shutil.rmtree(cache, ignore_errors=True)
    text = (f"gc beside asks (`pc gc --max-size 1 --grace 0s` in a loop beside eight concurrent asks, "
            f"modular and prefix mode, empty and compiled caches): {passed}/{rounds} rounds with every ask right "
            f"and every gc clean; {evicted} files evicted while asks ran.")
    if failures:
        text += " Failures: " + "; ".join(f"{n}x {w}" for w, n in failures.items())
    return text


# -- load -----------------------------------------------------------------------------------------


def load(work: Path, rounds: int) -> str:
    log("load")
    schema = faults.write_docs(work / "load-docs", 1)
    ref_cache = work / "load-ref"
    faults.run(["compile", schema], cache=ref_cache, **THREADS)
    refs = {r: answer_of(faults.run(["ask", QUESTION, "-s", schema, "-n", "8", "--json", *r], cache=ref_cache,
                                    **THREADS)) for r in REQUESTS}
    ref_states, sizes = states_by_module(ref_cache), file_sizes(ref_cache)
    model = default_model_path().stat().st_size
    lines = ["| load round | answers right | errors | cache verifies, same states | peak RSS per ask (min-max) | "
             "bound for the largest |", "| --- | ---: | ---: | --- | ---: | ---: |"]
    for i in range(rounds):
        for forced in (False, True):
            cache = work / f"load-{i}-{forced}"
            if forced:
                faults.run(["compile", schema], cache=cache, **THREADS)
            t0 = time.perf_counter()
            compiling = faults.start(["compile", schema] + (["--force"] if forced else []), cache=cache, **THREADS)
            asks = [(r, faults.start(["ask", QUESTION, "-s", schema, "-n", "8", "--json", *r], cache=cache,
                                     measured=True, **THREADS))
                    for r in (REQUESTS[k % len(REQUESTS)] for k in range(N_ASKS))]
            done = [(r, faults.finish(p, t0)) for r, p in asks]
            comp = faults.finish(compiling, t0)
            right = sum(answer_of(p) == refs[r] for r, p in done)
            errors = sum(p.code != 0 for _, p in done) + (comp.code != 0)
            consistent = faults.run(["verify"], cache=cache).code == 0 and states_by_module(cache) == ref_states
            worst = max(done, key=lambda rp: rp[1].max_rss)
            names = {"(schema)"} | ({worst[0][1]} if worst[0] else set(sizes))
            bound = model + STATE_COPIES * sum(sizes[n] for n in names) + MEMORY_ALLOWANCE
            lines.append(f"| {'forced compile over a full cache' if forced else 'empty cache'} #{i + 1} | "
                         f"{right}/{N_ASKS} | {errors} | {'yes' if consistent else 'NO'} | "
                         f"{min(p.max_rss for _, p in done) / 1e6:.1f}-{worst[1].max_rss / 1e6:.1f} MB | "
                         f"{bound / 1e6:.1f} MB |")
            log("  " + lines[-1])
    return "\n".join(lines) + (f"\n\nModel file {model / 1e6:.1f} MB; bound = model + {STATE_COPIES} x state bytes "
                               f"the ask uses + {MEMORY_ALLOWANCE >> 20} MiB (tests/test_load.py).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, default=3, help="how many times each case runs")
    ap.add_argument("--only", choices=["hostile", "faults", "streams", "boundary", "race", "load"],
                    help="run one part only")
    ap.add_argument("--race-rounds", type=int, default=20, help="rounds of the gc-beside-asks race")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pc-fault-table-"))
    table, parts = Table(), []
    try:
        if args.only in (None, "hostile"):
            hostile(table, work / "hostile", args.tries)
        if args.only in (None, "faults"):
            log("faults")
            docs = Docs(work)
            for part in (read_only, full_disk, kill_9, ctrl_c, closed_stdout, closed_streams, damaged):
                folder = work / part.__name__
                folder.mkdir()
                part(table, docs, folder, args.tries if part is not kill_9 else max(args.tries, 6))
        if args.only == "streams":
            folder = work / "streams"
            folder.mkdir()
            closed_streams(table, Docs(folder), folder, args.tries)
        if args.only in (None, "boundary"):
            log("boundary")
            folder = work / "boundary"
            folder.mkdir()
            boundary(table, Docs(folder), folder, args.tries)
        if table.rows:
            parts.append(table.markdown())
        if args.only in (None, "race"):
            parts.append(race(work / "race", args.race_rounds))
        if args.only in (None, "load"):
            parts.append(load(work, max(1, args.tries // 3)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n\n".join(parts) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

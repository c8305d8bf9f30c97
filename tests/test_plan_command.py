"""`pc plan`: run as a real process, and once in process on a Typer app of its own. JSON shape and
values, the table, trace files and recorded histories, and one-line errors with their exit codes."""

from __future__ import annotations

import bisect
import json
import math
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from promptcache_cli.prefix import checkpoint_plan as cp
from promptcache_cli import errors
from promptcache_cli.store.overlap_log import OverlapLog
from promptcache_cli.cli.plan import plan

from .support.pc_process import Run, ok, pc

TRACE = [  # system prompt only, a document with two branch points, full reuse
    {"tokens": 900, "overlap": 310}, {"tokens": 4500, "overlap": 312}, {"tokens": 2300, "overlap": 2210},
    {"tokens": 4600, "overlap": 4404}, {"tokens": 2500, "overlap": 2200}, {"tokens": 400, "overlap": 0},
    {"tokens": 3300, "overlap": 3100}, {"tokens": 4500, "overlap": 4404},
]
DEPTHS = [r["overlap"] for r in TRACE]


def pc_plan(*args: str | Path) -> Run:
    return pc("plan", *args)


def failed(run: Run, code: int) -> str:
    """The one-line error of a run that must exit ``code``."""
    assert run.code == code, f"exit {run.code}, stderr: {run.err}"
    assert run.out == "" and "Traceback" not in run.err
    assert run.err.startswith("pc: ") and run.err.count("\n") == 1, run.err
    return run.err


def write_trace(folder: Path, records: list[dict], name: str = "trace.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_json_holds_every_strategy_with_its_positions_and_expected_tokens(tmp_path):
    run = ok(pc_plan("--trace", write_trace(tmp_path, TRACE), "--checkpoints", "2", "--decay", "1", "--json"))
    assert run.err == ""
    report = run.json()
    assert set(report["strategies"]) == {"dp", "block", "uniform", "sqrt", "dyadic"}
    expected = cp.compare(DEPTHS, length=4404, checkpoints=2, decay=1.0)
    for name, entry in report["strategies"].items():
        assert set(entry) == {"positions", "expected_recomputed_tokens"}
        assert entry["positions"] == list(expected[name].positions)
        assert entry["expected_recomputed_tokens"] == round(expected[name].expected_recomputed_tokens, 3)
    # {2200, 3100} recomputes 310 + 312 + 10 tokens; {310, 2200} would recompute 2 + 10 + 900
    assert report["strategies"]["dp"]["positions"] == [2200, 3100]
    assert report["strategies"]["dp"]["expected_recomputed_tokens"] == (310 + 312 + 10) / 8
    assert report["length"] == 4404 and report["requests"] == 8 and report["checkpoints"] == 2


def test_json_costs_are_the_exact_weighted_means_over_the_trace_and_say_so(tmp_path):
    """On a generated trace with the default decay: every strategy's figure is the weighted mean,
    request by request, of depth - deepest position <= depth (the end state kept), with weights
    0.99 ** (N - 1 - i) in trace order; and the JSON names its weighting, cost and units."""
    trace = tmp_path / "documents.jsonl"
    subprocess.run([sys.executable, Path(__file__).resolve().parent.parent / "scripts" / "make_trace.py",
                    "--kind", "documents", "--requests", "400", "--seed", "3", "--out", trace],
                   check=True, capture_output=True)
    depths = [json.loads(line)["overlap"] for line in trace.read_text().splitlines()]
    length, n = max(depths), len(depths)
    report = ok(pc_plan("--trace", trace, "--checkpoints", "5", "--json")).json()
    weights = [0.99 ** (n - 1 - i) for i in range(n)]
    for name, entry in report["strategies"].items():
        stops = [0, *entry["positions"], length]
        recomputed = [d - stops[bisect.bisect_right(stops, d) - 1] for d in depths]
        exact = sum(w * r for w, r in zip(weights, recomputed, strict=True)) / sum(weights)
        assert abs(entry["expected_recomputed_tokens"] - exact) <= 5e-4, name
        assert len(entry["positions"]) <= 5 and all(0 < p < length for p in entry["positions"])
    assert all(report["strategies"]["dp"]["expected_recomputed_tokens"] <= s["expected_recomputed_tokens"]
               for s in report["strategies"].values())
    assert report["decay"] == 0.99 and report["weight"] == round(sum(weights), 3)
    assert report["requests_at_end"] == sum(d == length for d in depths) > 0
    assert "decay ** (N - 1 - i)" in report["weighting"] and "trace order" in report["weighting"]
    assert report["cost"].startswith("exact") and "requests at d >= length count 0" in report["cost"]
    assert report["units"]["expected_recomputed_tokens"] == "shared tokens recomputed per request (weighted mean)"
    assert report["resolution_tokens"] == 1 and report["block_tokens"] == cp.BLOCK_TOKENS
    assert report["sqrt_tokens"] == math.ceil(math.sqrt(length))


def test_the_table_goes_to_stdout(tmp_path):
    run = ok(pc_plan("--trace", write_trace(tmp_path, TRACE), "--checkpoints", "2"))
    assert run.err == ""
    for word in ("recomputed tokens per request", "vs dp", *cp.STRATEGIES):
        assert word in run.out
    dp = cp.compare(DEPTHS, length=4404, checkpoints=2)["dp"]
    assert ", ".join(map(str, dp.positions)) in run.out
    assert f"{dp.expected_recomputed_tokens:,.1f}" in run.out


def test_from_a_recorded_history(tmp_path):
    log = OverlapLog(tmp_path / "prefix" / "key")
    for r in TRACE:
        log.append(tokens=r["tokens"], overlap=r["overlap"])
    report = ok(pc_plan("--history", log.directory, "--checkpoints", "3", "--json")).json()
    assert report["requests"] == 8 and report["decay"] == cp.DECAY
    assert report["weight"] == round(float(cp.decay_weights(8).sum()), 3)
    assert report["strategies"]["dp"]["positions"] == list(cp.plan_for(DEPTHS, length=4404, checkpoints=3))


def test_without_requests_the_plan_needs_a_length_and_is_evenly_spaced(tmp_path):
    err = failed(pc_plan("--history", tmp_path / "nothing"), errors.EXIT_INPUT)
    assert "holds no requests: give --length L" in err
    run = ok(pc_plan("--history", tmp_path / "nothing", "--length", "1000", "--checkpoints", "3", "--json"))
    report = run.json()
    assert report["strategies"]["dp"]["positions"] == [250, 500, 750]
    assert all(s["expected_recomputed_tokens"] == 0 for s in report["strategies"].values())
    assert "the plan is the default, evenly spaced" in run.err


def test_zero_checkpoints(tmp_path):
    report = ok(pc_plan("--trace", write_trace(tmp_path, TRACE), "--checkpoints", "0", "--decay", "1", "--json")).json()
    assert {name: s["positions"] for name, s in report["strategies"].items()} == dict.fromkeys(cp.STRATEGIES, [])
    assert {s["expected_recomputed_tokens"] for s in report["strategies"].values()} == {sum(d for d in DEPTHS if d < 4404) / 8}


def test_a_bad_trace_is_one_line_and_exit_3(tmp_path):
    path = write_trace(tmp_path, TRACE[:1])
    with path.open("a") as f:
        f.write('{"tokens": 100, "overlap": 200}\n')
    err = failed(pc_plan("--trace", path), errors.EXIT_INPUT)
    assert err == f"pc: {path}:2: 'overlap' (200) is larger than 'tokens' (100)\n"
    path.write_bytes(b'{"tokens": 100, "overlap": 20}\n{"tokens": 1\n')
    assert failed(pc_plan("--trace", path, "--json"), errors.EXIT_INPUT).startswith(f"pc: {path}:2: not JSON")
    err = failed(pc_plan("--trace", tmp_path / "missing.jsonl"), errors.EXIT_INPUT)
    assert err == f"pc: {tmp_path / 'missing.jsonl'}: cannot read: No such file or directory\n"


def test_bad_options_are_usage_errors(tmp_path):
    trace = write_trace(tmp_path, TRACE)
    assert "give one of -s SCHEMA, --trace FILE or --history SCHEMA|DIR" in failed(pc_plan(), errors.EXIT_USAGE)
    failed(pc_plan("--trace", trace, "--history", tmp_path), errors.EXIT_USAGE)
    err = failed(pc_plan("--trace", trace, "--length", "4000"), errors.EXIT_USAGE)
    assert "--length 4000 is shorter than the deepest overlap" in err
    assert "--decay must be in (0, 1]" in failed(pc_plan("--trace", trace, "--decay", "0"), errors.EXIT_USAGE)
    failed(pc_plan("--trace", trace, "--checkpoints", "-1"), errors.EXIT_USAGE)


def test_in_a_typer_app_of_its_own(tmp_path):
    app = typer.Typer()
    app.command("plan")(plan)
    app.command("other")(lambda: None)  # two commands: `plan` is a subcommand, as in pc
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--trace", str(write_trace(tmp_path, TRACE)), "--json", "--checkpoints", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["strategies"]["dp"]["positions"] == list(
        cp.plan_for(DEPTHS, length=4404, checkpoints=1))
    bad = write_trace(tmp_path, [{"tokens": 1}], name="bad.jsonl")
    result = runner.invoke(app, ["plan", "--trace", str(bad)])
    assert isinstance(result.exception, errors.InputError)  # cli.main() maps it to exit 3
    assert errors.exit_code_for(result.exception) == errors.EXIT_INPUT
    assert str(result.exception) == f"{bad}:1: missing 'overlap'"

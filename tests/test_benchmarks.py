"""The benchmark suite end to end at its smallest (real model, one tiny workload, one round, every
system once, whole processes included, two quality questions): the files it writes exist and are
well formed. No timing is asserted: speed is measured by `make bench`, never by tests."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from promptcache_cli.cli.bench import bench
from promptcache_cli.benchmarks import suite
from promptcache_cli.benchmarks.systems import NOT_BUILT

TINY = suite.BenchConfig(sections=("docqa", "quality", "rag"), levels=(256,), slots=2, pool=3, rounds=1, fast_repeats=1,
                         process_rounds=1, process_levels=(256,), q8_levels=(256,), quality_questions=2, quality_doc_tokens=64,
                         quality_slots=2, quality_docs=3, quality_tokens=4, repair_tokens=(4,),
                         rag_questions=2, rag_docs=3, rag_doc_tokens=80, rag_tokens=4, rag_servers=False)
MEASURED = ("nocache", "pc", "pc-zstd", "pc-q8", "llama-ram", "llama-disk")  # and pc-prefix, when it is built


@pytest.fixture(scope="module")
def outputs(model_path, tmp_path_factory):
    work, out = tmp_path_factory.mktemp("bench-work"), tmp_path_factory.mktemp("bench-out")
    messages: list[str] = []
    res = suite.run(TINY, model_path=model_path, work=work, progress=messages.append)
    paths = suite.write(res, out, stamp="tiny")
    return paths, messages


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_json_holds_every_system_measured(outputs):
    paths, messages = outputs
    res = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert any("estimated run time" in m for m in messages)
    [w] = res["workloads"]
    assert w["name"] == "docqa-256" and 150 < w["prompt_tokens"] < 300
    built = w["systems"]["pc-prefix"]["status"] != NOT_BUILT
    for name in MEASURED + (("pc-prefix",) if built else ()):
        s = w["systems"][name]
        assert s["status"] == "ok", (name, s["status"])
        assert len(s["ttft_ms"]) >= 1 and all(t > 0 for t in s["ttft_ms"]), name
        p = s["process"]
        assert p["errors"] == [] and len(p["wall_ms"]) == 1, (name, p)
        assert p["peak_rss_bytes"][0] > 50e6  # a whole process holding a model
    for name in ("pc", "pc-zstd", "pc-q8", "llama-disk", "llama-ram"):
        assert w["systems"][name]["cache_bytes"] > 0, name
    sizes = {name: w["systems"][name]["cache_bytes"] for name in ("pc", "pc-zstd", "pc-q8")}
    assert sizes["pc-q8"] < sizes["pc-zstd"] < sizes["pc"]  # q8_0 about half, zstd about 15% off
    assert w["systems"]["nocache"]["cache_bytes"] is None
    assert w["floor"]["ttft_ms"] and all(t > 0 for t in w["floor"]["ttft_ms"])
    assert built or "pc prefix mode" in res["notes"][-1]  # not built: said so, not dropped
    # llama-cpp-python saw pc's prompt as text: re-tokenized, nearly the same length
    for name in ("llama-ram", "llama-disk"):
        assert abs(w["systems"][name]["prompt_tokens"][0] - w["prompt_tokens_per_question"][0]) <= 8


def test_rag_answers_pasted_documents_from_learned_text(outputs):
    """The RAG section: prompts with no schema, documents learned in the warm-ups found again in
    other orders, every system beside --no-cache and the noise control."""
    paths, _ = outputs
    res = json.loads(paths["json"].read_text(encoding="utf-8"))
    r = res["rag"]
    assert r["questions"] == len(r["rows"]) == 2 and r["generated_tokens"] == 4
    assert {"nocache", "pc-r0", r["control"]} <= set(r["summary"])
    for row in r["rows"]:
        pc_row, ref = row["pc-r0"], row["nocache"]
        assert pc_row["cached_tokens"] > 80 and pc_row["spans"] >= 2  # documents found wherever they stand
        assert pc_row["cached_tokens"] + pc_row["computed_tokens"] == ref["computed_tokens"] == row["prompt_tokens"]
        assert ref["cached_tokens"] == 0 and len(ref["tokens"]) <= 4
        assert row[r["control"]]["tokens"]
    assert r["systems"]["pc-r0"]["bytes"] > 0 and r["systems"]["nocache"]["bytes"] is None
    assert r["missing_systems"]  # the servers not run are named, not dropped (TINY runs none)
    md = paths["md"].read_text(encoding="utf-8")
    assert "## (d) RAG" in md and "Not measured in this run" in md
    rag_targets = [t for t in res["targets"] if t["target"].startswith("RAG") or "(RAG" in t["target"]]
    assert any(t["value"] is not None for t in rag_targets) and any(t["value"] is None for t in rag_targets)


def test_quality_compares_every_variant_with_no_cache(outputs):
    res = json.loads(outputs[0]["json"].read_text(encoding="utf-8"))
    q = res["quality"]
    assert q["questions"] == 2 and len(q["rows"]) == 2
    names = [v["name"] for v in q["variants"]]
    assert {"scaffold", "independent", "scaffold+refresh5", "scaffold-q8_0"} <= set(names)
    for row in q["rows"]:
        assert row["gaps"] == 0  # equal-length documents: the cached prompt is contiguous
        assert row["expected"] and len(row["nocache"]["tokens"]) <= 4
        for name in names:
            m = row[name]
            assert m["kl"] >= -1e-9 and isinstance(m["exact_match"], bool)
            assert m["exact_match"] == (m["tokens"] == row["nocache"]["tokens"])
        # the controls: the uncached prompt's own states reloaded give the uncached answer
        assert row["exact-reload"]["tokens"] == row["nocache"]["tokens"]
        assert row["exact-reload"]["kl"] < 1e-6 and row["exact-m9"]["kl"] >= -1e-9
        # the selective-recompute candidate recomputes 5% of the prompt on top of the question
        assert row["scaffold+refresh5"]["computed_tokens"] > row["scaffold"]["computed_tokens"]
        assert row["scaffold-q8_0"]["same_as_f16"] == (row["scaffold-q8_0"]["tokens"] == row["scaffold"]["tokens"])
    for name in names + q["controls"]:
        s = q["summary"][name]
        assert 0 <= s["exact_match_rate"] <= 1 and 0 <= s["needle_accuracy"] <= 1
        assert s["needles_only_cached"] == sum(r[name]["correct"] and not r["nocache"]["correct"] for r in q["rows"])
        assert s["needles_only_nocache"] == sum(r["nocache"]["correct"] and not r[name]["correct"] for r in q["rows"])
        assert 0 < s["needle_mcnemar_p"] <= 1
    assert 0 <= q["summary"]["scaffold-q8_0"]["same_as_f16_rate"] <= 1
    met = [t["met"] for t in res["targets"] if "RAG" not in t["target"]]
    assert met[:3] == [None, None, None]  # no 4k workload in this run
    assert met.count(None) == 6  # the six 4k targets; the quality ones are measured


def test_needle_is_found_as_a_whole_word_or_number():
    from promptcache_cli.benchmarks.needles import found

    assert found("6", "Releases ship every 6 weeks.") and found("Pim", "The mascot is named Pim.")
    assert not found("6", "every 16 weeks") and not found("6", "version 1.6 of the license")
    assert not found("Pim", "Pimlico") and found(None, "anything") is None


def test_mcnemar_split_of_needles():
    from promptcache_cli.benchmarks.quality import _discordance

    # 3 needles found only without the cache, 1 only with it: p = 2 * (1 + 4) / 16
    got = _discordance([True, False, False, False, True], [False, True, True, True, True])
    assert got == {"needles_only_cached": 1, "needles_only_nocache": 3, "needle_mcnemar_p": 0.625}
    assert _discordance([True], [True])["needle_mcnemar_p"] == 1.0
    assert _discordance([False] * 6, [True] * 6)["needle_mcnemar_p"] == 2 / 64


def test_markdown_and_plots(outputs):
    paths, _ = outputs
    md = paths["md"].read_text(encoding="utf-8")
    assert md.startswith("# pc bench") and "## Targets" in md and "## Answer quality" in md
    for label in ("pc ask --no-cache", "LlamaRAMCache", "LlamaDiskCache", "--compression zstd", "physical floor",
                  "pc prefix mode", "Whole processes"):
        assert label in md, label
    for key in ("ttft", "bytes"):
        w, h = _png_size(paths[key])
        assert w > 400 and h > 300
        assert f"({paths[key].name})" in md


def test_agreement_by_answer_length(outputs):
    from promptcache_cli.benchmarks import report

    assert report.horizons(32) == (1, 2, 4, 8, 16, 32) and report.horizons(4) == (1, 2, 4)
    assert report.horizons(12) == (1, 2, 4, 8, 12) and report.horizons(1) == (1,)
    rows = [{"nocache": {"tokens": [1, 2, 3, 4]}, "c": {"tokens": [1, 2, 9, 4]}},
            {"nocache": {"tokens": [1, 2]}, "c": {"tokens": [1, 2, 5]}}]  # the uncached answer ended sooner
    assert [report.agreement_at(rows, "c", k) for k in (1, 2, 3, 4)] == [1.0, 1.0, 0.0, 0.0]
    assert report.agreement_at(rows, "nocache", 2, ref="c") == 1.0
    # in the run: the longest horizon is the exact-match rate, and agreement only falls with length
    res = json.loads(outputs[0]["json"].read_text(encoding="utf-8"))
    q = res["quality"]
    ks = report.horizons(q["generated_tokens"])
    for name in [v["name"] for v in q["variants"]] + q["controls"]:
        shares = [report.agreement_at(q["rows"], name, k) for k in ks]
        assert shares[-1] == q["summary"][name]["exact_match_rate"], name
        assert shares == sorted(shares, reverse=True), name
    md = outputs[0]["md"].read_text(encoding="utf-8")
    assert "Same first k greedy tokens as --no-cache" in md and "| control: exact-reload | 100% |" in md
    assert "scaffold-q8_0 against the f16 scaffold cache's answer" in md


def test_render_writes_the_report_again_from_the_json(outputs, tmp_path):
    paths, _ = outputs
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    copy = tmp_path / "run.json"
    copy.write_bytes(paths["json"].read_bytes())
    proc = subprocess.run([sys.executable, str(script), "--render", str(copy)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "run.md").read_text(encoding="utf-8")
    assert md == paths["md"].read_text(encoding="utf-8").replace("tiny-", "run-")  # the plots take the new stem
    assert copy.read_bytes() == paths["json"].read_bytes()  # the measurements are left as they were
    assert (tmp_path / "run-ttft.png").exists() and proc.stdout.startswith("# pc bench")


def test_command_options_and_errors(tmp_path):
    app = typer.Typer()
    app.command()(bench)
    app.command("noop")(lambda: None)
    run = CliRunner().invoke(app, ["bench", "--help"])
    assert run.exit_code == 0 and "--quick" in run.output and "--only" in run.output
    with pytest.raises(ValueError, match="unknown section"):
        suite.config_for(quick=True, only=["nonsense"])
    assert suite.config_for(quick=False, only=["speed"]).sections == ("docqa", "prefix", "params")
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    proc = subprocess.run([sys.executable, str(script), "--only", "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown section" in proc.stderr and "Traceback" not in proc.stderr

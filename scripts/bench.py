#!/usr/bin/env python3
"""make bench: time to first token with and without the cache, in process and as whole `pc ask`
processes, measured side by side (alternating run by run), plus answer quality of the two module
encodings against the uncached answer. Writes bench/results/<date>.json and .md.

    python scripts/bench.py [--rounds N] [--process-rounds N] [--only speed|quality] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from promptcache_cli import layout as lay, pml  # noqa: E402
from promptcache_cli.engine import Session  # noqa: E402
from promptcache_cli.llama_backend import llama_cpp_version  # noqa: E402
from promptcache_cli.models import resolve_model  # noqa: E402
from promptcache_cli.selection import default_selection, select_cli  # noqa: E402

SPEED_SCHEMA = ROOT / "schemas" / "gpl-manual.xml"
SPEED_QUESTION = "Can I charge a fee for giving someone a copy of the program?"


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# -- speed ------------------------------------------------------------------------------------


def bench_in_process(model: Path, cache: Path, rounds: int, nocache_rounds: int) -> dict:
    schema = pml.load_schema(SPEED_SCHEMA)
    sess = Session(model, cache_dir=cache)
    try:
        t = time.perf_counter()
        report = sess.compile(schema, force=True)
        compile_s = time.perf_counter() - t
        layout = sess.layout(schema)
        sel = default_selection(schema)
        cached, nocache = [], []
        ask = lambda nc: sess.ask(schema, sel, SPEED_QUESTION, max_tokens=1, no_cache=nc)  # noqa: E731
        ask(False)  # warm the page cache and the context once, as any later ask finds them
        for i in range(max(rounds, nocache_rounds)):  # alternate the two systems run by run
            if i < rounds:
                cached.append(ask(False).ttft_ms)
            if i < nocache_rounds:
                nocache.append(ask(True).ttft_ms)
        res = ask(False)
        disk = sum(m.bytes for m in report.modules)
        tokens = res.cached_tokens
    finally:
        sess.close()
    return {
        "schema": str(SPEED_SCHEMA.relative_to(ROOT)),
        "layout_tokens": layout.end,
        "cached_tokens": tokens,
        "question_tokens": res.computed_tokens,
        "compile_seconds": compile_s,
        "cache_bytes": disk,
        "state_bytes_per_token": disk / max(tokens, 1),
        "ttft_ms_cached": cached,
        "ttft_ms_nocache": nocache,
        "median_ms_cached": median(cached),
        "median_ms_nocache": median(nocache),
        "speedup": median(nocache) / median(cached),
    }


def bench_process(model: Path, cache: Path, rounds: int) -> dict:
    """Wall time of whole `pc ask -n 1` processes (start, imports, model load, answer)."""
    env = dict(os.environ, PC_CACHE_DIR=str(cache), PC_MODEL=str(model))
    pc = [sys.executable, "-m", "promptcache_cli.cli"]
    base = [*pc, "ask", "--schema", str(SPEED_SCHEMA), "-n", "1", "--json", SPEED_QUESTION]

    def run(extra: list[str]) -> tuple[float, dict]:
        t = time.perf_counter()
        out = subprocess.run(base + extra, env=env, capture_output=True, text=True, check=True)
        return (time.perf_counter() - t) * 1000, json.loads(out.stdout)

    run([])  # the cache is compiled by the in-process section; this warms the page cache
    cached, nocache = [], []
    for _ in range(rounds):
        cached.append(run([])[0])
        nocache.append(run(["--no-cache"])[0])
    return {
        "wall_ms_cached": cached,
        "wall_ms_nocache": nocache,
        "median_ms_cached": median(cached),
        "median_ms_nocache": median(nocache),
        "speedup": median(nocache) / median(cached),
    }


# -- answer quality of the two encodings --------------------------------------------------------

NEEDLES = {
    "bsd": ("The project mascot is a green owl named Pim.", "What is the project mascot?", "owl"),
    "mpl": ("The access code for the archive room is 4417.", "What is the access code for the archive room?", "4417"),
    "artistic": ("The maintainer of this package lives in Lisbon.", "Where does the maintainer live?", "Lisbon"),
    "apache": ("Releases of this software ship every 6 weeks.", "How often do releases ship?", "6"),
}
PLAIN_QUESTIONS = [
    "Who holds the copyright?",
    "Can I use this software commercially?",
    "What does the license say about warranty?",
    "Summarize the license in one sentence.",
]


def quality_schema(folder: Path) -> Path:
    docs = ROOT / "schemas" / "docs"
    files = {"bsd": "BSD.txt", "mpl": "MPL-2.0.txt", "artistic": "Artistic.txt", "apache": "Apache-2.0.txt"}
    for name, fname in files.items():
        text = (docs / fname).read_text(encoding="utf-8")[:2400]
        text = text[: text.rfind("\n")]
        mid = text.find("\n", len(text) // 2)
        (folder / f"{name}.txt").write_text(text[:mid] + "\n" + NEEDLES[name][0] + text[mid:], encoding="utf-8")
    modules = "\n".join(f'    <module name="{n}" src="{n}.txt"/>' for n in files)
    path = folder / "quality.xml"
    path.write_text(
        '<schema name="quality">\n  <system>You answer questions about the documents the user gives.</system>\n'
        f"  <user>\n{modules}\n  </user>\n</schema>\n", encoding="utf-8")
    return path


def quality_cases() -> list[tuple[list[str], str, str | None]]:
    """(modules, question, expected substring or None): subsets in different combinations."""
    cases = []
    subsets = [["bsd", "mpl"], ["mpl", "artistic"], ["artistic", "apache"], ["bsd", "apache"],
               ["bsd", "mpl", "artistic"], ["mpl", "apache"]]
    for subset in subsets:
        for m in subset:
            _, q, want = NEEDLES[m]
            cases.append((subset, q, want))
    for i, q in enumerate(PLAIN_QUESTIONS):
        cases.append((subsets[i % len(subsets)], q, None))
    return cases


def _logp(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max()
    return x - np.log(np.exp(x).sum())


def bench_quality(model: Path, cache: Path, n_tokens: int, limit: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        schema = pml.load_schema(quality_schema(Path(tmp)))
        cases = quality_cases()[:limit] if limit else quality_cases()
        sessions = {enc: Session(model, cache_dir=cache / enc, encoding=enc) for enc in lay.ENCODINGS}
        rows = []
        try:
            for s in sessions.values():
                s.compile(schema)
            for modules, question, want in cases:
                sel = select_cli(schema, modules=modules, params=[])
                base = sessions["independent"].ask(
                    schema, sel, question, max_tokens=n_tokens, no_cache=True, keep_logits=True
                )
                row = {"modules": modules, "question": question, "expected": want,
                       "nocache_answer": base.answer, "nocache_correct": None if want is None else want in base.answer}
                lp = _logp(base.first_logits)
                for enc, s in sessions.items():
                    r = s.ask(schema, sel, question, max_tokens=n_tokens, keep_logits=True)
                    lq = _logp(r.first_logits)
                    row[enc] = {
                        "answer": r.answer,
                        "exact_match": r.tokens == base.tokens,
                        "top1_agree": int(np.argmax(lq)) == int(np.argmax(lp)),
                        "kl": float((np.exp(lp) * (lp - lq)).sum()),
                        "correct": None if want is None else want in r.answer,
                    }
                rows.append(row)
        finally:
            for s in sessions.values():
                s.close()
    summary = {}
    needles = [r for r in rows if r["expected"] is not None]
    for enc in lay.ENCODINGS:
        summary[enc] = {
            "exact_match_rate": sum(r[enc]["exact_match"] for r in rows) / len(rows),
            "top1_agreement": sum(r[enc]["top1_agree"] for r in rows) / len(rows),
            "median_kl": median([r[enc]["kl"] for r in rows]),
            "needle_accuracy": sum(r[enc]["correct"] for r in needles) / max(len(needles), 1),
        }
    summary["nocache"] = {"needle_accuracy": sum(r["nocache_correct"] for r in needles) / max(len(needles), 1)}
    return {"questions": len(rows), "generated_tokens": n_tokens, "summary": summary, "rows": rows}


# -- report -------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    out = [f"# pc bench, {res['date']}", "", f"machine: {res['machine']}; model: {res['model']}; "
           f"llama-cpp-python {res['llama_cpp']}", ""]
    if "in_process" in res:
        ip, pr = res["in_process"], res.get("process")
        out += ["## Time to first token, ~4,000-token real document (GPL v2)", "",
                "| measure | --no-cache | cached | speedup |", "| --- | ---: | ---: | ---: |",
                f"| in process (model loaded), median ms | {ip['median_ms_nocache']:.0f} | "
                f"{ip['median_ms_cached']:.1f} | {ip['speedup']:.0f}x |"]
        if pr:
            out.append(f"| whole `pc ask -n 1` process, median ms | {pr['median_ms_nocache']:.0f} | "
                       f"{pr['median_ms_cached']:.0f} | {pr['speedup']:.1f}x |")
        out += ["", f"runs: {len(ip['ttft_ms_cached'])} cached / {len(ip['ttft_ms_nocache'])} uncached in process"
                + (f", {len(pr['wall_ms_cached'])} each as processes" if pr else "") + ", alternating.",
                f"cached tokens {ip['cached_tokens']}, computed at ask {ip['question_tokens']}; "
                f"compile {ip['compile_seconds']:.1f} s; cache {ip['cache_bytes'] / 1e6:.1f} MB on disk = "
                f"{ip['state_bytes_per_token']:.0f} bytes per cached token.", ""]
    if "quality" in res:
        q = res["quality"]
        out += [f"## Answer quality against --no-cache ({q['questions']} questions, "
                f"{q['generated_tokens']} greedy tokens each)", "",
                "| encoding | exact match | first-token top-1 agreement | median KL | needle accuracy |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for enc in lay.ENCODINGS:
            s = q["summary"][enc]
            out.append(f"| {enc} | {s['exact_match_rate']:.0%} | {s['top1_agreement']:.0%} | "
                       f"{s['median_kl']:.4f} | {s['needle_accuracy']:.0%} |")
        out.append(f"| --no-cache | 100% | 100% | 0 | {q['summary']['nocache']['needle_accuracy']:.0%} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9, help="cached in-process runs")
    ap.add_argument("--nocache-rounds", type=int, default=3, help="uncached in-process runs (~20 s each)")
    ap.add_argument("--process-rounds", type=int, default=3, help="whole-process runs of each kind")
    ap.add_argument("--quality-tokens", type=int, default=16)
    ap.add_argument("--only", choices=["speed", "quality"])
    ap.add_argument("--quick", action="store_true", help="fewer runs and questions")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.nocache_rounds, args.process_rounds = 5, 1, 1
    model = resolve_model(None)
    res = {"date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "model": model.name, "llama_cpp": llama_cpp_version(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        if args.only in (None, "speed"):
            print("in-process time to first token ...", file=sys.stderr)
            res["in_process"] = bench_in_process(model, cache / "speed", args.rounds, args.nocache_rounds)
            print("whole-process time ...", file=sys.stderr)
            res["process"] = bench_process(model, cache / "speed", args.process_rounds)
        if args.only in (None, "quality"):
            print("answer quality of the two encodings ...", file=sys.stderr)
            res["quality"] = bench_quality(model, cache / "quality", args.quality_tokens, 8 if args.quick else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = markdown(res)
    (out / f"{stem}.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    print(f"wrote {out / stem}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    main()

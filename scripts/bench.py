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
from promptcache_cli.llama_backend import ContextSettings, llama_cpp_version  # noqa: E402
from promptcache_cli.models import resolve_model  # noqa: E402
from promptcache_cli.selection import default_selection, select_cli  # noqa: E402

SPEED_SCHEMA = ROOT / "schemas" / "gpl-manual.xml"
SPEED_QUESTION = "Can I charge a fee for giving someone a copy of the program?"


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# -- speed ------------------------------------------------------------------------------------


SYSTEMS = {  # cache variants measured side by side: (codec, kv type)
    "none": ("none", "f16"),  # the default
    "zstd": ("zstd", "f16"),
    "q8_0": ("zstd", "q8_0"),
}


def _settings(kv: str) -> ContextSettings:
    return ContextSettings(type_k=kv, type_v=kv, flash_attn=kv != "f16")


def bench_in_process(model: Path, cache: Path, rounds: int, nocache_rounds: int) -> dict:
    """Every cache variant and the uncached baseline, alternating run by run in one process."""
    schema = pml.load_schema(SPEED_SCHEMA)
    sessions = {name: Session(model, cache_dir=cache / name, codec=codec, settings=_settings(kv))
                for name, (codec, kv) in SYSTEMS.items()}
    sel = default_selection(schema)
    out: dict = {"schema": str(SPEED_SCHEMA.relative_to(ROOT)), "systems": {}}
    try:
        for name, sess in sessions.items():
            t = time.perf_counter()
            report = sess.compile(schema, force=True)
            out["systems"][name] = {"compile_seconds": time.perf_counter() - t,
                                    "cache_bytes": sum(m.bytes for m in report.modules), "ttft_ms": []}
        ask = lambda sess, nc: sess.ask(schema, sel, SPEED_QUESTION, max_tokens=1, no_cache=nc)  # noqa: E731
        for sess in sessions.values():
            ask(sess, False)  # warm the page cache and the context once, as any later ask finds them
        nocache = []
        for i in range(max(rounds, nocache_rounds)):  # alternate the systems run by run
            if i < rounds:
                for name, sess in sessions.items():
                    out["systems"][name]["ttft_ms"].append(ask(sess, False).ttft_ms)
            if i < nocache_rounds:
                nocache.append(ask(sessions["none"], True).ttft_ms)
        res = ask(sessions["none"], False)
        out["layout_tokens"] = sessions["none"].layout(schema).end
    finally:
        for sess in sessions.values():
            sess.close()
    tokens = res.cached_tokens
    raw = out["systems"]["none"]["cache_bytes"]
    for sysres in out["systems"].values():
        sysres["median_ms"] = median(sysres["ttft_ms"])
        sysres["bytes_per_token"] = sysres["cache_bytes"] / tokens
        sysres["smaller_than_raw_f16"] = raw / sysres["cache_bytes"]
        sysres["speedup_vs_nocache"] = median(nocache) / sysres["median_ms"]
    out.update(cached_tokens=tokens, question_tokens=res.computed_tokens, ttft_ms_nocache=nocache,
               median_ms_nocache=median(nocache),
               zstd_vs_none_ttft=out["systems"]["zstd"]["median_ms"] / out["systems"]["none"]["median_ms"])
    return out


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
        sessions["scaffold+q8_0"] = Session(model, cache_dir=cache / "q8_0", encoding="scaffold",
                                            settings=_settings("q8_0"))
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
                        "tokens": r.tokens,
                        "exact_match": r.tokens == base.tokens,
                        "top1_agree": int(np.argmax(lq)) == int(np.argmax(lp)),
                        "kl": float((np.exp(lp) * (lp - lq)).sum()),
                        "correct": None if want is None else want in r.answer,
                    }
                row["q8_0_same_as_f16"] = row["scaffold+q8_0"]["tokens"] == row["scaffold"]["tokens"]
                rows.append(row)
        finally:
            for s in sessions.values():
                s.close()
    summary = {}
    needles = [r for r in rows if r["expected"] is not None]
    for enc in (*lay.ENCODINGS, "scaffold+q8_0"):
        summary[enc] = {
            "exact_match_rate": sum(r[enc]["exact_match"] for r in rows) / len(rows),
            "top1_agreement": sum(r[enc]["top1_agree"] for r in rows) / len(rows),
            "median_kl": median([r[enc]["kl"] for r in rows]),
            "needle_accuracy": sum(r[enc]["correct"] for r in needles) / max(len(needles), 1),
        }
    summary["q8_0_same_greedy_answer_as_f16"] = sum(r["q8_0_same_as_f16"] for r in rows) / len(rows)
    summary["nocache"] = {"needle_accuracy": sum(r["nocache_correct"] for r in needles) / max(len(needles), 1)}
    return {"questions": len(rows), "generated_tokens": n_tokens, "summary": summary, "rows": rows}


# -- report -------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    out = [f"# pc bench, {res['date']}", "", f"machine: {res['machine']}; model: {res['model']}; "
           f"llama-cpp-python {res['llama_cpp']}", ""]
    if "in_process" in res:
        ip, pr = res["in_process"], res.get("process")
        out += ["## Time to first token and cache size, ~4,000-token real document (GPL v2)", "",
                "| system | median TTFT ms (in process) | vs --no-cache | bytes per cached token "
                "| smaller than raw f16 |",
                "| --- | ---: | ---: | ---: | ---: |",
                f"| --no-cache | {ip['median_ms_nocache']:.0f} | 1x | - | - |"]
        for name, s in ip["systems"].items():
            codec, kv = SYSTEMS[name]
            label = " (default)" if name == "none" else ""
            out.append(f"| cached, {kv}, --compression {codec}{label} | {s['median_ms']:.1f} | "
                       f"{s['speedup_vs_nocache']:.0f}x | {s['bytes_per_token']:.0f} | "
                       f"{s['smaller_than_raw_f16']:.2f}x |")
        out += ["", f"zstd TTFT / uncompressed (default) TTFT: {ip['zstd_vs_none_ttft']:.2f}x. "
                f"runs: {len(ip['systems']['none']['ttft_ms'])} per cached system, "
                f"{len(ip['ttft_ms_nocache'])} uncached, alternating; {ip['cached_tokens']} cached tokens, "
                f"{ip['question_tokens']} computed at ask.", ""]
        if pr:
            out += ["| whole `pc ask -n 1` process | --no-cache | cached (default) | speedup |",
                    "| --- | ---: | ---: | ---: |",
                    f"| median wall ms ({len(pr['wall_ms_cached'])} runs each, alternating) | "
                    f"{pr['median_ms_nocache']:.0f} | {pr['median_ms_cached']:.0f} | {pr['speedup']:.1f}x |", ""]
    if "quality" in res:
        q = res["quality"]
        out += [f"## Answer quality against --no-cache ({q['questions']} questions, "
                f"{q['generated_tokens']} greedy tokens each)", "",
                "| encoding | exact match | first-token top-1 agreement | median KL | needle accuracy |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for enc in (*lay.ENCODINGS, "scaffold+q8_0"):
            s = q["summary"][enc]
            out.append(f"| {enc} | {s['exact_match_rate']:.0%} | {s['top1_agreement']:.0%} | "
                       f"{s['median_kl']:.4f} | {s['needle_accuracy']:.0%} |")
        out.append(f"| --no-cache | 100% | 100% | 0 | {q['summary']['nocache']['needle_accuracy']:.0%} |")
        out += ["", f"q8_0 KV: same greedy answer as the f16 cache on "
                f"{q['summary']['q8_0_same_greedy_answer_as_f16']:.0%} of questions.", ""]
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
            res["process"] = bench_process(model, cache / "speed" / "none", args.process_rounds)
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

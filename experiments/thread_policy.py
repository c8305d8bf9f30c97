#!/usr/bin/env python3
"""How many threads, and how they wait: cached time to first token and compile speed of real `pc`
processes with 0, 1 and 2 busy background processes (each `python -c 'while 1: pass'`), for:

- ``old``: one thread per core, OpenMP's default wait (spin ~300,000 rounds at every barrier;
  set explicitly as GOMP_SPINCOUNT=300000, what libgomp does when nothing is set);
- ``1 thread``: PC_THREADS=1 (the old workaround);
- ``new``: `pc`'s default now (no PC_THREADS, no OpenMP variable: llama/threads.py decides);
- ``short spin``: one thread per core, GOMP_SPINCOUNT=10000 (a candidate between the two).

Each cell runs the variants in turn, round after round (alternating, so a change in the machine's
other load falls on every variant alike), and reports medians. The machine's load average
(`uptime`) is recorded before and after every run: other people's work adds to the busy processes
started here, and the table says how much.

    python experiments/thread_policy.py [--rounds 5] [--compile-rounds 3] [--busy 0,1,2] [--out FILE.json]
                                        [--src DIR]

``--src DIR`` runs the `pc` whose package is in DIR (a copy of a checkout, e.g. from `git archive`),
so editing this checkout during the long run changes nothing measured.

Cached TTFT: `pc ask --json -n 1` on schemas/gpl-manual.xml (about 4,000 tokens, compiled once
first); ``ttft_ms`` as `pc` reports it (from the start of the ask to the first token) and the
process's wall time. Compile: `pc compile --force --json` of the first ~1,000 tokens of the GPL,
tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PC = [sys.executable, "-m", "promptcache_cli"]
SCHEMA = ROOT / "schemas" / "gpl-manual.xml"
QUESTION = "What is section 3 about?"
N_CPU = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
VARIANTS = {
    "old": {"PC_THREADS": str(N_CPU), "GOMP_SPINCOUNT": "300000"},
    "1 thread": {"PC_THREADS": "1", "GOMP_SPINCOUNT": "300000"},
    "new": {},
    "short spin": {"PC_THREADS": str(N_CPU), "GOMP_SPINCOUNT": "10000"},
}
CLEARED = ("PC_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "PC_PRELOAD", "PYTHONPATH")
SRC: Path | None = None  # --src


def load() -> float:
    return os.getloadavg()[0]


def run(args: list[str], variant: dict, cache: Path) -> tuple[dict, float, float, float]:
    """One `pc` process: its JSON, wall seconds, the 1-minute load average before and after."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(variant, PC_CACHE_DIR=str(cache))
    if SRC is not None:
        env["PYTHONPATH"] = str(SRC)
    before = load()
    t0 = time.perf_counter()
    out = subprocess.run(PC + args, env=env, capture_output=True, text=True, timeout=1800, cwd=SRC)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"pc {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout), wall, before, load()


def compile_schema(folder: Path) -> Path:
    text = (ROOT / "schemas" / "docs" / "GPL-2.txt").read_text(encoding="utf-8")[:4500]
    text = text[: text.rfind("\n")]
    (folder / "part.txt").write_text(text, encoding="utf-8")
    path = folder / "gpl-part.xml"
    path.write_text('<schema name="gpl-part"><system>Answer briefly.</system>'
                    '<user><module name="part" src="part.txt"/></user></schema>\n', encoding="utf-8")
    return path


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="cached asks per variant and cell")
    ap.add_argument("--compile-rounds", type=int, default=3, help="compiles per variant and cell")
    ap.add_argument("--busy", default="0,1,2", help="busy background processes, comma-separated")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="which variants, comma-separated")
    ap.add_argument("--out", type=Path, help="write every run as JSON here")
    ap.add_argument("--src", type=Path, help="the folder holding the promptcache_cli package to run")
    args = ap.parse_args()
    global SRC
    SRC = args.src.resolve() if args.src else None
    variants = [v.strip() for v in args.variants.split(",")]
    levels = [int(b) for b in args.busy.split(",")]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        small = compile_schema(Path(tmp))
        run(["compile", str(SCHEMA), "--json"], VARIANTS["new"], cache)
        for n_busy in levels:
            procs = busy(n_busy)
            try:
                time.sleep(2)
                run(["ask", "-s", str(SCHEMA), "-n", "1", "--json", QUESTION], VARIANTS["new"], cache)  # warm
                for r in range(args.rounds):
                    for name in variants[r % len(variants):] + variants[: r % len(variants)]:
                        got, wall, l0, l1 = run(["ask", "-s", str(SCHEMA), "-n", "1", "--json", QUESTION],
                                                VARIANTS[name], cache)
                        runs.append({"what": "ask", "busy": n_busy, "variant": name, "ttft_ms": got["ttft_ms"],
                                     "wall_s": wall, "load_before": l0, "load_after": l1})
                        print(f"busy {n_busy} ask   {name:<10} ttft {got['ttft_ms']:8.0f} ms  wall {wall:6.2f} s  "
                              f"load {l0:.2f}->{l1:.2f}", file=sys.stderr, flush=True)
                for r in range(args.compile_rounds):
                    for name in variants[r % len(variants):] + variants[: r % len(variants)]:
                        got, wall, l0, l1 = run(["compile", str(small), "--force", "--json"], VARIANTS[name], cache)
                        tokens = sum(m["tokens"] for m in got["modules"])
                        runs.append({"what": "compile", "busy": n_busy, "variant": name, "tokens": tokens,
                                     "seconds": got["seconds"], "tok_s": tokens / got["seconds"], "wall_s": wall,
                                     "load_before": l0, "load_after": l1})
                        print(f"busy {n_busy} compile {name:<10} {tokens / got['seconds']:7.0f} tok/s  "
                              f"({got['seconds']:.1f} s)  load {l0:.2f}->{l1:.2f}", file=sys.stderr, flush=True)
            finally:
                stop(procs)
    if args.out:
        args.out.write_text(json.dumps({"cpus": N_CPU, "variants": {k: VARIANTS[k] for k in variants},
                                        "runs": runs}, indent=1))
    print(table(runs, variants, levels))


def table(runs: list[dict], variants: list[str], levels: list[int]) -> str:
    lines = [f"{N_CPU} CPUs; medians; load = the 1-minute load average over the cell's runs (min-max)", "",
             "| busy | variant | cached TTFT (ms) | ask wall (s) | compile (tok/s) | load |",
             "|---:|---|---:|---:|---:|---|"]
    for b in levels:
        for v in variants:
            ask = [r for r in runs if r["busy"] == b and r["variant"] == v and r["what"] == "ask"]
            comp = [r for r in runs if r["busy"] == b and r["variant"] == v and r["what"] == "compile"]
            loads = [x for r in ask + comp for x in (r["load_before"], r["load_after"])]

            def med(rows, key):
                return statistics.median(r[key] for r in rows) if rows else float("nan")

            lines.append(f"| {b} | {v} | {med(ask, 'ttft_ms'):.0f} | {med(ask, 'wall_s'):.2f} | "
                         f"{med(comp, 'tok_s'):.0f} | {min(loads, default=0):.1f}-{max(loads, default=0):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The remote tier's figures, against a real S3 server (SeaweedFS `weed mini`) on loopback.

Every "machine" is its own cache directory and its own `pc` process; all of them share one bucket.

1. Bytes moved per schema: `pc push` and `pc pull` of each schema, against the bytes of its module
   files on disk and of its objects in the store (they must be equal).
2. First answer on a fresh machine, whole process (`pc ask`, ~4k tokens): downloading the schema's
   states from the store against computing them there, alternating, medians (target: >= 20x).
3. A simulated fleet started at once: 4 processes with separate cache directories behind one
   bucket, one `pc compile --remote` and three `pc ask --remote`: prefill tokens computed across the
   fleet (target: each module computed exactly once), against the same four processes without a
   store (each computes everything).
4. `pc compile --shard K/2` in two processes (PC_THREADS=1 each) against one process compiling
   everything (all cores), wall time, and that the two shards' union is the full set of modules.

    python scripts/bench_remote.py [--quick] [--rounds N] [--out-dir bench/results]

Prints a table and writes a JSON file. The machine's load (1-minute load average, before and
after each part) is recorded beside the figures: timings on a shared machine are provisional.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import s3_server  # noqa: E402

PC = [sys.executable, "-m", "promptcache_cli"]
DOC = ROOT / "schemas" / "gpl-manual.xml"  # one ~4k-token document behind a system prompt
SCHEMAS = [ROOT / "schemas" / "travel.xml", ROOT / "schemas" / "gpl-manual.xml", ROOT / "schemas" / "licenses.xml"]
QUESTIONS = ["Can I sell copies of the program?", "What must I do when I distribute modified versions?",
             "Is there any warranty?"]


def load() -> float:
    return round(os.getloadavg()[0], 2)


class Runner:
    def __init__(self, server: s3_server.S3Server, work: Path) -> None:
        self.server = server
        self.work = work
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PC_", "AWS_"))}
        self.env.update(server.env, AWS_CONFIG_FILE=str(work / "none"), AWS_SHARED_CREDENTIALS_FILE=str(work / "none"),
                        AWS_EC2_METADATA_DISABLED="true", GOMP_SPINCOUNT="0")
        self.n = 0

    def cache(self, name: str) -> Path:
        self.n += 1
        return self.work / f"{self.n:03d}-{name}"

    def start(self, args: list, cache: Path, **env: str) -> tuple[subprocess.Popen, float]:
        e = dict(self.env, PC_CACHE_DIR=str(cache), **env)
        return subprocess.Popen(PC + [str(a) for a in args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=e, text=True), time.perf_counter()

    @staticmethod
    def finish(p: subprocess.Popen, t0: float) -> tuple[dict, float]:
        out, err = p.communicate(timeout=3600)
        seconds = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{p.args}: exit {p.returncode}: {err}")
        return json.loads(out), seconds

    def run(self, args: list, cache: Path, **env: str) -> tuple[dict, float]:
        return self.finish(*self.start(args, cache, **env))


def files_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*.pcm"))


def store_bytes(url: str, env: dict) -> int:
    from promptcache_cli.store.remote import Remote

    return sum(o.bytes for o in Remote(url, env=env).list() if o.rel.endswith(".pcm"))


def bytes_moved(r: Runner, bucket: str, schemas: list[Path]) -> list[dict]:
    rows = []
    for schema in schemas:
        url = f"s3://{bucket}/bytes-{schema.stem}"
        a, b = r.cache("bytes-a"), r.cache("bytes-b")
        r.run(["compile", schema, "--json"], a)
        pushed, push_s = r.run(["push", schema, "--remote", url, "--json"], a)
        pulled, pull_s = r.run(["pull", schema, "--remote", url, "--json"], b)
        rows.append({"schema": schema.name, "files": len(pushed["files"]), "file_bytes": files_bytes(a),
                     "pushed_bytes": pushed["bytes"], "store_bytes": store_bytes(url, r.env),
                     "pulled_bytes": pulled["bytes"],
                     "pulled_file_bytes": files_bytes(b), "push_seconds": round(pushed["seconds"], 3),
                     "pull_seconds": round(pulled["seconds"], 3), "push_process_s": round(push_s, 2),
                     "pull_process_s": round(pull_s, 2)})
    return rows


def first_answer(r: Runner, bucket: str, rounds: int) -> dict:
    url = f"s3://{bucket}/first-answer"
    r.run(["compile", DOC, "--remote", url, "--json"], r.cache("first-compiler"))
    ask = ["ask", QUESTIONS[0], "-s", DOC, "-n", "16", "--json"]
    remote_s, local_s, answers, tokens = [], [], set(), set()
    before = load()
    for i in range(rounds):  # alternating, a fresh cache directory each time
        order = [("remote", True), ("local", False)] if i % 2 == 0 else [("local", False), ("remote", True)]
        for _, use_remote in order:
            got, seconds = r.run(ask + (["--remote", url] if use_remote else []), r.cache("first"))
            if use_remote:
                assert got["compiled"] == [] and got["downloaded"], got
                remote_s.append(seconds)
            else:
                local_s.append(seconds)
            answers.add(got["answer"])
            tokens.add(got["cached_tokens"])
    med_r, med_l = statistics.median(remote_s), statistics.median(local_s)
    return {"schema": DOC.name, "prompt_tokens": max(tokens), "rounds": rounds,
            "remote_s": [round(s, 2) for s in remote_s], "compute_s": [round(s, 2) for s in local_s],
            "median_remote_s": round(med_r, 2), "median_compute_s": round(med_l, 2),
            "ratio": round(med_l / med_r, 1), "same_answer": len(answers) == 1, "load_before": before,
            "load_after": load()}


def fleet(r: Runner, bucket: str, with_store: bool) -> dict:
    url = f"s3://{bucket}/fleet-{int(time.time() * 1000)}"
    remote = ["--remote", url] if with_store else []
    before = load()
    t0 = time.perf_counter()
    procs = [r.start(["compile", DOC, "--json", *remote], r.cache("fleet-compiler"))]
    procs += [r.start(["ask", q, "-s", DOC, "-n", "16", "--json", *remote], r.cache(f"fleet-server{i}"))
              for i, q in enumerate(QUESTIONS)]
    outs = [r.finish(*p) for p in procs]
    wall = time.perf_counter() - t0
    compiled = {m["module"]: m["tokens"] for m in outs[0][0]["modules"]}
    module_tokens = sum(compiled.values())
    computed = [m["tokens"] for m in outs[0][0]["modules"] if m["status"] == "computed"]
    computed += [m["tokens"] for o, _ in outs[1:] for m in o["compiled"]]
    per_module: dict[str, int] = {}
    for m in outs[0][0]["modules"]:
        per_module[m["module"]] = per_module.get(m["module"], 0) + (m["status"] == "computed")
    for o, _ in outs[1:]:
        for m in o["compiled"]:
            per_module[m["module"]] = per_module.get(m["module"], 0) + 1
    return {"with_store": with_store, "processes": 4, "schema_module_tokens": module_tokens,
            "module_tokens_computed": sum(computed), "times_each_module_computed": per_module,
            "question_tokens_computed": sum(o["computed_tokens"] for o, _ in outs[1:]),
            "downloaded": sum(len(o.get("downloaded", [])) for o, _ in outs[1:]),
            "wall_s": round(wall, 2), "process_s": [round(s, 2) for _, s in outs], "load_before": before,
            "load_after": load()}


def shards(r: Runner, bucket: str, schemas: list[Path]) -> dict:
    folder = r.work / "shard-schemas"
    folder.mkdir()
    for s in schemas:  # a folder of schemas, as an indexed job gets it (their src= files beside them)
        (folder / s.name).write_text(s.read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copytree(ROOT / "schemas" / "docs", folder / "docs")
    before = load()
    one, one_s = r.run(["compile", folder, "--remote", f"s3://{bucket}/shard-one", "--json"], r.cache("shard-one"))
    url = f"s3://{bucket}/shard-two"
    procs = [r.start(["compile", folder, "--shard", f"{k}/2", "--remote", url, "--json"], r.cache(f"shard{k}"),
                     PC_THREADS="1") for k in (0, 1)]
    t0 = time.perf_counter()
    outs = [r.finish(*p) for p in procs]
    two_s = time.perf_counter() - t0
    keys = {m["key"] for s in one["schemas"] for m in s["modules"]}
    got = [{m["key"] for s in o["schemas"] for m in s["modules"] if m["status"] == "computed"} for o, _ in outs]
    tokens = sum(m["tokens"] for s in one["schemas"] for m in s["modules"])
    return {"schemas": [s.name for s in schemas], "modules": len(keys), "tokens": tokens,
            "one_process_s": round(one_s, 2), "two_shards_s": round(two_s, 2),
            "shard_process_s": [round(s, 2) for _, s in outs], "speedup": round(one_s / two_s, 2),
            "shard_modules": [len(g) for g in got], "disjoint": not (got[0] & got[1]),
            "union_is_full": (got[0] | got[1]) == keys, "load_before": before, "load_after": load()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round of the first-answer figure; no shard figure")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the first-answer figure (default 3)")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    result: dict = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "cores": os.cpu_count(),
                    "load_start": load()}
    with tempfile.TemporaryDirectory(prefix="pc-bench-remote-") as tmp:
        server = s3_server.start(Path(tmp) / "weed")
        try:
            r = Runner(server, Path(tmp))
            print("bytes moved per schema ...", file=sys.stderr)
            result["bytes"] = bytes_moved(r, server.bucket, SCHEMAS[:2] if args.quick else SCHEMAS)
            print("first answer on a fresh machine ...", file=sys.stderr)
            result["first_answer"] = first_answer(r, server.bucket, rounds)
            print("a fleet of 4, with and without the store ...", file=sys.stderr)
            result["fleet"] = [fleet(r, server.bucket, True), fleet(r, server.bucket, False)]
            if not args.quick:
                print("shards ...", file=sys.stderr)
                result["shards"] = shards(r, server.bucket, SCHEMAS)
        finally:
            server.stop()
    result["load_end"] = load()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.datetime.now():%Y-%m-%d-%H%M%S}-remote.json"
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(report(result))
    print(f"\n(written to {path})")


def report(res: dict) -> str:
    lines = [f"remote tier figures, {res['date']}, {res['cores']} cores, load {res['load_start']} -> {res['load_end']}",
             "", "| schema | files | module files (bytes) | pushed | in the store | pulled | push s | pull s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in res["bytes"]:
        lines.append(f"| {b['schema']} | {b['files']} | {b['file_bytes']:,} | {b['pushed_bytes']:,} | "
                     f"{b['store_bytes']:,} | {b['pulled_bytes']:,} | {b['push_seconds']} | {b['pull_seconds']} |")
    f = res["first_answer"]
    lines += ["", f"first answer on a fresh machine ({f['schema']}, {f['prompt_tokens']} cached tokens, whole "
              f"process, {f['rounds']} rounds): from the store {f['median_remote_s']} s, computing there "
              f"{f['median_compute_s']} s: {f['ratio']}x (same answer: {f['same_answer']}; load "
              f"{f['load_before']} -> {f['load_after']})"]
    for fl in res["fleet"]:
        lines.append(f"fleet of 4 {'with' if fl['with_store'] else 'without'} the store: module tokens computed "
                     f"{fl['module_tokens_computed']} (the schema's modules: {fl['schema_module_tokens']}; each module "
                     f"computed {sorted(set(fl['times_each_module_computed'].values()))} time(s)), "
                     f"question tokens {fl['question_tokens_computed']}, wall {fl['wall_s']} s "
                     f"(load {fl['load_before']} -> {fl['load_after']})")
    if "shards" in res:
        s = res["shards"]
        lines.append(f"--shard over 2 processes (PC_THREADS=1 each) {s['two_shards_s']} s against one process "
                     f"{s['one_process_s']} s: {s['speedup']}x; {s['modules']} modules ({s['tokens']} tokens) split "
                     f"{s['shard_modules']}, disjoint {s['disjoint']}, union = full {s['union_is_full']} "
                     f"(load {s['load_before']} -> {s['load_after']})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

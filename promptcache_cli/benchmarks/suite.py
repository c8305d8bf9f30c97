"""The whole benchmark: configuration presets, one run over every section, and its output files
(``<stamp>.json``, ``<stamp>.md``, ``<stamp>-ttft.png``, ``<stamp>-bytes.png``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from ..api import Session, open_session
from ..llama.bindings import llama_cpp_version
from ..llama.context import Context, ContextSettings
from . import corpus, needles, rag, report, workloads
from .floor import Floor
from .llama_api import CAPACITY
from .llama_systems import LlamaCacheSystem
from .quality import run_quality
from .runner import SpeedSettings, needed_questions, run_workload
from .systems import PcSystem, PrefixSystem, System

Progress = Callable[[str], None]
SECTIONS = ("docqa", "prefix", "params", "quality", "rag")
SYSTEMS = ("nocache", "pc", "pc-zstd", "pc-q8", "pc-prefix", "llama-ram", "llama-disk")


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    sections: tuple[str, ...] = SECTIONS
    systems: tuple[str, ...] = SYSTEMS
    levels: tuple[int, ...] = (1024, 2048, 4096, 8192)  # (a): nominal total context per workload
    slots: int = 3  # (a): documents per question
    pool: int = 4  # (a): documents to choose from
    rounds: int = 3  # in-process questions per workload, every system answering each
    long_rounds: int = 2  # the same above 4,096 tokens (an uncached 8k prefill takes about a minute)
    fast_repeats: int = 4  # extra answers by the cheap systems per round
    process_rounds: int = 2  # whole-process answers per system, on the workloads below
    process_levels: tuple[int, ...] = (4096,)  # (a) levels with whole-process runs
    q8_levels: tuple[int, ...] = (4096,)  # (a) levels where the q8_0 cache runs too (it compiles its own states)
    process_others: bool = False  # whole-process runs on (b) and (c) too (about 2.5 min more; off to fit 45 min)
    prefix_level: int = 4096
    quality_questions: int = 60  # every ordered choice of 3 of the 5 texts, once
    quality_doc_tokens: int = 450
    quality_slots: int = 3
    quality_docs: int = 5  # texts with a planted fact to choose from (at most len(needles.NEEDLES))
    quality_tokens: int = 32
    repair_tokens: tuple[int, ...] = (16,)  # boundary repair variants measured in the quality section (64 adds little)
    refresh: tuple[float, ...] = (0.05, 0.1)  # selective recompute (`pc ask --refresh`): fractions of the cached tokens
    rag_questions: int = 40  # (d) the RAG workload: requests pasting documents into a user message, no schema
    rag_docs: int = 8
    rag_doc_tokens: int = 1000
    rag_tokens: int = 32
    rag_repairs: tuple[int, ...] = (16, 64)  # (d) `--repair` variants beside 0 and the default
    rag_servers: bool = True  # also through the OpenAI client: pc serve --learn, llama-server, llama-cpp-python's


QUICK = BenchConfig(quick=True, levels=(512, 1024), slots=2, pool=3, rounds=1, fast_repeats=2, process_rounds=1,
                    process_levels=(1024,), q8_levels=(1024,), prefix_level=1024,
                    quality_questions=6, quality_doc_tokens=200, quality_slots=2, quality_docs=4, repair_tokens=(32,),
                    rag_questions=4, rag_docs=4, rag_doc_tokens=300, rag_tokens=8, rag_repairs=(16,))


def preset(cfg: BenchConfig) -> str:
    """'quick' or 'full' (with the sections when not all), else 'custom'."""
    name = "quick" if cfg.quick else "full"
    if replace(cfg, sections=SECTIONS, systems=SYSTEMS) != (QUICK if cfg.quick else BenchConfig()):
        return "custom"
    parts = [s for s in SECTIONS if s in cfg.sections]
    return name + ("" if parts == list(SECTIONS) else f" ({', '.join(parts)} only)")


def make_systems(model_path: Path, root: Path, names: tuple[str, ...]) -> list[System]:
    pc = PcSystem(model_path, root, name="pc", label="pc, modular cache (default: --compression none)")
    made: dict[str, System] = {
        "nocache": PcSystem(model_path, root, name="nocache", label="pc ask --no-cache", no_cache=True),
        "pc": pc,
        "pc-zstd": PcSystem(model_path, root, name="pc-zstd", label="pc, modular cache, --compression zstd",
                            codec="zstd", source=pc),
        "pc-q8": PcSystem(model_path, root, name="pc-q8", label="pc, modular cache, --kv-type q8_0", kv_type="q8_0"),
        "pc-prefix": PrefixSystem(model_path, root),
        "llama-ram": LlamaCacheSystem(model_path, root, kind="ram"),
        "llama-disk": LlamaCacheSystem(model_path, root, kind="disk"),
    }
    return [made[n] for n in SYSTEMS if n in names]


def calibrate(session: Session) -> float:
    """Prefill tokens per second on this machine now (512 tokens of real text, two threads or more)."""
    tokens = session.model.tokenize(corpus.text("license:GPL-3"), special=False)[:512]
    with Context(session.model, ContextSettings(n_ctx=1024)) as ctx:
        t = time.perf_counter()
        ctx.decode(tokens, start=0, logits=True)
        return len(tokens) / (time.perf_counter() - t)


def estimate_seconds(cfg: BenchConfig, rate: float) -> float:
    """A rough plan of the prefill work (compiles, uncached answers, llama-cpp-python's misses)."""
    def cost(n_tokens: float, ctx: float) -> float:  # attention grows with the context
        return n_tokens / rate * (1 + ctx / 6000)

    total = 0.0
    llamas = sum(s.startswith("llama-") for s in cfg.systems)
    q8 = "pc-q8" in cfg.systems  # the zstd cache re-encodes pc's files, the q8_0 cache compiles its own
    full = ("nocache" in cfg.systems) + ("pc-prefix" in cfg.systems)  # prefix mode finds no shared prefix in (a)
    if "docqa" in cfg.sections:
        for lv in cfg.levels:
            miss = 1 - 1 / cfg.slots  # the llama caches reuse at most the first document
            procs = cfg.process_rounds if lv in cfg.process_levels else 0
            total += (1 + 1.5 * (q8 and lv in cfg.q8_levels)) * cost(cfg.pool * lv, lv / cfg.slots)
            total += cost(llamas * cfg.pool * lv / cfg.slots, lv / cfg.slots)
            rounds = cfg.rounds if lv <= 4096 else min(cfg.rounds, cfg.long_rounds)
            total += (rounds + procs) * cost(lv * (full + llamas * miss), lv)
    others = cfg.process_rounds if cfg.process_others else 0
    if "prefix" in cfg.sections:
        lv = cfg.prefix_level
        total += cost(lv, lv) * (3 + cfg.rounds + 2 * others)
    if "params" in cfg.sections:
        total += cost(1800, 1800) * (3 + 3 * (cfg.rounds + others))
    if "quality" in cfg.sections:
        n = cfg.quality_slots * cfg.quality_doc_tokens
        total += cost(2 * cfg.quality_docs * n, n) + cfg.quality_questions * cost(n, n)
        total += cfg.quality_questions * sum(cost(f * n, n) for f in cfg.refresh)
        total += cfg.quality_questions * (3 + 2 * len(cfg.repair_tokens) + len(cfg.refresh)) * cfg.quality_tokens * 0.03
    if "rag" in cfg.sections:  # the uncached answer and its control compute the whole prompt; pc its fresh text
        n = 3 * cfg.rag_doc_tokens
        warmups = -(-cfg.rag_docs // 3)
        total += (cfg.rag_questions * 1.6 + 2 * warmups) * cost(n, n)
        total += cfg.rag_questions * 4 * cfg.rag_tokens * 0.03
    return total * 1.15  # model loads, process starts, cache stores


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run(cfg: BenchConfig, *, model_path: Path, work: Path, progress: Progress) -> dict:
    t0 = time.perf_counter()
    res: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                 "model": Path(model_path).name, "llama_cpp": llama_cpp_version(), "config": asdict(cfg),
                 "preset": preset(cfg), "workloads": []}
    renderer = open_session(model_path, cache_dir=work / "render", mode="modular")
    rate = calibrate(renderer)
    res["prefill_tokens_per_second_at_start"] = rate
    progress(f"prefill runs at {rate:.0f} tokens/s now; estimated run time {estimate_seconds(cfg, rate) / 60:.0f} min")
    systems = make_systems(model_path, work / "systems", cfg.systems)
    res["systems"] = {s.name: {"label": s.label, "status": s.status} for s in systems}
    floor = Floor()
    speed = SpeedSettings(cfg.rounds, cfg.fast_repeats, cfg.process_rounds)
    n_q = needed_questions(speed)
    folder = work / "workloads"
    plans: list[tuple[Callable[[], workloads.Workload], SpeedSettings, list[System]]] = []
    without_q8 = [s for s in systems if s.name != "pc-q8"]  # the q8_0 cache runs at cfg.q8_levels only
    if "docqa" in cfg.sections:
        for lv in cfg.levels:
            s = speed if lv in cfg.process_levels else replace(speed, process_rounds=0)
            s = s if lv <= 4096 else replace(s, rounds=min(cfg.rounds, cfg.long_rounds))
            plans.append((lambda lv=lv: workloads.docqa(folder, renderer.model, level=lv, n_questions=n_q,
                                                        slots=cfg.slots, pool=workloads.DOCQA_POOL[: cfg.pool]), s,
                          systems if lv in cfg.q8_levels else without_q8))
    other = speed if cfg.process_others else replace(speed, process_rounds=0)
    if "prefix" in cfg.sections:
        plans.append((lambda: workloads.prefix(folder, renderer.model, level=cfg.prefix_level, n_questions=n_q), other,
                      without_q8))
    if "params" in cfg.sections:
        plans.append((lambda: workloads.params(folder, renderer.model, n_questions=n_q), other, without_q8))
    try:
        for i, (build, settings, chosen) in enumerate(plans, 1):
            wl = build()
            progress(f"[{(time.perf_counter() - t0) / 60:.1f} min] workload {i}/{len(plans)}: {wl.name}")
            res["workloads"].append(run_workload(wl, chosen, renderer=renderer, floor=floor, settings=settings,
                                                 progress=progress))
            for s in systems:  # keep the disk free: the bytes are recorded
                shutil.rmtree(s.folder(wl), ignore_errors=True)
        if "quality" in cfg.sections:
            progress(f"[{(time.perf_counter() - t0) / 60:.1f} min] answer quality")
            wl = needles.quality(folder, renderer.model, doc_tokens=cfg.quality_doc_tokens,
                                 n_questions=cfg.quality_questions, slots=cfg.quality_slots, n_docs=cfg.quality_docs)
            res["quality"] = run_quality(Path(model_path), work / "quality", wl, n_tokens=cfg.quality_tokens,
                                         repair_tokens=cfg.repair_tokens, refresh=cfg.refresh, progress=progress,
                                         q8="pc-q8" in cfg.systems)
        if "rag" in cfg.sections:
            progress(f"[{(time.perf_counter() - t0) / 60:.1f} min] RAG workload (no schema)")
            wl_rag = rag.build(renderer.model, n_questions=cfg.rag_questions, n_docs=cfg.rag_docs,
                               doc_tokens=cfg.rag_doc_tokens)
            import sys

            venv = Path(sys.prefix)  # where `make` builds llama-server and installs the peers' server
            binary = Path(os.environ.get("PC_LLAMA_SERVER") or venv / "llama.cpp/build/bin/llama-server")
            specs, missing = rag.server_specs(Path(model_path), work / "rag", threads=os.cpu_count() or 1,
                                              llama_server=binary, peers_python=venv / "peers/bin/python") \
                if cfg.rag_servers else ([], None)
            res["rag"] = rag.run_in_process(Path(model_path), work / "rag", wl_rag, n_tokens=cfg.rag_tokens,
                                            progress=progress, systems=rag.in_process_systems(cfg.rag_repairs),
                                            servers=specs, missing=missing)
    finally:
        floor.close()
        renderer.close()
    res["seconds"] = time.perf_counter() - t0
    res["targets"] = report.targets(res)
    res["notes"] = notes(res)
    return res


def notes(res: dict) -> list[str]:
    cfg = res["config"]
    out = [
        f"In process: every system answers the same question per round, {cfg['rounds']} rounds per workload "
        f"({min(cfg['rounds'], cfg['long_rounds'])} above 4,096 tokens), "
        "the order of systems rotated each round; the `pc` caches and the floor answer each round's question "
        f"{cfg['fast_repeats']} more times (alternating). Medians. One generated token.",
        "Every measured question is new to every system: no prompt repeats a warm-up or an earlier question, "
        "so llama-cpp-python's caches find at most a shared prefix. Warm-ups (untimed) let every cache see each "
        "document once before measuring; `pc` compiles its modules once per workload (not timed as TTFT) and "
        "answers every question from a cleared context (`Session.forget()`: no cells of the question before "
        "reused), so its figures are the cost of loading the states.",
        "llama-cpp-python runs the high-level `Llama` (the threads `pc` uses, batch 512, f16 KV, no flash "
        "attention, a context just large enough) with `LlamaRAMCache`/`LlamaDiskCache` of "
        f"{CAPACITY >> 30} GiB capacity (no eviction); its TTFT is the time from "
        "`create_completion(text, stream=True)` to the first chunk. It gets the prompt as text: exactly "
        "`pc`'s prompt tokens written out, control tokens included. " + _token_gap(res),
        "The zstd cache holds the same state blobs as the default cache, re-encoded from its files instead of "
        "computed twice. The `--kv-type q8_0` cache compiles its own states, so it runs on the document "
        f"workload at {', '.join(f'{lv:,}' for lv in cfg.get('q8_levels', ()))} tokens only.",
        "Physical floor: the question's states already decoded in RAM as numpy arrays, loaded into a llama.cpp "
        "context of the same build as the engine does, then only the fresh tokens decoded and the first token "
        "picked.",
        "Whole processes: each answers a further new question; peak memory is the child's `ru_maxrss` from "
        "`os.wait4`. A fresh process has an empty `LlamaRAMCache`, so that system always prefills: measured anyway.",
        f"Prefill ran at {res['prefill_tokens_per_second_at_start']:.0f} tokens/s (512 tokens) when the run started.",
    ]
    missing = [f"{s['label']}: {s['status']}" for s in res.get("systems", {}).values() if s["status"] != "ok"]
    if missing:
        out.append("Not measured: " + "; ".join(missing) + ".")
    return out


def _token_gap(res: dict) -> str:
    diffs = []
    for w in res.get("workloads", []):
        ref = w["prompt_tokens_per_question"]
        for name in ("llama-ram", "llama-disk"):
            got = (w["systems"].get(name) or {}).get("prompt_tokens", [])
            diffs += [abs(a - b) for a, b in zip(got, ref, strict=False)]
    if not diffs:
        return ""
    return (f"Re-tokenized whole, that text came out at most {max(diffs)} tokens different from `pc`'s "
            f"({sum(d == 0 for d in diffs)} of {len(diffs)} prompts identical in length).")


def write(res: dict, out_dir: Path, *, stamp: str | None = None) -> dict[str, Path]:
    """The JSON, the markdown and (with matplotlib installed) the two plots; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = stamp or dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"json": path, **render(res, out_dir, stamp=stamp)}


def render(res: dict, out_dir: Path, *, stamp: str) -> dict[str, Path]:
    """The markdown and the plots of a results dict (a run's JSON read back renders the same way; its
    targets are judged again from its measurements)."""
    from . import plots

    paths = {"md": out_dir / f"{stamp}.md"}
    res = {**res, "targets": report.targets(res)}  # judged by today's rules, from the measurements
    md = report.markdown(res)
    try:
        for key, draw in (("ttft", plots.ttft), ("bytes", plots.cache_bytes)):
            png = out_dir / f"{stamp}-{key}.png"
            if draw(res, png):
                paths[key] = png
                md += f"\n![{key}]({png.name})\n"
    except ImportError:
        md += "\nPlots skipped: matplotlib is not installed (pip install -e '.[dev]').\n"
    paths["md"].write_text(md, encoding="utf-8")
    return paths


def config_for(*, quick: bool, only: list[str] | None = None, **overrides) -> BenchConfig:
    """The preset (full or quick) with ``only`` sections ("speed" = docqa, prefix and params)."""
    cfg = QUICK if quick else BenchConfig()
    if only:
        wanted = {s for o in only for s in (("docqa", "prefix", "params") if o == "speed" else (o,))}
        unknown = wanted - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}: "
                             f"choose from speed, {', '.join(SECTIONS)}")
        cfg = replace(cfg, sections=tuple(s for s in SECTIONS if s in wanted))
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def run_and_write(cfg: BenchConfig, *, model_path: Path, out_dir: Path, progress: Progress) -> dict[str, Path]:
    """Run in a temporary folder (removed afterwards) and write the results to ``out_dir``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pc-bench-") as tmp:
        res = run(cfg, model_path=model_path, work=Path(tmp), progress=progress)
    return write(res, out_dir)

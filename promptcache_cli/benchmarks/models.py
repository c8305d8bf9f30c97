"""The models benchmark (`make bench-models`, scripts/bench_models.py): `pc` at the sizes people
run, on random-weight models of the real Llama 3.2 1B and 3B shapes (random_gguf.PRESETS; timing
and state sizes do not depend on weight values).

Per model size and context length (~2k, 4k, 8k tokens of license text after a system prompt, one
cached module, short questions of about 15-20 tokens):

- time to first token in process, side by side (the systems' order rotated each round):
  `pc` modular cache (default ``--compression none``; zstd; ``--kv-type q8_0``), the physical
  floor (states already in RAM, only the question computed: floor.py) and llama.cpp's
  ``llama-server`` restoring the same prompt from its slot file (llama_server.py);
- `pc ask --no-cache`, once per length (a 3B prefill of 8k tokens takes many minutes on 2 cores);
- whole `pc ask` processes: wall time to exit, the first token's time inside, peak memory;
- state bytes per token (files on disk; llama-server's slot file);
- the question's own prefill under other settings (threads, micro-batch, flash attention), from
  the same restored states: what helps a small batch at these sizes;
- once (the first size, ~2k tokens): a subset-and-reorder question (docqa workload, two documents
  asked in the other order), where a slot restore shares nothing beyond the system prompt.

Model files are written once into ``.venv/models/`` (about 1.3 and 3.4 GB) and reused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..api import open_session
from ..llama.bindings import llama_cpp_version
from ..llama.context import Context
from ..llama.model import Model
from ..llama.state_blob import kv_payloads
from . import processes, random_gguf, workloads
from .floor import Floor
from .llama_server import LlamaServer, ServerError, find_binary
from .prompts import render
from .systems import PcSystem, dir_bytes

Progress = Callable[[str], None]
SIZES = ("llama-3.2-1b", "llama-3.2-3b")
LEVELS = (2048, 4096, 8192)
SOURCES = ("license:GPL-3", "license:LGPL-2.1", "license:Apache-2.0")  # about 17k tokens of text
CACHED = ("pc", "pc-zstd", "pc-q8")
LABELS = {
    "nocache": "pc ask --no-cache",
    "pc": "pc (default: --compression none)",
    "pc-zstd": "pc --compression zstd",
    "pc-q8": "pc --kv-type q8_0",
    "floor": "physical floor (states in RAM, question only)",
    "llama-server": "llama-server, slot restore",
}


@dataclass(frozen=True)
class ModelsConfig:
    sizes: tuple[str, ...] = SIZES
    levels: tuple[int, ...] = LEVELS
    rounds: int = 3  # in-process questions per length, every cached system (and the floor) answering each
    repeats: int = 2  # more answers of each round's question by the cached systems, alternating
    process_rounds: int = 2  # whole `pc ask` processes of the default cache per length (1 each for zstd, q8_0)
    q8_levels: tuple[int, ...] = (4096,)  # the q8_0 cache computes its own states: one prefill more each
    reorder: int = 2048  # the subset-and-reorder question's context, at the first size (0: not measured)
    study_levels: tuple[int, ...] = (4096,)  # the question-prefill settings study
    study_repeats: int = 3
    quick: bool = False


QUICK = ModelsConfig(sizes=("llama-3.2-1b",), levels=(2048, 4096), rounds=2, repeats=1, process_rounds=1,
                     q8_levels=(2048,), reorder=1024, study_levels=(4096,), study_repeats=2, quick=True)
# the smallest run (`--smoke`, and the suite's): the tiny random llama at 256 and 512 tokens, one round;
# checks the benchmark works end to end, measures nothing worth reporting
SMOKE = replace(QUICK, sizes=("llama",), levels=(256, 512), rounds=1, repeats=1, process_rounds=1,
                q8_levels=(256,), reorder=256, study_levels=(512,), study_repeats=1)
STUDY = (  # (label, threads, micro-batch, flash attention): one change at a time from pc's settings
    ("pc's settings: 2 threads, batch 512, no flash attention", 2, 512, False),
    ("1 thread", 1, 512, False),
    ("4 threads (2 cores)", 4, 512, False),
    ("micro-batch 2048", 2, 2048, False),
    ("micro-batch 8 (question split)", 2, 8, False),
    ("flash attention", 2, 512, True),
    ("flash attention, micro-batch 2048", 2, 2048, True),
)


def models_dir() -> Path:
    return Path(sys.prefix) / "models"


def model_file(preset: str, progress: Progress | None = None, *, folder: Path | None = None) -> Path:
    """The preset's random-weight GGUF under .venv/models/ (or ``folder``), written once (seed 0)."""
    path = (folder or models_dir()) / f"random-{preset}.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            progress(f"writing {path} (once)")
        random_gguf.write_model(preset, path)
    return path


def median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def kv_bytes_per_token(shape: random_gguf.Shape, elem_bytes: float = 2.0) -> float:
    """K and V of every layer for one token: 2 x layers x KV heads x head size x element bytes."""
    return 2 * shape.n_layer * shape.n_head_kv * shape.head_dim * elem_bytes


def non_embedding_params(shape: random_gguf.Shape) -> int:
    """Parameters every token's prefill multiplies through (attention and FFN matrices)."""
    q, kv = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    return shape.n_layer * (shape.n_embd * (2 * q + 2 * kv) + 3 * shape.n_embd * shape.n_ff)


class ServerSystem:
    """llama-server for one model, its slot saved per workload after prefilling a prompt."""

    name = "llama-server"

    def __init__(self, binary: Path, model: Path, *, n_ctx: int, threads: int, log: Path) -> None:
        self.server = LlamaServer(binary, model, n_ctx=n_ctx, threads=threads, log=log)
        self.load_s = self.server.start()
        self.files: dict[str, Path] = {}

    def prime(self, key: str, tokens: tuple[int, ...]) -> float:
        """Prefill ``tokens`` and save the slot as ``key``; returns seconds (not a TTFT)."""
        t = time.perf_counter()
        self.server.erase()
        self.server.complete(tokens)
        self.files[key] = self.server.save(f"{key}.bin")
        return time.perf_counter() - t

    def ask(self, key: str, tokens: tuple[int, ...]) -> tuple[float, int]:
        """(ms from the restore request to the first token, tokens the server computed)."""
        self.server.erase()
        t = time.perf_counter()
        self.server.restore(f"{key}.bin")
        reply = self.server.complete(tokens)
        ms = (time.perf_counter() - t) * 1000
        return ms, int((reply.get("timings") or {}).get("prompt_n", -1))

    def stop(self) -> int | None:
        peak = self.server.peak_rss_bytes()
        self.server.stop()
        return peak


def run(cfg: ModelsConfig, *, work: Path, progress: Progress, model_dir: Path | None = None) -> dict:
    """Measure every size and length of ``cfg``; model files are kept in ``model_dir`` (default
    .venv/models/), everything else in ``work``."""
    t0 = time.perf_counter()
    binary = find_binary()
    threads = int(os.environ.get("PC_THREADS") or os.cpu_count() or 1)
    res: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "llama_cpp": llama_cpp_version(),
                 "machine": f"{os.cpu_count()} cores", "threads": threads, "load_at_start": os.getloadavg(),
                 "config": asdict(cfg), "llama_server": str(binary) if binary else None, "sizes": []}
    if binary is None:
        progress("llama-server not found ($PC_LLAMA_SERVER, or `make bench-models` builds it): not measured")
    reorder = min(cfg.reorder, max(cfg.levels))  # never longer than the longest length asked for
    for preset in cfg.sizes:
        path = model_file(preset, progress, folder=model_dir)
        shape = random_gguf.shape_for(preset)
        entry = {"preset": preset, "shape": shape.describe(), "file_bytes": path.stat().st_size,
                 "non_embedding_params": non_embedding_params(shape),
                 "kv_bytes_per_token_f16": kv_bytes_per_token(shape), "levels": []}
        res["sizes"].append(entry)
        entry["model_load_ms"] = _load_ms(path)
        progress(f"{preset}: {shape.describe()}, {path.stat().st_size / 1e9:.2f} GB, loads in "
                 f"{entry['model_load_ms']:.0f} ms")
        server = None
        if binary is not None:
            n_ctx = -(-(max(cfg.levels) + 256) // 256) * 256
            try:
                server = ServerSystem(binary, path, n_ctx=n_ctx, threads=threads, log=work / f"{preset}-server.log")
                entry["server_load_s"] = server.load_s
            except ServerError as e:
                entry["server_error"] = str(e)
        try:
            for i, level in enumerate(cfg.levels):
                progress(f"[{(time.perf_counter() - t0) / 60:.1f} min] {preset} at {level} tokens")
                entry["levels"].append(_level(cfg, path, work / preset / str(level), level, server, progress,
                                              study=level in cfg.study_levels))
                if reorder and i == 0 and preset == cfg.sizes[0]:
                    progress(f"[{(time.perf_counter() - t0) / 60:.1f} min] {preset}: subset-and-reorder question")
                    entry["reorder"] = _reorder(path, work / preset / "reorder", reorder, server, progress)
        finally:
            if server is not None:
                entry["server_peak_rss_bytes"] = server.stop()
    res["seconds"] = time.perf_counter() - t0
    res["load_at_end"] = os.getloadavg()
    res["extrapolated"] = extrapolate(res)
    return res


def _load_ms(path: Path) -> float:
    times = []
    for _ in range(3):
        t = time.perf_counter()
        m = Model(str(path))
        times.append((time.perf_counter() - t) * 1000)
        m.close()
    return float(statistics.median(times))


def _systems(path: Path, root: Path, level: int, cfg: ModelsConfig) -> dict[str, PcSystem]:
    pc = PcSystem(path, root, name="pc", label=LABELS["pc"])
    made = {"nocache": PcSystem(path, root, name="nocache", label=LABELS["nocache"], no_cache=True), "pc": pc,
            "pc-zstd": PcSystem(path, root, name="pc-zstd", label=LABELS["pc-zstd"], codec="zstd", source=pc)}
    if level in cfg.q8_levels:
        made["pc-q8"] = PcSystem(path, root, name="pc-q8", label=LABELS["pc-q8"], kv_type="q8_0")
    return made


def _level(cfg: ModelsConfig, path: Path, root: Path, level: int, server: ServerSystem | None, progress: Progress,
           *, study: bool) -> dict:
    n_q = cfg.rounds + cfg.process_rounds + 2
    systems = _systems(path, root / "systems", level, cfg)
    out: dict = {"level": level, "systems": {}}
    floor = Floor()
    try:
        tok_session = open_session(path, cache_dir=root / "render", mode="modular")
        try:
            wl = workloads.prefix(root / "workload", tok_session.model, level=level, n_questions=n_q,
                                  sources=SOURCES, pasted=False, max_prompt=level)
            prompts = {q: render(tok_session, wl, q) for q in wl.warmup + wl.questions}
        finally:
            tok_session.close()
        asked = wl.questions[: cfg.rounds]
        cached_tokens = len(os.path.commonprefix([prompts[q].tokens for q in wl.questions]))
        out.update(prompt_tokens=median([len(prompts[q].tokens) for q in asked]), cached_prompt_tokens=cached_tokens,
                   question_tokens=median([len(prompts[q].tokens) - cached_tokens for q in asked]), note=wl.note)
        rows = {name: {"label": s.label, "ttft_ms": []} for name, s in systems.items()}
        for name, s in systems.items():
            t = time.perf_counter()
            prep = s.start(wl, n_cells=0)
            rows[name].update(prepare_seconds=time.perf_counter() - t, prepare_note=prep.note)
            progress(f"  {name} ready ({rows[name]['prepare_seconds']:.0f} s)")
        key = f"prefix-{level}"
        if server is not None:
            rows["llama-server"] = {"label": LABELS["llama-server"], "ttft_ms": [], "computed_tokens": []}
            rows["llama-server"]["prepare_seconds"] = server.prime(key, prompts[wl.warmup[0]].tokens)
            rows["llama-server"]["cache_bytes"] = server.files[key].stat().st_size
            progress(f"  llama-server primed ({rows['llama-server']['prepare_seconds']:.0f} s)")
        rows["floor"] = {"label": LABELS["floor"], "ttft_ms": []}
        fast = [n for n in (*CACHED, "floor", "llama-server") if n in rows]
        for r, q in enumerate(asked):
            for k in range(1 + cfg.repeats):
                order = fast[(r + k) % len(fast):] + fast[: (r + k) % len(fast)]
                for name in order:
                    if name == "floor":
                        floor.prepare(systems["pc"].session, wl, q)
                        rows["floor"]["ttft_ms"].append(floor.measure())
                    elif name == "llama-server":
                        ms, computed = server.ask(key, prompts[q].tokens)
                        rows[name]["ttft_ms"].append(ms)
                        rows[name]["computed_tokens"].append(computed)
                    else:
                        rows[name]["ttft_ms"].append(systems[name].ask(wl, q, prompts[q]).ttft_ms)
            progress(f"  round {r + 1}/{cfg.rounds}: " + ", ".join(
                f"{n} {rows[n]['ttft_ms'][-1]:.0f} ms" for n in fast))
        t = time.perf_counter()
        a = systems["nocache"].ask(wl, asked[0], prompts[asked[0]])
        rows["nocache"]["ttft_ms"].append(a.ttft_ms)
        progress(f"  --no-cache once: {a.ttft_ms / 1000:.1f} s (wall {time.perf_counter() - t:.0f} s)")
        if study:
            out["study"] = _study(systems["pc"], wl, asked[0], cfg.study_repeats, progress)
        floor.close()
        extra = wl.questions[cfg.rounds:]
        plan = [("pc", q) for q in extra[: cfg.process_rounds]]
        plan += [(n, extra[cfg.process_rounds + i]) for i, n in enumerate(("pc-zstd", "pc-q8")) if n in systems]
        for name, q in plan:
            run = processes.run(systems[name].process(wl, q, prompts[q]))
            p = rows[name].setdefault("process", {"wall_ms": [], "peak_rss_bytes": [], "child_ttft_ms": [],
                                                  "errors": []})
            if run.code != 0:
                p["errors"].append(run.error)
                continue
            p["wall_ms"].append(run.wall_ms)
            p["peak_rss_bytes"].append(run.peak_rss_bytes)
            p["child_ttft_ms"].append((run.reply or {}).get("ttft_ms"))
            progress(f"  pc ask process ({name}): {run.wall_ms:.0f} ms, {run.peak_rss_bytes / 1e9:.2f} GB peak")
        for name, s in systems.items():
            if name != "nocache":
                rows[name]["cache_bytes"] = dir_bytes(s.folder(wl))
        for row in rows.values():
            row["median_ttft_ms"] = median(row["ttft_ms"])
            if row.get("cache_bytes"):
                row["bytes_per_token"] = row["cache_bytes"] / cached_tokens
            if "process" in row:
                row["process"]["median_wall_ms"] = median(row["process"]["wall_ms"])
                row["process"]["max_peak_rss_bytes"] = max(row["process"]["peak_rss_bytes"], default=None)
        out["systems"] = rows
    finally:
        floor.close()
        for s in systems.values():
            s.stop(None)
    return out


def _reorder(path: Path, root: Path, level: int, server: ServerSystem | None, progress: Progress) -> dict:
    """Two documents cached in one order, asked in the other: pc stitches its modules, llama-server
    restores the saved prompt and shares only the system prompt with the question."""
    pc = PcSystem(path, root / "systems", name="pc", label=LABELS["pc"])
    nocache = PcSystem(path, root / "systems", name="nocache", label=LABELS["nocache"], no_cache=True)
    floor = Floor()
    out: dict = {"level": level}
    tok = _Tok(path)
    try:
        wl = workloads.docqa(root / "workload", tok, level=level, n_questions=2, slots=2,
                             pool=workloads.DOCQA_POOL[:2])
        tok.close()
        pc.start(wl, n_cells=0)
        nocache.start(wl, n_cells=0)
        names = [m.split("-", 1)[1] for m in wl.questions[0].modules]
        same = workloads.Question(tuple(f"s{i}-{n}" for i, n in enumerate(names, 1)), wl.questions[0].text)
        swapped = workloads.Question(tuple(f"s{i}-{n}" for i, n in enumerate(reversed(names), 1)),
                                     wl.questions[1].text)
        prompts = {q: render(pc.session, wl, q) for q in (same, swapped)}
        out.update(note=f"{wl.note}; saved prompt: {', '.join(same.modules)}; asked: {', '.join(swapped.modules)}",
                   prompt_tokens=len(prompts[swapped].tokens),
                   shared_with_saved_prompt=len(os.path.commonprefix([prompts[same].tokens, prompts[swapped].tokens])))
        rows: dict = {}
        rows["pc"] = {"label": LABELS["pc"],
                      "ttft_ms": [pc.ask(wl, swapped, prompts[swapped]).ttft_ms for _ in range(3)]}
        floor.prepare(pc.session, wl, swapped)
        rows["floor"] = {"label": LABELS["floor"], "ttft_ms": [floor.measure() for _ in range(3)]}
        if server is not None:
            server.prime("reorder", prompts[same].tokens)
            ms, computed = server.ask("reorder", prompts[swapped].tokens)
            rows["llama-server"] = {"label": LABELS["llama-server"], "ttft_ms": [ms], "computed_tokens": [computed]}
        rows["nocache"] = {"label": LABELS["nocache"], "ttft_ms": [nocache.ask(wl, swapped, prompts[swapped]).ttft_ms]}
        for row in rows.values():
            row["median_ttft_ms"] = median(row["ttft_ms"])
        out["systems"] = rows
        progress("  reorder: " + ", ".join(f"{n} {r['median_ttft_ms']:.0f} ms" for n, r in rows.items()))
    finally:
        floor.close()
        pc.stop(None)
        nocache.stop(None)
    return out


class _Tok:
    """The model's tokenizer for building workloads."""

    def __init__(self, path: Path) -> None:
        self.model = Model(str(path))

    def close(self) -> None:
        self.model.close()

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return self.model.tokenize(text, special=special)

    def token_bytes(self, token: int) -> bytes:
        return self.model.token_bytes(token)


def _untransposed(blob: np.ndarray) -> np.ndarray:
    """The same f16 state with V stored row by row, as a flash-attention context keeps it."""
    n_cells, payloads = kv_payloads(blob)
    out = blob.copy()
    for kind, at, n_embd, transposed in payloads:
        if kind == "v" and transposed:
            cols = blob[at: at + 2 * n_embd * n_cells].view("<f2").reshape(n_embd, n_cells)
            out[at: at + 2 * n_embd * n_cells] = np.ascontiguousarray(cols.T).view(np.uint8).reshape(-1)
    v_trans_at = 16 + 12 * n_cells
    out[v_trans_at: v_trans_at + 4] = np.frombuffer(np.uint32(0).tobytes(), np.uint8)
    # transposed V entries carry (elem, n_embd) where rows carry a u64 row size: same 8 bytes
    for kind, at, n_embd, transposed in payloads:
        if kind == "v" and transposed:
            out[at - 8: at] = np.frombuffer(np.uint64(2 * n_embd).tobytes(), np.uint8)
    return out


def _study(pc: PcSystem, wl: workloads.Workload, q: workloads.Question, repeats: int, progress: Progress) -> dict:
    """The question's prefill over the same restored states under other context settings."""
    session = pc.session
    view = session.prompt(wl.request(q))
    floor = Floor()
    try:
        floor.prepare(session, wl, q)
        ops = list(floor.ops)
        question = list(view.parts[-1].tokens)
    finally:
        floor.close()
    n_cells = view.schema_end + len(question) + 1
    rows = []
    for label, threads, ubatch, fa in STUDY:
        settings = replace(session.settings, n_ctx=-(-(n_cells + 16) // 256) * 256, n_batch=ubatch, n_threads=threads,
                           flash_attn=fa)
        applied = [(kind, (_untransposed(obj[0]), obj[1]) if fa and kind == "load" else obj)  # (blob, shift)
                   for kind, obj in ops]
        times = []
        with Context(session.model, settings) as ctx:
            for _ in range(repeats + 1):
                Floor.replay(ctx, applied)  # the states (and any fresh text before the question), untimed
                t = time.perf_counter()
                ctx.decode(question, start=ctx.pos_max(0) + 1, logits=True)
                int(np.argmax(ctx.logits()))
                times.append((time.perf_counter() - t) * 1000)
        rows.append({"setting": label, "threads": threads, "ubatch": ubatch, "flash_attn": fa,
                     "question_ms": times[1:], "median_ms": median(times[1:])})
        progress(f"  question prefill, {label}: {rows[-1]['median_ms']:.0f} ms")
    return {"question_tokens": len(question), "context_tokens": view.schema_end, "rows": rows}


def extrapolate(res: dict) -> dict:
    """What 8B (Llama-3.1-8B's shape) would take, from the measured sizes: per size, `--no-cache`
    TTFT per token and the floor's (question) TTFT scale with the parameters every token goes
    through; states scale with layers x KV heads x head size. Stated as an extrapolation."""
    target = random_gguf.PRESETS["llama-3.1-8b"]
    out: dict = {"preset": target.name, "kv_bytes_per_token_f16": kv_bytes_per_token(target),
                 "non_embedding_params": non_embedding_params(target), "levels": {}}
    measured = [s for s in res["sizes"] if s["levels"]]
    if not measured:
        return out
    ref = max(measured, key=lambda s: s["non_embedding_params"])
    scale = non_embedding_params(target) / ref["non_embedding_params"]
    out["from"] = ref["preset"]
    out["scale"] = scale
    for lv in ref["levels"]:
        sysm = lv["systems"]
        nocache = sysm.get("nocache", {}).get("median_ttft_ms")
        pc = sysm.get("pc", {}).get("median_ttft_ms")
        fl = sysm.get("floor", {}).get("median_ttft_ms")
        if not (nocache and pc):
            continue
        # the cached answer: the question's compute scales with the parameters; reading the
        # states with their bytes (the pc-floor gap, per byte)
        load_part = max(0.0, pc - (fl or 0.0)) * kv_bytes_per_token(target) / ref["kv_bytes_per_token_f16"]
        pc8 = (fl or pc) * scale + load_part
        out["levels"][str(lv["level"])] = {"nocache_ms": nocache * scale, "pc_ms": pc8,
                                           "speedup": nocache * scale / pc8,
                                           "state_mb": kv_bytes_per_token(target) * lv["cached_prompt_tokens"] / 1e6}
    return out


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 1000:,.1f} s" if ms >= 10000 else f"{ms:,.0f} ms"


def markdown(res: dict) -> str:
    cfg = res["config"]
    smoke = any(size not in random_gguf.PRESETS for size in cfg["sizes"])  # a tiny test model: no figures
    default = asdict(ModelsConfig())
    def plain(v):  # as JSON has it: a run's config compares the same fresh and read back
        return json.loads(json.dumps(v))

    full = all(plain(cfg.get(k)) == plain(v) for k, v in default.items())
    kind = "smoke run, not a measurement" if smoke else "quick" if cfg["quick"] else "full" if full else "partial"
    lines = [f"# Models benchmark ({kind}), {res['date']}", "",
             f"llama-cpp-python {res['llama_cpp']}, {res['machine']}, {res['threads']} thread"
             f"{'s' if res['threads'] != 1 else ''}; load average "
             f"{', '.join(f'{x:.1f}' for x in res['load_at_start'])} at the start, "
             f"{', '.join(f'{x:.1f}' for x in res.get('load_at_end', ()))} at the end; "
             f"{res['seconds'] / 60:.0f} min. Random-weight models of the real shapes (q8_0 matrices, f16 KV).", ""]
    for size in res["sizes"]:
        lines += [f"## {size['preset']}: {size['shape']}", "",
                  f"File {size['file_bytes'] / 1e9:.2f} GB; model load {size['model_load_ms']:.0f} ms in process; "
                  f"KV states {size['kv_bytes_per_token_f16'] / 1024:.0f} KiB per token in f16.", ""]
        names = ["nocache", "pc", "pc-zstd", "pc-q8", "floor", "llama-server"]
        lines += ["Median time to first token in process (the model loaded):", "",
                  "| context (cached + question tokens) | " + " | ".join(LABELS[n] for n in names) + " |",
                  "|---|" + "---:|" * len(names)]
        for lv in size["levels"]:
            cells = [fmt_ms((lv["systems"].get(n) or {}).get("median_ttft_ms")) for n in names]
            lines.append(f"| {lv['level']:,} ({lv['cached_prompt_tokens']:,} + {lv['question_tokens']:.0f}) | "
                         + " | ".join(cells) + " |")
        lines += ["", "Ratios (same run, medians):", "",
                  "| context | --no-cache / pc | pc / floor | llama-server / pc | pc process / (pc + load) | "
                  "peak memory of a pc process | states (pc, zstd, q8_0) per token | "
                  "llama-server slot file per token |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for lv in size["levels"]:
            s = lv["systems"]

            def m(n: str, s=s) -> float | None:
                return (s.get(n) or {}).get("median_ttft_ms")

            proc = (s.get("pc") or {}).get("process") or {}
            ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
            per_token = ", ".join(f"{(s.get(n) or {}).get('bytes_per_token', 0) / 1024:.1f}" if
                                  (s.get(n) or {}).get("bytes_per_token") else "-" for n in CACHED) + " KiB"
            srv = (s.get("llama-server") or {}).get("bytes_per_token")
            peak = proc.get("max_peak_rss_bytes")
            lines.append(
                f"| {lv['level']:,} | {ratio(m('nocache'), m('pc'))} | {ratio(m('pc'), m('floor'))} | "
                f"{ratio(m('llama-server'), m('pc'))} | "
                f"{ratio(proc.get('median_wall_ms'), (m('pc') or 0) + size['model_load_ms'])} | "
                f"{f'{peak / 1e9:.2f} GB' if peak else '-'} | {per_token} | "
                f"{f'{srv / 1024:.1f} KiB' if srv else '-'} |")
        lines.append("")
        for lv in size["levels"]:
            srv = lv["systems"].get("llama-server")
            if srv and srv.get("computed_tokens"):
                lines.append(f"- {lv['level']:,}: llama-server computed {min(srv['computed_tokens'])}-"
                             f"{max(srv['computed_tokens'])} tokens after each restore (the question).")
            proc = (lv["systems"].get("pc") or {}).get("process")
            pcb = (lv["systems"].get("pc") or {}).get("cache_bytes")
            if proc and proc.get("max_peak_rss_bytes") and pcb:
                over = proc["max_peak_rss_bytes"] - size["file_bytes"] - 1.5 * pcb
                lines.append(f"- {lv['level']:,}: a `pc ask` process peaked at "
                             f"{proc['max_peak_rss_bytes'] / 1e9:.2f} GB"
                             f" = model file {size['file_bytes'] / 1e9:.2f} GB + 1.5 x states {pcb / 1e9:.3f} GB "
                             f"{'+' if over >= 0 else '-'} {abs(over) / 1e6:.0f} MB; whole process "
                             f"{fmt_ms(proc.get('median_wall_ms'))} (first token inside: "
                             f"{fmt_ms(median([x for x in proc['child_ttft_ms'] if x]))}).")
        if size.get("server_peak_rss_bytes"):
            lines.append(f"- llama-server's peak memory over the run: {size['server_peak_rss_bytes'] / 1e9:.2f} GB.")
        if size.get("reorder"):
            ro = size["reorder"]
            lines += ["", f"Subset and reorder at {ro['level']:,} tokens ({ro['prompt_tokens']:,} tokens; "
                      f"{ro['shared_with_saved_prompt']} shared with the saved prompt): " + ", ".join(
                          f"{r['label']} {fmt_ms(r['median_ttft_ms'])}" for r in ro["systems"].values())
                      + (f" (llama-server computed {ro['systems']['llama-server']['computed_tokens'][0]} tokens)"
                         if "llama-server" in ro["systems"] else "") + ".", ""]
        for lv in size["levels"]:
            st = lv.get("study")
            if st and st.get("rows"):
                lines += ["", f"The question's prefill ({st['question_tokens']} tokens over {st['context_tokens']:,} "
                          f"restored cells), median of {len(st['rows'][0]['question_ms'])}:", "",
                          "| setting | ms |", "|---|---:|"]
                lines += [f"| {r['setting']} | {r['median_ms']:.0f} |" for r in st["rows"]]
        lines.append("")
    ex = res.get("extrapolated") or {}
    if ex.get("levels"):
        lines += [f"## {ex['preset']} (extrapolated, not measured)", "",
                  f"From {ex['from']}'s medians: compute scaled by non-embedding parameters "
                  f"(x{ex['scale']:.2f}), state reading by KV bytes per token "
                  f"({ex['kv_bytes_per_token_f16'] / 1024:.0f} KiB).", "",
                  "| context | --no-cache | pc | speed-up | states |", "|---|---:|---:|---:|---:|"]
        for lv, e in ex["levels"].items():
            lines.append(f"| {int(lv):,} | {fmt_ms(e['nocache_ms'])} | {fmt_ms(e['pc_ms'])} | {e['speedup']:.0f}x | "
                         f"{e['state_mb']:,.0f} MB |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> bool:
    """Median TTFT against context length, one panel per model size, one line per system."""
    from .plots import _pyplot

    sizes = [s for s in res["sizes"] if s["levels"]]
    if not sizes:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 5), dpi=120, squeeze=False)
    style = {"nocache": ("#7f7f7f", "o"), "pc": ("#1f77b4", "o"), "pc-zstd": ("#17becf", "^"),
             "pc-q8": ("#8c564b", "P"), "floor": ("#2ca02c", "x"), "llama-server": ("#d62728", "s")}
    for ax, size in zip(axes[0], sizes, strict=True):
        for name, (color, marker) in style.items():
            pts = [(lv["cached_prompt_tokens"], lv["systems"][name]["median_ttft_ms"]) for lv in size["levels"]
                   if (lv["systems"].get(name) or {}).get("median_ttft_ms")]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, "--" if name == "floor" else "-", marker=marker, color=color, label=LABELS[name])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("cached context, tokens")
        ax.set_ylabel("median time to first token, ms (log)")
        ax.set_title(size["preset"])
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write(res: dict, out_dir: Path, *, stamp: str | None = None) -> dict[str, Path]:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = stamp or dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    paths = {"json": out_dir / f"{stamp}-models.json", "md": out_dir / f"{stamp}-models.md"}
    paths["json"].write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    md = markdown(res)
    png = out_dir / f"{stamp}-models-ttft.png"
    try:
        if plot(res, png):
            paths["png"] = png
            md += f"\n![time to first token]({png.name})\n"
    except ImportError:
        md += "\nPlot skipped: matplotlib is not installed (pip install -e '.[dev]').\n"
    paths["md"].write_text(md, encoding="utf-8")
    return paths



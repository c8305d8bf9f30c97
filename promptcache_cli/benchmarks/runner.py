"""Speed: every system answers the same questions of a workload, alternating run by run.

Round r asks question r of every system, in an order rotated by one each round, so no system
always runs first or right after another. The cheap systems (the `pc` caches and the floor) then
answer the same question ``fast_repeats`` more times, still alternating, for steadier medians.
Every measured question is new to every system (no prompt repeats an earlier one), so the
prompt caches of llama-cpp-python only ever find a shared prefix, never the whole prompt.
Whole-process runs follow, each on a further new question. A system that fails is reported as
failed with its error, and the others go on.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from ..api import Session
from . import processes
from .floor import Floor
from .prompts import Prompt, render
from .systems import PcSystem, System
from .workloads import Workload

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SpeedSettings:
    rounds: int  # in-process questions per workload (each system answers each once)
    fast_repeats: int  # extra answers of the round's question by the cheap systems
    process_rounds: int  # whole-process answers per system


def median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def rotate(items: list, k: int) -> list:
    if not items:
        return items
    k %= len(items)
    return items[k:] + items[:k]


def _failed(e: BaseException) -> str:
    return f"failed: {type(e).__name__}: {e}".splitlines()[0][:300]


def needed_questions(settings: SpeedSettings) -> int:
    return settings.rounds + settings.process_rounds


def run_workload(wl: Workload, systems: list[System], *, renderer: Session, floor: Floor | None,
                 settings: SpeedSettings, progress: Progress) -> dict:
    """Measure every system on ``wl``; ``floor`` reads its states from the first cached pc system."""
    asked = wl.questions[: needed_questions(settings)]
    if len(asked) < needed_questions(settings):
        raise ValueError(f"{wl.name}: {len(wl.questions)} questions, {needed_questions(settings)} needed")
    prompts: dict = {q: render(renderer, wl, q) for q in wl.warmup + asked}
    n_cells = max(len(p.tokens) for p in prompts.values()) + 32
    res = {s.name: {"label": s.label, "status": s.status, "in_ram": s.in_ram, "ttft_ms": [], "prompt_tokens": []}
           for s in systems}
    live = [s for s in systems if s.status == "ok"]
    for s in list(live):
        try:
            prep = s.start(wl, n_cells=n_cells)
            if not getattr(s, "no_cache", False):
                for q in wl.warmup:
                    s.ask(wl, q, prompts[q])
            res[s.name].update(prepare_seconds=prep.seconds, prepare_note=prep.note)
        except Exception as e:  # noqa: BLE001 - a failing system is reported, the others go on
            res[s.name]["status"] = _failed(e)
            live.remove(s)
        progress(f"{wl.name}: {s.name} ready ({res[s.name]['status']})")
    source = next((s for s in live if isinstance(s, PcSystem) and not s.no_cache and s.codec == "none"), None)
    floor_ms: list[float] = []
    floor_status = ["ok"]

    def measure(s: System | Floor, q, prompt: Prompt) -> None:
        if isinstance(s, Floor):
            if floor_status[0] == "ok":
                try:
                    s.prepare(source.session, wl, q)
                    floor_ms.append(s.measure())
                except Exception as e:  # noqa: BLE001
                    floor_status[0] = _failed(e)
            return
        try:
            a = s.ask(wl, q, prompt)
        except Exception as e:  # noqa: BLE001
            res[s.name]["status"] = _failed(e)
            live.remove(s)
            return
        res[s.name]["ttft_ms"].append(a.ttft_ms)
        res[s.name]["prompt_tokens"].append(a.prompt_tokens)

    use_floor = floor if (floor is not None and source is not None) else None
    for r, q in enumerate(asked[: settings.rounds]):
        t = time.perf_counter()
        everyone: list = [*live, *([use_floor] if use_floor else [])]
        for s in rotate(everyone, r):
            if s is use_floor or s in live:
                measure(s, q, prompts[q])
        fast = [s for s in everyone if s is use_floor or (isinstance(s, PcSystem) and not s.no_cache)]
        for k in range(settings.fast_repeats):
            for s in rotate(fast, r + k):
                if s is use_floor or s in live:
                    measure(s, q, prompts[q])
        progress(f"{wl.name}: round {r + 1}/{settings.rounds} took {time.perf_counter() - t:.0f} s")
    for r, q in enumerate(asked[settings.rounds:]):
        for s in rotate(list(live), r):
            cmd = s.process(wl, q, prompts[q])
            if cmd is None:
                continue
            run = processes.run(cmd)
            p = res[s.name].setdefault("process", {"wall_ms": [], "peak_rss_bytes": [], "child_ttft_ms": [],
                                                   "errors": []})
            if run.code != 0:
                p["errors"].append(run.error)
                continue
            p["wall_ms"].append(run.wall_ms)
            p["peak_rss_bytes"].append(run.peak_rss_bytes)
            p["child_ttft_ms"].append((run.reply or {}).get("ttft_ms"))
        progress(f"{wl.name}: whole-process round {r + 1}/{settings.process_rounds} done")
    if use_floor is not None:
        use_floor.close()  # its context uses the pc system's model, freed when that system stops
    for s in systems:
        out = res[s.name]
        out["median_ttft_ms"] = median(out["ttft_ms"])
        if "process" in out:
            out["process"]["median_wall_ms"] = median(out["process"]["wall_ms"])
            out["process"]["max_peak_rss_bytes"] = max(out["process"]["peak_rss_bytes"], default=None)
        if s.status != "ok":  # never started: not available
            continue
        if out["status"] == "ok":
            out["cache_bytes"] = s.cache_bytes(wl)
        try:
            s.stop(wl)
        except Exception as e:  # noqa: BLE001
            out["stop_error"] = _failed(e)
    pc_tokens = [len(prompts[q].tokens) for q in asked[: settings.rounds]]
    return {
        "name": wl.name, "kind": wl.kind, "level": wl.level, "note": wl.note,
        "prompt_tokens": median(pc_tokens), "prompt_tokens_per_question": pc_tokens,
        "questions": [{"modules": list(q.modules), "params": list(q.params), "question": q.text} for q in asked],
        "systems": res,
        "floor": {"label": Floor.label, "status": floor_status[0], "ttft_ms": floor_ms,
                  "median_ttft_ms": median(floor_ms)} if use_floor else None,
    }

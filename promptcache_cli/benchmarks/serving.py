"""The serving benchmark: `pc serve` against llama-cpp-python's server and llama.cpp's
``llama-server``, every system driven by the same OpenAI client with the same prompts, side by
side (the order rotated question by question), plus `pc serve` under concurrent clients, `pc
batch` against the same questions in process, and each server's memory.

Workloads (texts and questions from workloads.py):

- ``docqa``: document questions, each a different ordered choice of 3 of 4 documents at ~4k
  tokens (the subset-and-reorder workload). `pc` names a schema and the documents as modules
  (``extra_body``); the others get the same documents as the user message's text. Warm-up: every
  system sees each document once.
- ``prefix``: one long shared context (a system prompt and a document), new questions.
- ``chat``: a conversation over that document, each system keeping its own answers in the history.

Also `pc serve`'s bare model on the same chats (its RAM prompt cache, as the peers'), and `pc`
in process (the same questions through :meth:`Session.stream`, no server): the in-process time
to first token the server is held against. Time to first token is measured by the client: from
sending the request to the first streamed chunk carrying text.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .. import api
from . import servers, workloads
from .servers import Running
from .systems import dir_bytes, pc_command

Progress = Callable[[str], None]
PC, BARE, LCP, LS, INPROC = "pc", "pc-bare", "llama-cpp-python", "llama-server", "in-process"
LABELS = {PC: "pc serve (schema + modules)", BARE: "pc serve (bare model, RAM prompt cache)",
          LCP: "llama-cpp-python server (RAM cache)", LS: "llama-server (--cache-reuse 256)",
          INPROC: "pc in process (Session.stream)"}


@dataclass(frozen=True)
class ServeConfig:
    quick: bool = False
    level: int = 4096  # tokens of context in the docqa and prefix workloads
    docqa_questions: int = 12  # 6 gave 1.05x and 1.26x in two runs of the 1.15x bound: too few
    prefix_questions: int = 6
    chat_turns: int = 4
    answer_tokens: int = 16
    clients: int = 8
    requests_per_client: int = 20
    distinct_requests: int = 8  # the concurrent clients' requests cycle through these
    batch_questions: int = 50
    cache_ram: int = 2 << 30


QUICK = ServeConfig(quick=True, level=1024, docqa_questions=2, prefix_questions=2, chat_turns=2, clients=4,
                    requests_per_client=3, distinct_requests=4, batch_questions=8)


@dataclass
class Turn:
    """One request as a system sees it."""

    messages: list[dict[str, str]]
    extra: dict[str, Any] | None = None  # pc's extra_body
    model: str | None = None  # None: the server's bare model


@dataclass
class Result:
    ttft_ms: float
    total_ms: float
    text: str
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


def chat(server: Running, turn: Turn, max_tokens: int) -> Result:
    """One streamed chat completion, timed by the client."""
    t0 = time.perf_counter()
    first = None
    parts: list[str] = []
    usage = None
    stream = server.client().chat.completions.create(
        model=turn.model or server.spec.bare_model, messages=turn.messages, max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body=turn.extra)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    end = time.perf_counter()
    cached = None
    if usage is not None and getattr(usage, "prompt_tokens_details", None) is not None:
        cached = usage.prompt_tokens_details.cached_tokens
    return Result(((first or end) - t0) * 1000, (end - t0) * 1000, "".join(parts),
                  usage.prompt_tokens if usage is not None else None, cached)


def in_process(session: api.Session, request: api.Request) -> Result:
    t0 = time.perf_counter()
    first = None
    answer = None
    for item in session.stream(request):
        if isinstance(item, str):
            if first is None and item:
                first = time.perf_counter()
        else:
            answer = item
    end = time.perf_counter()
    assert answer is not None
    return Result(((first or end) - t0) * 1000, (end - t0) * 1000, answer.text,
                  answer.cached_tokens + answer.computed_tokens, answer.cached_tokens)


# -- the run ------------------------------------------------------------------------------------------


def run(cfg: ServeConfig, *, model_path: Path, work_dir: Path, llama_server: Path | None,
        peers_python: Path | None, progress: Progress) -> dict[str, Any]:
    t_start = time.perf_counter()
    cache_dir = work_dir / "cache"
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    session = api.open_session(model_path, cache_dir=cache_dir)
    docqa = workloads.docqa(work_dir / "wl", session, level=cfg.level, n_questions=cfg.docqa_questions)
    prefix = workloads.prefix(work_dir / "wl", session, level=cfg.level,
                              n_questions=max(cfg.prefix_questions, cfg.chat_turns))
    for wl in (docqa, prefix):
        t = time.perf_counter()
        session.compile(wl.schema())
        progress(f"compiled {wl.name} in {time.perf_counter() - t:.0f} s")
    threads = os.cpu_count() or 1
    specs = [servers.pc_spec([docqa.schema_path, prefix.schema_path], model=model_path, cache_dir=cache_dir,
                             cache_ram=cfg.cache_ram)]
    missing: dict[str, str] = {}
    if peers_python is not None and peers_python.exists():
        specs.append(servers.llama_cpp_python_spec(peers_python, model=model_path, cache_ram=cfg.cache_ram,
                                                   threads=threads))
    else:
        missing[LCP] = f"not run: no llama-cpp-python server environment at {peers_python}"
    if llama_server is not None and llama_server.exists():
        specs.append(servers.llama_server_spec(llama_server, model=model_path, threads=threads))
    else:
        missing[LS] = f"not run: no llama-server binary at {llama_server}"
    running: dict[str, Running] = {}
    try:
        for spec in specs:
            t = time.perf_counter()
            running[spec.name] = servers.start(spec, logs)
            progress(f"started {spec.label} in {time.perf_counter() - t:.0f} s")
        res: dict[str, Any] = {"config": asdict(cfg), "missing": missing, "labels": LABELS}
        res["docqa"] = _docqa(cfg, session, docqa, running, progress)
        res["prefix"] = _prefix(cfg, session, prefix, running, progress)
        res["chat"] = _chat(cfg, prefix, running, progress)
        res["concurrency"] = _concurrency(cfg, docqa, running["pc"], progress)
        res["batch"] = _batch(cfg, session, docqa, model_path, cache_dir, work_dir, progress)
        res["memory"] = _memory(cfg, running, model_path, cache_dir)
    finally:
        for r in running.values():
            r.stop()
        session.close()
    res["environment"] = _environment(model_path, llama_server, peers_python)
    res["minutes"] = round((time.perf_counter() - t_start) / 60, 1)
    res["targets"] = targets(res)
    return res


def _documents(wl: workloads.Workload, q: workloads.Question) -> str:
    """The selected documents' text, one after another as the schema's prompt holds them."""
    folder = wl.schema_path.parent
    docs = []
    for m in q.modules:
        name = m.split("-", 1)[1] if wl.kind == "docqa" else m
        docs.append((folder / f"{name}.txt").read_text(encoding="utf-8").strip())
    return "\n".join(docs)  # the schema has a line break between its unions


def _peer_messages(wl: workloads.Workload, q: workloads.Question) -> list[dict[str, str]]:
    """The request's prompt as a chat any server takes: the schema's system prompt, then the
    selected documents and the question."""
    return [{"role": "system", "content": workloads.SYSTEM},
            {"role": "user", "content": _documents(wl, q) + "\n\n" + q.text}]


def _turns(wl: workloads.Workload, q: workloads.Question, names: list[str]) -> dict[str, Turn]:
    peer = _peer_messages(wl, q)
    out = {}
    for name in names:
        if name == PC:
            out[name] = Turn([{"role": "user", "content": q.text}], {"pc": {"modules": list(q.modules)}},
                             wl.schema().name)
        else:
            out[name] = Turn(peer)
    return out


def _server_of(name: str) -> str:
    return PC if name in (PC, BARE) else name


def _side_by_side(cfg: ServeConfig, session: api.Session, wl: workloads.Workload, running: dict[str, Running],
                  questions: list[workloads.Question], progress: Progress, what: str) -> dict[str, Any]:
    names = [PC, BARE, *(n for n in (LCP, LS) if n in running), INPROC]
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i, q in enumerate(questions):
        order = names[i % len(names):] + names[: i % len(names)]
        turns = _turns(wl, q, names)
        for name in order:
            if name == INPROC:
                r = in_process(session, wl.request(q, max_tokens=cfg.answer_tokens))
            else:
                r = chat(running[_server_of(name)], turns[name], cfg.answer_tokens)
            rows[name].append(asdict(r))
        progress(f"{what} {i + 1}/{len(questions)}: " + ", ".join(
            f"{n} {rows[n][-1]['ttft_ms']:.0f} ms" for n in names))
    return {"questions": len(questions), "systems": {n: _summary(rows[n]) for n in names}, "runs": rows}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [r["ttft_ms"] for r in rows]
    return {"median_ttft_ms": round(statistics.median(ttft), 1) if ttft else None,
            "median_total_ms": round(statistics.median(r["total_ms"] for r in rows), 1) if rows else None,
            "prompt_tokens": [r["prompt_tokens"] for r in rows], "cached_tokens": [r["cached_tokens"] for r in rows]}


def _docqa(cfg, session, wl, running, progress) -> dict[str, Any]:
    for q in wl.warmup:  # every system sees each document once (untimed)
        for name, turn in _turns(wl, q, [PC, BARE, *(n for n in (LCP, LS) if n in running)]).items():
            chat(running[_server_of(name)], turn, cfg.answer_tokens)
    progress("docqa: warmed up")
    out = _side_by_side(cfg, session, wl, running, wl.questions, progress, "docqa")
    out["note"] = wl.note
    return out


def _prefix(cfg, session, wl, running, progress) -> dict[str, Any]:
    for name, turn in _turns(wl, wl.warmup[0], [PC, BARE, *(n for n in (LCP, LS) if n in running)]).items():
        chat(running[_server_of(name)], turn, cfg.answer_tokens)
    progress("prefix: warmed up")
    out = _side_by_side(cfg, session, wl, running, wl.questions[: cfg.prefix_questions], progress, "prefix")
    out["note"] = wl.note
    return out


def _chat(cfg, wl, running, progress) -> dict[str, Any]:
    """A conversation over the prefix workload's document: turn after turn, each system with its
    own history (its own answers), the systems taking turns."""
    names = [PC, BARE, *(n for n in (LCP, LS) if n in running)]
    questions = [q.text.rsplit("\n\n", 1)[-1] for q in wl.questions][: cfg.chat_turns]
    doc = _documents(wl, wl.questions[0])
    history: dict[str, list[dict[str, str]]] = {n: [] for n in names}
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for t, question in enumerate(questions):
        for name in names[t % len(names):] + names[: t % len(names)]:
            h = history[name]
            if name == PC:
                turn = Turn(h + [{"role": "user", "content": question}], {"pc": {"modules": ["doc"]}},
                            wl.schema().name)
            else:
                first = [{"role": "system", "content": workloads.SYSTEM},
                         {"role": "user", "content": doc + "\n\n" + questions[0]}]
                turn = Turn(first + h[1:] + ([{"role": "user", "content": question}] if t else []))
            r = chat(running[_server_of(name)], turn, cfg.answer_tokens)
            rows[name].append(asdict(r))
            h += ([{"role": "user", "content": question}] + [{"role": "assistant", "content": r.text}])
        progress(f"chat turn {t + 1}/{len(questions)}: " + ", ".join(
            f"{n} {rows[n][-1]['ttft_ms']:.0f} ms" for n in names))
    return {"turns": len(questions), "systems": {n: _summary(rows[n]) for n in names}, "runs": rows,
            "note": f"{len(questions)} turns over the prefix workload's document, each system's own answers in its "
                    "history; pc serve: the schema's document as a module, the turns after it"}


def _concurrency(cfg, wl, server: Running, progress) -> dict[str, Any]:
    """Clients at once against `pc serve`: each answer must equal the one the same request gets alone."""
    pool = [workloads.Question(q.modules, text) for q, text in zip(
        (wl.questions * cfg.distinct_requests)[: cfg.distinct_requests],
        (workloads.DOCQA_QUESTIONS * cfg.distinct_requests)[1: cfg.distinct_requests + 1], strict=True)]
    turns = [_turns(wl, q, [PC])[PC] for q in pool]
    alone = [chat(server, t, cfg.answer_tokens).text for t in turns]
    ttft: list[float] = []
    wrong: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for j in range(cfg.requests_per_client):
            k = (c + j) % len(turns)
            try:
                r = chat(server, turns[k], cfg.answer_tokens)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                ttft.append(r.ttft_ms)
                if r.text != alone[k]:
                    wrong.append(f"client {c} request {j}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(cfg.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ttft.sort()
    n = cfg.clients * cfg.requests_per_client
    progress(f"concurrency: {len(ttft)}/{n} answered in {wall:.0f} s, {len(wrong)} different, {len(errors)} errors")
    return {"clients": cfg.clients, "requests_per_client": cfg.requests_per_client, "requests": n,
            "answered": len(ttft), "different_from_alone": len(wrong), "errors": errors[:5],
            "p50_ttft_ms": round(_quantile(ttft, 0.5), 1) if ttft else None,
            "p95_ttft_ms": round(_quantile(ttft, 0.95), 1) if ttft else None,
            "wall_s": round(wall, 1), "requests_per_s": round(len(ttft) / wall, 2)}


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1] if len(xs) > 1 else xs[0]


def _batch(cfg, session, wl, model_path: Path, cache_dir: Path, work_dir: Path, progress) -> dict[str, Any]:
    """`pc batch` of N questions (one process: start-up, model load and every answer) against the
    same N asked in process, per question."""
    orders = [q.modules for q in wl.questions] + [q.modules for q in wl.warmup]
    pool = [workloads.Question(orders[i % len(orders)], workloads.DOCQA_QUESTIONS[(i // len(orders)) % 8])
            for i in range(cfg.batch_questions)]
    lines = [{"schema": str(wl.schema_path), "question": q.text, "modules": list(q.modules),
              "max_tokens": cfg.answer_tokens} for q in pool]
    src = work_dir / "batch.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    t0 = time.perf_counter()
    texts = [session.ask(replace(wl.request(q), max_tokens=cfg.answer_tokens)).text for q in pool]
    in_proc = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = subprocess.run([*pc_command(), "batch", str(src), "--model", str(model_path)], capture_output=True,
                         env={**os.environ, "PC_CACHE_DIR": str(cache_dir)}, timeout=3600)
    wall = time.perf_counter() - t0
    out = [json.loads(line) for line in run.stdout.decode().splitlines()]
    same = sum(1 for o, t in zip(out, texts, strict=False) if o.get("answer") == t)
    progress(f"batch: {len(out)} answers in {wall:.1f} s (in process {in_proc:.1f} s)")
    n = len(pool)
    return {"questions": n, "exit_code": run.returncode, "answers": len(out), "same_as_in_process": same,
            "batch_wall_s": round(wall, 2), "in_process_s": round(in_proc, 2),
            "batch_ms_per_question": round(wall * 1000 / n, 1),
            "in_process_ms_per_question": round(in_proc * 1000 / n, 1),
            "ratio": round(wall / in_proc, 3)}


def _memory(cfg, running: dict[str, Running], model_path: Path, cache_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"model_bytes": model_path.stat().st_size, "cache_ram": cfg.cache_ram,
                           "pc_state_files_bytes": dir_bytes(cache_dir)}
    for name, r in running.items():
        out[name] = r.memory()
    try:
        metrics = running[PC].get("/metrics")
        out["pc_prompt_cache_bytes"] = int(float(next(line.split()[1] for line in metrics.splitlines()
                                                      if line.startswith("pc_prompt_cache_bytes "))))
    except (OSError, StopIteration, KeyError):
        pass
    return out


def _environment(model_path: Path, llama_server: Path | None, peers_python: Path | None) -> dict[str, Any]:
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "model": model_path.name,
            "cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
            "llama_server": str(llama_server) if llama_server else None,
            "peers_python": str(peers_python) if peers_python else None}


# -- targets --------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    d = res["docqa"]["systems"]
    p = res["prefix"]["systems"]
    rows = []
    pc, inproc = d[PC]["median_ttft_ms"], d[INPROC]["median_ttft_ms"]
    r = _ratio(pc, inproc)
    rows.append({"target": f"docqa ~{res['config']['level']}: pc serve TTFT within 1.15x of in process",
                 "measured": f"{r}x ({pc} vs {inproc} ms)", "met": r is not None and r <= 1.15})
    for peer in (LCP, LS):
        if peer in d:
            s = _ratio(d[peer]["median_ttft_ms"], pc)
            rows.append({"target": f"docqa: at least 10x faster than {peer}",
                         "measured": f"{s}x ({d[peer]['median_ttft_ms']} vs {pc} ms)",
                         "met": s is not None and s >= 10})
    if LS in p:
        for name in (PC, BARE):
            s = _ratio(p[name]["median_ttft_ms"], p[LS]["median_ttft_ms"])
            rows.append({"target": f"prefix: {LABELS[name]} within 1.2x of llama-server",
                         "measured": f"{s}x ({p[name]['median_ttft_ms']} vs {p[LS]['median_ttft_ms']} ms)",
                         "met": s is not None and s <= 1.2})
    c = res["concurrency"]
    rows.append({"target": f"{c['clients']} concurrent clients x {c['requests_per_client']} requests all answered "
                           "correctly", "measured": f"{c['answered']}/{c['requests']} answered, "
                           f"{c['different_from_alone']} different from alone; p50 TTFT {c['p50_ttft_ms']} ms, "
                           f"p95 {c['p95_ttft_ms']} ms",
                 "met": c["answered"] == c["requests"] and not c["different_from_alone"]})
    b = res["batch"]
    rows.append({"target": f"pc batch of {b['questions']} questions at most 1.2x in process per question",
                 "measured": f"{b['ratio']}x ({b['batch_ms_per_question']} vs {b['in_process_ms_per_question']} ms)",
                 "met": b["ratio"] <= 1.2 and b["answers"] == b["questions"]})
    m = res["memory"]
    pcm = m.get(PC, {})
    bound = m["model_bytes"] + m["pc_state_files_bytes"] + m.get("pc_prompt_cache_bytes", 0)
    mib = 2**20
    rows.append({"target": "pc serve memory bounded by the model, the mapped states and --cache-ram",
                 "measured": f"peak {pcm.get('peak_rss_bytes', 0) / mib:.0f} MiB; model {m['model_bytes'] / mib:.0f}"
                             f" + state files {m['pc_state_files_bytes'] / 2**20:.0f} + RAM prompt cache in use "
                             f"{m.get('pc_prompt_cache_bytes', 0) / 2**20:.0f} MiB (of {m['cache_ram'] / 2**20:.0f}) = "
                             f"{bound / 2**20:.0f} MiB, the rest contexts and Python",
                 "met": None})
    return rows


# -- output ----------------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [f"# Serving benchmark, {env['date']}", "",
             f"Model {env['model']}, {env['cpus']} cores; load average at the end {env['load_average_at_end'][0]:.1f}; "
             f"{res['minutes']} min. Answers of {res['config']['answer_tokens']} tokens, greedy; time to first "
             "token (TTFT) measured by the OpenAI client, from sending the request to the first streamed text.", ""]
    for name, why in res.get("missing", {}).items():
        lines.append(f"- {name}: {why}")
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | :---: |"]
    for t in res["targets"]:
        met = {True: "yes", False: "no", None: "see numbers"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    for section, title in (("docqa", "Document questions (subsets in varying order)"),
                           ("prefix", "One long shared context, new questions"),
                           ("chat", "A multi-turn chat over a document")):
        s = res[section]
        lines += ["", f"## {title}", "", s["note"] + ".", "",
                  "| system | median TTFT ms | median total ms | prompt tokens | cached tokens |",
                  "| --- | ---: | ---: | --- | --- |"]
        for name, row in s["systems"].items():
            lines.append(f"| {res['labels'][name]} | {row['median_ttft_ms']} | {row['median_total_ms']} | "
                         f"{_ints(row['prompt_tokens'])} | {_ints(row['cached_tokens'])} |")
    c, b, m = res["concurrency"], res["batch"], res["memory"]
    lines += ["", "## Concurrent clients (pc serve)", "",
              f"{c['clients']} clients x {c['requests_per_client']} streamed requests (docqa questions, "
              f"{res['config']['distinct_requests']} distinct): {c['answered']} answered, "
              f"{c['different_from_alone']} different from the answer the same request gets alone, "
              f"{len(c['errors'])} errors; TTFT p50 {c['p50_ttft_ms']} ms, p95 {c['p95_ttft_ms']} ms; "
              f"{c['requests_per_s']} requests/s over {c['wall_s']} s.",
              "", "## pc batch", "",
              f"{b['questions']} docqa questions: `pc batch` {b['batch_wall_s']} s as one process (start-up and "
              f"model load included), {b['batch_ms_per_question']} ms per question; in process "
              f"{b['in_process_ms_per_question']} ms per question; ratio {b['ratio']}x; "
              f"{b['same_as_in_process']}/{b['questions']} answers identical.",
              "", "## Memory", "", "| server | RSS at the end MiB | peak RSS MiB |", "| --- | ---: | ---: |"]
    for name in (PC, LCP, LS):
        if name in m:
            lines.append(f"| {res['labels'][name]} | {m[name].get('rss_bytes', 0) / 2**20:.0f} | "
                         f"{m[name].get('peak_rss_bytes', 0) / 2**20:.0f} |")
    mib = 2**20
    lines += ["", f"Model file {m['model_bytes'] / mib:.0f} MiB; pc's state files {m['pc_state_files_bytes'] / mib:.0f}"
              f" MiB (memory-mapped); pc's RAM prompt cache in use {m.get('pc_prompt_cache_bytes', 0) / 2**20:.0f} MiB "
              f"of --cache-ram {m['cache_ram'] / 2**20:.0f} MiB.", ""]
    return "\n".join(lines)


def _ints(xs: list[int | None]) -> str:
    vals = [x for x in xs if x is not None]
    if not vals:
        return "n/a"
    lo, hi = min(vals), max(vals)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def plot(res: dict[str, Any], path: Path) -> bool:
    """Median TTFT per workload and system (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = ("docqa", "prefix", "chat")
    names = [n for n in (PC, BARE, LCP, LS, INPROC) if any(n in res[s]["systems"] for s in sections)]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j, s in enumerate(sections) if name in res[s]["systems"]]
        ys = [res[s]["systems"][name]["median_ttft_ms"] for s in sections if name in res[s]["systems"]]
        bars = ax.bar(xs, ys, width, label=res["labels"][name])
        for b, y in zip(bars, ys, strict=True):
            ax.annotate(f"{y:,.0f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sections))])
    ax.set_xticklabels(["document questions\n(subsets, reordered)", "shared context,\nnew questions",
                        "multi-turn chat"])
    ax.set_yscale("log")
    ax.set_ylabel("median time to first token, ms (log)")
    ax.set_title(f"Serving through the OpenAI API, ~{res['config']['level']} tokens of context")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def run_and_write(cfg: ServeConfig, *, model_path: Path, out_dir: Path, llama_server: Path | None,
                  peers_python: Path | None, progress: Progress) -> dict[str, Path]:
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S") + "-serve"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pc-bench-serve-") as tmp:
        res = run(cfg, model_path=model_path, work_dir=Path(tmp), llama_server=llama_server,
                  peers_python=peers_python, progress=progress)
    paths = {"json": out_dir / f"{stamp}.json", "md": out_dir / f"{stamp}.md", "png": out_dir / f"{stamp}-ttft.png"}
    paths["json"].write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(res), encoding="utf-8")
    plot(res, paths["png"])
    return paths

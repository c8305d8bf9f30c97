"""The markdown report and the issue's targets, computed from a results dict (nothing measured here)."""

from __future__ import annotations

import statistics

TARGET_LEVEL = 4096
DEFAULT = "pc"  # the pc system with default settings (uncompressed modular cache)


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _x(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:,.1f}x"


def _status(s: dict) -> str:
    return "" if s["status"] == "ok" else s["status"]


def workload(res: dict, kind: str, level: int | None = None) -> dict | None:
    for w in res.get("workloads", []):
        if w["kind"] == kind and (level is None or w["level"] == level):
            return w
    return None


def median_of(w: dict | None, system: str) -> float | None:
    if w is None or system not in w["systems"]:
        return None
    return w["systems"][system].get("median_ttft_ms")


def paired(w: dict | None, system: str, other: str) -> tuple[float, int] | None:
    """The median of ``system``'s TTFT over ``other``'s answer by answer, and how many pairs: the
    cached systems and the floor answer the same question back to back (runner.py), so each ratio
    sees one moment of the machine's noise, where a ratio of two medians may pair a quiet stretch
    with a loaded one. None unless both answered every time."""
    if w is None:
        return None
    mine = (w["systems"].get(system) or {}).get("ttft_ms")
    theirs = ((w.get("floor") or {}) if other == "floor" else (w["systems"].get(other) or {})).get("ttft_ms")
    if not mine or not theirs or len(mine) != len(theirs) or not all(mine) or not all(theirs):
        return None
    return statistics.median(a / b for a, b in zip(mine, theirs, strict=True)), len(mine)


def _side_by_side(name: str, w: dict | None, system: str, other: str, of_medians: float | None, bound: float) -> dict:
    """A TTFT ratio target, judged on the answer-by-answer ratio (:func:`paired`) where there is
    one; the ratio of the medians is shown beside it."""
    pair = paired(w, system, other)
    if pair is None:
        return _target(name, of_medians, lambda v: v <= bound, "{:.2f}x")
    return _target(name, pair[0], lambda v: v <= bound, "{:.2f}x",
                   detail=f"median of {pair[1]} answer-by-answer ratios; ratio of the medians "
                          f"{'-' if of_medians is None else f'{of_medians:.2f}x'}")


def targets(res: dict) -> list[dict]:
    """Each target of the issue with its measured value and whether it was met (None: not measured)."""
    w = workload(res, "docqa", TARGET_LEVEL)
    pc, nocache, disk = median_of(w, DEFAULT), median_of(w, "nocache"), median_of(w, "llama-disk")
    floor = (w or {}).get("floor") or {}
    fl = floor.get("median_ttft_ms")
    out = [
        _target("cached TTFT at 4k at least 100x faster than --no-cache (in process)",
                nocache / pc if pc and nocache else None, lambda v: v >= 100, "{:.0f}x"),
        _side_by_side("cached TTFT at 4k within 1.3x of the physical floor", w, DEFAULT, "floor",
                      pc / fl if pc and fl else None, 1.3),
        _target("cached TTFT at 4k at least 10x faster than llama-cpp-python's disk cache (subsets, reordered)",
                disk / pc if pc and disk else None, lambda v: v >= 10, "{:.0f}x"),
    ]
    quality = res.get("quality") or {}
    q = quality.get("summary") or {}
    base = q.get("nocache", {}).get("needle_accuracy")
    variants = {v["name"]: v for v in quality.get("variants", [])}
    names = ["scaffold"] + [n for n in variants if n.startswith("scaffold+")] + [n for n in variants if n == "average"]
    n_tokens = quality.get("generated_tokens", 32)
    rows = quality.get("rows") or []
    control = "exact-m9"
    for name in names:  # the default encoding, then with each repair, then the average encoding
        m = q.get(name)
        how = "--encoding average" if name == "average" else "default encoding" + _repair_name(variants.get(name, {}))
        out += _agreement_targets(how, rows, name, "nocache", control, n_tokens)
        acc = (m or {}).get("needle_accuracy")
        p = None
        if acc is not None and base is not None:
            p = 1.0 if acc >= base else (m or {}).get("needle_mcnemar_p")
        split = ""
        if m and "needle_mcnemar_p" in m:
            split = (f"; found only by the cache {m['needles_only_cached']}, only by --no-cache "
                     f"{m['needles_only_nocache']}")
        out.append(_target(f"needle accuracy not significantly below --no-cache, McNemar p >= 0.05 ({how})",
                           p, lambda v: v >= 0.05, "p = {:.2f}", detail=f"{_pct(acc)} vs {_pct(base)}{split}"))
    return out + _storage_targets(w, quality, n_tokens) + _rag_targets(res.get("rag") or {})


def _rag_targets(r: dict) -> list[dict]:
    """The RAG workload's targets (issue 23): schema-free recognition and learning, in process."""
    s = r.get("summary") or {}
    dflt = "pc" if "pc" in s else "pc-r0"  # (the default is --repair 0: one system)
    nocache, bare, default = (s.get(n, {}).get("median_ttft_ms") for n in ("nocache", "pc-r0", dflt))
    out = [
        _target("RAG: TTFT at --repair 0 at least 20x faster than --no-cache (in process)",
                _ratio(nocache, bare), lambda v: v >= 20, "{:.1f}x"),
        _target("RAG: TTFT at --repair 0 at least 5x faster than llama-server --cache-reuse 256",
                None, lambda v: v >= 5, "{:.1f}x"),
        _target("RAG: TTFT at the default at least 5x faster than --no-cache (in process)",
                _ratio(nocache, default), lambda v: v >= 5, "{:.1f}x"),
    ]
    base = s.get("nocache", {}).get("needle_accuracy")
    for name, how in (("pc-r0", "RAG, --repair 0"), ("pc", "RAG, default")) if dflt == "pc" else \
            (("pc-r0", "RAG, --repair 0 (the default)"),):
        m = s.get(name)
        if not m:
            continue
        acc = m.get("needle_accuracy")
        p = 1.0 if acc is not None and base is not None and acc >= base else m.get("needle_mcnemar_p")
        out.append(_target(f"needle accuracy not significantly below --no-cache, McNemar p >= 0.05 ({how})", p,
                           lambda v: v >= 0.05, "p = {:.2f}", detail=f"{_pct(acc)} vs {_pct(base)}"))
        out += _agreement_targets(how, r.get("rows") or [], name, "nocache", r.get("control", "exact-m9"),
                                  r.get("generated_tokens", 32))
    return out


# The agreement rule: greedy answers of a small model flip under any perturbation, so a cache agrees
# with its reference when it is within these many points of the noise control (the exact states
# rounded to 9 mantissa bits, against --no-cache) at these answer lengths.
AGREEMENT_SLACK = {4: 0.03, 32: 0.10}


def _agreement_targets(how: str, rows: list[dict], name: str, ref: str, control: str, n_tokens: int) -> list[dict]:
    """One target per answer length in :data:`AGREEMENT_SLACK`: the share of questions whose first k
    greedy tokens under ``name`` equal ``ref``'s, at most the slack below the noise control's share
    against --no-cache (the value shown is the control's share minus the cache's, in points)."""
    out = []
    for k, slack in AGREEMENT_SLACK.items():
        k = min(k, n_tokens)
        have = bool(rows) and all(name in r and ref in r and control in r for r in rows)
        mine = agreement_at(rows, name, k, ref=ref) if have else None
        floor = agreement_at(rows, control, k) if have else None
        out.append(_target(f"first-{k}-token agreement within {slack * 100:.0f} points of the noise control ({how})",
                           None if mine is None else (floor - mine) * 100, lambda v, s=slack: v <= s * 100 + 1e-9,
                           "{:.1f} points below",
                           detail=f"{_pct(mine)} vs control {_pct(floor)}" if mine is not None else ""))
    return out


def _repair_name(variant: dict) -> str:
    if variant.get("refresh_fraction"):
        return f" + selective recompute of {variant['refresh_fraction']:.0%} of the tokens (--refresh)"
    if variant.get("repair_tokens"):
        return f" + boundary repair of {variant['repair_tokens']} tokens"
    return ""


def _bytes_of(w: dict | None, system: str) -> int | None:
    return None if w is None or system not in w["systems"] else w["systems"][system].get("cache_bytes")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _storage_targets(w: dict | None, quality: dict, n_tokens: int) -> list[dict]:
    """The cache-format issue's targets: sizes and load time at 4k, q8_0 answers against f16."""
    raw = _bytes_of(w, DEFAULT)
    return _agreement_targets("--kv-type q8_0 against the f16 cache", quality.get("rows") or [], "scaffold-q8_0",
                              "scaffold", "exact-m9", n_tokens) + [
        _target("zstd cache at 4k at least 1.15x smaller than the uncompressed f16 cache",
                _ratio(raw, _bytes_of(w, "pc-zstd")), lambda v: v >= 1.15, "{:.2f}x"),
        _side_by_side("zstd cache's TTFT at 4k within 1.25x of the uncompressed cache's", w, "pc-zstd", DEFAULT,
                      _ratio(median_of(w, "pc-zstd"), median_of(w, DEFAULT)), 1.25),
        _target("--kv-type q8_0 cache at 4k at least 1.8x smaller than the uncompressed f16 cache",
                _ratio(raw, _bytes_of(w, "pc-q8")), lambda v: v >= 1.8, "{:.2f}x"),
    ]


def _target(name: str, value: float | None, ok, fmt: str, detail: str = "") -> dict:
    return {"target": name, "value": value, "shown": "not measured in this run" if value is None else
            fmt.format(value) + (f" ({detail})" if detail else ""), "met": None if value is None else bool(ok(value))}


def markdown(res: dict) -> str:
    out = [f"# pc bench, {res['date']}", "",
           f"{res['machine']}; model {res['model']}; llama-cpp-python {res['llama_cpp']}; "
           f"{res.get('preset', 'custom')} configuration, {res['seconds'] / 60:.1f} min.", ""]
    out += ["## Targets", "", "| target | measured | met |", "| --- | ---: | :---: |"]
    for t in res.get("targets", []):
        out.append(f"| {t['target']} | {t['shown']} | {'-' if t['met'] is None else 'yes' if t['met'] else 'no'} |")
    out.append("")
    docqa = [w for w in res.get("workloads", []) if w["kind"] == "docqa"]
    if docqa:
        out += _docqa(docqa)
    for w in res.get("workloads", []):
        if w["kind"] != "docqa":
            out += _single(w)
    procs = [w for w in res.get("workloads", []) if any("process" in s for s in w["systems"].values())]
    if procs:
        out += _processes(procs)
    if res.get("quality"):
        out += _quality(res["quality"])
    if res.get("rag"):
        out += _rag(res["rag"])
    out += ["## How this was measured", ""] + [f"- {n}" for n in res.get("notes", [])] + [""]
    return "\n".join(out)


def _names(ws: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for w in ws:
        for n in w["systems"]:
            names.setdefault(n, None)
    return list(names)


def _docqa(ws: list[dict]) -> list[str]:
    names = _names(ws)
    labels = {n: next(w["systems"][n]["label"] for w in ws if n in w["systems"]) for n in names}
    absent = {"status": "ok", "median_ttft_ms": None, "cache_bytes": None}  # a system not run at a level
    head = "| system | " + " | ".join(f"{w['level']:,} ({_ms(w['prompt_tokens'])} tokens)" for w in ws) + " |"
    out = ["## (a) Document questions: subsets of documents in different orders", "", ws[0]["note"] + ".", "",
           "Median time to first token in ms, in process (model loaded); columns: nominal context "
           "(median prompt tokens).", "", head, "| --- |" + " ---: |" * len(ws)]
    for n in names:
        cells = [_status(w["systems"].get(n, absent)) or _ms(w["systems"].get(n, absent)["median_ttft_ms"])
                 for w in ws]
        out.append(f"| {labels[n]} | " + " | ".join(cells) + " |")
    if ws[0].get("floor"):
        out.append("| " + ws[0]["floor"]["label"] + " | " + " | ".join(_floor(w) for w in ws) + " |")
    out += ["", "Speed-up of the default `pc` cache:", "", "| against | " +
            " | ".join(f"{w['level']:,}" for w in ws) + " |", "| --- |" + " ---: |" * len(ws)]
    for n in names:
        if n != DEFAULT:
            out.append(f"| {labels[n]} | " + " | ".join(_x(median_of(w, n), median_of(w, DEFAULT)) for w in ws) + " |")
    out.append("| `pc` / physical floor | " + " | ".join(
        _x(median_of(w, DEFAULT), (w.get("floor") or {}).get("median_ttft_ms")) for w in ws) + " |")
    out += ["", "Bytes each system keeps for the workload (on disk; the RAM cache: in process memory):", "",
            "| system | " + " | ".join(f"{w['level']:,}" for w in ws) + " |", "| --- |" + " ---: |" * len(ws)]
    for n in names:
        if any(w["systems"].get(n, absent).get("cache_bytes") for w in ws):
            ram = " (RAM)" if any(w["systems"].get(n, absent).get("in_ram") for w in ws) else ""
            out.append(f"| {labels[n]}{ram} | " + " | ".join(_bytes(w["systems"].get(n, absent).get("cache_bytes"))
                                                          for w in ws) + " |")
    return out + [""]


def _floor(w: dict) -> str:
    f = w.get("floor") or {}
    return f.get("status", "ok") if f.get("status", "ok") != "ok" else _ms(f.get("median_ttft_ms"))


def _single(w: dict) -> list[str]:
    title = {"prefix": "(b) One document, varying tails (prefix workload)",
             "params": "(c) Parameterized and union prompts"}.get(w["kind"], w["name"])
    out = [f"## {title}", "", w["note"] + f"; median prompt {_ms(w['prompt_tokens'])} tokens.", "",
           "| system | median TTFT ms (in process) | vs `pc` | bytes kept |", "| --- | ---: | ---: | ---: |"]
    for s in w["systems"].values():
        cell = _status(s) or _ms(s["median_ttft_ms"])
        out.append(f"| {s['label']} | {cell} | {_x(s['median_ttft_ms'], median_of(w, DEFAULT))} | "
                   f"{_bytes(s.get('cache_bytes'))}{' (RAM)' if s.get('in_ram') and s.get('cache_bytes') else ''} |")
    if w.get("floor"):
        out.append(f"| {w['floor']['label']} | {_floor(w)} | "
                   f"{_x(w['floor']['median_ttft_ms'], median_of(w, DEFAULT))} | - |")
    return out + [""]


def _processes(ws: list[dict]) -> list[str]:
    out = ["## Whole processes", "", "One answer (one token) per process: interpreter start, imports, model load, "
           "cache load or prefill, first token. Median wall time and the largest peak resident memory "
           "(`ru_maxrss`).", "", "| workload | system | median wall ms | peak memory | runs |",
           "| --- | --- | ---: | ---: | ---: |"]
    for w in ws:
        for s in w["systems"].values():
            p = s.get("process")
            if not p:
                continue
            errs = f" ({len(p['errors'])} failed: {p['errors'][0]})" if p["errors"] else ""
            out.append(f"| {w['name']} | {s['label']} | {_ms(p['median_wall_ms'])} | "
                       f"{_bytes(p['max_peak_rss_bytes'])} | {len(p['wall_ms'])}{errs} |")
    return out + [""]


def _quality(q: dict) -> list[str]:
    s = q["summary"]
    out = [f"## Answer quality against --no-cache ({q['questions']} questions, {q['generated_tokens']} greedy "
           "tokens each)", "", q["note"] + ".", "",
           f"| cache | same {q['generated_tokens']} tokens | same first token | median KL | mean KL | "
           "needles found | median TTFT ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for v in q["variants"]:
        m = s[v["name"]]
        out.append(f"| {v['name']} | {_pct(m['exact_match_rate'])} | {_pct(m['top1_agreement'])} | "
                   f"{m['median_kl']:.4f} | {m['mean_kl']:.4f} | {_pct(m['needle_accuracy'])} | "
                   f"{_ms(m['median_ttft_ms'])} |")
    out.append(f"| --no-cache | 100% | 100% | 0 | 0 | {_pct(s['nocache']['needle_accuracy'])} | "
               f"{_ms(s['nocache']['median_ttft_ms'])} |")
    for name in q.get("controls", []):
        m = s[name]
        out.append(f"| control: {name} | {_pct(m['exact_match_rate'])} | {_pct(m['top1_agreement'])} | "
                   f"{m['median_kl']:.4f} | {m['mean_kl']:.4f} | {_pct(m['needle_accuracy'])} | "
                   f"{_ms(m['median_ttft_ms'])} |")
    out.append("")
    out += _horizons(q)
    if q.get("controls"):
        out += [f"Controls: the uncached prompt's exact states saved and loaded back before the question "
                f"(`exact-reload`), and the same states with every K and V value rounded to {q['control_bits']} "
                f"of its 10 mantissa bits (`exact-m{q['control_bits']}`, relative error at most "
                f"2^-{q['control_bits'] + 1}, a twentieth of q8_0's or less). What that control loses against "
                "--no-cache is the noise floor of these metrics for this model: greedy answers of a 135M model "
                "flip on near-ties under any perturbation, however small.", ""]
    if not q.get("repair_available"):
        out.append("The boundary repair is not available in this engine, so it was not measured.")
    for v in q["variants"]:
        if v.get("refresh_fraction"):
            what = (f" (`pc ask --refresh {v['refresh_fraction'] * 100:g}`, from a cache compiled with `--ranked`: "
                    f"the {v['refresh_fraction']:.0%} of the prompt's cached tokens whose states differ most "
                    "between the scaffold and the independent encoding, in the prompt's own context)")
        elif v["repair_tokens"]:
            what = ""
        else:
            continue
        m, plain = s[v["name"]], s[v["encoding"]]
        out += [f"- {v['name']}{what}: recomputes {m['mean_computed_tokens'] - plain['mean_computed_tokens']:.0f} "
                f"more tokens per question than {v['encoding']}; median TTFT {_ms(m['median_ttft_ms'])} ms "
                f"against {_ms(plain['median_ttft_ms'])} ms ({_x(m['median_ttft_ms'], plain['median_ttft_ms'])})."]
    seconds = q.get("compile_seconds") or {}
    if seconds.get("average") and seconds.get("scaffold") and "average" in s:
        out.append(f"- average (`--encoding average`): each module's states are the mean over up to 8 prompts "
                   f"before it; median TTFT {_ms(s['average']['median_ttft_ms'])} ms against scaffold's "
                   f"{_ms(s['scaffold']['median_ttft_ms'])} ms; compiling took {seconds['average']:.0f} s against "
                   f"{seconds['scaffold']:.0f} s ({_x(seconds['average'], seconds['scaffold'])}).")
    if seconds.get("scaffold-ranking"):
        out.append(f"- `pc compile --ranked` (the scores `--refresh` needs) added {seconds['scaffold-ranking']:.0f} s "
                   f"to the scaffold cache's {seconds['scaffold']:.0f} s.")
    q8 = s.get("scaffold-q8_0")
    if q8 and "same_as_f16_rate" in q8:
        out.append(f"- scaffold-q8_0 (`--kv-type q8_0`, flash attention): the same {q['generated_tokens']} greedy "
                   f"tokens as the f16 scaffold cache on {_pct(q8['same_as_f16_rate'])} of questions.")
    return out + [""]


def horizons(n_tokens: int) -> tuple[int, ...]:
    """The answer lengths agreement is shown at: 1, 2, 4, ... up to and including ``n_tokens``."""
    out, k = [], 1
    while k < n_tokens:
        out.append(k)
        k *= 2
    return (*out, n_tokens)


def agreement_at(rows: list[dict], name: str, k: int, *, ref: str = "nocache") -> float:
    """The share of questions whose first ``k`` greedy tokens under ``name`` are the ``ref`` answer's
    first ``k`` (an answer that ended sooner is compared whole, so the two must end alike)."""
    return sum(r[name]["tokens"][:k] == r[ref]["tokens"][:k] for r in rows) / len(rows)


def _horizons(q: dict) -> list[str]:
    """Agreement with --no-cache by answer length, every variant beside the controls: where an
    approximate cache parts from the uncached answer against where the noise floor does."""
    rows = q.get("rows") or []
    if not rows:
        return []
    ks = horizons(q["generated_tokens"])
    names = [v["name"] for v in q["variants"]] + list(q.get("controls", []))
    out = ["Same first k greedy tokens as --no-cache, by k (the share of questions; the last column is the "
           "table's first):", "", "| cache | " + " | ".join(f"k = {k}" for k in ks) + " |",
           "| --- |" + " ---: |" * len(ks)]
    for name in names:
        label = f"control: {name}" if name in q.get("controls", []) else name
        out.append(f"| {label} | " + " | ".join(_pct(agreement_at(rows, name, k)) for k in ks) + " |")
    q8, f16 = "scaffold-q8_0", "scaffold"
    if q8 in names and f16 in names:
        out.append(f"| {q8} against the f16 {f16} cache's answer | "
                   + " | ".join(_pct(agreement_at(rows, q8, k, ref=f16)) for k in ks) + " |")
    return out + [""]


def _rag(r: dict) -> list[str]:
    s, k = r["summary"], r["generated_tokens"]
    control = r.get("control", "exact-m9")
    ks = sorted({min(4, k), k})
    out = ["## (d) RAG: documents pasted into ordinary prompts, no schema", "", r["note"] + ".", "",
           f"{r['questions']} questions, {k} greedy tokens each; median prompt {_ms(r.get('prompt_tokens'))} tokens. "
           "Same first k tokens as --no-cache beside the noise control (the uncached prompt's exact states "
           "rounded to 9 mantissa bits); needles: the planted fact stated; p: exact McNemar test against "
           "--no-cache.", "",
           "| system | median TTFT ms | vs --no-cache | cached tokens (mean) | " +
           " | ".join(f"same {n}" for n in ks) + " | needles | p | median KL | bytes kept |",
           "| --- | ---: | ---: | ---: |" + " ---: |" * len(ks) + " ---: | ---: | ---: | ---: |"]
    labels = {n: v["label"] for n, v in r["systems"].items()}
    labels[control] = f"control: exact states rounded to 9 mantissa bits ({control})"
    base = s["nocache"]["median_ttft_ms"]
    for name, m in s.items():
        sysinfo = r["systems"].get(name, {})
        same = " | ".join(_pct(m["agreement"].get(str(n))) for n in ks)
        p = "-" if name == "nocache" else f"{m['needle_mcnemar_p']:.2f}"
        out.append(f"| {labels.get(name, name)} | {_ms(m['median_ttft_ms'])} | {_x(base, m['median_ttft_ms'])} | "
                   f"{m['mean_cached_tokens']:.0f} | {same} | {_pct(m['needle_accuracy'])} | {p} | "
                   f"{'-' if m['median_kl'] is None else format(m['median_kl'], '.4f')} | "
                   f"{_bytes(sysinfo.get('bytes'))} |")
    missing = r.get("missing_systems")
    if missing:
        out += ["", "Not measured in this run: " + "; ".join(missing) + "."]
    return out + [""]

"""PNG plots of a results dict (matplotlib, imported here only: `pc` never loads it otherwise)."""

from __future__ import annotations

from pathlib import Path

STYLE = {  # system -> (color, marker, line style)
    "nocache": ("#7f7f7f", "o", "-"),
    "llama-ram": ("#d62728", "s", "-"),
    "llama-disk": ("#ff7f0e", "D", "-"),
    "pc": ("#1f77b4", "o", "-"),
    "pc-zstd": ("#17becf", "^", "-"),
    "pc-q8": ("#8c564b", "P", "-"),
    "pc-prefix": ("#9467bd", "v", "-"),
    "floor": ("#2ca02c", "x", "--"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ttft(res: dict, path: Path) -> bool:
    """Median time to first token against prompt length, one line per system (log scales)."""
    ws = sorted((w for w in res.get("workloads", []) if w["kind"] == "docqa"), key=lambda w: w["prompt_tokens"])
    if not ws:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    series: dict[str, tuple[str, list, list]] = {}
    for w in ws:
        for name, s in w["systems"].items():
            if s.get("median_ttft_ms"):
                series.setdefault(name, (s["label"], [], []))
                series[name][1].append(w["prompt_tokens"])
                series[name][2].append(s["median_ttft_ms"])
        if w.get("floor") and w["floor"]["median_ttft_ms"]:
            series.setdefault("floor", (w["floor"]["label"], [], []))
            series["floor"][1].append(w["prompt_tokens"])
            series["floor"][2].append(w["floor"]["median_ttft_ms"])
    for name, (label, xs, ys) in series.items():
        color, marker, line = STYLE.get(name, (None, "o", "-"))
        ax.plot(xs, ys, line, marker=marker, color=color, label=label, linewidth=2)
        ax.annotate(f"{ys[-1]:,.0f} ms" if ys[-1] >= 10 else f"{ys[-1]:.1f} ms", (xs[-1], ys[-1]),
                    textcoords="offset points", xytext=(6, -3), fontsize=8, color=color)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([w["prompt_tokens"] for w in ws], [f"{w['prompt_tokens']:,.0f}" for w in ws])
    ax.set_xlabel("prompt tokens (subsets of documents, reordered per question)")
    ax.set_ylabel("median time to first token, ms (log)")
    ax.set_title(f"Time to first token, model loaded, {res['model']}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def cache_bytes(res: dict, path: Path) -> bool:
    """Bytes each system keeps per document workload, grouped by context length (log scale)."""
    ws = sorted((w for w in res.get("workloads", []) if w["kind"] == "docqa"), key=lambda w: w["prompt_tokens"])
    names = [n for n in STYLE if any((w["systems"].get(n) or {}).get("cache_bytes") for w in ws)]
    if not ws or not names:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        s0 = next(w["systems"][name] for w in ws if name in w["systems"])
        vals = [(w["systems"].get(name) or {}).get("cache_bytes") or 0 for w in ws]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(ws))]
        label = s0["label"] + (" (in RAM)" if s0.get("in_ram") else "")
        bars = ax.bar(xs, [v / 1e6 for v in vals], width, label=label, color=STYLE[name][0],
                      hatch="//" if s0.get("in_ram") else None, edgecolor="white")
        ax.bar_label(bars, [f"{v / 1e6:,.0f}" if v >= 1e7 else f"{v / 1e6:.1f}" for v in vals], fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(ws)), [f"{w['level']:,}\n({w['prompt_tokens']:,.0f} tokens)" for w in ws])
    ax.set_xlabel("document workload, nominal context")
    ax.set_ylabel("MB kept by the system (log)")
    ax.set_title("Cache size per system after the workload")
    ax.grid(True, axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True

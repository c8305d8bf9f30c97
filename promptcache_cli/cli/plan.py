"""`pc plan`: where prefix checkpoints would go, the DP's plan beside the baselines, from a trace file
or a recorded overlap history. Registered in cli/app.py with ``app.command("plan")(plan)``.

stdout carries a table, or one JSON object with ``--json``::

    {"strategies": {"dp": {"positions": [...], "expected_recomputed_tokens": X}, "block": {...},
                    "uniform": {...}, "sqrt": {...}, "dyadic": {...}},
     "source": ..., "requests": N, "weight": W, "requests_at_end": E, "length": L, "checkpoints": M,
     "decay": 0.99, "weighting": "...", "cost": "...", "units": {...}, "resolution_tokens": 1,
     "block_tokens": 256, "sqrt_tokens": S}

Every strategy's ``expected_recomputed_tokens`` is exact: over the N requests, with their recorded
depths d_i and weights w_i = decay ** (N - 1 - i) (trace order, oldest first, the newest weighing 1),
sum_i w_i * (min(d_i, L) - s(d_i)) / sum_i w_i, s(d) being the deepest of the strategy's positions
<= d (0 if none; the state at L is kept besides them, so the E requests at d >= L count 0). The DP
plans from the same requests with the same weights, at token resolution (its positions may be any
token; it is optimal over every set of at most M positions). ``weight`` is sum_i w_i. The
``weighting``, ``cost`` and ``units`` fields say this in the output itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import errors
from .common import CacheOpt, within

DECAY = 0.99  # checkpoint_plan.DECAY (numpy is imported only when planning: fast `pc` start)
WEIGHTING = ("exponential decay in trace order: of N requests, the i-th (0-based, oldest first) weighs "
             "decay ** (N - 1 - i), the newest 1; the plan and every cost use these weights")
COST = ("exact over the requests: sum_i w_i * (min(d_i, length) - s(d_i)) / sum_i w_i, d_i the recorded "
        "overlap depth, s(d) the deepest position <= d (0 if none); the state at length is kept besides "
        "the positions, so requests at d >= length count 0")
UNITS = {"positions": "tokens from the start of the cached prompt", "length": "tokens",
         "expected_recomputed_tokens": "shared tokens recomputed per request (weighted mean)",
         "weight": "the sum of the request weights", "block_tokens": "tokens", "sqrt_tokens": "tokens",
         "resolution_tokens": "tokens: the DP may place a checkpoint at any token"}


HELP = """Prefix mode: where to keep checkpoints, the optimal plan against the baselines.

\b
  pc plan -s schemas/travel.xml           # from the questions asked so far
  pc plan --trace requests.jsonl --checkpoints 8

Shows the shared tokens each plan recomputes per request (the exact weighted mean over the
requests). More: docs/usage.md#pc-plan"""


def plan(
    schema: Optional[Path] = typer.Option(
        None, "--schema", "-s", metavar="FILE", show_default=False,
        help="Plan from the questions asked about this schema.",
    ),
    trace: Optional[Path] = typer.Option(
        None, "--trace", metavar="FILE",
        help='Plan from requests: JSON lines {"tokens": N, "overlap": D}.',
    ),
    history: Optional[Path] = typer.Option(
        None, "--history", metavar="SCHEMA|DIR",
        help="A schema file (as -s), or a folder holding overlap.jsonl.",
    ),
    cache_dir: Optional[str] = CacheOpt,
    checkpoints: int = typer.Option(
        4, "--checkpoints", callback=within(0, 1024), metavar="M", show_default=False,
        help="Checkpoints to place (4), besides the prompt's end.",
    ),
    length: Optional[int] = typer.Option(
        None, "--length", callback=within(1), metavar="L",
        help="The cached prompt's tokens (default: the deepest overlap).",
    ),
    decay: float = typer.Option(
        DECAY, "--decay", metavar="D", show_default=False,
        help="Weight of a request against the next one (0.99; 1: equal).",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout (fields documented in it)."),
) -> None:
    if schema is not None:
        if history is not None and history != schema:
            _usage("-s SCHEMA and --history name the same thing: give one")
        history = schema
    if (trace is None) == (history is None):
        _usage("give one of -s SCHEMA, --trace FILE or --history SCHEMA|DIR")
    if not 0.0 < decay <= 1.0:
        _usage(f"--decay must be in (0, 1], not {decay}")
    if history is not None and history.is_file():
        history = _schema_history(history, cache_dir)
    source, depths = _requests(trace, history)
    deepest = max(depths, default=0)
    if length is None:
        if deepest < 1:
            what = "no requests" if not depths else "no request sharing any token"
            raise errors.InputError(f"{source} holds {what}: give --length L to see the plan without data")
        length = deepest
    elif length < deepest:
        _usage(f"--length {length} is shorter than the deepest overlap in {source} ({deepest} tokens)")
    from ..prefix import checkpoint_plan as cp

    results = cp.compare(depths, length=length, checkpoints=checkpoints, decay=decay)
    weights = cp.decay_weights(len(depths), decay)
    report = {
        "strategies": {
            name: {"positions": list(r.positions), "expected_recomputed_tokens": round(r.expected_recomputed_tokens, 3)}
            for name, r in results.items()
        },
        "source": source, "requests": len(depths), "weight": round(float(weights.sum()), 3),
        "requests_at_end": sum(d >= length for d in depths), "length": length, "checkpoints": checkpoints,
        "decay": decay, "weighting": WEIGHTING, "cost": COST, "units": UNITS,
        "resolution_tokens": 1, "block_tokens": cp.BLOCK_TOKENS, "sqrt_tokens": cp.sqrt_step(length),
    }
    if not any(d < length for d in depths):
        _note("no request stops short of the cached prompt's end: the plan is the default, evenly spaced")
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
        return
    _table(report)


def _schema_history(schema_file: Path, cache_dir: Optional[str]) -> Path:
    """The folder where prefix-mode requests against this schema are recorded."""
    from ..api import default_cache_dir
    from ..store.overlap_log import history_dir
    from ..api import load_schema

    schema = load_schema(str(schema_file))
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return history_dir(root, schema.name, schema.path)


def _requests(trace: Optional[Path], history: Optional[Path]) -> tuple[str, list[int]]:
    from ..store.overlap_log import OverlapLog, OverlapLogError, TraceError, read_trace

    try:
        if trace is not None:
            return str(trace), [o.overlap for o in read_trace(trace)]
        return str(history), [o.overlap for o in OverlapLog(history).read()]
    except (TraceError, OverlapLogError) as e:
        raise errors.InputError(str(e)) from None


def _note(message: str) -> None:
    from .common import write_err

    write_err(f"pc: {message}")


def _usage(message: str) -> None:
    """Bad options: one line on stderr and exit 2, as the other commands do."""
    _note(f"{message} (see `pc plan --help`)")
    raise typer.Exit(errors.EXIT_USAGE)


def _positions(positions: list[int], shown: int = 10) -> str:
    text = ", ".join(str(p) for p in positions[:shown])
    return text + (f", ... ({len(positions)} in all)" if len(positions) > shown else "") if positions else "-"


def _versus(x: float, dp: float) -> str:
    """How many more tokens per request a baseline recomputes than the DP."""
    if abs(x - dp) < 5e-4:
        return "same"
    return f"{x - dp:+,.1f}" + (f" ({x / dp:.2f}x)" if dp > 0 else "")


def _table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..prefix import checkpoint_plan as cp

    strategies = report["strategies"]
    dp = strategies["dp"]["expected_recomputed_tokens"]
    t = Table(
        title=f"{report['length']}-token cached prompt, {report['checkpoints']} checkpoints besides its end",
        caption=f"{report['requests']} requests from {report['source']} ({report['requests_at_end']} at its end, "
        f"recomputing nothing), weighing {report['weight']:,.1f} after decay {report['decay']} per request; "
        "exact weighted means",
    )
    t.add_column("strategy")
    t.add_column("positions")
    t.add_column("recomputed tokens per request", justify="right")
    t.add_column("vs dp", justify="right")
    for name in cp.STRATEGIES:
        r = strategies[name]
        x = r["expected_recomputed_tokens"]
        t.add_row(name, _positions(r["positions"]), f"{x:,.1f}", "-" if name == "dp" else _versus(x, dp))
    console = Console(markup=False, highlight=False)
    if not console.is_terminal:
        console = Console(markup=False, highlight=False, width=200)
    console.print(t)

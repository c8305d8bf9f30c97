#!/usr/bin/env python3
"""Experiment for issue 4: quantize only the *stored* KV state, not the llama.cpp context.

Modules are compiled with the normal f16 context (no flash attention). At ask time every cached
blob's K and V payloads are round-tripped through an 8-bit block quantizer in numpy (quantize,
then dequantize back to f16) before llama.cpp loads them, so only the cached cells carry
quantization noise; the question and the answer are computed in f16 as usual. Greedy answers
(16 and 32 tokens) are compared with the unquantized f16 cache on two question sets:

- ``needles``: the quality set of `make bench` (promptcache_cli.benchmarks.needles, as
  scripts/kv_agreement.py uses it: 30 questions, six 450-token texts with planted facts, three slots);
- ``licenses``: 48 questions over eight texts from /usr/share/common-licenses, each question
  importing a different subset of modules.

Schemes (``--schemes``): ``identity`` (no quantization: a determinism control, must be 100%),
``q8_0`` (llama.cpp's q8_0: blocks of 32 values along each cell's row, one f16 scale
``max|x| / 127`` per block, values ``round(x / scale)``; V is transposed back to rows first),
``q8_0-ch`` (the same blocks, but along each channel over 32 consecutive cells), ``q8_0-kch``
(K along channels, V along rows, as KIVI suggests), and controls ``f16-mB`` (every f16 value
rounded to B of its 10 mantissa bits: noise far below q8_0's, to see how easily answers flip).
For comparison on the same questions, ``f16+fa`` and ``q8_0+fa`` are whole llama.cpp contexts with
flash attention (and q8_0 K and V), what ``--kv-type q8_0`` does today.

For each disagreement the f16 logit gap between the top two tokens at the first differing step
is printed: a small gap means a near-tie that any perturbation may flip.

    python scripts/kv_storage_agreement.py [--sets needles,licenses] [--schemes ...] [--timing]
        [--cache DIR --out rows.jsonl]   # resumable: compiled states and finished questions are kept

Measured with SmolLM2-135M-Instruct Q4_1 (runs with ``--schemes identity,q8_0,q8_0-ch,f16-m9,f16-m7
--timing`` and ``--schemes identity,q8_0,f16+fa,q8_0+fa``), same first 16 greedy tokens as the f16 cache:

    set (questions)   q8_0 stored  q8_0-ch stored  f16-m9  f16-m7  f16+fa  q8_0+fa
    licenses (48)        67%           73%          71%     58%     65%     67%
    needles (30)         73%           80%          73%     73%     70%     70%

Rounding the stored f16 values to 9 mantissa bits (a twentieth of q8_0's error or less) flips as many
answers as q8_0 does, and every perturbation moves the first-token logits by about the same amount
(median 0.10-0.18, max 1-1.9): the disagreements are near-ties of the f16 answer (stored schemes: top-2 gap
0.001-0.36 logits where they first differ), not a quantization-specific loss. Planted facts found
(needles, 32 tokens): f16 22/30, q8_0 stored 24/30, f16+fa 23/30, q8_0+fa 21/30.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from promptcache_cli.pml import schema as pml  # noqa: E402
from promptcache_cli.benchmarks import needles  # noqa: E402
from promptcache_cli.benchmarks.perturb import round_mantissa  # noqa: E402
from promptcache_cli.llama.state_blob import kv_payloads  # noqa: E402
from promptcache_cli.modular.session import Session  # noqa: E402
from promptcache_cli.llama.backend import ContextSettings  # noqa: E402
from promptcache_cli.llama.model_file import resolve_model  # noqa: E402
from promptcache_cli.pml.selection import select_cli  # noqa: E402

LICENSES = Path("/usr/share/common-licenses")
QK = 32  # values per q8_0 block

# -- q8_0 as llama.cpp's quantize_row_q8_0_ref / dequantize_row_q8_0 ---------------------------


def q8_0_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x: (..., n) with n % 32 == 0 -> (scales f16 (..., n/32), values int8 (..., n))."""
    blocks = x.astype(np.float32).reshape(*x.shape[:-1], -1, QK)
    d = np.abs(blocks).max(axis=-1) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.round(blocks * inv[..., None]).astype(np.int8)  # numpy rounds half to even, C roundf away
    return d.astype(np.float16), q.reshape(x.shape)


def q8_0_dequantize(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    blocks = q.reshape(*q.shape[:-1], -1, QK).astype(np.float32) * d.astype(np.float32)[..., None]
    return blocks.astype(np.float16).reshape(q.shape)


def _round_trip_rows(x: np.ndarray) -> np.ndarray:
    """Blocks along the last axis; a partial last block is zero-padded."""
    n = x.shape[-1]
    pad = -n % QK
    if pad:
        x = np.concatenate([x, np.zeros((*x.shape[:-1], pad), x.dtype)], axis=-1)
    return q8_0_dequantize(*q8_0_quantize(x))[..., :n]


def round_trip(blob: np.ndarray, scheme: str) -> np.ndarray:
    """A copy of ``blob`` whose K and V values went through ``scheme``."""
    out = np.array(blob, dtype=np.uint8, copy=True)
    if scheme == "identity":
        return out
    n_cells, payloads = kv_payloads(out)
    for kind, at, n_embd, transposed in payloads:
        raw = out[at : at + 2 * n_embd * n_cells].view(np.float16)
        if scheme.startswith("f16-m"):  # mantissa rounding: elementwise, layout does not matter
            raw[:] = round_mantissa(raw, int(scheme[5:]))
            continue
        x = raw.reshape(n_embd, n_cells).T if transposed else raw.reshape(n_cells, n_embd)  # (cells, embd)
        along_rows = scheme == "q8_0" or (scheme == "q8_0-kch" and kind == "v")
        y = _round_trip_rows(x) if along_rows else _round_trip_rows(x.T).T
        if transposed:
            raw[:] = y.T.reshape(-1)
        else:
            raw[:] = y.reshape(-1)
    return out


CONTEXTS = {  # schemes that are llama.cpp context settings (what --kv-type q8_0 does today), not blob transforms
    "f16+fa": ContextSettings(flash_attn=True),
    "q8_0+fa": ContextSettings(type_k="q8_0", type_v="q8_0", flash_attn=True),
}


class StoredQuantSession(Session):
    """An f16 session whose loaded blobs are round-tripped through ``self.scheme``."""

    scheme = "identity"
    _done: dict | None = None  # (key, scheme) -> blobs: every question reuses a module's round trip

    def _load_checked(self, path, key, layout, owner):
        if self._done is None:
            self._done = {}
        if (key, self.scheme) not in self._done:
            blobs = super()._load_checked(path, key, layout, owner)
            self._done[key, self.scheme] = {off: round_trip(b, self.scheme) for off, b in blobs.items()}
        return self._done[key, self.scheme]


# -- the larger question set -------------------------------------------------------------------

DOCS = {  # module -> (file under /usr/share/common-licenses, four questions about it)
    "cc0": ("CC0-1.0", ["What is CC0 about?", "Does Creative Commons provide legal services?",
                        "Why do some owners give up their rights to a work?", "Who counts as an owner?"]),
    "gpl3": ("GPL-3", ["When was version 3 of the GPL published?", "Who holds the copyright of the license text?",
                       "Is the GPL a copyleft license?", "May I charge for copies of free software?"]),
    "lgpl3": ("LGPL-3", ["What is an Application?", "What is a Combined Work?",
                         "Which license does this one build on?", "What is the Linked Version?"]),
    "gfdl": ("GFDL-1.3", ["What is the purpose of this license?", "What kinds of works can use this license?",
                          "What does copyleft mean here?", "When was version 1.3 released?"]),
    "mpl11": ("MPL-1.1", ["What does Commercial Use mean?", "Who is a Contributor?", "What is the Covered Code?",
                          "What is a Larger Work?"]),
    "gpl1": ("GPL-1", ["When was version 1 of the GPL written?", "Where is the Free Software Foundation located?",
                       "What do the license agreements of most software companies do?",
                       "Can I sell copies of free software?"]),
    "lgpl21": ("LGPL-2.1", ["Why is the version number 2.1?", "Which software does the Lesser GPL apply to?",
                            "What did the Lesser GPL succeed?", "What do the authors suggest thinking about first?"]),
    "bsd": ("BSD", ["What conditions apply to redistribution?", "May I use the University's name to promote "
                    "my product?", "Is there a warranty?", "Who holds the copyright?"]),
}
GENERAL = ["Summarize these documents in one sentence.", "Which of these licenses is the oldest?",
           "Can I use this software commercially?", "What do the texts say about warranty?",
           "Which organization wrote these texts?", "Do these documents allow modification?",
           "List the documents you were given.", "What is the main difference between the documents?"]


def licenses_schema(folder: Path) -> Path:
    for name, (fname, _) in DOCS.items():
        text = (LICENSES / fname).read_text(encoding="utf-8")[:2400]
        (folder / f"{name}.txt").write_text(text[: text.rfind("\n")], encoding="utf-8")
    modules = "\n".join(f'    <module name="{n}" src="{n}.txt"/>' for n in DOCS)
    path = folder / "licenses.xml"
    path.write_text(
        '<schema name="common-licenses">\n  <system>You answer questions about the documents the user gives.'
        f"</system>\n  <user>\n{modules}\n  </user>\n</schema>\n", encoding="utf-8")
    return path


def licenses_cases() -> list[tuple[list[str], str]]:
    """48 (modules, question): each module's four questions with one to two other modules, then
    eight general questions over two different subsets each."""
    names = list(DOCS)
    n = len(names)
    cases = []
    for i, name in enumerate(names):
        for j, q in enumerate(DOCS[name][1]):
            others = {names[(i + 1 + j) % n]} if j < 3 else {names[(i + 2) % n], names[(i + 5) % n]}
            cases.append(([m for m in names if m == name or m in others], q))
    for k, q in enumerate(GENERAL):
        for sub in ({names[k], names[(k + 3) % n]}, {names[(k + 1) % n], names[(k + 4) % n], names[(k + 6) % n]}):
            cases.append(([m for m in names if m in sub], q))
    return cases


# -- measuring --------------------------------------------------------------------------------


def _gap(logits: np.ndarray) -> float:
    top = np.sort(logits)[-2:]
    return float(top[1] - top[0])


def greedy_trace(sess: Session, schema, sel, question: str, n_tokens: int) -> dict:
    """The greedy answer as `Session.ask` makes it, with the top-2 logit gap at every step and the
    first step's logits."""
    r = sess.ask(schema, sel, question, max_tokens=1, keep_logits=True)  # prompt decoded, nothing else
    ctx, logits = sess._ctx, r.first_logits
    first, tokens, gaps = logits, [], []
    pos = ctx.pos_max(0) + 1
    for _ in range(n_tokens):
        gaps.append(_gap(logits))
        tok = int(np.argmax(logits))
        if sess.model.is_eog(tok):
            break
        tokens.append(tok)
        if len(tokens) == n_tokens:
            break
        ctx.decode([tok], start=pos, logits=True)
        pos += 1
        logits = ctx.logits()
    return {"tokens": tokens, "gaps": gaps, "first": first}


def run_set(sess: StoredQuantSession, schema, cases, schemes: list[str], n_tokens: int, *,
            out: Path | None, done: dict) -> list[dict]:
    """Every case's f16 trace and each scheme's; rows already in ``done`` (by question and modules,
    from an earlier run's ``out`` file) are reused, new rows are appended to ``out`` as they finish.
    Schemes named in CONTEXTS run in their own session with those context settings instead."""
    rows: list[dict] = []
    ready = False
    others = {s: Session(sess.model.path, cache_dir=sess.store.root, settings=CONTEXTS[s], model=sess.model)
              for s in schemes if s in CONTEXTS}
    for modules, question in cases:
        if (question, tuple(modules)) in done:
            rows.append(done[question, tuple(modules)])
            continue
        sel = select_cli(schema, modules=modules, params=[])
        sess.scheme = "identity"
        if not ready:  # the first question computed in this run
            for se in (sess, *others.values()):
                se.compile(schema)
                se.context(se.layout(schema).end + 64 + n_tokens)  # one context size for every question
        ref = greedy_trace(sess, schema, sel, question, n_tokens)
        if not ready:  # the trace is the answer `pc ask` gives
            assert ref["tokens"] == sess.ask(schema, sel, question, max_tokens=n_tokens).tokens
            ready = True
        row = {"question": question, "modules": modules, "f16": {"tokens": ref["tokens"], "gaps": ref["gaps"]}}
        for scheme in schemes:
            sess.scheme = scheme
            r = greedy_trace(others.get(scheme, sess), schema, sel, question, n_tokens)
            a, b = r["tokens"], ref["tokens"]
            d = np.abs(r.pop("first") - ref["first"])
            r["diverge"] = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                                None if a == b else min(len(a), len(b)))
            r["dlogit_median"], r["dlogit_max"] = float(np.median(d)), float(d.max())
            row[scheme] = r
        rows.append(row)
        if out is not None:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        print(f"{len(rows)}/{len(cases)} {question!r}: "
              + ", ".join(f"{k}={row[k]['diverge']}" for k in schemes), file=sys.stderr, flush=True)
    for se in others.values():  # the model is shared: closing the session would free it
        if se._ctx is not None:
            se._ctx.close()
    return rows


def summarize(name: str, rows: list[dict], schemes: list[str], n_tokens: int, *, model=None,
              expected: dict[str, str] | None = None) -> None:
    n = len(rows)
    print(f"\n## {name}: {n} questions, greedy answers against the unquantized f16 cache")
    print(f"| scheme | same 16 tokens | same {n_tokens} tokens | same first token | first-token logits: "
          "median / max abs difference | f16 top-2 logit gap where the first 16 differ |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for s in schemes:
        div = [r[s]["diverge"] for r in rows]
        same16 = sum(d is None or d >= 16 for d in div)
        same_all = sum(d is None for d in div)
        top1 = sum(d != 0 for d in div)
        dl_med = np.median([r[s]["dlogit_median"] for r in rows])
        dl_max = max(r[s]["dlogit_max"] for r in rows)
        gaps = sorted(r["f16"]["gaps"][d] for r, d in zip(rows, div, strict=True) if d is not None and d < 16)
        print(f"| {s} | {same16 / n:.0%} ({same16}/{n}) | {same_all / n:.0%} ({same_all}/{n}) | {top1 / n:.0%} | "
              f"{dl_med:.4f} / {dl_max:.3f} | {', '.join(f'{g:.3f}' for g in gaps) or '-'} |")
    if expected:  # planted facts: does the answer contain the expected text?
        def found(tokens: list[int], question: str) -> bool:
            return expected[question] in b"".join(model.token_bytes(t) for t in tokens).decode("utf-8", "replace")

        print(f"\nplanted fact found in the {n_tokens}-token answer: "
              + ", ".join(f"{s} {sum(found(r[s]['tokens'], r['question']) for r in rows)}/{n}"
                          for s in ("f16", *schemes)))
    lows = [min(r["f16"]["gaps"][:16]) for r in rows]
    print(f"\nf16 answers: smallest top-2 logit gap within the first 16 steps: median {np.median(lows):.3f}; "
          + ", ".join(f"< {t}: {sum(g < t for g in lows)}/{n}" for t in (0.01, 0.03, 0.1, 0.3)))
    for s in schemes:
        for r in rows:
            d = r[s]["diverge"]
            if d is not None:
                print(f"  {s}: step {d:2d}, f16 gap {r['f16']['gaps'][d]:.3f}, own gap {r[s]['gaps'][d]:.3f}: "
                      f"{r['question']!r} {r['modules']}")


def timing(model: Path, cache: Path, rounds: int) -> None:
    """numpy quantize / dequantize time of a real ~4,000-token f16 state (GPL v2 manual schema)."""
    schema = pml.load_schema(Path(__file__).resolve().parent.parent / "schemas" / "gpl-manual.xml")
    sess = Session(model, cache_dir=cache)
    try:
        sess.compile(schema)
        layout = sess.layout(schema)
        keys = sess.keys(layout)
        owner = max(layout.owners(), key=layout.tokens_of)
        blobs = sess._load_checked(sess.store.module_path(keys[owner]), keys[owner], layout, owner)
        blob = np.array(max(blobs.values(), key=len))
    finally:
        sess.close()
    n_cells, payloads = kv_payloads(blob)
    mats = []
    for _, at, n_embd, transposed in payloads:
        raw = blob[at : at + 2 * n_embd * n_cells].view(np.float16)
        mat = raw.reshape(n_embd, n_cells).T if transposed else raw.reshape(n_cells, n_embd)
        mats.append(np.ascontiguousarray(mat))
    quant = [q8_0_quantize(m) for m in mats]
    stored = sum(d.nbytes + q.nbytes for d, q in quant)
    print(f"\n## timing: one state of {n_cells} cells, {blob.nbytes / 1e6:.1f} MB f16, {len(mats)} K/V payloads; "
          f"q8_0 payloads {stored / 1e6:.1f} MB ({sum(m.nbytes for m in mats) / stored:.2f}x smaller)")
    for label, fn in [
        ("quantize, 1 thread", lambda: [q8_0_quantize(m) for m in mats]),
        ("dequantize, 1 thread", lambda: [q8_0_dequantize(d, q) for d, q in quant]),
        ("dequantize, 2 threads over payloads",
         lambda: list(ThreadPoolExecutor(2).map(lambda dq: q8_0_dequantize(*dq), quant))),
    ]:
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        print(f"  {label}: median {statistics.median(times):.0f} ms, min {min(times):.0f} ms ({rounds} runs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="needles,licenses")
    ap.add_argument("--schemes", default="identity,q8_0,q8_0-ch,q8_0-kch,f16-m9,f16-m7")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0, help="first N questions of each set")
    ap.add_argument("--cache", help="cache folder to keep compiled states between runs (default: a temporary one)")
    ap.add_argument("--out", help="append each question's traces to this JSON-lines file and reuse those already "
                    "there (resume an interrupted run)")
    ap.add_argument("--timing", action="store_true", help="also time numpy (de)quantization of a 4,000-token state")
    ap.add_argument("--timing-rounds", type=int, default=5)
    args = ap.parse_args()
    schemes = args.schemes.split(",")
    model = resolve_model(None)
    out = Path(args.out) if args.out else None
    done = {}
    if out is not None and out.exists():
        for line in out.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if all(k in row for k in schemes):
                done[row["question"], tuple(row["modules"])] = row
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.cache) if args.cache else Path(tmp)
        for name in filter(None, args.sets.split(",")):
            folder = work / "schemas" / name
            folder.mkdir(parents=True, exist_ok=True)
            sess = StoredQuantSession(model, cache_dir=work / "cache")
            try:
                if name == "needles":
                    wl = needles.quality(folder, sess.model, doc_tokens=450, n_questions=30)
                    schema = wl.schema()
                    cases = [(list(q.modules), q.text) for q in wl.questions]
                elif name == "licenses":
                    schema = pml.load_schema(licenses_schema(folder))
                    cases = licenses_cases()
                else:
                    raise SystemExit(f"unknown set {name!r}")
                cases = cases[: args.limit] if args.limit else cases
                rows = run_set(sess, schema, cases, schemes, args.tokens, out=out, done=done)
                facts = {q: want for _, q, want in needles.NEEDLES.values()} if name == "needles" else None
                summarize(name, rows, schemes, args.tokens, model=sess.model, expected=facts)
            finally:
                sess.close()
        if args.timing:
            timing(model, work / "cache", args.timing_rounds)


if __name__ == "__main__":
    main()

"""The models benchmark (scripts/bench_models.py) end to end at its smallest: the tiny random llama
instead of the 1B and 3B presets, two short lengths, one round. Every system answers, the files it
writes are well formed, llama-server (when a binary is at hand: $PC_LLAMA_SERVER or the one `make
bench-models` builds) restores its slot and computes only the question. No timing is asserted:
speed is measured by `make bench-models`, never by tests."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from promptcache_cli.benchmarks import models
from promptcache_cli.benchmarks.llama_server import find_binary
from promptcache_cli.llama import state_blob
from promptcache_cli.llama.context import Context, ContextSettings
from promptcache_cli.llama.model import Model

from .conftest import license_excerpt
from .support.model_factory import SCRIPTS

TINY = models.SMOKE


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    work, out, cache = (tmp_path_factory.mktemp(n) for n in ("work", "out", "models"))
    messages: list[str] = []
    res = models.run(TINY, work=work, progress=messages.append, model_dir=cache)
    return res, models.write(res, out, stamp="tiny"), messages


def test_every_system_measured_at_every_length(outputs):
    res, paths, _ = outputs
    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert saved["sizes"][0]["preset"] == "llama" and saved["config"]["levels"] == [256, 512]
    [size] = res["sizes"]
    assert size["model_load_ms"] > 0 and size["kv_bytes_per_token_f16"] == 2 * 2 * 1 * 32 * 2
    server = find_binary() is not None
    for lv in size["levels"]:
        s = lv["systems"]
        expected = {"nocache", "pc", "pc-zstd", "floor"} | ({"pc-q8"} if lv["level"] == 256 else set())
        expected |= {"llama-server"} if server else set()
        assert set(s) == expected, (lv["level"], set(s))
        for name, row in s.items():
            assert row["ttft_ms"] and all(t > 0 for t in row["ttft_ms"]), name
        assert len(s["nocache"]["ttft_ms"]) == 1  # measured once
        assert 0 < lv["question_tokens"] < 40 and lv["level"] - 200 < lv["cached_prompt_tokens"] < lv["level"]
        assert s["pc"]["cache_bytes"] > 0 and s["pc-zstd"]["cache_bytes"] < s["pc"]["cache_bytes"]
        proc = s["pc"]["process"]
        assert proc["errors"] == [] and proc["peak_rss_bytes"][0] > 50e6
        if server:  # restored, then only the question computed (give or take the template's tail)
            assert all(0 < n <= lv["question_tokens"] + 8 for n in s["llama-server"]["computed_tokens"])
            assert s["llama-server"]["cache_bytes"] > 0
    ro = size["reorder"]
    assert ro["shared_with_saved_prompt"] < ro["prompt_tokens"] / 4
    if server:  # nothing to restore but the system prompt: it computes nearly everything
        assert ro["systems"]["llama-server"]["computed_tokens"][0] > ro["prompt_tokens"] / 2
    study = size["levels"][1]["study"]
    assert [r["setting"] for r in study["rows"]] == [s[0] for s in models.STUDY]
    assert all(r["median_ms"] > 0 for r in study["rows"])
    assert res["extrapolated"]["preset"] == "llama-3.1-8b" and res["extrapolated"]["levels"]


def test_markdown_plot_and_render(outputs, tmp_path):
    res, paths, _ = outputs
    md = paths["md"].read_text(encoding="utf-8")
    assert "| 256 (" in md and "| 512 (" in md and "extrapolated, not measured" in md
    assert "The question's prefill" in md and "Subset and reorder" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "x-models.json"
    again.write_text(paths["json"].read_text(encoding="utf-8"), encoding="utf-8")
    run = subprocess.run([sys.executable, str(SCRIPTS / "bench_models.py"), "--render", str(again)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "x-models.md").read_text(encoding="utf-8") == md.replace(paths["png"].name,
                                                                                   "x-models-ttft.png")


def test_flash_attention_states_are_the_same_cells_untransposed(test_models_dir):
    """The study loads f16 states saved without flash attention into a flash-attention context by
    transposing V: the result has the layout that context saves itself, the first layer's cells
    byte for byte (later layers' inputs went through attention computed another way: close)."""
    from promptcache_cli.benchmarks import random_gguf

    path = random_gguf.write_model("llama", test_models_dir / "fa-llama.gguf").path
    model = Model(str(path))
    tokens = model.tokenize(license_excerpt("BSD.txt", 1500), special=False)[:100]
    try:
        blobs = {}
        for fa in (False, True):
            with Context(model, ContextSettings(n_ctx=256, n_threads=2, flash_attn=fa)) as ctx:
                ctx.decode(tokens, start=0)
                blobs[fa] = ctx.save_state(0)
        assert state_blob.parse(blobs[False]).v_trans and not state_blob.parse(blobs[True]).v_trans
        converted = models._untransposed(blobs[False])  # noqa: SLF001
        assert state_blob.parse(converted).shape_key() == state_blob.parse(blobs[True]).shape_key()
        n, ours = state_blob.kv_payloads(converted)
        _, theirs = state_blob.kv_payloads(blobs[True])
        assert [(k, at, e) for k, at, e, _ in ours] == [(k, at, e) for k, at, e, _ in theirs]
        for i, (kind, at, n_embd, _) in enumerate(ours):
            x, y = (np.frombuffer(b[at: at + 2 * n * n_embd].tobytes(), "<f2").astype(np.float32)
                    for b in (converted, blobs[True]))
            if i in (0, len(ours) // 2):  # layer 0's K and V
                np.testing.assert_array_equal(x, y)
            else:
                assert np.abs(x - y).max() < 0.1, kind
        with Context(model, ContextSettings(n_ctx=256, n_threads=2, flash_attn=True)) as ctx:
            ctx.load_state(0, converted)
            assert ctx.pos_max(0) == 99
    finally:
        model.close()

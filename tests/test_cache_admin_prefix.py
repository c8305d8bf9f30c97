"""`pc ls`, `pc verify`, `pc gc` and `pc rm` on prefix-mode states, next to module files: one
cache compiled once with the random-weight test models (a recurrent mamba, a hybrid lfm2 whose
checkpoints are partial states, and a modular llama schema), copied for every test, access times
set with os.utime to control "last use". Commands run as real processes."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from promptcache_cli.store import admin as cache_admin, cache_file, manifest
from promptcache_cli.pml import schema as pml
from promptcache_cli.store.files import CacheStore
from promptcache_cli.modular.session import ModularSession
from promptcache_cli.llama.context import ContextSettings
from promptcache_cli.prefix.session import PrefixSession
from promptcache_cli.pml.selection import default_selection, select_cli

from .conftest import write_schema
from .support.model_factory import make_test_model
from .support.pc_process import ok, one_line_error, pc

DAY = 86400
ONE_THREAD = ContextSettings(n_threads=1)
QUESTION = "What is the code word?"

DOC = """
<schema name="{name}">
  <system>You answer questions about short notes.</system>
  <user>
    <module name="a">The first note is about apples, which grow on trees in the orchard.</module>
    <module name="b">The code word is orange. The second note is about the weather.</module>
    <module name="c">The third note lists the days of the week, from Monday to Sunday.</module>
  </user>
</schema>"""


@dataclass
class Prompt:
    """One schema's prefix-mode states, as compiled."""

    schema: Path
    model: Path
    key: str
    tokens: int  # the default prompt's length
    positions: list[int]  # of the stored states, the last one the end


@dataclass
class Template:
    cache: Path
    prompts: dict[str, Prompt]  # alpha (mamba), beta (lfm2), alpha-copy (alpha's text elsewhere: same states)
    gamma: Path  # a modular schema (llama)


def compile_prefix(model: Path, schema_path: Path, cache: Path, *, ask: bool) -> Prompt:
    schema = pml.load_schema(schema_path)
    sess = PrefixSession(model, cache_dir=cache, settings=ONE_THREAD, checkpoints=2)
    try:
        report = sess.compile(schema)
        if ask:  # records an overlap depth: the schema has a history
            sess.ask(schema, select_cli(schema, modules=["b"], params=[]), QUESTION, max_tokens=2)
        tokens = sess.prompt_tokens(schema, default_selection(schema))
        return Prompt(schema_path, model, sess.prompt_key(tokens), len(tokens), [m.tokens for m in report.modules])
    finally:
        sess.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, test_models_dir: Path) -> Template:
    root = tmp_path_factory.mktemp("admin-prefix")
    cache = root / "cache"
    mamba, lfm2, llama = (make_test_model(arch, test_models_dir) for arch in ("mamba", "lfm2", "llama"))
    prompts = {
        "alpha": compile_prefix(mamba, write_schema(root / "alpha", DOC.format(name="alpha")), cache, ask=True),
        "beta": compile_prefix(lfm2, write_schema(root / "beta", DOC.format(name="beta")), cache, ask=True),
        "alpha-copy": compile_prefix(mamba, write_schema(root / "copy", DOC.format(name="alpha")), cache, ask=False),
    }
    gamma = write_schema(root / "gamma", DOC.format(name="gamma"))
    sess = ModularSession(llama, cache_dir=cache, settings=ONE_THREAD)
    try:
        sess.compile(pml.load_schema(gamma))
    finally:
        sess.close()
    return Template(cache, prompts, gamma)


# -- helpers ------------------------------------------------------------------------------------


def state_dir(cache: Path, key: str) -> Path:
    return cache / "prefix" / key[:2] / key


def states(cache: Path, key: str) -> dict[int, Path]:
    return {int(p.stem): p for p in sorted(state_dir(cache, key).glob("*.pcm"))}


def cache_files(cache: Path) -> list[Path]:
    """Every module file and prefix state."""
    return sorted([*cache.glob("modules/*/*.pcm"), *cache.glob("prefix/??/*/*.pcm")])


def history_dir(cache: Path, name: str, schema: Path) -> Path:
    return cache / "prefix" / "history" / manifest.manifest_path(cache, name, str(schema)).stem


def set_last_use(path: Path, when: float) -> None:
    os.utime(path, (when, path.stat().st_mtime))


def lru_order(cache: Path) -> list[Path]:
    """Give every cache file a distinct last use, prefix states and module files taking turns, each
    kind in an order unrelated to names (by the path's reversed text); returns them least recently
    used first."""
    def shuffled(pattern: str) -> list[Path]:
        return sorted(cache.glob(pattern), key=lambda p: str(p)[::-1])

    prefix, modules = shuffled("prefix/??/*/*.pcm"), shuffled("modules/*/*.pcm")
    n = min(len(prefix), len(modules))
    files = [p for pair in zip(prefix[:n], modules[:n], strict=True) for p in pair] + prefix[n:] + modules[n:]
    now = time.time()
    for i, p in enumerate(files):
        set_last_use(p, now - DAY * (len(files) - i))
    return files


def snapshot(cache: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p): (st.st_size, st.st_mtime_ns, st.st_atime_ns if p.suffix == ".pcm" else 0)
            for p in cache.rglob("*") if p.is_file() and (st := p.stat())}


def flip_payload_byte(path: Path) -> None:
    f = cache_file.read(path)
    frame = f.segments[0].frames[0]
    f.close()
    data = bytearray(path.read_bytes())
    data[frame.at + frame.size // 2] ^= 0x01
    path.write_bytes(bytes(data))


# -- ls -----------------------------------------------------------------------------------------


def test_compile_records_the_prefix_variant_in_the_manifest(template: Template) -> None:
    alpha = template.prompts["alpha"]
    [(_, data)] = [(p, d) for p, d in manifest.load_all(template.cache) if d["path"] == str(alpha.schema)]
    [variant] = data["variants"].values()
    assert (variant["mode"], variant["encoding"], variant["modules"]) == ("prefix", "prefix", [])
    assert variant["prefix"] == {"key": alpha.key, "tokens": alpha.tokens}
    assert variant["model"]["name"] == "mamba.gguf"
    modular = manifest.Variant(variant["model"], variant["llama_cpp"], variant["state_layout"], "scaffold")
    assert modular.differences(variant) == ["prefix mode"]  # what a modular ask says about this cache


def test_ls_json_shows_prefix_states(template: Template, cache: Path) -> None:
    stats = {p: p.stat() for p in cache_files(cache)}  # before this test reads any file
    obj = ok(pc("ls", "--json")).json()
    assert {p: p.stat().st_atime_ns for p in stats} == {p: st.st_atime_ns for p, st in stats.items()}  # not a use
    by_path = {s["path"]: s for s in obj["schemas"]}
    assert set(by_path) == {str(p.schema) for p in template.prompts.values()} | {str(template.gamma)}
    for prompt in template.prompts.values():
        [variant] = by_path[str(prompt.schema)]["variants"]
        assert variant["model"] == prompt.model.name
        assert (variant["mode"], variant["encoding"], variant["codec"]) == ("prefix", "prefix", "none")
        assert (variant["key"], variant["tokens"], variant["modules"]) == (prompt.key, prompt.tokens, [])
        assert [s["position"] for s in variant["states"]] == prompt.positions
        assert prompt.positions[-1] == prompt.tokens and len(prompt.positions) == 3  # two checkpoints and the end
        for s in variant["states"]:
            path = state_dir(cache, prompt.key) / f"{s['position']}.pcm"
            st = stats[path]
            f = cache_file.read(path)
            raw, held, partial = f.segments[0].raw_size, len(f.segments[0].tokens), f.header["partial"]
            f.close()
            assert s["path"] == str(path)
            assert (s["tokens"], s["bytes"], s["partial"]) == (held, st.st_size, partial)
            assert s["tokens"] == s["position"]
            assert s["ratio"] == round(raw / st.st_size, 3)
            assert abs(datetime_seconds(s["last_used"]) - st.st_atime) < 1
            # a hybrid's checkpoints hold only the recurrent part; the end state is whole
            assert partial is (prompt.model.name == "lfm2.gguf" and s["position"] < prompt.tokens)
    [gamma] = by_path[str(template.gamma)]["variants"]
    assert gamma["mode"] == "modular" and "states" not in gamma and len(gamma["modules"]) == 4  # and "(schema)"
    assert obj["orphans"] == []
    assert obj["total_bytes"] == sum(st.st_size for st in stats.values())

    table = ok(pc("ls"))
    assert "4 module files, 6 prefix states" in table.out  # alpha and its copy share their states
    for word in ("prefix@", "(partial)", "mamba.gguf (mamba, recurrent), prefix mode, no compression", "lfm2.gguf",
                 "gamma"):
        assert word in table.out


def datetime_seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_ls_lists_unreferenced_prefix_states_as_orphans(template: Template, cache: Path) -> None:
    beta = template.prompts["beta"]
    shutil.rmtree(state_dir(cache, beta.key))
    orphan = state_dir(cache, "ab" * 20) / "7.pcm"
    orphan.parent.mkdir(parents=True)
    shutil.copyfile(next(iter(states(cache, template.prompts["alpha"].key).values())), orphan)
    obj = ok(pc("ls", "--json")).json()
    [row] = obj["orphans"]
    assert row == {"path": str(orphan), "key": "ab" * 20, "bytes": orphan.stat().st_size,
                   "last_used": row["last_used"], "position": 7}
    [variant] = [s for s in obj["schemas"] if s["path"] == str(beta.schema)][0]["variants"]
    assert variant["key"] == beta.key and variant["states"] == []  # compiled, then evicted
    assert "not built" in ok(pc("ls")).out


# -- verify ---------------------------------------------------------------------------------------


def test_verify_reads_prefix_states_and_catches_a_flipped_byte(template: Template, cache: Path) -> None:
    fresh = ok(pc("verify", "--json")).json()
    assert fresh["ok"] is True and fresh["checked"] == len(cache_files(cache)) == 4 + 6

    beta = template.prompts["beta"]
    victim = states(cache, beta.key)[beta.positions[0]]  # a partial checkpoint
    flip_payload_byte(victim)
    run = pc("verify", "--json")
    assert one_line_error(run, 5).startswith("pc: 1 of 10 cache files damaged")
    obj = run.json()
    assert obj["ok"] is False
    [damaged] = obj["damaged"]
    assert {k: damaged[k] for k in ("kind", "path", "key", "position")} == {
        "kind": "prefix", "path": str(victim), "key": beta.key, "position": beta.positions[0]}
    assert "checksum" in damaged["reason"]
    human = pc("verify")
    assert human.code == 5 and str(victim) in human.out


def test_verify_catches_a_state_under_another_name(template: Template, cache: Path) -> None:
    alpha = template.prompts["alpha"]
    src = states(cache, alpha.key)[alpha.positions[0]]
    renamed = src.with_name(f"{alpha.positions[0] + 1}.pcm")
    shutil.copyfile(src, renamed)
    run = pc("verify", "--json")
    one_line_error(run, 5)
    [damaged] = run.json()["damaged"]
    assert damaged["path"] == str(renamed) and "another state" in damaged["reason"]


def test_verify_lists_stale_temporary_files_under_prefix(template: Template, cache: Path) -> None:
    alpha = template.prompts["alpha"]
    old = [state_dir(cache, alpha.key) / ".tmp-abandoned", history_dir(cache, "alpha", alpha.schema) / ".tmp-x"]
    fresh = state_dir(cache, alpha.key) / ".tmp-being-written"
    for p in [*old, fresh]:
        p.write_bytes(b"partial")
    for p in old:
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    obj = ok(pc("verify", "--json")).json()
    assert obj["ok"] is True
    assert sorted(t["path"] for t in obj["stale_temporary"]) == sorted(str(p) for p in old)


# -- gc -------------------------------------------------------------------------------------------


def test_gc_evicts_prefix_states_and_module_files_by_last_use(cache: Path) -> None:
    order = lru_order(cache)
    sizes = [p.stat().st_size for p in order]
    limit = sum(sizes) - sum(sizes[:3]) - sizes[3] // 2  # the four least recently used must go, no more
    before = snapshot(cache)
    dry = ok(pc("gc", "--max-size", str(limit), "--dry-run", "--json")).json()
    assert snapshot(cache) == before and dry["dry_run"] is True

    real = ok(pc("gc", "--max-size", str(limit), "--json")).json()
    kind = {p: "prefix" if "/prefix/" in str(p) else "module" for p in order}
    assert [(r["kind"], r["path"]) for r in real["removed"]] == [(kind[p], str(p)) for p in order[:4]]
    assert [(r["kind"], r["path"]) for r in dry["removed"]] == [(r["kind"], r["path"]) for r in real["removed"]]
    assert {"prefix", "module"} <= {r["kind"] for r in real["removed"]}  # the order above mixes both
    for r in real["removed"]:
        assert ("position" in r) is (r["kind"] == "prefix")
        assert set(r) <= {"kind", "path", "key", "bytes", "last_used", "position", "reason", "holds"}
    assert real["bytes_freed"] == dry["bytes_freed"] == sum(sizes[:4])
    assert real["total_before"] == sum(sizes)
    assert real["total_after"] == sum(p.stat().st_size for p in cache_files(cache)) <= limit
    assert [p.exists() for p in order] == [False] * 4 + [True] * (len(order) - 4)


def test_gc_older_than_and_an_emptied_prompt_leaves_no_folder_or_lock(template: Template, cache: Path) -> None:
    alpha = template.prompts["alpha"]
    now = time.time()
    for p in cache_files(cache):
        set_last_use(p, now - (10 * DAY if p.parent.name == alpha.key else 3600))
    obj = ok(pc("gc", "--older-than", "7d", "--json")).json()
    assert sorted(r["position"] for r in obj["removed"]) == alpha.positions
    assert all(r["kind"] == "prefix" and r["key"] == alpha.key for r in obj["removed"])
    assert not state_dir(cache, alpha.key).exists()
    assert not Path(f"{CacheStore(cache).module_path(alpha.key)}.lock").exists()
    beta = template.prompts["beta"]
    assert Path(f"{CacheStore(cache).module_path(beta.key)}.lock").exists()  # beta still has states


def test_gc_leaves_a_locked_prompts_states_alone(template: Template, cache: Path) -> None:
    beta = template.prompts["beta"]
    with CacheStore(cache).lock(beta.key):  # what PrefixSession.compile holds while writing
        obj = ok(pc("gc", "--max-size", "0", "--grace", "0s", "--json")).json()  # the lock alone keeps them
    assert sorted(s["position"] for s in obj["skipped"]) == beta.positions
    assert {(s["kind"], s["reason"]) for s in obj["skipped"]} == {("prefix", "locked: being written")}
    assert cache_files(cache) == sorted(states(cache, beta.key).values())
    assert obj["total_after"] == sum(p.stat().st_size for p in cache_files(cache))

    obj = ok(pc("gc", "--max-size", "0", "--grace", "0s", "--json")).json()  # unlocked now
    assert sorted(r["position"] for r in obj["removed"]) == beta.positions
    assert cache_files(cache) == [] and list(cache.glob("modules/*/*.lock")) == []


@pytest.mark.parametrize("evict", ["end", "checkpoints", "all"])
def test_a_partially_evicted_prefix_set_still_answers_exactly(template: Template, cache: Path, evict: str) -> None:
    """Evicting a prompt's end state or checkpoints costs recomputation, never exactness."""
    alpha = template.prompts["alpha"]
    now = time.time()
    gone = {"end": alpha.positions[-1:], "checkpoints": alpha.positions[:-1], "all": alpha.positions}[evict]
    for pos, path in states(cache, alpha.key).items():
        set_last_use(path, now - (10 * DAY if pos in gone else 60))
    cache_admin.gc(cache, older_than=7 * DAY)
    assert sorted(states(cache, alpha.key)) == [p for p in alpha.positions if p not in gone]

    schema = pml.load_schema(alpha.schema)
    sess = PrefixSession(alpha.model, cache_dir=cache, settings=ONE_THREAD, checkpoints=2)
    try:
        sel = select_cli(schema, modules=["a", "c"], params=[])
        warm = sess.ask(schema, sel, QUESTION, max_tokens=6)
        cold = sess.ask(schema, sel, QUESTION, max_tokens=6, no_cache=True)
    finally:
        sess.close()
    assert warm.tokens == cold.tokens and warm.warnings == ()
    computed = [r.tokens for r in warm.compiled]  # a recompile may also re-plan checkpoints
    assert (alpha.tokens in computed) is (alpha.tokens in gone) and (computed == []) is (alpha.tokens not in gone)
    assert warm.cached_tokens in [0, *states(cache, alpha.key)]


# -- rm -------------------------------------------------------------------------------------------


def test_rm_removes_a_schemas_prefix_states_and_history(template: Template, cache: Path) -> None:
    beta = template.prompts["beta"]
    record = history_dir(cache, "beta", beta.schema)
    assert (record / "overlap.jsonl").is_file()
    others = snapshot(cache)

    obj = ok(pc("rm", beta.schema, "--json")).json()
    assert (obj["schema"], obj["path"]) == ("beta", str(beta.schema))
    prefix = [r for r in obj["removed"] if r["kind"] == "prefix"]
    assert [(r["key"], r["position"]) for r in prefix] == [(beta.key, p) for p in beta.positions]
    [hist] = [r for r in obj["removed"] if r["kind"] == "history"]
    assert hist["path"] == str(record / "overlap.jsonl") and hist["bytes"] > 0
    assert len(obj["removed"]) == len(prefix) + 1 and obj["skipped"] == [] and obj["kept"] == []
    assert obj["bytes_freed"] == sum(r["bytes"] for r in obj["removed"])
    assert not state_dir(cache, beta.key).exists() and not record.exists()
    assert not Path(f"{CacheStore(cache).module_path(beta.key)}.lock").exists()
    assert not Path(obj["manifest"]).exists()
    left = snapshot(cache)
    assert {p: v for p, v in others.items() if p in left} == left  # nothing else changed
    assert all(beta.key in p or "beta" in Path(p).name or p.startswith(str(record))
               for p in set(others) - set(left))

    listing = cache_admin.list_cache(cache)
    assert "beta" not in [s.schema for s in listing.schemas] and listing.orphans == []


def test_rm_keeps_prefix_states_another_schema_uses(template: Template, cache: Path) -> None:
    alpha, copy = template.prompts["alpha"], template.prompts["alpha-copy"]
    assert alpha.key == copy.key  # the same default prompt: the same states
    record = history_dir(cache, "alpha", alpha.schema)
    obj = ok(pc("rm", alpha.schema, "--json")).json()
    assert obj["kept"] == [{"name": "prefix", "key": alpha.key}]
    assert [r["kind"] for r in obj["removed"]] == ["history"] and not record.exists()
    assert sorted(states(cache, alpha.key)) == alpha.positions

    run = ok(pc("rm", copy.schema))  # the last schema using them: now they go
    assert "removed schema 'alpha': 0 module files, 3 prefix states" in run.err
    assert not state_dir(cache, alpha.key).exists()


def test_rm_leaves_locked_states_and_records_and_says_so(template: Template, cache: Path) -> None:
    from filelock import FileLock

    beta = template.prompts["beta"]
    record = history_dir(cache, "beta", beta.schema)
    with CacheStore(cache).lock(beta.key), FileLock(str(record / "overlap.jsonl.lock")):  # a compile, an ask
        obj = ok(pc("rm", "beta", "--json")).json()
    assert sorted((s["kind"], s.get("position")) for s in obj["skipped"]) == sorted(
        [("prefix", p) for p in beta.positions] + [("history", None)])
    assert {s["reason"] for s in obj["skipped"]} == {"locked: being written"}
    assert obj["removed"] == []
    assert sorted(states(cache, beta.key)) == beta.positions and (record / "overlap.jsonl").is_file()
    assert json.loads(ok(pc("ls", "--json")).out)["orphans"] != []  # now unreferenced: gc can evict them

"""`pc ls`, `pc verify`, `pc gc` and `pc rm` on a real cache: two small schemas compiled once with
the real default model (they share modules: content-addressed files), copied for every test,
access times set with os.utime to control "last use". Commands run as real processes."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from promptcache_cli.store import admin as cache_admin, cache_file
from promptcache_cli.store.files import CacheStore
from promptcache_cli.cli.common import parse_age, parse_size
from promptcache_cli.modular.session import ModularSession
from promptcache_cli.llama.context import ContextSettings
from promptcache_cli.pml.schema import load_schema
from promptcache_cli.pml.selection import default_selection

from .conftest import write_schema
from .support.pc_process import ok, one_line_error, pc

DAY = 86400
# One thread: llama.cpp's spinning threads slow down tenfold when other processes want the cores
# (tests running side by side). The thread count is not part of the cache key.
ONE_THREAD = ContextSettings(n_threads=1)

SYSTEM = "<system>You are a helpful assistant. Answer briefly.</system>"
ALPHA = f"""
<schema name="alpha">
  {SYSTEM}
  <user>
    <module name="shared">The secret color is blue.</module>
    <module name="apple">Apples are red.</module>
    <module name="cherry">Cherries are dark red.</module>
  </user>
</schema>"""
BETA = f"""
<schema name="beta">
  {SYSTEM}
  <user>
    <module name="shared">The secret color is blue.</module>
    <module name="banana">Bananas are yellow.</module>
  </user>
</schema>"""


@dataclass
class Template:
    cache: Path
    schemas: dict[str, Path]  # schema name -> schema file
    keys: dict[str, dict[str, str]]  # schema name -> module name -> key
    tokens: dict[str, dict[str, int]]  # schema name -> module name -> tokens


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Template:
    """Both schemas compiled once; tests work on copies."""
    root = tmp_path_factory.mktemp("admin")
    schemas = {"alpha": write_schema(root / "alpha", ALPHA), "beta": write_schema(root / "beta", BETA)}
    sess = ModularSession(model_path, cache_dir=root / "cache", settings=ONE_THREAD, codec="zstd")
    try:
        reports = {name: sess.compile(load_schema(str(path))) for name, path in schemas.items()}
    finally:
        sess.close()
    keys = {name: {m.name: m.key for m in r.modules} for name, r in reports.items()}
    tokens = {name: {m.name: m.tokens for m in r.modules} for name, r in reports.items()}
    return Template(root / "cache", schemas, keys, tokens)


# -- helpers ------------------------------------------------------------------------------------


def pcm_files(cache: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(cache.glob("modules/*/*.pcm"))}


def module_path(cache: Path, key: str) -> Path:
    return CacheStore(cache).module_path(key)


def set_last_use(path: Path, when: float) -> None:
    os.utime(path, (when, path.stat().st_mtime))


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def snapshot(cache: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under the cache: size, modification time and, for module files, last use."""
    return {str(p): (st.st_size, st.st_mtime_ns, st.st_atime_ns if p.suffix == ".pcm" else 0)
            for p in cache.rglob("*") if p.is_file() and (st := p.stat())}


def lru_order(cache: Path, seed_order: list[str]) -> list[Path]:
    """Give the module files distinct last uses, oldest first in ``seed_order`` (keys); returns
    the files least recently used first."""
    now = time.time()
    files = pcm_files(cache)
    for i, key in enumerate(seed_order):
        set_last_use(files[key], now - DAY * (len(seed_order) - i))
    return [files[k] for k in seed_order]


def shuffled_keys(cache: Path) -> list[str]:
    """The module keys in an order unrelated to their names: by the key's last character, reversed."""
    return sorted(pcm_files(cache), key=lambda k: (k[::-1]), reverse=True)


# -- ls -----------------------------------------------------------------------------------------


def test_ls_json_reports_files_as_they_are_on_disk(template: Template, cache: Path, model_path: Path) -> None:
    stats = {key: p.stat() for key, p in pcm_files(cache).items()}  # before this test reads any file
    obj = ok(pc("ls", "--json")).json()
    assert obj["cache_dir"] == str(cache)
    assert [s["schema"] for s in obj["schemas"]] == ["alpha", "beta"]
    for s in obj["schemas"]:
        name = s["schema"]
        assert s["path"] == str(template.schemas[name])
        [variant] = s["variants"]
        assert variant["model"] == model_path.name
        assert (variant["encoding"], variant["codec"]) == ("scaffold", "zstd")
        assert isinstance(variant["llama_cpp"], str) and variant["llama_cpp"]
        assert [m["name"] for m in variant["modules"]] == list(template.keys[name])
        for m in variant["modules"]:
            path, st = module_path(cache, m["key"]), stats[m["key"]]
            assert m["key"] == template.keys[name][m["name"]]
            assert m["tokens"] == template.tokens[name][m["name"]] > 0
            assert m["present"] is True
            assert m["bytes"] == st.st_size
            assert abs(iso_seconds(m["last_used"]) - st.st_atime) < 1
            f = cache_file.read(path)
            raw = sum(seg.raw_size for seg in f.segments)
            f.close()
            assert m["ratio"] == round(raw / st.st_size, 3)
            assert m["ratio"] > 1.0  # zstd on the f16 high bytes
    assert obj["orphans"] == []
    assert obj["total_bytes"] == sum(p.stat().st_size for p in pcm_files(cache).values())


def test_ls_shows_missing_files_and_orphans(template: Template, cache: Path) -> None:
    apple = module_path(cache, template.keys["alpha"]["apple"])
    apple.unlink()
    orphan = module_path(cache, "ab" * 20)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(module_path(cache, template.keys["beta"]["banana"]), orphan)

    listing = cache_admin.list_cache(cache)
    alpha = {m.name: m for m in listing.schemas[0].variants[0].modules}
    assert alpha["apple"].present is False
    assert (alpha["apple"].bytes, alpha["apple"].ratio, alpha["apple"].last_used) == (0, None, None)
    assert alpha["cherry"].present is True
    assert [(f.path, f.key, f.bytes) for f in listing.orphans] == [(orphan, "ab" * 20, orphan.stat().st_size)]
    assert listing.total_bytes == sum(p.stat().st_size for p in pcm_files(cache).values())

    obj = ok(pc("ls", "--json")).json()
    apple_row = [m for m in obj["schemas"][0]["variants"][0]["modules"] if m["name"] == "apple"][0]
    assert apple_row == {"name": "apple", "key": template.keys["alpha"]["apple"], "tokens": apple_row["tokens"],
                         "bytes": 0, "ratio": None, "last_used": None, "present": False}
    [row] = obj["orphans"]
    assert (row["path"], row["key"], row["bytes"]) == (str(orphan), "ab" * 20, orphan.stat().st_size)


def test_ls_table_on_stdout(cache: Path) -> None:
    run = ok(pc("ls"))
    assert run.err == ""
    for word in ("alpha", "beta", "shared", "apple", "banana", "scaffold", "zstd", "x"):
        assert word in run.out


def test_last_used_follows_an_ask(template: Template, cache: Path, model_path: Path) -> None:
    old = time.time() - 3 * DAY
    for p in pcm_files(cache).values():
        set_last_use(p, old)
    before = cache_admin.list_cache(cache)
    assert all(abs(m.last_used - old) < 1 for s in before.schemas for v in s.variants for m in v.modules)

    sess = ModularSession(model_path, cache_dir=cache, settings=ONE_THREAD, codec="zstd")
    try:
        schema = load_schema(str(template.schemas["beta"]))
        t0 = time.time()
        sess.ask(schema, default_selection(schema), "What is the secret color?", max_tokens=1)
    finally:
        sess.close()

    obj = ok(pc("ls", "--json")).json()
    rows = {(s["schema"], m["name"]): m for s in obj["schemas"] for m in s["variants"][0]["modules"]}
    for name in template.keys["beta"]:  # every beta module was loaded
        assert iso_seconds(rows["beta", name]["last_used"]) >= int(t0) - 1
    assert iso_seconds(rows["alpha", "shared"]["last_used"]) >= int(t0) - 1  # the same file
    for name in ("apple", "cherry"):
        assert abs(iso_seconds(rows["alpha", name]["last_used"]) - old) < 1


def test_ls_and_verify_leave_access_times_alone(cache: Path, tmp_path: Path) -> None:
    """Reading a file can move its access time (relatime): ls and verify must not pass for a use."""
    old = time.time() - 3 * DAY
    control = tmp_path / "control"
    control.write_bytes(b"x" * 100)
    set_last_use(control, old)
    control.read_bytes()
    if abs(control.stat().st_atime - old) < 1:
        pytest.skip("this filesystem does not update access times on read")
    for p in pcm_files(cache).values():
        set_last_use(p, old)
    before = {k: p.stat().st_atime_ns for k, p in pcm_files(cache).items()}
    ok(pc("ls", "--json"))
    ok(pc("verify", "--json"))
    assert {k: p.stat().st_atime_ns for k, p in pcm_files(cache).items()} == before


# -- verify ---------------------------------------------------------------------------------------


def test_verify_passes_on_a_fresh_cache(cache: Path) -> None:
    obj = ok(pc("verify", "--json")).json()
    assert obj == {"cache_dir": str(cache), "checked": len(pcm_files(cache)), "ok": True, "damaged": [],
                   "stale_temporary": [], "links": []}
    run = ok(pc("verify"))
    assert run.out == ""
    assert f"{len(pcm_files(cache))} cache files intact" in run.err


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_verify_fails_on_one_flipped_payload_byte(template: Template, cache: Path, codec: str) -> None:
    path = module_path(cache, template.keys["alpha"]["apple"])
    f = cache_file.read(path)
    frame = next(fr for seg in f.segments for fr in seg.frames if fr.codec == codec)
    f.close()
    data = bytearray(path.read_bytes())
    data[frame.at + frame.size // 2] ^= 0x01
    path.write_bytes(bytes(data))

    run = pc("verify", "--json")
    err = one_line_error(run, 5)
    assert err.startswith("pc: 1 of ")
    obj = run.json()
    assert obj["ok"] is False
    [damaged] = obj["damaged"]
    assert damaged["path"] == str(path)
    assert damaged["key"] == template.keys["alpha"]["apple"]
    assert "checksum" in damaged["reason"] or "corrupt" in damaged["reason"]

    human = pc("verify")
    assert human.code == 5
    assert str(path) in human.out


def test_verify_fails_on_a_truncated_file(template: Template, cache: Path) -> None:
    path = module_path(cache, template.keys["beta"]["banana"])
    os.truncate(path, path.stat().st_size - 1)
    run = pc("verify", "--json")
    one_line_error(run, 5)
    [damaged] = run.json()["damaged"]
    assert damaged["path"] == str(path)
    assert "truncated" in damaged["reason"]


def test_verify_reports_leftover_temporary_files_not_as_damage(cache: Path) -> None:
    folder = next(iter(pcm_files(cache).values())).parent
    old = [folder / ".tmp-abandoned", cache / "schemas" / ".tmp-manifest"]
    fresh = folder / ".tmp-being-written"
    for p in [*old, fresh]:
        p.write_bytes(b"partial")
    for p in old:
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    obj = ok(pc("verify", "--json")).json()
    assert obj["ok"] is True and obj["damaged"] == []
    assert sorted(t["path"] for t in obj["stale_temporary"]) == sorted(str(p) for p in old)
    human = ok(pc("verify"))
    assert str(old[0]) in human.out and str(fresh) not in human.out


# -- gc -------------------------------------------------------------------------------------------


def test_gc_max_size_evicts_least_recently_used_first(cache: Path) -> None:
    order = lru_order(cache, shuffled_keys(cache))
    sizes = [p.stat().st_size for p in order]
    limit = sum(sizes) - sizes[0] - sizes[1] // 2  # the two least recently used must go, no more
    obj = ok(pc("gc", "--max-size", str(limit), "--json")).json()
    assert [(r["kind"], r["path"]) for r in obj["removed"]] == [("module", str(order[0])), ("module", str(order[1]))]
    assert obj["removed"][0]["reason"].startswith("least recently used")
    assert obj["skipped"] == [] and obj["dry_run"] is False
    assert obj["bytes_freed"] == sizes[0] + sizes[1]
    assert obj["total_before"] == sum(sizes)
    assert obj["total_after"] == sum(p.stat().st_size for p in pcm_files(cache).values()) <= limit
    assert [p.exists() for p in order] == [False, False] + [True] * (len(order) - 2)
    assert not Path(f"{order[0]}.lock").exists()  # its lock file went with it
    assert Path(f"{order[2]}.lock").exists()


def test_gc_never_exceeds_the_bound_and_removes_no_more_than_needed(template: Template, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(template.cache, copy)
    sizes = sorted(p.stat().st_size for p in pcm_files(copy).values())
    shutil.rmtree(copy)
    total = sum(sizes)
    for limit in (total, total - 1, total // 2, sizes[-1], sizes[0] - 1, 0):
        shutil.copytree(template.cache, copy)
        order = lru_order(copy, shuffled_keys(copy))
        report = cache_admin.gc(copy, max_size=limit)
        on_disk = sum(p.stat().st_size for p in pcm_files(copy).values())
        n = len(report.removed)
        assert on_disk == report.total_after <= limit, limit
        assert [r.file.path for r in report.removed] == order[:n], limit  # a prefix of the LRU order
        kept_if_one_less = on_disk + (report.removed[-1].file.bytes if n else 0)
        assert n == 0 or kept_if_one_less > limit, limit  # one file fewer would not have been enough
        shutil.rmtree(copy)


def test_gc_older_than_removes_files_unused_for_longer(cache: Path) -> None:
    files = pcm_files(cache)
    keys = shuffled_keys(cache)
    stale, recent = keys[: len(keys) // 2], keys[len(keys) // 2 :]
    for k in stale:
        set_last_use(files[k], time.time() - 10 * DAY)
    for k in recent:
        set_last_use(files[k], time.time() - 3600)
    obj = ok(pc("gc", "--older-than", "7d", "--json")).json()
    assert sorted(r["key"] for r in obj["removed"]) == sorted(stale)
    assert all(r["reason"].startswith("unused for longer") for r in obj["removed"])
    assert sorted(pcm_files(cache)) == sorted(recent)
    obj = ok(pc("gc", "--older-than", "90m", "--json")).json()  # the rest is an hour old
    assert obj["removed"] == [] and sorted(pcm_files(cache)) == sorted(recent)
    obj = ok(pc("gc", "--older-than", "30m", "--json")).json()
    assert sorted(r["key"] for r in obj["removed"]) == sorted(recent) and pcm_files(cache) == {}


def test_gc_dry_run_removes_nothing_and_lists_what_would_go(cache: Path) -> None:
    order = lru_order(cache, shuffled_keys(cache))
    stale_tmp = order[0].parent / ".tmp-abandoned"
    stale_tmp.write_bytes(b"partial")
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))
    first_size = order[0].stat().st_size
    limit = sum(p.stat().st_size for p in order) - first_size
    before = snapshot(cache)
    dry = ok(pc("gc", "--max-size", str(limit), "--dry-run", "--json")).json()
    assert snapshot(cache) == before
    assert dry["dry_run"] is True
    human = ok(pc("gc", "--max-size", str(limit), "--dry-run"))
    assert snapshot(cache) == before
    assert human.out == "" and f"  {order[0].relative_to(cache)}  " in human.err
    assert human.err.startswith("would remove  ") and "(least recently used, over the size limit)" in human.err

    real = ok(pc("gc", "--max-size", str(limit), "--json")).json()
    assert [(r["kind"], r["path"]) for r in dry["removed"]] == [(r["kind"], r["path"]) for r in real["removed"]]
    assert [r["path"] for r in real["removed"]] == [str(order[0]), str(stale_tmp)]
    assert dry["bytes_freed"] == real["bytes_freed"] == first_size + len(b"partial")


def test_gc_cleans_temporary_and_lock_files_and_skips_a_locked_module(cache: Path) -> None:
    order = lru_order(cache, shuffled_keys(cache))
    folder = order[-1].parent
    stale_tmp, fresh_tmp = folder / ".tmp-abandoned", folder / ".tmp-being-written"
    for p in (stale_tmp, fresh_tmp):
        p.write_bytes(b"partial")
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))
    orphan_lock = Path(f"{module_path(cache, 'cd' * 20)}.lock")
    orphan_lock.parent.mkdir(parents=True, exist_ok=True)
    orphan_lock.touch()

    locked = order[0]  # the least recently used: first in line, but being written
    with CacheStore(cache).lock(locked.stem):
        obj = ok(pc("gc", "--max-size", "0", "--json")).json()
    assert locked.exists()
    assert obj["skipped"] == [{"kind": "module", "path": str(locked), "key": locked.stem, "bytes": locked.stat().st_size,
                               "last_used": obj["skipped"][0]["last_used"], "reason": "locked: being written",
                               "holds": obj["skipped"][0]["holds"]}]
    assert obj["skipped"][0]["holds"] and all("/" in h for h in obj["skipped"][0]["holds"])  # schema/module
    removed = {r["path"]: r["kind"] for r in obj["removed"]}
    assert removed == {**{str(p): "module" for p in order[1:]}, str(stale_tmp): "temporary", str(orphan_lock): "lock"}
    assert fresh_tmp.exists() and not stale_tmp.exists() and not orphan_lock.exists()
    assert [p.name for p in cache.glob("modules/*/*.lock")] == [f"{locked.name}.lock"]
    assert obj["total_after"] == locked.stat().st_size

    obj = ok(pc("gc", "--max-size", "0", "--json")).json()  # unlocked now
    assert [r["path"] for r in obj["removed"]] == [str(locked)]
    assert list(cache.glob("modules/*/*.pcm*")) == []


@pytest.mark.parametrize("args, needle", [
    ([], "--max-size"),
    (["--max-size", "5X"], "not a size"),
    (["--max-size", "-1"], "not a size"),
    (["--older-than", "3"], "not an age"),
    (["--older-than", "1y"], "not an age"),
])
def test_gc_usage_errors_exit_2_and_remove_nothing(cache: Path, args: list[str], needle: str) -> None:
    before = snapshot(cache)
    run = pc("gc", *args)
    assert needle in one_line_error(run, 2)
    assert run.out == ""
    assert snapshot(cache) == before


@pytest.mark.parametrize("text, value", [
    ("123456", 123456), ("500M", 500 * 10**6), ("2G", 2 * 10**9), ("1.5GB", 1_500_000_000), ("10k", 10_000),
    ("10kB", 10_000), ("800MiB", 800 * 2**20), ("1gib", 2**30), (" 7 ", 7), ("0", 0),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text, value", [("30d", 30 * DAY), ("12h", 12 * 3600), ("90m", 5400), ("2w", 14 * DAY),
                                         ("45s", 45), ("1.5h", 5400)])
def test_parse_age(text: str, value: float) -> None:
    assert parse_age(text) == value


@pytest.mark.parametrize("text", ["", "M", "5X", "-1", "1.2.3", "2 GBB", "1e9"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["", "3", "3M", "1y", "-2d", "d"])
def test_parse_age_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not an age"):
        parse_age(text)


# -- rm -------------------------------------------------------------------------------------------


def test_rm_keeps_modules_another_schema_uses(template: Template, cache: Path) -> None:
    alpha, beta = set(template.keys["alpha"].values()), set(template.keys["beta"].values())
    shared = alpha & beta
    assert template.keys["alpha"]["shared"] in shared  # same text, same place: one file
    manifests = sorted(cache.glob("schemas/*.json"))
    assert len(manifests) == 2

    obj = ok(pc("rm", template.schemas["alpha"], "--json")).json()
    assert (obj["schema"], obj["path"], obj["cache_dir"]) == ("alpha", str(template.schemas["alpha"]), str(cache))
    assert sorted(r["key"] for r in obj["removed"]) == sorted(alpha - beta)
    assert sorted(k["key"] for k in obj["kept"]) == sorted(shared)
    assert obj["skipped"] == []
    assert obj["bytes_freed"] == sum(r["bytes"] for r in obj["removed"]) > 0
    assert set(pcm_files(cache)) == beta
    assert not Path(obj["manifest"]).exists() and not Path(obj["manifest"] + ".lock").exists()
    for key in alpha - beta:
        assert not Path(f"{module_path(cache, key)}.lock").exists()

    listing = cache_admin.list_cache(cache)
    assert [s.schema for s in listing.schemas] == ["beta"]
    assert all(m.present for m in listing.schemas[0].variants[0].modules)
    assert listing.orphans == []

    run = ok(pc("rm", "beta"))  # by name, human output on stderr
    assert run.out == "" and "removed schema 'beta'" in run.err
    assert pcm_files(cache) == {} and list(cache.glob("schemas/*.json")) == []


def test_rm_unknown_schema_exits_3(cache: Path, tmp_path: Path) -> None:
    before = snapshot(cache)
    for arg in ("gamma", str(tmp_path / "nowhere.xml")):
        run = pc("rm", arg)
        assert "no compiled schema" in one_line_error(run, 3)
        assert run.out == ""
    assert snapshot(cache) == before


def test_rm_by_an_ambiguous_name_asks_for_the_path(template: Template, cache: Path) -> None:
    """Two schema files named 'alpha': the name is refused; by path, the other keeps every module."""
    [manifest_file] = cache.glob("schemas/alpha-*.json")
    data = json.loads(manifest_file.read_text())
    data["path"] = str(template.schemas["alpha"].parent / "copy.xml")
    (cache / "schemas" / "alpha-copy.json").write_text(json.dumps(data))
    before = set(pcm_files(cache))

    assert "give the schema file's path" in one_line_error(pc("rm", "alpha"), 3)
    obj = ok(pc("rm", template.schemas["alpha"], "--json")).json()
    assert obj["removed"] == []
    assert sorted(k["key"] for k in obj["kept"]) == sorted(set(template.keys["alpha"].values()))
    assert set(pcm_files(cache)) == before and not manifest_file.exists()

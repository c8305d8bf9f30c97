"""The remote tier against a real S3 server: SeaweedFS's `weed mini` on loopback (conftest's
``s3_server``), every "machine" its own cache directory and its own `pc` process.

Push and pull, an ask on a second machine that downloads instead of compiling, damaged and
foreign objects, the store going away mid-ask, two concurrent uploads of one key, a shard split
whose union is a full compile, prefix-mode states, housekeeping of the store, and credentials that
never show."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import pytest

from promptcache_cli.store.remote import Remote

from .conftest import license_excerpt, write_schema
from .support import faults
from .support.pc_process import PC, Run, ok, one_line_error, pc
from .support.s3_server import Proxy

QUESTION = "What is the secret color?"


def facts_schema(folder: Path) -> Path:
    """A schema of three modules (four files with its system prompt), one a page of real text."""
    return write_schema(folder, f"""
        <schema name="facts">
        <system>Answer briefly.</system>
        <user>
        <module name="color">The secret color is blue.</module>
        <module name="animal">The secret animal is a cat.</module>
        <module name="license">{license_excerpt("GPL-2.txt", 1200)}</module>
        </user>
        </schema>
    """)


def module_bytes(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in faults.module_files(cache)}


def stored(remote: str) -> dict[str, int]:
    """The store's cache files under ``remote``: relative path -> size."""
    return {o.rel: o.bytes for o in Remote(remote).list() if o.rel.endswith(".pcm")}


def ask(schema: Path, cache: Path, remote: str | None, *extra: str) -> Run:
    args = ["ask", QUESTION, "-s", schema, "-m", "color", "-m", "license", "-n", "12", "--json", *extra]
    if remote:
        args += ["--remote", remote]
    return pc(*args, cache_dir=cache)


def temporary_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob(".tmp-*")]


def test_compile_uploads_and_a_second_machine_downloads_instead_of_compiling(tmp_path, remote):
    schema = facts_schema(tmp_path / "s")
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    done = ok(pc("compile", schema, "--remote", remote, "--json", cache_dir=a)).json()
    assert {m["status"] for m in done["modules"]} == {"computed"} and all(m["uploaded"] for m in done["modules"])
    assert done["remote"] == remote
    local = {p.name: p.stat().st_size for p in faults.module_files(a)}
    objects = stored(remote)
    assert sorted(Path(r).name for r in objects) == sorted(local)
    assert sum(objects.values()) == sum(local.values())  # the store holds exactly the module files

    answer_a = ok(ask(schema, a, None)).json()
    run = ok(ask(schema, b, remote))
    got = run.json()
    assert got["compiled"] == [] and got["warnings"] == []
    assert {m["module"] for m in got["downloaded"]} == {"(schema)", "color", "license"}
    assert got["answer"] == answer_a["answer"] and got["cached_tokens"] == answer_a["cached_tokens"]
    assert "downloaded 3 module(s)" in run.err
    for name, data in module_bytes(b).items():  # byte for byte what machine a computed
        assert data == (a / "modules" / name[:2] / name).read_bytes()
    assert temporary_files(b) == []
    # b's cache now answers alone, and lists the schema it downloaded
    assert ok(ask(schema, b, None)).json()["answer"] == answer_a["answer"]
    listing = ok(pc("ls", "--json", cache_dir=b)).json()
    assert [s["schema"] for s in listing["schemas"]] == ["facts"]


def test_push_and_pull_move_exactly_the_module_files(tmp_path, remote):
    schema = facts_schema(tmp_path / "s")
    a, b = tmp_path / "a", tmp_path / "b"
    ok(pc("compile", schema, cache_dir=a))
    files = module_bytes(a)
    pushed = ok(pc("push", schema, "--remote", remote, "--json", cache_dir=a))
    report = pushed.json()
    assert report["direction"] == "push" and report["ok"]
    assert {f["status"] for f in report["files"]} == {"uploaded"}
    assert report["bytes"] == sum(len(d) for d in files.values())
    assert "uploaded" in pushed.err and "Traceback" not in pushed.err  # a line per file on stderr
    again = ok(pc("push", schema, "--remote", remote, "--json", cache_dir=a)).json()
    assert {f["status"] for f in again["files"]} == {"present"} and again["bytes"] == 0

    pulled = ok(pc("pull", schema, "--remote", remote, "--json", cache_dir=b)).json()
    assert {f["status"] for f in pulled["files"]} == {"downloaded"}
    assert pulled["bytes"] == report["bytes"]
    assert module_bytes(b) == files
    assert {f["status"] for f in ok(pc("pull", schema, "--remote", remote, "--json", cache_dir=b)).json()["files"]} \
        == {"present"}


def test_push_refuses_a_damaged_local_file_and_pull_reports_what_the_store_lacks(tmp_path, remote):
    schema = facts_schema(tmp_path / "s")
    a = tmp_path / "a"
    ok(pc("compile", schema, cache_dir=a))
    victim = max(faults.module_files(a), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0x10
    victim.write_bytes(bytes(data))
    run = pc("push", schema, "--remote", remote, "--json", cache_dir=a)
    assert run.code == 5, run.err
    statuses = {f["status"] for f in run.json()["files"]}
    assert statuses == {"uploaded", "damaged"}
    assert victim.name not in {Path(r).name for r in stored(remote)}

    pulled = pc("pull", schema, "--remote", remote, "--json", cache_dir=tmp_path / "b")
    assert pulled.code == 5
    missing = [f for f in pulled.json()["files"] if f["status"] == "missing"]
    assert len(missing) == 1 and missing[0]["key"] == victim.stem


def _upload_over(remote: str, rel: str, data: bytes) -> None:
    Remote(remote).upload(rel, data, replace=True)


def test_a_damaged_object_is_reported_recomputed_and_replaced(tmp_path, remote):
    schema = facts_schema(tmp_path / "s")
    a = tmp_path / "a"
    ok(pc("compile", schema, "--remote", remote, cache_dir=a))
    answer = ok(ask(schema, a, None)).json()["answer"]
    victim = max(faults.module_files(a), key=lambda p: p.stat().st_size)
    rel = f"modules/{victim.stem[:2]}/{victim.name}"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in a state blob: only its checksum tells
    _upload_over(remote, rel, bytes(data))

    verify = pc("verify", "--remote", remote, "--json", cache_dir=tmp_path / "v")
    assert verify.code == 5
    assert [d["object"] for d in verify.json()["damaged"]] == [rel]
    assert temporary_files(tmp_path / "v") == []

    b = tmp_path / "b"
    run = ok(ask(schema, b, remote))
    got = run.json()
    assert got["answer"] == answer
    assert [m["module"] for m in got["compiled"]] == ["license"]
    assert any("damaged copy of license" in w and "checksum" in w for w in got["warnings"]), got["warnings"]
    assert victim.name in module_bytes(b) and temporary_files(b) == []
    ok(pc("verify", cache_dir=b))
    # the recomputed file replaced the damaged object: the store verifies again
    assert ok(pc("verify", "--remote", remote, "--json", cache_dir=tmp_path / "v")).json()["ok"]


def test_a_foreign_object_is_never_loaded(tmp_path, remote):
    """An intact cache file stored under another module's key (a mix-up, or a hostile writer)."""
    schema = facts_schema(tmp_path / "s")
    a = tmp_path / "a"
    ok(pc("compile", schema, "--remote", remote, cache_dir=a))
    files = sorted(faults.module_files(a), key=lambda p: p.stat().st_size)
    small, big = files[0], files[-1]
    rel = f"modules/{big.stem[:2]}/{big.name}"
    _upload_over(remote, rel, small.read_bytes())

    pulled = pc("pull", schema, "--remote", remote, "--json", cache_dir=tmp_path / "p")
    assert pulled.code == 5
    bad = [f for f in pulled.json()["files"] if f["status"] == "damaged"]
    assert len(bad) == 1 and "key does not match" in bad[0]["reason"]
    assert not (tmp_path / "p" / "modules" / big.stem[:2] / big.name).exists()

    got = ok(ask(schema, tmp_path / "b", remote)).json()
    assert [m["module"] for m in got["compiled"]] == ["license"]
    assert any("damaged copy of license" in w and "key does not match" in w for w in got["warnings"])


def test_the_store_going_away_mid_ask_is_answered_locally_with_one_warning(tmp_path, remote, s3_server, monkeypatch):
    schema = facts_schema(tmp_path / "s")
    ok(pc("compile", schema, "--remote", remote, cache_dir=tmp_path / "a"))
    answer = ok(ask(schema, tmp_path / "a", None)).json()["answer"]
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)))
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("PC_REMOTE_TIMEOUT", "1")
        proxy.cut_after(300_000)  # the store goes away in the middle of a download
        b = tmp_path / "b"
        run = ok(ask(schema, b, remote))
        got = run.json()
        assert got["answer"] == answer
        fetched, computed = ({m["module"] for m in got[k]} for k in ("downloaded", "compiled"))
        # each whole, or computed (animal, computed on the way to license, is stored too: a bystander)
        assert computed and (fetched | computed) - {"animal"} == {"(schema)", "color", "license"}
        assert len(got["warnings"]) == 1 and "working from the local cache" in got["warnings"][0], got["warnings"]
        assert run.err.count("warning:") == 1  # and once on stderr
        assert temporary_files(b) == []
        ok(pc("verify", cache_dir=b))

        proxy.refuse()  # gone from the start: the text output warns once, on stderr
        c = tmp_path / "c"
        run = ok(pc("ask", QUESTION, "-s", schema, "-m", "color", "-n", "4", "--remote", remote, cache_dir=c))
        assert run.err.count("warning:") == 1 and "unreachable" in run.err, run.err

        proxy.stall()  # accepted, never answered: each request gives up after PC_REMOTE_TIMEOUT
        run = ok(pc("ask", QUESTION, "-s", schema, "-m", "animal", "-n", "4", "--remote", remote,
                    cache_dir=tmp_path / "d"))
        assert run.err.count("warning:") == 1 and "timed out" in run.err, run.err
    finally:
        proxy.close()


def test_two_concurrent_uploads_of_one_key_leave_one_whole_object(tmp_path, remote):
    """Two machines with the same module files push at once; and eight writers race on one key
    with different bytes: one whole object stays, never a mix."""
    schema = facts_schema(tmp_path / "s")
    a, b = tmp_path / "a", tmp_path / "b"
    ok(pc("compile", schema, cache_dir=a))
    ok(pc("compile", schema, cache_dir=b))
    procs = [faults.start(["push", schema, "--remote", remote, "--json"], cache=c) for c in (a, b)]
    runs = [faults.finish(p, 0.0) for p in procs]
    for r in runs:
        assert r.code == 0 and "Traceback" not in r.err, r.err
    statuses = [{f["key"]: f["status"] for f in json.loads(r.out)["files"]} for r in runs]
    for key in statuses[0]:
        assert {statuses[0][key], statuses[1][key]} <= {"uploaded", "present"}
        assert "uploaded" in (statuses[0][key], statuses[1][key])
    assert ok(pc("verify", "--remote", remote, "--json", cache_dir=tmp_path / "v")).json()["ok"]
    for rel in stored(remote):  # each object is one machine's file, whole
        data = Remote(remote).read_small(rel, limit=1 << 30)
        assert data in ((a / rel).read_bytes(), (b / rel).read_bytes())

    store = Remote(remote)
    payloads = [bytes([i]) * 3_000_000 for i in range(8)]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda p=p: results.append(store.upload("race/one-key", p))) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and results.count(True) == 1  # a conditional PUT: exactly one writer wins
    assert store.read_small("race/one-key", limit=1 << 30) in payloads


def test_a_fleet_started_at_once_computes_each_module_once(tmp_path, remote):
    """One `pc compile --remote` and three `pc ask --remote` on separate caches, started together:
    leases in the store make each module computed by one of them; the others wait and download."""
    schema = facts_schema(tmp_path / "s")
    procs = [faults.start(["compile", schema, "--remote", remote, "--json"], cache=tmp_path / "compiler")]
    procs += [faults.start(["ask", QUESTION, "-s", schema, "-m", "color", "-m", "animal", "-m", "license", "-n", "8",
                            "--remote", remote, "--json"], cache=tmp_path / f"server{i}") for i in range(3)]
    runs = [faults.finish(p, 0.0) for p in procs]
    for r in runs:
        assert r.code == 0 and "Traceback" not in r.err, r.err
    out = [json.loads(r.out) for r in runs]
    computed = [m["key"] for m in out[0]["modules"] if m["status"] == "computed"]
    computed += [m["key"] for o in out[1:] for m in o["compiled"]]
    keys = {m["key"] for m in out[0]["modules"]}
    assert sorted(computed) == sorted(keys), (computed, keys)  # every module once across the fleet
    assert len({o["answer"] for o in out[1:]}) == 1
    assert not [o for o in Remote(remote).list() if o.rel.startswith("leases/")]  # every lease released


def test_a_shard_split_computes_each_module_once_and_their_union_is_a_full_compile(tmp_path, remote):
    folder = tmp_path / "schemas"
    facts_schema(folder / "one")
    write_schema(folder / "two", f"""
        <schema name="more"><system>Answer briefly.</system><user>
        <module name="lgpl">{license_excerpt("MPL-2.0.txt", 900)}</module>
        <module name="apache">{license_excerpt("Apache-2.0.txt", 900)}</module>
        <module name="weather">It rains on Tuesdays.</module>
        </user></schema>
    """)
    schemas = [folder / "one" / "schema.xml", folder / "two" / "schema.xml"]
    for s in schemas:  # a folder of schemas, as a sharded job gets it
        s.rename(folder / f"{s.parent.name}.xml")
    runs = [ok(pc("compile", folder, "--shard", f"{k}/2", "--remote", remote, "--json",
                  cache_dir=tmp_path / f"shard{k}")).json() for k in (0, 1)]
    computed = [{m["key"] for s in r["schemas"] for m in s["modules"] if m["status"] == "computed"} for r in runs]
    other = [{m["key"] for s in r["schemas"] for m in s["modules"] if m["status"] == "other shard"} for r in runs]
    assert computed[0] and computed[1] and not computed[0] & computed[1]
    assert other[0] == computed[1] and other[1] == computed[0]

    full = ok(pc("compile", folder, "--json", cache_dir=tmp_path / "full")).json()
    keys = {m["key"] for s in full["schemas"] for m in s["modules"]}
    assert computed[0] | computed[1] == keys
    assert {Path(r).stem for r in stored(remote)} == keys
    assert {p.stem for p in faults.module_files(tmp_path / "full")} == keys
    # a third machine compiling with --remote finds everything in the store
    third = ok(pc("compile", folder, "--remote", remote, "--json", cache_dir=tmp_path / "third")).json()
    assert {m["status"] for s in third["schemas"] for m in s["modules"]} == {"remote"}
    assert faults.module_files(tmp_path / "third") == []


def test_prefix_mode_states_are_downloaded_before_recomputing(tmp_path, remote):
    schema = facts_schema(tmp_path / "s")
    a, b = tmp_path / "a", tmp_path / "b"
    done = ok(pc("compile", schema, "--mode", "prefix", "--remote", remote, "--json", cache_dir=a)).json()
    assert [m["status"] for m in done["modules"]] == ["computed"] and done["modules"][0]["uploaded"]
    args = ["ask", QUESTION, "-s", schema, "--mode", "prefix", "-n", "12", "--json"]
    answer = ok(pc(*args, cache_dir=a)).json()
    got = ok(pc(*args, "--remote", remote, cache_dir=b)).json()
    assert got["compiled"] == [] and [m["module"] for m in got["downloaded"]] == [done["modules"][0]["module"]]
    assert got["answer"] == answer["answer"] and got["cached_tokens"] == answer["cached_tokens"]
    listing = ok(pc("ls", "--remote", remote, "--json")).json()
    assert [(s["schema"], v["mode"]) for s in listing["schemas"] for v in s["variants"]] == [("facts", "prefix")]
    assert ok(pc("pull", schema, "--mode", "prefix", "--remote", remote, "--json",
                 cache_dir=tmp_path / "c")).json()["bytes"] == done["modules"][0]["bytes"]


def test_the_store_says_when_it_holds_a_schema_for_other_settings(tmp_path, remote):
    schema = facts_schema(tmp_path / "s")
    ok(pc("compile", schema, "--kv-type", "q8_0", "--remote", remote, cache_dir=tmp_path / "a"))
    got = ok(ask(schema, tmp_path / "b", remote)).json()
    assert got["downloaded"] == [] and got["compiled"]
    assert any("holds schema 'facts' only with other context settings" in w for w in got["warnings"]), got["warnings"]


def test_ls_and_gc_of_the_store(tmp_path, remote):
    schema = facts_schema(tmp_path / "s")
    ok(pc("compile", schema, "--remote", remote, cache_dir=tmp_path / "a"))
    listing = ok(pc("ls", "--remote", remote, "--json")).json()
    [entry] = listing["schemas"]
    assert entry["schema"] == "facts" and all(m["present"] for m in entry["variants"][0]["modules"])
    assert listing["total_bytes"] == sum(stored(remote).values()) and listing["orphans"] == []
    table = ok(pc("ls", "--remote", remote))
    assert "facts" in table.out and "license" in table.out

    dry = ok(pc("gc", "--remote", remote, "--max-size", "0", "--dry-run", "--json")).json()
    assert len([n for n in dry["removed"] if n["kind"] == "module"]) == 4 and stored(remote)
    gone = ok(pc("gc", "--remote", remote, "--max-size", "0", "--json")).json()
    assert gone["bytes_freed"] == listing["total_bytes"] + sum(
        n["bytes"] for n in gone["removed"] if n["kind"] == "manifest")
    assert stored(remote) == {} and ok(pc("ls", "--remote", remote, "--json")).json()["schemas"] == []


def test_pc_remote_and_a_bare_remote_flag(tmp_path, remote, monkeypatch):
    schema = facts_schema(tmp_path / "s")
    monkeypatch.setenv("PC_REMOTE", remote)
    ok(pc("compile", schema, cache_dir=tmp_path / "a"))  # $PC_REMOTE: uploads
    assert len(stored(remote)) == 4
    assert ok(pc("ls", "--remote", "--json")).json()["remote"] == remote  # --remote alone: $PC_REMOTE
    assert ok(pc("verify", "--remote", cache_dir=tmp_path / "v")).code == 0
    assert pc("ls", "--json").json()["schemas"] == []  # without --remote: the (empty) cache directory
    monkeypatch.setenv("PC_REMOTE", "")
    err = one_line_error(pc("ls", "--remote"), 2)
    assert "PC_REMOTE" in err
    err = one_line_error(pc("push", schema, cache_dir=tmp_path / "a"), 2)
    assert "no remote store" in err
    err = one_line_error(pc("ls", "--remote", "http://example.invalid/x"), 2)
    assert "s3://bucket/prefix" in err


CANARY_KEY = "AKIACANARY7KEYID0000"
CANARY_SECRET = "canary-SECRET-do-not-print-4f1d2c"


def test_credentials_never_appear_in_errors_warnings_or_json(tmp_path, remote, monkeypatch):
    schema = facts_schema(tmp_path / "s")
    ok(pc("compile", schema, cache_dir=tmp_path / "a"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CANARY_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY_SECRET)
    runs = {
        "push": pc("push", schema, "--remote", remote, "--json", cache_dir=tmp_path / "a"),
        "ls": pc("ls", "--remote", remote, "--json"),
        "ask": ask(schema, tmp_path / "b", remote),
        "compile": pc("compile", schema, "--remote", remote, "--json", cache_dir=tmp_path / "c"),
    }
    for name, run in runs.items():
        for text in (run.out, run.err):
            assert CANARY_SECRET not in text and CANARY_KEY not in text, (name, text)
    assert runs["push"].code == 11 and "access denied" in one_line_error(runs["push"], 11)
    assert runs["ls"].code == 11
    assert ok(runs["ask"]).json()["answer"]  # answered locally
    assert any("access denied" in w for w in runs["ask"].json()["warnings"])
    # the same from the library: the message, its repr and its traceback text
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens: unreachable
    with pytest.raises(Exception) as info:
        Remote(remote).list()
    shown = "".join(traceback.format_exception(info.value))
    assert CANARY_SECRET not in shown and CANARY_KEY not in shown
    assert type(info.value).__name__ == "RemoteError" and "unreachable" in str(info.value)
    assert CANARY_SECRET not in repr(Remote(remote).settings)


def test_the_library_session_carries_the_remote(tmp_path, remote):
    """What `pc serve` gets: a session opened with a remote downloads, and counts the bytes."""
    import promptcache_cli as pcl

    schema = facts_schema(tmp_path / "s")
    with pcl.open_session(cache_dir=tmp_path / "a", remote=remote) as s:
        report = s.compile(schema)
        assert report.remote == remote and all(m.uploaded for m in report.modules)
        assert s.remote_bytes[1] == sum(m.bytes for m in report.modules)
    with pcl.open_session(cache_dir=tmp_path / "b", remote=remote) as s:
        answer = s.ask(pcl.Request(schema, QUESTION, modules=["color"], max_tokens=8))
        assert [m.name for m in answer.downloaded] == ["(schema)", "color"] and answer.compiled == ()
        assert s.remote_bytes[0] == sum(m.bytes for m in answer.downloaded)
    with pcl.open_session(cache_dir=tmp_path / "c", remote="") as s:  # "" : none, whatever $PC_REMOTE says
        assert s.remote is None


def test_pc_ask_imports_no_s3_client_without_a_remote(tmp_path, remote):
    schema = facts_schema(tmp_path / "s")
    base = [sys.executable, "-X", "importtime", *PC[1:], "ask", "hi", "-s", str(schema), "-m", "color", "-n", "1"]
    without = subprocess.run(base, capture_output=True, text=True, env=faults.env_for(tmp_path / "a"), timeout=300)
    assert without.returncode == 0, without.stderr
    assert "obstore" not in without.stderr and "promptcache_cli.store.remote" not in without.stderr
    with_remote = subprocess.run(base + ["--remote", remote], capture_output=True, text=True,
                                 env=faults.env_for(tmp_path / "b"), timeout=300)  # a fresh cache: it asks the store
    assert with_remote.returncode == 0, with_remote.stderr
    assert "obstore" in with_remote.stderr


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_store_leaves_compile_local_and_store_commands_exit_11(tmp_path, remote, monkeypatch):
    """Nothing listens at the endpoint: `pc compile --remote` computes and stores everything
    locally with one warning; the commands about the store end in one line and exit 11; no
    temporary file is left and the cache directory verifies."""
    schema = facts_schema(tmp_path / "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", _free_endpoint())
    a = tmp_path / "a"
    run = ok(pc("compile", schema, "--remote", remote, "--json", cache_dir=a))
    got = run.json()
    assert {m["status"] for m in got["modules"]} == {"computed"}
    assert not any(m["uploaded"] for m in got["modules"])
    assert len(got["warnings"]) == 1 and "unreachable" in got["warnings"][0], got["warnings"]
    assert run.err.count("warning:") == 1
    assert len(faults.module_files(a)) == 4 and temporary_files(a) == []
    ok(pc("verify", cache_dir=a))
    assert ok(ask(schema, a, None)).json()["compiled"] == []  # the local tier serves as before

    for args, cache in ((["push", schema], a), (["pull", schema], tmp_path / "b"), (["ls"], a), (["verify"], a),
                        (["gc", "--max-size", "0"], a)):
        err = one_line_error(pc(*args, "--remote", remote, cache_dir=cache), 11)
        assert "unreachable" in err and remote in err, (args, err)
    assert temporary_files(a) == [] and temporary_files(tmp_path / "b") == []
    ok(pc("verify", cache_dir=a))


def _lease(remote: str, rel: str, expires_in: float) -> None:
    import time

    body = json.dumps({"host": "gone", "pid": 1, "expires": time.time() + expires_in}).encode()
    Remote(remote).upload(f"leases/{rel}.json", body, replace=True)


def test_a_killed_machines_lease_is_taken_over(tmp_path, remote):
    """Machines that died while computing left leases in the store: one already expired, one
    still live for a few seconds. A new machine takes the first over at once and computes the
    second itself once its lease runs out (waiting for it meanwhile); it answers as a machine
    without a store does. `gc --remote` removes dead leases, never live ones."""
    schema = facts_schema(tmp_path / "s")
    alone = ok(ask(schema, tmp_path / "alone", None)).json()
    keys = {m["module"]: m["key"] for m in alone["compiled"]}
    assert set(keys) == {"(schema)", "color", "license", "animal"}  # animal: computed on the way, stored too
    _lease(remote, f"modules/{keys['license'][:2]}/{keys['license']}.pcm", -5.0)  # expired
    _lease(remote, f"modules/{keys['color'][:2]}/{keys['color']}.pcm", 20.0)  # its holder was killed just now

    got = ok(ask(schema, tmp_path / "b", remote)).json()
    assert got["answer"] == alone["answer"] and got["warnings"] == []
    assert {m["module"] for m in got["compiled"]} == set(keys) and got["downloaded"] == []
    assert {Path(r).stem for r in stored(remote)} == set(keys.values())  # and uploaded for the next machine
    ok(pc("verify", "--remote", remote, cache_dir=tmp_path / "v"))

    # gc of the store removes the dead machine's lease once no one would take it over any more,
    # and leaves a live one (a machine computing now) alone
    import time

    from promptcache_cli.store.remote_admin import gc_remote
    from promptcache_cli.store.remote_tier import LEASE_SECONDS

    _lease(remote, "modules/00/live.pcm", 10 * LEASE_SECONDS)
    _lease(remote, "modules/00/dead.pcm", -1.0)
    assert gc_remote(Remote(remote), older_than=1e9).removed == []  # not long enough ago
    report = gc_remote(Remote(remote), older_than=1e9, now=time.time() + 2 * LEASE_SECONDS)
    removed = {n.file.rel for n in report.removed}
    assert {n.kind for n in report.removed} == {"lease"} and "leases/modules/00/dead.pcm.json" in removed
    assert [o.rel for o in Remote(remote).list("leases/")] == ["leases/modules/00/live.pcm.json"]
    assert len(stored(remote)) == len(keys)


def test_pc_serve_and_pc_batch_download_from_the_store(tmp_path, remote):
    """A server started on a fresh machine with --remote compiles nothing and answers its first
    request from downloaded states (the same answer as the compiling machine's); so does `pc
    batch`."""
    from .support import server as srv

    schema = facts_schema(tmp_path / "s")
    ok(pc("compile", schema, "--remote", remote, cache_dir=tmp_path / "a"))
    want = ok(ask(schema, tmp_path / "a", None)).json()
    body = {"question": QUESTION, "modules": ["color", "license"], "max_tokens": 12}

    s = srv.start(schema, "--remote", remote, cache_dir=tmp_path / "b")
    try:
        status, _, raw = s.request("POST", "/v1/pc/ask", json.dumps({"schema": "facts", **body}))
        assert status == 200, raw
        got = json.loads(raw)
        assert got["answer"] == want["answer"] and got["compiled"] == [] and got["remote"] == remote
        assert {m["module"] for m in got["downloaded"]} == {"(schema)", "color", "license"}
    finally:
        assert s.stop() == 0, s.stderr
    assert "Traceback" not in s.stderr and "computed" not in s.stderr, s.stderr

    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"schema": str(schema), **body}) + "\n", encoding="utf-8")
    [line] = ok(pc("batch", lines, "--remote", remote, cache_dir=tmp_path / "c")).out.splitlines()
    got = json.loads(line)
    assert got["answer"] == want["answer"] and got["compiled"] == []
    assert {m["module"] for m in got["downloaded"]} == {"(schema)", "color", "license"}


def test_downloads_and_uploads_never_follow_a_link_in_the_cache(tmp_path, remote):
    """The remote tier goes through the cache's boundary (issue 20): a download never writes
    through a symbolic link planted in the cache, and an upload never sends what a link planted
    under a cache file's name points to."""
    schema = facts_schema(tmp_path / "s")
    a = tmp_path / "a"
    ok(pc("compile", schema, "--remote", remote, cache_dir=a))
    reference = ok(ask(schema, a, None)).json()["answer"]
    name = max(faults.module_files(a), key=lambda p: p.stat().st_size).name  # the license module's file

    outside = tmp_path / "outside"  # someone's folder, reached from b's cache by a link
    outside.mkdir()
    (outside / "notes.txt").write_bytes(b"mine\n")
    b = tmp_path / "b"
    (b / "modules").mkdir(parents=True)
    (b / "modules" / name[:2]).symlink_to(outside, target_is_directory=True)
    got = ok(ask(schema, b, remote)).json()
    assert got["answer"] == reference
    downloaded = {m["module"] for m in got["downloaded"]}
    assert "license" not in downloaded and downloaded and downloaded <= {"(schema)", "color"}
    assert sorted(p.name for p in outside.iterdir()) == ["notes.txt"]  # nothing written, locked or left there
    assert (b / "modules" / name[:2]).is_symlink() and temporary_files(b) == []

    secret = tmp_path / "secret.pcm"  # a file outside the cache, planted under a module file's name
    secret.write_bytes(b"not for the store\n")
    victim = a / "modules" / name[:2] / name
    victim.unlink()
    victim.symlink_to(secret)
    rel = f"modules/{name[:2]}/{name}"
    Remote(remote).delete(rel)
    run = pc("push", schema, "--remote", remote, "--json", cache_dir=a)
    assert run.code == 5 and "Traceback" not in run.err
    assert {f["status"] for f in run.json()["files"]} == {"present", "missing"}
    assert rel not in stored(remote) and victim.is_symlink() and secret.read_bytes() == b"not for the store\n"

"""Nothing outside the cache folder is ever touched (issue 20): real `pc` processes run against a
cache holding symbolic links to folders outside it, each filled with sentinel files a careless
`pc` would delete, write, lock or append to (``.pcm`` files, lock files, old temporary files, an
overlap record). After every command the sentinels are byte for byte, name for name and time for
time what they were; the links are still there; `pc verify` lists them.

The rule under test (store/boundary.py): every path `pc` writes, deletes, locks or appends to is
walked from the cache folder without following a link; a link is reported and left alone.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from promptcache_cli import errors

from .support import faults

QUESTION = "Which license is the second document?"
TWO_DAYS = 2 * 86400


def ask_args(schema: Path, *extra: str) -> list:
    return ["ask", QUESTION, "-s", schema, "-n", "8", "--json", *extra]


def answer(proc: faults.Proc) -> str:
    assert proc.code == 0, f"exit {proc.code}: {proc.err}"
    assert "Traceback" not in proc.err, proc.err
    return json.loads(proc.out)["answer"]


def sentinels(folder: Path) -> Path:
    """A folder outside the cache holding what `pc` must never touch: files named like cache
    files, lock files and temporary files (two days old, so any age test would pick them), an
    overlap record, and a plain file."""
    folder.mkdir(parents=True)
    for name, data in (("0123456789abcdef0123456789abcdef01234567.pcm", b"PCACHE\r\nnot really\n"),
                       ("22.pcm", b"a prefix state? no\n"), ("0123.pcm.lock", b""), (".tmp-0123", b"half a write"),
                       ("overlap.jsonl", b'{"tokens": 9, "overlap": 3, "time": 1.0}\n'), ("notes.txt", b"mine\n")):
        (folder / name).write_bytes(data)
        old = (folder / name).stat().st_mtime - TWO_DAYS
        os.utime(folder / name, (old, old))
    return folder


def state(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every name in ``folder`` with its bytes, modification and access time: a write, an
    append, a new lock file, a touch or a removal all show."""
    out = {}
    for p in sorted(folder.iterdir()):
        st = p.stat()
        out[p.name] = (p.read_bytes(), st.st_mtime_ns, st.st_atime_ns)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # reading it here may have set its access time
    return out


@dataclass
class Docs:
    schema: Path
    modular: str  # the answers from a cache of their own, no links anywhere
    prefix: str


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Docs:
    root = tmp_path_factory.mktemp("docs")
    schema = faults.write_docs(root / "docs", 1)
    modular = answer(faults.run(ask_args(schema), cache=root / "ref-modular"))
    prefix = answer(faults.run(ask_args(schema, "--mode", "prefix"), cache=root / "ref-prefix"))
    return Docs(schema, modular, prefix)


@pytest.fixture(scope="module")
def compiled(docs: Docs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the schema in both modes, and a prefix-mode overlap record (copied by
    each test)."""
    cache = tmp_path_factory.mktemp("compiled") / "cache"
    assert faults.run(["compile", docs.schema], cache=cache).code == 0
    assert answer(faults.run(ask_args(docs.schema, "--mode", "prefix"), cache=cache)) == docs.prefix
    return cache


def copy_of(compiled: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(compiled, cache)
    return cache


def history_dir(cache: Path) -> Path:
    (folder,) = (cache / "prefix" / "history").iterdir()
    return folder


def link_everywhere(cache: Path, outside: Path) -> list[Path]:
    """Links to ``outside`` where `pc` walks: a module folder, a prefix folder, a prompt's state
    folder, a schema's overlap record folder (its real one moved away), and single files: a module
    file, a manifest, a temporary file."""
    links = [cache / "modules" / "zz", cache / "prefix" / "zz", cache / "prefix" / "ff" / ("f" * 40)]
    history = history_dir(cache)
    shutil.rmtree(history)
    links.append(history)
    first = next((cache / "modules").iterdir())
    links += [first / ("e" * 40 + ".pcm"), cache / "schemas" / "zz-000000000000.json", first / ".tmp-0123"]
    targets = [outside] * 4 + [outside / "0123456789abcdef0123456789abcdef01234567.pcm", outside / "notes.txt",
                                outside / ".tmp-0123"]
    for link, target in zip(links, targets, strict=True):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return links


def assert_untouched(outside: Path, before: dict, links: list[Path]) -> None:
    assert state(outside) == before
    assert all(link.is_symlink() for link in links), [str(p) for p in links if not p.is_symlink()]


@pytest.mark.parametrize("how", [["--max-size", "1", "--grace", "0s"], ["--older-than", "0s", "--grace", "0s"]],
                         ids=["max-size", "older-than"])
def test_gc_neither_follows_nor_removes_links(how: list[str], compiled: Path, tmp_path: Path) -> None:
    cache = copy_of(compiled, tmp_path)
    outside = sentinels(tmp_path / "outside")
    links = link_everywhere(cache, outside)
    before = state(outside)
    proc = faults.run(["gc", *how, "--json"], cache=cache)
    assert proc.code == 0 and "Traceback" not in proc.err, proc.err
    report = json.loads(proc.out)
    assert report["removed"], report  # the cache's own files went
    assert [p for p in faults.module_files(cache) if not p.is_symlink()] == []
    removed = [r["path"] for r in report["removed"]]
    assert not any(str(outside) in p or "zz" in p for p in removed), removed
    assert_untouched(outside, before, links)


def test_rm_leaves_a_linked_overlap_record_and_what_it_points_to(docs: Docs, compiled: Path, tmp_path: Path) -> None:
    cache = copy_of(compiled, tmp_path)
    outside = sentinels(tmp_path / "outside")
    links = link_everywhere(cache, outside)
    before = state(outside)
    proc = faults.run(["rm", docs.schema], cache=cache)
    assert proc.code == 0 and "Traceback" not in proc.err, proc.err
    assert "a symbolic link: left alone" in proc.err, proc.err
    assert [p for p in faults.module_files(cache) if not p.is_symlink()] == [] and not list((cache / "schemas").glob("faults-*.json"))
    assert_untouched(outside, before, links)


@pytest.mark.parametrize("mode", ["modular", "prefix"])
def test_ask_with_links_in_the_cache_answers_and_writes_nothing_outside(mode: str, docs: Docs, compiled: Path,
                                                                        tmp_path: Path) -> None:
    """A warm cache, and an empty one (everything computed and written beside the links)."""
    for warm in (True, False):
        cache = copy_of(compiled, tmp_path / str(warm))
        if not warm:
            for f in faults.module_files(cache) + sorted((cache / "prefix").rglob("*.pcm")):
                f.unlink()
        outside = sentinels(tmp_path / str(warm) / "outside")
        links = link_everywhere(cache, outside)
        before = state(outside)
        proc = faults.run(ask_args(docs.schema, "--mode", mode), cache=cache)
        assert answer(proc) == getattr(docs, mode), (warm, proc.err)
        assert "warning" not in proc.err, proc.err  # nothing it needed was behind a link
        assert_untouched(outside, before, links)


def test_module_folder_that_is_a_link(docs: Docs, compiled: Path, tmp_path: Path) -> None:
    """The folder a module file belongs in is a link to a folder outside holding that very file:
    `pc ask` neither reads nor writes through it (it computes the module, warns once and answers
    right), `pc compile` exits 5 with one line, `pc gc` and `pc verify` leave it alone."""
    cache = copy_of(compiled, tmp_path)
    outside = tmp_path / "outside"
    victim = faults.module_files(cache)[0].parent
    shutil.move(victim, outside)
    (outside / "notes.txt").write_text("mine\n")
    victim.symlink_to(outside)
    before = state(outside)

    proc = faults.run(ask_args(docs.schema), cache=cache)
    assert answer(proc) == docs.modular
    warnings = [line for line in proc.err_lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "symbolic link" in warnings[0], proc.err
    assert state(outside) == before

    proc = faults.run(["compile", docs.schema, "--force"], cache=cache)
    assert proc.code == errors.EXIT_CACHE and "Traceback" not in proc.err, proc.err
    assert len(proc.err_lines) == 1 and "symbolic link" in proc.err, proc.err
    assert state(outside) == before

    assert faults.run(["gc", "--max-size", "1", "--grace", "0s"], cache=cache).code == 0
    verify = faults.run(["verify", "--json"], cache=cache)
    assert verify.code == 0, verify.err
    assert json.loads(verify.out)["links"] == [str(victim)]
    assert state(outside) == before and victim.is_symlink()


def test_verify_lists_links_and_reads_nothing_behind_them(compiled: Path, tmp_path: Path) -> None:
    cache = copy_of(compiled, tmp_path)
    outside = sentinels(tmp_path / "outside")  # its ".pcm" files would be damaged cache files
    links = link_everywhere(cache, outside)
    before = state(outside)
    proc = faults.run(["verify", "--json"], cache=cache)
    assert proc.code == 0, proc.err  # nothing behind a link counts
    report = json.loads(proc.out)
    assert sorted(report["links"]) == sorted(str(p) for p in links)
    assert report["ok"] and report["damaged"] == []
    human = faults.run(["verify"], cache=cache)
    assert human.code == 0 and human.out.count("symbolic link inside the cache") == len(links), human.out
    assert_untouched(outside, before, links)


def test_a_cache_folder_that_is_itself_a_link_is_used(docs: Docs, compiled: Path, tmp_path: Path) -> None:
    """The user chose it: the folder it points to is the cache."""
    real = copy_of(compiled, tmp_path)
    link = tmp_path / "cache-link"
    link.symlink_to(real)
    proc = faults.run(ask_args(docs.schema), cache=link)
    assert answer(proc) == docs.modular and proc.err == "", proc.err
    gc = faults.run(["gc", "--max-size", "1", "--grace", "0s"], cache=link)
    assert gc.code == 0 and faults.module_files(real) == [], gc.err


# -- the boundary itself, in process (store/boundary.py) -------------------------------------------


def test_boundary_refuses_every_way_out(tmp_path: Path) -> None:
    from promptcache_cli.errors import CacheLinkError, OutsideCache
    from promptcache_cli.store.boundary import Boundary

    cache, outside = tmp_path / "cache", sentinels(tmp_path / "outside")
    (cache / "modules").mkdir(parents=True)
    (cache / "modules" / "zz").symlink_to(outside)
    (cache / "modules" / "ab").mkdir()
    (cache / "modules" / "ab" / "f.pcm").symlink_to(outside / "notes.txt")
    before = state(outside)
    b = Boundary(cache)
    for path in (cache / ".." / "outside" / "notes.txt", outside / "notes.txt", cache, "/etc/passwd"):
        with pytest.raises(OutsideCache):
            b.write_atomic(path, [b"x"])
    for op in (lambda p: b.write_atomic(p, [b"x"]), b.unlink, lambda p: b.lock(f"{p}.lock").acquire(),
               lambda p: b.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT), b.stat):
        for path in (cache / "modules" / "zz" / "notes.txt", cache / "modules" / "zz" / "new.pcm"):
            with pytest.raises(CacheLinkError):
                op(path)
    with pytest.raises(CacheLinkError):  # the file itself a link: not replaced, not removed
        b.write_atomic(cache / "modules" / "ab" / "f.pcm", [b"x"])
    with pytest.raises(CacheLinkError):
        b.unlink(cache / "modules" / "ab" / "f.pcm")
    assert b.file_stat(cache / "modules" / "ab" / "f.pcm") is None  # reads as missing
    assert sorted(p.name for p in b.links()) == ["f.pcm", "zz"]
    assert [e.kind for e in b.walk() if e.path.name == "zz"] == ["link"]  # listed, not entered
    assert not list((cache / "modules" / "ab").glob(".tmp-*"))  # the refused write left nothing
    assert_untouched(outside, before, [cache / "modules" / "zz", cache / "modules" / "ab" / "f.pcm"])


def test_one_line_escapes_and_caps() -> None:
    from promptcache_cli.cli.common import MAX_LINE, one_line

    assert one_line("a\nb\u202ec\x9bd\x1b[31m") == "a\\nb\\u202ec\\x9bd\\x1b[31m"
    long = "x" * 1_000_000 + "END"
    cut = one_line(long)
    assert len(cut) <= MAX_LINE + 60 and cut.endswith("END") and "1000003 characters, cut" in cut
    assert one_line("plain text: café, 日本") == "plain text: café, 日本"

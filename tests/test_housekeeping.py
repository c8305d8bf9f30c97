"""Cache housekeeping a person can read: an on-demand compile stores every module state it computes
(and its progress total is the tokens it computes), a recompile says why, `pc ls` fits 80 columns
("not built", model and encoding once), `pc verify` and `pc gc` name schema and module beside each
file, and `pc gc --orphans` removes what no manifest references any more. Real default model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import promptcache_cli as pc
from promptcache_cli import errors
from promptcache_cli.modular.compiler import decode_count

from .conftest import write_schema
from .support.pc_process import ok, one_line_error, pc as run

# The trailing sentence is the schema's own text after the last module: its states are computed
# after every module before it, so asking for `a` computes `b` and `c` on the way.
LETTERS = """\
<schema name="letters">
  <system>Answer briefly.</system>
  <user>
    <module name="a">Alpha is the first letter.</module>
    <module name="b">Beta is the second letter.</module>
    <module name="c">Gamma is the {c} letter.</module>
    Answer from the sentences above.
  </user>
</schema>
"""

NESTED = """\
<schema name="code">
  <system>Answer briefly.</system>
  <user>
    <module name="python">Python.
      <module name="global">global makes a name module-wide.</module>
      <module name="return">return {ret}.</module>
    </module>
    <module name="rust">Rust has no global keyword.</module>
  </user>
</schema>
"""


def letters(tmp_path: Path, c: str = "third") -> Path:
    return write_schema(tmp_path / "s", LETTERS.replace("{c}", c))


def test_an_ask_stores_the_modules_it_computed_on_the_way(tmp_path) -> None:
    schema = letters(tmp_path)
    first = ok(run("ask", "-s", schema, "-m", "a", "-n", "4", "Which letter is first?", "--json"))
    assert "compiled 4 module(s) on demand: (schema), a, b, c" in first.err
    (entry,) = ok(run("ls", "--json")).json()["schemas"]
    built = {m["name"]: m["present"] for m in entry["variants"][0]["modules"]}
    assert built == {"(schema)": True, "a": True, "b": True, "c": True}
    report = ok(run("compile", schema, "--json")).json()
    assert {m["status"] for m in report["modules"]} == {"reused"}  # nothing left to compute


def test_progress_totals_count_the_tokens_decoded() -> None:
    # a shared prefix is decoded once; the same run again recomputes its last token only
    assert decode_count([(0, [1, 2, 3]), (0, [1, 2, 3, 4, 5]), (0, [1, 2, 3, 4, 5])]) == 3 + 2 + 1
    assert decode_count([(0, [1, 2]), (5, [7])]) == 3  # another start: no reuse
    assert decode_count([(0, [1, 2, 3]), (0, [1, 9])]) == 3 + 1


def test_progress_reports_end_at_their_total(tmp_path) -> None:
    schema = letters(tmp_path)
    seen: list[tuple[int, int]] = []
    with pc.open_session(cache_dir=tmp_path / "cache") as session:
        report = session.compile(schema, progress=lambda done, total, name: seen.append((done, total)))
    totals = {t for _, t in seen}
    assert len(totals) == 1 and seen[-1][0] == seen[-1][1] == totals.pop()
    assert seen[-1][1] == sum(m.tokens for m in report.modules)  # scaffold: each token decoded once


def test_a_recompile_says_which_module_changed_and_what_follows_it(tmp_path) -> None:
    folder = tmp_path / "s"
    schema = write_schema(folder, NESTED.replace("{ret}", "hands back a value"))
    first = ok(run("compile", schema))
    assert first.err.startswith("not compiled yet: computing 5 modules")
    schema.write_text(schema.read_text().replace("hands back a value", "ends a function"))
    again = ok(run("compile", schema))
    computed = [line for line in again.err.splitlines() if line.startswith("computed")]
    assert "computed  python/return" in again.err and "computed  rust" in again.err  # the next module's context changed
    after = len(computed) - 1  # rust, and the schema's own text when some of it follows (its template's end)
    assert again.err.splitlines()[0] == (f"python/return changed: recompiling it and {after} module"
                                         f"{'s' if after > 1 else ''} after it")
    assert ok(run("compile", schema)).err.startswith("  reused")  # nothing to say when all is cached


def test_ls_fits_80_columns_and_says_not_built(tmp_path) -> None:
    ok(run("compile", letters(tmp_path)))
    styles = write_schema(tmp_path / "t", LETTERS.replace("letters", "a-schema-with-a-rather-long-name").replace(
        "<system>Answer briefly.</system>",
        '<system><union scaffold="plain"><module name="plain">Be plain.</module>'
        '<module name="a-member-with-a-name-longer-than-the-column">Be formal.</module></union></system>'))
    ok(run("ask", "-s", styles, "-m", "a", "-n", "2", "Which?"))
    out = ok(run("ls")).out
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    # the model (its family and memory) and the settings once per schema, not per row
    assert sum(line.startswith("  SmolLM2-135M-Instruct.Q4_1.gguf (llama, ") for line in lines) == 2
    assert sum(line.endswith("scaffold encoding, no compression") for line in lines) == 2
    unbuilt = [line for line in lines if "not built" in line]
    # the union member no question used (its name cut to the column); the default member, computed
    # on the way to `a` (the scaffold's text), is built
    assert len(unbuilt) == 1 and unbuilt[0].lstrip().startswith("…a-name-longer-than-the-column")
    assert "missing" not in out


def test_gc_orphans_removes_what_no_schema_uses_and_names_it(tmp_path) -> None:
    schema = letters(tmp_path)
    ok(run("compile", schema))
    schema.write_text(schema.read_text().replace("third", "3rd"))
    ok(run("compile", schema))  # c (and the schema's text after it) changed: their old files are orphans
    cache = Path(os.environ["PC_CACHE_DIR"])
    listing = pc.list_cache(cache)
    orphans = listing.orphans
    assert len(orphans) == 2
    fresh = one_line_error(run("gc"), errors.EXIT_USAGE)
    assert "--orphans" in fresh
    kept = ok(run("gc", "--orphans", "--json")).json()  # written in the last minute: a compile may own them
    assert not kept["removed"] and len(kept["skipped"]) == 2
    old = time.time() - 3600
    for f in orphans:
        os.utime(f.path, (old, old))
    done = ok(run("gc", "--orphans"))
    assert done.err.count("removed  module of no schema") == 2 and "no schema references it" in done.err
    assert not pc.list_cache(cache).orphans
    assert {m.name for s in pc.list_cache(cache).schemas for v in s.variants for m in v.modules if m.present} == {
        "(schema)", "a", "b", "c"}


def test_verify_and_gc_name_schema_and_module(tmp_path) -> None:
    schema = letters(tmp_path)
    ok(run("compile", schema))
    cache = Path(os.environ["PC_CACHE_DIR"])
    files = {m.name: m for s in pc.list_cache(cache).schemas for v in s.variants for m in v.modules}
    target = next(p for p in cache.rglob("*.pcm") if p.stem == files["b"].key)
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    bad = run("verify")
    assert bad.code == errors.EXIT_CACHE
    assert bad.out.startswith(f"damaged   letters/b  {target}: ")
    dry = ok(run("gc", "--max-size", "0", "--grace", "0s", "--dry-run"))  # just compiled: no grace
    assert "would remove  letters/b  modules/" in dry.err

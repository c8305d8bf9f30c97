"""Asking about plain files without a schema: `pc ask -f FILE [-f FILE ...] [--system TEXT]`, `-f -`
for a document on stdin, `pc compile -f`, and the library's documents_schema under them. Each file
is a module keyed by its content: the second question about a file answers from the cache, from
another folder or under another name too. Real default model."""

from __future__ import annotations

from pathlib import Path

import pytest

import promptcache_cli as pc
from promptcache_cli import errors

from .support.pc_process import ok, one_line_error, pc as run

NOTES = "The project deadline is March 3.\nThe budget is 4,000 euros.\nThe team lead is Ana.\n"
QUESTION = "When is the deadline?"


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text(NOTES, encoding="utf-8")
    return path


def test_a_file_is_compiled_on_demand_then_answered_from_the_cache_wherever_it_lives(notes, tmp_path) -> None:
    first = ok(run("ask", "-f", notes, QUESTION, "--json"))
    res = first.json()
    assert "March 3" in res["answer"]  # the default model reads it right
    assert "compiled 2 module(s) on demand" in first.err
    again = ok(run("ask", "-f", notes, QUESTION, "--json"))
    assert again.err == "" and again.json()["answer"] == res["answer"]
    assert again.json()["cached_tokens"] == res["cached_tokens"] > 0
    moved = tmp_path / "elsewhere" / "renamed.md"
    moved.parent.mkdir()
    moved.write_bytes(notes.read_bytes())
    elsewhere = ok(run("ask", "-f", moved, QUESTION, "--json"))
    assert elsewhere.err == ""  # nothing computed: the same content is the same module
    assert elsewhere.json()["answer"] == res["answer"] and elsewhere.json()["modules"] == ["renamed.md"]
    listing = ok(run("ls", "--json")).json()
    (entry,) = listing["schemas"]
    assert entry["schema"] == "notes.txt" and entry["path"] is None
    assert [m["name"] for m in entry["variants"][0]["modules"]] == ["(schema)", "notes.txt"]
    text = ok(run("ls")).out
    assert "notes.txt  (no schema file: pc ask -f or the Python API)" in text


def test_compile_f_precomputes_and_a_document_on_stdin_needs_the_question_as_an_argument(notes) -> None:
    report = ok(run("compile", "-f", notes, "--json")).json()
    assert [m["status"] for m in report["modules"]] == ["computed", "computed"]
    piped = ok(run("ask", "-f", "-", QUESTION, "--json", stdin=NOTES))
    assert piped.err == ""  # stdin's text is the file's: cached already
    assert piped.json()["modules"] == ["stdin"]
    err = one_line_error(run("ask", "-f", "-", stdin=NOTES), errors.EXIT_USAGE)
    assert "give the question as an argument" in err


def test_several_files_and_a_system_prompt(notes, tmp_path) -> None:
    other = tmp_path / "team.txt"
    other.write_text("The office is in Porto. The code reviewer is Bo.\n", encoding="utf-8")
    res = ok(run("ask", "-f", notes, "-f", other, "--system", "Answer in one short sentence.",
                 "Who is the code reviewer?", "--json")).json()
    assert "Bo" in res["answer"]
    assert res["modules"] == ["notes.txt", "team.txt"]


@pytest.mark.parametrize("args, code, message", [
    (["-f", "NOTES", "-s", "schemas/gpl-manual.xml"], errors.EXIT_USAGE, "use one"),
    (["-s", "schemas/gpl-manual.xml", "--system", "Be brief."], errors.EXIT_USAGE, "--system goes with -f"),
    (["-f", "MISSING"], errors.EXIT_INPUT, "file not found"),
    (["-f", "BINARY"], errors.EXIT_INPUT, "a binary file"),
    (["-f", "EMPTY"], errors.EXIT_INPUT, "empty"),
    ([], errors.EXIT_USAGE, "needs -f FILE (a text file) or -s SCHEMA"),
])
def test_bad_files_and_options_end_in_one_line(notes, tmp_path, args, code, message) -> None:
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    names = {"NOTES": str(notes), "MISSING": str(tmp_path / "nope.txt"), "BINARY": str(tmp_path / "bin.dat"),
             "EMPTY": str(tmp_path / "empty.txt")}
    err = one_line_error(run("ask", *[names.get(a, a) for a in args], QUESTION), code)
    assert message in err


def test_the_library_builds_the_same_schema_from_paths_or_documents(notes, tmp_path) -> None:
    from_path = pc.documents_schema([notes])
    from_doc = pc.documents_schema([pc.Document("notes.txt", NOTES)])
    assert from_path.name == from_doc.name == "notes.txt"
    assert from_path.children[1].children[0].children == from_doc.children[1].children[0].children  # the text
    two = pc.documents_schema([pc.Document("a b.txt", "x"), pc.Document("a b.txt", "y")], system="S")
    assert two.name == "a_b.txt+a_b.txt-2"  # names as schemas allow them, each module named once
    assert pc.document_from_bytes(b"\xef\xbb\xbfhello").text == "hello"
    with pytest.raises(pc.InputError, match="not valid UTF-8"):
        pc.document_from_bytes(b"\xff\xfe")
    with pytest.raises(pc.InputError, match="larger than"):
        pc.document_from_bytes(b"a" * (pc.MAX_DOCUMENT_BYTES + 1))
    with pc.open_session(cache_dir=tmp_path / "cache") as session:
        request = pc.Request(from_doc, QUESTION, max_tokens=16)
        assert session.stale(request).reason == "not compiled yet: computing 2 modules " \
            f"({sum(len(p.tokens) for p in session.prompt(request).parts if p.kind == 'cached')} tokens)"
        first = session.ask(request)
        assert [m.name for m in first.compiled] == ["(schema)", "notes.txt"]
        second = session.ask(pc.Request(from_path, QUESTION, max_tokens=16))
        assert not second.compiled and second.text == first.text

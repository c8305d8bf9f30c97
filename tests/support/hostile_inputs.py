"""Hostile and malformed input for `pc`, as a table of cases written into a folder: each must end
in one line on stderr naming the problem (and the file, line and element where there is one), a
documented exit code, no traceback, and an untouched cache. Used by test_hostile_input.py and
scripts/fault_table.py."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from promptcache_cli import errors
from promptcache_cli.llama.model_file import default_model_path

from . import faults

DOCS = Path(__file__).resolve().parents[2] / "schemas" / "docs"

TRAVEL = """\
<schema name="travel">
  <system>You plan trips.</system>
  <user>
    <module name="trip">
      A trip of <parameter name="days" length="3"/>.
      <union scaffold="home">
        <module name="home">Stay home.</module>
        <module name="away">Go away.</module>
      </union>
    </module>
  </user>
</schema>
"""

BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<schema name="bomb"><module name="a">&lol4;</module></schema>
"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE s [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<schema name="xxe"><module name="a">&xxe;</module></schema>
"""


NAMES = (  # every case, in order (parametrizes the tests without writing the files)
    "malformed XML",
    "entity expansion bomb",
    "external entity",
    "schema over the size limit",
    "module src over the size limit",
    "empty file",
    "empty schema",
    "non-UTF-8 schema",
    "non-UTF-8 src",
    "duplicate module names",
    "duplicate parameter names",
    "src outside the schema's folder",
    "src absolute path",
    "src missing file",
    "src a directory",
    "src a symlink to a device outside",
    "src a device or FIFO inside",
    "src a binary file",
    "missing schema file",
    "unknown module (-m)",
    "unknown union member (prompt)",
    "two members of one union (prompt)",
    "unknown parameter (prompt)",
    "parameter value longer than its length",
    "entity in a prompt file",
    "non-UTF-8 question on stdin",
    "prompt longer than the model's context",
    "question longer than the model's context",
    "missing model file",
    "model is a directory",
    "model is not a GGUF",
    "truncated GGUF model",
    "unreadable model file",
    # issue 20: limits before work, NaN options, one line means one line, FIFO models
    "20,000 sibling modules",
    "9,000 sibling modules (longer than the context)",
    "elements nested past the depth limit",
    "--temperature nan",
    "--refresh nan",
    "--top-p nan",
    "model is a FIFO",
    "schema path with a newline",
    "1 MB invalid attribute value",
    "10,000-character module name",
    "bidi and C1 control characters in a name",
)

MAX_LINE = 1100  # characters of the one error line: cli.common.MAX_LINE (1000) and its elision note


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple
    code: int
    says: tuple[str, ...]  # what the one line must contain
    stdin: bytes = b""
    drop_write_bypass: bool = False  # run without root's permission bypass (an unreadable file)


def _schema(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _module_src(folder: Path, name: str, src: str) -> Path:
    return _schema(folder, name, f'<schema name="s">\n  <module name="doc" src="{src}"/>\n</schema>\n')


def _prompt(folder: Path, name: str, body: str) -> Path:
    return _schema(folder, name, f'<prompt schema="travel">{body}</prompt>\n')


def _special_file(path: Path) -> None:
    """A character device like /dev/zero where allowed (root), else a FIFO: neither is a file."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except OSError:
        os.mkfifo(path)


def cases(folder: Path) -> list[Case]:
    """Write every hostile input into ``folder`` and return the cases."""
    folder.mkdir(parents=True, exist_ok=True)
    travel = _schema(folder, "travel.xml", TRAVEL)
    (folder / "adir").mkdir(exist_ok=True)
    (folder / "binary.dat").write_bytes(bytes(range(256)) * 4)
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me\n".encode("latin-1"))
    (folder / "big.txt").write_bytes(b"word " * (1 << 20))
    (folder / "long.txt").write_text((DOCS / "GPL-2.txt").read_text(encoding="utf-8") * 3, encoding="utf-8")
    if not (folder / "device").is_symlink():
        (folder / "device").symlink_to("/dev/zero")
    if not (folder / "special").exists():
        _special_file(folder / "special")
    outside = folder.parent / "outside.txt"
    outside.write_text("a secret outside the schema's folder\n")
    model = default_model_path()
    (folder / "not-a-model.gguf").write_text("this is not a model\n")
    (folder / "truncated.gguf").write_bytes(model.read_bytes()[: 1 << 20])
    unreadable = folder / "unreadable.gguf"
    unreadable.write_bytes(model.read_bytes()[:4096])
    unreadable.chmod(0)
    siblings = lambda n: ('<schema name="many"><user>' + "".join(f'<module name="m{i}">Note {i}.</module>'  # noqa: E731
                                                                  for i in range(n)) + "</user></schema>\n")
    deep = "".join(f'<module name="d{i}">' for i in range(150)) + "x" + "</module>" * 150
    fifo = folder / "fifo.gguf"
    if not fifo.exists():
        os.mkfifo(fifo)
    newline = folder / "two\nlines"
    newline.mkdir(exist_ok=True)

    def ask(schema: Path, *extra) -> tuple:
        return ("ask", "What now?", "-s", schema, *extra)

    c = [
        Case("malformed XML", ask(_schema(folder, "malformed.xml", '<schema name="b">\n<module name="a">x</schema>\n')),
             errors.EXIT_INPUT, ("malformed.xml:2", "XML syntax error")),
        Case("entity expansion bomb", ask(_schema(folder, "bomb.xml", BOMB)), errors.EXIT_INPUT,
             ("bomb.xml:2", "entity")),
        Case("external entity", ask(_schema(folder, "xxe.xml", XXE)), errors.EXIT_INPUT, ("xxe.xml:2", "entity")),
        Case("schema over the size limit", ask(_schema(folder, "big.xml", b'<schema name="b"><module name="a">'
                                                        + b"x" * (5 << 20) + b"</module></schema>")),
             errors.EXIT_INPUT, ("big.xml", "larger than")),
        Case("module src over the size limit", ask(_module_src(folder, "big-src.xml", "big.txt")), errors.EXIT_INPUT,
             ("big-src.xml:2", '<module name="doc">', "larger than")),
        Case("empty file", ask(_schema(folder, "empty.xml", b"")), errors.EXIT_INPUT, ("empty.xml:1", "no element")),
        Case("empty schema", ask(_schema(folder, "empty-schema.xml", '<schema name="e">\n</schema>\n')),
             errors.EXIT_INPUT, ("empty-schema.xml:1", "empty schema")),
        Case("non-UTF-8 schema", ask(_schema(folder, "latin1.xml", '<schema name="l">\n<module name="a">caf\xe9</module>'
                                                                   "</schema>".encode("latin-1"))),
             errors.EXIT_INPUT, ("latin1.xml:2", "UTF-8")),
        Case("non-UTF-8 src", ask(_module_src(folder, "latin1-src.xml", "latin1.txt")), errors.EXIT_INPUT,
             ("latin1-src.xml:2", '<module name="doc">', "UTF-8")),
        Case("duplicate module names", ask(_schema(folder, "dup.xml", '<schema name="d">\n<module name="a">x</module>\n'
                                                                      '<module name="a">y</module>\n</schema>\n')),
             errors.EXIT_INPUT, ("dup.xml:3", '<module name="a">', "duplicate")),
        Case("duplicate parameter names", ask(_schema(folder, "dup-param.xml", '<schema name="d">\n<module name="a">'
                                                      '<parameter name="p" length="2"/>\n<parameter name="p" length="2"/>'
                                                      "</module>\n</schema>\n")),
             errors.EXIT_INPUT, ("dup-param.xml:3", '<parameter name="p">', "duplicate")),
        Case("src outside the schema's folder", ask(_module_src(folder, "outside.xml", "../outside.txt")),
             errors.EXIT_INPUT, ("outside.xml:2", '<module name="doc">', "outside")),
        Case("src absolute path", ask(_module_src(folder, "absolute.xml", "/etc/passwd")), errors.EXIT_INPUT,
             ("absolute.xml:2", '<module name="doc">', "relative")),
        Case("src missing file", ask(_module_src(folder, "missing-src.xml", "nope.txt")), errors.EXIT_INPUT,
             ("missing-src.xml:2", '<module name="doc">', "not found")),
        Case("src a directory", ask(_module_src(folder, "dir-src.xml", "adir")), errors.EXIT_INPUT,
             ("dir-src.xml:2", '<module name="doc">', "not a regular file")),
        Case("src a symlink to a device outside", ask(_module_src(folder, "device-src.xml", "device")),
             errors.EXIT_INPUT, ("device-src.xml:2", '<module name="doc">', "outside")),
        Case("src a device or FIFO inside", ask(_module_src(folder, "special-src.xml", "special")),
             errors.EXIT_INPUT, ("special-src.xml:2", '<module name="doc">', "not a regular file")),
        Case("src a binary file", ask(_module_src(folder, "binary-src.xml", "binary.dat")), errors.EXIT_INPUT,
             ("binary-src.xml:2", '<module name="doc">', "binary")),
        Case("missing schema file", ask(folder / "nope.xml"), errors.EXIT_INPUT, ("nope.xml", "not found")),
        Case("unknown module (-m)", ask(travel, "-m", "horse"), errors.EXIT_INPUT, ("unknown module 'horse'",)),
        Case("unknown union member (prompt)", ("ask", "-s", travel, "--prompt",
                                               _prompt(folder, "member.prompt.xml", "<trip><paris/></trip>hi")),
             errors.EXIT_INPUT, ("member.prompt.xml:1", "unknown module 'paris'")),
        Case("two members of one union (prompt)", ("ask", "-s", travel, "--prompt",
                                                   _prompt(folder, "two.prompt.xml", "<trip><home/><away/></trip>hi")),
             errors.EXIT_INPUT, ("same union",)),
        Case("unknown parameter (prompt)", ("ask", "-s", travel, "--prompt",
                                            _prompt(folder, "param.prompt.xml", '<trip weeks="2"/>hi')),
             errors.EXIT_INPUT, ("param.prompt.xml", "no parameter 'weeks'")),
        Case("parameter value longer than its length", ask(travel, "-p", "days=three long weeks of holiday in Rome"),
             errors.EXIT_INPUT, ("trip/days", "more than its length 3", "shorten the value by")),
        Case("entity in a prompt file", ("ask", "-s", travel, "--prompt", _schema(folder, "xxe.prompt.xml",
                                         XXE.replace("<schema name=\"xxe\"><module name=\"a\">&xxe;</module></schema>",
                                                     '<prompt schema="travel">&xxe;</prompt>'))),
             errors.EXIT_INPUT, ("xxe.prompt.xml:2", "entity")),
        Case("non-UTF-8 question on stdin", ("ask", "-", "-s", travel), errors.EXIT_INPUT, ("UTF-8",),
             stdin="caf\xe9?".encode("latin-1")),
        Case("prompt longer than the model's context", ask(_module_src(folder, "long.xml", "long.txt")),
             errors.EXIT_TOO_LONG, ("context",)),
        Case("question longer than the model's context", ("ask", "-", "-s", travel), errors.EXIT_TOO_LONG,
             ("context",), stdin=b"why " * 100_000),
        Case("missing model file", ask(travel, "--model", folder / "nope.gguf"), errors.EXIT_MODEL, ("nope.gguf",)),
        Case("model is a directory", ask(travel, "--model", folder / "adir"), errors.EXIT_MODEL, ("adir",)),
        Case("model is not a GGUF", ask(travel, "--model", folder / "not-a-model.gguf"), errors.EXIT_MODEL,
             ("not-a-model.gguf",)),
        Case("truncated GGUF model", ask(travel, "--model", folder / "truncated.gguf"), errors.EXIT_MODEL,
             ("truncated.gguf",)),
        Case("unreadable model file", ask(travel, "--model", unreadable), errors.EXIT_MODEL,
             ("unreadable.gguf", "Permission denied"), drop_write_bypass=True),
        Case("20,000 sibling modules", ask(_schema(folder, "siblings-20k.xml", siblings(20_000))), errors.EXIT_INPUT,
             ("siblings-20k.xml:1", "more than 10000 modules")),
        Case("9,000 sibling modules (longer than the context)", ask(_schema(folder, "siblings-9k.xml", siblings(9_000))),
             errors.EXIT_TOO_LONG, ("at least 9000 positions", "context")),
        Case("elements nested past the depth limit", ask(_schema(folder, "deep.xml", f'<schema name="d">{deep}</schema>')),
             errors.EXIT_INPUT, ("deep.xml:1", "nested deeper than 100")),
        Case("--temperature nan", ask(travel, "--temperature", "nan"), errors.EXIT_USAGE, ("--temperature", "finite")),
        Case("--refresh nan", ask(travel, "--refresh", "nan"), errors.EXIT_USAGE, ("--refresh", "finite")),
        Case("--top-p nan", ask(travel, "--top-p", "nan"), errors.EXIT_USAGE, ("--top-p", "finite")),
        Case("model is a FIFO", ask(travel, "--model", fifo), errors.EXIT_MODEL, ("fifo.gguf", "not a regular file")),
        Case("schema path with a newline", ask(_schema(newline, "s.xml", '<schema name="b">\n<module name="a">x</schema>')),
             errors.EXIT_INPUT, ("two\\nlines/s.xml:2", "XML syntax error")),
        Case("1 MB invalid attribute value", ask(_schema(folder, "attr.xml", '<schema name="a"><module name="a">'
                                                          '<parameter name="p" length="' + "9x" * 500_000 + '"/>'
                                                          "</module></schema>")),
             errors.EXIT_INPUT, ("attr.xml:1", "characters, cut]")),
        Case("10,000-character module name", ask(_schema(folder, "name.xml", '<schema name="n"><module name="'
                                                          + "n" * 10_000 + '">x</module></schema>')),
             errors.EXIT_INPUT, ("name.xml:1", "invalid name", "characters, cut]")),
        Case("bidi and C1 control characters in a name",
             ask(_schema(folder, "bidi.xml", '<schema name="b"><module name="a\u202eb\u009bc">x</module></schema>')),
             errors.EXIT_INPUT, ("bidi.xml:1", "a\\u202eb\\x9bc")),
    ]
    assert len({x.name for x in c}) == len(c)
    return c


def run(case: Case, cache: Path) -> faults.Proc:
    return faults.run(list(case.args), cache=cache, stdin=case.stdin or None,
                      preexec=faults.drop_root_write_bypass if case.drop_write_bypass else None)

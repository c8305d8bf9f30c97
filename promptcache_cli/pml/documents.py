"""Asking about plain files without writing a schema (`pc ask -f FILE`): a schema made in memory.

Each document becomes one module of the user's turn, its text alone (no file name, no path), so a
module's cache key depends on its content and what comes before it (the system prompt, the
documents before it), never on where the file lives: the same file asked about from another folder
or under another name is answered from the same cached states. The schema is named after the files
(as `pc ls` shows it); the question follows the last document in the user's turn.

    <schema name="notes.txt">
      <system>SYSTEM</system>
      <user><module name="notes.txt">the file's text</module></user>
    </schema>
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError
from .schema import MAX_NAME_LENGTH, MAX_SCHEMA_BYTES, Module, Role, Schema, Text, _read_limited

DEFAULT_SYSTEM = ("You are a careful assistant. Answer questions about the documents the user provides, "
                  "briefly and accurately.")
SEPARATOR = "\n\n"  # between two documents (the schema's own text)
STDIN_NAME = "stdin"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Document:
    """A text to ask about: ``name`` is what `pc ls` shows (a file's name), ``text`` the content;
    ``path`` the file it came from, if any (only named in messages)."""

    name: str
    text: str
    path: str | None = None


def read_document(path: str | os.PathLike) -> Document:
    """A UTF-8 text file of at most 4 MiB as a :class:`Document` named after the file (InputError
    when it is missing, binary, not UTF-8, too large or empty)."""
    where = os.fspath(path)
    try:
        data = _read_limited(where)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    return document_from_bytes(data, name=os.path.basename(where) or where, path=where)


def document_from_bytes(data: bytes, *, name: str = STDIN_NAME, path: str | None = None) -> Document:
    """A document from raw bytes (a file's, or stdin's for ``-f -``), with the same checks."""
    where = path or name
    if len(data) > MAX_SCHEMA_BYTES:
        raise InputError(f"{where}: larger than {MAX_SCHEMA_BYTES} bytes")
    if b"\0" in data:
        raise InputError(f"{where}: a binary file, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{where}: not valid UTF-8 (line {line})") from None
    if not text.strip():
        raise InputError(f"{where}: empty")
    return Document(name, text, path)


def _safe(name: str) -> str:
    """A name as module and schema names allow it: letters, digits, _ - . starting with a letter or _."""
    cleaned = _UNSAFE.sub("_", name).strip("._-") or "document"
    if not (cleaned[0].isalpha() or cleaned[0] == "_"):
        cleaned = "_" + cleaned
    return cleaned[:MAX_NAME_LENGTH]


def documents_schema(documents: Sequence[Document], *, system: str | None = None) -> Schema:
    """A schema whose user turn holds ``documents``, one module each (named after them), after a
    system prompt (``system``, else :data:`DEFAULT_SYSTEM`)."""
    if not documents:
        raise InputError("no document to ask about")
    system = DEFAULT_SYSTEM if system is None else system.strip()
    if not system:
        raise InputError("the system prompt is empty")
    names: list[str] = []
    children: list = []
    for doc in documents:
        if not doc.text.strip():
            raise InputError(f"{doc.path or doc.name}: empty")
        base = name = _safe(doc.name)
        n = 2
        while name in names:  # two files of one name (from two folders): notes.txt, notes.txt-2
            name = f"{base}-{n}"
            n += 1
        names.append(name)
        if children:
            children.append(Text(SEPARATOR, 0))
        children.append(Module(name, (Text(doc.text.strip(), 0),), doc.path, 0))
    title = "+".join(names)
    if len(title) > MAX_NAME_LENGTH:
        title = f"{title[:MAX_NAME_LENGTH - 12]}+{len(names)}-files"
    return Schema(title, (Role("system", (Text(system, 0),), 0), Role("user", tuple(children), 0)), None)

"""Per-schema manifests: which module files a schema was compiled into, with which model and
settings. Module files are content-addressed and may be shared by several schemas; manifests are
what `pc ls` and `pc rm` read, and how `pc ask` tells *why* a cache does not apply (another
model, llama.cpp build, setting or encoding).

``<cache>/schemas/<name>-<hash of the schema's absolute path>.json``::

    {"schema": "gpl-manual", "path": "/abs/schemas/gpl-manual.xml", "variants": {
        "<variant id>": {"model": {...fingerprint}, "llama_cpp": "0.3.36",
                         "state_layout": {...}, "encoding": "scaffold", "codec": "zstd",
                         "compiled": 1795357344.7,
                         "modules": [{"name": "gpl2", "key": "...", "tokens": 4038}]}}}

A module marked cache="false" is listed without a key (``{"name": ..., "tokens": ...,
"cache": false}``): it has no file, its states are computed for each request.

A prefix-mode variant (``"mode": "prefix"``, encoding ``"prefix"``) has no module files: its
``"prefix": {"key": "...", "tokens": 5120}`` names the folder of states ``prefix/<key[:2]>/<key>/``
and the length of the default prompt they were prefilled from. Which states exist is read from
that folder (checkpoints are re-planned, `pc gc` may evict some).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import CacheWriteError

if TYPE_CHECKING:
    from .boundary import Boundary

PREFIX = "prefix"  # the encoding (and mode) of a prefix-mode variant
MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists modules: far below this; a bigger file is not one


@dataclass(frozen=True)
class Variant:
    model: dict
    llama_cpp: str
    state_layout: dict
    encoding: str

    @property
    def id(self) -> str:
        blob = json.dumps([self.model.get("sha256_ends"), self.model.get("size"), self.llama_cpp,
                           self.state_layout, self.encoding], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def differences(self, other: dict) -> list[str]:
        """How a recorded variant (a manifest entry) differs from this one, in words."""
        out = []
        if other.get("model", {}).get("sha256_ends") != self.model.get("sha256_ends"):
            out.append(f"another model ({other.get('model', {}).get('name', '?')})")
        if other.get("llama_cpp") != self.llama_cpp:
            out.append(f"llama-cpp-python {other.get('llama_cpp')}")
        if other.get("state_layout") != self.state_layout:
            diff = {k: v for k, v in (other.get("state_layout") or {}).items() if self.state_layout.get(k) != v}
            out.append("other context settings (" + ", ".join(f"{k}={v}" for k, v in sorted(diff.items())) + ")")
        if other.get("encoding") != self.encoding:
            out.append("prefix mode" if other.get("encoding") == PREFIX else f"the {other.get('encoding')} encoding")
        return out


def uncached_module(name: str, tokens: int) -> dict:
    """A cache="false" module's entry: listed, with no key and no file."""
    return {"name": name, "tokens": tokens, "cache": False}


def manifest_path(root: Path, schema_name: str, schema_path: str | None) -> Path:
    where = os.path.abspath(schema_path) if schema_path else f"<{schema_name}>"
    digest = hashlib.sha256(where.encode()).hexdigest()[:12]
    return Path(root) / "schemas" / f"{schema_name}-{digest}.json"


def load(path: Path, boundary: Boundary | None = None) -> dict | None:
    """A manifest, or None when missing or unreadable (manifests are an index, never trusted
    for anything but listing and messages). ``boundary``: the cache's, to read it without
    following a link."""
    try:
        with open(path, "rb", opener=boundary.opener if boundary else None) as f:
            data = json.loads(f.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, CacheWriteError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("variants"), dict) else None


def load_all(root: Path) -> list[tuple[Path, dict]]:
    """Every readable manifest in ``<root>/schemas`` (links there are not followed)."""
    from .boundary import Boundary

    boundary = Boundary(root)
    try:
        entries = boundary.entries(("schemas",))
    except (OSError, CacheWriteError):
        return []
    return [(e.path, m) for e in entries
            if e.kind == "file" and e.path.suffix == ".json" and (m := load(e.path, boundary)) is not None]


def lock(store, path: Path):
    """The lock a manifest is written and removed under."""
    return store.boundary.lock(f"{path}.lock")


def record(store, *, schema_name: str, schema_path: str | None, variant: Variant, codec: str,
           modules: list[dict], prefix: dict | None = None) -> None:
    """Add or replace this variant's entry, under the manifest's lock, atomically. ``prefix``
    (``{"key": ..., "tokens": ...}``) makes it a prefix-mode entry."""
    path = manifest_path(store.root, schema_name, schema_path)
    held = lock(store, path)
    try:
        held.acquire()
    except OSError as e:  # a read-only cache
        raise CacheWriteError(f"cannot write to the cache at {path.parent}: {e.strerror}") from None
    try:
        data = load(path, store.boundary) or {"schema": schema_name, "variants": {}}
        data["path"] = os.path.abspath(schema_path) if schema_path else None
        entry = {
            "model": variant.model, "llama_cpp": variant.llama_cpp, "state_layout": variant.state_layout,
            "encoding": variant.encoding, "codec": codec, "compiled": time.time(), "modules": modules,
            "mode": "modular",
        }
        if prefix is not None:
            entry.update(mode=PREFIX, prefix=prefix)
        data["variants"][variant.id] = entry
        store.write_atomic(path, [json.dumps(data, indent=1, sort_keys=True).encode()])
    finally:
        held.release()

"""Where a schema's modules live in the cache: each module's key and file, the header its file
carries, and the schema's manifest entry (what `pc ls` lists, and how `pc ask` tells why a cache
made with other settings does not apply)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from ..core.results import ModuleReport, Staleness
from ..core.runtime import Runtime
from ..errors import CacheWriteError
from ..llama.bindings import llama_cpp_version
from ..pml.schema import Schema
from ..prompt.contexts import computed_at, context_bytes
from ..prompt.layout import Layout, Path as ModPath
from ..prompt.plan import owner_name
from ..store import manifest
from ..store.keys import module_key


class Catalog:
    def __init__(self, runtime: Runtime, *, encoding: str, codec: str, static: bool = False) -> None:
        self.runtime = runtime
        self.encoding = encoding
        self.codec = codec
        self.static = static  # states stored at their layout offsets (an experiment: ModularSession)
        self._keys: dict[int, tuple[Layout, dict[ModPath, str], dict[tuple[ModPath, int], int]]] = {}

    @property
    def variant(self) -> manifest.Variant:
        rt = self.runtime
        return manifest.Variant(rt.fingerprint, llama_cpp_version(), rt.settings.state_layout(), self.encoding)

    def keys(self, layout: Layout) -> dict[ModPath, str]:
        """Every owner's cache key (computed once per layout: with the average encoding, finding a
        segment's contexts walks its union choices)."""
        return self._entry(layout)[1]

    def stored_at(self, layout: Layout) -> dict[tuple[ModPath, int], int]:
        """Where each segment's states are stored, by (owner, layout offset): the position they are
        computed at (:func:`..prompt.contexts.computed_at`), whatever position a prompt puts them at."""
        return self._entry(layout)[2]

    def _entry(self, layout: Layout) -> tuple[Layout, dict[ModPath, str], dict[tuple[ModPath, int], int]]:
        hit = self._keys.get(id(layout))
        if hit is None or hit[0] is not layout:
            hit = self._keys[id(layout)] = (layout, *self._compute_keys(layout))
        return hit

    def _compute_keys(self, layout: Layout) -> tuple[dict[ModPath, str], dict[tuple[ModPath, int], int]]:
        rt = self.runtime
        keys, at = {}, {}
        for owner in layout.owners():
            segs = []
            for s in layout.segments_of(owner):
                cs = context_bytes(layout, s, self.encoding)
                at[owner, s.offset] = s.offset if self.static else computed_at(cs)
                segs.append((at[owner, s.offset], s.tokens, cs))
            keys[owner] = module_key(model=rt.fingerprint, llama_cpp=llama_cpp_version(),
                                     state_layout=rt.settings.state_layout(), segments=segs)
        return keys, at

    def path(self, key: str) -> Path:
        return self.runtime.store.module_path(key)

    def header(self, layout: Layout, owner: ModPath, key: str) -> dict:
        """What a module file says of itself."""
        rt = self.runtime
        return {
            "key": key,
            "schema": layout.schema_name,
            "module": owner_name(owner),
            "model": rt.fingerprint,
            "llama_cpp": llama_cpp_version(),
            "state_layout": rt.settings.state_layout(),
            "encoding": self.encoding,
            "created": time.time(),
        }

    def reused(self, layout: Layout, keys: dict[ModPath, str], owner: ModPath, size: int) -> ModuleReport:
        """The report of a module found in the cache (``size``: its file's)."""
        return ModuleReport(owner_name(owner), keys[owner], "reused", layout.tokens_of(owner), size, 0.0)

    def record(self, schema: Schema, layout: Layout, keys: dict[ModPath, str]) -> None:
        """Add or replace this variant's entry in the schema's manifest."""
        store = self.runtime.store
        modules = self.manifest_modules(layout, keys)
        try:
            manifest.record(store, schema_name=schema.name, schema_path=schema.path, variant=self.variant,
                            codec=self.codec, modules=modules)
        except OSError as e:  # its folder or lock file cannot be created (write_atomic raises CacheWriteError)
            raise CacheWriteError(f"cannot write to the cache at {store.root}: {e.strerror}") from None

    def manifest_modules(self, layout: Layout, keys: dict[ModPath, str]) -> list[dict]:
        """The schema's modules as a manifest lists them, in document order (a cache="false" one
        without a key)."""
        return [manifest.uncached_module(owner_name(o), layout.tokens_of(o)) if o in layout.uncached else
                {"name": owner_name(o), "key": keys[o], "tokens": layout.tokens_of(o),
                 "text": text_digest(layout, o)}
                for o in dict.fromkeys(s.owner for s in layout.segments)]  # document order

    def remote_manifest(self, schema: Schema, layout: Layout, keys: dict[ModPath, str]) -> tuple[str, dict]:
        """The schema's manifest in the remote store: (relative path, content)."""
        from ..core.sharing import manifest_entry

        return manifest_entry(schema.name, self.variant, self.codec, self.manifest_modules(layout, keys))

    def why_missing(self, schema: Schema) -> str | None:
        """When a schema's cache exists only for other models or settings, say how it differs."""
        store = self.runtime.store
        data = manifest.load(manifest.manifest_path(store.root, schema.name, schema.path), store.boundary)
        if not data or self.variant.id in data["variants"]:
            return None
        diffs = sorted({d for v in data["variants"].values() for d in self.variant.differences(v)})
        return ", ".join(diffs) if diffs else None

    def stale(self, schema: Schema, layout: Layout, keys: dict[ModPath, str], owners: list[ModPath]) -> Staleness:
        """Which of ``owners`` are not cached, and why, from the schema's manifest: their own text
        changed (or they are new) since the last compile with these settings, or they come after
        one that did, or they were removed, or nothing was compiled yet."""
        missing = [o for o in owners if not self.runtime.store.exists(self.path(keys[o]))]
        tokens = sum(layout.tokens_of(o) for o in missing)
        if not missing:
            return Staleness((), (), 0, None)
        names = tuple(owner_name(o) for o in missing)
        data = manifest.load(manifest.manifest_path(self.runtime.store.root, schema.name, schema.path),
                             self.runtime.store.boundary)
        entry = (data or {}).get("variants", {}).get(self.variant.id)
        if not isinstance(entry, dict):
            return Staleness(names, (), tokens, f"not compiled yet{' with these settings' if data else ''}: "
                                                f"computing {_count(len(missing), 'module')} ({tokens} tokens)")
        before = {m.get("name"): m.get("text") for m in entry.get("modules") or [] if isinstance(m, dict)}
        changed = [o for o in missing if before.get(owner_name(o)) != text_digest(layout, o)]
        rest = len(missing) - len(changed)
        if not changed:
            return Staleness(names, (), tokens, f"{_listed(names)} not in the cache (removed since): "
                                                f"computing {'it' if len(missing) == 1 else 'them'}")
        what = ", ".join(_label(o) + (" changed" if owner_name(o) in before else " is new") for o in changed)
        it = "it" if len(changed) == 1 else "them"
        tail = f" and {_count(rest, 'module')} after {it}" if rest else ""
        verb = "recompiling" if any(owner_name(o) in before for o in changed) else "computing"
        return Staleness(names, tuple(owner_name(o) for o in changed), tokens, f"{what}: {verb} {it}{tail}")


def text_digest(layout: Layout, owner: ModPath) -> str:
    """A module's own text (its tokens, wherever they sit), as the manifest records it: a module
    whose key changed but whose text did not was recomputed for what comes before it."""
    h = hashlib.sha256()
    for seg in layout.segments_of(owner):
        h.update(np.asarray(seg.tokens, dtype="<i4").tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def _label(owner: ModPath) -> str:
    return "/".join(owner) if owner else "the schema's own text"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _listed(names) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} and {len(names) - 3} more"

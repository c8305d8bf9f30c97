#!/usr/bin/env python3
"""Figure: token counts of a schema written with role tags inside modules (the Prompt Cache reference
implementation's way) beside the same content written with role tags directly in <schema>, as `pc`
lays them out for a model (default: SmolLM2-135M-Instruct). Per owner (the schema's own tokens, each
module's), the layout's positions, and the prompt of one question with every module and without the
module holding the system instruction. Computes no state: it reads `pc inspect`'s layout and `Session.prompt`'s parts.

    python experiments/nested_roles_tokens.py [--model PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import promptcache_cli as pc  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "schemas" / "docs"
RULES = "You answer questions about the licenses the user gives, quoting them."
QUESTION = "Which license asks to keep the copyright notice?"


def excerpt(name: str, n: int = 1200) -> str:
    text = (DOCS / name).read_text(encoding="utf-8")[:n]
    return text[: text.rfind("\n")].replace("&", "&amp;").replace("<", "&lt;")


def schemas(folder: Path) -> dict[str, Path]:
    bsd, mpl = excerpt("BSD.txt"), excerpt("MPL-2.0.txt")
    top = f"""<schema name="top">
  <system><module name="rules">{RULES}</module></system>
  <user>
    <module name="bsd">{bsd}</module>
    <module name="mpl">{mpl}</module>
  </user>
</schema>"""
    nested = f"""<schema name="nested">
  <module name="rules"><system>{RULES}</system></module>
  <module name="docs"><user>
    <module name="bsd">{bsd}</module>
    <module name="mpl">{mpl}</module>
  </user></module>
</schema>"""
    out = {}
    for name, text in (("top-level roles", top), ("roles inside modules", nested)):
        out[name] = folder / f"{name.split()[0]}.xml"
        out[name].write_text(text, encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, pc.open_session(args.model, cache_dir=Path(tmp) / "cache",
                                                               mode="modular") as sess:
        rows = []
        for label, path in schemas(Path(tmp)).items():
            layout = pc.inspect_schema(path, model=sess.model_path)
            every = sess.prompt(pc.Request(path, QUESTION))
            per_owner: dict[str, int] = {}  # tokens each module file stores
            for part in every.parts:
                if part.kind == "cached":
                    name = part.module.rsplit("/", 1)[-1]
                    per_owner[name] = per_owner.get(name, 0) + len(part.tokens)
            docs = ["bsd", "mpl"] if "top" in path.name else ["docs"]
            one = sess.prompt(pc.Request(path, QUESTION, modules=docs))  # the system turn's module left out
            rows.append((label, layout.length, per_owner, len(every.tokens), len(every.parts[-1].tokens),
                         len(one.tokens)))
        print(f"model: {sess.model_name}\n")
        print("| schema | positions | (schema) | rules | docs | bsd | mpl | prompt, every module | of which "
              "question turn | prompt, rules left out |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, length, per_owner, every, q, one in rows:
            cells = [str(per_owner.get(k, "")) for k in ("(schema)", "rules", "docs", "bsd", "mpl")]
            print(f"| {label} | {length} | " + " | ".join(cells) + f" | {every} | {q} | {one} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Figure: the Prompt Cache reference implementation's own schemas and prompt files, run through `pc`
as a user arriving from it would (docs/pml-reference.md, "The reference's own files"). Reads a
checkout of https://github.com/yale-sys/prompt-cache (nothing of it is copied into this project):
its eleven schemas (`examples/*.xml`, `benchmark/schema/test/schema_*.xml`) are laid out
(`pc inspect`), and its prompt files (`benchmark/schema/test/prompt_*.xml` and the README's `<prompt>`
examples) are read and their imports selected against each schema of the same name (`pc ask`
without generating). Two adaptations show what stands between the remaining files and `pc`: each
module's text of `code_generation_game.xml` in CDATA, and the feature tour's `param-name` with
`length="6"`. `--ask N` also generates N tokens for every prompt that selects (slow: the game
schema is 5,435 positions). Prints a Markdown table; exit 0 whatever the outcome.

    git clone https://github.com/yale-sys/prompt-cache /tmp/prompt-cache
    python experiments/reference_files.py /tmp/prompt-cache [--model PATH] [--ask 16]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import promptcache_cli as pc  # noqa: E402


def schemas(ref: Path) -> list[Path]:
    return sorted(ref.glob("examples/*.xml")) + sorted(ref.glob("benchmark/schema/test/schema_*.xml"))


def adapted(ref: Path, folder: Path) -> list[Path]:
    """The two files `pc` refuses, changed as docs/pml-reference.md says."""
    out = []
    game = ref / "examples" / "code_generation_game.xml"
    if game.is_file():
        text = re.sub(r'(<module name="[^"]+">)(.*?)(</module>)', r"\1<![CDATA[\2]]>\3",
                      game.read_text(encoding="utf-8"), flags=re.S)
        out.append(folder / "code_generation_game+cdata.xml")
        out[-1].write_text(text, encoding="utf-8")
    tour = ref / "benchmark" / "schema" / "test" / "schema_code_generation.xml"
    if tour.is_file():
        text = tour.read_text(encoding="utf-8").replace('name="param-name" length="5"', 'name="param-name" length="6"')
        out.append(folder / "schema_code_generation+length6.xml")
        out[-1].write_text(text, encoding="utf-8")
    return out


def prompts(ref: Path, folder: Path) -> list[tuple[str, Path]]:
    out = [(p.name, p) for p in sorted(ref.glob("benchmark/schema/test/prompt_*.xml"))]
    readme = ref / "README.md"
    if readme.is_file():
        blocks = re.findall(r"```xml\s*(<prompt\b.*?</prompt>)\s*```", readme.read_text(encoding="utf-8"), flags=re.S)
        for i, block in enumerate(blocks, 1):
            path = folder / f"readme_prompt_{i}.xml"
            path.write_text(block + "\n", encoding="utf-8")
            out.append((f"README prompt {i}", path))
    return out


def schema_name(path: Path) -> str | None:
    m = re.search(r"<schema\s+name=['\"]([^'\"]+)", path.read_text(encoding="utf-8"))
    return m.group(1) if m else None


def prompt_schema(path: Path) -> str | None:
    m = re.search(r"<prompt\s+schema=['\"]([^'\"]+)", path.read_text(encoding="utf-8"))
    return m.group(1) if m else None


def short(err: Exception, *folders: Path) -> str:
    text = str(err)
    for folder in folders:
        text = text.replace(f"{folder}/", "")
    return text.replace("|", "\\|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", type=Path, help="a checkout of yale-sys/prompt-cache")
    ap.add_argument("--model", default=None)
    ap.add_argument("--ask", type=int, default=0, metavar="N", help="also generate N tokens per selecting prompt")
    args = ap.parse_args()
    ref = args.reference.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = schemas(ref)
        if not files:
            sys.exit(f"no reference schemas under {ref}")
        model = pc.resolve_model(args.model)
        print(f"model: {Path(model).name}\n")
        print("| schema | `pc inspect` |\n| --- | --- |")
        laid_out = {}
        for path in files + adapted(ref, folder):
            label = path.relative_to(ref) if path.is_relative_to(ref) else f"{path.name} (adapted)"
            try:
                layout = pc.inspect_schema(path, model=model)
            except pc.PcError as e:
                print(f"| `{label}` | refused: {short(e, ref, folder)} |")
                continue
            laid_out[path] = label
            print(f"| `{label}` | {layout.length} positions |")
        print(f"\n{sum(1 for p in laid_out if p.is_relative_to(ref))} of {len(files)} reference schemas lay out "
              "unchanged.\n")
        print("| prompt | schema | selection | answer |\n| --- | --- | --- | --- |")
        session = pc.open_session(model, cache_dir=folder / "cache", mode="modular") if args.ask else None
        try:
            for label, ppath in prompts(ref, folder):
                targets = [p for p in laid_out if schema_name(p) == prompt_schema(ppath)]
                if not targets:
                    print(f"| {label} | no schema named `{prompt_schema(ppath)}` lays out | | |")
                for spath in targets:
                    try:
                        request = pc.request_from_prompt(ppath, schema=pc.load_schema(spath))
                        pc.select(pc.load_schema(spath), request)
                    except pc.PcError as e:
                        print(f"| {label} | `{laid_out[spath]}` | refused: {short(e, ref, folder)} | |")
                        continue
                    answer = ""
                    if session is not None:
                        from dataclasses import replace
                        out = session.ask(replace(request, max_tokens=args.ask))
                        answer = " ".join(out.text.split())[:60].replace("|", "\\|")
                    question = "no question" if not request.question.strip() else "question"
                    print(f"| {label} | `{laid_out[spath]}` | selects ({question}) | {answer} |")
        finally:
            if session is not None:
                session.close()


if __name__ == "__main__":
    main()

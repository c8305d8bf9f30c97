from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from promptcache_cli.llama.model_file import default_model_path

from .support.model_factory import test_model, test_models_dir  # noqa: F401  (fixtures: random-weight models)

LICENSES = Path(__file__).resolve().parent.parent / "schemas" / "docs"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test touches the user's cache directory."""
    monkeypatch.setenv("PC_CACHE_DIR", str(tmp_path / "pc-cache"))
    monkeypatch.delenv("PC_MODEL", raising=False)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


def write_schema(folder: Path, xml: str, files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    path = folder / "schema.xml"
    path.write_text(textwrap.dedent(xml).strip() + "\n", encoding="utf-8")
    return path


def license_excerpt(name: str, n_chars: int) -> str:
    """The first n_chars of a real license text shipped in schemas/docs, cut at a line end."""
    text = (LICENSES / name).read_text(encoding="utf-8")[:n_chars]
    return text[: text.rfind("\n")] if "\n" in text else text


@pytest.fixture
def cache(template, tmp_path: Path) -> Path:
    """A private copy of the requesting test module's compiled ``template`` cache, where
    PC_CACHE_DIR points (see ``_isolated_cache``)."""
    dst = Path(os.environ["PC_CACHE_DIR"])
    assert dst.is_relative_to(tmp_path)
    shutil.copytree(template.cache, dst)
    return dst

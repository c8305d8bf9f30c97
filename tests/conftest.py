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
    monkeypatch.delenv("PC_REMOTE", raising=False)  # no test reaches a store it did not start
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # nor the instance metadata service


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`) on loopback for the whole session, stopped at its end."""
    from .support import s3_server as weed

    server = weed.start(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()


@pytest.fixture
def remote(s3_server, request, monkeypatch, tmp_path) -> str:
    """A fresh prefix in the test bucket, ``s3://bucket/<test>``, with the AWS variables pointing
    at the server (for this process and the `pc` processes it starts); no AWS file of the user's
    is read."""
    import re
    import uuid

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]
    return f"s3://{s3_server.bucket}/{slug}-{uuid.uuid4().hex[:8]}"

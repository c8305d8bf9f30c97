"""Random-weight test models (promptcache_cli/benchmarks/random_gguf.py), built once per test session.

``make_test_model(arch, out_dir, **kw)`` writes (or reuses) ``out_dir/<arch>[-<kw>].gguf``;
``kw`` are :func:`random_gguf.write_model`'s (layers, width, realistic, seed). The fixture
``test_model`` is that path for the architecture its test is parametrized with (default llama):

    from .model_factory import test_model, test_models_dir  # noqa: F401  (fixtures)

(In a module whose tests take ``test_model`` as an argument, import it under another name,
``test_model as _test_model``, to keep ruff's F811 quiet: the fixture's name is fixed.)

    @pytest.mark.parametrize("test_model", ["mamba", "lfm2"], indirect=True)
    def test_something(test_model): ...

    @pytest.mark.parametrize("test_model", [{"arch": "lfm2", "layers": 6}], indirect=True)
    def test_deeper(test_model): ...
"""

from __future__ import annotations

from pathlib import Path

import pytest

from promptcache_cli.benchmarks import random_gguf

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

KINDS = random_gguf.KINDS  # arch -> what llama_backend.Model.kind reports
ARCHS = random_gguf.ARCHS


def model_file_name(arch: str, **kw) -> str:
    return "-".join([arch, *(f"{key}{kw[key]}" for key in sorted(kw))]) + ".gguf"


def make_test_model(arch: str, out_dir: Path, **kw) -> Path:
    """The path of a random ``arch`` model with options ``kw`` in ``out_dir``, written if missing."""
    path = Path(out_dir) / model_file_name(arch, **kw)
    if not path.is_file():
        random_gguf.write_model(arch, path, **kw)
    return path


@pytest.fixture(scope="session", name="test_models_dir")
def test_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder per session for the built models."""
    return tmp_path_factory.mktemp("test-models")


@pytest.fixture(scope="session", name="test_model")
def test_model(request: pytest.FixtureRequest, test_models_dir: Path) -> Path:
    """A random-weight model: parametrize indirectly with an arch name or a dict
    ``{"arch": ..., **write_model options}``; unparametrized it is the tiny llama."""
    spec = getattr(request, "param", "llama")
    options = {"arch": spec} if isinstance(spec, str) else dict(spec)
    return make_test_model(options.pop("arch"), test_models_dir, **options)

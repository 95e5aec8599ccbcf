"""Shared by the bench tests: load a bench script (or another test's helper module) from its file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_file(name: str, path: Path) -> Any:
    """The module in ``path``, registered as ``name`` (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def load() -> Callable[[str, Path], Any]:
    return load_file


@pytest.fixture()
def tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline, private environment (caches under tmp_path, float32) and a tiny random Llama
    saved like a real model folder (``tests/runtime/conftest.py``)."""
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ETHOS_DTYPE": "float32",
                 "ETHOS_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(k, v)
    tiny = load_file("ethos_tests_runtime_conftest", ROOT / "tests" / "runtime" / "conftest.py")
    return tiny.build_tiny_model(tmp_path / "tiny")

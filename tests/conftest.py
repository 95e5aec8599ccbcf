"""Shared test set-up: the golden-file loader and the ``--update-goldens`` flag.

A golden file holds the exact expected output (a plan's JSON, a rendered diagnostic). Run
``pytest --update-goldens`` to rewrite them after a deliberate change; review the diff like code.

The suite never writes into the user's caches: before anything imports ethos, huggingface_hub or
matplotlib, the ethos cache, the Hugging Face home (hub and ``datasets`` caches) and matplotlib's
config folder are pointed at one test cache, ``$ETHOS_TEST_CACHE`` or
``<system temp dir>/ethos-test-cache-<user>``. It outlives the run on purpose, so the default
model is converted once per machine, not once per run; delete it freely.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path

import pytest


def test_cache_root() -> Path:
    """The folder every cache of the test run lives under."""
    env = os.environ.get("ETHOS_TEST_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"ethos-test-cache-{getpass.getuser()}"


test_cache_root.__test__ = False  # a helper, not a test
_ROOT = test_cache_root()
os.environ["ETHOS_CACHE"] = str(_ROOT / "ethos")
os.environ["HF_HOME"] = str(_ROOT / "hf")
for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE"):
    os.environ.pop(_var, None)
os.environ["MPLCONFIGDIR"] = str(_ROOT / "matplotlib")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", help="rewrite golden files from the current output")


@pytest.fixture
def golden(request):
    update = request.config.getoption("--update-goldens")

    def check(path: Path, actual: str) -> None:
        if update or not path.exists():
            if not update:
                pytest.fail(f"golden file {path} is missing; run pytest --update-goldens and review it")
            path.write_text(actual, encoding="utf-8")
            return
        expected = path.read_text(encoding="utf-8")
        assert actual == expected, f"output differs from golden {path.name} (pytest --update-goldens to accept)"

    return check

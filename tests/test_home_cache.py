"""The test suite writes its caches under a temporary test cache (tests/conftest.py), never into the
user's ``~/.cache/ethos`` or Hugging Face home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NESTED = "ETHOS_HOME_CHECK_NESTED"


def test_default_caches_are_the_test_cache_and_it_is_written_to() -> None:
    from ethos.compiler.compile import plan_for_concepts
    from ethos.runtime.featurize import featurize
    from ethos.runtime.data import load_pairs
    from ethos.runtime.model import cache_root

    root = cache_root().parent  # tests/conftest.py: <test cache>/ethos
    assert cache_root().name == "ethos" and Path(os.environ["HF_HOME"]) == root / "hf"
    assert not cache_root().resolve().is_relative_to(Path.home().resolve())
    if os.environ.get("ETHOS_TEST_CACHE"):
        assert root == Path(os.environ["ETHOS_TEST_CACHE"])
    plan = plan_for_concepts(["apology"]).plan
    assert plan is not None
    table = featurize(plan, load_pairs(None, limit=3), progress=False)  # no cache_dir: the default cache
    assert len(table) == 3
    assert any((root / "ethos" / "scores").rglob("*")), "featurize wrote no score shard to the default cache"


@pytest.mark.timeout(900)
def test_the_suite_leaves_home_untouched(tmp_path: Path) -> None:
    """Part of the suite, run with HOME at an empty folder and no cache variables set, writes
    nothing under HOME (the ethos cache, the hub and datasets caches, matplotlib's config)."""
    if os.environ.get(NESTED):
        pytest.skip("already nested")
    home = tmp_path / "home"
    home.mkdir()
    drop = ("ETHOS_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "XDG_", "MPLCONFIGDIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HOME=str(home), ETHOS_TEST_CACHE=str(tmp_path / "test-cache"), HF_HUB_OFFLINE="1", **{NESTED: "1"})
    tests = ["tests/test_home_cache.py", "tests/runtime/test_lenses.py", "tests/runtime/test_data.py",
             "tests/runtime/test_report.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
    assert any((tmp_path / "test-cache" / "ethos").rglob("*")), "the nested run wrote nothing to its test cache"

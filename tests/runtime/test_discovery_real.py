"""Discovery on the real default model and SAE: the planted-phrase tests on a small subset of the
embedded hh-rlhf sample (``bench/discovery.py`` runs the same experiment in full).

One forward pass over the first 80 pairs, each reply with and without the phrase; then a 70%/10%
planting (a top-3 candidate must peak on the phrase in its labels), a 40%/40% control (none may)
and 100 random side swaps of the planted data (fewer than 5 may report anything at q < 0.05).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "discovery.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ethos_bench_discovery", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fires_on_phrase_reads_the_marked_peak(bench):
    assert bench.fires_on_phrase("…the best Hope« this» helps.")
    assert bench.fires_on_phrase("Sure. Hope this helps«.»")
    assert not bench.fires_on_phrase("…just in case«.» Hope this helps.")  # peak before the phrase
    assert not bench.fires_on_phrase("You're welcome«!» Hope you have a good day")  # words, not the phrase
    assert not bench.fires_on_phrase("no marked peak: Hope this helps.")


@pytest.mark.timeout(1800)
def test_planted_phrase_discovery_on_the_real_default_sae(bench, tmp_path):
    # the default model is converted once into the default ethos cache (as in test_featurize)
    res = bench.experiment(80, planted_seeds=1, control_seeds=1, null_seeds=100, cache_dir=str(tmp_path / "c"))
    planted, control, null = res["planted"][0], res["control"][0], res["null"]
    assert planted["top3_has_phrase"], planted["top3"]
    assert not control["top3_has_phrase"], control["top3"]
    assert null["runs_with_any_q_below_0.05"] < 5, null
    # the planted data has far more surviving latents than the control: the phrase moves many
    assert planted["survivors"] > 5 * max(1, control["survivors"])

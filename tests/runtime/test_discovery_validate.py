"""Readable labels and held-out validation on the real default model and SAE: issue 15's
planted-phrase tests on a small subset (``bench/discovery.py --validate F`` runs them in full;
docs/audit.md has the full-size figures).

The first 80 pairs of the embedded hh-rlhf sample, " Hope this helps." planted, half of the pairs
held out of discovery (seeded by pair): on a 70%/10% planting the top candidate's label contains
"hope" or "helps" and its held-out q < 0.01; on 40%/40% plantings no candidate replicates on the
held-out pairs at discovery's default level (where 80 pairs leave no candidate at all), and at a
lenient q < 0.5 (which leaves some) no candidate built on the phrase replicates — with the k = 64
default SAE a few real hh-rlhf differences (labels such as "really", "great") can. The
pooled latents are those of ``tests/runtime/test_discovery_real.py`` (same
pairs, same phrase): ``bench.doubled_activations`` caches them under the ethos cache, so after
that test this one skips the forward pass.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "discovery.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ethos_bench_discovery_validate", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(1800)
def test_planted_phrase_is_labelled_and_replicates_and_the_control_does_not(bench, tmp_path):
    res = bench.experiment(80, planted_seeds=1, control_seeds=1, null_seeds=0, validate=0.5,
                           cache_dir=str(tmp_path / "c"))
    lenient = bench.experiment(80, planted_seeds=0, control_seeds=3, null_seeds=0, validate=0.5, q_max=0.5,
                               cache_dir=str(tmp_path / "c"))
    planted, control = res["planted"][0], res["control"][0]
    val = planted["validation"]
    assert (val["discovery_pairs"], val["heldout_pairs"]) == (40, 40)
    # the top candidate is named by a contrastive n-gram of the phrase, shown with its evidence
    top = planted["top3"][0]
    assert planted["top_label_names_phrase"], top["label"]
    best = top["label"]["ngrams"][0]
    assert best["top"] >= 3 and best["top"] / top["label"]["top_replies"] > best["background"] / top["label"]["background_replies"]
    assert "hope" in top["name"] or "helps" in top["name"]
    # ... and replicates on the 40 pairs discovery never saw
    assert val["top_heldout"]["q"] < 0.01 and val["top_heldout"]["d"] > 0 and val["top_replicated"] is True
    # the 40%/40% control: nothing replicates at the default level
    assert control["validation"]["replicated"] == 0, control["top3"]
    assert not control["top3_has_phrase"]
    # lenient discovery (q < 0.5) finds candidates in the controls; some are real chosen/rejected
    # differences of hh-rlhf that may replicate, but none that replicates is built on the phrase,
    # which the controls put on both sides equally
    assert sum(r["candidates"] for r in lenient["control"]) >= 1
    assert all(r["validation"]["replicated_with_phrase"] == 0 for r in lenient["control"]), \
        [r["validation"] for r in lenient["control"]]

"""Held-out validation of discovered candidates and the length adjustment of d
(ethos.runtime.stats.holdout, stats.marginal.covariate_adjusted_d)."""

from __future__ import annotations

import numpy as np
import pytest

from ethos.runtime.stats import covariate_adjusted_d, holdout_split, replicate


def test_holdout_split_is_seeded_and_holds_out_the_fraction():
    a = holdout_split(1000, 0.3, seed=4)
    assert a.dtype == bool and a.sum() == 300
    assert np.array_equal(a, holdout_split(1000, 0.3, seed=4))
    assert not np.array_equal(a, holdout_split(1000, 0.3, seed=5))
    assert holdout_split(7, 0.5, seed=0).sum() == 4  # round(3.5) = 4 (round half to even)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            holdout_split(10, bad)


def _sides(rng, n, d, on_c=0.0, on_r=0.0, cols=()):
    c = np.where(rng.random((n, d)) < 0.05, rng.lognormal(0, 1, (n, d)), 0.0)
    r = np.where(rng.random((n, d)) < 0.05, rng.lognormal(0, 1, (n, d)), 0.0)
    pc, pr = rng.random(n) < on_c, rng.random(n) < on_r
    for j in cols:
        c[pc, j] += 2.0
        r[pr, j] += 2.0
    return c, r


def test_replicate_a_real_effect_and_not_noise_or_a_flip():
    rng = np.random.default_rng(0)
    c, r = _sides(rng, 200, 20, on_c=0.5, on_r=0.05, cols=(3, 4))
    out = replicate([[3, 4], [10], [3]], [0.8, 0.5, -0.4], c, r, q_max=0.05, n_boot=200)
    real, noise, flipped = out
    assert real["replicated"] is True and real["q"] < 1e-6 and real["d"] > 0 and real["n"] == 200
    assert real["d_ci"][0] < real["d"] < real["d_ci"][1]
    assert noise["replicated"] is False and noise["q"] >= 0.05
    # a real effect whose discovery sign was the other one does not replicate, with a note
    assert flipped["replicated"] is False and flipped["q"] < 0.05 and "opposite sign" in flipped["note"]
    # BH over the candidates tested: q ≥ p, and the family is the three of them
    assert all(o["q"] >= o["p"] for o in out)


def test_replicate_with_too_few_held_out_pairs_says_so():
    rng = np.random.default_rng(1)
    c, r = _sides(rng, 6, 5)
    out = replicate([[0], [1]], [0.3, 0.3], c, r)
    assert [o["replicated"] for o in out] == [None, None] and "too few held-out pairs" in out[0]["note"]
    assert replicate([], [], c, r) == []


def test_null_candidates_replicate_in_about_five_percent_of_seeds():
    # candidates picked on independent data have no effect on the held-out pairs: a replication
    # (q < 0.05 with the discovery sign) happens in ≤ 2.5% of tests per candidate on average
    hits = 0
    for seed in range(100):
        rng = np.random.default_rng(100 + seed)
        c, r = _sides(rng, 120, 6)
        out = replicate([[0], [1], [2]], [1.0, -1.0, 1.0], c, r, n_boot=0)
        hits += any(o["replicated"] for o in out)
    assert hits <= 5, hits  # observed: 1 of 100


def test_covariate_adjusted_d_explains_a_length_driven_concept():
    rng = np.random.default_rng(2)
    n = 4000
    length_delta = rng.normal(10, 40, n)  # chosen replies ~10 tokens longer
    driven = 0.05 * length_delta + rng.normal(0, 0.5, n)  # a count that grows with length, nothing else
    own = rng.normal(0.3, 1.0, n)  # an effect of its own, independent of length
    mixed = 0.05 * length_delta + rng.normal(0.5, 0.5, n)  # half length, half its own
    d_adj, explained = covariate_adjusted_d(np.column_stack([driven, own, mixed]), length_delta)
    assert abs(d_adj[0]) < 0.05 and explained[0] == pytest.approx(1.0, abs=0.1)
    assert explained[1] == pytest.approx(0.0, abs=0.1) and d_adj[1] == pytest.approx(0.3, abs=0.05)
    assert explained[2] == pytest.approx(0.5, abs=0.1)
    # weights of 1 change nothing; a constant covariate explains nothing (NaN)
    np.testing.assert_allclose(covariate_adjusted_d(np.column_stack([driven, own]), length_delta, np.ones(n))[1],
                               explained[:2])
    assert np.isnan(covariate_adjusted_d(own[:, None], np.ones(n))[1]).all()

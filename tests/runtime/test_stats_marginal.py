"""The marginal statistics (ethos.runtime.stats.marginal) against scipy/statsmodels: the exact sign
test, Benjamini–Hochberg, Cohen's d with its bootstrap CI, split-half stability, weights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ethos.runtime.stats import bh, bootstrap_d_ci, marginal, sign_test, split_half


def test_sign_test_matches_scipy_binomtest():
    rng = np.random.default_rng(0)
    m = rng.integers(1, 300, 200)
    k = rng.integers(0, m + 1)
    got = sign_test(k, m - k)
    want = [stats.binomtest(int(a), int(b)).pvalue for a, b in zip(k, m)]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert np.isnan(sign_test(np.array([0]), np.array([0])))[0]


def test_bh_matches_statsmodels_and_skips_nan():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(1).random(50) ** 3
    np.testing.assert_allclose(bh(p), multipletests(p, method="fdr_bh")[1])
    q = bh(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(q[1]) and np.allclose(q[[0, 2]], multipletests([0.01, 0.04], method="fdr_bh")[1])


def test_marginal_statistics():
    rng = np.random.default_rng(2)
    delta = np.column_stack([rng.normal(0.5, 1, 300), rng.normal(0, 1, 300), np.r_[np.zeros(290), np.ones(10)]])
    mg = marginal(delta, n_boot=1000, seed=0)
    np.testing.assert_allclose(mg.mean_delta, delta.mean(axis=0))
    np.testing.assert_allclose(mg.d, delta.mean(axis=0) / delta.std(axis=0, ddof=1))
    pos, neg = (delta > 0).sum(axis=0), (delta < 0).sum(axis=0)
    np.testing.assert_allclose(mg.win_rate, pos / (pos + neg))
    assert mg.p[0] == pytest.approx(stats.binomtest(int(pos[0]), int(pos[0] + neg[0])).pvalue)
    assert mg.d_lo[0] < mg.d[0] < mg.d_hi[0] and mg.d_lo[0] > 0
    assert mg.d_lo[1] < 0 < mg.d_hi[1]
    assert mg.split_half_stable[0] and mg.split_half_agreement[0] == 1.0
    assert mg.win_rate[2] == 1.0 and mg.p[2] == pytest.approx(2 * 0.5**10)
    # Deterministic under a seed.
    again = marginal(delta, n_boot=1000, seed=0)
    assert np.array_equal(again.d_lo, mg.d_lo) and np.array_equal(again.split_half_agreement, mg.split_half_agreement)


def test_bootstrap_ci_agrees_with_a_plain_resampling_loop():
    rng = np.random.default_rng(3)
    delta = rng.normal(0.3, 1, (200, 1))
    lo, hi = bootstrap_d_ci(delta, n_boot=4000, seed=5)
    idx = np.random.default_rng(6).integers(0, 200, (4000, 200))
    d = np.array([delta[i, 0].mean() / delta[i, 0].std(ddof=1) for i in idx])
    assert lo[0] == pytest.approx(np.quantile(d, 0.025), abs=0.02)
    assert hi[0] == pytest.approx(np.quantile(d, 0.975), abs=0.02)


def test_split_half_flags_an_unstable_effect():
    rng = np.random.default_rng(10)
    delta = np.column_stack([rng.normal(0.5, 1, 200), rng.normal(0.0, 1, 200), np.zeros(200)])
    stable, agreement = split_half(delta, splits=200, seed=0)
    assert stable[0] and agreement[0] == 1.0
    assert agreement[1] < 0.8  # a null effect keeps its sign on both halves only by chance
    assert not stable[2] and agreement[2] == 0.0


def test_weighted_marginal_reduces_to_unweighted_with_unit_weights():
    delta = np.random.default_rng(4).normal(0.2, 1, (150, 2))
    a, b = marginal(delta, n_boot=200), marginal(delta, np.ones(150), n_boot=200)
    np.testing.assert_allclose(a.d, b.d)
    np.testing.assert_allclose(a.win_rate, b.win_rate)
    assert b.test == "weighted-sign-normal" and b.p[0] < 0.05

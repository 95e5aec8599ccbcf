"""The joint Bradley–Terry fit (ethos.runtime.stats.joint) against statsmodels: SEs, weights
(frequency and importance), the reweighting the plan step relies on, large margins, separation,
collinear and constant concepts; correlated concepts."""

from __future__ import annotations

import numpy as np
import pytest

from ethos.runtime.stats import SATURATED, correlated_pairs, joint


def bt_pairs(n: int, alpha: np.ndarray, seed: int = 0) -> np.ndarray:
    """z (chosen − rejected) of n pairs drawn from a Bradley–Terry model with coefficients alpha."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(alpha)))
    y = rng.random(n) < 1 / (1 + np.exp(-x @ alpha))
    return np.where(y[:, None], x, -x)


def test_joint_matches_symmetrised_statsmodels_fit_with_sqrt2_corrected_se():
    import statsmodels.api as sm

    z = bt_pairs(600, np.array([1.0, -0.5, 0.0]), seed=1)
    fit = joint(z)
    x = np.vstack([z, -z])
    y = np.r_[np.ones(len(z)), np.zeros(len(z))]
    glm = sm.GLM(y, x, family=sm.families.Binomial()).fit()
    np.testing.assert_allclose(fit.alpha, glm.params, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fit.se, glm.bse * np.sqrt(2), rtol=1e-5)
    assert fit.converged and fit.lo[0] > 0 > fit.hi[1] and fit.lo[2] < 0 < fit.hi[2]
    assert fit.share.sum() == pytest.approx(1.0) and fit.share[0] > fit.share[1] > fit.share[2]


def test_joint_recovers_the_true_coefficients():
    alpha = np.array([0.8, -0.4])
    fit = joint(bt_pairs(5000, alpha, seed=2))
    assert np.all((fit.lo < alpha) & (alpha < fit.hi))


def test_joint_weights_match_statsmodels_and_frequency_duplication():
    import statsmodels.api as sm

    z = bt_pairs(400, np.array([0.7, 0.3]), seed=3)
    w = np.random.default_rng(3).integers(1, 4, len(z)).astype(float)
    fit = joint(z, w)
    glm = sm.GLM(np.r_[np.ones(400), np.zeros(400)], np.vstack([z, -z]), family=sm.families.Binomial(),
                 var_weights=np.r_[w, w]).fit()
    np.testing.assert_allclose(fit.alpha, glm.params, rtol=1e-6)
    dup = joint(np.repeat(z, w.astype(int), axis=0))
    np.testing.assert_allclose(fit.alpha, dup.alpha, rtol=1e-6)
    # Frequency weights: the model covariance equals the duplicated data's.
    np.testing.assert_allclose(joint(z, w, cov="model").se, dup.se, rtol=1e-6)
    # Importance weights (default with weights): sandwich, invariant to their scale.
    assert fit.cov == "sandwich"
    np.testing.assert_allclose(joint(z, 10 * w).se, fit.se, rtol=1e-6)
    assert fit.ess == pytest.approx(w.sum() ** 2 / (w**2).sum())


def test_reweighting_scales_alpha_as_the_plan_step_needs():
    """Importance weights that make chosen-favouring pairs less common shrink α, with CIs."""
    z = bt_pairs(3000, np.array([1.0, 0.5]), seed=4)
    before = joint(z)
    m = z @ before.alpha
    # Weights w_i ∝ σ(k·m_i)/σ(m_i) turn the fitted preference σ(m) into σ(k·m) in expectation.
    k = 0.5
    w = (1 / (1 + np.exp(-k * m))) / (1 / (1 + np.exp(-m)))
    after = joint(z, w)
    np.testing.assert_allclose(after.alpha, k * before.alpha, rtol=0.2)
    assert np.all(after.lo < k * before.alpha) and np.all(k * before.alpha < after.hi)


def test_joint_large_margins_are_not_mistaken_for_separation():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2000, 2))
    x[:5, 0] *= 40  # outliers: fitted margins far beyond the early-stop threshold
    y = rng.random(2000) < 1 / (1 + np.exp(-x @ np.array([3.0, 0.5])))
    fit = joint(np.where(y[:, None], x, -x))
    assert fit.converged and not any(fit.notes) and np.abs(x @ fit.alpha).max() > SATURATED
    assert fit.lo[0] < 3.0 < fit.hi[0]


def test_joint_degenerate_cases_give_notes_not_exceptions():
    rng = np.random.default_rng(5)
    base = bt_pairs(300, np.array([0.8]), seed=5)[:, 0]
    rare = np.where(rng.random(300) < 0.03, rng.lognormal(size=300), 0.0)  # Δ > 0 wherever nonzero
    z = np.column_stack([base, np.zeros(300), 2 * base, rare])
    fit = joint(z, names=["a", "zero", "double", "rare"])
    assert np.isfinite(fit.alpha[0])
    assert np.isnan(fit.alpha[1:]).all()
    assert "no difference" in fit.notes[1]
    assert "linearly dependent on a" in fit.notes[2]
    assert "separation" in fit.notes[3]
    # Fewer than MIN_PAIRS pairs: nothing fitted.
    few = joint(z[:5])
    assert np.isnan(few.alpha).all() and "too few pairs" in few.note
    # Complete separation: every pair decided by one concept.
    sep = joint(np.abs(base)[:, None] + 0.1, names=["s"])
    assert np.isnan(sep.alpha[0]) and "perfect separation" in sep.notes[0]


def test_correlated_pairs_are_flagged():
    rng = np.random.default_rng(6)
    a = rng.normal(size=500)
    z = np.column_stack([a, a + 0.3 * rng.normal(size=500), rng.normal(size=500), np.zeros(500)])
    got = correlated_pairs(z, ["a", "b", "c", "zero"])
    assert [(x["a"], x["b"]) for x in got] == [("a", "b")] and got[0]["r"] > 0.9


def test_firth_is_the_mle_on_ample_data_and_finite_under_separation():
    from ethos.runtime.stats.joint import firth

    z = bt_pairs(4000, np.array([0.8, -0.4]), seed=3)
    mle = joint(z)
    a, se, ok = firth(z)
    assert ok and np.allclose(a, mle.alpha, atol=0.01) and np.allclose(se, mle.se, rtol=0.05)
    sep = np.abs(bt_pairs(60, np.array([0.5]), seed=4)) + 0.1  # every pair decided by the one concept
    assert np.isnan(joint(sep).alpha[0])
    a, se, ok = firth(sep)
    assert ok and 0 < a[0] < 50 and np.isfinite(se[0])
    # with the margin offset of a rule (o = (1 − k)·α·z) the penalised fit finds k·α exactly
    for k in (0.0, 2.0):
        a2, _, ok2 = firth(sep, offset=(1 - k) * a[0] * sep[:, 0])
        assert ok2 and a2[0] == pytest.approx(k * a[0], abs=1e-5)

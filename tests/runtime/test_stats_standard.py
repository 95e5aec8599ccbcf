"""Standardisation (ethos.runtime.stats.standard): Δ, the pooled sd and z, the one copy the audit
and the planner share."""

from __future__ import annotations

import numpy as np
import pytest

from ethos.runtime.stats import pooled_sd, standardise


def test_pooled_sd_is_the_sd_of_all_replies_chosen_and_rejected_together():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(1.0, 2.0, (50, 3)), rng.normal(0.0, 1.0, (50, 3))
    want = np.concatenate([chosen, rejected]).std(axis=0, ddof=1)
    np.testing.assert_allclose(pooled_sd(chosen, rejected), want)
    # not the sd of either side, nor of Δ
    assert not np.allclose(want, chosen.std(axis=0, ddof=1))
    assert np.isnan(pooled_sd(np.zeros((0, 2)), np.zeros((0, 2)))).all()


def test_standardise_divides_delta_by_the_pooled_sd():
    rng = np.random.default_rng(1)
    chosen, rejected = rng.normal(0.5, 1.0, (40, 2)), rng.normal(0.0, 3.0, (40, 2))
    st = standardise(chosen, rejected)
    np.testing.assert_allclose(st.delta, chosen - rejected)
    np.testing.assert_allclose(st.scale, pooled_sd(chosen, rejected))
    np.testing.assert_allclose(st.z, (chosen - rejected) / st.scale)
    assert st.varies.all()


def test_a_given_scale_is_kept_and_unusable_scales_give_z_zero():
    chosen = np.array([[3.0, 1.0, 2.0, 5.0], [1.0, 1.0, np.nan, 0.0]])
    rejected = np.array([[1.0, 1.0, 0.0, 1.0], [2.0, 1.0, 1.0, 1.0]])
    st = standardise(chosen, rejected, [2.0, 0.0, 4.0, None])
    np.testing.assert_array_equal(st.scale[:3], [2.0, 0.0, 4.0])
    assert np.isnan(st.scale[3])
    assert st.varies.tolist() == [True, False, True, False]
    np.testing.assert_allclose(st.z[:, 0], [1.0, -0.5])
    assert (st.z[:, 1] == 0).all() and (st.z[:, 3] == 0).all()  # scale 0 and None: z = 0
    assert st.z[0, 2] == 0.5 and st.z[1, 2] == 0.0  # a missing score: Δ stays NaN, z is 0
    assert np.isnan(st.delta[1, 2])
    # a constant concept's pooled sd is 0: z is 0 rather than NaN or inf
    flat = standardise(np.ones((5, 1)), np.ones((5, 1)))
    assert flat.scale[0] == 0 and not flat.varies[0] and (flat.z == 0).all()


def test_shapes_are_checked():
    with pytest.raises(ValueError):
        standardise(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError):
        standardise(np.zeros((3, 2)), np.zeros((3, 2)), [1.0])

"""Each data and loss protocol realises its factor: re-fitting the Bradley–Terry model on what it
produces gives α′ ≈ k·α. statsmodels' GLM is the independent oracle for the fits here."""

from collections import Counter

import numpy as np
import pytest
import statsmodels.api as sm

from ethos.compiler.compile import compile_source
from ethos.runtime.interventions import simulate

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def pairs():
    """6,000 pairs oriented by a known BT model; a and b correlated (r = 0.5), c inert."""
    rng = np.random.default_rng(0)
    alpha = np.array([0.6, -0.4, 0.0])
    zu = rng.multivariate_normal(np.zeros(3), [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], size=6000)
    y = rng.random(len(zu)) < 1 / (1 + np.exp(-zu @ alpha))
    return np.where(y[:, None], zu, -zu)


def fit(z, w=None, offset=None):
    x = np.vstack([z, -z])
    y = np.r_[np.ones(len(z)), np.zeros(len(z))]
    res = sm.GLM(y, x, family=sm.families.Binomial(),
                 freq_weights=None if w is None else np.r_[w, w],
                 offset=None if offset is None else np.r_[offset, -offset]).fit()
    return res.params


def plan(rule):
    src = "concept a = metric words;\nconcept b = metric chars;\nconcept c = metric emoji;\n" + rule
    r = compile_source(src)
    assert r.ok, r.diagnostics
    return r.plan


@pytest.mark.parametrize("rule,k", [
    ("block concept a;", 0.0),
    ("dampen concept a by 0.5;", 0.5),
    ("amplify concept a by 2.0;", 2.0),
    ("reverse concept a;", -1.0),
    ("block concept a via filter;", 0.0),
    ("dampen concept a by 0.5 via filter;", 0.5),
    ("amplify concept a by 2.0 via filter;", 2.0),
    ("block concept a via relabel;", 0.0),
    ("reverse concept a via relabel;", -1.0),
    ("block concept a via loss;", 0.0),
    ("amplify concept a by 2 via loss;", 2.0),
    ("reverse concept a via loss;", -1.0),
])
def test_protocol_reaches_k_alpha(pairs, rule, k):
    alpha = fit(pairs)
    sim = simulate(plan(rule), NAMES, pairs, alpha, seed=3)
    after = fit(pairs * sim.sign[:, None], sim.weights, sim.margin_offset)
    assert after[0] == pytest.approx(k * alpha[0], abs=0.08)
    assert after[1] == pytest.approx(alpha[1], abs=0.08)  # the unnamed, correlated concept stays


def test_filter_block_only_drops_and_keeps_most_pairs(pairs):
    alpha = fit(pairs)
    sim = simulate(plan("block concept a via filter;"), NAMES, pairs, alpha, seed=1)
    assert set(np.unique(sim.multiplicity)) <= {0, 1}
    assert (sim.multiplicity == 1).mean() > 0.75


def test_filter_amplify_only_duplicates(pairs):
    sim = simulate(plan("amplify concept a by 2 via filter;"), NAMES, pairs, fit(pairs), seed=1)
    assert sim.multiplicity.min() >= 1 and sim.multiplicity.max() >= 2


def test_draws_are_seeded_and_deterministic(pairs):
    alpha = fit(pairs)
    p = plan("block concept a via filter;\nreverse concept b via relabel;")
    a, b = simulate(p, NAMES, pairs, alpha, seed=7), simulate(p, NAMES, pairs, alpha, seed=7)
    assert np.array_equal(a.multiplicity, b.multiplicity) and np.array_equal(a.swapped, b.swapped)
    c = simulate(p, NAMES, pairs, alpha, seed=8)
    assert not np.array_equal(a.multiplicity, c.multiplicity)


def test_rules_compose_into_one_set_of_weights(pairs):
    alpha = fit(pairs)
    sim = simulate(plan("block concept a;\namplify concept b by 2.0 via loss;"), NAMES, pairs, alpha, seed=0)
    after = fit(pairs, sim.weights, sim.margin_offset)
    assert after[0] == pytest.approx(0.0, abs=0.08)
    assert after[1] == pytest.approx(2 * alpha[1], abs=0.1)


def test_fates_and_ess(pairs):
    alpha = fit(pairs)
    sim = simulate(plan("block concept a via filter;\nblock concept b via relabel;\nkeep concept c;"),
                   NAMES, pairs, alpha, seed=0)
    counts = Counter(sim.fate)
    assert sum(counts.values()) == len(pairs)
    assert counts["excluded"] == int((sim.multiplicity == 0).sum())
    assert counts["relabelled"] == int((sim.swapped & (sim.multiplicity > 0)).sum())
    assert 0 < sim.ess <= (sim.weights > 0).sum()
    assert np.all(sim.decided_by[np.isin(sim.fate, ["excluded", "relabelled"])] != "")


def test_inoculation_marks_pairs_where_the_data_teaches_the_concept(pairs):
    sim = simulate(plan('block concept a via inoculation "You like a.";'), NAMES, pairs, fit(pairs))
    marked = sim.inoculation != ""
    assert np.array_equal(marked, pairs[:, 0] > 0)
    assert np.all(sim.weights == 1) and not sim.swapped.any()


def test_activation_protocols_leave_the_data_alone(pairs):
    src = "concept p = probe \"concepts/sycophancy.jsonl\";\nblock concept p via ablation;\n" \
          "block concept p via steering 4;\nblock concept p via penalty 0.1;"
    r = compile_source(src)
    sim = simulate(r.plan, ["p"], pairs[:, :1], np.array([0.5]))
    assert np.all(sim.weights == 1) and np.all(sim.margin_offset == 0) and set(sim.fate) == {"kept"}


@pytest.mark.parametrize("rule,target", [
    ("encourage concept b;", lambda a: abs(a)),  # the data teaches less b (α < 0): the target is +|α|
    ("encourage concept b by 0.8;", lambda a: 0.8),
    ("discourage concept a;", lambda a: -abs(a)),
    ("encourage concept a by 0.9;", lambda a: 0.9),  # more of what the data already teaches
    ("encourage concept b via loss;", lambda a: abs(a)),
    ("discourage concept a by 0.3 via loss;", lambda a: -0.3),
    ("encourage concept c by 0.5;", lambda a: 0.5),  # α ≈ 0: no factor reaches it, the target does
])
def test_directions_reach_their_target_whatever_the_data_teaches(pairs, rule, target):
    from ethos.runtime.interventions import resolved_factor

    alpha = fit(pairs)
    p = plan(rule)
    (i,) = p.interventions
    j = NAMES.index(i.concept)
    sim = simulate(p, NAMES, pairs, alpha, seed=3)
    after = fit(pairs * sim.sign[:, None], sim.weights, sim.margin_offset)
    assert after[j] == pytest.approx(target(alpha[j]), abs=0.08)
    others = [m for m in range(3) if m != j and abs(alpha[m]) > 0.2]
    for m in others:
        assert after[m] == pytest.approx(alpha[m], abs=0.1)  # the unnamed concepts stay
    assert resolved_factor(i, alpha[j]) == pytest.approx(target(alpha[j]) / alpha[j])
    # on data without the concept (α = 0) the data's own size is 0 (k = 1: nothing to do); a
    # given size has no factor that reaches it
    assert resolved_factor(i, 0.0) == (1.0 if i.size is None else None)
    assert resolved_factor(i, float("nan")) is None

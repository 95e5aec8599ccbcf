"""The audit: the statistics against scipy/statsmodels, the degenerate cases, planted concepts in
real hh-rlhf pairs (and their controls), discovery on synthetic latent matrices, the draft policy
and the CLI handler. Only text lenses are featurized here (no model), except the one discovery
run through the tiny test model and SAE."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ethos.compiler.compile import compile_file, compile_source
from ethos.runtime import audit as A
from ethos.runtime.audit import (
    audit_scores,
    bh,
    bootstrap_d_ci,
    correlated_pairs,
    discover,
    draft_policy,
    joint,
    marginal,
    sign_test,
    split_half,
    table_concepts,
)
from ethos.runtime.data import load_pairs
from ethos.runtime.featurize import featurize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audit"
PLANTED = FIXTURES / "planted.ethos"
PHRASE = " Hope this helps."  # matches marker.txt; no "I" (self_reference) and no "!" (enthusiasm)


# ---------------------------------------------------------------------------------------------
# Helpers


def bt_pairs(n: int, alpha: np.ndarray, seed: int = 0) -> np.ndarray:
    """z (chosen − rejected) of n pairs drawn from a Bradley–Terry model with coefficients alpha."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(alpha)))
    y = rng.random(n) < 1 / (1 + np.exp(-x @ alpha))
    return np.where(y[:, None], x, -x)


def score_table(chosen: np.ndarray, rejected: np.ndarray, names: list[str]) -> pd.DataFrame:
    cols = {"id": [str(i) for i in range(len(chosen))]}
    for j, k in enumerate(names):
        cols[f"{k}.chosen"] = chosen[:, j]
        cols[f"{k}.rejected"] = rejected[:, j]
    return pd.DataFrame(cols)


def sparse(rng: np.random.Generator, n: int, d: int, density: float = 0.01) -> np.ndarray:
    mask = rng.random((n, d)) < density
    return np.where(mask, rng.lognormal(0.0, 1.0, (n, d)), 0.0).astype(np.float32)


def planted_latents(seed: int, n: int = 600, d: int = 512, block=(100, 101, 102, 103, 104)):
    """Sparse null latents plus a block that co-fires on 30% of chosen and 5% of rejected replies."""
    rng = np.random.default_rng(seed)
    c, r = sparse(rng, n, d), sparse(rng, n, d)
    on_c, on_r = rng.random(n) < 0.3, rng.random(n) < 0.05
    for j in block:
        c[on_c, j] += rng.lognormal(0.5, 0.5, on_c.sum())
        r[on_r, j] += rng.lognormal(0.5, 0.5, on_r.sum())
    return c, r


# ---------------------------------------------------------------------------------------------
# Marginal statistics


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


# ---------------------------------------------------------------------------------------------
# The joint fit


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
    assert fit.converged and not any(fit.notes) and np.abs(x @ fit.alpha).max() > A.SATURATED
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


# ---------------------------------------------------------------------------------------------
# audit_scores on tables


def test_audit_scores_fields_and_degenerate_concepts():
    rng = np.random.default_rng(7)
    n = 200
    sc = np.column_stack([rng.normal(1, 1, n), np.full(n, 3.0), rng.normal(0, 1, n)])
    sr = np.column_stack([rng.normal(0, 1, n), np.full(n, 3.0), rng.normal(0, 1, n)])
    sc[3, 2] = np.nan
    table = score_table(sc, sr, ["good", "constant", "noise"])
    assert table_concepts(table) == ["good", "constant", "noise"]
    res = audit_scores(table, seed=1, n_boot=500)
    doc = json.loads(res.to_json())
    assert doc["format"] == A.FORMAT and doc["pairs"] == n - 1
    assert "1 pairs with a missing score were left out" in doc["notes"]
    good, const, noise = doc["concepts"]
    for key in ("name", "mean_delta", "d", "d_ci", "win_rate", "p", "q", "alpha", "alpha_ci", "share", "split_half_stable"):
        assert key in good
    assert good["d"] > 0.5 and good["q"] < 1e-10 and good["alpha"] > 0 and good["split_half_stable"]
    assert const["d"] is None and const["q"] is None and const["alpha"] is None and "constant" in const["note"]
    assert good["share"] + noise["share"] == pytest.approx(1.0)
    assert good["share"] > noise["share"]
    # Too few pairs: all statistics missing, a note, no exception.
    small = audit_scores(table.iloc[:6])
    assert all(c.note.startswith("too few pairs") for c in small.concepts)
    assert np.isnan(small.concepts[0].d) and np.isnan(small.concepts[0].alpha)
    json.loads(small.to_json())


def test_audit_scores_weights_and_fixed_scale():
    rng = np.random.default_rng(8)
    n = 400
    sc, sr = rng.normal(0.4, 1, (n, 2)), rng.normal(0, 1, (n, 2))
    table = score_table(sc, sr, ["a", "b"])
    plain = audit_scores(table, n_boot=200)
    unit = audit_scores(table, weights=np.ones(n), n_boot=200)
    assert unit.concept("a").alpha == pytest.approx(plain.concept("a").alpha)
    assert unit.settings["weighted"] and "sandwich" in unit.settings["alpha_ci"]
    scale = {k: plain.concept(k).scale for k in ("a", "b")}
    half = audit_scores(table.iloc[: n // 2], scale=scale, n_boot=0)
    assert half.concept("a").scale == scale["a"]
    with pytest.raises(ValueError):
        audit_scores(table, weights=np.ones(3))
    # A reweighting that leaves almost nothing: notes, not exceptions or numbers from 3 pairs.
    w = np.zeros(n)
    w[:3] = 1.0
    few = audit_scores(table, weights=w, n_boot=50)
    assert few.notes == ["too few pairs (3 with weight > 0; need 10)"]
    assert np.isnan(few.concept("a").d) and np.isnan(few.concept("a").alpha)
    assert audit_scores(table, weights=np.zeros(n), n_boot=50).joint["note"].startswith("too few pairs")


# ---------------------------------------------------------------------------------------------
# Planted concepts in real hh-rlhf pairs (the embedded 400-pair sample)


@pytest.fixture(scope="module")
def planted_plan():
    result = compile_file(PLANTED)
    assert result.ok, result.diagnostics
    return result.plan


@pytest.fixture(scope="module")
def base_pairs():
    return load_pairs(None)


def plant(base, frac_chosen: float, frac_rejected: float, seed: int):
    rng = np.random.default_rng(seed)
    n = len(base.pairs)
    on_c, on_r = rng.random(n) < frac_chosen, rng.random(n) < frac_rejected
    pairs = [
        dataclasses.replace(p, chosen=p.chosen + (PHRASE if on_c[i] else ""),
                            rejected=p.rejected + (PHRASE if on_r[i] else ""))
        for i, p in enumerate(base.pairs)
    ]
    return dataclasses.replace(base, pairs=pairs)


def test_planted_phrase_is_found_with_the_largest_share(planted_plan, base_pairs, ethos_cache):
    table = featurize(planted_plan, plant(base_pairs, 0.7, 0.1, seed=0), progress=False)
    res = audit_scores(table, seed=0)
    marker = res.concept("marker")
    assert marker.q < 0.001 and marker.d > 0 and marker.alpha_ci[0] > 0 and marker.split_half_stable
    shares = {c.name: c.share for c in res.concepts if np.isfinite(c.share)}
    assert max(shares, key=shares.get) == "marker", shares


def test_control_phrase_on_both_sides_is_not_significant(planted_plan, base_pairs, ethos_cache):
    # 40% / 40%, five independent plantings: the marker never reaches q < 0.05. (Its d leans
    # slightly negative: lexicon scores are per 100 words and chosen replies are longer.)
    for seed in range(5):
        table = featurize(planted_plan, plant(base_pairs, 0.4, 0.4, seed=seed), progress=False)
        assert audit_scores(table, n_boot=0).concept("marker").q >= 0.05, seed


def test_random_sides_report_no_concept_in_95_percent_of_seeds(planted_plan, base_pairs, ethos_cache):
    """Chosen and rejected swapped at random (per pair, per seed) on the planted data: no signal.
    100 seeds; observed: 3 of 100 runs (3%) with any concept at q < 0.05 (5 of 200, 2.5%, over
    seeds 1000–1199)."""
    table = featurize(planted_plan, plant(base_pairs, 0.7, 0.1, seed=0), progress=False)
    names = table_concepts(table)
    sc = table[[f"{k}.chosen" for k in names]].to_numpy()
    sr = table[[f"{k}.rejected" for k in names]].to_numpy()
    seeds, hits = 100, 0
    for s in range(seeds):
        swap = (np.random.default_rng(1000 + s).random(len(table)) < 0.5)[:, None]
        res = audit_scores(score_table(np.where(swap, sr, sc), np.where(swap, sc, sr), names), n_boot=0, seed=s)
        hits += any(c.q < 0.05 for c in res.concepts if np.isfinite(c.q))
    assert hits / seeds < 0.05, hits


# ---------------------------------------------------------------------------------------------
# Discovery on synthetic latent matrices


def test_discovery_finds_a_planted_latent_block_and_labels_it():
    c, r = planted_latents(0)
    called = []

    def tokens(j):
        called.append(j)
        return ["hope", "helps"]

    res = discover(c, r, snippets=lambda j: [f"reply with latent {j}"], tokens=tokens, n_boot=500)
    top = res.candidates[0]
    assert top.features == [100, 101, 102, 103, 104]
    assert top.d > 0 and top.q < 0.001 and top.d_ci[0] > 0
    assert top.name == "found_1_hope"
    assert set(top.labels) <= {str(j) for j in top.features} and len(top.labels) == 3
    assert top.labels[str(top.features[0])]["snippets"][0].startswith("reply with latent")
    assert set(called) <= set(top.features)
    assert res.tested <= res.d_sae and len(res.p) == res.d_sae


def test_discovery_null_matrices_give_no_candidates_in_95_percent_of_seeds():
    """400 pairs × 512 latents, 5% nonzero, chosen and rejected iid: 100 seeds; observed: 4 of
    100 seeds (4%) with any candidate (6 of 200, 3%; at 1% density 0 of 200: the sign test is
    discrete and conservative there)."""
    seeds, hits = 100, 0
    for s in range(seeds):
        rng = np.random.default_rng(10_000 + s)
        res = discover(sparse(rng, 400, 512, 0.05), sparse(rng, 400, 512, 0.05), n_boot=0)
        hits += bool(res.candidates)
    assert hits / seeds < 0.05, hits


def test_discovery_joins_the_concepts_bh_family():
    c, r = planted_latents(1)
    p = np.array([0.001, 0.5])
    res = discover(c, r, extra_p=p, n_boot=0)
    family = np.concatenate([p, res.p])
    np.testing.assert_allclose(np.r_[res.extra_q, res.q][~np.isnan(family)], bh(family)[~np.isnan(family)])
    assert res.extra_q[0] > 0.001  # the family is larger than the two concepts


def test_discovery_opposite_effects_stay_apart():
    rng = np.random.default_rng(2)
    c, r = sparse(rng, 500, 64), sparse(rng, 500, 64)
    on = rng.random(500) < 0.4
    c[on, 3] += 2.0
    r[on, 7] += 2.0  # latent 7 fires on the rejected side of the very same pairs
    res = discover(c, r, n_boot=0)
    groups = [cand.features for cand in res.candidates]
    assert [3] in groups and [7] in groups


def test_audit_scores_with_latents_and_draft_policy_compiles(tmp_path):
    c, r = planted_latents(3, n=300, d=128, block=(5, 6, 7))
    rng = np.random.default_rng(3)
    table = score_table(rng.normal(0.3, 1, (300, 2)), rng.normal(0, 1, (300, 2)), ["verbosity", "hedging"])
    res = audit_scores(table, latents=(c, r), discover_options={
        "snippets": lambda j: ["<script>alert(1)</script>\nline two"], "tokens": lambda j: ["keep", "#x;"]}, n_boot=200)
    doc = res.to_dict()
    assert doc["candidates"][0]["features"] == [5, 6, 7]
    assert {"features", "labels", "d", "q"} <= set(doc["candidates"][0])
    assert doc["discovery"]["d_sae"] == 128
    text = draft_policy(doc, draft_path=tmp_path / "draft.ethos")
    compiled = compile_source(text, str(tmp_path / "draft.ethos"))
    assert compiled.ok, compiled.diagnostics
    names = {c.name for c in compiled.plan.concepts}
    assert {"verbosity", "hedging", doc["candidates"][0]["name"]} <= names
    assert compiled.plan.concept(doc["candidates"][0]["name"]).lens.latents == (5, 6, 7)
    assert f"keep concept {doc['candidates'][0]['name']};" in text


def test_snippets_come_from_the_pairs_where_a_latent_differs_most():
    # the labels follow the direction of the effect, not the largest activations
    chosen = np.array([[5.0], [5.0], [3.0], [2.0], [1.0], [0.0]])
    rejected = np.array([[9.0], [9.0], [0.0], [0.0], [0.0], [0.0]])
    texts_c = [f"c{i}" for i in range(6)]
    texts_r = [f"r{i}" for i in range(6)]
    find = A.snippet_finder(chosen, rejected, texts_c, texts_r, k=3)
    # the mean Δ is (−4 −4 +3 +2 +1 + 0)/6 < 0: the rejected side's largest excesses, then nothing
    assert find(0) == ["r0", "r1"]
    up = A.snippet_finder(chosen[2:], rejected[2:], texts_c[2:], texts_r[2:], k=2,
                          window=lambda side, i, latent: f"{'cr'[side]}{i + 2}@{latent}")
    assert up(0) == ["c2@0", "c3@0"]


# ---------------------------------------------------------------------------------------------
# The CLI handler


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ethos")
    A.register(parser.add_subparsers())
    args = parser.parse_args(["audit", *argv])
    return args.func(args)


def test_cli_writes_json_markdown_html_and_a_draft(tmp_path, ethos_cache, capsys):
    out = tmp_path / "out"
    draft = tmp_path / "drafts" / "draft.ethos"
    code = cli(["--policy", str(PLANTED), "--limit", "120", "--out", str(out), "--emit-policy", str(draft),
                "--json", "--n-boot", "200"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["rows"] == {"input": 120, "usable": 120, "excluded": {}}
    assert {c["name"] for c in doc["concepts"]} >= {"marker", "words", "hedging"}
    assert json.loads((out / "audit.json").read_text())["concepts"] == doc["concepts"]
    assert (out / "audit.md").read_text().startswith("# ethos audit")
    assert "<svg" in (out / "audit.html").read_text()
    result = compile_file(draft)
    assert result.ok, result.diagnostics
    assert result.plan.concept("marker").lens.kind == "lexicon"  # redefined, its file found from the draft


def test_cli_terminal_summary(tmp_path, ethos_cache, capsys):
    assert cli(["--concepts", "hedging,apology", "--limit", "60", "--out", str(tmp_path), "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "rows: 60 input" in out and "hedging" in out and "audit.html" in out


def test_cli_errors(tmp_path, ethos_cache, capsys):
    assert cli(["--limit", "0"]) == 2
    assert "--limit must be a positive integer" in capsys.readouterr().err
    assert cli(["--data", str(tmp_path / "missing.jsonl"), "--concepts", "hedging", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ethos audit: error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.ethos"
    bad.write_text("keep concept sycofancy;\n")
    assert cli(["--policy", str(bad)]) == 1
    assert "did you mean 'sycophancy'" in capsys.readouterr().err
    # --discover with an SAE that does not exist: one clear line, exit 1, before any work.
    missing = tmp_path / "m.ethos"
    missing.write_text('sae "no-such-sae";\nkeep concept hedging;\n')
    assert cli(["--policy", str(missing), "--discover", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--discover needs an SAE" in err and "unknown SAE 'no-such-sae'" in err


def test_cli_discover_with_the_tiny_model_and_sae(tmp_path, ethos_cache, tiny_model_dir, tiny_sae_dir, capsys):
    policy = tmp_path / "p.ethos"
    policy.write_text(f'model "{tiny_model_dir}" layer 0;\nsae "{tiny_sae_dir}";\nkeep concept hedging;\n')
    draft = tmp_path / "draft.ethos"
    code = cli(["--policy", str(policy), "--discover", "--limit", "24", "--out", str(tmp_path / "o"),
                "--emit-policy", str(draft), "--json", "--n-boot", "50", "--q-max", "0.5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["discovery"]["d_sae"] == 32 and "candidates" in doc
    assert doc["source"]["sae"] == str(tiny_sae_dir)
    assert compile_file(draft).ok


def test_wired_into_the_ethos_command(tmp_path, ethos_cache, capsys):
    from ethos.runtime.cli import main

    assert main(["audit", "--concepts", "hedging,apology", "--limit", "40", "--out", str(tmp_path), "--json",
                 "--n-boot", "50"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in doc["concepts"]] == ["apology", "hedging"]
    assert doc["rows"]["input"] == 40

"""The audit's orchestration: audit_scores on featurize tables (fields, degenerate concepts,
weights, a fixed scale, length with and without), planted concepts in real hh-rlhf pairs (and
their controls), discovery through audit_scores (held-out validation) and the draft policy, the
snippet and contrastive n-gram labels and the candidate names, audit_dataset, and ``ethos audit``
through the command line. Only text lenses are featurized here (no model), except the one
discovery run through the tiny test model and SAE. The statistics themselves are tested in
test_stats_*.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ethos.compiler.compile import compile_file, compile_source
from ethos.runtime.audit import audit_dataset, audit_scores, keywords, snippet_finder, table_concepts
from ethos.runtime.cli import main
from ethos.runtime.data import load_pairs
from ethos.runtime.documents import AUDIT_FORMAT
from ethos.runtime.draft import draft_policy
from ethos.runtime.featurize import featurize
from ethos.runtime.labels import candidate_labeler, contrastive_ngrams, ngrams
from ethos.runtime.settings import DataSettings
from ethos.runtime.stats import candidate_name, holdout_split, pooled_sd

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audit"
PLANTED = FIXTURES / "planted.ethos"
PHRASE = " Hope this helps."  # matches marker.txt; no "I" (self_reference) and no "!" (enthusiasm)


# ---------------------------------------------------------------------------------------------
# Helpers


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
    assert doc["format"] == AUDIT_FORMAT and doc["pairs"] == n - 1
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
    # the scale is the pooled sd of both sides' scores (ethos.runtime.stats.standardise)
    np.testing.assert_allclose([plain.concept(k).scale for k in ("a", "b")], pooled_sd(sc, sr))
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


def test_length_as_a_covariate_and_as_an_audited_concept():
    rng = np.random.default_rng(9)
    n = 1500
    lc, lr = rng.normal(120, 40, n), rng.normal(105, 40, n)  # chosen replies ~15 tokens longer
    cols = {
        "by_length": (0.05 * lc + rng.normal(0, 1, n), 0.05 * lr + rng.normal(0, 1, n)),  # counts that grow with length
        "own": (rng.normal(0.3, 1, n), rng.normal(0, 1, n)),  # an effect of its own
    }
    names = list(cols)
    table = score_table(np.column_stack([cols[k][0] for k in names]), np.column_stack([cols[k][1] for k in names]), names)
    plain = audit_scores(table, n_boot=0)
    assert plain.length is None and np.isnan(plain.concept("own").alpha_with_length)
    assert "length" not in plain.to_dict() and "length_covariate" not in plain.settings  # the planner's re-fits unchanged
    res = audit_scores(table, n_boot=0, length=(lc, lr))
    by, own = res.concept("by_length"), res.concept("own")
    # alpha itself is the concepts-only fit, as before; the new fields add the fit with length
    assert by.alpha == plain.concept("by_length").alpha == by.alpha_without_length
    assert by.alpha_without_length > 0.2 and abs(by.alpha_with_length) < 0.1  # length took its place
    assert by.length_explains == pytest.approx(1.0, abs=0.15) and abs(by.d_length_adjusted) < 0.05
    assert own.alpha_with_length == pytest.approx(own.alpha_without_length, abs=0.05)
    assert abs(own.length_explains) < 0.15
    doc = res.to_dict()
    assert list(doc)[list(doc).index("joint") + 1] == "length"
    assert doc["length"]["source"] == "covariate" and doc["length"]["alpha"] > 0 and doc["length"]["d"] > 0
    assert doc["length"]["pseudo_r2_with"] > doc["length"]["pseudo_r2_without"]
    assert doc["concepts"][0]["alpha_with_length_ci"][0] < doc["concepts"][0]["alpha_with_length_ci"][1]
    # the same length as an audited concept: the joint fit has it already; "without" drops it
    table["tokens.chosen"], table["tokens.rejected"] = lc, lr
    as_concept = audit_scores(table, n_boot=0, length_concept="tokens", lenses={"tokens": "metric length"})
    by2 = as_concept.concept("by_length")
    assert by2.alpha == by2.alpha_with_length == pytest.approx(by.alpha_with_length)
    assert by2.alpha_without_length == pytest.approx(by.alpha_without_length)
    assert np.isnan(as_concept.concept("tokens").length_explains)
    assert as_concept.length["source"] == "concept" and as_concept.length["concept"] == "tokens"
    assert as_concept.length["lens"] == "metric length"


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
    # 40% / 40%, five independent plantings: the marker never reaches q < 0.05 (observed: q 0.26
    # to 0.85 with the lexicon's default count mode).
    for seed in range(5):
        table = featurize(planted_plan, plant(base_pairs, 0.4, 0.4, seed=seed), progress=False)
        assert audit_scores(table, n_boot=0).concept("marker").q >= 0.05, seed


def test_random_sides_report_no_concept_in_95_percent_of_seeds(planted_plan, base_pairs, ethos_cache):
    """Chosen and rejected swapped at random (per pair, per seed) on the planted data: no signal.
    100 seeds; observed: 4 of 100 runs (4%) with any concept at q < 0.05 (6 of 200, 3%, over
    seeds 1000–1199; the lexicon in its default count mode)."""
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


def test_heldout_validation_through_audit_scores(tmp_path):
    c, r = planted_latents(4, n=600, d=256, block=(10, 11, 12))
    rng = np.random.default_rng(4)
    table = score_table(rng.normal(0.3, 1, (600, 1)), rng.normal(0, 1, (600, 1)), ["verbosity"])
    held = holdout_split(600, 0.3, seed=4)
    whole = audit_scores(table, latents=(c, r), n_boot=100)
    res = audit_scores(table, latents=(c, r), holdout=held, n_boot=100)
    doc = res.to_dict()
    top = doc["candidates"][0]
    assert top["features"] == [10, 11, 12] and top["replicated"] is True
    assert top["heldout"]["n"] == 180 and top["heldout"]["q"] < 1e-6 and top["heldout"]["d"] > 0
    val = doc["discovery"]["validation"]
    assert (val["discovery_pairs"], val["heldout_pairs"], val["fraction"]) == (420, 180, 0.3)
    assert val["replicated"] == sum(c["replicated"] for c in doc["candidates"])
    assert doc["settings"]["validate"] == 0.3
    cols = doc["discovery"]["columns"]
    assert {"d", "q", "p"} <= set(cols["selection_biased"]) and set(cols["not_selection_biased"]) == {"heldout", "replicated"}
    # the concepts are audited on all pairs; discovery saw only the other 70%
    assert doc["concepts"][0]["n"] == 600 and doc["pairs"] == 600
    assert whole.concept("verbosity").d == res.concept("verbosity").d
    assert "validation" not in whole.to_dict()["discovery"] and whole.candidates[0].replicated is None
    assert whole.to_dict()["discovery"]["columns"]["not_selection_biased"] == []
    text = draft_policy(doc, draft_path=tmp_path / "d.ethos")
    assert "held-out (180 pairs)" in text and ": replicated" in text and "selection-biased" in text
    assert compile_source(text, str(tmp_path / "d.ethos")).ok
    # null latents, discovery at a lenient q < 0.5: what it picks does not replicate (at q < 0.05)
    found = replicated = 0
    for seed in range(20):
        nrng = np.random.default_rng(50 + seed)
        null_c, null_r = sparse(nrng, 300, 64, 0.05), sparse(nrng, 300, 64, 0.05)
        nres = audit_scores(score_table(nrng.normal(0, 1, (300, 1)), nrng.normal(0, 1, (300, 1)), ["v"]),
                            latents=(null_c, null_r), holdout=holdout_split(300, 0.5, seed), n_boot=0,
                            discover_options={"q_max": 0.5})
        found += len(nres.candidates)
        replicated += sum(bool(c.replicated) for c in nres.candidates)
    assert found >= 5 and replicated <= 1, (found, replicated)  # observed: 9 candidates, 0 replicated
    with pytest.raises(ValueError):
        audit_scores(table, latents=(c, r), holdout=held[:10])


def test_contrastive_ngrams_name_the_phrase_with_their_evidence(base_pairs):
    texts = [p.chosen for p in base_pairs.pairs]
    top = [t + PHRASE for t in texts[:20]]
    got = contrastive_ngrams(top, texts[20:300] + [t + PHRASE for t in texts[300:340]])
    best = got[0]
    assert best.text == "hope this helps" and best.top == 20 and best.background == 40 and best.z > 3
    assert all(g.text not in ("hope", "helps", "hope this", "this helps") for g in got)  # the phrase stands for its words
    assert ngrams("Hope this helps. I don't know!") == {"hope", "helps", "hope this", "this helps", "hope this helps",
                                                         "know", "don't know", "i don't know"}
    assert contrastive_ngrams([], texts[:5]) == []


def test_candidate_labeler_labels_and_names_a_planted_candidate(base_pairs, tmp_path):
    pairs = base_pairs.pairs[:300]
    rng = np.random.default_rng(6)
    on_c, on_r = rng.random(300) < 0.5, rng.random(300) < 0.05
    texts_c = [p.chosen + (PHRASE if on_c[i] else "") for i, p in enumerate(pairs)]
    texts_r = [p.rejected + (PHRASE if on_r[i] else "") for i, p in enumerate(pairs)]
    c, r = sparse(rng, 300, 64), sparse(rng, 300, 64)
    c[on_c, 7] += 3.0  # a latent that fires on the phrase
    r[on_r, 7] += 3.0
    label = candidate_labeler(c, r, texts_c, texts_r, seed=0)
    got = label([7])
    assert got["text"] == "hope this helps" and got["side"] == "chosen" and got["top_replies"] == 20
    assert got["ngrams"][0]["top"] == 20 and got["ngrams"][0]["background"] < got["background_replies"] / 2
    table = score_table(rng.normal(0, 1, (300, 1)), rng.normal(0, 1, (300, 1)), ["hedging"])
    res = audit_scores(table, latents=(c, r), n_boot=0, discover_options={"label": label})
    assert res.candidates[0].name == "hope_this_helps" and res.candidates[0].features == [7]
    doc = res.to_dict()
    assert doc["candidates"][0]["label"]["text"] == "hope this helps"
    text = draft_policy(doc, draft_path=tmp_path / "d.ethos")
    assert "concept hope_this_helps = features 7 pool max;" in text and "label “hope this helps”" in text
    assert compile_source(text, str(tmp_path / "d.ethos")).ok


def test_candidate_names_are_identifiers_that_clash_with_nothing(tmp_path):
    assert candidate_name(1, "hope this helps", [], set()) == "hope_this_helps"
    assert candidate_name(2, "don't know", [], set()) == "dont_know"
    assert candidate_name(3, "2 cups", [], set()) == "found_2_cups"
    assert candidate_name(4, "keep", [], set(), keywords()) == "keep_4"
    assert candidate_name(5, "sycophancy", [], {"sycophancy_5"}, {"sycophancy"}) == "sycophancy_5_"
    assert candidate_name(6, None, ["  ", "Hope"], set()) == "found_6_hope"
    assert {"concept", "keep", "block", "features", "pool", "via", "by", "expect"} <= keywords()
    # through discovery: labels that are keywords, library concepts, audited concepts, or repeat
    c, r = planted_latents(8, n=400, d=64, block=(1, 2))
    c2, r2 = planted_latents(9, n=400, d=64, block=(30, 31))
    c[:, 30:32], r[:, 30:32] = c2[:, 30:32] * 3, r2[:, 30:32] * 3
    table = score_table(np.random.default_rng(0).normal(0, 1, (400, 1)), np.zeros((400, 1)) + 0.1, ["hedging"])
    for text in ("keep", "sycophancy", "hedging", "same words"):
        res = audit_scores(table, latents=(c, r), n_boot=0, discover_options={
            "label": lambda members, t=text: {"text": t}, "reserved": {"sycophancy"}})
        names = [cand.name for cand in res.candidates]
        assert len(names) >= 2 and len(set(names)) == len(names)
        assert not set(names) & (keywords() | {"sycophancy", "hedging"})
        draft = draft_policy(res.to_dict(), draft_path=tmp_path / "d.ethos")
        assert compile_source(draft, str(tmp_path / "d.ethos")).ok, (text, names)


def test_snippets_come_from_the_pairs_where_a_latent_differs_most():
    # the labels follow the direction of the effect, not the largest activations
    chosen = np.array([[5.0], [5.0], [3.0], [2.0], [1.0], [0.0]])
    rejected = np.array([[9.0], [9.0], [0.0], [0.0], [0.0], [0.0]])
    texts_c = [f"c{i}" for i in range(6)]
    texts_r = [f"r{i}" for i in range(6)]
    find = snippet_finder(chosen, rejected, texts_c, texts_r, k=3)
    # the mean Δ is (−4 −4 +3 +2 +1 + 0)/6 < 0: the rejected side's largest excesses, then nothing
    assert find(0) == ["r0", "r1"]
    up = snippet_finder(chosen[2:], rejected[2:], texts_c[2:], texts_r[2:], k=2,
                          window=lambda side, i, latent: f"{'cr'[side]}{i + 2}@{latent}")
    assert up(0) == ["c2@0", "c3@0"]


# ---------------------------------------------------------------------------------------------
# audit_dataset and the command line


def test_audit_dataset_records_its_sources(ethos_cache):
    plan = compile_file(PLANTED).plan
    res = audit_dataset(plan, DataSettings(limit=40, seed=3), n_boot=50, policy=str(PLANTED))
    doc = res.to_dict()
    assert doc["rows"] == {"input": 40, "usable": 40, "excluded": {}} and doc["pairs"] == 40
    src = doc["source"]
    assert list(src) == ["data", "fingerprint", "policy", "concepts", "model", "layer", "sae", "limit"]
    assert src["data"] == DataSettings().source and src["policy"] == str(PLANTED) and src["concepts"] == "policy"
    assert src["limit"] == 40 and src["sae"] is None and len(src["fingerprint"]) == 64
    assert doc["settings"]["seed"] == 3 and doc["settings"]["n_boot"] == 50 and doc["settings"]["seconds"] >= 0
    assert {c["name"] for c in doc["concepts"]} == {c.name for c in plan.concepts}
    # the policy measures length itself (words): that concept is the length in the joint fit
    assert doc["settings"]["length_covariate"] == "the audited concept words (metric words)"
    assert doc["length"]["source"] == "concept" and doc["length"]["concept"] == "words"
    hedging = next(c for c in doc["concepts"] if c["name"] == "hedging")
    assert hedging["alpha_with_length"] == hedging["alpha"] and hedging["alpha_without_length"] is not None
    off = audit_dataset(plan, DataSettings(limit=40, seed=3), n_boot=0, length=False).to_dict()
    assert "length" not in off and off["settings"]["length_covariate"] == "off"


def test_audit_dataset_fits_length_in_tokens_as_a_covariate(tmp_path):
    # the model's tokenizer (the default model, converted once into the default ethos cache, as
    # test_featurize does); scores cached under tmp_path
    plan = compile_source("keep concept hedging;\nkeep concept apology;\n", "<t>").plan
    doc = audit_dataset(plan, DataSettings(limit=80), n_boot=0, cache_dir=tmp_path / "cache").to_dict()
    assert doc["settings"]["length_covariate"].startswith("verbosity (metric length: tokens of smollm2-135m-instruct)")
    assert doc["length"]["source"] == "covariate" and doc["length"]["lens"] == "metric length"
    assert doc["length"]["d"] > 0  # chosen replies are longer in helpful-base
    for c in doc["concepts"]:
        assert c["alpha"] == c["alpha_without_length"] and c["alpha_with_length"] is not None
        assert c["length_explains"] is not None


def test_audit_dataset_errors_are_ethos_errors(tmp_path, ethos_cache):
    from ethos.runtime.audit import AuditError
    from ethos.runtime.errors import EthosError

    assert issubclass(AuditError, EthosError)
    plan = compile_source('sae "no-such-sae";\nkeep concept hedging;\n', str(tmp_path / "p.ethos")).plan
    with pytest.raises(AuditError, match="--discover needs an SAE"):
        audit_dataset(plan, DataSettings(path=str(tmp_path / "missing.jsonl")), discover=True)


def test_command_line_defaults_are_the_statistics_defaults():
    from ethos.runtime import stats
    from ethos.runtime.cli import audit as audit_cli

    assert (audit_cli.N_BOOT, audit_cli.Q_MAX) == (stats.N_BOOT, stats.Q_MAX)


def cli(argv: list[str]) -> int:
    return main(["audit", *argv])


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
    # --no-length: the length covariate needs the default model's tokenizer (converted into the
    # fresh ETHOS_CACHE: ~30 s); test_audit_dataset_fits_length_in_tokens_as_a_covariate has it
    assert cli(["--concepts", "hedging,apology", "--limit", "60", "--out", str(tmp_path), "--n-boot", "100",
                "--no-length"]) == 0
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
    assert cli(["--concepts", "hedging", "--validate", "0.3"]) == 2
    assert "--validate needs --discover" in capsys.readouterr().err
    assert cli(["--concepts", "hedging", "--discover", "--validate", "1.5"]) == 2
    assert "--validate must be a fraction between 0 and 1" in capsys.readouterr().err


def test_cli_discover_with_the_tiny_model_and_sae(tmp_path, ethos_cache, tiny_model_dir, tiny_sae_dir, capsys):
    policy = tmp_path / "p.ethos"
    policy.write_text(f'model "{tiny_model_dir}" layer 0;\nsae "{tiny_sae_dir}";\nkeep concept hedging;\n')
    draft = tmp_path / "draft.ethos"
    args = ["--policy", str(policy), "--discover", "--limit", "24", "--out", str(tmp_path / "o"),
            "--emit-policy", str(draft), "--n-boot", "50", "--q-max", "0.5", "--validate", "0.5"]
    code = cli([*args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["discovery"]["d_sae"] == 32 and "candidates" in doc
    assert doc["source"]["sae"] == str(tiny_sae_dir)
    assert compile_file(draft).ok
    val = doc["discovery"]["validation"]
    assert (val["discovery_pairs"], val["heldout_pairs"]) == (12, 12) and doc["settings"]["validate"] == 0.5
    assert all({"label", "heldout", "replicated"} <= set(c) for c in doc["candidates"])
    # length in tokens of the policy's (tiny) model, as a covariate
    assert doc["length"]["source"] == "covariate" and str(tiny_model_dir) in doc["settings"]["length_covariate"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "length: length in tokens (a covariate)" in out and "without length →" in out
    assert "held-out validation: 12 pairs set aside" in out


def test_wired_into_the_ethos_command(tmp_path, ethos_cache, capsys):
    assert main(["audit", "--concepts", "hedging,apology", "--limit", "40", "--out", str(tmp_path), "--json",
                 "--n-boot", "50", "--no-length"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in doc["concepts"]] == ["apology", "hedging"]
    assert doc["rows"]["input"] == 40

"""Lexicon modes (``count`` | ``presence`` | ``density``) and the length controls behind the
default (issue 13): a phrase put on 40% of chosen and 40% of rejected replies at random carries no
preference, so the audit must not report it; a phrase put on 70% of chosen and 10% of rejected
replies must still be found. Everything runs on the embedded hh-rlhf data with the text lenses
only (no model), through a compiled policy and the lens registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ethos.compiler.compile import compile_file
from ethos.compiler.plan import Concept, FileRef, LexiconLens, MetricLens
from ethos.runtime.audit import audit_scores
from ethos.runtime.data import load_pairs
from ethos.runtime.lenses import Lens, LensContext, build_lens

PHRASE = " Hope this helps."
SEEDS = range(20)
N_BOOT = 200  # the sign test's p (hence q) is exact; the bootstrap only sets d's CI


@pytest.fixture(scope="module")
def pairs() -> list:
    return list(load_pairs().pairs)  # the embedded hh-rlhf helpful-base test sample


@pytest.fixture(scope="module")
def lenses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Lens]:
    """The phrase concept in each mode (the default written without a mode) and a length concept,
    compiled from a policy like a user writes it."""
    folder = tmp_path_factory.mktemp("policy")
    (folder / "signoff.txt").write_text("# sign-offs\nhope this helps\n", encoding="utf-8")
    (folder / "p.ethos").write_text(
        'concept signoff = lexicon "signoff.txt";\n'
        'concept signoff_count = lexicon "signoff.txt" count;\n'
        'concept signoff_presence = lexicon "signoff.txt" presence;\n'
        'concept signoff_density = lexicon "signoff.txt" density;\n'
        "concept n_words = metric words;\n"
        + "".join(f"keep concept {c};\n" for c in ("signoff", "signoff_count", "signoff_presence", "signoff_density",
                                                   "n_words")),
        encoding="utf-8",
    )
    result = compile_file(folder / "p.ethos")
    assert result.plan is not None, result.diagnostics
    context = LensContext.for_plan(result.plan)
    return {c.name: build_lens(c, context) for c in result.plan.concepts}


def planted(pairs: list, p_chosen: float, p_rejected: float, seed: int) -> tuple[list[str], list[str]]:
    """The replies with PHRASE appended to each chosen reply with probability ``p_chosen`` and to
    each rejected one with ``p_rejected``, independently."""
    rng = np.random.default_rng(seed)
    on_c = rng.random(len(pairs)) < p_chosen
    on_r = rng.random(len(pairs)) < p_rejected
    return ([p.chosen + PHRASE * bool(a) for p, a in zip(pairs, on_c)],
            [p.rejected + PHRASE * bool(a) for p, a in zip(pairs, on_r)])


def scores(lens: Lens, replies: list[str]) -> np.ndarray:
    return np.array([s["value"] for s in lens.score_texts([((), r) for r in replies])])


def audit_phrase(lenses: dict[str, Lens], concept: str, chosen: list[str], rejected: list[str], seed: int):
    """The audit of the phrase concept next to a length concept (in the joint fit)."""
    table = pd.DataFrame({
        f"{name}.{side}": scores(lenses[name], replies)
        for name in (concept, "n_words") for side, replies in (("chosen", chosen), ("rejected", rejected))
    })
    return audit_scores(table, [concept, "n_words"], seed=seed, n_boot=N_BOOT, length_concept="n_words").concept(concept)


# --- the modes --------------------------------------------------------------------------------


def test_the_modes_score_matches_presence_and_rate(lenses: dict[str, Lens]) -> None:
    text = "Hope this helps. HOPE   this helps! hope this helpsx"  # 9 words, 2 matches
    assert scores(lenses["signoff_count"], [text, "nothing here", ""]).tolist() == [2.0, 0.0, 0.0]
    assert scores(lenses["signoff_presence"], [text, "nothing here", ""]).tolist() == [1.0, 0.0, 0.0]
    assert scores(lenses["signoff_density"], [text, "nothing here", ""]) == pytest.approx([100 * 2 / 9, 0.0, 0.0])


def test_the_default_mode_is_count(lenses: dict[str, Lens]) -> None:
    assert lenses["signoff"].mode == "count"
    assert lenses["signoff"].to_dict() == lenses["signoff_count"].to_dict()


def test_the_mode_is_part_of_the_lens_identity(lenses: dict[str, Lens]) -> None:
    keys = {lenses[n].key() for n in ("signoff_count", "signoff_presence", "signoff_density")}
    assert len(keys) == 3  # a cached density score is never read back as a count
    ident = lenses["signoff_density"].to_dict()
    assert ident["mode"] == "density" and ident["version"] == 2  # version 1 scores were densities without a mode


def test_apology_metric_is_a_count_and_first_person_and_hedging_stay_rates() -> None:
    def metric(name: str, text: str) -> float:
        lens = build_lens(Concept(name="m", lens=MetricLens(metric=name), origin="policy"), LensContext())
        return lens.score_texts([((), text)])[0]["value"]

    long = "Sorry about that. " + "Here is a long and careful answer to the question. " * 5
    assert metric("apology", "Sorry, I apologize for that") == metric("apology", long + " I apologize.") == 2.0
    assert metric("first_person", "I think my dog likes me") == pytest.approx(50.0)
    assert metric("hedging", "It might rain, perhaps.") == pytest.approx(50.0)
    ids = {name: build_lens(Concept(name="m", lens=MetricLens(metric=name), origin="policy"), LensContext()).to_dict()
           for name in ("apology", "hedging")}
    assert ids["apology"]["version"] == 2 and ids["hedging"]["version"] == 1


def test_a_lens_built_without_a_mode_in_its_plan_scores_counts(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "w.txt"
    f.write_text("might\n")
    ref = FileRef(path="w.txt", root="policy", sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    lens = build_lens(Concept(name="w", lens=LexiconLens(file=ref), origin="policy"), LensContext(policy_dir=tmp_path))
    assert lens.score_texts([((), "It might, it might not.")])[0]["value"] == 2.0


# --- the controls on the embedded data --------------------------------------------------------


def test_a_phrase_on_40_percent_of_each_side_is_not_a_signal_with_the_default_mode(pairs, lenses) -> None:
    qs = []
    for seed in SEEDS:
        chosen, rejected = planted(pairs, 0.4, 0.4, seed)
        qs.append(audit_phrase(lenses, "signoff", chosen, rejected, seed).q)
    qs = np.array(qs)
    print(f"\n40%/40% control, default (count) mode: significant (q < 0.05) in {int((qs < 0.05).sum())} of "
          f"{len(qs)} seeds; smallest q {qs.min():.3g}")
    assert np.isfinite(qs).all()
    assert (qs >= 0.05).sum() >= 18


@pytest.mark.parametrize("concept", ["signoff", "signoff_presence", "signoff_density"])
def test_a_phrase_on_70_percent_of_chosen_and_10_percent_of_rejected_is_found(pairs, lenses, concept: str) -> None:
    for seed in range(5):
        chosen, rejected = planted(pairs, 0.7, 0.1, seed)
        stats = audit_phrase(lenses, concept, chosen, rejected, seed)
        assert stats.q < 0.001 and stats.d > 0, (seed, stats.q, stats.d)
        assert stats.alpha_with_length_ci[0] > 0  # still preferred with length in the joint fit


def test_density_on_the_40_percent_control_leans_on_length(pairs, lenses) -> None:
    """Why density is not the default: on the same control the phrase's density differs between
    chosen and rejected replies with their length (chosen replies are the longer ones in 57% of
    these pairs), so its d leans negative; the count's does not. The number of seeds in which
    density is "significant" is printed, not asserted (it is a few of 20, issue 13 saw q = 0.049)."""
    d = {"signoff": [], "signoff_density": []}
    sig = {"signoff": 0, "signoff_density": 0}
    r_len = {"signoff": [], "signoff_density": []}
    for seed in SEEDS:
        chosen, rejected = planted(pairs, 0.4, 0.4, seed)
        d_words = scores(lenses["n_words"], chosen) - scores(lenses["n_words"], rejected)
        for concept in d:
            stats = audit_phrase(lenses, concept, chosen, rejected, seed)
            d[concept].append(stats.d)
            sig[concept] += int(stats.q < 0.05)
            delta = scores(lenses[concept], chosen) - scores(lenses[concept], rejected)
            r_len[concept].append(float(np.corrcoef(delta, d_words)[0, 1]))
    print(f"\n40%/40% control over {len(SEEDS)} seeds: significant (q < 0.05) in {sig['signoff']} (count) vs "
          f"{sig['signoff_density']} (density); median d {np.median(d['signoff']):+.3f} (count) vs "
          f"{np.median(d['signoff_density']):+.3f} (density); median corr(Δscore, Δwords) "
          f"{np.median(r_len['signoff']):+.3f} (count) vs {np.median(r_len['signoff_density']):+.3f} (density)")
    # The mechanism, not the (few-of-20) significance: Δdensity moves against Δlength in every seed
    # (measured −0.20 to −0.13), Δcount does not (−0.01 to +0.10: the phrase adds three words).
    for r_density, r_count in zip(r_len["signoff_density"], r_len["signoff"]):
        assert r_density < -0.05 and r_density < r_count - 0.1
    assert np.median(d["signoff_density"]) < np.median(d["signoff"])

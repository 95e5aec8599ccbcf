"""Planted-phrase discovery on the real default SAE: the audit issue's planted tests, full size.

Data: the first ``--pairs`` usable pairs of the embedded hh-rlhf helpful-base sample (real
replies). One pass of the default model + default SAE computes every latent of every reply twice,
as written and with the phrase appended; each planting below then selects, per pair and side,
which of the two versions it sees, so all plantings share one forward pass. Each condition runs
the audit exactly as ``ethos audit --concepts verbosity --discover`` does (``audit_scores`` on the
featurize table with the pooled latents, snippet and promoted-token labels):

    planted   the phrase on 70% of chosen and 10% of rejected replies (--planted-seeds plantings):
              pass when one of the top 3 candidates has the phrase's tokens in its labels;
    control   the phrase on 40% / 40% (--control-seeds plantings): pass when no top-3 candidate
              has them;
    null      the first planted data with chosen and rejected swapped at random per pair
              (--null-seeds seeds): the fraction of runs with any discovered latent or concept at
              q < 0.05 (goal: under 5%).

A candidate "has the phrase's tokens in its labels" when one of its labelled members' top snippets
(the reply tokens around the latent's peak, in the pairs where it differs most in the direction of
its effect) peaks on a token of the phrase, or a member promotes ``hope`` or ``helps``.

    .venv/bin/python bench/discovery.py --json /tmp/discovery.json           # full: 399 pairs, ~10 min
    .venv/bin/python bench/discovery.py --pairs 80 --null-seeds 20           # the CI test's size

The test ``tests/runtime/test_discovery_real.py`` runs :func:`experiment` on a small subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PHRASE = " Hope this helps."
PROMOTED = re.compile(r"^(hope|helps)$", re.IGNORECASE)


def fires_on_phrase(snippet: str, phrase: str = PHRASE) -> bool:
    """Whether a snippet's marked peak token («…», see ``token_window_finder``) lies inside an
    occurrence of the phrase (whitespace-normalised, as the snippets are)."""
    a, b = snippet.find("«"), snippet.find("»")
    if a < 0 or b < a:
        return False
    plain = snippet[:a] + snippet[a + 1:b] + snippet[b + 1:]
    lo, hi = a, b - 1  # the peak token's span in ``plain``
    target = " ".join(phrase.split())
    start = plain.find(target)
    while start >= 0:
        if start < hi and lo < start + len(target):
            return True
        start = plain.find(target, start + 1)
    return False


def labels_mention_phrase(candidate: Any) -> bool:
    """The candidate "has the phrase's tokens in its labels": one of its labelled members peaks
    on the phrase in a top snippet, or promotes one of its words."""
    return any(fires_on_phrase(s) for lab in candidate.labels.values() for s in lab["snippets"]) or \
        any(PROMOTED.match(t.strip()) for lab in candidate.labels.values() for t in lab["tokens"])


def select(acts: Any, idx_c: np.ndarray, idx_r: np.ndarray) -> Any:
    """The latent activations of a planting: chosen rows ``idx_c`` and rejected rows ``idx_r`` of
    the doubled data (row i: the pair as written, row n + i: with the phrase on both sides)."""
    return dataclasses.replace(
        acts, chosen=acts.chosen[idx_c], rejected=acts.rejected[idx_r],
        peak_chosen=acts.peak_chosen[idx_c], peak_rejected=acts.peak_rejected[idx_r],
        tokens_chosen=[acts.tokens_chosen[i] for i in idx_c], tokens_rejected=[acts.tokens_rejected[i] for i in idx_r])


def experiment(
    n_pairs: int = 400,
    *,
    planted_seeds: int = 3,
    control_seeds: int = 3,
    null_seeds: int = 100,
    batch_size: int = 8,
    progress: bool = False,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """The three conditions on the first ``n_pairs`` embedded pairs (see the module's text);
    ``cache_dir``: featurize's cache (default: ``$ETHOS_CACHE``)."""
    from ethos.compiler.compile import plan_for_concepts
    from ethos.runtime.audit import audit_scores, latent_activations, promoted_token_finder, snippet_finder, token_window_finder
    from ethos.runtime.data import load_pairs
    from ethos.runtime.featurize import featurize

    t0 = time.perf_counter()
    base = load_pairs(None, limit=n_pairs)
    pairs = base.pairs
    n = len(pairs)
    doubled = list(pairs) + [dataclasses.replace(p, chosen=p.chosen + PHRASE, rejected=p.rejected + PHRASE) for p in pairs]
    plan = plan_for_concepts(["verbosity"]).plan
    assert plan is not None
    acts, (sae, model, tokenizer) = latent_activations(doubled, plan.sae.name, model=plan.model.name,
                                                       batch_size=batch_size, progress=progress)
    t_forward = time.perf_counter() - t0
    # verbosity of every reply version, featurized once (as `ethos audit` does)
    scores = featurize(plan, dataclasses.replace(base, pairs=[dataclasses.replace(p, id=f"{p.id}#{k}")
                                                              for k, p in enumerate(doubled)]),
                        cache_dir=cache_dir, progress=False)
    tokens = promoted_token_finder(sae, model, tokenizer)

    def audit(on_c: np.ndarray, on_r: np.ndarray, swap: np.ndarray | None = None, labels: bool = True) -> Any:
        idx_c, idx_r = np.arange(n) + n * on_c, np.arange(n) + n * on_r
        lat_c, lat_r = acts.chosen[idx_c], acts.rejected[idx_r]
        v_c = scores["verbosity.chosen"].to_numpy()[idx_c]
        v_r = scores["verbosity.rejected"].to_numpy()[idx_r]
        if swap is not None:  # the sides exchanged per pair (the matrices only: a null run makes no labels)
            assert not labels
            lat_c, lat_r = np.where(swap[:, None], lat_r, lat_c), np.where(swap[:, None], lat_c, lat_r)
            v_c, v_r = np.where(swap, v_r, v_c), np.where(swap, v_c, v_r)
        table = pd.DataFrame({"id": [p.id for p in pairs], "verbosity.chosen": v_c, "verbosity.rejected": v_r})
        options: dict[str, Any] = {}
        if labels:
            window = token_window_finder(select(acts, idx_c, idx_r), tokenizer)
            options = {"snippets": snippet_finder(lat_c, lat_r, [doubled[i].chosen for i in idx_c],
                                                  [doubled[i].rejected for i in idx_r], window=window),
                       "tokens": tokens}
        return audit_scores(table, ["verbosity"], n_boot=200 if labels else 0, latents=(lat_c, lat_r),
                            discover_options=options)

    def planting(frac_c: float, frac_r: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        return (rng.random(n) < frac_c).astype(int), (rng.random(n) < frac_r).astype(int)

    def summary(res: Any) -> dict[str, Any]:
        top = res.candidates[:3]
        return {
            "survivors": len(res.discovery.survivors), "tested": res.discovery.tested,
            "candidates": len(res.candidates),
            "phrase_rank": next((k for k, c in enumerate(res.candidates, 1) if labels_mention_phrase(c)), None),
            "top3_has_phrase": any(labels_mention_phrase(c) for c in top),
            "top3": [{"name": c.name, "features": c.features[:8], "d": round(c.d, 3), "q": c.q,
                      "labels": {k: {"snippets": v["snippets"][:2], "tokens": v["tokens"][:5]} for k, v in list(c.labels.items())[:2]}}
                     for c in top],
        }

    out: dict[str, Any] = {"pairs": n, "d_sae": acts.d_sae, "layer": acts.layer, "phrase": PHRASE,
                           "forward_seconds": round(t_forward, 1), "planted": [], "control": []}
    for cond, frac_c, frac_r, first_seed, count in (("planted", 0.7, 0.1, 0, planted_seeds),
                                                    ("control", 0.4, 0.4, 100, control_seeds)):
        for s in range(first_seed, first_seed + count):
            on_c, on_r = planting(frac_c, frac_r, s)
            out[cond].append({"seed": s, "chosen_with_phrase": int(on_c.sum()), "rejected_with_phrase": int(on_r.sum()),
                              **summary(audit(on_c, on_r))})
    on_c, on_r = planting(0.7, 0.1, 0)
    hits = []
    for s in range(null_seeds):
        swap = np.random.default_rng(1000 + s).random(n) < 0.5
        res = audit(on_c, on_r, swap=swap, labels=False)
        concept_hit = any(np.isfinite(c.q) and c.q < 0.05 for c in res.concepts)
        hits.append(bool(res.discovery.survivors) or concept_hit)
    out["null"] = {"seeds": null_seeds, "runs_with_any_q_below_0.05": int(sum(hits)),
                   "fraction": float(np.mean(hits)) if hits else None}
    out["goals"] = {
        "planted_top3_has_phrase": all(r["top3_has_phrase"] for r in out["planted"]),
        "control_no_top3_phrase": not any(r["top3_has_phrase"] for r in out["control"]),
        "null_under_5_percent": out["null"]["fraction"] is not None and out["null"]["fraction"] < 0.05,
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [f"{res['pairs']} real pairs, phrase {res['phrase']!r}, SAE layer {res['layer']} ({res['d_sae']} latents); "
             f"forward {res['forward_seconds']} s, all {res['seconds']} s.", "",
             "| condition | seed | phrase on chosen / rejected | latents tested | survivors | candidates | "
             "first candidate with the phrase in its labels |", "|---|---|---|---|---|---|---|"]
    for cond in ("planted", "control"):
        for r in res[cond]:
            lines.append(f"| {cond} | {r['seed']} | {r['chosen_with_phrase']} / {r['rejected_with_phrase']} | {r['tested']} | "
                         f"{r['survivors']} | {r['candidates']} | {r['phrase_rank'] or '—'} |")
    nl = res["null"]
    lines += ["", f"Null (sides swapped at random): {nl['runs_with_any_q_below_0.05']} of {nl['seeds']} runs with any "
                  f"latent or concept at q < 0.05.", f"Goals: {res['goals']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=400, help="the first N rows of the embedded sample")
    ap.add_argument("--planted-seeds", type=int, default=3)
    ap.add_argument("--control-seeds", type=int, default=3)
    ap.add_argument("--null-seeds", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", help="write the full result here")
    args = ap.parse_args(argv)
    res = experiment(args.pairs, planted_seeds=args.planted_seeds, control_seeds=args.control_seeds,
                     null_seeds=args.null_seeds, batch_size=args.batch_size, progress=sys.stderr.isatty())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print(markdown(res))
    return 0 if all(res["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Held-out validation of discovered candidates (``ethos audit --discover --validate F``).

Discovery selects latents on the same pairs it then describes, so a candidate's d, p and q on
those pairs are selection-biased. :func:`holdout_split` sets a seeded random fraction of the pairs
aside before discovery; :func:`replicate` then tests each candidate's score (the sum of its
latents, as the features lens scores it) on the held-out pairs only: d with a bootstrap CI, the
win rate and an exact two-sided sign test, Benjamini–Hochberg over the candidates tested. A
candidate *replicates* when its held-out q is below 0.05 (``Q_REPLICATE``, whatever discovery's
own level) and its held-out d has the sign of its discovery d. Pure numpy/scipy: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .marginal import MIN_PAIRS, N_BOOT, bh, marginal

Q_REPLICATE = 0.05  # a candidate replicates at held-out q below this (with the same sign)
SELECTION_BIASED = ("d", "d_ci", "win_rate", "p", "q", "members")  # a candidate's discovery-set fields
NOT_SELECTION_BIASED = ("heldout", "replicated")  # measured on pairs discovery never saw


def holdout_split(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """A boolean mask over ``n`` pairs, True for the held-out ones: round(fraction · n) pairs drawn
    uniformly without replacement (seeded), so a pair's two replies always stay together."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be between 0 and 1, not {fraction}")
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))]] = True
    return held


def replicate(
    groups: Sequence[Sequence[int]],
    discovery_d: Sequence[float],
    chosen: np.ndarray,
    rejected: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    q_max: float = Q_REPLICATE,
    n_boot: int = N_BOOT,
    seed: int = 0,
    min_pairs: int = MIN_PAIRS,
) -> list[dict[str, Any]]:
    """Each group's statistics on held-out pairs: ``[{"n", "d", "d_ci", "win_rate", "p", "q",
    "replicated", "note"}]`` in the order of ``groups``. ``chosen``/``rejected`` are the held-out
    pairs' (n × d_sae) pooled latents; ``discovery_d`` each group's d on the discovery pairs.
    ``replicated`` is True when q < ``q_max`` and the held-out d has the discovery d's sign,
    False otherwise, None when there are fewer than ``min_pairs`` held-out pairs (with a note)."""
    n = chosen.shape[0]
    nan = float("nan")
    if not groups:
        return []
    live = n if weights is None else int((np.asarray(weights) > 0).sum())
    if live < min_pairs:
        note = f"too few held-out pairs ({live}; need {min_pairs})"
        return [{"n": n, "d": nan, "d_ci": [nan, nan], "win_rate": nan, "p": nan, "q": nan, "replicated": None,
                 "note": note} for _ in groups]
    delta = np.stack([chosen[:, list(g)].sum(axis=1, dtype=np.float64)
                      - rejected[:, list(g)].sum(axis=1, dtype=np.float64) for g in groups], axis=1)
    mg = marginal(delta, weights, n_boot=n_boot, seed=seed)
    q = bh(mg.p)
    out = []
    for k in range(len(groups)):
        same_sign = bool(np.sign(mg.d[k]) == np.sign(discovery_d[k]) and np.sign(mg.d[k]) != 0)
        ok = bool(np.isfinite(q[k]) and q[k] < q_max and same_sign)
        note = ""
        if not np.isfinite(mg.p[k]):
            note = "no held-out pair where its latents differ"
        elif np.isfinite(q[k]) and q[k] < q_max and not same_sign:
            note = "the held-out effect has the opposite sign"
        out.append({"n": n, "d": float(mg.d[k]), "d_ci": [float(mg.d_lo[k]), float(mg.d_hi[k])],
                    "win_rate": float(mg.win_rate[k]), "p": float(mg.p[k]), "q": float(q[k]), "replicated": ok,
                    "note": note})
    return out

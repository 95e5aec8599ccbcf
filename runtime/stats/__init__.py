"""The audit's statistics, pure numpy/scipy (no I/O, no models, no files).

- :mod:`.standard`: Δ, the pooled sd and z (:func:`standardise`), shared by the audit and the
  planner;
- :mod:`.marginal`: per column the mean Δ, Cohen's d with a bootstrap CI, the win rate with an
  exact sign test, split-half stability (:func:`marginal`), Benjamini–Hochberg (:func:`bh`);
- :mod:`.joint`: the Bradley–Terry fit on every concept's z (:func:`joint`), separation,
  correlated concepts;
- :mod:`.discovery`: the marginal statistics over every SAE latent, FDR-controlled, survivors
  grouped into candidate concepts (:func:`discover`);
- :mod:`.holdout`: held-out validation of the candidates (:func:`holdout_split`, :func:`replicate`).
"""

from __future__ import annotations

from .discovery import Q_MAX, Candidate, Discovery, GroupLabeler, Labeler, candidate_name, discover, group_columns
from .holdout import NOT_SELECTION_BIASED, Q_REPLICATE, SELECTION_BIASED, holdout_split, replicate
from .joint import CORR_THRESHOLD, SATURATED, JointFit, correlated_pairs, joint, separating_columns
from .marginal import (
    LEVEL,
    MAX_BOOT_CELLS,
    MAX_SPLIT_CELLS,
    MIN_PAIRS,
    N_BOOT,
    SPLITS,
    Z_LEVEL,
    Marginal,
    bh,
    bootstrap_d_ci,
    covariate_adjusted_d,
    marginal,
    sign_test,
    split_half,
)
from .standard import Standardised, pooled_sd, standardise

__all__ = [
    "CORR_THRESHOLD", "LEVEL", "MAX_BOOT_CELLS", "MAX_SPLIT_CELLS", "MIN_PAIRS", "N_BOOT", "NOT_SELECTION_BIASED",
    "Q_MAX", "Q_REPLICATE", "SATURATED", "SELECTION_BIASED", "SPLITS", "Z_LEVEL",
    "Candidate", "Discovery", "GroupLabeler", "JointFit", "Labeler", "Marginal", "Standardised",
    "bh", "bootstrap_d_ci", "candidate_name", "correlated_pairs", "covariate_adjusted_d", "discover", "group_columns",
    "holdout_split", "joint", "marginal", "pooled_sd", "replicate", "separating_columns", "sign_test", "split_half",
    "standardise",
]

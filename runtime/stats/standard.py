"""Standardised differences: the one place Δ, the pooled sd and z are computed.

For pair i and concept c, Δ_ic = s_c(chosen_i) − s_c(rejected_i) and z_ic = Δ_ic / sd_c, where
sd_c (the concept's *scale*) is the pooled, unweighted standard deviation (ddof 1) of s_c over
all 2n replies, or a scale given by the caller (a re-fit after reweighting or relabelling keeps
the scale of the data before it). A concept whose scale is not a positive number (constant
scores, no pairs) has z = 0 in every pair; so has a pair whose Δ is missing or infinite. The
audit and the planner both standardise through :func:`standardise`. Pure numpy: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Standardised:
    """Δ, the scale and z of n pairs × c concepts."""

    delta: np.ndarray  # (n, c) chosen − rejected (NaN/inf where a score is missing)
    scale: np.ndarray  # (c,) sd_c: the pooled sd of the scores, or the scale given
    z: np.ndarray  # (n, c) Δ / sd_c; 0 where sd_c is not > 0 or Δ is not finite

    @property
    def varies(self) -> np.ndarray:
        """(c,) bool: the concepts whose scale is a positive finite number (the others have z = 0)."""
        return np.isfinite(self.scale) & (self.scale > 0)


def pooled_sd(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """Per column, the standard deviation (ddof 1) of the scores of all 2n replies, chosen and
    rejected pooled, unweighted; NaN for every column when there are no pairs."""
    chosen = np.asarray(chosen, dtype=float)
    rejected = np.asarray(rejected, dtype=float)
    if chosen.shape[0] == 0:
        return np.full(chosen.shape[1], np.nan)
    return np.concatenate([chosen, rejected], axis=0).std(axis=0, ddof=1)


def standardise(
    chosen: np.ndarray,
    rejected: np.ndarray,
    scale: np.ndarray | Sequence[float] | None = None,
) -> Standardised:
    """Δ = chosen − rejected and z = Δ / scale for (n pairs × c concepts) score matrices.

    ``scale``: sd_c per concept (length c) to standardise with; ``None``: the pooled sd of these
    scores (:func:`pooled_sd`). A scale that is NaN, 0, negative or None gives z = 0 for that
    concept; a pair whose Δ is not finite has z = 0 there too.
    """
    chosen = np.asarray(chosen, dtype=float)
    rejected = np.asarray(rejected, dtype=float)
    if chosen.shape != rejected.shape or chosen.ndim != 2:
        raise ValueError("chosen and rejected must be matrices of the same shape (pairs × concepts)")
    delta = chosen - rejected
    if scale is None:
        sd = pooled_sd(chosen, rejected)
    else:
        sd = np.asarray(scale, dtype=float)
        if sd.shape != (chosen.shape[1],):
            raise ValueError(f"scale has {sd.shape} entries for {chosen.shape[1]} concepts")
    ok = np.isfinite(sd) & (sd > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(ok[None, :] & np.isfinite(delta), delta / np.where(ok, sd, 1.0)[None, :], 0.0)
    return Standardised(delta=delta, scale=sd, z=z)

"""The audit: statistical hypotheses for what separates chosen from rejected replies.

For pair i and concept c, Δ_ic = s_c(chosen_i) − s_c(rejected_i) and z_ic = Δ_ic / sd_c, where
sd_c is the pooled (unweighted) standard deviation of s_c over all 2n replies. Everything below is
vectorised over concepts (columns); nothing loops per pair or per latent in Python.

Marginal, per concept (:func:`marginal`)
    mean Δ; Cohen's d = mean Δ / sd(Δ) with a 95% percentile bootstrap CI (pairs resampled);
    win rate P(Δ > 0 | Δ ≠ 0) with an exact two-sided sign test; split-half sign stability.
Multiple testing (:func:`bh`)
    Benjamini–Hochberg q-values over every hypothesis tested in one run (concepts, and every
    tested SAE latent under discovery).
Joint (:func:`joint`)
    a Bradley–Terry logistic model of the preference on all concepts' z, without intercept.
    The symmetrised data ((z, 1) and (−z, 0) per pair) has exactly twice the log-likelihood of
    Σ_i log σ(α·z_i), so the MLE is computed from the latter by Newton's method and its Wald
    covariance is the inverse Hessian of the latter (the naive symmetrised SEs are too small by
    √2). With per-pair weights the covariance is the sandwich (robust) estimate. Separation,
    constant and collinear concepts are detected and reported, never raised.
Discovery (:func:`discover`)
    the marginal statistics over every latent of an SAE, FDR-controlled, the survivors grouped by
    the correlation of their Δ across pairs and labelled through caller-supplied callables.

:func:`audit_scores` runs all of it on a featurize table (and, optionally, latent matrices) and
returns a JSON-serialisable :class:`AuditResult`. The CLI (:func:`register`, :func:`run`) wires
it to the data loader, featurize, the model runtime and the reports (:mod:`ethos.runtime.report`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special as sps_special
from scipy import stats as sps

FORMAT = "ethos.audit/1"
MIN_PAIRS = 10  # fewer usable pairs than this: no statistics, a note instead
N_BOOT = 2000  # bootstrap resamples for the CI of d
SPLITS = 50  # random half-splits behind split_half_agreement
MAX_BOOT_CELLS = 20_000_000  # n_pairs × n_boot above this: the normal-approximation CI of d instead
MAX_SPLIT_CELLS = 5_000_000  # n_pairs × random half-splits for split_half_agreement (at least 2 splits)
CORR_THRESHOLD = 0.7  # |r| of two concepts' z above which they are flagged as correlated
SATURATED = 30.0  # a fitted pair margin |α·z| beyond this (σ = 1 − 1e-13) suggests separation
Q_MAX = 0.05  # discovery: a latent survives at q < Q_MAX
LEVEL = 0.95
DEFAULT_OUT = Path("ethos-out") / "audit"
_Z = float(sps.norm.ppf(0.5 + LEVEL / 2))

Labeler = Callable[[int], Sequence[str]]


class AuditError(Exception):
    """An audit cannot proceed; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------
# Small vectorised pieces


def sign_test(n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """Exact two-sided sign test p-values (H0: P(Δ > 0 | Δ ≠ 0) = 1/2), vectorised.

    For p = 1/2 the binomial distribution is symmetric, so the two-sided p-value of
    ``scipy.stats.binomtest(k, m)`` is ``min(1, 2·P(X ≤ min(k, m − k)))``; NaN where m = 0.
    """
    n_pos = np.asarray(n_pos, dtype=float)
    n_neg = np.asarray(n_neg, dtype=float)
    m = n_pos + n_neg
    k = np.minimum(n_pos, n_neg)
    with np.errstate(invalid="ignore"):
        p = np.minimum(1.0, 2.0 * sps.binom.cdf(k, m, 0.5))
    return np.where(m > 0, p, np.nan)


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values; NaN p-values (untested hypotheses) stay NaN and do not count."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = sps.false_discovery_control(p[ok], method="bh")
    return q


def _bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of pairs in n_boot resamples with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _weighted_d(w: np.ndarray, delta: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """d = mean/sd for each row of weights ``w`` (B, n) and each column of ``delta`` (n, c)."""
    sw = w.sum(axis=1, keepdims=True)
    sw2 = (w * w).sum(axis=1, keepdims=True)
    x = delta - centre
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = (w @ x) / sw
        m2 = (w @ (x * x)) / sw
        var = (m2 - m1 * m1) * (sw * sw / np.maximum(sw * sw - sw2, 1e-300))
        d = (m1 + centre) / np.sqrt(np.maximum(var, 0.0))
    d[~np.isfinite(d)] = np.nan
    return d


def bootstrap_d_ci(
    delta: np.ndarray, weights: np.ndarray | None = None, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of Cohen's d per column of ``delta`` (pairs resampled, weights
    carried along). One matrix product per moment: (n_boot × n) @ (n × c)."""
    n, c = delta.shape
    lo, hi = np.full(c, np.nan), np.full(c, np.nan)
    if n < 2 or n_boot < 1 or c == 0:
        return lo, hi
    rng = np.random.default_rng(seed)
    counts = _bootstrap_counts(n, n_boot, rng)
    w = counts if weights is None else counts * weights[None, :]
    centre = delta.mean(axis=0)
    d = _weighted_d(w, delta, centre)
    a = (1 - level) / 2
    good = np.isfinite(d).sum(axis=0) >= max(10, n_boot // 2)
    if good.any():
        qs = np.nanquantile(d[:, good], [a, 1 - a], axis=0)
        lo[good], hi[good] = qs[0], qs[1]
    return lo, hi


def split_half(
    delta: np.ndarray, weights: np.ndarray | None = None, *, splits: int = SPLITS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split-half sign stability of mean Δ per column.

    Returns ``(stable, agreement)``: ``stable`` is whether, on one seeded random split into two
    halves, both halves' mean Δ have the sign of the whole sample's (and it is not 0);
    ``agreement`` is the fraction of ``splits`` seeded random splits on which that holds.
    """
    n, c = delta.shape
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    wd = delta * w[:, None]
    total = np.sign(wd.sum(axis=0))
    if n < 2 or c == 0:
        return np.zeros(c, bool), np.full(c, np.nan)
    rng = np.random.default_rng(seed)
    h = np.zeros((splits, n))
    h[:, : n // 2] = 1.0
    h = rng.permuted(h, axis=1)  # each row an independent random half (an O(n) shuffle, no sort)
    first = h @ wd
    second = wd.sum(axis=0)[None, :] - first
    ok = (np.sign(first) == total) & (np.sign(second) == total) & (total != 0)
    return ok[0].copy(), ok.mean(axis=0)


# ---------------------------------------------------------------------------------------------
# Marginal statistics


@dataclass
class Marginal:
    """Per-column marginal statistics (arrays of length c)."""

    n: int
    mean_delta: np.ndarray
    sd_delta: np.ndarray
    d: np.ndarray
    d_lo: np.ndarray
    d_hi: np.ndarray
    n_pos: np.ndarray
    n_neg: np.ndarray
    win_rate: np.ndarray
    p: np.ndarray
    split_half_stable: np.ndarray
    split_half_agreement: np.ndarray
    test: str  # "sign" (exact) or "weighted-sign-normal"
    ci_method: str = "percentile bootstrap over pairs"

    def take(self, idx: np.ndarray) -> "Marginal":
        kw = {k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        return Marginal(**kw)


def marginal(
    delta: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    ci: bool = True,
    splits: int = SPLITS,
) -> Marginal:
    """Marginal statistics of each column of ``delta`` (n pairs × c concepts or latents).

    Without weights the test is the exact sign test. With per-pair ``weights`` the mean, sd, d
    and win rate are weighted, and the test is the normal approximation to a sign test on the
    weighted win rate with Kish's effective sample size of the pairs with Δ ≠ 0
    (n_eff = (Σw)²/Σw²). ``ci=False`` skips the bootstrap (``d_lo``/``d_hi`` NaN).
    """
    delta = np.asarray(delta, dtype=float)
    if delta.ndim != 2:
        raise ValueError("delta must be (pairs, columns)")
    n, c = delta.shape
    w = None if weights is None else np.asarray(weights, dtype=float)
    if w is not None and (w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w))):
        raise ValueError("weights must be finite, non-negative, one per pair")
    pos, neg = delta > 0, delta < 0
    if w is None:
        mean = delta.mean(axis=0) if n else np.full(c, np.nan)
        sd = delta.std(axis=0, ddof=1) if n > 1 else np.full(c, np.nan)
        n_pos, n_neg = pos.sum(axis=0).astype(float), neg.sum(axis=0).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            win = n_pos / (n_pos + n_neg)
        p = sign_test(n_pos, n_neg)
        test = "sign"
    else:
        sw, sw2 = w.sum(), (w * w).sum()
        mean = (w @ delta) / sw if sw > 0 else np.full(c, np.nan)
        var = (w @ (delta - mean) ** 2) / max(sw - sw2 / sw, 1e-300) if sw > 0 else np.full(c, np.nan)
        sd = np.sqrt(var)
        n_pos, n_neg = pos.sum(axis=0).astype(float), neg.sum(axis=0).astype(float)
        wp, wn = w @ pos, w @ neg
        nz = pos | neg
        s1, s2 = w @ nz, (w * w) @ nz
        with np.errstate(invalid="ignore", divide="ignore"):
            win = wp / (wp + wn)
            n_eff = s1 * s1 / s2
            zstat = (win - 0.5) * 2.0 * np.sqrt(n_eff)
        p = np.where(s1 > 0, 2.0 * sps.norm.sf(np.abs(zstat)), np.nan)
        test = "weighted-sign-normal"
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(sd > 0, mean / np.where(sd > 0, sd, 1.0), np.nan)
    ci_method = "none"
    if ci and n * n_boot <= MAX_BOOT_CELLS:
        lo, hi = bootstrap_d_ci(delta, w, n_boot=n_boot, seed=seed)
        lo[np.isnan(d)] = hi[np.isnan(d)] = np.nan
        ci_method = "percentile bootstrap over pairs"
    elif ci:
        # too many pairs for a resampling matrix: the large-sample normal CI of d,
        # se(d) = sqrt((1 + d²/2) / n_eff), which the bootstrap approaches at this size anyway
        n_eff = n if w is None else (w.sum() ** 2 / max((w * w).sum(), 1e-300))
        se = np.sqrt((1.0 + d * d / 2.0) / max(n_eff, 1.0))
        lo, hi = d - _Z * se, d + _Z * se
        ci_method = "normal approximation (n × resamples too large to bootstrap)"
    else:
        lo, hi = np.full(c, np.nan), np.full(c, np.nan)
    splits = max(2, min(splits, MAX_SPLIT_CELLS // max(n, 1)))
    stable, agreement = split_half(delta, w, splits=splits, seed=seed + 1)
    return Marginal(n, mean, sd, d, lo, hi, n_pos, n_neg, win, p, stable, agreement, test, ci_method)


# ---------------------------------------------------------------------------------------------
# The joint Bradley–Terry fit


@dataclass
class JointFit:
    """A Bradley–Terry fit. Arrays have one entry per column of z (NaN where not fitted)."""

    alpha: np.ndarray
    se: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    share: np.ndarray
    notes: list[str]  # per column ("" when fitted)
    n: int
    converged: bool
    iterations: int
    loglik: float  # Σ w log σ(α·z) over the pairs (half the symmetrised log-likelihood)
    loglik_null: float  # at α = 0: Σ w log 1/2
    accuracy: float  # weighted fraction of pairs with α·z > 0 (ties count 1/2)
    cov: str  # "model" (inverse Hessian) or "sandwich"
    ess: float  # Kish effective sample size of the weights
    note: str = ""

    @property
    def pseudo_r2(self) -> float:
        """McFadden's R² against the coin-flip model (α = 0)."""
        if not self.loglik_null or not np.isfinite(self.loglik):
            return float("nan")
        return 1.0 - self.loglik / self.loglik_null


def _log_sigmoid(m: np.ndarray) -> np.ndarray:
    return sps_special.log_expit(m)


def _sigmoid(m: np.ndarray) -> np.ndarray:
    return sps_special.expit(m)


def _weighted_gram(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """zᵀ diag(v) z for v ≥ 0, as (√v z)ᵀ(√v z): one scaled copy and a symmetric product."""
    zs = z * np.sqrt(v)[:, None]
    return zs.T @ zs


def separating_columns(z: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Columns along which the pairs are (quasi-)separated: the MLE of Σ log σ(α·z_i) exists iff
    no α ≠ 0 has z·α ≥ 0 on every pair with z·α > 0 on some. Solves the LP
    max Σ s_i s.t. z·α ≥ s, 0 ≤ s ≤ 1 (α free, |α_c| ≤ 1); returns the indices of the nonzero
    components of a separating α (empty when the MLE exists)."""
    from scipy.optimize import linprog

    n, c = z.shape
    if n == 0 or c == 0:
        return np.array([], dtype=int)
    scale = np.abs(z).max(axis=0)
    scale[scale == 0] = 1.0
    zs = z / scale
    # variables: alpha (c), s (n); minimise -Σ s; constraints  -zs·α + s ≤ 0
    from scipy.sparse import csr_matrix, hstack, identity

    a_ub = hstack([csr_matrix(-zs), identity(n, format="csr")], format="csr")
    cost = np.concatenate([np.zeros(c), -np.ones(n)])
    bounds = [(-1.0, 1.0)] * c + [(0.0, 1.0)] * n
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(n), bounds=bounds, method="highs")
    if res.status != 0 or res.x is None or np.max(res.x[c:]) <= tol * 100:
        return np.array([], dtype=int)
    return np.flatnonzero(np.abs(res.x[:c]) > 1e-6)


def _independent_columns(z: np.ndarray, tol: float = 1e-8) -> tuple[list[int], dict[int, list[int]]]:
    """A greedy maximal set of linearly independent columns (in column order), and for each other
    column the kept columns it depends on. Works on the Gram matrix G = zᵀz (one O(n·c²) product;
    everything after is c × c): column j's squared residual after projecting out the kept columns
    is G_jj − g·G_kk⁻¹·g, compared with (tol·√n)²·G_jj, the same criterion as a least-squares fit
    per column on z itself."""
    n, c = z.shape
    keep: list[int] = []
    dependent: dict[int, list[int]] = {}
    if c == 0:
        return keep, dependent
    g = z.T @ z
    limit = (tol * math.sqrt(n)) ** 2 + 1e-24
    for j in range(c):
        if g[j, j] <= 0:
            dependent[j] = []
            continue
        if keep:
            gk, gj = g[np.ix_(keep, keep)], g[keep, j]
            coef = np.linalg.lstsq(gk, gj, rcond=None)[0]
            if g[j, j] - gj @ coef <= limit * g[j, j]:
                dependent[j] = [keep[i] for i in np.flatnonzero(np.abs(coef) > 1e-9)]
                continue
        keep.append(j)
    return keep, dependent


def _newton(z: np.ndarray, w: np.ndarray, max_iter: int = 50, stop_at: float = math.inf,
            offset: np.ndarray | float = 0.0) -> tuple[np.ndarray, bool, int]:
    """Maximise Σ w log σ(z·α + offset) by Newton's method with step halving. Converged means the Newton
    step itself became negligible (a stationary point); under separation there is none, the steps
    stay large, and this returns ``converged=False`` after ``max_iter`` iterations, or as soon as
    a pair's margin |z·α| exceeds ``stop_at``."""
    alpha = np.zeros(z.shape[1])
    ll = float(w @ _log_sigmoid(z @ alpha + offset))
    for it in range(1, max_iter + 1):
        m = z @ alpha + offset
        if np.max(np.abs(m), initial=0.0) > stop_at:  # running off to infinity: separation?
            return alpha, False, it
        s = _sigmoid(m)
        grad = z.T @ (w * (1.0 - s))
        h = _weighted_gram(z, w * s * (1.0 - s))
        try:
            step = np.linalg.solve(h, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(h, grad, rcond=None)[0]
        if not np.all(np.isfinite(step)):
            return alpha, False, it
        if np.max(np.abs(step)) < 1e-9 * (1.0 + np.max(np.abs(alpha))):
            return alpha, True, it
        t = 1.0
        while True:
            new = alpha + t * step
            new_ll = float(w @ _log_sigmoid(z @ new + offset))
            if new_ll >= ll - 1e-12 * (1 + abs(ll)):
                break
            t /= 2
            if t < 1e-10:  # no ascent along the Newton direction: a numerical floor
                return alpha, bool(np.max(np.abs(grad)) < 1e-6 * (1.0 + abs(ll))), it
        alpha, ll = new, new_ll
    return alpha, False, max_iter


def joint(
    z: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    names: Sequence[str] | None = None,
    cov: str = "auto",
    min_pairs: int = MIN_PAIRS,
    offset: np.ndarray | None = None,
) -> JointFit:
    """Fit the Bradley–Terry model P(chosen ≻ rejected) = σ(Σ_c α_c z_ic + o_i) without intercept.

    ``offset`` (o_i, default 0) is a fixed per-pair term: the margin offset of the loss protocol,
    so that the plan can check what a DPO loss with that offset learns (k·α).

    ``z`` is (n pairs × c) standardised differences, chosen − rejected. Equivalent to the logistic
    fit on the symmetrised pairs (each pair as (z, 1) and (−z, 0)), whose log-likelihood is twice
    Σ_i w_i log σ(α·z_i): same MLE; Wald SEs from the inverse Hessian of the latter, i.e. the
    symmetrised fit's SEs × √2. ``cov``: ``"model"`` (inverse Hessian; right for unit or frequency
    weights), ``"sandwich"`` (H⁻¹ (Σ w_i² g_i g_iᵀ) H⁻¹; right for importance weights, invariant to
    their scale), or ``"auto"`` (model without weights, sandwich with). Columns that are constant
    (all zero), linearly dependent on earlier ones, or separate the pairs are left out (NaN, with
    a note) and the rest are fitted; fewer than ``min_pairs`` pairs: nothing is fitted.
    """
    z = np.asarray(z, dtype=float)
    n, c = z.shape
    names = list(names) if names is not None else [f"x{j}" for j in range(c)]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, non-negative, one per pair")
    if cov == "auto":
        cov = "model" if weights is None else "sandwich"
    if cov not in ("model", "sandwich"):
        raise ValueError(f"cov must be 'model', 'sandwich' or 'auto', not {cov!r}")
    nan = np.full(c, np.nan)
    notes = [""] * c
    if c == 0:
        return JointFit(nan, nan, nan, nan, nan, notes, n, True, 0, 0.0, 0.0, float("nan"), cov, float(n))
    sw = float(w.sum())
    ess = sw * sw / float((w * w).sum()) if sw > 0 else 0.0
    fit = JointFit(nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan.copy(), notes, n, False, 0,
                   float("nan"), sw * math.log(0.5), float("nan"), cov, ess)
    rows = w > 0
    if rows.sum() < min_pairs:
        fit.note = f"too few pairs ({int(rows.sum())} with weight > 0; need {min_pairs})"
        fit.notes = [fit.note] * c
        return fit
    if rows.all():  # no copy of a large z when every pair takes part
        zr, wr = z, w
        off = 0.0 if offset is None else np.asarray(offset, dtype=float)
    else:
        zr, wr = z[rows], w[rows]
        off = 0.0 if offset is None else np.asarray(offset, dtype=float)[rows]
    bad = ~np.all(np.isfinite(zr), axis=0)
    for j in np.flatnonzero(bad):
        notes[j] = "not fitted: missing or infinite scores"
    active = [j for j in range(c) if not bad[j]]
    keep, dependent = _independent_columns(zr[:, active])
    for jj, deps in dependent.items():
        j = active[jj]
        notes[j] = ("not fitted: no difference between chosen and rejected in any pair" if not deps else
                    "not fitted: linearly dependent on " + ", ".join(names[active[d]] for d in deps))
    active = [active[k] for k in keep]
    # Fit; if Newton finds no stationary point, look for separation: while some direction
    # separates the pairs, leave out the column of that direction that differs in the fewest
    # pairs (the likeliest culprit), and refit the rest.
    alpha, converged, iters = np.zeros(0), False, 0
    while active:
        alpha, converged, iters = _newton(zr[:, active], wr, stop_at=SATURATED, offset=off)
        if converged:
            break
        sep = separating_columns(zr[:, active])  # saturated margins or no stationary point
        if len(sep) == 0:  # not separated after all: fit without the early stop
            alpha, converged, iters = _newton(zr[:, active], wr, max_iter=200, offset=off)
            break
        cols = [active[k] for k in sep]
        nonzero = {j: int(np.count_nonzero(zr[:, j])) for j in cols}
        drop = min(cols, key=lambda j: (nonzero[j], j))
        others = [names[j] for j in cols if j != drop]
        notes[drop] = (
            "not fitted: perfect separation: Δ has one sign in every pair where it is nonzero (the MLE is infinite)"
            if not others else
            "not fitted: quasi-separation: together with " + ", ".join(others)
            + " it predicts the preference without error wherever they differ (the MLE is infinite)"
        )
        active = [j for j in active if j != drop]
    if not active:
        fit.note = "no concept could be fitted"
        return fit
    za = zr[:, active]
    m = za @ alpha + off
    s = _sigmoid(m)
    h = _weighted_gram(za, wr * s * (1.0 - s))
    try:
        hinv = np.linalg.inv(h)
    except np.linalg.LinAlgError:
        hinv = np.linalg.pinv(h)
    if cov == "model":
        vc = hinv
    else:
        g = za * ((1.0 - s) * wr)[:, None]
        vc = hinv @ (g.T @ g) @ hinv
    se = np.sqrt(np.maximum(np.diag(vc), 0.0))
    fit.alpha[active] = alpha
    fit.se[active] = se
    fit.lo[active] = alpha - _Z * se
    fit.hi[active] = alpha + _Z * se
    contrib = (wr @ np.abs(za * alpha[None, :])) / wr.sum()
    total = contrib.sum()
    fit.share[active] = contrib / total if total > 0 else np.nan
    fit.converged, fit.iterations = converged, iters
    fit.loglik = float(wr @ _log_sigmoid(m))
    fit.accuracy = float(wr @ ((m > 0) + 0.5 * (m == 0)) / wr.sum())
    fit.notes = notes
    if not converged:
        fit.note = "the joint fit did not converge"
    return fit


def correlated_pairs(z: np.ndarray, names: Sequence[str], threshold: float = CORR_THRESHOLD) -> list[dict[str, Any]]:
    """Pairs of columns whose z's correlate with |r| > threshold (constant columns skipped)."""
    if z.shape[1] < 2 or z.shape[0] < 3:
        return []
    sd = z.std(axis=0)
    ok = np.flatnonzero((sd > 0) & np.all(np.isfinite(z), axis=0))
    if len(ok) < 2:
        return []
    r = np.corrcoef(z[:, ok], rowvar=False)
    out = []
    for a in range(len(ok)):
        for b in range(a + 1, len(ok)):
            if abs(r[a, b]) > threshold:
                out.append({"a": names[ok[a]], "b": names[ok[b]], "r": float(r[a, b])})
    return sorted(out, key=lambda x: -abs(x["r"]))


# ---------------------------------------------------------------------------------------------
# Discovery over SAE latents


@dataclass
class Candidate:
    """A candidate concept: co-firing surviving latents."""

    name: str
    features: list[int]
    labels: dict[str, dict[str, list[str]]]  # latent id (str) -> {"snippets": [...], "tokens": [...]}
    d: float
    d_ci: list[float]
    win_rate: float
    p: float  # sign test of the group score's Δ (post-selection: descriptive)
    q: float  # the largest q of its member latents (every member survived at this level)
    members: list[dict[str, float]]  # per latent: id, d, win_rate, q

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Discovery:
    """What discovery found. ``p``/``q``/``d`` cover every latent (NaN: not tested)."""

    d_sae: int
    tested: int
    survivors: list[int]
    candidates: list[Candidate]
    d: np.ndarray
    p: np.ndarray
    q: np.ndarray
    extra_q: np.ndarray  # q-values of the ``extra_p`` hypotheses, from the same BH family
    q_max: float
    pool: str
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "d_sae": self.d_sae,
            "tested": self.tested,
            "survivors": len(self.survivors),
            "q_max": self.q_max,
            "pool": self.pool,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:20].strip("_")


def discover(
    chosen: np.ndarray,
    rejected: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    q_max: float = Q_MAX,
    extra_p: np.ndarray | None = None,
    snippets: Labeler | None = None,
    tokens: Labeler | None = None,
    group_r: float = 0.5,
    max_survivors: int = 256,
    max_candidates: int = 20,
    n_labels: int = 3,
    n_boot: int = N_BOOT,
    seed: int = 0,
    pool: str = "max",
) -> Discovery:
    """Marginal statistics over every latent, FDR-controlled, grouped into candidate concepts.

    ``chosen``/``rejected``: (n pairs × d_sae) pooled latent activations per reply. Latents whose
    Δ is nonzero in too few pairs for the sign test to ever reach ``q_max`` (its smallest possible
    p-value, 2·2⁻ᵐ, is ≥ q_max) are not tested (Tarone's filter: m does not depend on the signs,
    so the FDR guarantee stands); the rest, together with ``extra_p`` (the concepts' p-values in
    the same run), form one Benjamini–Hochberg family. Survivors (q < ``q_max``; at most
    ``max_survivors``, smallest p first) are clustered by average linkage on 1 − r of their Δ
    across pairs (latents with opposite effects never merge), cut at r = ``group_r``. Each
    candidate's statistics are those of its group score (the sum of its latents, as the features
    lens scores a concept). ``snippets``/``tokens`` label the strongest members.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    chosen = np.asarray(chosen)
    rejected = np.asarray(rejected)
    if chosen.shape != rejected.shape or chosen.ndim != 2:
        raise ValueError("chosen and rejected must be matrices of the same shape (pairs × latents)")
    n, d_sae = chosen.shape
    delta = chosen.astype(np.float32) - rejected.astype(np.float32)
    pos, neg = delta > 0, delta < 0
    n_pos = pos.sum(axis=0, dtype=np.int64).astype(float)
    n_neg = neg.sum(axis=0, dtype=np.int64).astype(float)
    m = n_pos + n_neg
    testable = (2.0 * 0.5**m < q_max) & (m > 0) if n >= MIN_PAIRS else np.zeros(d_sae, bool)
    if weights is None:
        p = np.where(testable, sign_test(n_pos, n_neg), np.nan)
        mean = delta.mean(axis=0, dtype=np.float64)
        sd = delta.std(axis=0, ddof=1, dtype=np.float64) if n > 1 else np.full(d_sae, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            win = n_pos / m
    else:
        mg = marginal(delta.astype(np.float64), weights, ci=False, splits=1)
        p = np.where(testable, mg.p, np.nan)
        mean, sd, win = mg.mean_delta, mg.sd_delta, mg.win_rate
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(sd > 0, mean / np.where(sd > 0, sd, 1.0), np.nan)
    timings["marginal"] = time.perf_counter() - t0
    extra = np.asarray(extra_p if extra_p is not None else [], dtype=float)
    q_all = bh(np.concatenate([extra, p]))
    extra_q, q = q_all[: len(extra)], q_all[len(extra):]
    surv = np.flatnonzero(np.nan_to_num(q, nan=1.0) < q_max)
    surv = surv[np.lexsort((-np.abs(d[surv]), p[surv]))][:max_survivors]
    timings["fdr"] = time.perf_counter() - t0 - timings["marginal"]
    t1 = time.perf_counter()
    groups = _group(delta[:, surv].astype(np.float64), d[surv], group_r) if len(surv) else []
    timings["group"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    # Group scores and their statistics, all groups at once.
    if groups:
        member_sets = [surv[g] for g in groups]
        gd = np.stack([delta[:, ms].sum(axis=1, dtype=np.float64) for ms in member_sets], axis=1)
        gm = marginal(gd, weights, n_boot=n_boot, seed=seed)
        order = np.lexsort((-np.abs(np.nan_to_num(gm.d)), gm.p))[:max_candidates]
    else:
        member_sets, order = [], []
    candidates: list[Candidate] = []
    used: set[str] = set()
    for rank, g in enumerate(order, start=1):
        members = sorted(member_sets[g].tolist(), key=lambda j: (p[j], -abs(d[j])))
        labels: dict[str, dict[str, list[str]]] = {}
        for j in members[:n_labels]:
            labels[str(j)] = {
                "snippets": [str(s) for s in (snippets(j) if snippets else [])],
                "tokens": [str(t) for t in (tokens(j) if tokens else [])],
            }
        first_tokens = labels[str(members[0])]["tokens"]
        slug = next((s for s in (_slug(t) for t in first_tokens) if s), "")
        name = f"found_{rank}" + (f"_{slug}" if slug else "")
        while name in used:
            name += "_"
        used.add(name)
        candidates.append(Candidate(
            name=name,
            features=sorted(members),
            labels=labels,
            d=_f(gm.d[g]),
            d_ci=[_f(gm.d_lo[g]), _f(gm.d_hi[g])],
            win_rate=_f(gm.win_rate[g]),
            p=_f(gm.p[g]),
            q=_f(np.max(q[members])),
            members=[{"id": int(j), "d": _f(d[j]), "win_rate": _f(win[j]), "q": _f(q[j])} for j in members],
        ))
    timings["candidates"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    return Discovery(d_sae, int(testable.sum()), surv.tolist(), candidates, d, p, q, extra_q, q_max, pool, timings)


def _group(delta: np.ndarray, d: np.ndarray, group_r: float) -> list[np.ndarray]:
    """Average-linkage clusters of columns on 1 − corr(Δ); opposite signs of d never merge."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    s = delta.shape[1]
    if s == 1:
        return [np.array([0])]
    x = delta - delta.mean(axis=0)
    norms = np.linalg.norm(x, axis=0)
    norms[norms == 0] = 1.0
    x = x / norms
    r = np.clip(x.T @ x, -1.0, 1.0)
    dist = 1.0 - r
    sign = np.sign(np.nan_to_num(d))
    dist[sign[:, None] != sign[None, :]] = 2.0
    np.fill_diagonal(dist, 0.0)
    dist = np.maximum((dist + dist.T) / 2, 0.0)
    tree = linkage(squareform(dist, checks=False), method="average")
    labels = fcluster(tree, t=1.0 - group_r, criterion="distance")
    return [np.flatnonzero(labels == k) for k in np.unique(labels)]


# ---------------------------------------------------------------------------------------------
# The audit of a featurize table


def _f(x: Any) -> float:
    return float(x) if x is not None else float("nan")


@dataclass
class ConceptStats:
    name: str
    lens: str
    n: int
    scale: float  # sd_c: pooled sd of the score over all replies (z = Δ / scale)
    mean_delta: float
    sd_delta: float
    d: float
    d_ci: list[float]
    win_rate: float
    n_pos: int
    n_neg: int
    n_tied: int
    p: float
    q: float
    alpha: float
    alpha_se: float
    alpha_ci: list[float]
    share: float
    split_half_stable: bool
    split_half_agreement: float
    note: str = ""


@dataclass
class AuditResult:
    """Everything an audit found; ``to_dict()`` is the JSON document (docs/audit.md)."""

    rows: dict[str, Any]
    n: int
    concepts: list[ConceptStats]
    correlated: list[dict[str, Any]]
    joint: dict[str, Any]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    discovery: Discovery | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def candidates(self) -> list[Candidate]:
        return self.discovery.candidates if self.discovery is not None else []

    def concept(self, name: str) -> ConceptStats:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "source": self.source,
            "rows": self.rows,
            "pairs": self.n,
            "settings": self.settings,
            "concepts": [asdict(c) for c in self.concepts],
            "correlated": self.correlated,
            "joint": self.joint,
            "notes": self.notes,
        }
        if self.discovery is not None:
            out["discovery"] = self.discovery.to_dict()
            out["candidates"] = [c.to_dict() for c in self.discovery.candidates]
        return _clean(out)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf → None, numpy scalars → Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def table_concepts(table: Any) -> list[str]:
    """The concepts of a featurize table (columns ``<name>.chosen`` with a ``<name>.rejected``)."""
    cols = list(table.columns)
    return [c[: -len(".chosen")] for c in cols if c.endswith(".chosen") and c[: -len(".chosen")] + ".rejected" in cols]


def audit_scores(
    table: Any,
    concepts: Sequence[str] | None = None,
    *,
    weights: np.ndarray | None = None,
    seed: int = 0,
    n_boot: int = N_BOOT,
    scale: Mapping[str, float] | None = None,
    latents: tuple[np.ndarray, np.ndarray] | None = None,
    discover_options: Mapping[str, Any] | None = None,
    rows: Mapping[str, Any] | None = None,
    lenses: Mapping[str, str] | None = None,
    corr_threshold: float = CORR_THRESHOLD,
    min_pairs: int = MIN_PAIRS,
) -> AuditResult:
    """Audit a featurize table (``<concept>.chosen`` / ``<concept>.rejected`` columns).

    ``weights``: optional per-pair weights (a reweighted dataset, as the plan step produces);
    ``scale``: sd_c per concept to standardise with (default: the pooled unweighted sd of the
    table's own scores, so a weighted re-fit on the same table is on the same scale);
    ``latents``: (chosen, rejected) pooled SAE latent matrices for discovery (one BH family with
    the concepts), with ``discover_options`` passed to :func:`discover`; ``rows``: the loader's
    counts; ``lenses``: a description per concept for the report. Degenerate inputs (constant
    concepts, separation, missing scores, too few pairs) give NaN fields and notes, not errors.
    """
    concepts = list(concepts) if concepts is not None else table_concepts(table)
    n_all = len(table)
    c = len(concepts)
    notes: list[str] = []
    if c:
        missing = [k for k in concepts if f"{k}.chosen" not in table.columns or f"{k}.rejected" not in table.columns]
        if missing:
            raise KeyError(f"the table has no scores for {', '.join(missing)}")
        cols = [f"{k}.{side}" for side in ("chosen", "rejected") for k in concepts]
        values = np.asarray(table.loc[:, cols].to_numpy(dtype=float))  # one column access (attrs are copied per access)
        sc, sr = values[:, :c], values[:, c:]
    else:
        sc = sr = np.zeros((n_all, 0))
    w_all = None if weights is None else np.asarray(weights, dtype=float)
    if w_all is not None and w_all.shape != (n_all,):
        raise ValueError(f"weights has {w_all.shape} entries for {n_all} pairs")
    finite = np.all(np.isfinite(sc) & np.isfinite(sr), axis=1)
    if not finite.all():
        notes.append(f"{int((~finite).sum())} pairs with a missing score were left out")
    sc, sr = sc[finite], sr[finite]
    w = None if w_all is None else w_all[finite]
    n = int(finite.sum())
    delta = sc - sr
    if scale is None:
        both = np.concatenate([sc, sr], axis=0)
        sd_c = both.std(axis=0, ddof=1) if n > 0 else np.full(c, np.nan)
    else:
        sd_c = np.array([float(scale[k]) for k in concepts])
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(sd_c > 0, delta / np.where(sd_c > 0, sd_c, 1.0), 0.0)
    n_live = n if w is None else int((w > 0).sum())
    few_note = f"too few pairs ({n_live}{'' if w is None else ' with weight > 0'}; need {min_pairs})"
    too_few = n_live < min_pairs
    if too_few:
        notes.append(few_note)
    mg = marginal(delta, w, n_boot=n_boot, seed=seed) if not too_few else None
    p = mg.p if mg is not None else np.full(c, np.nan)
    p = np.where(sd_c > 0, p, np.nan)
    discovery = None
    if latents is not None:
        lc, lr = latents
        if len(lc) != n_all:
            raise ValueError(f"latent matrices have {len(lc)} rows for {n_all} pairs")
        discovery = discover(np.asarray(lc)[finite], np.asarray(lr)[finite], weights=w, extra_p=p,
                             seed=seed, n_boot=n_boot, **dict(discover_options or {}))
        q = discovery.extra_q
    else:
        q = bh(p)
    fit = joint(z[:, sd_c > 0] if c else z, w, names=[k for k, s in zip(concepts, sd_c) if s > 0],
                min_pairs=min_pairs)
    fitted = np.flatnonzero(sd_c > 0)
    alpha, se, lo, hi, share = (np.full(c, np.nan) for _ in range(5))
    jnotes = [""] * c
    for k, j in enumerate(fitted):
        alpha[j], se[j], lo[j], hi[j], share[j] = fit.alpha[k], fit.se[k], fit.lo[k], fit.hi[k], fit.share[k]
        jnotes[j] = fit.notes[k]
    out: list[ConceptStats] = []
    for j, name in enumerate(concepts):
        if too_few:
            note = few_note
        elif not sd_c[j] > 0:
            note = "constant score (sd 0): nothing to test"
        else:
            note = jnotes[j]
            if mg is not None and not np.isfinite(mg.d[j]):
                note = (note + "; " if note else "") + "Δ has sd 0: d undefined"
        get = (lambda a: _f(a[j])) if mg is not None else (lambda a: float("nan"))
        n_pos = int(mg.n_pos[j]) if mg is not None else 0
        n_neg = int(mg.n_neg[j]) if mg is not None else 0
        out.append(ConceptStats(
            name=name,
            lens=(lenses or {}).get(name, ""),
            n=n,
            scale=_f(sd_c[j]),
            mean_delta=get(mg.mean_delta) if mg is not None else float("nan"),
            sd_delta=get(mg.sd_delta) if mg is not None else float("nan"),
            d=get(mg.d) if mg is not None else float("nan"),
            d_ci=[get(mg.d_lo), get(mg.d_hi)] if mg is not None else [float("nan")] * 2,
            win_rate=get(mg.win_rate) if mg is not None else float("nan"),
            n_pos=n_pos,
            n_neg=n_neg,
            n_tied=n - n_pos - n_neg,
            p=_f(p[j]),
            q=_f(q[j]),
            alpha=_f(alpha[j]),
            alpha_se=_f(se[j]),
            alpha_ci=[_f(lo[j]), _f(hi[j])],
            share=_f(share[j]),
            split_half_stable=bool(mg.split_half_stable[j]) if mg is not None else False,
            split_half_agreement=get(mg.split_half_agreement) if mg is not None else float("nan"),
            note=note,
        ))
    names_fit = [concepts[j] for j in range(c) if sd_c[j] > 0]
    correlated = correlated_pairs(z[:, sd_c > 0], names_fit, corr_threshold) if not too_few else []
    partners: dict[str, list[str]] = {}
    for pair in correlated:
        for a, b in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
            partners.setdefault(a, []).append(f"{b} (r = {pair['r']:+.2f})")
    for a, others in partners.items():
        cs = out[concepts.index(a)]
        extra = f"correlated with {', '.join(others)}: blocking one moves the other" + ("s" if len(others) > 1 else "")
        cs.note = (cs.note + "; " if cs.note else "") + extra
    joint_info = {
        "n": fit.n,
        "converged": fit.converged,
        "iterations": fit.iterations,
        "loglik": fit.loglik,
        "loglik_null": fit.loglik_null,
        "pseudo_r2": fit.pseudo_r2,
        "accuracy": fit.accuracy,
        "cov": fit.cov,
        "ess": fit.ess,
        "note": fit.note,
    }
    settings = {
        "seed": seed,
        "n_boot": n_boot,
        "level": LEVEL,
        "test": mg.test if mg is not None else "sign",
        "d_ci": mg.ci_method if mg is not None else "none",
        "alpha_ci": f"Wald ({fit.cov} covariance, one-sided likelihood = symmetrised / 2)",
        "weighted": w is not None,
        "corr_threshold": corr_threshold,
        "min_pairs": min_pairs,
    }
    if discovery is not None:
        settings["q_max"] = discovery.q_max
    return AuditResult(
        rows=dict(rows) if rows is not None else {"input": n_all, "usable": n_all, "excluded": {}},
        n=n, concepts=out, correlated=correlated, joint=joint_info, settings=settings,
        notes=notes, discovery=discovery,
    )


# ---------------------------------------------------------------------------------------------
# Labels for discovered latents


def snippet_finder(
    chosen: np.ndarray,
    rejected: np.ndarray,
    texts_chosen: Sequence[str],
    texts_rejected: Sequence[str],
    *,
    k: int = 3,
    width: int = 160,
    window: Callable[[int, int, int], str | None] | None = None,
) -> Labeler:
    """A top-snippet finder that shows what drives a latent's *difference*: for a latent whose
    mean Δ (chosen − rejected) is ≥ 0, the chosen replies of the ``k`` pairs with the largest
    positive Δ; otherwise the rejected replies of the pairs with the largest negative Δ. Each is
    ``window(side, pair, latent)`` (side 0 chosen, 1 rejected; e.g. the tokens around the
    latent's peak) or else the reply's first ``width`` characters. (The replies where a latent
    fires most are often not where it separates the sides: a latent for sentence ends peaks on
    many replies, but differs only where a planted sentence adds one.)"""

    def find(latent: int) -> list[str]:
        delta = chosen[:, latent].astype(float) - rejected[:, latent].astype(float)
        side = 0 if delta.mean() >= 0 else 1
        contrast = delta if side == 0 else -delta
        top = np.argsort(-contrast, kind="stable")[:k]
        out = []
        for i in top:
            if not contrast[i] > 0:
                break
            text = window(side, int(i), latent) if window is not None else None
            if text is None:
                text = (texts_chosen if side == 0 else texts_rejected)[i]
                text = " ".join(text.split())
                text = text if len(text) <= width else text[: width - 1] + "…"
            out.append(text)
        return out

    return find


@dataclass
class LatentActivations:
    """Pooled SAE latent activations of every reply, and where each latent peaked."""

    chosen: np.ndarray  # (n, d_sae) float32
    rejected: np.ndarray
    peak_chosen: np.ndarray  # (n, d_sae) int32: token index of the max inside the reply
    peak_rejected: np.ndarray
    tokens_chosen: list[list[int]]  # the reply's own token ids
    tokens_rejected: list[list[int]]
    d_sae: int
    layer: int
    sae: str
    pool: str
    seconds: float = 0.0


def latent_activations(
    pairs: Sequence[Any],
    sae_name: str,
    *,
    model: str,
    layer: int | None = None,
    pool: str = "max",
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[LatentActivations, Any]:
    """Every latent of the SAE pooled over each reply's tokens (``pool``: max or mean), through
    the model runtime's truncated forward (shared-prompt batches; :func:`ethos.runtime.sae.reply_latents`).
    Returns the activations and ``(sae, model, tokenizer)`` for labelling."""
    from .sae import SAEError, _runtime_for, load_sae, reply_latents, sae_layer

    if pool not in ("max", "mean"):
        raise AuditError(f"pool must be 'max' or 'mean', not {pool!r}")
    t0 = time.perf_counter()
    try:
        sae = load_sae(sae_name)
        reads = sae_layer(sae)
        if layer is not None and reads is not None and layer != reads:
            raise AuditError(f"the SAE reads layer {reads} but layer {layer} was asked for")
        runtime = _runtime_for(sae, model, None, batch_size=batch_size)
        got = reply_latents(sae, runtime, pairs, peaks=True, progress=progress)
    except SAEError as exc:
        raise AuditError(f"SAE '{sae_name}': {exc}") from None
    pooled = got.max if pool == "max" else got.mean
    assert got.peak is not None and got.tokens is not None
    acts = LatentActivations(pooled[0], pooled[1], got.peak[0], got.peak[1], got.tokens[0], got.tokens[1],
                             sae.cfg.d_sae, runtime.layer, sae_name, pool, time.perf_counter() - t0)
    return acts, (sae, runtime.encoder.model, runtime.tokenizer)


def token_window_finder(acts: LatentActivations, tokenizer: Any, *, before: int = 12, after: int = 4) -> Callable[[int, int, int], str]:
    """Windows of reply tokens around a latent's peak, the peak token marked «like this»."""

    def window(side: int, i: int, latent: int) -> str:
        ids = (acts.tokens_chosen if side == 0 else acts.tokens_rejected)[i]
        peak = int((acts.peak_chosen if side == 0 else acts.peak_rejected)[i, latent])
        if not ids:
            return ""
        peak = min(peak, len(ids) - 1)
        head = tokenizer.decode(ids[max(0, peak - before): peak])
        mid = tokenizer.decode(ids[peak: peak + 1])
        tail = tokenizer.decode(ids[peak + 1: peak + 1 + after])
        text = ("…" if peak > before else "") + head + "«" + mid + "»" + tail + ("…" if peak + 1 + after < len(ids) else "")
        return " ".join(text.split())

    return window


def promoted_token_finder(sae: Any, model: Any, tokenizer: Any, *, k: int = 8) -> Labeler:
    """The tokens a latent promotes: its decoder row, through the final norm's gain and the
    unembedding (the logit lens of the direction), top ``k`` readable ones
    (:func:`ethos.runtime.sae.promoted_tokens`)."""
    from .sae import promoted_tokens

    def find(latent: int) -> list[str]:
        return promoted_tokens(sae, model, tokenizer, [latent], k, readable=True)[latent]

    return find


# ---------------------------------------------------------------------------------------------
# The draft policy


def _comment(text: str) -> str:
    """One comment line's text: no newlines or control characters."""
    return "".join(ch if ch.isprintable() else " " for ch in " ".join(str(text).split()))


def _stats_line(c: Mapping[str, Any]) -> str:
    from .report import est_ci, pct, pval

    parts = [f"d {est_ci(c.get('d'), c.get('d_ci'))}", f"win {pct(c.get('win_rate'))}", f"q {pval(c.get('q'))}"]
    if "alpha" in c:
        parts += [f"alpha {est_ci(c.get('alpha'), c.get('alpha_ci'))}", f"share {pct(c.get('share'))}"]
    return ", ".join(parts)


def _lens_source(concept: Any, plan: Any, draft_dir: Path | None) -> str:
    lens = concept.lens
    if lens.kind == "metric":
        return f"metric {lens.metric}"
    if lens.kind == "features":
        return f"features {', '.join(map(str, lens.latents))} pool {lens.pool}"
    path = lens.file.path
    if lens.file.root == "policy" and plan.source.path and not plan.source.path.startswith("<"):
        full = (Path(plan.source.path).parent / path).resolve()
        path = str(full)
        if draft_dir is not None:
            try:
                rel = os.path.relpath(full, draft_dir.resolve())
            except ValueError:
                rel = None
            if rel is not None and not rel.startswith(".."):
                path = rel  # beside or below the draft: keep it relative; elsewhere: absolute
    text = f'{lens.kind} "{path}"'
    return text + (f" pool {lens.pool}" if lens.kind == "probe" else "")


def draft_policy(doc: Mapping[str, Any], plan: Any = None, *, draft_path: Path | None = None, name: str = "draft") -> str:
    """A policy with a decision line (``keep``) for every audited concept and every discovered
    candidate, each preceded by a comment with its statistics (and, for candidates, labels).
    Concepts the audited policy defined itself are defined again (file paths made relative to the
    draft's folder); candidates are defined as ``features`` concepts."""
    src = doc.get("source", {})
    lines = [
        f"# Draft policy written by `ethos audit` ({doc.get('pairs')} pairs of {_comment(src.get('data') or 'the data')},"
        f" seed {doc.get('settings', {}).get('seed')}).",
        "# Every concept has a decision line; change `keep` to block, dampen ... by f, amplify ... by f",
        "# or reverse (see docs/language.md), then run `ethos plan` for the dry run.",
        f'policy "{name}";',
        "",
    ]
    model = src.get("model")
    if plan is not None and plan.model.span is not None:
        layer = f" layer {plan.model.layer}" if plan.model.layer is not None else ""
        lines.append(f'model "{plan.model.name}"{layer};')
    elif model:
        layer = f" layer {src['layer']}" if src.get("layer") is not None else ""
        lines.append(f'model "{model}"{layer};')
    sae = src.get("sae") or (plan.sae.name if plan is not None and plan.sae.span is not None else None)
    if sae:
        lines.append(f'sae "{sae}";')
    if lines[-1] != "":
        lines.append("")
    defined = {c.name: c for c in plan.concepts if c.origin == "policy"} if plan is not None else {}
    draft_dir = draft_path.parent if draft_path is not None else None
    for c in _order_concepts(doc.get("concepts", [])):
        lines.append(f"# {c['name']}: {_stats_line(c)}")
        if c.get("note"):
            lines.append(f"#   note: {_comment(c['note'])}")
        if c["name"] in defined:
            lines.append(f"concept {c['name']} = {_lens_source(defined[c['name']], plan, draft_dir)};")
        lines.append(f"keep concept {c['name']};")
        lines.append("")
    cands = doc.get("candidates") or []
    if cands:
        disc = doc.get("discovery", {})
        lines.append(f"# Discovered: {len(cands)} candidate concepts from {disc.get('survivors')} latents at q < "
                     f"{disc.get('q_max')} ({disc.get('pool')}-pooled). Rename them; the labels are hints, not facts.")
        lines.append("")
    for cand in cands:
        pool = doc.get("discovery", {}).get("pool", "max")
        lines.append(f"# {cand['name']}: {_stats_line(cand)}")
        for lid, lab in cand.get("labels", {}).items():
            toks = ", ".join(lab.get("tokens", [])[:8])
            lines.append(f"#   latent {lid}: promotes {_comment(toks) or '-'}")
            for s in lab.get("snippets", [])[:2]:
                lines.append(f"#     “{_comment(s)[:150]}”")
        lines.append(f"concept {cand['name']} = features {', '.join(map(str, cand['features']))} pool {pool};")
        lines.append(f"keep concept {cand['name']};")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _order_concepts(concepts: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    from .report import _order

    return _order(concepts)


# ---------------------------------------------------------------------------------------------
# CLI


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "audit",
        help="which concepts separate chosen from rejected: effects, CIs, q-values, shares",
        description=(
            "Audit a preference dataset: per concept the mean difference (chosen - rejected), Cohen's d "
            "with a bootstrap CI, the win rate with an exact sign test and BH q-values; jointly a "
            "Bradley-Terry fit (alpha per sd, share of the signal). --discover runs over every SAE latent. "
            "Writes audit.json, audit.md and audit.html into --out."
        ),
    )
    p.add_argument("--data", metavar="PATH", help="preference data (default: the embedded 400-pair hh-rlhf sample)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--policy", metavar="FILE", help="audit the concepts this policy uses")
    g.add_argument("--concepts", metavar="A,B", help="audit these library concepts (default: the whole library)")
    p.add_argument("--discover", action="store_true", help="also test every latent of the policy's SAE and group survivors")
    p.add_argument("--limit", type=int, metavar="N", help="read only the first N input rows")
    p.add_argument("--out", metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--emit-policy", metavar="FILE", help="write a draft policy with a decision line per concept")
    p.add_argument("--json", action="store_true", help="print the audit as JSON on stdout")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the split halves (default 0)")
    p.add_argument("--n-boot", type=int, default=N_BOOT, metavar="B", help=f"bootstrap resamples (default {N_BOOT})")
    p.add_argument("--q-max", type=float, default=Q_MAX, metavar="Q", help=f"discovery FDR level (default {Q_MAX})")
    p.add_argument("--pool", choices=("max", "mean"), default="max", help="discovery: pool latents over reply tokens by")
    p.add_argument("--model", metavar="M", help="model name or local folder (overrides the policy)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="pairs per forward batch (default 8)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of excluding it")
    p.set_defaults(func=run)
    return p


def _fail(message: str, code: int = 1) -> int:
    print(f"ethos audit: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """``ethos audit``: 0 ok, 1 error (bad policy, data, model, SAE), 2 usage."""
    from ethos.compiler.compile import compile_file, plan_for_concepts
    from ethos.compiler.errors import render_all

    from .data import DataError, load_pairs
    from .featurize import FeaturizeError, featurize
    from .io import atomic_write_text
    from .lenses import LensError
    from .model import ModelError
    from .report import print_audit_summary, render_audit_html, render_audit_markdown

    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be a positive integer", 2)
    if args.n_boot < 0:
        return _fail("--n-boot must be 0 or more", 2)
    if not 0 < args.q_max < 1:
        return _fail("--q-max must be between 0 and 1", 2)
    if args.batch_size < 1:
        return _fail("--batch-size must be at least 1", 2)
    t0 = time.perf_counter()
    if args.policy:
        result = compile_file(args.policy)
    else:
        if args.concepts is not None:
            names = [n.strip() for n in args.concepts.split(",") if n.strip()]
            if not names:
                return _fail("--concepts needs at least one concept name", 2)
        else:
            from ethos.compiler.resolve import load_library

            names = sorted(load_library().concepts)
        result = plan_for_concepts(names)
    if result.plan is None:
        print(render_all(result.diagnostics), file=sys.stderr)
        return 1
    plan = result.plan
    model_name = args.model or plan.model.name
    sae_name = plan.sae.name
    if args.discover:
        try:
            from .lenses.features import resolve_sae

            resolve_sae(sae_name)
        except LensError as exc:
            return _fail(f"--discover needs an SAE: {exc}")
    try:
        data = load_pairs(args.data, limit=args.limit, strict=args.strict)
        if not data.pairs:
            return _fail("no usable pairs in the data" + (f" ({data.counts()['excluded']})" if data.counts()["excluded"] else ""))
        table = featurize(plan, data, batch_size=args.batch_size, progress=not args.json and sys.stderr.isatty(),
                          model=args.model)
        latents = labels = None
        acts = None
        if args.discover:
            acts, (sae, model_obj, tokenizer) = latent_activations(
                data.pairs, sae_name, model=model_name, layer=plan.model.layer, pool=args.pool,
                batch_size=args.batch_size, progress=not args.json and sys.stderr.isatty())
            latents = (acts.chosen, acts.rejected)
            labels = {
                "snippets": snippet_finder(acts.chosen, acts.rejected, [p.chosen for p in data.pairs],
                                           [p.rejected for p in data.pairs],
                                           window=token_window_finder(acts, tokenizer)),
                "tokens": promoted_token_finder(sae, model_obj, tokenizer),
                "q_max": args.q_max,
                "pool": args.pool,
            }
        audit = audit_scores(
            table, [c.name for c in plan.concepts], seed=args.seed, n_boot=args.n_boot, latents=latents,
            discover_options=labels, rows=data.counts(), lenses={c.name: c.lens_text() for c in plan.concepts},
        )
    except KeyboardInterrupt:
        print("ethos audit: interrupted; finished featurize batches are cached, rerun to resume", file=sys.stderr)
        return 130
    except (DataError, LensError, ModelError, FeaturizeError, AuditError, OSError) as exc:
        return _fail(str(exc))
    audit.source = {
        "data": str(args.data) if args.data else "embedded hh-rlhf helpful-base sample (400 rows)",
        "fingerprint": data.fingerprint,
        "policy": str(args.policy) if args.policy else None,
        "concepts": "policy" if args.policy else ("--concepts" if args.concepts is not None else "library"),
        "model": model_name if (acts is not None or table.attrs.get("ethos", {}).get("model")) else None,
        "layer": acts.layer if acts is not None else table.attrs.get("ethos", {}).get("layer"),
        "sae": sae_name if acts is not None else None,
        "limit": args.limit,
    }
    audit.settings["seconds"] = round(time.perf_counter() - t0, 3)
    doc = audit.to_dict()
    out = Path(args.out) if args.out else DEFAULT_OUT
    written = {"json": out / "audit.json", "markdown": out / "audit.md", "html": out / "audit.html"}
    draft_text = None
    if args.emit_policy:
        draft_path = Path(args.emit_policy)
        draft_text = draft_policy(doc, plan, draft_path=draft_path)
        from ethos.compiler.compile import compile_source

        check = compile_source(draft_text, str(draft_path))
        if check.plan is None:  # a bug in draft_policy: say so rather than write a broken file
            print(render_all(check.diagnostics), file=sys.stderr)
            return _fail("internal: the draft policy does not compile")
        written["policy"] = draft_path
    doc["outputs"] = {k: str(v) for k, v in written.items()}
    try:
        atomic_write_text(written["json"], json.dumps(doc, indent=2, allow_nan=False) + "\n")
        atomic_write_text(written["markdown"], render_audit_markdown(doc))
        atomic_write_text(written["html"], render_audit_html(doc))
        if draft_text is not None:
            atomic_write_text(written["policy"], draft_text)
    except OSError as exc:
        return _fail(f"cannot write the outputs: {exc}")
    if args.json:
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        print_audit_summary(doc)
        print("wrote " + ", ".join(str(v) for v in written.values()))
    return 0

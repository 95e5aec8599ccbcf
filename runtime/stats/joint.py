"""The joint Bradley–Terry fit of the preference on every concept's standardised difference.

A Bradley–Terry logistic model of the preference on all concepts' z, without intercept
(:func:`joint`). The symmetrised data ((z, 1) and (−z, 0) per pair) has exactly twice the
log-likelihood of Σ_i log σ(α·z_i), so the MLE is computed from the latter by Newton's method and
its Wald covariance is the inverse Hessian of the latter (the naive symmetrised SEs are too small
by √2). With per-pair weights the covariance is the sandwich (robust) estimate. Separation
(:func:`separating_columns`), constant and collinear concepts are detected and reported, never
raised. :func:`correlated_pairs` flags concepts whose z move together. Pure numpy/scipy: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special as sps_special
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, hstack, identity

from .marginal import MIN_PAIRS, Z_LEVEL

CORR_THRESHOLD = 0.7  # |r| of two concepts' z above which they are flagged as correlated
SATURATED = 30.0  # a fitted pair margin |α·z| beyond this (σ = 1 − 1e-13) suggests separation


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
    n, c = z.shape
    if n == 0 or c == 0:
        return np.array([], dtype=int)
    scale = np.abs(z).max(axis=0)
    scale[scale == 0] = 1.0
    zs = z / scale
    # variables: alpha (c), s (n); minimise -Σ s; constraints  -zs·α + s ≤ 0
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


def firth(z: np.ndarray, weights: np.ndarray | None = None, *, offset: np.ndarray | float = 0.0,
          max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, bool]:
    """Firth's penalised estimate of the Bradley–Terry coefficients: the maximum of
    Σ w log σ(z·α + o) + ½ log det I(α), I = zᵀ diag(w σ(1 − σ)) z (Jeffreys' prior; Firth 1993,
    Heinze & Schemper 2002). Unlike the MLE it is finite under separation, where the data say only
    "large". ``(alpha, se, converged)``: SEs from I⁻¹ at the estimate (Wald). Newton steps on the
    modified score Σ_i [w_i (1 − σ_i) + h_i (½ − σ_i)] z_i (h: the leverages), halved until the
    penalised log-likelihood does not fall."""
    z = np.asarray(z, dtype=float)
    n, c = z.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)

    def parts(a: np.ndarray):
        s = _sigmoid(z @ a + offset)
        info = _weighted_gram(z, w * s * (1.0 - s))
        sign, logdet = np.linalg.slogdet(info)
        pll = float(w @ _log_sigmoid(z @ a + offset)) + (0.5 * logdet if sign > 0 else -np.inf)
        return s, info, pll

    # start where the offset's margins are cancelled (α = 0 without one): the penalised
    # log-likelihood is not concave, and from a start the offset pushes far off, Newton can run away
    off = np.broadcast_to(np.asarray(offset, dtype=float), (n,))
    alpha = np.linalg.lstsq(z, -off, rcond=None)[0] if np.any(off) else np.zeros(c)
    s, info, pll = parts(alpha)
    converged = False
    for _ in range(max_iter):
        try:
            inv = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            inv = np.linalg.pinv(info)
        root = np.sqrt(w * s * (1.0 - s))
        h = np.einsum("ij,jk,ik->i", z * root[:, None], inv, z * root[:, None])  # leverages
        step = inv @ (z.T @ (w * (1.0 - s) + h * (0.5 - s)))
        if not np.all(np.isfinite(step)):
            break
        if np.max(np.abs(step), initial=0.0) < 1e-8 * (1.0 + np.max(np.abs(alpha), initial=0.0)):
            converged = True
            break
        t = 1.0
        while t > 1e-8:
            new = alpha + t * step
            s_new, info_new, pll_new = parts(new)
            if pll_new >= pll - 1e-12 * (1 + abs(pll)):
                break
            t /= 2
        else:
            break
        alpha, s, info, pll = new, s_new, info_new, pll_new
    try:
        se = np.sqrt(np.maximum(np.diag(np.linalg.inv(info)), 0.0))
    except np.linalg.LinAlgError:
        se = np.full(c, np.nan)
    return alpha, se, converged


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
    fit.lo[active] = alpha - Z_LEVEL * se
    fit.hi[active] = alpha + Z_LEVEL * se
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


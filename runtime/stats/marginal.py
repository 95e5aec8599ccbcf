"""Marginal statistics of paired differences, one column (concept or latent) at a time.

For pair i and column c, Δ_ic = s_c(chosen_i) − s_c(rejected_i). Per column (:func:`marginal`):
mean Δ; Cohen's d = mean Δ / sd(Δ) with a 95% percentile bootstrap CI (pairs resampled); win
rate P(Δ > 0 | Δ ≠ 0) with an exact two-sided sign test; split-half sign stability. Multiple
testing (:func:`bh`): Benjamini–Hochberg q-values over every hypothesis tested in one run.
Everything is vectorised over columns; nothing loops per pair or per column in Python. Pure
numpy/scipy: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

MIN_PAIRS = 10  # fewer usable pairs than this: no statistics, a note instead
N_BOOT = 2000  # bootstrap resamples for the CI of d
SPLITS = 50  # random half-splits behind split_half_agreement
MAX_BOOT_CELLS = 20_000_000  # n_pairs × n_boot above this: the normal-approximation CI of d instead
MAX_SPLIT_CELLS = 5_000_000  # n_pairs × random half-splits for split_half_agreement (at least 2 splits)
LEVEL = 0.95  # the confidence level of every interval
Z_LEVEL = float(sps.norm.ppf(0.5 + LEVEL / 2))  # the normal quantile of a two-sided LEVEL interval


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
        lo, hi = d - Z_LEVEL * se, d + Z_LEVEL * se
        ci_method = "normal approximation (n × resamples too large to bootstrap)"
    else:
        lo, hi = np.full(c, np.nan), np.full(c, np.nan)
    splits = max(2, min(splits, MAX_SPLIT_CELLS // max(n, 1)))
    stable, agreement = split_half(delta, w, splits=splits, seed=seed + 1)
    return Marginal(n, mean, sd, d, lo, hi, n_pos, n_neg, win, p, stable, agreement, test, ci_method)



def covariate_adjusted_d(
    delta: np.ndarray, covariate: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """How much of each column's d a covariate's difference explains (e.g. length).

    Per column c, the (weighted) least-squares line Δ_c ≈ a_c + b_c·Δ_x over pairs, Δ_x the
    covariate's difference (chosen − rejected). a_c is the mean difference expected in a pair
    whose two replies do not differ in the covariate; the adjusted d is a_c / sd(Δ_c) (the same
    denominator as d) and the explained fraction 1 − a_c / mean Δ_c = b_c·mean Δ_x / mean Δ_c
    (NaN where mean Δ_c or sd(Δ_c) is 0, or Δ_x does not vary). Returns ``(d_adjusted, explained)``.
    """
    delta = np.asarray(delta, dtype=float)
    x = np.asarray(covariate, dtype=float)
    n, c = delta.shape
    nan = np.full(c, np.nan)
    if n < 3 or x.shape != (n,):
        return nan, nan.copy()
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    sw = w.sum()
    if not sw > 0:
        return nan, nan.copy()
    mx = float(w @ x) / sw
    my = (w @ delta) / sw
    vx = float(w @ (x - mx) ** 2)
    if not vx > 0:
        return nan, nan.copy()
    b = (w * (x - mx)) @ (delta - my) / vx
    a = my - b * mx
    sd = np.sqrt((w @ (delta - my) ** 2) / max(sw - (w * w).sum() / sw, 1e-300))
    with np.errstate(invalid="ignore", divide="ignore"):
        d_adj = np.where(sd > 0, a / np.where(sd > 0, sd, 1.0), np.nan)
        explained = np.where((my != 0) & (sd > 0), 1.0 - a / np.where(my != 0, my, 1.0), np.nan)
    return d_adj, explained

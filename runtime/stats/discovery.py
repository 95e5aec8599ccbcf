"""Discovery: the marginal statistics over every latent of an SAE, FDR-controlled, the survivors
grouped into candidate concepts by the correlation of their Δ across pairs and labelled through
caller-supplied callables (:func:`discover`). Pure numpy/scipy: no I/O; the labelers (snippets,
promoted tokens) are the caller's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from .holdout import NOT_SELECTION_BIASED, SELECTION_BIASED
from .marginal import MIN_PAIRS, N_BOOT, bh, marginal, sign_test

Q_MAX = 0.05  # discovery: a latent survives at q < Q_MAX

Labeler = Callable[[int], Sequence[str]]  # latent id -> label strings (snippets or tokens)
GroupLabeler = Callable[[Sequence[int]], Mapping[str, Any]]  # member latent ids -> {"text": str | None, ...}


def _f(x: Any) -> float:
    return float(x) if x is not None else float("nan")


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
    label: dict[str, Any] | None = None  # the contrastive n-gram label and its evidence (ethos.runtime.labels)
    heldout: dict[str, Any] | None = None  # statistics on held-out pairs (stats.holdout.replicate)
    replicated: bool | None = None  # held-out q < q_max with the same sign of d; None: not validated

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
    validation: dict[str, Any] | None = None  # held-out validation: fraction, pairs, how many replicated

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "d_sae": self.d_sae,
            "tested": self.tested,
            "survivors": len(self.survivors),
            "q_max": self.q_max,
            "pool": self.pool,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "columns": {
                "selection_biased": [*SELECTION_BIASED],
                "not_selection_biased": [*NOT_SELECTION_BIASED] if self.validation is not None else [],
                "why": "discovery picked these latents on the same pairs it describes them with"
                       + ("; heldout.* are measured on pairs set aside before discovery" if self.validation is not None
                          else "; --validate F sets pairs aside to test the candidates on"),
            },
        }
        if self.validation is not None:
            out["validation"] = self.validation
        return out


def _slug(text: str, limit: int = 20) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", text.lower().replace("'", "")).strip("_")
    return s[:limit].strip("_")


def candidate_name(rank: int, label: str | None, tokens: Sequence[str], used: Collection[str],
                   reserved: Collection[str] = ()) -> str:
    """A candidate's concept name: its label as an identifier (``hope this helps`` →
    ``hope_this_helps``), or ``found_<rank>_<first readable promoted token>`` without a label;
    ``found_`` in front of a label that starts with a digit; ``_<rank>`` (then ``_``) appended
    while the name is in ``used`` or ``reserved`` (library concepts, the audited concepts,
    keywords)."""
    slug = _slug(label, 40) if label else ""
    if slug:
        name = slug if not slug[0].isdigit() else f"found_{slug}"
        if name in used or name in reserved:
            name = f"{name}_{rank}"
    else:
        token = next((t for t in (_slug(t) for t in tokens) if t), "")
        name = f"found_{rank}" + (f"_{token}" if token else "")
    while name in used or name in reserved:
        name += "_"
    return name


def discover(
    chosen: np.ndarray,
    rejected: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    q_max: float = Q_MAX,
    extra_p: np.ndarray | None = None,
    snippets: Labeler | None = None,
    tokens: Labeler | None = None,
    label: GroupLabeler | None = None,
    reserved: Collection[str] = (),
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
    lens scores a concept). ``snippets``/``tokens`` label the strongest members; ``label``
    (member ids → ``{"text": ...}``, e.g. :func:`ethos.runtime.labels.candidate_labeler`) labels
    the candidate and names it (:func:`candidate_name`, avoiding the ``reserved`` names).
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
    groups = group_columns(delta[:, surv].astype(np.float64), d[surv], group_r) if len(surv) else []
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
        group_label = dict(label(members)) if label is not None else None
        name = candidate_name(rank, group_label.get("text") if group_label else None,
                              labels[str(members[0])]["tokens"], used, reserved)
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
            label=group_label,
        ))
    timings["candidates"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    return Discovery(d_sae, int(testable.sum()), surv.tolist(), candidates, d, p, q, extra_q, q_max, pool, timings)


def group_columns(delta: np.ndarray, d: np.ndarray, group_r: float) -> list[np.ndarray]:
    """Average-linkage clusters of columns on 1 − corr(Δ); opposite signs of d never merge."""
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


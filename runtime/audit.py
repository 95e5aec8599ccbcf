"""The audit: statistical hypotheses for what separates chosen from rejected replies.

The statistics themselves are pure and live in :mod:`ethos.runtime.stats` (standardisation,
marginal d / sign test / BH, the joint Bradley–Terry fit, discovery over SAE latents; see
docs/statistics.md). This module runs them on data and makes the audit document:

:func:`audit_scores`
    the whole audit of a featurize table (and, optionally, SAE latent matrices for discovery):
    a JSON-serialisable :class:`AuditResult` (``to_dict()`` is ``audit.json``, docs/audit.md).
:func:`audit_dataset`
    what ``ethos audit`` does: load the data, featurize the plan's concepts, read every SAE
    latent for discovery, audit, and record the sources.
:func:`latent_activations`, :func:`promoted_token_finder`
    every SAE latent of every reply through the model runtime (:mod:`ethos.runtime.sae`), and the
    tokens a latent promotes (discovery's ``tokens`` callable). The other labels — snippets and a
    candidate's contrastive n-gram label — are :mod:`ethos.runtime.labels` (``snippet_finder``
    and ``token_window_finder`` stay importable from here).

The draft policy written from an audit document is :mod:`ethos.runtime.draft`; the reports are
:mod:`ethos.runtime.report.audit`; the command line is :mod:`ethos.runtime.cli.audit`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ethos.compiler.compile import plan_for_concepts
from ethos.compiler.plan import Plan
from ethos.compiler.resolve import load_library

from .documents import AUDIT_FORMAT, clean
from .errors import EthosError
from .featurize import featurize
from .loading import load_data
from .labels import candidate_labeler, snippet_finder, token_window_finder
from .sae import SAEError, find_sae, load_sae, promoted_tokens, reply_latents, sae_layer, sae_runtime
from .settings import DataSettings
from .stats import (
    CORR_THRESHOLD,
    LEVEL,
    MIN_PAIRS,
    N_BOOT,
    Q_MAX,
    Q_REPLICATE,
    Candidate,
    Discovery,
    Labeler,
    bh,
    correlated_pairs,
    covariate_adjusted_d,
    discover,
    holdout_split,
    joint,
    marginal,
    replicate,
    standardise,
)

LENGTH_CONCEPT = "verbosity"  # the library concept whose score is a reply's length in tokens
LENGTH_METRICS = ("length", "words", "chars")  # an audited concept with one of these metrics measures length


class AuditError(EthosError):
    """An audit cannot proceed; the message is meant for the user."""


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
    # length (audit_scores' ``length``/``length_concept``; NaN without): the joint fit's α without and
    # with length among the covariates, and the part of d that the length difference explains
    alpha_without_length: float = float("nan")
    alpha_without_length_ci: list[float] = field(default_factory=lambda: [float("nan")] * 2)
    alpha_with_length: float = float("nan")
    alpha_with_length_ci: list[float] = field(default_factory=lambda: [float("nan")] * 2)
    d_length_adjusted: float = float("nan")  # d of the part of Δ not linear in Δ length
    length_explains: float = float("nan")  # 1 − d_length_adjusted / d


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
    length: dict[str, Any] | None = None  # the length covariate's own statistics (see audit_scores)
    topics: list[dict[str, Any]] | None = None  # the topic × concept table (ethos.runtime.topics), or None
    topic_clusters: dict[str, Any] | None = None  # the discovered clustering's lock entry (``--topics K``)

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
            "format": AUDIT_FORMAT,
            "source": self.source,
            "rows": self.rows,
            "pairs": self.n,
            "settings": self.settings,
            "concepts": [asdict(c) for c in self.concepts],
            "correlated": self.correlated,
            "joint": self.joint,
        }
        if self.length is not None:
            out["length"] = self.length
        out["notes"] = self.notes
        if self.discovery is not None:
            out["discovery"] = self.discovery.to_dict()
            out["candidates"] = [c.to_dict() for c in self.discovery.candidates]
        if self.topics is not None:
            out["topics"] = self.topics
            out["topic_clusters"] = self.topic_clusters
        return clean(out)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"


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
    holdout: np.ndarray | None = None,
    length: tuple[np.ndarray, np.ndarray] | None = None,
    length_concept: str | None = None,
) -> AuditResult:
    """Audit a featurize table (``<concept>.chosen`` / ``<concept>.rejected`` columns).

    ``weights``: optional per-pair weights (a reweighted dataset, as the plan step produces);
    ``scale``: sd_c per concept to standardise with (default: the pooled unweighted sd of the
    table's own scores, so a weighted re-fit on the same table is on the same scale);
    ``latents``: (chosen, rejected) pooled SAE latent matrices for discovery (one BH family with
    the concepts), with ``discover_options`` passed to :func:`discover`; ``rows``: the loader's
    counts; ``lenses``: a description per concept for the report. Degenerate inputs (constant
    concepts, separation, missing scores, too few pairs) give NaN fields and notes, not errors.

    ``holdout``: a boolean mask over the table's rows (:func:`ethos.runtime.stats.holdout_split`);
    discovery then runs on the other pairs only and every candidate is tested again on the
    held-out pairs (:func:`ethos.runtime.stats.replicate`); the concepts are audited on all pairs.

    Length (docs/statistics.md § Length): ``length_concept`` names the audited concept that scores
    length (the joint fit has it already: each concept's α *without* length is a second fit
    without it), or ``length`` gives the (chosen, rejected) length scores per row (then each
    concept's α *with* length is a second fit with length's z as a covariate). Either way every
    concept gets both α's and the part of its d that the length difference explains, and the
    result's ``length`` block the covariate's own d and α. Without either, those fields are NaN.
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
    std = standardise(sc, sr, None if scale is None else [float(scale[k]) for k in concepts])
    delta, sd_c, z = std.delta, std.scale, std.z
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
        discovery = _discover(latents, finite, w, p, holdout, seed=seed, n_boot=n_boot, min_pairs=min_pairs,
                              options=dict(discover_options or {}), reserved=concepts)
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
        if discovery.validation is not None:
            settings["validate"] = discovery.validation["fraction"]
    length_info = None
    if (length is not None or length_concept is not None) and not too_few:
        length_info = _length_effects(out, concepts, z, delta, sd_c, fit, w, finite, length, length_concept,
                                      min_pairs=min_pairs)
        length_info["lens"] = (lenses or {}).get(length_concept, "") if length_concept else "metric length"
    return AuditResult(
        rows=dict(rows) if rows is not None else {"input": n_all, "usable": n_all, "excluded": {}},
        n=n, concepts=out, correlated=correlated, joint=joint_info, settings=settings,
        notes=notes, discovery=discovery, length=length_info,
    )


@functools.cache
def keywords() -> frozenset[str]:
    """Every word of the policy language (the quoted words of ``compiler/grammar.lark``): no
    candidate is named after one."""
    import ethos.compiler

    grammar = (Path(ethos.compiler.__file__).parent / "grammar.lark").read_text(encoding="utf-8")
    return frozenset(re.findall(r'"([A-Za-z_]+)"', grammar))


def _discover(latents: tuple[np.ndarray, np.ndarray], finite: np.ndarray, w: np.ndarray | None, p: np.ndarray,
              holdout: np.ndarray | None, *, seed: int, n_boot: int, min_pairs: int, options: dict[str, Any],
              reserved: Sequence[str]) -> Discovery:
    """Discovery on the pairs with every score (``finite``), less the ``holdout`` ones, in one BH
    family with the concepts' p-values ``p``; then each candidate tested on the held-out pairs."""
    lc, lr = np.asarray(latents[0]), np.asarray(latents[1])
    if len(lc) != len(finite) or len(lr) != len(finite):
        raise ValueError(f"latent matrices have {len(lc)} rows for {len(finite)} pairs")
    options["reserved"] = keywords() | set(reserved) | set(options.get("reserved", ()))
    lc, lr = lc[finite], lr[finite]
    if holdout is None:
        return discover(lc, lr, weights=w, extra_p=p, seed=seed, n_boot=n_boot, **options)
    held = np.asarray(holdout, dtype=bool)
    if held.shape != finite.shape:
        raise ValueError(f"the holdout mask has {held.shape} entries for {len(finite)} pairs")
    held = held[finite]
    found = discover(lc[~held], lr[~held], weights=None if w is None else w[~held], extra_p=p, seed=seed,
                     n_boot=n_boot, **options)
    cands = found.candidates
    checks = replicate([c.features for c in cands], [c.d for c in cands], lc[held], lr[held],
                       weights=None if w is None else w[held], q_max=Q_REPLICATE, n_boot=n_boot, seed=seed,
                       min_pairs=min_pairs)
    for cand, check in zip(cands, checks):
        cand.replicated = check.pop("replicated")
        cand.heldout = check
    found.validation = {
        "fraction": round(float(held.mean()), 4) if len(held) else 0.0,
        "discovery_pairs": int((~held).sum()),
        "heldout_pairs": int(held.sum()),
        "candidates_tested": int(sum(bool(np.isfinite(c.heldout["p"])) for c in cands if c.heldout)),
        "replicated": int(sum(bool(c.replicated) for c in cands)),
        "test": f"exact two-sided sign test of each candidate's score on the held-out pairs, BH over the candidates; "
                f"replicated: q < {Q_REPLICATE} and d of the same sign as on the discovery pairs",
    }
    return found


def _length_effects(out: list[ConceptStats], concepts: list[str], z: np.ndarray, delta: np.ndarray, sd_c: np.ndarray,
                    fit: Any, w: np.ndarray | None, finite: np.ndarray, length: tuple[np.ndarray, np.ndarray] | None,
                    length_concept: str | None, *, min_pairs: int) -> dict[str, Any]:
    """Each concept's α without and with length in the joint fit, and the part of its d that the
    length difference explains (:func:`ethos.runtime.stats.covariate_adjusted_d`); the length
    covariate's own d and α. ``fit`` is the concepts' joint fit (over the varying concepts); the
    second fit takes only the concepts that one could fit (not those it left out for separation
    or collinearity), plus or minus length."""
    varying = [j for j in range(len(concepts)) if sd_c[j] > 0]
    fitted = [j for k, j in enumerate(varying) if np.isfinite(fit.alpha[k])]
    if length_concept is not None:
        if length_concept not in concepts:
            raise KeyError(f"the length concept {length_concept!r} is not audited")
        lj = concepts.index(length_concept)
        d_len = delta[:, lj]
        others = [j for j in fitted if j != lj]
        with_fit = fit
        with_cols = varying
        without = joint(z[:, others], w, names=[concepts[j] for j in others], min_pairs=min_pairs)
        without_cols = others
        k_len = varying.index(lj) if lj in varying else None
        source = {"source": "concept", "concept": length_concept}
    else:
        assert length is not None
        ls = standardise(np.asarray(length[0], float)[finite, None], np.asarray(length[1], float)[finite, None])
        d_len = ls.delta[:, 0]
        with_fit = joint(np.column_stack([z[:, fitted], ls.z[:, 0]]), w,
                         names=[concepts[j] for j in fitted] + ["length"], min_pairs=min_pairs)
        with_cols = fitted + [-1]
        without, without_cols = fit, varying
        k_len = len(fitted)
        lj = None
        source = {"source": "covariate", "concept": None}
    d_adj, explained = covariate_adjusted_d(delta, np.where(np.isfinite(d_len), d_len, 0.0), w)
    for j, cs in enumerate(out):
        if j in with_cols:
            k = with_cols.index(j)
            cs.alpha_with_length = _f(with_fit.alpha[k])
            cs.alpha_with_length_ci = [_f(with_fit.lo[k]), _f(with_fit.hi[k])]
        if j in without_cols:
            k = without_cols.index(j)
            cs.alpha_without_length = _f(without.alpha[k])
            cs.alpha_without_length_ci = [_f(without.lo[k]), _f(without.hi[k])]
        if j != lj and sd_c[j] > 0:
            cs.d_length_adjusted, cs.length_explains = _f(d_adj[j]), _f(explained[j])
    mg = marginal(d_len[:, None], w, n_boot=0) if len(d_len) else None
    return {
        **source,
        "lens": "",
        "d": _f(mg.d[0]) if mg is not None else float("nan"),
        "mean_delta": _f(mg.mean_delta[0]) if mg is not None else float("nan"),
        "alpha": _f(with_fit.alpha[k_len]) if k_len is not None else float("nan"),
        "alpha_ci": [_f(with_fit.lo[k_len]), _f(with_fit.hi[k_len])] if k_len is not None else [float("nan")] * 2,
        "pseudo_r2_with": with_fit.pseudo_r2,
        "pseudo_r2_without": without.pseudo_r2,
        "note": with_fit.notes[k_len] if k_len is not None else "length does not vary",
    }


# ---------------------------------------------------------------------------------------------
# SAE latents for discovery, and their labels


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

    def take(self, idx: np.ndarray) -> LatentActivations:
        """The activations of pairs ``idx`` (e.g. the discovery pairs of a held-out split)."""
        idx = np.asarray(idx)
        return LatentActivations(self.chosen[idx], self.rejected[idx], self.peak_chosen[idx], self.peak_rejected[idx],
                                 [self.tokens_chosen[i] for i in idx], [self.tokens_rejected[i] for i in idx],
                                 self.d_sae, self.layer, self.sae, self.pool, self.seconds)


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
    if pool not in ("max", "mean"):
        raise AuditError(f"pool must be 'max' or 'mean', not {pool!r}")
    t0 = time.perf_counter()
    try:
        sae = load_sae(sae_name)
        reads = sae_layer(sae)
        if layer is not None and reads is not None and layer != reads:
            raise AuditError(f"the SAE reads layer {reads} but layer {layer} was asked for")
        runtime = sae_runtime(sae, model, batch_size=batch_size)
        got = reply_latents(sae, runtime, pairs, peaks=True, progress=progress)
    except SAEError as exc:
        raise AuditError(f"SAE '{sae_name}': {exc}") from None
    pooled = got.max if pool == "max" else got.mean
    assert got.peak is not None and got.tokens is not None
    acts = LatentActivations(pooled[0], pooled[1], got.peak[0], got.peak[1], got.tokens[0], got.tokens[1],
                             sae.cfg.d_sae, runtime.layer, sae_name, pool, time.perf_counter() - t0)
    return acts, (sae, runtime.encoder.model, runtime.tokenizer)


def promoted_token_finder(sae: Any, model: Any, tokenizer: Any, *, k: int = 8) -> Labeler:
    """The tokens a latent promotes: its decoder row, through the final norm's gain and the
    unembedding (the logit lens of the direction), top ``k`` readable ones
    (:func:`ethos.runtime.sae.promoted_tokens`)."""

    def find(latent: int) -> list[str]:
        return promoted_tokens(sae, model, tokenizer, [latent], k, readable=True)[latent]

    return find


# ---------------------------------------------------------------------------------------------
# The audit of a dataset

def audit_dataset(
    plan: Plan,
    data: DataSettings | None = None,
    *,
    model: str | None = None,
    discover: bool = False,
    pool: str = "max",
    q_max: float = Q_MAX,
    n_boot: int = N_BOOT,
    progress: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    policy: str | None = None,
    concepts_from: str = "policy",
    validate: float | None = None,
    length: bool = True,
    topics: int | None = None,
    topic_features: str = "model",
) -> AuditResult:
    """Audit the concepts of ``plan`` on a preference dataset: what ``ethos audit`` computes.

    Loads the pairs ``data`` names (default: the embedded hh-rlhf sample; its ``limit``,
    ``strict``, ``batch_size`` and ``seed`` — the bootstrap's and the split halves'), featurizes
    the plan's concepts (``model`` overrides the plan's model; scores cached under ``cache_dir``,
    default ``$ETHOS_CACHE``) and runs :func:`audit_scores` with ``n_boot`` resamples. With
    ``discover`` it also reads every latent of the plan's SAE (``pool``-pooled over each reply's
    tokens), tests them in one BH family with the concepts at ``q_max`` and labels the
    candidates with snippets, promoted tokens and contrastive n-grams (:mod:`ethos.runtime.labels`,
    which name them). ``validate`` (a fraction in (0, 1), with ``discover``) sets that fraction of
    the pairs aside (seeded with ``data.seed``), discovers on the rest and tests every candidate on
    the held-out pairs. ``length``: fit length (the ``verbosity`` metric: tokens of the model's
    tokenizer) as a covariate, or use the plan's own length concept, and report each concept's α
    with and without it (:func:`audit_scores`); when the tokenizer cannot be loaded the audit goes
    on without it, with a note. ``policy`` (the policy file) and
    ``concepts_from`` (``"policy"``, ``"--concepts"`` or ``"library"``: where the concepts came
    from) are recorded in the document's ``source``, with the data, its fingerprint, the model,
    layer and SAE.

    Topics (docs/topics.md): ``topics`` (K ≥ 2) splits the pairs into K discovered topics
    ``t0`` … (a seeded k-means of the prompts over ``topic_features``: ``"model"``, the pooled
    prompt activations, or ``"tfidf"``); they and the plan's own topic definitions get a topic ×
    concept table (:func:`ethos.runtime.topics.topic_concept_table`) in ``result.topics`` and the
    clustering's lock entry in ``result.topic_clusters``.

    Raises :class:`AuditError` (no usable pairs, no SAE for discovery, an SAE that does not fit
    the model) and the loaders' errors (DataError, LensError, ModelError, FeaturizeError), all
    :class:`~ethos.runtime.errors.EthosError`.
    """
    t0 = time.perf_counter()
    data = data if data is not None else DataSettings()
    model_name = model or plan.model.name
    sae_name = plan.sae.name
    if validate is not None and not discover:
        raise AuditError("--validate needs --discover: it holds pairs out of discovery")
    if validate is not None and not 0.0 < validate < 1.0:
        raise AuditError(f"--validate must be a fraction between 0 and 1, not {validate}")
    if discover:
        try:
            find_sae(sae_name)
        except SAEError as exc:
            raise AuditError(f"--discover needs an SAE: {exc}") from None
    if topics is not None and topics < 2:
        raise AuditError(f"--topics must be at least 2, not {topics}")
    loaded = load_data(data, "audit")
    table = featurize(plan, loaded, cache_dir=cache_dir, batch_size=data.batch_size, progress=progress, model=model)
    length_concept = next((c.name for m in LENGTH_METRICS for c in plan.concepts
                           if c.lens.kind == "metric" and c.lens.metric == m), None)
    length_scores, length_setting, length_note = None, "off", None
    if length and length_concept is not None:
        length_setting = f"the audited concept {length_concept} ({plan.concept(length_concept).lens_text()})"
    elif length:
        length_scores, length_setting, length_note = _length_scores(loaded, table, model_name, cache_dir,
                                                                    data.batch_size)
    latents = options = acts = holdout = None
    if discover:
        acts, (sae, model_obj, tokenizer) = latent_activations(
            loaded.pairs, sae_name, model=model_name, layer=plan.model.layer, pool=pool,
            batch_size=data.batch_size, progress=progress)
        latents = (acts.chosen, acts.rejected)
        holdout = holdout_split(len(loaded.pairs), validate, data.seed) if validate is not None else None
        idx = np.flatnonzero(~holdout) if holdout is not None else np.arange(len(loaded.pairs))
        found = acts.take(idx)
        texts_c, texts_r = [loaded.pairs[i].chosen for i in idx], [loaded.pairs[i].rejected for i in idx]
        options = {
            "snippets": snippet_finder(found.chosen, found.rejected, texts_c, texts_r,
                                       window=token_window_finder(found, tokenizer)),
            "tokens": promoted_token_finder(sae, model_obj, tokenizer),
            "label": candidate_labeler(found.chosen, found.rejected, texts_c, texts_r, seed=data.seed),
            "reserved": set(load_library().concepts),
            "q_max": q_max,
            "pool": pool,
        }
    result = audit_scores(
        table, [c.name for c in plan.concepts], seed=data.seed, n_boot=n_boot, latents=latents,
        discover_options=options, rows=loaded.counts(), lenses={c.name: c.lens_text() for c in plan.concepts},
        holdout=holdout, length=length_scores, length_concept=length_concept if length else None,
    )
    result.settings["length_covariate"] = length_setting
    if topics or plan.topics:
        from .topics import audit_topics

        result.topics, result.topic_clusters = audit_topics(plan, loaded.pairs, table, topics, features=topic_features,
                                                            model=model_name, seed=data.seed,
                                                            batch_size=data.batch_size, n_boot=n_boot)
    if length_note:
        result.notes.append(length_note)
    featurized = table.attrs.get("ethos", {})
    result.source = {
        "data": data.source,
        "fingerprint": loaded.fingerprint,
        "policy": str(policy) if policy else None,
        "concepts": concepts_from,
        "model": model_name if (acts is not None or featurized.get("model")) else None,
        "layer": acts.layer if acts is not None else featurized.get("layer"),
        "sae": sae_name if acts is not None else None,
        "limit": data.limit,
    }
    result.settings["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _length_scores(loaded: Any, table: Any, model: str, cache_dir: Any, batch_size: int
                   ) -> tuple[tuple[np.ndarray, np.ndarray] | None, str, str | None]:
    """The replies' lengths in tokens (the library's ``verbosity``: metric length), featurized
    like any concept (cached), in the rows of ``table``; or None and a note when the model's
    tokenizer cannot be loaded."""
    compiled = plan_for_concepts([LENGTH_CONCEPT])
    assert compiled.plan is not None, compiled.diagnostics
    try:
        scores = featurize(compiled.plan, loaded, cache_dir=cache_dir, batch_size=batch_size, progress=False,
                           model=model)
    except EthosError as exc:
        return None, "unavailable", f"length is not fitted as a covariate: {exc}"
    if list(scores["id"]) != list(table["id"]):
        raise AuditError("internal: the length scores are not in the rows of the concept scores")
    lengths = (scores[f"{LENGTH_CONCEPT}.chosen"].to_numpy(dtype=float),
               scores[f"{LENGTH_CONCEPT}.rejected"].to_numpy(dtype=float))
    return lengths, f"{LENGTH_CONCEPT} (metric length: tokens of {model}), as a covariate", None

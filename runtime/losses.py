"""The preference losses ethos can shape, as functions of one margin (docs/protocols.md).

A plan shapes training through two per-pair numbers (``ethos apply``'s dataset): a weight ``w_i``
and a margin offset ``o_i`` (in logits of the Bradley–Terry model: how much of the pair's
preference the concepts shaped ``via loss`` account for). Both carry over to every loss whose
per-pair term is a function ``f`` of one margin ``m_i`` in those units:

    L = (1/n) Σ_i w_i · f(m_i + o_i)

With ``w ≡ 1`` and ``o ≡ 0`` each ``f`` below is exactly trl 1.16's ``DPOTrainer`` loss of the
same name (``_compute_loss``; the trainer checks the equality on every step). Let
``Δ_i = (log π − log π_ref)(y⁺) − (log π − log π_ref)(y⁻)`` (summed log-probabilities), ``Δ̄_i``
the same with each reply's log-ratio divided by its number of completion tokens, and ``ℓ̄`` the
mean token log-probability of a reply under the policy alone:

========================  ===================  ==============================================================
loss                      margin m             f(m)
========================  ===================  ==============================================================
``sigmoid`` (DPO)         β·Δ                  −log σ(m)
``hinge`` (SLiC)          β·Δ                  max(0, 1 − m)
``ipo``                   β·Δ̄                  (m − ½)² / β²  (= (Δ̄ − 1/(2β))², trl's IPO)
``sigmoid_norm``          β·Δ̄                  −log σ(m)
``robust`` (rDPO)         β·Δ                  (−(1−ε)·log σ(m) + ε·log σ(−m)) / (1 − 2ε)
``exo_pair``              β·Δ                  σ(m)(log σ(m) − log(1−ε)) + σ(−m)(log σ(−m) − log ε)
``discopop``              β·Δ                  −log σ(m)·(1 − σ(m/τ)) + e^(−m)·σ(m/τ)
``simpo``                 β·(ℓ̄⁺ − ℓ̄⁻)         −log σ(m − γ)  (reference-free)
========================  ===================  ==============================================================

``simpo`` is not a ``DPOTrainer`` loss type in trl 1.16 (trl ships SimPO only in the unstable
``trl.experimental.cpo``); ethos runs it through ``DPOTrainer``'s ``sigmoid_norm`` with the
reference log-probabilities fixed at 0 (``precompute_ref_log_probs`` and the public
``compute_ref_log_probs`` hook), which is SimPO with γ = 0, and adds −γ to every margin.

The other trl loss types are refused with the reason (:data:`REFUSED`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UsageError


@dataclass(frozen=True)
class LossInfo:
    """One shapeable loss: its trl loss type, how its margin is made, and its per-pair function."""

    name: str
    trl_type: str  # the DPOConfig loss_type trl runs
    length_normalised: bool  # the margin uses per-token means (Δ̄, ℓ̄)
    reference_free: bool = False  # the reference log-probabilities are fixed at 0
    needs_smoothing: bool = False  # needs 0 < label_smoothing < 0.5


LOSSES: dict[str, LossInfo] = {
    "sigmoid": LossInfo("sigmoid", "sigmoid", False),
    "hinge": LossInfo("hinge", "hinge", False),
    "ipo": LossInfo("ipo", "ipo", True),
    "sigmoid_norm": LossInfo("sigmoid_norm", "sigmoid_norm", True),
    "robust": LossInfo("robust", "robust", False),
    "exo_pair": LossInfo("exo_pair", "exo_pair", False, needs_smoothing=True),
    "discopop": LossInfo("discopop", "discopop", False),
    "simpo": LossInfo("simpo", "sigmoid_norm", True, reference_free=True),
}

_SEPARATE = ("its per-pair loss depends on the chosen and the rejected log-ratio separately (each against an "
             "absolute anchor), not only on their difference, so there is no single margin for an offset to shift")
REFUSED: dict[str, str] = {
    "nca_pair": _SEPARATE,
    "bco_pair": _SEPARATE,
    "sppo_hard": _SEPARATE,
    "apo_zero": _SEPARATE,
    "apo_down": _SEPARATE,
    "aot": "it sorts the batch's log-ratios before pairing them, so a pair's loss term is no longer its own and its "
           "weight and offset cannot follow it",
    "aot_unpaired": "it sorts the chosen and the rejected log-ratios separately before pairing them, so a term "
                    "belongs to no pair and a pair's weight and offset cannot follow it",
    "sft": "it has no preference margin (the chosen reply's negative log-likelihood only)",
    "kto": "KTO is unpaired: each reply is scored alone against a batch-level reference point (a KL estimate), "
           "so there is no pair margin for the offset to shift (a weight could be split over the two replies, but "
           "`via loss`, also the protocol of every rule without `via`, would be silently lost)",
    "orpo": "ORPO adds the chosen reply's negative log-likelihood, which is not a function of the margin; its "
            "odds-ratio term is (the offset would enter as −λ·log σ(log-odds ratio + o)), but trl 1.16 ships ORPO "
            "only in the unstable trl.experimental, whose API may change in any release",
}


def check_loss(name: str, *, label_smoothing: float = 0.0) -> LossInfo:
    """The :class:`LossInfo` of ``name``; a usage error (exit 2) naming the supported losses
    otherwise, with the reason when ethos refuses a loss trl knows."""
    info = LOSSES.get(name)
    supported = ", ".join(LOSSES)
    if info is None:
        why = REFUSED.get(name)
        if why:
            raise UsageError(f"--loss {name}: ethos cannot shape it: {why}. Supported: {supported}")
        raise UsageError(f"--loss {name}: unknown loss. Supported: {supported}")
    if not 0.0 <= label_smoothing < 0.5:
        raise UsageError(f"--label-smoothing {label_smoothing}: must be in [0, 0.5)")
    if info.needs_smoothing and label_smoothing <= 0.0:
        raise UsageError(f"--loss {name} needs --label-smoothing ε with 0 < ε < 0.5 (it takes log ε)")
    return info


def margins(info: LossInfo, logps: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor,
            beta: float) -> torch.Tensor:
    """The per-pair margin m (logit units) of ``info``'s loss. ``logps``/``ref``: summed
    completion log-probabilities of the policy and the reference, chosen rows first (2n,);
    ``lengths``: completion tokens per row (2n,) as trl counts them for length normalisation."""
    scores = logps - ref  # reverse KL: the log-ratio (ref is 0 for a reference-free loss)
    if info.length_normalised:
        scores = scores / lengths.to(scores.dtype).clamp(min=1.0)
    chosen, rejected = scores.chunk(2, dim=0)
    return beta * (chosen - rejected)


def per_pair(info: LossInfo, m: torch.Tensor, *, beta: float, label_smoothing: float = 0.0,
             discopop_tau: float = 0.05, simpo_gamma: float = 0.0) -> torch.Tensor:
    """``f(m)`` per pair (module docstring). Pass ``m + o`` for the shaped loss."""
    name, eps = info.name, label_smoothing
    if name in ("sigmoid", "sigmoid_norm"):
        return -F.logsigmoid(m)
    if name == "simpo":
        return -F.logsigmoid(m - simpo_gamma)
    if name == "hinge":
        return torch.relu(1 - m)
    if name == "ipo":
        return (m / beta - 1 / (2 * beta)) ** 2
    if name == "robust":
        return (-(1 - eps) * F.logsigmoid(m) + eps * F.logsigmoid(-m)) / (1 - 2 * eps)
    if name == "exo_pair":
        return (torch.sigmoid(m) * (F.logsigmoid(m) - math.log1p(-eps))
                + torch.sigmoid(-m) * (F.logsigmoid(-m) - math.log(eps)))
    if name == "discopop":
        mod = torch.sigmoid(m / discopop_tau)
        return -F.logsigmoid(m) * (1 - mod) + torch.exp(-m) * mod
    raise ValueError(f"no per-pair loss for {name!r}")

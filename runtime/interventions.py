"""Data and loss interventions: what a plan does to each pair, computed from the audit's fit.

Notation (DESIGN.md §4): for pair i and concept c, z_ic is the standardised score difference
(chosen − rejected), α_c the Bradley–Terry coefficient, and η_i = Σ_c α_c z_ic the fitted log-odds
that the chosen reply is preferred. A rule with factor k_c asks for η′_i = η_i + Σ_c (k_c − 1) α_c z_ic:
the same data, with concept c's contribution scaled by k_c. Each protocol realises η′ differently:

``data``
    importance weights w_i = σ(η′_i) / σ(η_i). An observed (oriented) pair has density
    q(z)·σ(η(z)); under the target it would be q(z)·σ(η′(z)); their ratio is w. Weights are
    clipped at ``clip`` × their median and self-normalised to mean 1; the effective sample size
    ESS = (Σw)² / Σw² is reported. With ``calibrate`` the shift is corrected until the weighted
    re-fit meets k·α on this data (see ``simulate``).

``filter``
    integer multiplicities instead of weights. Keeping each pair with probability w/max(w) would be
    exact but wasteful. Only the conditional preference P(chosen | z) has to become σ(η′), and
    for that it suffices that the multiplicity m satisfies m(z) / m(−z) = e^{η′−η} (η is odd in z).
    So under a block or dampen rule a pair is kept with probability min(1, e^{η′−η}) (only drops:
    about 85% of helpful-base pairs survive a verbosity block), and under an amplify rule it is
    repeated r = max(1, e^{η′−η}) times, ⌊r⌋ copies plus one more with probability r − ⌊r⌋ (only
    duplicates). Seeded and deterministic.

``relabel``
    swap chosen and rejected with probability s_i = max(0, 1 − σ(η′_i)/σ(η_i)): the pairs whose
    preference the concept decided are flipped just often enough that P(chosen | z) becomes
    σ(η′) (pairs with σ(η′) ≥ σ(η) are never swapped). Seeded and deterministic.

``inoculation "text"``
    the instruction is added to the training prompt of every pair whose chosen reply expresses the
    concept more than the rejected one (Δ > 0): where the data would teach it. Recorded per row;
    the data statistics do not change.

``loss``
    a per-pair margin offset o_i = Σ_c (1 − k_c) α_c z_ic for the DPO loss −log σ(h + o). A
    logistic fit with that offset learns η − o = η′, so its coefficient for c is k_c·α_c. When the
    same concept is also shaped by a data rule, the offset makes up only what the data left:
    Σ_c (a_c − k_c α_c) z_ic with a the coefficients re-fitted after the data stages (given
    ``calibrate``), so one factor realised by both protocols does not compound.

``ablation``, ``steering``, ``penalty``
    act on activations or the loss during training only; nothing changes in the data.

Stages run in the order relabel → filter → data → loss, each on the orientation the previous one
left; the final weight of a pair is its data weight times its filter multiplicity.

**Goals.** Every rule asks for a coefficient: its *goal* g_c. A factor rule (block, dampen, keep,
amplify, reverse) asks for g_c = k_c·α_c, a factor on what the data teaches; ``encourage`` and
``discourage`` ask for a coefficient of a chosen sign and size, whatever the data teaches
(``direction``·``size``, the size defaulting to the data's |α|; ``Intervention.target_for``). Everything above is written with the shift
g_c − α_c (= (k_c − 1)·α_c for a factor rule), so both kinds go through the same code, even where
α_c = 0; the factor a goal amounts to, k_c = g_c/α_c, is reported (:func:`resolved_factor`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import log_expit

from ethos.compiler.plan import Plan

from .errors import EthosError

REWEIGHT_TOLERANCE = 0.05  # |w − 1| below this counts as kept


@dataclass
class Simulation:
    """What a plan does to each usable pair (arrays aligned with the audit's pairs)."""

    names: list[str]
    weights: np.ndarray  # final training weight (data weight × filter multiplicity); 0 = dropped
    multiplicity: np.ndarray  # filter copies (0 dropped, 1 as is, 2+ duplicated)
    swapped: np.ndarray  # relabelled: chosen and rejected exchanged
    margin_offset: np.ndarray  # the loss protocol's o_i (on the final orientation)
    sign: np.ndarray  # +1 or −1: the final orientation relative to the input
    inoculation: np.ndarray  # the instruction(s) added to each pair's training prompt ("" if none)
    fate: np.ndarray  # one of documents.FATES per pair
    decided_by: np.ndarray  # the rule_id of the rule that decided each pair's fate, "" if none
    ess: float  # effective sample size of the final weights over the pairs still in the data
    notes: list[str] = field(default_factory=list)


def _uniform(seed: int, tag: str, n: int) -> np.ndarray:
    """Seeded uniforms for one rule: the same plan, data order and seed give the same draws."""
    key = int.from_bytes(hashlib.sha256(f"{seed}:{tag}".encode()).digest()[:8], "little")
    return np.random.default_rng(key).random(n)


def _clip_normalise(w: np.ndarray, live: np.ndarray, multiplicity: np.ndarray, clip: float) -> np.ndarray:
    """Clip weights at ``clip`` × their median over the pairs still in the data, then scale them to
    mean 1 over those pairs (counting filter copies)."""
    if not live.any():
        return w
    w = np.minimum(w, clip * float(np.median(w[live])))
    return w / float(np.average(w[live], weights=multiplicity[live]))


def is_direction(i) -> bool:
    """Whether rule ``i`` names a direction (``encourage``/``discourage``) rather than a factor."""
    return getattr(i, "direction", None) is not None


def goal(i, alpha_c: float) -> float:
    """The coefficient rule ``i`` asks for when the data's coefficient is ``alpha_c`` (NaN counts
    as 0): k·α for a factor rule, ``direction·(size or |α|)`` for a direction
    (``Intervention.target_for``)."""
    return float(i.target_for(alpha_c if np.isfinite(alpha_c) else 0.0))


def resolved_factor(i, alpha_c: float) -> float | None:
    """The factor k rule ``i`` amounts to on data with coefficient ``alpha_c``: its own factor,
    or target/α for ``encourage``/``discourage`` (None when no factor reaches the target: α is 0
    or not finite)."""
    if not is_direction(i):
        return float(i.factor)
    if not np.isfinite(alpha_c):
        return None
    k = float(i.factor_for(alpha_c))
    return k if np.isfinite(k) else None


def rule_text(i, *, mark_default: bool = False) -> str:
    """How the accounting and the reports name a rule: ``line 3: block concept v via filter``
    (``… when topic t`` for a scoped rule); with ``mark_default``, ``via loss (default)`` for a
    rule written without ``via``."""
    scope = getattr(i, "scope", None)
    via = i.protocol + (" (default)" if mark_default and getattr(i, "default_protocol", False) else "")
    return f"line {i.span.line}: {i.action} concept {i.concept} via {via}" + (f" when topic {scope}" if scope else "")


def in_training(i) -> bool:
    """Whether the trainer realises intervention ``i`` during training — activation hooks
    (ablation, steering) or an added loss term (penalty) — rather than the data ``ethos apply``
    writes (weights, labels, copies, prompts, margin offsets). The protocol table says it
    (``ProtocolInfo.in_training``)."""
    return bool(i.in_training)


def simulated(i) -> bool:
    """Whether the dry run simulates intervention ``i``: it changes the pairs' weights, labels or
    copies, or gives them a margin offset (the ``loss`` protocol). Inoculation edits prompts only;
    ablation, steering and penalty act during training."""
    return i.shapes_data or (i.stage == "loss" and not in_training(i))



def _effect(plan: Plan, concept: str, scope: str | None) -> tuple:
    """What the rules of ``concept`` in ``scope`` do (a keep is its own effect): equal effects never conflict."""
    rules = [i for i in plan.interventions if i.concept == concept and i.scope == scope]
    if rules:
        return tuple(sorted((i.protocol, i.action, str(i.factor), str(i.direction), str(i.size)) for i in rules))
    return ("keep",)


def scope_masks(plan: Plan, scopes: Mapping[str, np.ndarray], n: int) -> dict[tuple[str, str | None], np.ndarray]:
    """Per (concept, scope) of the plan's rules (interventions and keeps), the pairs that scope's
    rules decide for that concept (docs/language.md § Topics and scoped rules): a scoped rule holds
    for its topic's pairs, less those of a topic inside it (on this data) that has its own rule for
    the concept (the smaller scope wins); an unscoped rule for the pairs in no such topic. A pair in
    two topics, neither inside the other, whose rules give the concept different effects is an
    error (:class:`ScopeConflict`). ``scopes``: the membership masks of every topic a rule names."""
    keys = list(dict.fromkeys([(i.concept, i.scope) for i in plan.interventions]
                              + [(k.concept, k.scope) for k in plan.keeps]))
    missing = sorted({s for _, s in keys if s is not None and s not in scopes})
    if missing:
        raise ScopeConflict(f"no membership for topic(s) {', '.join(missing)}")
    m = {t: np.asarray(scopes[t], dtype=bool) for t in {s for _, s in keys if s is not None}}
    out: dict[tuple[str, str | None], np.ndarray] = {}
    for concept in dict.fromkeys(c for c, _ in keys):
        topics = [s for c, s in keys if c == concept and s is not None]
        for t in topics:
            mask = m[t].copy()
            for u in topics:
                if u == t:
                    continue
                both = m[t] & m[u]
                if not both.any():
                    continue
                u_inside_t = not (m[u] & ~m[t]).any()
                t_inside_u = not (m[t] & ~m[u]).any()
                if u_inside_t and not t_inside_u:
                    mask &= ~m[u]  # the smaller topic's rule wins there
                elif t_inside_u and not u_inside_t:
                    continue
                elif _effect(plan, concept, t) != _effect(plan, concept, u):
                    a, b = sorted((t, u))
                    raise ScopeConflict(
                        f"concept '{concept}': {int(both.sum())} pair(s) are in topics {a} and {b}, whose rules give "
                        f"it different effects, and neither topic lies inside the other on this data; give the "
                        f"pairs in both one rule (a topic of their own) or make one topic a subset of the other")
                elif u < t:  # equal effects on the same pairs: the first topic by name decides them
                    mask &= ~m[u]
            out[(concept, t)] = mask
        if (concept, None) in keys:
            covered = np.zeros(n, dtype=bool)
            for t in topics:
                covered |= m[t]
            out[(concept, None)] = ~covered
    return out


class ScopeConflict(EthosError):
    """A pair in two topics whose rules give one concept different effects (neither topic inside the other)."""


def simulate(
    plan: Plan,
    names: list[str],
    z: np.ndarray,
    alpha: np.ndarray,
    delta: np.ndarray | None = None,
    *,
    seed: int = 0,
    clip: float = 20.0,
    calibrate: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    calibrate_steps: int = 4,
    calibrate_tol: float = 1e-3,
    scopes: Mapping[str, np.ndarray] | None = None,
    topic_alpha: Mapping[str, np.ndarray] | None = None,
) -> Simulation:
    """Apply ``plan``'s data and loss protocols to pairs with standardised differences ``z``
    (n × C, columns ``names``) under the audit's coefficients ``alpha`` (C,). ``delta`` (raw
    differences, n × C) decides inoculation; default: ``z``. NaN coefficients count as 0.

    ``calibrate(z, weights) -> α`` (the audit's weighted joint fit) makes the ``data`` weights
    exact on this data: the ratio σ(η′)/σ(η) is exact only if the Bradley–Terry model is right,
    and real score differences are heavy-tailed, so the weighted re-fit can miss k·α. Then the
    shift's coefficients are corrected by the miss (s ← s + (k·α − α′)) and the weights
    recomputed, up to ``calibrate_steps`` times, until every data concept is within
    ``calibrate_tol`` of its target.

    Scoped rules (``when topic T``): ``scopes`` gives each named topic's membership mask and
    ``topic_alpha`` its coefficients (C,) from the joint fit within the topic. A rule acts only on
    the pairs :func:`scope_masks` gives it, with the goal k·α_T of its topic; those pairs' η uses
    α_T for the concept; the calibration of a scoped ``data`` rule re-fits within its topic (the
    weights of the other pairs set to 0). ``data`` weights are normalised to mean 1 over the pairs
    some data rule acts on; the others keep weight 1."""
    n, _ = z.shape
    col = {name: j for j, name in enumerate(names)}
    alpha = np.nan_to_num(np.asarray(alpha, dtype=float))
    z = np.nan_to_num(np.asarray(z, dtype=float))
    delta = z if delta is None else np.nan_to_num(np.asarray(delta, dtype=float))
    notes: list[str] = []
    masks = scope_masks(plan, scopes or {}, n)
    a_pair = np.tile(alpha, (n, 1))  # per pair, the coefficients its η uses (α_T where a topic's rule decides)
    for (concept, scope), mask in masks.items():
        if scope is not None and concept in col:
            a_t = np.nan_to_num(np.asarray((topic_alpha or {}).get(scope, alpha), dtype=float))
            a_pair[mask, col[concept]] = a_t[col[concept]]

    def a_of(r) -> float:
        """The data's coefficient for rule ``r``'s concept in its scope."""
        if r.scope is None:
            return float(alpha[col[r.concept]])
        return float(np.nan_to_num(np.asarray((topic_alpha or {}).get(r.scope, alpha), dtype=float))[col[r.concept]])

    def m_of(r) -> np.ndarray:
        return masks.get((r.concept, r.scope), np.ones(n, dtype=bool))

    by_protocol: dict[str, list] = {}
    for i in plan.interventions:
        by_protocol.setdefault(i.protocol, []).append(i)
    data_kind: dict[str, list[str]] = {}
    for i in plan.interventions:
        if i.shapes_data:
            data_kind.setdefault(i.concept, []).append(i.protocol)
    for concept, protos in data_kind.items():
        if len(protos) > 1:
            notes.append(f"concept '{concept}' is realised in the data by {', '.join(protos)}: their effects compound")
    for i in plan.interventions:
        if i.protocol == "loss" and i.concept in data_kind:
            notes.append(f"concept '{i.concept}' is shaped in the data and the loss: the margin offset makes up "
                         f"only what the data rules leave")

    def gap(r) -> float:
        """g − α of rule ``r``'s concept (in its scope): (k − 1)·α for a factor rule."""
        a = a_of(r)
        return goal(r, a) - a

    def once(rules) -> list:
        """The rules with one per (concept, scope)."""
        return list({(r.concept, r.scope): r for r in reversed(rules)}.values())[::-1]

    def shift(rules) -> np.ndarray:
        """Σ_c (g_c − α_c) z_ic over the rules' concepts (each concept once per scope), each on its pairs."""
        out = np.zeros(n)
        for r in once(rules):
            out += gap(r) * z[:, col[r.concept]] * m_of(r)
        return out

    def main_rule(rules, contributions: np.ndarray) -> np.ndarray:
        """Per pair, the rule whose concept contributed most to the change."""
        ids = np.array([r.rule_id for r in rules], dtype=object)
        if len(rules) == 1:
            return np.full(n, ids[0], dtype=object)
        return ids[np.argmax(np.abs(contributions), axis=1)]

    def contributions(rules) -> np.ndarray:
        return np.stack([gap(r) * z[:, col[r.concept]] * m_of(r) for r in rules], axis=1)

    sign = np.ones(n)
    decided = np.full(n, "", dtype=object)
    eta = np.sum(z * a_pair, axis=1)

    # relabel
    swapped = np.zeros(n, dtype=bool)
    rules = by_protocol.get("relabel", [])
    if rules:
        eta_new = eta + shift(rules)
        s = np.clip(1.0 - np.exp(log_expit(eta_new) - log_expit(eta)), 0.0, 1.0)
        swapped = _uniform(seed, "relabel", n) < s
        sign[swapped] = -1.0
        z = z * sign[:, None]
        delta = delta * sign[:, None]
        eta = np.sum(z * a_pair, axis=1)
        decided[swapped] = main_rule(rules, contributions(rules))[swapped]

    # filter
    multiplicity = np.ones(n, dtype=np.int64)
    rules = by_protocol.get("filter", [])
    if rules:
        # drops realise the goals that shrink or flip α (factors below 1), duplicates those that
        # grow it (above 1); never both from one rule, so that m(z) / m(−z) = e^{η′−η} holds (a
        # dropping rule must not duplicate the mirror pair)
        drop_rules = [r for r in rules if gap(r) * a_of(r) < 0]
        dup_rules = [r for r in rules if gap(r) * a_of(r) >= 0 and gap(r) != 0]
        keep_p = np.exp(np.minimum(shift(drop_rules), 0.0)) if drop_rules else np.ones(n)
        copies = np.exp(np.clip(shift(dup_rules), 0.0, 50.0)) if dup_rules else np.ones(n)
        u_drop, u_dup = _uniform(seed, "filter-drop", n), _uniform(seed, "filter-dup", n)
        whole = np.floor(copies)
        multiplicity = (u_drop < keep_p) * (whole + (u_dup < copies - whole)).astype(np.int64)
        changed = multiplicity != 1
        decided[changed] = main_rule(rules, contributions(rules))[changed]

    # data
    weights = np.ones(n)
    rules = by_protocol.get("data", [])
    if rules:
        live = multiplicity > 0
        groups = once(rules)  # one per (concept, scope): its own column z_c · mask and goal
        zg = np.stack([z[:, col[r.concept]] * m_of(r) for r in groups], axis=1)
        target = np.array([goal(r, a_of(r)) for r in groups])
        shift_coef = target - np.array([a_of(r) for r in groups])  # g − α: the exact ratio under the fitted model
        touched = np.any([m_of(r) for r in groups], axis=0)  # scoped rules: the other pairs keep weight 1
        for _ in range(max(1, calibrate_steps + 1)):
            log_w = log_expit(eta + zg @ shift_coef) - log_expit(eta)
            w = np.ones(n)
            w[touched] = _clip_normalise(np.exp(log_w)[touched], live[touched], multiplicity[touched], clip)
            if calibrate is None or calibrate_steps == 0:
                break
            fits: dict[str | None, np.ndarray] = {}
            for scope in dict.fromkeys(r.scope for r in groups):  # a scoped goal is met within its topic
                inside = 1.0 if scope is None else m_of(next(r for r in groups if r.scope == scope)).astype(float)
                fits[scope] = np.asarray(calibrate(z, w * multiplicity * inside), dtype=float)
            fitted = np.array([fits[r.scope][col[r.concept]] for r in groups])
            miss = np.where(np.isfinite(fitted), target - fitted, 0.0)
            if np.max(np.abs(miss), initial=0.0) < calibrate_tol:
                break
            shift_coef = shift_coef + miss
        lt = live & touched
        clipped = int((np.exp(log_w)[lt] > clip * np.median(np.exp(log_w)[lt])).sum()) if lt.any() else 0
        if clipped:
            notes.append(f"{clipped} weight(s) clipped at {clip:g}× the median weight")
        weights = w
        changed = (np.abs(weights - 1) >= REWEIGHT_TOLERANCE) & (decided == "")
        decided[changed] = main_rule(rules, contributions(rules))[changed]

    # loss
    offset = np.zeros(n)
    rules = by_protocol.get("loss", [])
    if rules:
        offset = -shift(rules)  # Σ (1 − k) α z on the final orientation
        shaped = {c for c, protos in data_kind.items() if len(protos) and c in {r.concept for r in rules}}
        if shaped and calibrate is not None:
            # the concept is also shaped in the data: the offset only makes up what the data rules
            # left, Σ (a_c − k_c α_c) z_c with a the coefficients the re-fit finds after them, so the
            # two protocols realise one factor together instead of compounding
            offset = np.zeros(n)
            for r in once(rules):
                j, a, inside = col[r.concept], a_of(r), m_of(r)
                fitted = np.asarray(calibrate(z, weights * multiplicity * inside), dtype=float)
                current = fitted[j] if r.concept in shaped and np.isfinite(fitted[j]) else a
                offset += (current - goal(r, a)) * z[:, j] * inside

    # inoculation
    inoculation = np.full(n, "", dtype=object)
    for text in dict.fromkeys(r.text for r in by_protocol.get("inoculation", [])):
        teaches = np.zeros(n, dtype=bool)  # pairs where some concept with this instruction has Δ > 0
        for rule in by_protocol["inoculation"]:
            if rule.text == text:
                teaches |= (delta[:, col[rule.concept]] > 0) & m_of(rule)
        first = teaches & (inoculation == "")
        inoculation[first] = text
        more = teaches & ~first
        inoculation[more] = inoculation[more] + " " + text

    final = weights * multiplicity
    fate = np.full(n, "kept", dtype=object)
    fate[np.abs(final - 1) >= REWEIGHT_TOLERANCE] = "reweighted"
    fate[swapped] = "relabelled"
    fate[multiplicity == 0] = "excluded"
    live = final > 0
    ess = float(final[live].sum() ** 2 / (final[live] ** 2).sum()) if live.any() else 0.0
    return Simulation(
        names=list(names),
        weights=final,
        multiplicity=multiplicity,
        swapped=swapped,
        margin_offset=offset,
        sign=sign,
        inoculation=inoculation,
        fate=fate,
        decided_by=decided,
        ess=ess,
        notes=notes,
    )

"""The dry run: what a plan will do to a dataset, verified before any training.

``shape(plan, table, rows)`` takes a plan and the featurize table of the usable pairs and

1. audits the data (``audit_scores``): per concept d, q and the joint Bradley–Terry α with CIs;
2. simulates every data and loss intervention (``interventions.simulate``);
3. re-fits the same joint model on what the interventions produce — orientation after
   relabelling, weights × filter copies, the loss protocol's margin offsets — and compares α′
   with each rule's target (k·α for a factor, ±|α| or ±size for ``encourage``/``discourage``),
   judged with the interval's width in mind (``_verdict``: on target, uncertain, off target),
   flagging concepts that moved though no rule named them and ``amplify`` on a concept the data
   teaches less of (α < 0);
4. checks every ``expect``.

Its ``to_dict()`` is the document that ``ethos plan --json`` prints and the reports render (with
the example pairs of every rule, so plan.html needs nothing else); the reports read only that
document and the serialised plan.

``prepare`` is the pipeline ``ethos plan`` and ``apply`` share before the dry run: compile the
policy (or read a saved plan) and load the data (:mod:`ethos.runtime.loading`), check the lock
(:mod:`ethos.runtime.lock`), featurize.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ethos.compiler.plan import Plan

from .audit import AuditResult, audit_scores
from .documents import FATES, PLAN_REPORT_FORMAT, clean
from .interventions import Simulation, goal, is_direction, resolved_factor, rule_text, simulate, simulated
from .loading import PlanError  # its home is loading (the lock and the inputs raise it too); imported from here as well
from .report.format import num
from .report.plan import offsets_text
from .settings import DataSettings
from .stats import joint, standardise
from .stats.joint import firth
from .stats.marginal import Z_LEVEL

SIGNIFICANCE = 0.05
IN_TRAINING = FATES[:3]  # the fates of a pair still in the training data: "kept" (FATES[0] is unchanged)
CALIBRATION_PAIRS = 200_000
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


@dataclass
class Outcome:
    plan: Plan
    before: AuditResult
    after: AuditResult
    sim: Simulation
    ids: list[str]
    rows: dict[str, Any]
    concepts: list[dict[str, Any]]
    expectations: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    seed: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # per rule, the pairs it changed most
    topics: list[dict[str, Any]] = field(default_factory=list)  # per scoped topic: α before/after inside and outside
    topic_alpha: dict[str, Any] = field(default_factory=dict)  # per scoped topic: its α per concept (before)
    traces: dict[str, Any] = field(default_factory=dict)  # per concept a rule names: its trace (ethos.runtime.trace)
    # per `loss` rule (rule_id): |its part of each pair's margin offset|, |(g − α)·z_c| on its pairs,
    # which ranks the pairs it shapes most (it decides no pair's fate: weights and labels stay)
    offset_parts: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(not e["met"] for e in self.expectations)

    def to_dict(self) -> dict[str, Any]:
        """The plan document (``plan.json``; docs/plan.md), JSON-safe."""
        w = self.sim.weights
        live = w > 0
        hist, edges = np.histogram(w[live], bins=30) if live.any() else (np.zeros(0), np.zeros(0))
        return clean({
            "format": PLAN_REPORT_FORMAT,
            "policy": {"name": self.plan.policy, "path": self.plan.source.path, "sha256": self.plan.source.sha256},
            "rows": self.rows,
            "ess": self.sim.ess,
            "ess_fraction": self.sim.ess / max(1, int(live.sum())),
            "margin_offsets": offset_summary(self.sim.margin_offset),
            "concepts": self.concepts,
            "interventions": _interventions(self.plan, self.sim, self.before, self.topic_alpha, self.offset_parts),
            "expectations": self.expectations,
            "warnings": self.warnings,
            "notes": self.sim.notes + self.before.notes,
            "correlated": self.before.correlated,
            "weights": {
                "min": float(w[live].min()) if live.any() else None,
                "max": float(w[live].max()) if live.any() else None,
                "histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
            },
            "joint": {"before": self.before.joint, "after": self.after.joint},
            "settings": {**self.before.settings, "plan_seed": self.seed},
            "examples": self.examples,
            "topics": self.topics,
            "traces": self.traces,
        })


def _interventions(plan: Plan, sim: Simulation, before: AuditResult, topic_alpha: dict[str, Any] | None = None,
                   offset_parts: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    glob = {c.name: c.alpha for c in before.concepts}
    out = []
    for i in plan.interventions:
        alpha = glob if i.scope is None else (topic_alpha or {}).get(i.scope, glob)
        affected = int(np.count_nonzero(sim.decided_by == i.rule_id))
        if i.protocol == "inoculation":
            affected = int(np.count_nonzero([i.text in t for t in sim.inoculation[sim.inoculation != ""]]))
        elif i.protocol == "loss":  # the pairs whose margin offset it contributes to
            part = (offset_parts or {}).get(i.rule_id)
            affected = int(np.count_nonzero(part)) if part is not None else int(np.count_nonzero(sim.margin_offset))
        out.append({
            "line": i.span.line,
            "rule_id": i.rule_id,  # as the traces' pairs name their rules
            "concept": i.concept,
            "action": i.action,
            "factor": resolved_factor(i, alpha.get(i.concept, float("nan"))),  # a direction: target/α
            "direction": i.direction,  # encourage +1, discourage −1, None for a factor action
            "target": goal(i, alpha.get(i.concept, float("nan"))),  # the α the rule asks for
            "protocol": i.protocol,
            "default_protocol": bool(i.default_protocol),  # the rule has no `via`: the default protocol
            "scope": i.scope,  # the topic of a `when topic` rule (factor and target are the topic's)
            "kind": i.stage,
            "simulated": simulated(i),  # penalty: a training-time loss term
            "pairs_affected": affected,
            "realised_in": {"data": "data", "loss": "loss (in training)", "activation": "activations (in training)"}[i.stage],
        })
    return out


def _after_table(table, names: list[str], sim: Simulation):
    """The featurize table as the interventions leave it: relabelled pairs have their sides swapped."""
    after = table.copy()
    flip = sim.swapped
    if flip.any():
        for name in names:
            c, r = f"{name}.chosen", f"{name}.rejected"
            cv, rv = after[c].to_numpy().copy(), after[r].to_numpy().copy()
            after[c] = np.where(flip, rv, cv)
            after[r] = np.where(flip, cv, rv)
    return after


def shape(plan: Plan, table, rows: dict[str, Any], *, seed: int = 0, n_boot: int | None = None,
          lenses: dict[str, str] | None = None, membership: dict[str, np.ndarray] | None = None,
          topic_labels: dict[str, str] | None = None) -> Outcome:
    """Audit, simulate, re-fit and check expectations (see the module docstring). ``membership``
    (:func:`ethos.runtime.topics.assign_topics`, masks over ``table``'s rows) is needed by a plan
    with ``when topic`` rules: they act within their topics, and each scoped topic is verified
    (α′ ≈ k·α_T inside, α unchanged outside; :func:`_topic_checks`)."""
    from .interventions import ScopeConflict

    names = [c.name for c in plan.concepts]
    scoped = sorted({r.scope for r in (*plan.interventions, *plan.keeps) if r.scope is not None})
    membership = membership or {}
    if [t for t in scoped if t not in membership]:
        raise PlanError(f"the membership of topic(s) {', '.join(t for t in scoped if t not in membership)} "
                        f"is needed to plan their `when topic` rules")
    kwargs = {} if n_boot is None else {"n_boot": n_boot}
    before = audit_scores(table, names, seed=seed, rows=rows, lenses=lenses, **kwargs)
    stats = {c.name: c for c in before.concepts}
    scale = {n: stats[n].scale for n in names}
    values = table.loc[:, [f"{n}.{s}" for s in ("chosen", "rejected") for n in names]].to_numpy(dtype=float)
    std = standardise(values[:, : len(names)], values[:, len(names):],
                      scale=[np.nan if scale[n] is None else scale[n] for n in names])
    delta, z = std.delta, std.z
    finite = np.all(np.isfinite(delta), axis=1)
    alpha = np.array([stats[n].alpha for n in names])
    alpha, firth_cols, firth_se, firth_warnings = _separated(plan, names, z, finite, stats, alpha)
    # calibrating the data weights needs only the coefficients, not their CIs: on a large dataset
    # a fixed random subsample of CALIBRATION_PAIRS pairs is enough (the final re-fit uses all)
    sub = np.flatnonzero(finite)
    if len(sub) > CALIBRATION_PAIRS:
        sub = np.sort(np.random.default_rng(seed).choice(sub, CALIBRATION_PAIRS, replace=False))

    def refit(zz: np.ndarray, ww: np.ndarray) -> np.ndarray:
        return joint(zz[sub], ww[sub], names=names).alpha

    topic_alpha: dict[str, Any] = {}
    if scoped:
        from .topics import topic_concept_table

        fits = topic_concept_table(table, names, {t: membership[t] for t in scoped}, seed=seed, n_boot=0)["topics"]
        for t in fits:
            topic_alpha[t["name"]] = {c["name"]: (c["alpha"] if c["alpha"] is not None else float("nan"))
                                      for c in t["concepts"]}
    try:
        sim = simulate(plan, names, z, alpha, delta=np.where(np.isfinite(delta), delta, 0.0), seed=seed,
                       calibrate=refit, scopes={t: membership[t] for t in scoped},
                       topic_alpha={t: np.array([topic_alpha[t][n] for n in names]) for t in scoped})
    except ScopeConflict as e:
        raise PlanError(str(e)) from e
    sim.weights = np.where(finite, sim.weights, 0.0)

    after_table = _after_table(table, names, sim)
    after = audit_scores(after_table, names, weights=sim.weights, scale=scale, seed=seed, rows=rows,
                         lenses=lenses, **kwargs)
    offset = sim.margin_offset
    after_alpha = {c.name: (c.alpha, c.alpha_ci) for c in after.concepts}
    if np.any(offset != 0):
        # the loss protocol: a logistic fit with the margin offset learns k·α (module docstring)
        if firth_cols:  # the before α of a separated concept is Firth's: so is its check (k·α exactly)
            zf = z[:, firth_cols] * sim.sign[:, None]
            live = finite & (sim.weights > 0)
            a_f, se_f, _ = firth(zf[live], sim.weights[live], offset=offset[live])
            for k, j in enumerate(firth_cols):
                after_alpha[names[j]] = (float(a_f[k]), [float(a_f[k] - Z_LEVEL * se_f[k]),
                                                          float(a_f[k] + Z_LEVEL * se_f[k])])
        else:
            fitted = [n for n in names if math.isfinite(stats[n].scale) and stats[n].scale > 0]
            zf = z[:, [names.index(n) for n in fitted]] * sim.sign[:, None]
            fit = joint(zf, sim.weights, names=fitted, offset=offset)
            for k, n in enumerate(fitted):
                after_alpha[n] = (float(fit.alpha[k]), [float(fit.lo[k]), float(fit.hi[k])])

    # shares after the plan are relative to the whole signal before it (a relative share of the
    # shaped signal would stay 100% for a lone blocked concept)
    a_before = np.nan_to_num(alpha)
    total_before = float(np.sum(np.mean(np.abs(z * a_before[None, :]), axis=0)))
    a_after = np.nan_to_num(np.array([after_alpha[n][0] for n in names], dtype=float))
    w = sim.weights
    contrib_after = (w @ np.abs(z * sim.sign[:, None] * a_after[None, :])) / max(float(w.sum()), 1e-12)
    share_after = {n: (float(contrib_after[j]) / total_before if total_before > 0 else float("nan"))
                   for j, n in enumerate(names)}

    rules_of: dict[str, list[str]] = {}
    rule_of: dict[str, Any] = {}  # the rule that sets each named concept's goal (the last, as Plan.factors)
    shaped: set[str] = set()  # concepts a rule realises in the data the dry run simulates
    in_topic = {i.concept for i in plan.interventions if i.scope is not None}  # verified per topic
    for i in plan.interventions:
        rules_of.setdefault(i.concept, []).append(i.protocol + (f"@{i.scope}" if i.scope else ""))
        if i.scope is None:
            rule_of[i.concept] = i
        if simulated(i) and i.scope is None:
            shaped.add(i.concept)
    keeps = {k.concept for k in plan.keeps if k.scope is None}
    scoped_only = {k.concept for k in plan.keeps if k.scope is not None} | in_topic
    concepts, warnings = [], list(firth_warnings)
    for j, name in enumerate(names):
        b = stats[name]
        a_alpha, a_ci = after_alpha[name]
        # the α the plan works from: the audit's MLE, or Firth's for the concepts of a separated fit
        # (their targets and checks then use one estimator)
        alpha_b, alpha_b_ci, estimator = b.alpha, b.alpha_ci, "mle"
        if j in firth_cols:
            se = firth_se[firth_cols.index(j)]
            alpha_b, alpha_b_ci = float(alpha[j]), [float(alpha[j] - Z_LEVEL * se), float(alpha[j] + Z_LEVEL * se)]
            estimator = "firth"
        rule = rule_of.get(name)
        named = rule is not None or name in keeps or name in scoped_only
        k = resolved_factor(rule, alpha_b) if rule is not None else (1.0 if name in keeps else None)
        shaped_in_data = name in shaped and name not in in_topic  # with a scoped rule: judged per topic
        target = goal(rule, alpha_b) if (rule is not None and shaped_in_data) else alpha_b
        if name in in_topic:
            target = None
        verdict = _verdict(target, alpha_b, a_ci) if named and target is not None else None
        entry = {
            "name": name,
            "lens": b.lens,
            "factor": k,
            "protocols": rules_of.get(name, []),
            "alpha_before": alpha_b,
            "alpha_before_ci": alpha_b_ci,
            "alpha_estimator": estimator,
            "alpha_after": a_alpha,
            "alpha_after_ci": a_ci,
            "alpha_target": target,
            "on_target": {"on target": True, "off target": False}.get(verdict) if named else None,
            "verdict": verdict,
            "share_before": b.share,
            "share_after": share_after[name],
            "d": b.d,
            "d_ci": b.d_ci,
            "q": b.q,
            "win_rate": b.win_rate,
            "collateral": False,
            "note": b.note,
        }
        if rule is not None and not is_direction(rule) and k != 1 and (not math.isfinite(b.q) or b.q >= SIGNIFICANCE):
            warnings.append(f"concept '{name}' has no significant effect in this data (q = {num(b.q, missing='n/a')}); "
                            f"the rule on it changes little")
        amplify = next((i for i in plan.interventions if i.concept == name and i.action == "amplify"), None)
        if amplify is not None and math.isfinite(alpha_b) and alpha_b < 0:
            warnings.append(f"concept '{name}': α = {alpha_b:+.3f} < 0: the data teaches less {name}; amplifying "
                            f"teaches even less (α′ → {goal(amplify, alpha_b):+.3f}). To learn more {name}, write "
                            f"`encourage concept {name};` (amplify scales what the data teaches, sign included)")
        if not named and math.isfinite(alpha_b) and math.isfinite(a_alpha) and not _within(a_alpha, alpha_b_ci):
            entry["collateral"] = True
            warnings.append(f"concept '{name}' moved (α {alpha_b:+.3f} → {a_alpha:+.3f}) though no rule names it: "
                            f"it is correlated with a shaped concept")
        goal_text = "the target" if rule is not None and is_direction(rule) else "the target k·α"
        if shaped_in_data and verdict == "off target" and math.isfinite(a_alpha):
            warnings.append(f"concept '{name}': α′ = {a_alpha:+.3f} misses {goal_text} = {target:+.3f} "
                            f"(95% CI {num(a_ci[0], missing='n/a')} to {num(a_ci[1], missing='n/a')})")
        if shaped_in_data and verdict == "uncertain":
            warnings.append(f"concept '{name}': the 95% CI of α′ ({num(a_ci[0], missing='n/a')} to "
                            f"{num(a_ci[1], missing='n/a')}) holds both {goal_text} = {target:+.3f} and the data's "
                            f"α = {alpha_b:+.3f}: too few pairs to tell whether the rule reaches it")
        concepts.append(entry)

    # rows: each input row in exactly one fate
    fate_counts = {f: int(np.sum(sim.fate == f)) for f in FATES}
    excluded_rows = int(rows.get("input", 0)) - int(rows.get("usable", len(table)))
    fate_counts["excluded"] += excluded_rows
    out_rows = {"input": int(rows.get("input", len(table))), **fate_counts, "usable": int(rows.get("usable", len(table))),
                "excluded_reasons": {**dict(rows.get("excluded", {})),
                                     **({"filtered": int(np.sum(sim.fate == "excluded"))} if np.any(sim.fate == "excluded") else {})}}

    topics = _topic_checks(plan, table, after_table, names, sim, membership, scoped, topic_alpha, seed,
                           topic_labels or {}, warnings) if scoped else []
    ids = table["id"].astype(str).tolist()
    outcome = Outcome(plan, before, after, sim, ids, out_rows, concepts, [], warnings, seed, topics=topics,
                      topic_alpha=topic_alpha, offset_parts=_offset_parts(plan, names, z, alpha, topic_alpha,
                                                                          membership, sim))
    outcome.expectations = [_check(e, outcome) for e in plan.expectations]
    return outcome


def _separated(plan: Plan, names: list[str], z: np.ndarray, finite: np.ndarray, stats: dict[str, Any],
               alpha: np.ndarray) -> tuple[np.ndarray, list[int], np.ndarray, list[str]]:
    """Concepts a rule shapes whose MLE α is infinite (the pairs are separated on them: wherever the
    concept differs, the chosen reply has more of it, say) would get no margin offset and no
    calibrated weight at all: the strongest signal would be left alone. For them the plan uses
    Firth's penalised estimate instead (:func:`ethos.runtime.stats.joint.firth`, fitted jointly
    with every concept the MLE could fit), and says so. ``(alpha, firth columns, their standard
    errors, warnings)``; no separated shaped concept: ``alpha`` unchanged and no columns."""
    shaped = {i.concept for i in plan.interventions}
    sep = [n for n in names if n in shaped and not math.isfinite(stats[n].alpha) and "separation" in (stats[n].note or "")]
    if not sep:
        return alpha, [], np.zeros(0), []
    cols = [j for j, n in enumerate(names) if math.isfinite(stats[n].alpha) or n in sep]
    a_f, se_f, converged = firth(z[finite][:, cols], None)
    if not converged or not np.all(np.isfinite(a_f)):
        return alpha, [], np.zeros(0), [f"concept '{n}': the pairs are separated on it ({stats[n].note.removeprefix('not fitted: ')}) "
                            f"and Firth's penalised estimate did not converge either: its rules change nothing"
                            for n in sep]
    # every concept's α is then Firth's, so the offsets and the check use one estimator (the
    # penalised fit with the rules' offsets finds k·α exactly)
    out = alpha.copy()
    out[cols] = a_f
    weighted = {i.concept for i in plan.interventions if i.protocol == "data"}
    others = [names[j] for j in cols if names[j] not in sep]
    warnings = []
    for n in sep:
        text = (f"concept '{n}': the pairs are separated on it ({stats[n].note.removeprefix('not fitted: ')}), so the "
                f"plan uses Firth's penalised estimates, α = {out[names.index(n)]:+.3f} for it"
                + (f" (and for {', '.join(others)} too, fitted with it)" if others else ""))
        if n in weighted:
            text += "; importance weights cannot undo a separation (the re-fit stays infinite): `via loss` can"
        warnings.append(text)
    return out, cols, np.asarray(se_f, dtype=float), warnings


def _offset_parts(plan: Plan, names: list[str], z: np.ndarray, alpha: np.ndarray, topic_alpha: dict[str, Any],
                  membership: dict[str, np.ndarray], sim: Simulation) -> dict[str, np.ndarray]:
    """Per ``loss`` rule, |(g − α)·z_ic| on the pairs it acts on (its topic's for a scoped rule):
    the size of its part of each pair's margin offset, to show the pairs it shapes most."""
    out: dict[str, np.ndarray] = {}
    for i in plan.interventions:
        if i.protocol != "loss" or i.concept not in names:
            continue
        j = names.index(i.concept)
        a = float(alpha[j]) if i.scope is None else float(topic_alpha.get(i.scope, {}).get(i.concept, float("nan")))
        part = np.abs((goal(i, a) - a) * np.nan_to_num(z[:, j]))
        if i.scope is not None:
            part = part * np.asarray(membership[i.scope], dtype=bool)
        out[i.rule_id] = np.where(np.isfinite(part) & (sim.weights > 0), part, 0.0)
    return out


def offset_summary(offset: np.ndarray) -> dict[str, Any]:
    """The `loss` protocol's margin offsets in the plan document: how many pairs carry one, and
    their range (null without any)."""
    nz = offset[offset != 0]
    return {"pairs": int(nz.size), "min": float(nz.min()) if nz.size else None,
            "max": float(nz.max()) if nz.size else None}


def _topic_checks(plan: Plan, table, after_table, names: list[str], sim: Simulation, membership, scoped: list[str],
                  topic_alpha: dict[str, Any], seed: int, labels: dict[str, str], warnings: list[str]
                  ) -> list[dict[str, Any]]:
    """Per scoped topic T and concept c a rule in T names: α of the joint fit within T before and
    after the plan (weights, relabelled sides, margin offsets) against the rule's goal g(α_T)
    (k·α_T for a factor), and outside — the pairs in no topic with a rule for c — α after within
    α before's CI when no unscoped rule names c."""
    from .topics import topic_concept_table

    n = len(table)
    outside: dict[str, np.ndarray] = {}
    for c in names:
        m_any = np.zeros(n, dtype=bool)
        for r in (*plan.interventions, *plan.keeps):
            if r.concept == c and r.scope is not None:
                m_any |= np.asarray(membership[r.scope], dtype=bool)
        outside[c] = ~m_any
    masks = {**{t: np.asarray(membership[t], dtype=bool) for t in scoped},
             **{f"outside:{c}": outside[c] for c in names}}
    offset = sim.margin_offset if np.any(sim.margin_offset != 0) else None
    before = {t["name"]: t for t in topic_concept_table(table, names, masks, seed=seed, n_boot=0)["topics"]}
    after = {t["name"]: t for t in topic_concept_table(after_table, names, masks, seed=seed, n_boot=0,
                                                        weights=sim.weights, offset=offset)["topics"]}

    def cell(doc: dict[str, Any], c: str) -> dict[str, Any]:
        return next(x for x in doc["concepts"] if x["name"] == c)

    out = []
    for t in scoped:
        entries = []
        for c in names:
            rules = [i for i in plan.interventions if i.concept == c and i.scope == t]
            kept = any(k.concept == c and k.scope == t for k in plan.keeps)
            if not rules and not kept:
                continue
            b, a = cell(before[t], c), cell(after[t], c)
            a_t = topic_alpha[t].get(c, float("nan"))
            rule = next((i for i in reversed(rules) if simulated(i)), rules[-1] if rules else None)
            target = goal(rule, a_t) if rule is not None and simulated(rule) else a_t
            # a training-time rule (ablation, steering, penalty) is not simulated: no verdict on the data
            verdict = _verdict(target, _f(b["alpha"]), a["alpha_ci"]) if rule is None or simulated(rule) else None
            ob, oa = cell(before[f"outside:{c}"], c), cell(after[f"outside:{c}"], c)
            unscoped = any(i.concept == c and i.scope is None for i in plan.interventions)
            unchanged = None if unscoped else (_within(_f(oa["alpha"]), ob["alpha_ci"]) if ob["alpha"] is not None else None)
            entries.append({
                "name": c, "rules": [rule_text(i) for i in rules] or [f"keep concept {c} when topic {t}"],
                "factor": resolved_factor(rule, a_t) if rule is not None else 1.0,
                "simulated": rule is None or simulated(rule),
                "alpha_before": b["alpha"], "alpha_before_ci": b["alpha_ci"],
                "alpha_after": a["alpha"], "alpha_after_ci": a["alpha_ci"], "alpha_target": target,
                "verdict": verdict,
                "outside": {"n_pairs": ob["n"], "alpha_before": ob["alpha"], "alpha_before_ci": ob["alpha_ci"],
                            "alpha_after": oa["alpha"], "alpha_after_ci": oa["alpha_ci"],
                            "expected": "a rule outside the topics" if unscoped else "unchanged",
                            "unchanged": unchanged},
            })
            if verdict == "off target" and (rule is None or simulated(rule)):
                warnings.append(f"concept '{c}' in topic {t}: α′ = {num(a['alpha'])} misses the target "
                                f"{num(target)} (95% CI {num(a['alpha_ci'][0])} to {num(a['alpha_ci'][1])})")
            if unchanged is False:
                warnings.append(f"concept '{c}' moved outside topic {t} (α {num(ob['alpha'])} → {num(oa['alpha'])}) "
                                f"though only rules within topics name it")
        out.append({"name": t, "label": labels.get(t, ""), "n_pairs": before[t]["n_pairs"],
                    "n_pairs_after": after[t]["n_pairs"], "concepts": entries})
    return out


def _f(x) -> float:
    return float(x) if x is not None else float("nan")


def _within(x: float, ci) -> bool:
    lo, hi = ci
    return all(v is not None and math.isfinite(v) for v in (x, lo, hi)) and lo <= x <= hi


def _verdict(target: float, alpha: float, ci) -> str | None:
    """Whether α′ reached the target, judged with its interval's width in mind: ``"on target"``
    when the 95% CI of α′ holds the target and tells it from the data's own α (or the rule asks
    for no change), ``"uncertain"`` when the interval is so wide that it holds both, ``"off
    target"`` when it misses the target; None when α′ has no interval."""
    lo, hi = ci
    if not all(v is not None and math.isfinite(v) for v in (target, lo, hi)):
        return None
    if not lo <= target <= hi:
        return "off target"
    if math.isfinite(alpha) and lo <= alpha <= hi and not math.isclose(alpha, target, rel_tol=1e-9, abs_tol=1e-12):
        return "uncertain"
    return "on target"


def _check(e, o: Outcome) -> dict[str, Any]:
    if e.kind == "concept":
        c = next(c for c in o.concepts if c["name"] == e.concept)
        before = o.before.concept(e.concept)
        after = o.after.concept(e.concept)
        if e.metric == "share":
            value = c["share_before"] if e.phase == "before" else c["share_after"]
        elif e.metric == "alpha":
            value = c["alpha_before"] if e.phase == "before" else c["alpha_after"]
        else:
            value = getattr(before if e.phase == "before" else after, e.metric)
    elif e.kind == "pairs":
        usable = max(1, o.rows["usable"])
        if e.fate == "kept":  # "kept" means still in the training data (every fate but excluded)
            value = sum(o.rows[f] for f in IN_TRAINING) / usable
        elif e.fate == "excluded":
            value = int(np.sum(o.sim.fate == "excluded")) / usable
        else:
            value = o.rows[e.fate] / usable
    else:
        live = int(np.sum(o.sim.weights > 0))
        value = o.sim.ess / max(1, live)
    met = value is not None and math.isfinite(value) and OPS[e.op](value, e.value)
    return {"text": e.text, "line": e.span.line, "value": value, "met": bool(met)}


def summary_line(o: Outcome) -> str:
    r = o.rows
    met = len(o.expectations) - o.failed
    unchanged, reweighted, relabelled, excluded = (r[f] for f in FATES)
    kept = unchanged + reweighted + relabelled
    return (f"Plan: {kept:,} of {kept + excluded:,} pairs kept ({unchanged:,} unchanged, {reweighted:,} reweighted, "
            f"{relabelled:,} relabelled), {excluded:,} excluded; {offsets_text(int(np.count_nonzero(o.sim.margin_offset)))}"
            f"{met} expectation{'s' * (met != 1)} met, {o.failed} failed.")


def examples(outcome: Outcome, pairs, per_rule: int = 3) -> list[dict[str, Any]]:
    """The pairs most affected by each simulated rule, with their text (``pairs``: the loaded
    data's pairs; the reports escape the text)."""
    sim = outcome.sim
    chosen: list[tuple[str, list[int]]] = []
    for i in outcome.plan.interventions:
        if i.rule_id in outcome.offset_parts:  # a `loss` rule: the pairs whose margin it shifts most
            part = outcome.offset_parts[i.rule_id]
            idx = np.flatnonzero(part > 0)
            strength = part[idx]
        else:
            idx = np.flatnonzero(sim.decided_by == i.rule_id)
            strength = np.abs(sim.weights[idx] - 1.0) + sim.swapped[idx] + (sim.multiplicity[idx] == 0)
        idx = idx[np.argsort(-strength, kind="stable")][:per_rule]
        if len(idx):
            chosen.append((rule_text(i, mark_default=True), [int(k) for k in idx]))
    wanted = {outcome.ids[k] for _, idx in chosen for k in idx}
    found = {p.id: p for p in pairs if p.id in wanted}
    out = []
    for rule, idx in chosen:
        shown = []
        for k in idx:
            p = found[outcome.ids[k]]
            shown.append({
                "id": p.id, "fate": str(sim.fate[k]), "weight": float(sim.weights[k]),
                "margin_offset": float(sim.margin_offset[k]),
                "prompt": p.prompt[-1].content if p.prompt else "", "chosen": p.chosen, "rejected": p.rejected,
            })
        out.append({"rule": rule, "pairs": shown})
    return out


# ---------------------------------------------------------------------------------------------
# The pipeline shared by ``ethos plan``, ``ethos apply`` and ``ethos lock``


@dataclass
class Prepared:
    """A policy made ready for the dry run: its plan, the loaded data and the featurize table."""

    plan: Plan
    policy_path: str | None  # None for a saved plan
    data: Any  # LoadResult
    table: Any  # the featurize table of the usable pairs
    data_source: str
    membership: dict[str, Any] = field(default_factory=dict)  # topic -> (n,) bool over the table's rows
    topic_labels: dict[str, str] = field(default_factory=dict)


def lens_texts(plan: Plan) -> dict[str, str]:
    return {c.name: c.lens_text() for c in plan.concepts}


def check_output_dir(out: Path) -> None:
    """Fail before any work if the output folder cannot be written."""
    import os
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ethos-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PlanError(f"cannot write to output folder {out}: {e.strerror or e}") from e


def prepare(policy: str | Path, data: DataSettings = DataSettings(), *, progress: bool = False,
            command: str = "plan") -> Prepared:
    """Load the policy (or saved plan) and the data (:func:`ethos.runtime.loading.load_inputs`),
    check the policy's ethos.lock (:func:`ethos.runtime.lock.resolve_entry`: before any scoring,
    so a stale lock fails in seconds), then featurize. Raises ``EthosError``."""
    from .featurize import featurize
    from .loading import load_inputs
    from .lock import StaleLock, check, resolve_entry
    from .progress import stage

    with stage("loading the policy and the data", enabled=progress):
        res = load_inputs(policy, data, command=command)
        if res.policy_path is not None:
            try:
                check(res.policy_path, resolve_entry(res.plan, res.data, res.data_source), update=data.update_lock)
            except StaleLock as e:
                raise PlanError(str(e)) from e
    with stage("featurize", enabled=progress):
        table = featurize(res.plan, res.data, batch_size=data.batch_size, progress=progress and _terminal())
    membership: dict[str, Any] = {}
    labels: dict[str, str] = {}
    if res.plan.topics:
        from .topics import topic_sets

        if [str(x) for x in table["id"]] != [str(p.id) for p in res.data.pairs]:
            raise PlanError("internal: the scores are not in the order of the pairs")
        with stage("topics", enabled=progress):
            sets = topic_sets(res.plan, res.data.pairs, cluster_features="model", seed=data.seed,
                              batch_size=data.batch_size)
        membership, labels = sets.membership, sets.labels
    return Prepared(res.plan, res.policy_path, res.data, table, res.data_source, membership, labels)


def _terminal() -> bool:
    import sys

    return sys.stderr.isatty()

"""Trace a concept to its pairs: which pairs carry the concept's learning signal, and which rule
of the policy would decide each.

The joint Bradley–Terry fit of the preference on every concept's standardised difference z
(:func:`ethos.runtime.stats.joint`, the audit's fit) gives the concept's coefficient α; pair i's
contribution to the concept's signal is α·z_i (positive: the pair teaches the direction the data
rewards; negative: it pulls against it), and its share is |α·z_i| / Σ_j |α·z_j| over the usable
pairs. Pairs are ranked by α·z_i, largest first. When α cannot be fitted (a constant concept,
separation) pairs are ranked by z_i instead, with a note.

The rule that decides a pair for the concept follows the language's scoping: a ``when topic T``
rule (or ``keep … when topic T``) for a topic the pair is in wins over the unscoped rules; a
pair in two topics whose rules differ is reported as a conflict (every rule named). Without any
rule the concept is learned as the data has it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ethos.compiler.plan import Plan

from .documents import clean
from .errors import EthosError

TRACE_FORMAT = "ethos.trace/1"
DEFAULT_TOP = 20
NO_RULE = "no rule: learned as the data has it"


class TraceError(EthosError):
    """A concept cannot be traced as asked (not in the plan, unknown topic, ...)."""


@dataclass(frozen=True)
class Decision:
    """The rule(s) deciding one pair for one concept."""

    action: str  # the rule's action (block, dampen, keep, ...), "none" or "conflict"
    rules: tuple[str, ...]  # rule ids of the interventions that apply (empty for keep/none)
    rule: str  # readable: the rule ids, "keep concept x [when topic t]" or NO_RULE
    scope: str | None  # the topic whose rule decides, None for an unscoped rule
    effect: tuple = ()  # what the rules do, whatever their topic (to tell a real conflict)


def decide(plan: Plan, concept: str, topics: Sequence[str], inside: set[tuple[str, str]] | None = None) -> Decision:
    """The rule of ``plan`` that decides a pair in ``topics`` for ``concept`` (see the module
    docstring). ``inside``: (a, b) when topic a lies inside topic b on the data — a's rule then
    wins over b's for the pairs in both (docs/language.md)."""
    scoped: dict[str, Decision] = {}
    for t in topics:
        d = _at(plan, concept, t)
        if d is not None:
            scoped[t] = d
    if len(scoped) > 1 and inside:
        scoped = {t: d for t, d in scoped.items() if not any((u, t) in inside for u in scoped if u != t)} or scoped
    if len(scoped) == 1:
        return next(iter(scoped.values()))
    if len(scoped) > 1:
        if len({d.effect for d in scoped.values()}) == 1:  # the same effect in every topic: no conflict
            return next(iter(scoped.values()))
        rules = tuple(r for d in scoped.values() for r in (d.rules or (d.rule,)))
        return Decision("conflict", tuple(r for d in scoped.values() for r in d.rules),
                        "conflict: " + "; ".join(rules), None)
    return _at(plan, concept, None) or Decision("none", (), NO_RULE, None)


def _at(plan: Plan, concept: str, scope: str | None) -> Decision | None:
    rules = [i for i in plan.interventions if i.concept == concept and i.scope == scope]
    if rules:
        actions = sorted({i.action for i in rules})
        effect = tuple(sorted((i.protocol, i.action, str(i.factor), str(i.direction), str(i.size)) for i in rules))
        return Decision(actions[0] if len(actions) == 1 else "+".join(actions), tuple(i.rule_id for i in rules),
                        ", ".join(i.rule_id for i in rules), scope, effect)
    if any(k.concept == concept and k.scope == scope for k in plan.keeps):
        return Decision("keep", (), f"keep concept {concept}" + (f" when topic {scope}" if scope else ""), scope,
                        (("keep",),))
    return None


@dataclass
class Trace:
    """A concept's pairs ranked by their contribution to its learning signal."""

    concept: str
    alpha: float
    alpha_ci: list[float]
    scale: float
    n_pairs: int  # usable pairs with every score
    ranked_by: str
    topic: str | None
    pairs: list[dict[str, Any]]  # the top pairs, ranked
    accounting: dict[str, Any]  # per rule: pairs and their summed share
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return clean({"format": TRACE_FORMAT, "concept": self.concept, "alpha": self.alpha,
                      "alpha_ci": self.alpha_ci, "scale": self.scale, "n_pairs": self.n_pairs,
                      "ranked_by": self.ranked_by, "topic": self.topic, "source": self.source,
                      "accounting": self.accounting, "notes": self.notes, "pairs": self.pairs})


def trace_scores(plan: Plan, pairs: Sequence[Any], table: Any, concept: str, *,
                 membership: dict[str, np.ndarray] | None = None, topic: str | None = None,
                 top: int | None = DEFAULT_TOP) -> Trace:
    """Rank ``pairs`` (featurize's ``table`` in the same order) by their contribution α·z_i to
    ``concept``'s signal; ``membership`` (:func:`ethos.runtime.topics.assign_topics`) gives each
    pair's topics; ``topic`` keeps only the pairs of that topic; ``top`` the first N (None: all)."""
    from .stats import joint, standardise

    membership = membership or {}
    if concept not in [c.name for c in plan.concepts]:
        raise TraceError(f"concept {concept!r} is not in the policy (its concepts: "
                         f"{', '.join(c.name for c in plan.concepts) or 'none'})")
    if topic is not None and topic not in membership:
        raise TraceError(f"unknown topic {topic!r}" + (f" (topics: {', '.join(membership)})" if membership
                                                       else ": the policy defines no topics"))
    if len(table) != len(pairs):
        raise TraceError(f"the scores table has {len(table)} rows for {len(pairs)} pairs")
    if "id" in table.columns and [str(x) for x in table["id"]] != [str(p.id) for p in pairs]:
        raise TraceError("the scores table's rows are not the pairs' (ids differ)")
    names = [c.name for c in plan.concepts]
    n_all, c = len(pairs), len(names)
    sc = np.asarray(table.loc[:, [f"{k}.chosen" for k in names]].to_numpy(dtype=float)).reshape(n_all, c)
    sr = np.asarray(table.loc[:, [f"{k}.rejected" for k in names]].to_numpy(dtype=float)).reshape(n_all, c)
    finite = np.all(np.isfinite(sc) & np.isfinite(sr), axis=1)
    std = standardise(sc[finite], sr[finite])
    j = names.index(concept)
    fitted = np.flatnonzero(std.varies)
    fit = joint(std.z[:, fitted], names=[names[i] for i in fitted])
    notes: list[str] = []
    if int((~finite).sum()):
        notes.append(f"{int((~finite).sum())} pairs with a missing score were left out")
    alpha, lo, hi = float("nan"), float("nan"), float("nan")
    if j in fitted:
        k = list(fitted).index(j)
        alpha, lo, hi = float(fit.alpha[k]), float(fit.lo[k]), float(fit.hi[k])
        if fit.notes[k]:
            notes.append(f"{concept}: {fit.notes[k]}")
    else:
        notes.append(f"{concept}: constant score (sd 0): no pair carries a signal")
    z = std.z[:, j]
    if np.isfinite(alpha):
        contrib = alpha * z
        ranked_by = "alpha*z"
    else:
        contrib = z.copy()
        ranked_by = "z"
        if j in fitted:
            notes.append(f"{concept}: α not fitted; pairs ranked by z (chosen − rejected in sd units) instead")
    total = float(np.abs(contrib).sum())
    share = np.abs(contrib) / total if total > 0 else np.zeros_like(contrib)
    usable = np.flatnonzero(finite)
    topic_names = list(membership)
    rows = []
    for r, i in enumerate(usable):
        in_topics = [t for t in topic_names if membership[t][i]]
        if topic is not None and topic not in in_topics:
            continue
        rows.append((r, i, in_topics))
    order = sorted(rows, key=lambda x: (-contrib[x[0]], -share[x[0]], x[1]))
    inside = {(a, b) for a in topic_names for b in topic_names if a != b and membership[a].any()
              and not (np.asarray(membership[a], bool) & ~np.asarray(membership[b], bool)).any()
              and (np.asarray(membership[b], bool) & ~np.asarray(membership[a], bool)).any()}
    accounting: Counter[str] = Counter()
    acc_share: dict[str, float] = {}
    decided = []
    for r, i, in_topics in order:
        d = decide(plan, concept, in_topics, inside)
        accounting[d.rule] += 1
        acc_share[d.rule] = acc_share.get(d.rule, 0.0) + float(share[r])
        decided.append((r, i, in_topics, d))
    chosen_list = decided if top is None else decided[:top]
    out = []
    for rank, (r, i, in_topics, d) in enumerate(chosen_list, 1):
        p = pairs[i]
        out.append({
            "rank": rank, "id": str(p.id), "contribution": float(contrib[r]), "share": float(share[r]),
            "z": float(z[r]), "delta": float(std.delta[r, j]),
            "score_chosen": float(sc[i, j]), "score_rejected": float(sr[i, j]),
            "topics": in_topics, "rule": d.rule, "rules": list(d.rules), "action": d.action, "scope": d.scope,
            "prompt": [{"role": m.role, "content": m.content} for m in p.prompt],
            "chosen": p.chosen, "rejected": p.rejected,
        })
    acc = {"pairs": len(decided), "by_rule": [{"rule": rule, "pairs": n, "share": acc_share[rule]}
                                              for rule, n in accounting.most_common()]}
    return Trace(concept, alpha, [lo, hi], float(std.scale[j]), int(finite.sum()), ranked_by, topic, out, acc, notes)


def trace_dataset(plan: Plan, data: Any, concept: str, *, topic: str | None = None, top: int | None = DEFAULT_TOP,
                  policy: str | None = None, progress: bool = False, cluster_features: str = "model",
                  cache_dir: Any = None) -> Trace:
    """What ``ethos trace`` computes: load the data (:func:`ethos.runtime.loading.load_data`),
    featurize the plan's concepts, score the plan's topics on the prompts and :func:`trace_scores`."""
    from .featurize import featurize
    from .loading import load_data
    from .topics import topic_sets

    if concept not in [c.name for c in plan.concepts]:  # before any loading
        raise TraceError(f"concept {concept!r} is not in the policy (its concepts: "
                         f"{', '.join(c.name for c in plan.concepts) or 'none'})")
    if topic is not None and topic not in [t.name for t in plan.topics]:
        raise TraceError(f"unknown topic {topic!r}" + (f" (topics: {', '.join(t.name for t in plan.topics)})"
                                                       if plan.topics else ": the policy defines no topics"))
    loaded = load_data(data, "trace")
    table = featurize(plan, loaded, batch_size=data.batch_size, progress=progress, cache_dir=cache_dir)
    membership = topic_sets(plan, loaded.pairs, cluster_features=cluster_features, seed=data.seed,
                            batch_size=data.batch_size).membership if plan.topics else {}
    result = trace_scores(plan, loaded.pairs, table, concept, membership=membership, topic=topic, top=top)
    result.source = {"policy": policy, "data": data.source, "fingerprint": loaded.fingerprint,
                     "model": plan.model.name, "usable_pairs": len(loaded.pairs)}
    return result


def write_pairs_jsonl(trace: Trace, path: Any) -> None:
    """The ranked pairs as JSON Lines, written atomically."""
    import json

    from .io import atomic_write_text

    doc = trace.to_dict()
    atomic_write_text(path, "".join(json.dumps({"concept": trace.concept, **p}, ensure_ascii=False) + "\n"
                                    for p in doc["pairs"]))


PLAN_TRACE_TOP = 10  # pairs of a concept's trace that a plan document keeps (plus PER_RULE per rule)
PER_RULE = 5


def rule_traces(plan: Plan, pairs: Sequence[Any], table: Any, membership: dict[str, np.ndarray] | None = None,
                *, top: int = PLAN_TRACE_TOP, per_rule: int = PER_RULE) -> dict[str, dict[str, Any]]:
    """For every concept a rule of ``plan`` names (interventions and keeps), its trace document
    (:func:`trace_scores` over every pair, the accounting complete) keeping the first ``top`` pairs
    and the first ``per_rule`` pairs each rule decides — what ``ethos plan`` links each rule to."""
    named = list(dict.fromkeys([i.concept for i in plan.interventions] + [k.concept for k in plan.keeps]))
    out = {}
    for concept in named:
        doc = trace_scores(plan, pairs, table, concept, membership=membership, top=None).to_dict()
        keep: set[int] = {p["rank"] for p in doc["pairs"][:top]}
        seen: Counter[str] = Counter()
        for p in doc["pairs"]:
            if seen[p["rule"]] < per_rule:
                seen[p["rule"]] += 1
                keep.add(p["rank"])
        doc["pairs"] = [p for p in doc["pairs"] if p["rank"] in keep]
        doc["pairs_kept"] = f"the first {top} pairs and the first {per_rule} each rule decides"
        out[concept] = doc
    return out

"""diff: what changed in meaning between two plans (not in text).

Interventions are matched by (concept, protocol), concept definitions by name, expectations by
their canonical text. Reordering statements, reformatting, comments and unused library look-ups
change nothing; a different factor, protocol argument, lens, file content or binding does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .plan import Concept, Plan


@dataclass(frozen=True)
class Change:
    op: Literal["+", "-", "~"]
    what: str  # "model", "sae", "policy", "concept", "rule", "keep", "expect"
    key: str
    text: str

    def to_dict(self) -> dict:
        return {"op": self.op, "what": self.what, "key": self.key, "text": self.text}


def _lens_text(c: Concept) -> str:
    lens = c.lens
    if lens.kind == "metric":
        return f"metric {lens.metric}"
    if lens.kind == "features":
        return f"features {', '.join(map(str, lens.latents))} pool {lens.pool}"
    pool = f" pool {lens.pool}" if lens.kind == "probe" else ""
    return f'{lens.kind} "{lens.file.path}"{pool} (sha256 {lens.file.sha256[:12]})'


def _rule_text(i) -> str:
    factor = f" by {i.factor:g}" if i.action in ("dampen", "amplify") else ""
    arg = {"inoculation": lambda: f' "{i.text}"', "steering": lambda: f" {i.strength:g}",
           "penalty": lambda: f" {i.weight:g}"}.get(i.protocol, lambda: "")()
    return f"{i.action} concept {i.concept}{factor} via {i.protocol}{arg}  (k = {i.factor:g})"


def _binding(plan: Plan) -> dict[str, str]:
    layer = "default layer" if plan.model.layer is None else f"layer {plan.model.layer}"
    return {"policy": str(plan.policy), "model": f"{plan.model.name} {layer}", "sae": plan.sae.name}


def diff_plans(old: Plan, new: Plan) -> list[Change]:
    changes: list[Change] = []
    a, b = _binding(old), _binding(new)
    for key in a:
        if a[key] != b[key]:
            changes.append(Change("~", key, key, f"{key}: {a[key]} -> {b[key]}"))

    def concept_map(plan: Plan) -> dict[str, str]:
        return {c.name: _lens_text(c) for c in plan.concepts}

    ca, cb = concept_map(old), concept_map(new)
    for name in sorted(ca.keys() & cb.keys()):
        if ca[name] != cb[name]:
            changes.append(Change("~", "concept", name, f"concept {name}: {ca[name]} -> {cb[name]}"))

    ra = {(i.concept, i.protocol): i for i in old.interventions}
    rb = {(i.concept, i.protocol): i for i in new.interventions}
    for key in sorted(ra.keys() | rb.keys()):
        k = f"{key[0]} via {key[1]}"
        if key not in rb:
            changes.append(Change("-", "rule", k, _rule_text(ra[key])))
        elif key not in ra:
            changes.append(Change("+", "rule", k, _rule_text(rb[key])))
        elif ra[key].model_dump(exclude={"span"}) != rb[key].model_dump(exclude={"span"}):
            changes.append(Change("~", "rule", k, f"{_rule_text(ra[key])} -> {_rule_text(rb[key])}"))

    ka, kb = {k.concept for k in old.keeps}, {k.concept for k in new.keeps}
    changes += [Change("-", "keep", c, f"keep concept {c}") for c in sorted(ka - kb)]
    changes += [Change("+", "keep", c, f"keep concept {c}") for c in sorted(kb - ka)]

    ea, eb = {e.text for e in old.expectations}, {e.text for e in new.expectations}
    changes += [Change("-", "expect", t, t) for t in sorted(ea - eb)]
    changes += [Change("+", "expect", t, t) for t in sorted(eb - ea)]
    return changes

"""diff: what changed in meaning between two plans (not in text).

Interventions are matched by (concept, protocol, topic), concept and topic definitions by name,
expectations by their canonical text. Reordering statements, reformatting, comments, unused library look-ups
and writing out the default protocol (`via loss` on a rule that had no `via`) change nothing; a different
factor, protocol, protocol argument, lens, file content or binding does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .plan import Concept, Plan


@dataclass(frozen=True)
class Change:
    op: Literal["+", "-", "~"]
    what: str  # "model", "sae", "policy", "concept", "topic", "rule", "keep", "expect"
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
    extra = f" pool {lens.pool}" if lens.kind == "probe" else f" {lens.mode}"
    return f'{lens.kind} "{lens.file.path}"{extra} (sha256 {lens.file.sha256[:12]})'


def _topic_text(t) -> str:
    if t.kind in ("lexicon", "probe"):
        return f'{t.kind} "{t.file.path}" above {t.threshold:g} (sha256 {t.file.sha256[:12]})'
    if t.kind == "column":
        value = f'"{t.value}"' if isinstance(t.value, str) else f"{t.value:g}"
        return f'column "{t.column}" {t.op} {value}'
    return f"cluster {t.index} of {t.k}"


def _rule_text(i) -> str:
    size = i.factor if i.direction is None else i.size
    factor = f" by {size:g}" if i.action in ("dampen", "amplify") or size is not None and i.direction else ""
    arg = {"inoculation": lambda: f' "{i.text}"', "steering": lambda: f" {i.strength:g}",
           "penalty": lambda: f" {i.weight:g}"}.get(i.protocol, lambda: "")()
    scope = f" when topic {i.scope}" if i.scope else ""
    if i.direction is None:
        effect = f"k = {i.factor:g}"
    else:
        effect = f"α′ = {'+' if i.direction > 0 else '-'}{'|α|' if i.size is None else f'{i.size:g}'}"
    default = " (default)" if i.default_protocol else ""
    return f"{i.action} concept {i.concept}{factor} via {i.protocol}{default}{arg}{scope}  ({effect})"


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

    ta = {t.name: _topic_text(t) for t in old.topics}
    tb = {t.name: _topic_text(t) for t in new.topics}
    for name in sorted(ta.keys() | tb.keys()):
        if name not in tb:
            changes.append(Change("-", "topic", name, f"topic {name} = {ta[name]}"))
        elif name not in ta:
            changes.append(Change("+", "topic", name, f"topic {name} = {tb[name]}"))
        elif ta[name] != tb[name]:
            changes.append(Change("~", "topic", name, f"topic {name}: {ta[name]} -> {tb[name]}"))

    ra = {(i.concept, i.protocol, i.scope or ""): i for i in old.interventions}
    rb = {(i.concept, i.protocol, i.scope or ""): i for i in new.interventions}
    for key in sorted(ra.keys() | rb.keys()):
        k = f"{key[0]} via {key[1]}" + (f" when topic {key[2]}" if key[2] else "")
        if key not in rb:
            changes.append(Change("-", "rule", k, _rule_text(ra[key])))
        elif key not in ra:
            changes.append(Change("+", "rule", k, _rule_text(rb[key])))
        # whether `via` was written out changes nothing when it names the same protocol
        elif (ra[key].model_dump(exclude={"span", "rule_id", "default_protocol"})
              != rb[key].model_dump(exclude={"span", "rule_id", "default_protocol"})):
            changes.append(Change("~", "rule", k, f"{_rule_text(ra[key])} -> {_rule_text(rb[key])}"))

    def keep_text(k) -> str:
        return f"keep concept {k.concept}" + (f" when topic {k.scope}" if k.scope else "")

    ka, kb = {keep_text(k) for k in old.keeps}, {keep_text(k) for k in new.keeps}
    changes += [Change("-", "keep", t.split()[2], t) for t in sorted(ka - kb)]
    changes += [Change("+", "keep", t.split()[2], t) for t in sorted(kb - ka)]

    ea, eb = {e.text for e in old.expectations}, {e.text for e in new.expectations}
    changes += [Change("-", "expect", t, t) for t in sorted(ea - eb)]
    changes += [Change("+", "expect", t, t) for t in sorted(eb - ea)]
    return changes

"""build_plan: a checked policy -> the Plan (plain, frozen, serialisable data)."""

from __future__ import annotations

import hashlib

from .check import Checked
from .plan import Plan, Source


def build_plan(checked: Checked, source_text: str) -> Plan:
    r = checked.resolved
    return Plan(
        policy=r.policy,
        source=Source(path=r.file.path, sha256=hashlib.sha256(source_text.encode("utf-8")).hexdigest()),
        model=r.model,
        sae=r.sae,
        concepts=tuple(r.concepts.values()),
        topics=tuple(r.topics.values()),
        interventions=tuple(checked.interventions),
        keeps=tuple(checked.keeps),
        expectations=tuple(checked.expectations),
    )

"""The trace page (``ethos trace --html``, and the trace pages ``ethos plan`` writes beside
plan.html): a concept's pairs ranked by their contribution to its learning signal, with the rule
that decides each, rendered from the trace document (``Trace.to_dict()``) only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .env import render


def trace_context(doc: Mapping[str, Any], *, title: str | None = None) -> dict[str, Any]:
    """Template context of a trace document."""
    return {"title": title or f"ethos trace: {doc['concept']}" + (f" in topic {doc['topic']}" if doc.get("topic") else ""),
            "doc": doc, "pairs": list(doc.get("pairs") or []), "by_rule": list((doc.get("accounting") or {}).get("by_rule") or [])}


def render_trace_html(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("trace.html.j2", **trace_context(doc, **kw))


def trace_file_name(concept: str) -> str:
    """The name of a concept's trace page beside plan.html (concept names are identifiers)."""
    return f"trace-{concept}.html"

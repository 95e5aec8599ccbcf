"""Reports: jinja2 templates (``report/templates/``) → Markdown and one self-contained HTML file,
and a rich terminal summary.

Reports are rendered only from documents — the dicts ethos writes as JSON (``audit.json``,
``plan.json`` with the compiled plan's JSON, ``evaluate.json``) — never from live objects, so a
saved document renders exactly as a fresh run does. This package imports nothing of ethos but
``documents``, ``errors`` and ``io``: the modules that produce the documents import it, never
the other way round. The HTML has no scripts and no external resources: plots are inline SVG laid
out in ``layouts`` from the numbers and drawn by the macros in ``macros.html.j2``. All dataset
text goes through autoescaping (HTML) or :func:`md_escape` (Markdown), and is bounded by
:func:`clip` (long tokens cut with a length note; every string a template prints passes it).

Modules:

``format``
    numbers and text for people (``num``, ``pval``, ``ci``, ``est_ci``, ``pct``, ``md_escape``,
    ``oneline``, ``clip``): the one home of number formatting, used by every module that prints a number.
``terminal``
    ``print_fitting_table``: a rich table where it fits the console, else stacked blocks, never a
    cut value.
``layouts``
    ``forest_layout``, ``bars_layout``, ``histogram_layout`` / ``histogram_from_counts``,
    ``scatter_layout``, ``nice_ticks``.
``env``
    the jinja2 environments and ``render(template, **context)``.
``audit``, ``plan``, ``evaluate``
    each report's ``*_context`` (document → template variables) and ``render_*_html`` /
    ``render_*_markdown``; ``print_audit_summary`` and ``print_plan_report`` for the terminal
    (with the topic × concept table and the per-topic checks of ``when topic`` rules).
``trace``
    the trace page (``render_trace_html``): ``ethos trace --html`` and the pages ``ethos plan``
    writes beside plan.html.

Templates meant for reuse (the plan and evaluate reports build on them):

``base.html.j2``
    the page: ``{% block title %}``, ``{% block header %}``, ``{% block content %}``; CSS inline.
``macros.html.j2``
    ``rows_summary(rows)``, ``concept_table(concepts, columns)``, ``share_bars(layout)``,
    ``forest(layout)``, ``histogram(layout)``, ``candidates(cands)``, ``notes(items)``,
    ``heatmap(layout)`` (the audit's topic × concept map).
``macros.md.j2``
    the Markdown counterparts: ``rows_summary``, ``concept_table``, ``candidates``.
"""

from __future__ import annotations

from .audit import AUDIT_COLUMNS, audit_context, print_audit_summary, render_audit_html, render_audit_markdown
from .env import TEMPLATES, environment, render
from .evaluate import evaluate_context, render_evaluate_html, render_evaluate_markdown
from .format import ci, clip, est_ci, md_escape, num, oneline, pct, pval
from .layouts import (
    SERIES_COLORS,
    bars_layout,
    forest_layout,
    histogram_from_counts,
    histogram_layout,
    nice_ticks,
    scatter_layout,
)
from .plan import plan_context, print_plan_report, render_plan_html, render_plan_markdown

__all__ = [
    "AUDIT_COLUMNS", "SERIES_COLORS", "TEMPLATES", "audit_context", "bars_layout", "ci", "clip", "environment",
    "est_ci",
    "evaluate_context", "forest_layout", "histogram_from_counts", "histogram_layout", "md_escape", "nice_ticks",
    "num", "oneline", "pct", "plan_context", "print_audit_summary", "print_plan_report", "pval", "render",
    "render_audit_html", "render_audit_markdown", "render_evaluate_html", "render_evaluate_markdown",
    "render_plan_html", "render_plan_markdown", "scatter_layout",
]

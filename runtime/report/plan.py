"""The plan report (``ethos plan``): Markdown, HTML and the terminal summary, rendered only from
the plan document (``plan.json``, including the example pairs of each rule under ``"examples"``)
and the compiled plan's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..documents import PLAN_REPORT_FORMAT, POLICY_FORMAT_VERSION
from .env import render
from .format import est_ci, num, pct, pval
from .layouts import bars_layout, forest_layout, histogram_from_counts


def plan_context(doc: Mapping[str, Any], plan: Mapping[str, Any], *, title: str | None = None) -> dict[str, Any]:
    """Template context of a dry run from its document and the compiled plan (both as JSON)."""
    if doc.get("format") != PLAN_REPORT_FORMAT or plan.get("format_version") != POLICY_FORMAT_VERSION:
        raise ValueError(f"cannot render a plan document of format {doc.get('format')!r} "
                         f"(plan format_version {plan.get('format_version')!r})")
    concepts = list(doc.get("concepts", []))
    forest_rows = [{"label": c["name"], "points": [
        {"est": c.get("alpha_before"), "lo": c["alpha_before_ci"][0], "hi": c["alpha_before_ci"][1], "series": "before"},
        {"est": c.get("alpha_after"), "lo": c["alpha_after_ci"][0], "hi": c["alpha_after_ci"][1], "series": "after"},
    ]} for c in concepts]
    weights_hist = doc.get("weights", {}).get("histogram", {})
    counts, edges = weights_hist.get("counts", []), weights_hist.get("edges", [])
    layout = histogram_from_counts(counts, edges, xlabel="weight")
    r = doc["rows"]
    met = sum(e["met"] for e in doc.get("expectations", []))
    failed = len(doc.get("expectations", [])) - met
    summary = (f"Plan: {r['kept']:,} pairs kept, {r['reweighted']:,} reweighted, {r['relabelled']:,} relabelled, "
               f"{r['excluded']:,} excluded; {met} expectation{'s' * (met != 1)} met, {failed} failed.")
    return {
        "title": title or f"ethos plan: {plan.get('policy') or doc['policy']['path']}",
        "doc": doc,
        "plan": plan,
        "concepts": concepts,
        "summary": summary,
        "alpha_forest": forest_layout(forest_rows, series=("before", "after"),
                                      xlabel="α: log-odds of preference per sd of Δ, 95% CI"),
        "shares": bars_layout([{"label": c["name"], "values": [c.get("share_before"), c.get("share_after")]}
                               for c in concepts], series=("before", "after"), vmax=1.0),
        "weights": layout,
        "examples": list(doc.get("examples") or []),
    }


def render_plan_html(doc: Mapping[str, Any], plan: Mapping[str, Any], **kw: Any) -> str:
    return render("plan.html.j2", **plan_context(doc, plan, **kw))


def render_plan_markdown(doc: Mapping[str, Any], plan: Mapping[str, Any], **kw: Any) -> str:
    return render("plan.md.j2", **plan_context(doc, plan, **kw))


def print_plan_report(doc: Mapping[str, Any], plan: Mapping[str, Any], console: Any = None) -> None:
    """The terminal summary of a dry run: α before → after per concept, expectations, warnings."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 140
    ctx = plan_context(doc, plan)
    table = Table(title=ctx["title"], show_edge=False, box=None, padding=(0, 2))
    for col in ("concept", "lens", "k", "α before [95% CI]", "target", "α after [95% CI]", "check", "q"):
        table.add_column(col, no_wrap=True)
    for c in ctx["concepts"]:
        check = ("moved (no rule)" if c["collateral"] else "–" if c["factor"] is None or c["alpha_after"] is None
                 else "on target" if c["on_target"] else "off target")
        style = "red" if check in ("off target", "moved (no rule)") and c["protocols"] is not None else None
        table.add_row(c["name"], c["lens"], "–" if c["factor"] is None else num(c["factor"], "g"),
                      est_ci(c["alpha_before"], c["alpha_before_ci"], "+.3f"), num(c["alpha_target"], "+.3f"),
                      est_ci(c["alpha_after"], c["alpha_after_ci"], "+.3f"), check, pval(c["q"]), style=style)
    console.print(table)
    console.print(f"ESS {num(doc['ess'], ',.0f')} ({pct(doc['ess_fraction'])} of the pairs in the data)")
    for e in doc.get("expectations", []):
        mark = "[green]met[/green]" if e["met"] else "[red]FAILED[/red]"
        console.print(f"  line {e['line']}: {e['text']}  → {num(e['value'], '.3g')} {mark}")
    for w in doc.get("warnings", []):
        console.print(f"  [yellow]warning:[/yellow] {w}")

"""The audit report (``ethos audit``): Markdown, HTML and the terminal summary, rendered from the
audit document (``audit.json``) only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..documents import concepts_by_share
from .env import render
from .format import est_ci, finite, num, oneline, pct, pval
from .layouts import bars_layout, forest_layout

AUDIT_COLUMNS = ("concept", "lens", "mean_delta", "d", "win_rate", "q", "alpha", "share", "stable")


def audit_context(doc: Mapping[str, Any], *, title: str | None = None) -> dict[str, Any]:
    """Template context of an audit from its JSON document (``AuditResult.to_dict()``)."""
    concepts = concepts_by_share(doc.get("concepts", []))
    forest_rows_d = [{"label": c["name"], "points": [{"est": c.get("d"), "lo": (c.get("d_ci") or [None, None])[0],
                                                       "hi": (c.get("d_ci") or [None, None])[1]}]} for c in concepts]
    forest_rows_a = [{"label": c["name"], "points": [{"est": c.get("alpha"), "lo": (c.get("alpha_ci") or [None, None])[0],
                                                       "hi": (c.get("alpha_ci") or [None, None])[1]}]} for c in concepts]
    return {
        "title": title or "ethos audit",
        "doc": doc,
        "concepts": concepts,
        "columns": AUDIT_COLUMNS,
        "forest_d": forest_layout(forest_rows_d, xlabel="Cohen's d of Δ (chosen − rejected), 95% bootstrap CI"),
        "forest_alpha": forest_layout(forest_rows_a, xlabel="α: log-odds of preference per sd of Δ, 95% Wald CI"),
        "shares": bars_layout([{"label": c["name"], "values": [c.get("share")]} for c in concepts], vmax=1.0),
        "candidates": doc.get("candidates"),
        "legend": legend(doc),
        "heatmap": heatmap_layout(doc.get("topics")) if doc.get("topics") else None,
    }


NEG, POS = (47, 109, 179), (217, 130, 43)  # d < 0 (rejected has more) and d > 0 (chosen has more)


def _shade(d: Any, vmax: float) -> str:
    if not finite(d):
        return "#f3f3f3"
    t = min(1.0, abs(float(d)) / vmax)
    rgb = POS if d > 0 else NEG
    return "#" + "".join(f"{round(255 + (c - 255) * t):02x}" for c in rgb)


def heatmap_layout(topics: Any) -> dict[str, Any]:
    """The topic × concept heat map: one row per topic, one cell per concept, filled by d (a
    diverging scale: orange where chosen replies have more of the concept, blue where rejected
    ones do, white at 0, full colour at ±``vmax``, the largest |d| but at least 0.5)."""
    names = list(dict.fromkeys(c["name"] for t in topics for c in t["concepts"]))
    ds = [abs(c["d"]) for t in topics for c in t["concepts"] if finite(c.get("d"))]
    vmax = max([0.5, *ds])
    rows = []
    for t in topics:
        by = {c["name"]: c for c in t["concepts"]}
        cells = []
        for k in names:
            c = by.get(k) or {}
            d = c.get("d")
            dark = finite(d) and abs(float(d)) / vmax > 0.6
            cells.append({"concept": k, "cell": c, "fill": _shade(d, vmax), "ink": "#fff" if dark else "#1d1d1f",
                          "sig": finite(c.get("q")) and c["q"] < 0.05})
        rows.append({"topic": t, "cells": cells})
    return {"concepts": names, "rows": rows, "vmax": vmax,
            "scale": [{"d": v, "fill": _shade(v, vmax), "ink": "#fff" if abs(v) / vmax > 0.6 else "#1d1d1f"}
                      for v in (-vmax, -vmax / 2, 0.0, vmax / 2, vmax)]}


def legend(doc: Mapping[str, Any]) -> str:
    """Which test each statistic of the concept table comes from (marginal d/q against joint α)."""
    test = (doc.get("settings") or {}).get("test", "sign")
    return (f"Marginal, one concept at a time: d = Cohen's d of Δ (chosen − rejected) with a 95% bootstrap "
            f"CI; win = P(Δ > 0 | Δ ≠ 0); q = the {test} test's p-value, Benjamini–Hochberg adjusted. Joint: "
            f"α = the Bradley–Terry coefficient with all concepts fitted together, 95% Wald CI; share = its part "
            f"of Σ|α·z|. Different tests: d and α can differ in sign, and a small q can sit next to an α whose "
            f"interval spans 0.")


def render_audit_html(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("audit.html.j2", **audit_context(doc, **kw))


def render_audit_markdown(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("audit.md.j2", **audit_context(doc, **kw))


def print_audit_summary(doc: Mapping[str, Any], console: Any = None) -> None:
    """The terminal summary: rows, a table of concepts sorted by share, correlated pairs, notes,
    and the discovery candidates."""
    from rich.table import Table
    from rich.text import Text

    from .terminal import console_for_output, print_fitting_table

    console = console_for_output(console)
    rows = doc.get("rows", {})
    excluded = rows.get("excluded", {}) or {}
    detail = ", ".join(f"{r}: {n}" for r, n in excluded.items())
    console.print(Text(
        f"rows: {rows.get('input')} input, {rows.get('usable')} usable, {sum(excluded.values())} excluded"
        + (f" ({detail})" if detail else "") + f"; {doc.get('pairs')} pairs audited"))
    table_rows = []
    for c in concepts_by_share(doc.get("concepts", [])):
        q = c.get("q")
        style = "bold" if finite(q) and q < 0.05 else ""
        table_rows.append(([
            Text(c["name"], style=style), num(c.get("mean_delta"), "+#.3g"),
            est_ci(c.get("d"), c.get("d_ci")), pct(c.get("win_rate")), pval(q),
            est_ci(c.get("alpha"), c.get("alpha_ci")), pct(c.get("share")),
            "yes" if c.get("split_half_stable") else "no",
        ], None))
    print_fitting_table(console, [("concept", "left"), ("mean Δ", "right"), ("d [95% CI]", "right"), ("win", "right"),
                                  ("q", "right"), ("α [95% CI]", "right"), ("share", "right"), ("stable", "center")],
                        table_rows, padding=1)
    console.print(Text(legend(doc), style="dim"))
    for c in doc.get("concepts", []):
        if c.get("note"):
            console.print(Text(f"  {c['name']}: {c['note']}", style="dim"))
    for note in doc.get("notes", []):
        console.print(Text(f"note: {note}", style="yellow"))
    joint = doc.get("joint", {})
    if joint.get("note"):
        console.print(Text(f"joint fit: {joint['note']}", style="yellow"))
    if doc.get("topics"):
        print_topics(doc, console)
    cands = doc.get("candidates")
    if cands is not None:
        disc = doc.get("discovery", {})
        console.print(Text(f"discovery: {disc.get('tested')} of {disc.get('d_sae')} latents tested, "
                           f"{disc.get('survivors')} at q < {disc.get('q_max')}, {len(cands)} candidate concepts"))
        ct = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
        for col in ("candidate", "latents", "d", "win", "q", "label"):
            ct.add_column(col, no_wrap=col != "label")
        for cand in cands:
            first = next(iter(cand.get("labels", {}).values()), {})
            label = ", ".join(first.get("tokens", [])[:5]) or oneline(" | ".join(first.get("snippets", [])[:1]), 60)
            ids = cand["features"]
            ct.add_row(cand["name"], ",".join(map(str, ids[:6])) + ("…" if len(ids) > 6 else ""),
                       num(cand.get("d"), "+.2f"), pct(cand.get("win_rate")), pval(cand.get("q")), Text(label))
        console.print(ct)


def print_topics(doc: Mapping[str, Any], console: Any) -> None:
    """The topic × concept table: a row per (topic, concept) cell — n, d with its CI, q (BH over
    every cell), α within the topic with its CI and split-half stability — and each topic's label."""
    from rich.text import Text

    from .terminal import print_fitting_table

    topics = doc["topics"]
    clusters = doc.get("topic_clusters")
    head = f"topics: {len(topics)}"
    if clusters:
        head += (f" ({clusters.get('k')} discovered: k-means of the prompts' {clusters.get('features')} features, "
                 f"seed {clusters.get('seed')})")
    console.print(Text(head + f"; {sum(t.get('n_pairs') or 0 for t in topics)} pairs in them"))
    for t in topics:
        console.print(Text(f"  {t['name']}: {t.get('n_pairs')} pairs" + (f", {oneline(t['label'], 60)}"
                                                                            if t.get("label") else ""), style="dim"))
    rows = []
    for t in topics:
        for c in t["concepts"]:
            q = c.get("q")
            rows.append(([Text(f"{t['name']} {c['name']}", style="bold" if finite(q) and q < 0.05 else ""),
                          str(c.get("n")), est_ci(c.get("d"), c.get("d_ci")), pval(q),
                          est_ci(c.get("alpha"), c.get("alpha_ci")), "yes" if c.get("split_half_stable") else "no"],
                         None))
    print_fitting_table(console, [("topic concept", "left"), ("n", "right"), ("d [95% CI]", "right"), ("q", "right"),
                                  ("α in topic", "right"), ("stable", "center")], rows, padding=1)
    console.print(Text("d and α per topic on the whole data's scale; q: Benjamini–Hochberg over every "
                       "(topic, concept) cell.", style="dim"))

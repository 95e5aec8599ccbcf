"""Reports: jinja2 templates (``runtime/templates/``) → Markdown and one self-contained HTML file,
and a rich terminal summary.

Reports are rendered only from the serialised (JSON) form of a result, never from live objects,
so a saved ``audit.json`` renders exactly as a fresh run does. The HTML has no scripts and no
external resources: plots are inline SVG laid out here from the numbers (``forest_layout``,
``bars_layout``, ``histogram_layout``) and drawn by the macros in ``macros.html.j2``. All dataset
text goes through autoescaping (HTML) or :func:`md_escape` (Markdown).

Templates meant for reuse (the plan and evaluate reports build on them):

``base.html.j2``
    the page: ``{% block title %}``, ``{% block header %}``, ``{% block content %}``; CSS inline.
``macros.html.j2``
    ``rows_summary(rows)``, ``concept_table(concepts, columns)``, ``share_bars(layout)``,
    ``forest(layout)``, ``histogram(layout)``, ``candidates(cands)``, ``notes(items)``.
``macros.md.j2``
    the Markdown counterparts: ``rows_summary``, ``concept_table``, ``candidates``.

Each report has a ``*_context`` (JSON document → template variables) and ``render_*_html`` /
``render_*_markdown``: ``audit``, ``plan`` and ``evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

TEMPLATES = Path(__file__).resolve().parent / "templates"
SERIES_COLORS = ("#2f6db3", "#d9822b", "#3a9a5b", "#8e44ad")


# ---------------------------------------------------------------------------------------------
# Formatting


def num(x: Any, spec: str = ".3g") -> str:
    """A number for people; ``–`` for missing (None/NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) and spec == ".3g":
        return f"{x:,}"
    return format(x, spec)


def pval(x: Any) -> str:
    """A p- or q-value: 3 significant digits, scientific below 0.001."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x == 0:
        return "<1e-300"
    return f"{x:.2e}" if x < 1e-3 else f"{x:.3f}"


def ci(pair: Sequence[Any] | None, spec: str = "+.2f") -> str:
    if not pair or any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in pair):
        return "–"
    return f"[{format(pair[0], spec)}, {format(pair[1], spec)}]"


def est_ci(est: Any, pair: Sequence[Any] | None, spec: str = "+.2f") -> str:
    """An estimate and its CI (``+0.17 [+0.08, +0.27]``); ``–`` when the estimate is missing."""
    if est is None or (isinstance(est, float) and not math.isfinite(est)):
        return "–"
    c = ci(pair, spec)
    return format(est, spec) + ("" if c == "–" else " " + c)


def pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:.1f}%"


_MD_SPECIAL = str.maketrans({
    "\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "|": "\\|", "#": "\\#",
    "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " ", "\t": " ",
})


def md_escape(text: Any) -> str:
    """Inline Markdown text that renders literally (no markup, no HTML, one line)."""
    return str(text).translate(_MD_SPECIAL)


def oneline(text: Any, width: int = 160) -> str:
    """Collapse whitespace and shorten to ``width`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Plot layouts (numbers → coordinates; the macros draw them)


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def forest_layout(
    rows: Sequence[Mapping[str, Any]],
    *,
    width: int = 640,
    label_width: int = 170,
    row_height: int = 22,
    series: Sequence[str] = ("",),
    xlabel: str = "",
    zero: float | None = 0.0,
) -> dict[str, Any]:
    """Coordinates of a forest plot. ``rows``: ``{"label", "points": [{"est", "lo", "hi",
    "series"}]}`` (several points per row: e.g. α before and after a plan)."""
    values = [v for r in rows for p in r["points"] for v in (p.get("est"), p.get("lo"), p.get("hi")) if _finite(v)]
    if zero is not None:
        values.append(zero)
    lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    right = 20
    plot = width - label_width - right
    top = 10
    height = top + row_height * max(len(rows), 1) + 42

    def x(v: float) -> float:
        return round(label_width + (v - lo) / (hi - lo) * plot, 2)

    nser = max(len(series), 1)
    out_rows = []
    for i, r in enumerate(rows):
        y = top + row_height * i + row_height / 2
        pts = []
        for p in r["points"]:
            k = series.index(p.get("series", "")) if p.get("series", "") in series else 0
            dy = (k - (nser - 1) / 2) * min(6, row_height / (nser + 1))
            est, plo, phi = p.get("est"), p.get("lo"), p.get("hi")
            pts.append({
                "x": x(est) if _finite(est) else None,
                "x_lo": x(plo) if _finite(plo) else None,
                "x_hi": x(phi) if _finite(phi) else None,
                "y": round(y + dy, 2),
                "color": SERIES_COLORS[k % len(SERIES_COLORS)],
                "title": f"{p.get('series') or r['label']}: {est_ci(est, [plo, phi], '+.3f')}",
            })
        out_rows.append({"label": r["label"], "y": round(y, 2), "points": pts})
    axis_y = top + row_height * max(len(rows), 1) + 6
    return {
        "width": width,
        "height": height,
        "label_width": label_width,
        "plot_right": width - right,
        "top": top,
        "axis_y": axis_y,
        "zero_x": x(zero) if zero is not None else None,
        "ticks": [{"x": x(t), "label": f"{t:g}"} for t in nice_ticks(lo, hi)],
        "rows": out_rows,
        "xlabel": xlabel,
        "legend": [{"label": s, "color": SERIES_COLORS[k % len(SERIES_COLORS)]} for k, s in enumerate(series) if s],
    }


def bars_layout(
    rows: Sequence[Mapping[str, Any]],
    *,
    width: int = 640,
    label_width: int = 170,
    row_height: int = 20,
    series: Sequence[str] = ("",),
    vmax: float | None = None,
    fmt: str = "pct",
) -> dict[str, Any]:
    """Horizontal bars, one or more per row: ``rows`` = ``{"label", "values": [v per series]}``
    (the share of each concept; before/after a plan as two series)."""
    vals = [v for r in rows for v in r["values"] if _finite(v)]
    top_v = vmax if vmax is not None else (max(vals) if vals else 1.0)
    top_v = top_v if top_v > 0 else 1.0
    plot = width - label_width - 70
    nser = max(len(series), 1)
    bar_h = max(4.0, (row_height - 6) / nser)
    out_rows = []
    for i, r in enumerate(rows):
        y0 = 6 + row_height * i
        bars = []
        for k, v in enumerate(r["values"]):
            ok = _finite(v)
            w = max(0.0, v) / top_v * plot if ok else 0.0
            bars.append({
                "x": label_width, "y": round(y0 + k * bar_h, 2), "w": round(w, 2), "h": round(bar_h - 1, 2),
                "text": (pct(v) if fmt == "pct" else num(v)) if ok else "–",
                "text_x": round(label_width + w + 4, 2), "color": SERIES_COLORS[k % len(SERIES_COLORS)],
            })
        out_rows.append({"label": r["label"], "y": round(y0 + row_height / 2, 2), "bars": bars})
    return {
        "width": width,
        "height": 12 + row_height * max(len(rows), 1) + (16 if any(series) else 0),
        "label_width": label_width,
        "rows": out_rows,
        "legend": [{"label": s, "color": SERIES_COLORS[k % len(SERIES_COLORS)]} for k, s in enumerate(series) if s],
    }


def histogram_layout(values: Iterable[float], *, bins: int = 30, width: int = 640, height: int = 180,
                     xlabel: str = "") -> dict[str, Any]:
    """Bars of a histogram of ``values`` (the plan's per-pair weights)."""
    v = np.asarray([x for x in values if _finite(x)], dtype=float)
    if v.size == 0:
        return histogram_from_counts([], [], width=width, height=height, xlabel=xlabel)
    counts, edges = np.histogram(v, bins=bins)
    return histogram_from_counts(counts.tolist(), edges.tolist(), width=width, height=height, xlabel=xlabel)


def histogram_from_counts(counts: Sequence[int], edges: Sequence[float], *, width: int = 640, height: int = 180,
                          xlabel: str = "") -> dict[str, Any]:
    """Bars of a histogram from its counts and bin edges (the plan document stores those, not one
    value per pair)."""
    left, right, top, bottom = 40, 12, 8, 30
    if not counts:
        return {"width": width, "height": height, "bars": [], "ticks": [], "xlabel": xlabel, "axis_y": height - bottom,
                "left": left, "right": width - right, "n": 0}
    plot_w, plot_h = width - left - right, height - top - bottom
    cmax = max(max(counts), 1)
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo if hi > lo else 1.0

    def x(e: float) -> float:
        return round(left + (e - lo) / span * plot_w, 2)

    bars = []
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        h = c / cmax * plot_h
        bars.append({"x": x(a), "w": max(round(x(b) - x(a) - 1, 2), 0.5), "y": round(top + plot_h - h, 2),
                     "h": round(h, 2), "title": f"{a:.3g}–{b:.3g}: {int(c)}"})
    return {
        "width": width, "height": height, "bars": bars, "axis_y": top + plot_h, "left": left, "right": width - right,
        "ticks": [{"x": x(t), "label": f"{t:g}"} for t in nice_ticks(lo, hi)], "xlabel": xlabel, "n": int(sum(counts)),
        "cmax": cmax,
    }


def scatter_layout(points: Sequence[Mapping[str, Any]], *, width: int = 480, height: int = 300, xlabel: str = "",
                   ylabel: str = "") -> dict[str, Any]:
    """Coordinates of a labelled scatter plot with vertical error bars: ``points`` =
    ``{"label", "x", "y", "lo", "hi"}`` (predicted against measured shift, one point per concept).
    Points without a finite x and y are left out; zero lines are drawn when zero is in range."""
    left, right, top, bottom = 56, 110, 10, 44
    pts = [p for p in points if _finite(p.get("x")) and _finite(p.get("y"))]
    xs = [p["x"] for p in pts] + [0.0]
    ys = [v for p in pts for v in (p["y"], p.get("lo"), p.get("hi")) if _finite(v)] + [0.0]

    def span(vals: list[float]) -> tuple[float, float]:
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-12:
            lo, hi = lo - 1, hi + 1
        pad = 0.08 * (hi - lo)
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = span(xs), span(ys)
    pw, ph = width - left - right, height - top - bottom

    def X(v: float) -> float:
        return round(left + (v - x0) / (x1 - x0) * pw, 2)

    def Y(v: float) -> float:
        return round(top + (y1 - v) / (y1 - y0) * ph, 2)

    out = []
    for p in pts:
        lo, hi = p.get("lo"), p.get("hi")
        out.append({
            "label": p["label"], "x": X(p["x"]), "y": Y(p["y"]),
            "y_lo": Y(lo) if _finite(lo) else None, "y_hi": Y(hi) if _finite(hi) else None,
            "title": f"{p['label']}: predicted {p['x']:+.3f}, measured {est_ci(p['y'], [lo, hi], '+.3f')}",
        })
    return {
        "width": width, "height": height, "left": left, "right": width - right, "top": top, "axis_y": top + ph,
        "zero_x": X(0.0), "zero_y": Y(0.0), "points": out, "n": len(out), "xlabel": xlabel, "ylabel": ylabel,
        "xticks": [{"x": X(t), "label": f"{t:g}"} for t in nice_ticks(x0, x1, 5)],
        "yticks": [{"y": Y(t), "label": f"{t:g}"} for t in nice_ticks(y0, y1, 5)],
    }


# ---------------------------------------------------------------------------------------------
# Environments


@lru_cache(maxsize=2)
def environment(kind: str = "html") -> jinja2.Environment:
    """The jinja2 environment for ``"html"`` (autoescape on) or ``"md"`` templates."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=(kind == "html"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=num, pval=pval, ci=ci, est_ci=est_ci, pct=pct, md=md_escape, oneline=oneline)
    env.globals.update(forest_layout=forest_layout, bars_layout=bars_layout, histogram_layout=histogram_layout,
                       scatter_layout=scatter_layout)
    return env


def render(template: str, **context: Any) -> str:
    kind = "html" if template.endswith(".html.j2") else "md"
    return environment(kind).get_template(template).render(**context)


# ---------------------------------------------------------------------------------------------
# The audit report


AUDIT_COLUMNS = ("concept", "lens", "mean_delta", "d", "win_rate", "q", "alpha", "share", "stable")


def _order(concepts: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """By share (largest first), unfitted concepts last by |d|."""
    def key(c: Mapping[str, Any]) -> tuple[int, float]:
        s, d = c.get("share"), c.get("d")
        if _finite(s):
            return (0, -s)
        return (1, -abs(d) if _finite(d) else 0.0)

    return sorted(concepts, key=key)


def audit_context(doc: Mapping[str, Any], *, title: str | None = None) -> dict[str, Any]:
    """Template context of an audit from its JSON document (``AuditResult.to_dict()``)."""
    concepts = _order(doc.get("concepts", []))
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
    }


def render_audit_html(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("audit.html.j2", **audit_context(doc, **kw))


def render_audit_markdown(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("audit.md.j2", **audit_context(doc, **kw))


def print_audit_summary(doc: Mapping[str, Any], console: Any = None) -> None:
    """The terminal summary: rows, a table of concepts sorted by share, correlated pairs, notes,
    and the discovery candidates."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 140
    rows = doc.get("rows", {})
    excluded = rows.get("excluded", {}) or {}
    detail = ", ".join(f"{r}: {n}" for r, n in excluded.items())
    console.print(Text(
        f"rows: {rows.get('input')} input, {rows.get('usable')} usable, {sum(excluded.values())} excluded"
        + (f" ({detail})" if detail else "") + f"; {doc.get('pairs')} pairs audited"))
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    for col, just in (("concept", "left"), ("mean Δ", "right"), ("d [95% CI]", "right"), ("win", "right"),
                      ("q", "right"), ("α [95% CI]", "right"), ("share", "right"), ("stable", "center")):
        table.add_column(col, justify=just, no_wrap=True)
    for c in _order(doc.get("concepts", [])):
        q = c.get("q")
        style = "bold" if _finite(q) and q < 0.05 else ""
        table.add_row(
            Text(c["name"], style=style), num(c.get("mean_delta"), "+#.3g"),
            est_ci(c.get("d"), c.get("d_ci")), pct(c.get("win_rate")), pval(q),
            est_ci(c.get("alpha"), c.get("alpha_ci")), pct(c.get("share")),
            "yes" if c.get("split_half_stable") else "no",
        )
    console.print(table)
    for c in doc.get("concepts", []):
        if c.get("note"):
            console.print(Text(f"  {c['name']}: {c['note']}", style="dim"))
    for note in doc.get("notes", []):
        console.print(Text(f"note: {note}", style="yellow"))
    joint = doc.get("joint", {})
    if joint.get("note"):
        console.print(Text(f"joint fit: {joint['note']}", style="yellow"))
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


# ---------------------------------------------------------------------------------------------
# The plan report (``ethos plan``): rendered from the plan document and the serialised plan only


def plan_context(doc: Mapping[str, Any], plan: Mapping[str, Any], examples: Sequence[Mapping[str, Any]] = (),
                 *, title: str | None = None) -> dict[str, Any]:
    from .planner import FORMAT as PLAN_FORMAT

    if doc.get("format") != PLAN_FORMAT or plan.get("format_version") != "1":
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
        "examples": list(examples),
    }


def render_plan_html(doc: Mapping[str, Any], plan: Mapping[str, Any], examples: Sequence[Mapping[str, Any]] = (),
                     **kw: Any) -> str:
    return render("plan.html.j2", **plan_context(doc, plan, examples, **kw))


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


# ---------------------------------------------------------------------------------------------
# The evaluate report (``ethos evaluate``): rendered from evaluate.json only


def _model_labels(models: Sequence[Mapping[str, Any]]) -> list[str]:
    """One distinct label per model: its name, else its path where names repeat (two ``train``
    folders of different runs), else the path with its position."""
    names = [str(m.get("name") or m.get("path") or "model") for m in models]
    labels = [n if names.count(n) == 1 else str(m.get("path") or n) for n, m in zip(names, models)]
    return [lab if labels.count(lab) == 1 else f"{lab} #{i + 1}" for i, lab in enumerate(labels)]


def _shift_sd_ci(row: Mapping[str, Any]) -> tuple[Any, Any]:
    """The bootstrap CI of a shift in sd units (the CI in the concept's units over its sd)."""
    sd, pair = row.get("sd"), row.get("ci") or [None, None]
    if not _finite(sd) or sd <= 0:
        return None, None
    return tuple(v / sd if _finite(v) else None for v in pair)  # type: ignore[return-value]


def evaluate_context(doc: Mapping[str, Any], *, title: str | None = None) -> dict[str, Any]:
    """Template context of an evaluation from its JSON document (``evaluate.build_report``)."""
    from .evaluate import FORMAT as EVALUATE_FORMAT

    if doc.get("format") != EVALUATE_FORMAT:
        raise ValueError(f"cannot render an evaluate document of format {doc.get('format')!r}")
    raw = list(doc.get("models", []))
    labels = _model_labels(raw)
    names: list[str] = list(doc.get("base_means", {}))
    for m in raw:
        names += [r["concept"] for r in m.get("concepts", []) if r["concept"] not in names]
    xlabel = "shift, model − base (sd units), 95% bootstrap CI over prompts"
    models = []
    for label, m in zip(labels, raw):
        rows = []
        for r in m.get("concepts", []):
            lo, hi = _shift_sd_ci(r)
            rows.append({**r, "shift_sd_ci": [lo, hi], "ci": r.get("ci") or [None, None],
                         "significant": bool(r.get("significant"))})
        pred = {"n_concepts": 0, "spearman": None, "r2": None, "sign_agreement": None, "slope": None, "note": "",
                **(m.get("prediction") or {})}
        models.append({
            "label": label, "name": m.get("name"), "path": m.get("path"), "concepts": rows, "prediction": pred,
            "preference": m.get("preference") or None,
            "examples": list(m.get("examples") or []),
            "significant": [r["concept"] for r in rows if r["significant"]],
            "forest": forest_layout([{"label": r["concept"], "points": [
                {"est": r.get("shift_sd"), "lo": r["shift_sd_ci"][0], "hi": r["shift_sd_ci"][1]}]} for r in rows],
                xlabel=xlabel),
            "scatter": scatter_layout(
                [{"label": r["concept"], "x": r.get("predicted"), "y": r.get("shift_sd"),
                  "lo": r["shift_sd_ci"][0], "hi": r["shift_sd_ci"][1]} for r in rows],
                xlabel="predicted k·α", ylabel="measured shift (sd)"),
        })
    overview = None
    if 1 < len(models) <= len(SERIES_COLORS):
        by = [{r["concept"]: r for r in mod["concepts"]} for mod in models]
        overview = forest_layout([{"label": c, "points": [
            {"est": b[c].get("shift_sd"), "lo": b[c]["shift_sd_ci"][0], "hi": b[c]["shift_sd_ci"][1],
             "series": mod["label"]} for mod, b in zip(models, by) if c in b]} for c in names],
            series=tuple(labels), xlabel=xlabel)
    return {
        "title": title or f"ethos evaluate: policy {doc.get('policy') or '(unnamed)'}",
        "doc": doc,
        "concepts": names,
        "models": models,
        "overview": overview,
    }


def render_evaluate_html(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("evaluate.html.j2", **evaluate_context(doc, **kw))


def render_evaluate_markdown(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("evaluate.md.j2", **evaluate_context(doc, **kw))

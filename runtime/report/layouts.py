"""Plot layouts: numbers → coordinates of inline SVG plots; the macros in
``templates/macros.html.j2`` draw them. Pure functions of their arguments."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .format import est_ci, finite, num, pct

SERIES_COLORS = ("#2f6db3", "#d9822b", "#3a9a5b", "#8e44ad")


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
    values = [v for r in rows for p in r["points"] for v in (p.get("est"), p.get("lo"), p.get("hi")) if finite(v)]
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
                "x": x(est) if finite(est) else None,
                "x_lo": x(plo) if finite(plo) else None,
                "x_hi": x(phi) if finite(phi) else None,
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


CHAR_W = 6.6  # an upper estimate of the width of one character of the 11px value labels
LABEL_H = 12  # the height a value label needs


def text_width(text: str, char_w: float = CHAR_W) -> float:
    return round(len(text) * char_w, 2)


def bars_layout(
    rows: Sequence[Mapping[str, Any]],
    *,
    width: int = 640,
    label_width: int = 170,
    row_height: int | None = None,
    series: Sequence[str] = ("",),
    vmax: float | None = None,
    fmt: str = "pct",
) -> dict[str, Any]:
    """Horizontal bars, one or more per row: ``rows`` = ``{"label", "values": [v per series]}``
    (the share of each concept; before/after a plan as two series).

    Each bar is tall enough for its value label (``LABEL_H``), so labels of neighbouring bars never
    overlap; a label goes just right of its bar, or inside its right end (``inside``, drawn in
    white) when it would not fit right of the bar within the plot."""
    vals = [v for r in rows for v in r["values"] if finite(v)]
    top_v = vmax if vmax is not None else (max(vals) if vals else 1.0)
    top_v = top_v if top_v > 0 else 1.0
    plot = width - label_width - 12
    nser = max(len(series), 1)
    bar_h = float(LABEL_H + 2)
    row_height = row_height if row_height is not None else int(bar_h * nser + 8)
    bar_h = max(bar_h, (row_height - 6) / nser) if row_height >= bar_h * nser + 6 else bar_h
    out_rows = []
    y0 = 6.0
    for r in rows:
        bars = []
        for k, v in enumerate(r["values"]):
            ok = finite(v)
            w = min(max(0.0, v) / top_v, 1.0) * plot if ok else 0.0
            text = (pct(v) if fmt == "pct" else num(v)) if ok else "–"
            tw = text_width(text)
            inside = label_width + w + 4 + tw > width - 2 and w >= tw + 8
            text_x = label_width + w - 4 - tw if inside else label_width + w + 4
            bars.append({
                "x": label_width, "y": round(y0 + k * bar_h, 2), "w": round(w, 2), "h": round(bar_h - 2, 2),
                "text": text, "text_x": round(text_x, 2), "text_w": tw, "inside": inside,
                "text_y": round(y0 + k * bar_h + bar_h - 4, 2), "color": SERIES_COLORS[k % len(SERIES_COLORS)],
            })
        out_rows.append({"label": r["label"], "y": round(y0 + bar_h * len(r["values"]) / 2, 2), "bars": bars})
        y0 += max(row_height, bar_h * len(r["values"]) + 6)
    axis_y = round(y0, 2)
    ticks = [{"x": round(label_width + t / top_v * plot, 2), "label": pct(t) if fmt == "pct" else f"{t:g}"}
             for t in nice_ticks(0.0, top_v, 5)]
    if fmt == "pct":
        for t in ticks:
            t["label"] = t["label"].replace(".0%", "%")
    return {
        "width": width,
        "height": round(axis_y + 22 + (16 if any(series) else 0), 2),
        "axis_y": axis_y,
        "ticks": ticks,
        "label_width": label_width,
        "plot_right": label_width + plot,
        "rows": out_rows,
        "legend": [{"label": s, "color": SERIES_COLORS[k % len(SERIES_COLORS)]} for k, s in enumerate(series) if s],
        "label_h": LABEL_H,
    }


def histogram_layout(values: Iterable[float], *, bins: int = 30, width: int = 640, height: int = 180,
                     xlabel: str = "", ylabel: str = "pairs") -> dict[str, Any]:
    """Bars of a histogram of ``values`` (the plan's per-pair weights)."""
    import numpy as np  # only here: the renderers themselves need no numpy

    v = np.asarray([x for x in values if finite(x)], dtype=float)
    if v.size == 0:
        return histogram_from_counts([], [], width=width, height=height, xlabel=xlabel, ylabel=ylabel)
    counts, edges = np.histogram(v, bins=bins)
    return histogram_from_counts(counts.tolist(), edges.tolist(), width=width, height=height, xlabel=xlabel,
                                 ylabel=ylabel)


def histogram_from_counts(counts: Sequence[int], edges: Sequence[float], *, width: int = 640, height: int = 180,
                          xlabel: str = "", ylabel: str = "pairs") -> dict[str, Any]:
    """Bars of a histogram from its counts and bin edges (the plan document stores those, not one
    value per pair), with an x axis and a y axis of counts (``yticks``, whole numbers only)."""
    left, right, top, bottom = 56, 12, 8, 30
    if not counts:
        return {"width": width, "height": height, "bars": [], "ticks": [], "yticks": [], "xlabel": xlabel,
                "ylabel": ylabel, "axis_y": height - bottom, "top": top, "left": left, "right": width - right, "n": 0}
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
    yticks = [t for t in nice_ticks(0, cmax, 4) if float(t).is_integer()]
    return {
        "width": width, "height": height, "bars": bars, "axis_y": top + plot_h, "top": top, "left": left,
        "right": width - right, "ticks": [{"x": x(t), "label": f"{t:g}"} for t in nice_ticks(lo, hi)],
        "yticks": [{"y": round(top + plot_h - t / cmax * plot_h, 2), "label": f"{int(t):,}"} for t in yticks],
        "xlabel": xlabel, "ylabel": ylabel, "n": int(sum(counts)), "cmax": cmax,
    }


def scatter_layout(points: Sequence[Mapping[str, Any]], *, width: int = 480, height: int = 300, xlabel: str = "",
                   ylabel: str = "") -> dict[str, Any]:
    """Coordinates of a labelled scatter plot with vertical error bars: ``points`` =
    ``{"label", "x", "y", "lo", "hi"}`` (predicted against measured shift, one point per concept).
    Points without a finite x and y are left out; zero lines are drawn when zero is in range."""
    left, right, top, bottom = 56, 110, 10, 44
    pts = [p for p in points if finite(p.get("x")) and finite(p.get("y"))]
    xs = [p["x"] for p in pts] + [0.0]
    ys = [v for p in pts for v in (p["y"], p.get("lo"), p.get("hi")) if finite(v)] + [0.0]

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
            "y_lo": Y(lo) if finite(lo) else None, "y_hi": Y(hi) if finite(hi) else None,
            "title": f"{p['label']}: predicted {p['x']:+.3f}, measured {est_ci(p['y'], [lo, hi], '+.3f')}",
        })
    return {
        "width": width, "height": height, "left": left, "right": width - right, "top": top, "axis_y": top + ph,
        "zero_x": X(0.0), "zero_y": Y(0.0), "points": out, "n": len(out), "xlabel": xlabel, "ylabel": ylabel,
        "xticks": [{"x": X(t), "label": f"{t:g}"} for t in nice_ticks(x0, x1, 5)],
        "yticks": [{"y": Y(t), "label": f"{t:g}"} for t in nice_ticks(y0, y1, 5)],
    }

"""The evaluate report (``ethos evaluate``): Markdown and HTML rendered from ``evaluate.json`` only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..documents import EVALUATE_FORMAT
from .env import render
from .format import finite
from .layouts import SERIES_COLORS, forest_layout, scatter_layout


def model_labels(models: Sequence[Mapping[str, Any]]) -> list[str]:
    """One distinct label per model: its name, else its path where names repeat (two ``train``
    folders of different runs), else the path with its position."""
    names = [str(m.get("name") or m.get("path") or "model") for m in models]
    labels = [n if names.count(n) == 1 else str(m.get("path") or n) for n, m in zip(names, models)]
    return [lab if labels.count(lab) == 1 else f"{lab} #{i + 1}" for i, lab in enumerate(labels)]


def shift_sd_ci(row: Mapping[str, Any]) -> tuple[Any, Any]:
    """The bootstrap CI of a shift in sd units (the CI in the concept's units over its sd)."""
    sd, pair = row.get("sd"), row.get("ci") or [None, None]
    if not finite(sd) or sd <= 0:
        return None, None
    return tuple(v / sd if finite(v) else None for v in pair)  # type: ignore[return-value]


def evaluate_context(doc: Mapping[str, Any], *, title: str | None = None) -> dict[str, Any]:
    """Template context of an evaluation from its JSON document (``evaluate.build_report``)."""
    if doc.get("format") != EVALUATE_FORMAT:
        raise ValueError(f"cannot render an evaluate document of format {doc.get('format')!r}")
    raw = list(doc.get("models", []))
    labels = model_labels(raw)
    names: list[str] = list(doc.get("base_means", {}))
    for m in raw:
        names += [r["concept"] for r in m.get("concepts", []) if r["concept"] not in names]
    xlabel = "shift, model − base (sd units), 95% bootstrap CI over prompts"
    models = []
    for label, m in zip(labels, raw):
        rows = []
        for r in m.get("concepts", []):
            lo, hi = shift_sd_ci(r)
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
        "reward_models": [{**m, "label": m.get("name") or m.get("path"),
                           "concepts": [{**r, "ci": r.get("ci") or [None, None],
                                         "marginal_ci": r.get("marginal_ci") or [None, None]}
                                        for r in m.get("concepts", [])]}
                          for m in doc.get("reward_models") or ()],
    }


def render_evaluate_html(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("evaluate.html.j2", **evaluate_context(doc, **kw))


def render_evaluate_markdown(doc: Mapping[str, Any], **kw: Any) -> str:
    return render("evaluate.md.j2", **evaluate_context(doc, **kw))

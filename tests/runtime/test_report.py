"""Reports: rendered only from the audit's JSON document, dataset text escaped everywhere,
self-contained HTML, the plot layouts the plan report reuses, and golden Markdown/HTML."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from ethos.runtime.report import (
    bars_layout,
    environment,
    forest_layout,
    histogram_layout,
    md_escape,
    nice_ticks,
    print_audit_summary,
    render,
    render_audit_html,
    render_audit_markdown,
    render_evaluate_html,
    render_evaluate_markdown,
    scatter_layout,
)

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "audit"
NASTY = '<script>alert("x")</script> | **bold** & [link](http://e.vil)'


def concept(name, d, q, alpha, share, note=""):
    return {
        "name": name, "lens": "metric length" if name == "verbosity" else "lexicon x.txt", "n": 400, "scale": 1.0,
        "mean_delta": 0.0 if d is None else d * 10, "sd_delta": 10.0, "d": d, "d_ci": None if d is None else [d - 0.1, d + 0.1],
        "win_rate": None if d is None else 0.5 + d / 2, "n_pos": 200, "n_neg": 150, "n_tied": 50, "p": q, "q": q,
        "alpha": alpha, "alpha_se": None if alpha is None else 0.05,
        "alpha_ci": None if alpha is None else [alpha - 0.1, alpha + 0.1], "share": share,
        "split_half_stable": d is not None and abs(d) > 0.1, "split_half_agreement": 0.9, "note": note,
    }


def document() -> dict:
    """A fixed audit document (as ``AuditResult.to_dict()`` writes it), with hostile dataset text."""
    return {
        "format": "ethos.audit/1",
        "source": {"data": "data/<b>pairs</b>.jsonl", "fingerprint": "ab" * 32, "policy": None, "concepts": "library"},
        "rows": {"input": 410, "usable": 400, "excluded": {"empty_reply": 6, "identical": 4}},
        "pairs": 400,
        "settings": {"seed": 0, "n_boot": 2000, "level": 0.95, "test": "sign", "corr_threshold": 0.7, "min_pairs": 10,
                     "d_ci": "percentile bootstrap over pairs", "alpha_ci": "Wald (model covariance)", "weighted": False},
        "concepts": [
            concept("hedging", -0.05, 0.4, -0.03, 0.1),
            concept("verbosity", 0.21, 3.3e-23, 0.39, 0.7),
            concept("emoji", None, None, None, None, "constant score (sd 0): nothing to test"),
            concept("markdown_heavy", 0.06, 0.5, 0.05, 0.2, "correlated with list_heavy (r = +0.98)"),
        ],
        "correlated": [{"a": "list_heavy", "b": "markdown_heavy", "r": 0.98}],
        "joint": {"n": 400, "converged": True, "iterations": 4, "loglik": -270.0, "loglik_null": -277.3,
                  "pseudo_r2": 0.026, "accuracy": 0.58, "cov": "model", "ess": 400.0, "note": ""},
        "notes": [],
        "discovery": {"d_sae": 4096, "tested": 3900, "survivors": 3, "q_max": 0.05, "pool": "max", "seconds": {}},
        "candidates": [{
            "name": "found_1_hope", "features": [12, 40], "d": 0.4, "d_ci": [0.3, 0.5], "win_rate": 0.7, "p": 1e-9,
            "q": 2e-6, "members": [{"id": 12, "d": 0.35, "win_rate": 0.7, "q": 1e-6}],
            "labels": {"12": {"tokens": ["hope", "<tok>"], "snippets": [NASTY, "line one\nline two"]}},
        }],
    }


def test_dataset_text_is_escaped_in_html():
    html = render_audit_html(document())
    assert "<script>" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<b>pairs</b>" not in html and "&lt;b&gt;pairs&lt;/b&gt;" in html
    assert "&lt;tok&gt;" in html


def test_dataset_text_is_escaped_in_markdown():
    md = render_audit_markdown(document())
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "\\| \\*\\*bold\\*\\*" in md  # no table break, no emphasis
    table_rows = [line for line in md.splitlines() if line.startswith("| found\\_1\\_hope")]
    assert len(table_rows) == 1 and table_rows[0].endswith("|")  # the hostile text stayed inside its cell
    assert md_escape("a|b\n<c>") == "a\\|b &lt;c&gt;"


def test_html_is_self_contained():
    html = render_audit_html(document())
    assert "<script" not in html.lower() and "<link" not in html.lower() and " src=" not in html
    assert html.count("<svg") == 3  # share bars, forest of d, forest of α
    assert html.rstrip().endswith("</html>")


def test_reports_render_from_the_json_round_trip():
    doc = document()
    again = json.loads(json.dumps(doc))
    assert render_audit_html(doc) == render_audit_html(again)
    assert render_audit_markdown(doc) == render_audit_markdown(again)


def test_concepts_are_sorted_by_share():
    md = render_audit_markdown(document())
    order = [md.index(f"| {n} |") for n in ("verbosity", "markdown\\_heavy", "hedging", "emoji")]
    assert order == sorted(order)


def test_golden_reports(golden):
    golden(GOLDEN / "report.golden.md", render_audit_markdown(document()))
    golden(GOLDEN / "report.golden.html", render_audit_html(document()))


def test_terminal_summary_prints_dataset_text_literally():
    console = Console(record=True, width=160, color_system=None)
    doc = document()
    doc["candidates"][0]["labels"]["12"]["tokens"] = ["[bold]x[/bold]"]
    print_audit_summary(doc, console)
    text = console.export_text()
    assert "rows: 410 input, 400 usable, 10 excluded (empty_reply: 6, identical: 4)" in text
    assert "[bold]x[/bold]" in text
    assert text.index("verbosity") < text.index("hedging")
    assert "emoji: constant score" in text


def test_forest_layout():
    rows = [
        {"label": "a", "points": [{"est": 0.5, "lo": 0.2, "hi": 0.8, "series": "before"},
                                  {"est": 0.0, "lo": -0.2, "hi": 0.2, "series": "after"}]},
        {"label": "b", "points": [{"est": None, "lo": None, "hi": None, "series": "before"}]},
    ]
    lay = forest_layout(rows, series=("before", "after"))
    a = lay["rows"][0]["points"]
    assert a[0]["x_lo"] < a[0]["x"] < a[0]["x_hi"]
    assert a[1]["x"] == lay["zero_x"] and a[0]["y"] != a[1]["y"]
    assert lay["rows"][1]["points"][0]["x"] is None
    assert [x["label"] for x in lay["legend"]] == ["before", "after"]
    xs = [t["x"] for t in lay["ticks"]]
    assert xs == sorted(xs) and all(lay["label_width"] <= x <= lay["plot_right"] for x in xs)


def test_bars_and_histogram_layouts_for_the_plan_report():
    bars = bars_layout([{"label": "v", "values": [0.6, 0.1]}, {"label": "h", "values": [float("nan"), 0.0]}],
                       series=("before", "after"), vmax=1.0)
    assert bars["rows"][0]["bars"][0]["w"] > bars["rows"][0]["bars"][1]["w"] > 0
    assert bars["rows"][1]["bars"][0]["text"] == "–"
    hist = histogram_layout([0.5, 1.0, 1.0, 1.5, 2.0, float("nan")], bins=3)
    assert hist["n"] == 5 and len(hist["bars"]) == 3
    assert max(b["h"] for b in hist["bars"]) == pytest.approx(hist["axis_y"] - 8)
    assert histogram_layout([])["bars"] == []
    # The macros render them (the plan report composes these in its own template).
    env = environment("html")
    page = env.from_string(
        '{% extends "base.html.j2" %}{% import "macros.html.j2" as m %}'
        "{% block content %}{{ m.share_bars(bars) }}{{ m.histogram(hist, 'weights') }}{{ m.forest(forest) }}{% endblock %}"
    ).render(title="plan <x>", bars=bars, hist=hist, forest=forest_layout([{"label": "<a>", "points": [{"est": 1}]}]))
    assert page.count("<svg") == 3 and "<title>plan &lt;x&gt;</title>" in page and "&lt;a&gt;" in page


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.33, 0.71) == [-0.2, 0, 0.2, 0.4, 0.6]
    assert nice_ticks(math.nan, 1) == []


def test_markdown_template_without_discovery():
    doc = document()
    del doc["discovery"], doc["candidates"]
    md = render("audit.md.j2", **__import__("ethos.runtime.report", fromlist=["audit_context"]).audit_context(doc))
    assert "Discovered" not in md and "verbosity" in md


# ---------------------------------------------------------------------------------------------
# The evaluate report


def shift_row(name, shift, ci_, sd, predicted, factor=1.0, alpha=None):
    return {"concept": name, "factor": factor, "alpha": alpha, "predicted": predicted, "base": 0.2,
            "model": 0.2 + shift, "shift": shift, "ci": ci_, "shift_sd": shift / sd if sd else None, "sd": sd,
            "significant": bool(math.isfinite(ci_[0]) and (ci_[0] > 0 or ci_[1] < 0))}


def evaluate_document() -> dict:
    """A fixed evaluate document (as ``evaluate.build_report`` writes it) with two models of the
    same folder name, hostile generations and one model with a preference accuracy."""
    def model(path, sign):
        return {
            "name": "train", "path": path,
            "concepts": [shift_row("verbosity", sign * 0.5, [0.2, 0.8], 2.0, 0.0, 0.0, 0.4),
                         shift_row("hedging", -0.1, [-0.3, 0.1], 0.5, 0.1, 1.0, 0.1),
                         shift_row("sycophancy", 0.3, [0.1, 0.5], 1.0, 0.3, 1.0, 0.3),
                         shift_row("emoji", 0.0, [math.nan, math.nan], 0.0, None)],
            "prediction": {"n_concepts": 3, "spearman": 0.5, "r2": 0.3, "sign_agreement": 2 / 3, "slope": 0.8,
                           "note": "only 3 concepts: read ρ and R² as indicative"},
            "examples": [{"prompt": "Say <b>hi</b>", "base": "Hello!\nHow are you?", "model": NASTY}],
        }

    shaped, vanilla = model("run/shaped/train", 1.0), model("run/vanilla/train", -1.0)
    shaped["preference"] = {"accuracy": 0.625, "margin": 0.12, "n": 40}
    return {"format": 1, "base": "smollm2-135m-instruct", "policy": "demo", "prompts": 50, "samples": 2,
            "max_new_tokens": 64, "replies_per_prompt": 3,
            "base_means": {"verbosity": 0.2, "hedging": 0.2, "sycophancy": 0.2, "emoji": 0.2},
            "models": [shaped, vanilla]}


def test_evaluate_report_renders_concepts_models_and_comparison():
    doc = evaluate_document()
    html, md = render_evaluate_html(doc), render_evaluate_markdown(doc)
    for text in (html, md):
        for c in ("verbosity", "hedging", "sycophancy", "emoji"):
            assert c in text
        for path in ("run/shaped/train", "run/vanilla/train"):  # same name "train": labelled by path
            assert path in text
        assert "+0.500" in text and "0.300" in text and "62.5%" in text  # ρ, R², preference accuracy
        assert "only 3 concepts" in text
    assert md.startswith("# ethos evaluate: policy demo")
    assert "| verbosity | 0 | +0.400 | +0.000 | 0.200 | 0.700 | +0.500 [+0.200, +0.800] \\* | +0.250 [+0.100, +0.400] |" in md
    assert "| emoji | 1 | – | – | 0.200 | 0.200 | +0.000 | – | 0 |" in md
    # An overview forest (two models), a forest and a predicted-vs-measured scatter per model.
    assert html.count("<svg") == 5 and html.count("<circle") >= 2 * 3 + 2 * 3 + 2 * 3
    assert "<script" not in html.lower() and "<link" not in html.lower() and " src=" not in html
    assert html.rstrip().endswith("</html>")


def test_evaluate_report_escapes_generations():
    doc = evaluate_document()
    html, md = render_evaluate_html(doc), render_evaluate_markdown(doc)
    assert "<script>" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<b>hi</b>" not in html and "&lt;b&gt;hi&lt;/b&gt;" in html
    assert "<script>" not in md and "&lt;script&gt;" in md and "\\*\\*bold\\*\\*" in md
    examples = [line for line in md.splitlines() if "alert" in line]
    assert len(examples) == 2 and all(line.startswith("  - run/") for line in examples)  # one line each


def test_evaluate_report_from_the_json_round_trip_and_edge_cases():
    doc = evaluate_document()
    again = json.loads(json.dumps(doc))
    assert render_evaluate_html(doc) == render_evaluate_html(again)
    assert render_evaluate_markdown(doc) == render_evaluate_markdown(again)
    one = evaluate_document()
    one["models"] = one["models"][1:]
    del one["models"][0]["prediction"]["note"], one["models"][0]["prediction"]["slope"], one["models"][0]["examples"]
    html = render_evaluate_html(one)
    assert html.count("<svg") == 2 and "<h2>train</h2>" in html  # one model: no overview, labelled by its name
    assert "Preference accuracy" not in html and "Example generations" not in html
    empty = dict(evaluate_document(), models=[])
    assert "No trained model" in render_evaluate_markdown(empty) and "<svg" not in render_evaluate_html(empty)
    with pytest.raises(ValueError, match="format"):
        render_evaluate_html(dict(doc, format=99))


def test_scatter_layout():
    lay = scatter_layout([{"label": "a", "x": 1.0, "y": 0.5, "lo": 0.2, "hi": 0.8},
                          {"label": "b", "x": -1.0, "y": -0.5, "lo": None, "hi": None},
                          {"label": "c", "x": None, "y": 0.1}])
    assert lay["n"] == 2 and [p["label"] for p in lay["points"]] == ["a", "b"]
    a, b = lay["points"]
    assert b["x"] < lay["zero_x"] < a["x"] and a["y"] < lay["zero_y"] < b["y"]  # SVG y grows downwards
    assert a["y_hi"] < a["y"] < a["y_lo"] and b["y_lo"] is None
    assert all(lay["left"] <= t["x"] <= lay["right"] for t in lay["xticks"])
    assert all(lay["top"] <= t["y"] <= lay["axis_y"] for t in lay["yticks"])


# ---------------------------------------------------------------------------------------------
# The plan report: from the plan document (with its example pairs) and the compiled plan only


def plan_document() -> dict:
    """A fixed plan document (as ``ethos plan`` writes plan.json) with hostile dataset text."""
    concept_row = {"name": "verbosity", "lens": "metric words", "factor": 0.0, "protocols": ["data"],
                   "alpha_before": 0.4, "alpha_before_ci": [0.3, 0.5], "alpha_target": 0.0, "alpha_after": 0.01,
                   "alpha_after_ci": [-0.05, 0.07], "on_target": True, "collateral": False, "d": 0.21, "q": 1e-5,
                   "share_before": 0.6, "share_after": 0.02}
    return {
        "format": 1, "policy": {"path": "p.ethos", "sha256": "cd" * 32}, "settings": {"plan_seed": 0},
        "data": {"source": "data/<i>pairs</i>.jsonl", "fingerprint": "ef" * 32, "limit": 10},
        "rows": {"input": 10, "kept": 4, "reweighted": 5, "relabelled": 0, "excluded": 1,
                 "excluded_reasons": {"identical": 1}},
        "ess": 7.5, "ess_fraction": 0.83, "expectations": [{"line": 2, "text": "expect pairs kept >= 0.5",
                                                            "value": 0.4, "met": False}],
        "warnings": ["a <warning>"], "notes": [],
        "interventions": [{"line": 1, "action": "block", "concept": "verbosity", "protocol": "data", "factor": 0,
                           "realised_in": "data", "simulated": True, "pairs_affected": 9}],
        "concepts": [concept_row],
        "weights": {"histogram": {"counts": [1, 3, 5], "edges": [0.0, 0.5, 1.0, 1.5]}},
        "examples": [{"rule": "line 1: block concept verbosity via data", "pairs": [
            {"id": "7", "fate": "reweighted", "weight": 0.25, "prompt": "Say <b>hi</b>", "chosen": NASTY,
             "rejected": "a\nb"}]}],
    }


PLAN_JSON = {"format_version": "1", "policy": "demo", "model": {"name": "smollm2-135m-instruct", "layer": 15}}


def test_plan_report_renders_its_examples_from_the_document():
    from ethos.runtime.report.plan import render_plan_html, render_plan_markdown

    doc = plan_document()
    html, md = render_plan_html(doc, PLAN_JSON), render_plan_markdown(doc, PLAN_JSON)
    assert "The pairs each rule changes most" in html and "pair 7: reweighted, weight 0.25" in html
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;hi&lt;/b&gt;" in html
    assert "&lt;i&gt;pairs&lt;/i&gt;" in html and html.count("<svg") == 3
    assert md.startswith("# ethos plan: demo") and "Plan: 9 of 10 pairs kept (4 unchanged, 5 reweighted, 0 relabelled), 1 excluded" in md
    assert "| unchanged | 4 |" in md and "| kept |" not in md  # one word per meaning
    assert "Say" not in md  # the Markdown report shows no example pairs (as before)
    again = json.loads(json.dumps(doc))
    assert render_plan_html(again, PLAN_JSON) == html and render_plan_markdown(again, PLAN_JSON) == md
    del doc["examples"]
    assert "The pairs each rule changes most" not in render_plan_html(doc, PLAN_JSON)
    with pytest.raises(ValueError, match="format"):
        render_plan_html(dict(doc, format=99), PLAN_JSON)


# ---------------------------------------------------------------------------------------------
# Reports that explain themselves: named tests, non-overlapping labels, axes on every chart


def label_boxes(layout):
    """(x0, y0, x1, y1) of every value label of a bars layout (11px text: baseline text_y)."""
    return [(b["text_x"], b["text_y"] - layout["label_h"] + 2, b["text_x"] + b["text_w"], b["text_y"] + 2, b)
            for r in layout["rows"] for b in r["bars"]]


def test_share_bar_labels_never_overlap_and_stay_in_the_chart():
    from ethos.runtime.report.layouts import text_width

    values = [[1.0, 0.999], [0.0, 0.001], [0.5, 0.49], [0.97, 0.02], [None, 0.3]]
    lay = bars_layout([{"label": f"c{i}", "values": v} for i, v in enumerate(values)], series=("before", "after"),
                      vmax=1.0)
    boxes = label_boxes(lay)
    for i, (ax0, ay0, ax1, ay1, a) in enumerate(boxes):
        assert 0 <= ax0 and ax1 <= lay["width"] and ay1 <= lay["height"]
        if a["inside"]:  # drawn inside its bar's right end
            assert a["x"] <= ax0 and ax1 <= a["x"] + a["w"]
        else:  # right of its bar
            assert ax0 >= a["x"] + a["w"]
        for bx0, by0, bx1, by1, b in boxes[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (a["text"], b["text"])  # disjoint boxes
        # no label covers another bar
        for r in lay["rows"]:
            for b in r["bars"]:
                if b is not a and b["w"] > 0:
                    assert ax1 <= b["x"] or b["x"] + b["w"] <= ax0 or ay1 <= b["y"] or b["y"] + b["h"] <= ay0
    full = lay["rows"][0]["bars"][0]
    assert full["inside"] and full["text"] == "100.0%" and full["text_w"] == text_width("100.0%")
    assert not lay["rows"][1]["bars"][1]["inside"]


def test_histogram_has_a_y_axis_with_ticks_and_a_label():
    hist = histogram_layout([0.5] * 7 + [1.0] * 23 + [1.5] * 2, bins=3)
    assert hist["ylabel"] == "pairs" and [t["label"] for t in hist["yticks"]][0] == "0"
    ys = [t["y"] for t in hist["yticks"]]
    assert ys == sorted(ys, reverse=True) and ys[0] == hist["axis_y"] and all(y >= hist["top"] for y in ys)
    assert all(float(t["label"].replace(",", "")).is_integer() for t in hist["yticks"]) and len(ys) >= 3
    env = environment("html")
    svg = env.from_string('{% import "macros.html.j2" as m %}{{ m.histogram(h) }}').render(h=hist)
    assert f'x1="{hist["left"]}" x2="{hist["left"]}"' in svg  # the y axis line
    assert ">pairs</text>" in svg and "rotate(-90" in svg and ">20</text>" in svg


def test_reports_name_the_test_behind_each_statistic():
    from ethos.runtime.report.plan import render_plan_html, render_plan_markdown

    for text in (render_audit_html(document()), render_audit_markdown(document()),
                 render_plan_html(plan_document(), PLAN_JSON), render_plan_markdown(plan_document(), PLAN_JSON)):
        assert "Marginal" in text or "marginal" in text
        assert "Joint" in text or "joint" in text
        assert "sign test" in text and "Benjamini–Hochberg" in text and "Bradley–Terry" in text
        assert "bootstrap" in text or "Wald" in text


def test_plan_share_chart_explains_the_after_shares():
    from ethos.runtime.report.plan import render_plan_html, render_plan_markdown

    doc = plan_document()
    doc["concepts"].append(dict(doc["concepts"][0], name="hedging", share_before=0.4, share_after=0.22))
    html, md = render_plan_html(doc, PLAN_JSON), render_plan_markdown(doc, PLAN_JSON)
    for text in (html, md):
        assert "sum to 100.0%" in text and "sum to 24.0%" in text  # 0.6 + 0.4 before; 0.02 + 0.22 after
        assert "below 100% when the rules remove signal" in text
    assert "verbosity 60.0% → 2.0%" in md


def test_plan_check_column_reads_the_verdict():
    from ethos.runtime.report.plan import render_plan_html, render_plan_markdown

    doc = plan_document()
    doc["concepts"][0]["verdict"] = "uncertain"
    assert "| uncertain |" in render_plan_markdown(doc, PLAN_JSON)
    assert '<td class="text">uncertain</td>' in render_plan_html(doc, PLAN_JSON)


def test_share_bars_have_a_scale():
    lay = bars_layout([{"label": "a", "values": [0.3]}, {"label": "b", "values": [0.7]}], vmax=1.0)
    assert [t["label"] for t in lay["ticks"]] == ["0%", "20%", "40%", "60%", "80%", "100%"]
    assert lay["ticks"][0]["x"] == lay["label_width"] and lay["ticks"][-1]["x"] == lay["plot_right"]
    assert lay["axis_y"] >= max(b["y"] + b["h"] for r in lay["rows"] for b in r["bars"])
    assert lay["height"] >= lay["axis_y"] + 14

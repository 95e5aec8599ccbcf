"""Terminal tables that fit (issue 19 item 3): the plan and audit summaries rendered at 80 and 140
columns keep every concept name and every column's value in full — a table where it fits,
stacked blocks where it does not — and never cut a value with an ellipsis."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from rich.console import Console

from ethos.runtime.report import est_ci, num, pct, print_audit_summary, print_plan_report, pval


def _fixtures():
    spec = importlib.util.spec_from_file_location("_report_docs", Path(__file__).with_name("test_report.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_docs = _fixtures()


def plan_doc() -> dict:
    """The plan document of test_report.py with more concepts, as a real policy gives them: long
    names and lenses, a direction, an uncertain verdict, a concept no rule names."""
    doc = _docs.plan_document()
    base = doc["concepts"][0]
    doc["concepts"] += [
        dict(base, name="sycophancy_agreement", lens="sae smollm2-135m-instruct/layer 15 latents 812,1903",
             factor=-2.5, alpha_before=-0.5012, alpha_before_ci=[-0.8344, -0.1699], alpha_target=1.253,
             alpha_after=0.9871, alpha_after_ci=[0.4012, 1.5763], on_target=True, verdict="uncertain",
             d=-0.33, q=5.9e-4, share_before=0.25, share_after=0.31),
        dict(base, name="markdown_heavy", lens="metric markdown_density", factor=None, protocols=[],
             alpha_before=0.061, alpha_before_ci=[-0.021, 0.143], alpha_target=0.061, alpha_after=0.2103,
             alpha_after_ci=[0.1502, 0.2704], on_target=None, verdict=None, collateral=True, d=0.06, q=0.5123,
             share_before=0.15, share_after=0.12),
    ]
    return doc


def render(fn, *args, width: int) -> str:
    console = Console(record=True, width=width, color_system=None)
    fn(*args, console=console)
    return console.export_text()


def plan_values(c: dict) -> list[str]:
    return [c["name"], c["lens"], "–" if c["factor"] is None else num(c["factor"], "g"),
            est_ci(c["alpha_before"], c["alpha_before_ci"], "+.3f"), num(c["alpha_target"], "+.3f"),
            est_ci(c["alpha_after"], c["alpha_after_ci"], "+.3f"), num(c["d"], "+.2f"), pval(c["q"])]


def audit_values(c: dict) -> list[str]:
    return [c["name"], num(c.get("mean_delta"), "+#.3g"), est_ci(c.get("d"), c.get("d_ci")), pct(c.get("win_rate")),
            pval(c.get("q")), est_ci(c.get("alpha"), c.get("alpha_ci")), pct(c.get("share"))]


@pytest.mark.parametrize("width", [80, 140])
def test_plan_table_keeps_every_value(width):
    doc = plan_doc()
    text = render(print_plan_report, doc, _docs.PLAN_JSON, width=width)
    assert max(map(len, text.splitlines())) <= width
    assert "…" not in text.replace("(sha256", "")  # nothing cut
    for c in doc["concepts"]:
        for value in plan_values(c):
            assert value in text, (width, value)
    for verdict in ("on target", "uncertain", "moved (no rule)"):
        assert verdict in text
    for head in ("concept", "lens", "k", "α before [95% CI]", "target", "α after [95% CI]", "check", "q"):
        assert head in text
    assert "Bradley–Terry" in text and "Benjamini–Hochberg" in text  # the legend names the tests


def test_plan_table_is_a_table_when_it_fits_and_stacks_when_not():
    wide, narrow = (render(print_plan_report, plan_doc(), _docs.PLAN_JSON, width=w) for w in (200, 80))
    header = next(line for line in wide.splitlines() if "α before [95% CI]" in line)
    assert "α after [95% CI]" in header and "check" in header  # one header row: a table
    assert not any("α before [95% CI]" in line and "α after [95% CI]" in line for line in narrow.splitlines())
    block = narrow[narrow.index("sycophancy_agreement"):]
    assert block.index("α before [95% CI] -0.501 [-0.834, -0.170]") < block.index("markdown_heavy")


@pytest.mark.parametrize("width", [80, 140])
def test_audit_table_keeps_every_value(width):
    doc = _docs.document()
    doc["concepts"][0]["name"] = "hedging_and_qualification"
    text = render(print_audit_summary, doc, width=width)
    assert max(map(len, text.splitlines())) <= width
    for c in doc["concepts"]:
        for value in audit_values(c):
            assert value in text, (width, value)
    for head in ("mean Δ", "d [95% CI]", "win", "q", "α [95% CI]", "share", "stable"):
        assert head in text
    assert "bootstrap" in text and "Bradley–Terry" in text and "sign test" in text


def test_audit_table_at_140_is_one_row_per_concept():
    text = render(print_audit_summary, _docs.document(), width=140)
    line = next(x for x in text.splitlines() if x.startswith("verbosity"))
    assert "+0.21 [+0.11, +0.31]" in line and "+0.39 [+0.29, +0.49]" in line and "70.0%" in line


def test_a_real_dry_run_fits_80_columns(tmp_path, ethos_cache):
    """The document of a real dry run (metric lenses, the shipped sample, 120 pairs) at 80 columns."""
    from ethos.runtime import api
    from ethos.runtime.settings import DataSettings

    policy = tmp_path / "p.ethos"
    policy.write_text("concept verbosity_in_words = metric words;\nblock concept verbosity_in_words;\n"
                      "keep concept hedging;\nexpect pairs kept >= 0.5;\n")
    run = api.dry_run(str(policy), DataSettings(limit=120), outputs=(tmp_path / "out",))
    doc, plan = run.document(), run.plan_json()
    for width in (80, 140):
        text = render(print_plan_report, doc, plan, width=width)
        assert max(map(len, text.splitlines())) <= width
        for c in doc["concepts"]:
            for value in plan_values(c):
                assert value in text, (width, value)


def test_no_width_cuts_a_value():
    """At every width, around the point where the table stops fitting too: no value is cut."""
    plan, audit = plan_doc(), _docs.document()
    for width in range(60, 230, 3):
        text = render(print_plan_report, plan, _docs.PLAN_JSON, width=width)
        assert all(v in text for c in plan["concepts"] for v in plan_values(c)), width
        text = render(print_audit_summary, audit, width=width)
        assert all(v in text for c in audit["concepts"] for v in audit_values(c)), width


def audit_doc_with_topics() -> dict:
    """The audit document with a topic × concept table (``ethos audit --topics K``): long labels, a
    cell without statistics."""
    doc = _docs.document()
    names = [c["name"] for c in doc["concepts"]]
    doc["topics"] = []
    for j, label in enumerate(["cooking, recipe, oven", "code, python, function, error, install", "car, engine"]):
        cells = [{"name": k, "n": 120 + j, "d": 0.123 * (i + 1) * (-1) ** j, "d_ci": [-0.0512, 0.4871], "p": 0.004,
                  "q": 0.0123 * (j + 1), "alpha": 0.4567 * (-1) ** i, "alpha_ci": [-1.2345, 2.3456],
                  "split_half_stable": i % 2 == 0, "split_half_agreement": 0.8, "note": "", "examples": []}
                 for i, k in enumerate(names)]
        doc["topics"].append({"name": f"t{j}", "n_pairs": 120 + j, "label": label, "concepts": cells})
    doc["topics"][2]["concepts"][0].update(d=None, d_ci=[None, None], q=None, alpha=None, alpha_ci=[None, None],
                                           note="too few pairs (3; need 10)")
    doc["topic_clusters"] = {"k": 3, "features": "model", "seed": 0, "centroids_sha256": "ab" * 32}
    return doc


def topic_values(t: dict, c: dict) -> list[str]:
    return [f"{t['name']} {c['name']}", est_ci(c.get("d"), c.get("d_ci")), pval(c.get("q")),
            est_ci(c.get("alpha"), c.get("alpha_ci"))]


@pytest.mark.parametrize("width", [80, 140])
def test_audit_topic_table_keeps_every_value(width):
    doc = audit_doc_with_topics()
    text = render(print_audit_summary, doc, width=width)
    assert max(map(len, text.splitlines())) <= width
    for t in doc["topics"]:
        assert f"{t['name']}: {t['n_pairs']} pairs, {t['label']}" in text
        for c in t["concepts"]:
            for value in topic_values(t, c):
                assert value in text, (width, value)


def plan_doc_with_topics() -> dict:
    doc = plan_doc()
    doc["topics"] = [{"name": "medical_questions", "label": "lexicon topics/medical.txt, above 0", "n_pairs": 412,
                      "n_pairs_after": 398, "concepts": [{
                          "name": "sycophancy_agreement", "rules": ["line 7: block concept sycophancy_agreement via data"],
                          "factor": 0.0, "simulated": True, "alpha_before": 0.4123, "alpha_before_ci": [0.1234, 0.7012],
                          "alpha_after": 0.0123, "alpha_after_ci": [-0.2712, 0.2958], "alpha_target": 0.0,
                          "verdict": "on target",
                          "outside": {"n_pairs": 1588, "alpha_before": 0.2011, "alpha_before_ci": [0.0512, 0.3510],
                                      "alpha_after": 0.2013, "alpha_after_ci": [0.0511, 0.3514], "expected": "unchanged",
                                      "unchanged": True}}]}]
    return doc


@pytest.mark.parametrize("width", [80, 140])
def test_plan_topic_checks_keep_every_value(width):
    doc = plan_doc_with_topics()
    text = render(print_plan_report, doc, _docs.PLAN_JSON, width=width)
    assert max(map(len, text.splitlines())) <= width
    c = doc["topics"][0]["concepts"][0]
    for value in ("medical_questions sycophancy_agreement", est_ci(c["alpha_before"], c["alpha_before_ci"], "+.3f"),
                  est_ci(c["alpha_after"], c["alpha_after_ci"], "+.3f"), "+0.201 → +0.201", "unchanged", "1588"):
        assert value in text, (width, value)


def test_the_audit_html_has_the_topic_heat_map():
    from ethos.runtime.report import render_audit_html

    doc = audit_doc_with_topics()
    doc["topics"][0]["concepts"][0]["examples"] = [{"id": "p<1>", "delta": 3.0, "score_chosen": 5.0,
                                                    "score_rejected": 2.0, "prompt": "<b>bold?</b>",
                                                    "chosen": "yes", "rejected": "no"}]
    html = render_audit_html(doc)
    assert '<table class="heatmap">' in html
    assert html.count('class="cell"') == sum(len(t["concepts"]) for t in doc["topics"])
    assert "too few pairs (3; need 10)" in html
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html and "<b>bold?</b>" not in html  # dataset text escaped
    assert "background: #" in html  # cells filled by d

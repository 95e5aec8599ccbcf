"""Reports stay safe with hostile data (issue 18 item 7): replies and concept/policy names holding
``<script>``, attribute-breaking quotes, template syntax and 100,000-character tokens render
escaped and bounded in every HTML and Markdown report (plan, audit, evaluate)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from ethos.runtime.report import (
    render_audit_html,
    render_audit_markdown,
    render_evaluate_html,
    render_evaluate_markdown,
    render_plan_html,
    render_plan_markdown,
)
from ethos.runtime.report.format import MAX_TEXT, clip


def _fixtures():
    """The realistic documents test_report.py builds (tests are not a package: load it by path)."""
    spec = importlib.util.spec_from_file_location("_report_docs", Path(__file__).with_name("test_report.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_docs = _fixtures()
PLAN_JSON, document, evaluate_document, plan_document = (
    _docs.PLAN_JSON, _docs.document, _docs.evaluate_document, _docs.plan_document)

SCRIPT = "<script>alert(1)</script>"
QUOTE = '" onload="x'
TEMPLATE = "{{ 7331*3 }} {% raw %}{{ 1111*7 }}{% endraw %} {# c #}"
LONG = "A" * 100_000
HOSTILE = f"{SCRIPT} {QUOTE} {TEMPLATE} `tick` | pipe {LONG}"
NAME = f"x{SCRIPT}{QUOTE}{{{{7331*3}}}}"  # a concept name: hostile, short
LINE_BOUND = MAX_TEXT + 400  # a whole reply (clipped) plus its markup


def hostile_audit() -> dict:
    doc = document()
    doc["source"]["data"] = f"data/{HOSTILE}.jsonl"
    doc["source"]["policy"] = HOSTILE
    doc["concepts"][0]["name"] = NAME
    doc["concepts"][1]["note"] = HOSTILE
    doc["notes"] = [HOSTILE]
    doc["joint"]["note"] = HOSTILE
    doc["correlated"] = [{"a": NAME, "b": HOSTILE, "r": 0.9}]
    doc["rows"]["excluded"] = {HOSTILE: 3}
    lab = doc["candidates"][0]["labels"]["12"]
    lab["tokens"] = [HOSTILE, LONG]
    lab["snippets"] = [HOSTILE, LONG]
    return doc


def hostile_plan() -> tuple[dict, dict]:
    doc = plan_document()
    doc["policy"]["path"] = f"{HOSTILE}.ethos"
    doc["data"]["source"] = HOSTILE
    doc["concepts"][0]["name"] = NAME
    doc["concepts"][0]["lens"] = HOSTILE
    doc["warnings"] = [HOSTILE]
    doc["notes"] = [HOSTILE]
    doc["expectations"][0]["text"] = f"expect share {HOSTILE} < 0.1"
    doc["interventions"][0]["concept"] = NAME
    doc["rows"]["excluded_reasons"] = {HOSTILE: 1}
    doc["examples"][0]["rule"] = HOSTILE
    pair = doc["examples"][0]["pairs"][0]
    pair.update(id=HOSTILE, prompt=HOSTILE, chosen=HOSTILE, rejected=LONG)
    plan = dict(PLAN_JSON, policy=HOSTILE, model={"name": HOSTILE, "layer": 1})
    return doc, plan


def hostile_evaluate() -> dict:
    doc = evaluate_document()
    doc["base"] = HOSTILE
    doc["policy"] = HOSTILE
    for m in doc["models"]:
        m["path"] = f"run/{HOSTILE}"
        m["concepts"][0]["concept"] = NAME
        m["prediction"]["note"] = HOSTILE
        m["examples"] = [{"prompt": HOSTILE, "base": HOSTILE, "model": " ".join([HOSTILE] * 3)}]
    doc["base_means"] = {NAME: 0.2, **{k: v for k, v in doc["base_means"].items() if k != "verbosity"}}
    return doc


def reports() -> dict[str, str]:
    audit, (plan_doc, plan), evaluate = hostile_audit(), hostile_plan(), hostile_evaluate()
    return {
        "audit.html": render_audit_html(audit), "audit.md": render_audit_markdown(audit),
        "plan.html": render_plan_html(plan_doc, plan), "plan.md": render_plan_markdown(plan_doc, plan),
        "evaluate.html": render_evaluate_html(evaluate), "evaluate.md": render_evaluate_markdown(evaluate),
    }


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return reports()


@pytest.mark.parametrize("name", ["audit.html", "audit.md", "plan.html", "plan.md", "evaluate.html", "evaluate.md"])
def test_no_raw_markup_and_no_template_evaluation(rendered, name):
    out = rendered[name]
    assert "<script" not in out.lower() and "<" + "/script" not in out.lower()
    assert "21993" not in out and "7777" not in out  # {{ 7331*3 }} and {{ 1111*7 }} were never evaluated
    assert "7331*3" in out or "7331\\*3" in out  # ... but shown, literally


@pytest.mark.parametrize("name", ["audit.html", "plan.html", "evaluate.html"])
def test_html_escapes_tags_and_attribute_quotes(rendered, name):
    out = rendered[name]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert 'onload="x' not in out and "&#34; onload=&#34;x" in out  # the quote never closes an attribute
    assert "{{ 7331*3 }}" in out  # template syntax in data is text


@pytest.mark.parametrize("name", ["audit.md", "plan.md", "evaluate.md"])
def test_markdown_escapes_tags_pipes_and_backticks(rendered, name):
    out = rendered[name]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "\\`tick\\`" in out and "`tick`" not in out.replace("\\`tick\\`", "")
    assert "\\| pipe" in out and " | pipe" not in out
    # every table row keeps its column count: hostile text never adds a cell
    for table in re.findall(r"(?:^\|.*\|\n)+", out, flags=re.M):
        rows = table.splitlines()
        cells = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(cells) == 1, rows


@pytest.mark.parametrize("name", ["audit.html", "audit.md", "plan.html", "plan.md", "evaluate.html", "evaluate.md"])
def test_long_tokens_are_cut_with_a_length_note(rendered, name):
    out = rendered[name]
    assert "A" * 1000 not in out
    assert "… (100,000 characters)" in out
    longest = max(map(len, out.splitlines()))
    assert longest <= LINE_BOUND, f"{name}: a line of {longest} characters"
    assert len(out) < 200_000  # several 100k-character fields, each bounded


def test_clip():
    assert clip("short") == "short"
    cut = clip("x" * 500, token=10)
    assert cut == "x" * 10 + "… (500 characters)"
    whole = clip("ab " * 3000, width=100)
    assert whole.startswith("ab ab") and whole.endswith("… (9,000 characters in all)") and len(whole) < 140

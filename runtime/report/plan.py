"""The plan report (``ethos plan``): Markdown, HTML and the terminal summary, rendered only from
the plan document (``plan.json``, including the example pairs of each rule under ``"examples"``)
and the compiled plan's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..documents import PLAN_REPORT_FORMAT, POLICY_FORMAT_VERSION
from .env import render
from .format import est_ci, finite, num, pct, pval
from .layouts import bars_layout, forest_layout, histogram_from_counts


def plan_context(doc: Mapping[str, Any], plan: Mapping[str, Any], *, title: str | None = None) -> dict[str, Any]:
    """Template context of a dry run from its document and the compiled plan (both as JSON)."""
    if doc.get("format") != PLAN_REPORT_FORMAT or plan.get("format_version") != POLICY_FORMAT_VERSION:
        raise ValueError(f"cannot render a plan document of format {doc.get('format')!r} "
                         f"(plan format_version {plan.get('format_version')!r})")
    concepts = [{**c, "check": check_text(c), "before": before_text(c)} for c in doc.get("concepts", [])]
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
    # "kept" has one meaning in the reports: still in the training data (the document's fate
    # "kept", a pair the plan leaves as it is, reads "unchanged"), as in ``expect pairs kept``
    kept = r["kept"] + r["reweighted"] + r["relabelled"]
    offsets = int((doc.get("margin_offsets") or {}).get("pairs") or 0)
    summary = (f"Plan: {kept:,} of {kept + r['excluded']:,} pairs kept ({r['kept']:,} unchanged, "
               f"{r['reweighted']:,} reweighted, {r['relabelled']:,} relabelled), {r['excluded']:,} excluded; "
               f"{offsets_text(offsets)}{met} expectation{'s' * (met != 1)} met, {failed} failed.")
    return {
        "title": title or f"ethos plan: {plan.get('policy') or doc['policy']['path']}",
        "doc": doc,
        "plan": plan,
        "concepts": concepts,
        "summary": summary,
        "alpha_forest": forest_layout(forest_rows, series=("before", "after"),
                                      xlabel="α: log-odds of preference per sd of Δ, 95% CI"),
        "legend": legend(doc),
        "share_caption": share_caption(concepts),
        "shares": bars_layout([{"label": c["name"], "values": [c.get("share_before"), c.get("share_after")]}
                               for c in concepts], series=("before", "after"), vmax=1.0),
        "weights": layout,
        "examples": list(doc.get("examples") or []),
        "topics": list(doc.get("topics") or []),
        "rule_traces": rule_traces(doc),
        "default_note": default_note(doc),
    }


def offsets_text(pairs: int) -> str:
    """The summary line's word on the ``loss`` protocol: its margin offsets leave a pair's weight and
    label as they are (the pair counts as unchanged) and shape its loss in training."""
    return f"{pairs:,} with a margin offset (applied in training); " if pairs else ""


def rule_via(i: Mapping[str, Any]) -> str:
    """``via loss (default)`` for a rule written without ``via``, else ``via <protocol>``."""
    return f"via {i['protocol']}" + (" (default)" if i.get("default_protocol") else "")


def default_note(doc: Mapping[str, Any]) -> str:
    """What ``(default)`` after a rule's protocol means, when some rule has it; else ""."""
    defaulted = [i for i in doc.get("interventions", []) if i.get("default_protocol")]
    if not defaulted:
        return ""
    protocol = defaulted[0]["protocol"]
    text = f"(default): the rule names no protocol, so it uses the default, `{protocol}`"
    if protocol == "loss":
        text += (": a per-pair margin offset that `ethos train` adds to the preference margin (every weight "
                 "stays 1). For importance weights in the dataset instead, write `via data`")
    return text + "."


def rule_traces(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per rule (intervention, in line order) the trace page of its concept and the first traced
    pairs that rule decides (the pairs' ``rules`` name it), for plan.html."""
    from .trace import trace_file_name

    traces = doc.get("traces") or {}
    out = []
    for i in doc.get("interventions", []):
        t = traces.get(i["concept"])
        if t is None:
            continue
        rid = i.get("rule_id")
        mine = [p for p in t.get("pairs", []) if rid in (p.get("rules") or [])][:3] if rid else []
        acc = next((r for r in (t.get("accounting") or {}).get("by_rule", []) if rid and rid in r["rule"]), None)
        out.append({"rule": i, "page": trace_file_name(i["concept"]), "pairs": mine, "accounting": acc})
    return out


def share_caption(concepts: list[Mapping[str, Any]]) -> str:
    """What the before and after shares are, and why the after shares need not sum to 100%."""
    before = sum(c["share_before"] for c in concepts if finite(c.get("share_before")))
    after = sum(c["share_after"] for c in concepts if finite(c.get("share_after")))
    return (f"share_c = mean_i |α_c z_ic| / Σ_c' mean_i |α_c' z_ic'| over the data as it is (before: the shares sum "
            f"to {pct(before)}). After: each concept's mean |α′_c z_ic| over the weighted pairs the plan leaves, "
            f"divided by the same before total, so the after shares sum to {pct(after)} — the size of the plan's "
            f"learning signal relative to the data's: below 100% when the rules remove signal (blocking, "
            f"dampening), above when they add to it.")


def render_plan_html(doc: Mapping[str, Any], plan: Mapping[str, Any], **kw: Any) -> str:
    return render("plan.html.j2", **plan_context(doc, plan, **kw))


def render_plan_markdown(doc: Mapping[str, Any], plan: Mapping[str, Any], **kw: Any) -> str:
    return render("plan.md.j2", **plan_context(doc, plan, **kw))


def check_text(c: Mapping[str, Any]) -> str:
    """The verdict on a concept's α′: judged against the target with the interval's width in mind
    (``uncertain`` when the 95% CI of α′ holds both the target and the data's α)."""
    if c.get("collateral"):
        return "moved (no rule)"
    if c.get("factor") is None or c.get("alpha_after") is None:
        return "–"
    if c.get("verdict"):
        return str(c["verdict"])
    return "on target" if c.get("on_target") else "off target"


def legend(doc: Mapping[str, Any]) -> str:
    """What each statistic of the plan table is, and which test it comes from."""
    test = (doc.get("settings") or {}).get("test", "sign")
    text = (f"α: joint Bradley–Terry coefficient (all concepts fitted together), 95% Wald CI; after: the weighted "
            f"re-fit on what the rules produce. d, q: marginal, one concept at a time — q is the {test} test's "
            f"p-value, Benjamini–Hochberg adjusted. Marginal and joint are different tests: a small q can sit next "
            f"to an α whose interval spans 0.")
    if any(c.get("alpha_estimator") == "firth" for c in doc.get("concepts", [])):
        text += (f" {FIRTH_MARK}: Firth's penalised estimate, before and after — the pairs are separated on a "
                 f"concept a rule shapes, so its maximum-likelihood α is infinite (see the warning).")
    return text


FIRTH_MARK = "ᶠ"


def before_text(c: Mapping[str, Any], spec: str = "+.2f") -> str:
    """The α before of a concept with its CI, marked when it is Firth's estimate."""
    return est_ci(c.get("alpha_before"), c.get("alpha_before_ci"), spec) + (
        FIRTH_MARK if c.get("alpha_estimator") == "firth" else "")


def print_plan_report(doc: Mapping[str, Any], plan: Mapping[str, Any], console: Any = None) -> None:
    """The terminal summary of a dry run: α before → after per concept, expectations, warnings.
    The table stacks (one block per concept) when it does not fit the console's width."""
    from rich.text import Text

    from .terminal import console_for_output, print_fitting_table

    console = console_for_output(console)
    ctx = plan_context(doc, plan)
    rows = []
    for c in ctx["concepts"]:
        check = check_text(c)
        style = "red" if check in ("off target", "moved (no rule)") and c["protocols"] is not None else None
        rows.append(([Text(c["name"]), c["lens"], "–" if c["factor"] is None else num(c["factor"], "g"),
                      before_text(c, "+.3f"), num(c["alpha_target"], "+.3f"),
                      est_ci(c["alpha_after"], c["alpha_after_ci"], "+.3f"), check, num(c.get("d"), "+.2f"),
                      pval(c["q"])], style))
    columns = [("concept", "left"), ("lens", "left"), ("k", "right"), ("α before [95% CI]", "right"),
               ("target", "right"), ("α after [95% CI]", "right"), ("check", "left"), ("d", "right"), ("q", "right")]
    print_fitting_table(console, columns, rows, title=ctx["title"])
    console.print(Text(legend(doc), style="dim"))
    if ctx["topics"]:
        print_topic_checks(ctx["topics"], console)
    console.print(f"ESS {num(doc['ess'], ',.0f')} ({pct(doc['ess_fraction'])} of the pairs in the data)")
    if doc.get("interventions"):
        console.print("Rules:")
    for i in doc.get("interventions", []):
        scope = f" when topic {i['scope']}" if i.get("scope") else ""
        console.print(Text(f"  line {i['line']}: {i['action']} concept {i['concept']} {rule_via(i)}{scope} — realised "
                           f"in {i.get('realised_in')}, {i.get('pairs_affected', 0):,} pairs affected"))
    if ctx["default_note"]:
        console.print(Text("  " + ctx["default_note"], style="dim"))
    for e in doc.get("expectations", []):
        mark = "[green]met[/green]" if e["met"] else "[red]FAILED[/red]"
        console.print(Text(f"  line {e['line']}: {e['text']}  → {num(e['value'], '.3g')} ") + Text.from_markup(mark))
    for w in doc.get("warnings", []):
        console.print(Text.from_markup("  [yellow]warning:[/yellow] ") + Text(str(w)))


def topic_check_rows(topics: list[Mapping[str, Any]]) -> list[tuple[list[Any], str | None]]:
    """The per-topic verification as table rows: topic and concept, k, α within the topic before,
    target, after and the verdict, and outside the topics: n, α before → after and whether it held."""
    rows = []
    for t in topics:
        for c in t["concepts"]:
            o = c["outside"]
            held = {True: "unchanged", False: "MOVED", None: "–"}[o.get("unchanged")]
            bad = c.get("verdict") == "off target" or o.get("unchanged") is False
            rows.append(([f"{t['name']} {c['name']}", str(t.get("n_pairs")),
                          "–" if c.get("factor") is None else num(c["factor"], "g"),
                          est_ci(c.get("alpha_before"), c.get("alpha_before_ci"), "+.3f"),
                          num(c.get("alpha_target"), "+.3f"), est_ci(c.get("alpha_after"), c.get("alpha_after_ci"), "+.3f"),
                          c.get("verdict") or "–", str(o.get("n_pairs")),
                          f"{num(o.get('alpha_before'), '+.3f')} → {num(o.get('alpha_after'), '+.3f')}", held],
                         "red" if bad else None))
    return rows


TOPIC_CHECK_COLUMNS = [("topic concept", "left"), ("n", "right"), ("k", "right"), ("α in topic before", "right"),
                       ("target", "right"), ("α in topic after", "right"), ("check", "left"), ("n outside", "right"),
                       ("α outside", "right"), ("outside", "left")]


def print_topic_checks(topics: list[Mapping[str, Any]], console: Any) -> None:
    from rich.text import Text

    from .terminal import print_fitting_table

    print_fitting_table(console, TOPIC_CHECK_COLUMNS, topic_check_rows(topics), title="rules within topics")
    console.print(Text("Within each topic: α of the joint fit on its pairs before and after the plan, against the "
                       "rule's target (k·α in the topic). Outside: the pairs in no topic with a rule for the "
                       "concept; α after should stay within α before's 95% CI.", style="dim"))

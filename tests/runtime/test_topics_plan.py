"""`when topic` rules in the dry run: every protocol acts within the topic only, `ethos plan`
verifies per topic (α′ ≈ k·α inside, α unchanged outside), overlapping topics resolve or conflict,
and a policy with every kind of topic compiles, formats, diffs and plans."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from ethos.compiler.compile import compile_file, compile_source
from ethos.runtime.cli import main
from ethos.runtime.loading import PlanError
from ethos.runtime.planner import shape


def synthetic(n: int = 3000, seed: int = 0, alpha=(1.0, 0.5)):
    """Pairs whose preference follows a Bradley–Terry model in two concepts a and b."""
    rng = np.random.default_rng(seed)
    s1, s2 = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    first = rng.random(n) < 1 / (1 + np.exp(-((s1 - s2) * np.array(alpha)).sum(1)))
    ch, rj = np.where(first[:, None], s1, s2), np.where(first[:, None], s2, s1)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "a.chosen": ch[:, 0], "a.rejected": rj[:, 0],
                         "b.chosen": ch[:, 1], "b.rejected": rj[:, 1]})


HEAD = 'concept a = metric words;\nconcept b = metric chars;\ntopic t = column "cat" == "x";\ntopic u = column "cat" == "y";\n'


def plan_of(rules: str):
    r = compile_source(HEAD + rules, "p.ethos")
    assert r.plan is not None, r.diagnostics
    return r.plan


def run(rules: str, membership, table=None, n=3000):
    table = synthetic(n) if table is None else table
    return shape(plan_of(rules), table, {"input": n, "usable": n}, n_boot=50, membership=membership)


@pytest.mark.parametrize("protocol", ["data", "filter", "relabel", "loss"])
def test_a_scoped_block_reaches_zero_inside_and_leaves_the_outside_alone(protocol):
    n = 3000
    inside = np.arange(n) < 1200
    o = run(f"block concept a via {protocol} when topic t;\n", {"t": inside, "u": np.zeros(n, bool)})
    doc = o.to_dict()
    (topic,) = doc["topics"]
    assert topic["name"] == "t" and topic["n_pairs"] == 1200
    (a,) = topic["concepts"]
    assert a["name"] == "a" and a["factor"] == 0 and a["alpha_target"] == 0
    assert a["alpha_before"] > 0.8 and a["alpha_before_ci"][0] > 0.5  # the topic's own α
    lo, hi = a["alpha_after_ci"]
    assert lo <= 0 <= hi and abs(a["alpha_after"]) < 0.1 and a["verdict"] == "on target"
    out = a["outside"]
    assert out["n_pairs"] == n - 1200 and out["expected"] == "unchanged" and out["unchanged"] is True
    assert out["alpha_after"] == pytest.approx(out["alpha_before"], abs=0.02)
    # pairs outside the topic are untouched by the rule: weight 1 (up to the data weights' normalisation),
    # never relabelled, no copies, no margin offset
    sim = o.sim
    assert not sim.swapped[~inside].any() and (sim.multiplicity[~inside] == 1).all()
    assert (sim.margin_offset[~inside] == 0).all()
    assert (sim.weights[~inside] == 1).all() and set(sim.fate[~inside]) == {"kept"}
    assert set(sim.decided_by[~inside]) == {""}
    assert not any("a" in c["name"] and c["verdict"] == "off target" for c in doc["concepts"])


def test_a_scoped_amplify_doubles_alpha_inside_only():
    n = 4000
    inside = np.arange(n) >= 2500
    doc = run("amplify concept b by 2.0 when topic t;\n", {"t": inside, "u": np.zeros(n, bool)}, n=n,
              table=synthetic(n, seed=3)).to_dict()
    (b,) = doc["topics"][0]["concepts"]
    assert b["alpha_target"] == pytest.approx(2 * b["alpha_before"])
    assert b["alpha_after_ci"][0] <= b["alpha_target"] <= b["alpha_after_ci"][1]
    assert b["outside"]["unchanged"] is True
    rule = next(i for i in doc["interventions"] if i["concept"] == "b")
    assert rule["scope"] == "t" and rule["pairs_affected"] > 0


def test_the_smaller_topic_wins_and_an_unscoped_rule_holds_outside():
    n = 3000
    big = np.arange(n) < 1500
    small = np.arange(n) < 500
    o = run("block concept a via data;\nkeep concept a when topic t;\ndampen concept a by 0.5 via data when topic u;\n",
            {"t": big, "u": small})  # data rules: they decide their pairs' fates (decided_by)
    doc = o.to_dict()
    by = {t["name"]: t["concepts"][0] for t in doc["topics"]}
    assert by["u"]["factor"] == 0.5 and by["t"]["factor"] == 1.0
    # u lies inside t: its rule decides its pairs; t's keep the rest of t; the unscoped block the others
    assert set(o.sim.decided_by[500:1500]) == {""}  # keep: untouched
    assert by["t"]["outside"]["expected"] == "a rule outside the topics" and by["t"]["outside"]["unchanged"] is None
    # the trace's accounting says the same: with u inside t, u's rule decides the pairs in both
    from ethos.runtime.trace import decide

    plan = o.plan
    assert decide(plan, "a", ["t", "u"], {("u", "t")}).rules == ("a/data@u",)
    assert decide(plan, "a", ["t", "u"]).action == "conflict"  # without knowing the data: a conflict
    assert decide(plan, "a", ["t"]).action == "keep" and decide(plan, "a", []).rules == ("a/data",)


def test_overlapping_topics_with_different_effects_are_a_conflict():
    n = 3000
    t = np.arange(n) < 1500
    u = (np.arange(n) >= 1000) & (np.arange(n) < 2500)
    with pytest.raises(PlanError, match=r"concept 'a': 500 pair\(s\) are in topics t and u, whose rules give it "
                                        r"different effects, and neither topic lies inside the other"):
        run("block concept a when topic t;\ndampen concept a by 0.5 when topic u;\n", {"t": t, "u": u})
    # the same effect in both: no conflict
    o = run("block concept a when topic t;\nblock concept a when topic u;\n", {"t": t, "u": u})
    assert {x["name"] for x in o.to_dict()["topics"]} == {"t", "u"}


def test_shape_needs_the_membership_of_every_scoped_topic():
    with pytest.raises(PlanError, match="membership of topic"):
        run("block concept a when topic t;\n", {})


# ---------------------------------------------------------------------------------------------
# A policy with every kind of topic, end to end (tiny model for the probe and the clusters)

COOK = ["How long do I bake bread in the oven?", "What can I fry in butter for dinner?",
        "How do I boil pasta so it is not sticky?", "Is it safe to bake chicken at a low heat?"]
MATH = ["What is the derivative of x squared?", "How do I solve a quadratic equation?",
        "What is the sum of the first hundred numbers?", "Why is zero times any number zero?"]
CARS = ["How often should I change my car oil?", "Why does my car engine make a noise?",
        "What tyre pressure should my car have?", "How do I jump start a car battery?"]


def write_data(path, n=72):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        group = i % 3
        prompt = (COOK, MATH, CARS)[group][i % 4] + f" (question {i})"
        short = "Sure, I think it works." if rng.random() < 0.5 else "Sorry, maybe it works."
        long = short + " " + " ".join(["Here is a longer explanation with more words"] * int(1 + rng.integers(4)))
        chosen, rejected = (long, short) if rng.random() < 0.7 else (short, long)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "category": ("cooking", "math", "cars")[group]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def every_kind(tmp_path, tiny_model_dir, scoped=True):
    (tmp_path / "cook.txt").write_text("bake\noven\nfry\nboil\n")
    lines = [{"prompt": "", "positive": p, "negative": q} for p, q in zip(COOK, CARS)]
    (tmp_path / "food.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rules = ("block concept v when topic cook;\n"
             "dampen concept hedging by 0.5 via filter when topic food;\n"
             "keep concept v when topic math;\n"
             "block concept apology via relabel when topic c1;\n") if scoped else "keep concept v;\n"
    text = (f'policy "topics";\nmodel "{tiny_model_dir}";\n\nconcept v = metric words;\n'
            'topic cook = lexicon "cook.txt";\ntopic food = probe "food.jsonl" above 0.5;\n'
            'topic math = column "category" == "math";\ntopic c1 = cluster 1 of 2;\n\n' + rules)
    path = tmp_path / ("p.ethos" if scoped else "old.ethos")
    path.write_text(text)
    return str(path)


def test_a_policy_with_every_kind_of_topic_compiles_formats_diffs_and_plans(tmp_path, tiny_model_dir, ethos_cache,
                                                                            capsys):
    data = tmp_path / "d.jsonl"
    write_data(data)
    policy = every_kind(tmp_path, tiny_model_dir)
    old = every_kind(tmp_path, tiny_model_dir, scoped=False)
    assert main(["check", policy]) == 0
    capsys.readouterr()
    assert main(["fmt", policy]) == 0
    formatted = capsys.readouterr().out
    assert "block concept v when topic cook;" in formatted and 'topic c1 = cluster 1 of 2;' in formatted
    (tmp_path / "f.ethos").write_text(formatted)

    def rules(path):
        plan = compile_file(str(path)).plan
        return ([(i.concept, i.action, i.protocol, i.scope, i.factor) for i in plan.interventions],
                [(t.name, t.kind) for t in plan.topics])

    assert rules(tmp_path / "f.ethos") == rules(policy)
    assert [k for _, k in rules(policy)[1]] == ["lexicon", "probe", "column", "cluster"]
    main(["diff", old, policy])
    diff = capsys.readouterr().out
    assert "cook" in diff and "hedging" in diff
    out = tmp_path / "out"
    code = main(["plan", policy, "--data", str(data), "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out)
    topics = {t["name"]: t for t in doc["topics"]}
    assert set(topics) == {"cook", "food", "math", "c1"}
    cook = topics["cook"]
    assert cook["label"].startswith("lexicon cook.txt") and cook["n_pairs"] == sum(
        any(w in p for w in ("bake", "oven", "fry", "boil")) for p in COOK) * 72 // 12
    for t in doc["topics"]:
        for c in t["concepts"]:
            assert {"alpha_before", "alpha_before_ci", "alpha_after", "alpha_after_ci", "alpha_target", "verdict",
                    "outside"} <= set(c)
    (v,) = topics["cook"]["concepts"]
    assert v["factor"] == 0 and v["alpha_target"] == 0
    assert v["outside"]["unchanged"] is True  # v has rules only within topics
    assert {i["scope"] for i in doc["interventions"]} == {"cook", "food", "c1"}
    html = (out / "plan.html").read_text()
    assert "Rules within topics" in html and "when topic cook" in html and 'href="trace-v.html"' in html
    assert (out / "trace-v.html").is_file() and "The pairs, ranked" in (out / "trace-v.html").read_text()
    assert "Rules within topics" in (out / "plan.md").read_text()
    # every pair in the trace names the rule that decides it
    assert all(p["rule"] for p in doc["traces"]["v"]["pairs"])
    assert sum(r["pairs"] for r in doc["traces"]["v"]["accounting"]["by_rule"]) == 72


def test_apply_refuses_a_scoped_training_time_rule(tmp_path, tiny_model_dir, ethos_cache, capsys):
    data = tmp_path / "d.jsonl"
    write_data(data, n=24)
    lines = [{"prompt": "", "positive": p, "negative": q} for p, q in zip(COOK, CARS)]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "p.ethos").write_text(f'model "{tiny_model_dir}";\nconcept s = probe "s.jsonl";\n'
                                      'topic math = column "category" == "math";\n'
                                      "block concept s via penalty 0.5 when topic math;\n")
    assert main(["apply", str(tmp_path / "p.ethos"), "--data", str(data), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "training-time protocols (ablation, steering, penalty) are not yet limited to a topic" in err
    assert not (tmp_path / "o" / "dataset.parquet").exists()


def test_a_scoped_inoculation_instructs_only_the_topic_s_pairs():
    n = 400
    inside = np.arange(n) < 150
    o = run('block concept a via inoculation "Do not pad." when topic t;\n', {"t": inside, "u": np.zeros(n, bool)},
            table=synthetic(n), n=n)
    instructed = o.sim.inoculation != ""
    assert instructed[inside].any() and not instructed[~inside].any()


def _apply_scoped(tmp_path, capsys, rule: str):
    """``ethos apply`` of ``rule`` on concept v (words) within topic how (prompts with the word "how"),
    on the first 80 embedded pairs: (rows, which rows are in the topic, printed output, out folder)."""
    import pyarrow.parquet as pq

    (tmp_path / "how.txt").write_text("how\n")
    policy = tmp_path / "p.ethos"
    policy.write_text(f'concept v = metric words;\ntopic how = lexicon "how.txt";\n{rule}\n')
    out = tmp_path / "o"
    assert main(["apply", str(policy), "--limit", "80", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    rows = pq.read_table(out / "dataset.parquet").to_pylist()
    prompts = [" ".join(m["content"] for m in r["prompt"]) for r in rows]  # the prompt's chat messages
    has_how = np.array(["how" in re.findall(r"[a-z]+", p.lower()) for p in prompts])
    assert has_how.any() and (~has_how).any()
    return rows, has_how, printed, out


def test_apply_writes_a_scoped_data_rule_s_weights_within_the_topic_only(tmp_path, ethos_cache, capsys):
    rows, has_how, _, _ = _apply_scoped(tmp_path, capsys, "block concept v via data when topic how;")
    w = np.array([r["weight"] for r in rows])
    assert (w[~has_how] == 1).all()  # outside the topic: untouched
    assert np.ptp(w[has_how]) > 0  # inside: reweighted


def test_apply_writes_a_scoped_default_rule_s_margin_offsets_within_the_topic_only(tmp_path, ethos_cache, capsys):
    """A rule without `via` is a `loss` rule: every weight stays 1, and the offsets are the topic's."""
    rows, has_how, printed, out = _apply_scoped(tmp_path, capsys, "block concept v when topic how;")
    w = np.array([r["weight"] for r in rows])
    o = np.array([r["margin_offset"] for r in rows])
    assert (w == 1).all()
    assert (o[~has_how] == 0).all() and np.count_nonzero(o[has_how]) > 0
    n = int(np.count_nonzero(o))
    assert f"{n:,} training rows carry a margin offset" in printed and "`ethos train` applies them" in printed
    assert "write `via data`" in printed
    plan = json.loads((out / "plan.json").read_text())
    assert [(i["rule_id"], i["default_protocol"]) for i in plan["interventions"]] == [("v/loss@how", True)]

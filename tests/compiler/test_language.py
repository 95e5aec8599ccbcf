"""The language's newer parts: direction actions (encourage, discourage) and the warnings that
explain direction, topics and scoped rules, lexicon modes."""

import math

import pytest

from ethos.compiler.compile import compile_source
from ethos.compiler.diff import diff_plans
from ethos.compiler.errors import render_all
from ethos.compiler.plan import PROTOCOLS


def ok(text, path="p.ethos"):
    r = compile_source(text, path)
    assert r.ok, render_all(r.diagnostics)
    return r


def codes(text, path="p.ethos"):
    return [d.code for d in compile_source(text, path).diagnostics]


# ---------------------------------------------------------------------------------------------
# encourage / discourage


def test_directions_are_a_target_sign_and_an_optional_size():
    plan = ok("encourage concept refusal;\ndiscourage concept sycophancy by 0.5 via loss;\nblock concept hedging;").plan
    enc, dis, block = plan.interventions
    assert (enc.action, enc.factor, enc.direction, enc.size) == ("encourage", None, 1, None)
    assert (dis.action, dis.factor, dis.direction, dis.size, dis.protocol) == ("discourage", None, -1, 0.5, "loss")
    assert (block.factor, block.direction, block.size) == (0.0, None, None)
    assert plan.factors() == {"hedging": 0.0}  # a direction's k needs the data's α


@pytest.mark.parametrize("alpha", [-0.5, 0.3, 2.0])
def test_target_and_factor_given_alpha(alpha):
    plan = ok("encourage concept refusal;\ndiscourage concept sycophancy by 0.5;\namplify concept warmth by 2;").plan
    enc, dis, amp = plan.interventions
    assert enc.target_for(alpha) == abs(alpha) and enc.factor_for(alpha) == pytest.approx(abs(alpha) / alpha)
    assert dis.target_for(alpha) == -0.5 and dis.factor_for(alpha) == pytest.approx(-0.5 / alpha)
    assert amp.target_for(alpha) == 2 * alpha and amp.factor_for(alpha) == 2.0
    assert dis.factor_for(0.0) == -math.inf and enc.factor_for(0.0) == 1.0  # |0| is 0: nothing to do


def test_only_data_and_loss_realise_a_direction():
    assert sorted(n for n, p in PROTOCOLS.items() if "encourage" in p.actions) == ["data", "loss"]
    assert sorted(n for n, p in PROTOCOLS.items() if "discourage" in p.actions) == ["data", "loss"]
    assert codes("encourage concept refusal via relabel;") == ["E306"]
    assert codes("encourage concept refusal by 0;") == ["E303"]
    assert codes("encourage concept refusal by 1e999;") == ["E303"]


def test_in_training_marks_what_the_trainer_realises():
    assert {n for n, p in PROTOCOLS.items() if p.in_training} == {"ablation", "steering", "penalty"}
    plan = ok('block concept sycophancy via steering 2;\nblock concept sycophancy via loss;').plan
    assert [i.in_training for i in plan.interventions] == [True, False]


def test_a_direction_conflicts_with_a_factor_and_with_another_size():
    assert codes("block concept refusal;\nencourage concept refusal;") == ["E308"]
    assert codes("encourage concept refusal;\nencourage concept refusal by 1;") == ["E308"]
    assert codes("encourage concept refusal;\ndiscourage concept refusal;") == ["E308"]
    r = ok("encourage concept refusal via data;\nencourage concept refusal via loss;")
    assert [i.rule_id for i in r.plan.interventions] == ["refusal/data", "refusal/loss"]
    r = ok("encourage concept refusal;\nencourage concept refusal via data;")
    assert r.diagnostics == [] and [i.rule_id for i in r.plan.interventions] == ["refusal/loss", "refusal/data"]


# ---------------------------------------------------------------------------------------------
# warnings where the compiler can tell a rule pushes against the policy's stated intent


def test_amplify_against_an_expected_negative_alpha_warns_with_the_alternative():
    r = compile_source("expect concept refusal alpha < 0 before plan;\namplify concept refusal by 2.0;", "p.ethos")
    (d,) = r.diagnostics
    assert r.ok and d.code == "W303" and d.span.line == 2
    assert "even less refusal" in d.summary and "encourage concept refusal;" in d.hint
    for op, v in (("<=", "-0.1"), ("==", "-1"), ("<", "-2")):
        assert codes(f"expect concept refusal alpha {op} {v} before plan;\namplify concept refusal by 2.0;") == ["W303"]
    for text in ("expect concept refusal alpha < 0 after plan;\namplify concept refusal by 2.0;",
                 "expect concept refusal alpha > 0 before plan;\namplify concept refusal by 2.0;",
                 "expect concept refusal alpha <= 0 before plan;\namplify concept refusal by 2.0;",
                 "expect concept refusal alpha < 0 before plan;\ndampen concept refusal by 0.5;",
                 "amplify concept refusal by 2.0;"):
        assert codes(text) == [], text


def test_amplify_of_a_concept_the_library_prefers_less_of_warns_unless_the_policy_says_why():
    r = compile_source("amplify concept sycophancy by 2.0;\namplify concept sycophancy by 2.0 via data;")
    assert [d.code for d in r.diagnostics] == ["W305"]  # once per concept, not per protocol
    assert "discourage concept sycophancy;" in r.diagnostics[0].hint
    assert codes("expect concept sycophancy alpha < 0 before plan;\namplify concept sycophancy by 2.0;") == []
    assert codes("concept sycophancy = metric words;\namplify concept sycophancy by 2.0;") == []  # not the library's
    assert codes("discourage concept sycophancy;\nblock concept flattery;") == []


def test_a_direction_contradicted_by_an_after_plan_expectation_warns():
    (d,) = compile_source("encourage concept warmth;\nexpect concept warmth alpha < 0 after plan;").diagnostics
    assert d.code == "W304" and d.span.line == 1 and "2:1" in d.summary
    assert codes("discourage concept warmth;\nexpect concept warmth alpha > 0;") == ["W304"]
    assert codes("encourage concept warmth;\nexpect concept warmth alpha > 0;") == []


# ---------------------------------------------------------------------------------------------
# topics and scoped rules


def test_topic_kinds_and_default_thresholds(tmp_path):
    (tmp_path / "plain.txt").write_text("word\n")
    (tmp_path / "p.jsonl").write_text('{"positive": "in", "negative": "out"}\n')
    text = ('topic a = lexicon "plain.txt";\ntopic b = lexicon "topics/cooking.txt";\n'
            'topic c = lexicon "topics/cooking.txt" above 3;\ntopic d = probe "p.jsonl";\n'
            'topic e = column "source" != "reddit";\ntopic f = cluster 0 of 2;\nkeep concept emoji;\n')
    plan = ok(text, str(tmp_path / "p.ethos")).plan
    got = {t.name: (t.kind, getattr(t, "threshold", None)) for t in plan.topics}
    assert got == {"a": ("lexicon", 0.0), "b": ("lexicon", 1.0), "c": ("lexicon", 3.0), "d": ("probe", 0.5),
                   "e": ("column", None), "f": ("cluster", None)}
    assert [t.name for t in plan.topics] == list("abcdef")  # source order
    assert plan.topic("e").op == "!=" and plan.topic("f").k == 2


def test_a_bad_default_threshold_line_is_a_file_error(tmp_path):
    (tmp_path / "bad.txt").write_text("# ethos: above lots\nword\n")
    r = compile_source('topic a = lexicon "bad.txt";\nkeep concept emoji;', str(tmp_path / "p.ethos"))
    assert [d.code for d in r.diagnostics] == ["E210"] and "ethos:" in r.diagnostics[0].summary


def test_shipped_topic_lexicons_compile_with_their_defaults():
    plan = ok('topic cooking = lexicon "topics/cooking.txt";\ntopic medical = lexicon "topics/medical.txt";\n'
              'topic code = lexicon "topics/code.txt";\nkeep concept emoji;').plan
    assert [(t.name, t.threshold) for t in plan.topics] == [("cooking", 1.0), ("medical", 0.0), ("code", 1.0)]


TOPICS = 'topic med = lexicon "topics/medical.txt";\ntopic food = lexicon "topics/cooking.txt";\n'


def test_conflicts_are_judged_per_topic():
    plan = ok(TOPICS + "block concept sycophancy;\ndampen concept sycophancy by 0.5 when topic med;\n"
                       "keep concept sycophancy when topic food;").plan
    assert plan.factors() == {"sycophancy": 0.0}
    assert plan.factors("med") == {"sycophancy": 0.5}
    assert plan.factors("food") == {"sycophancy": 1.0}
    assert [i.rule_id for i in plan.interventions] == ["sycophancy/loss", "sycophancy/loss@med"]
    assert all(i.default_protocol for i in plan.interventions)
    assert [(k.concept, k.scope) for k in plan.keeps] == [("sycophancy", "food")]
    r = compile_source(TOPICS + "block concept sycophancy when topic med;\ndampen concept sycophancy by 0.5 when topic med;")
    (d,) = r.diagnostics
    assert d.code == "E308" and "in topic 'med'" in d.summary and "per topic" in d.hint
    assert codes(TOPICS + "block concept x when topic med;\nblock concept sycophancy when topic med;\n"
                          "block concept sycophancy when topic med;") == ["E201", "W302"]


def test_unknown_topic_with_did_you_mean():
    (d,) = compile_source(TOPICS + "block concept sycophancy when topic medd;").diagnostics
    assert d.code == "E219" and d.hint == "did you mean 'med'?"
    (d,) = compile_source("block concept sycophancy when topic medical;").diagnostics
    assert d.code == "E219" and "topic medical = lexicon" in d.hint


@pytest.mark.parametrize("text,code", [
    ('topic a = cluster 3 of 3;', "E220"), ('topic a = cluster -1 of 3;', "E220"),
    ('topic a = cluster 0 of 1001;', "E220"), ('topic a = cluster 0 of 2.5;', "E220"),
    ('topic a = lexicon "topics/cooking.txt" above -0.5;', "E221"),
    ('topic a = probe "concepts/refusal.jsonl" above 1;', "E221"),
    ('topic a = column " " == "x";', "E222"), ('topic a = column "c" >= "x";', "E222"),
    ('topic a = column "c" == 1e999;', "E222"),
    ('topic a = lexicon "nope.txt";', "E209"),
    ('topic a = metric length;', "E111"), ('topic 3 = cluster 1 of 2;', "E107"),
])
def test_topic_errors(text, code):
    assert codes(text + "\nkeep concept emoji;") == [code]


def test_scoped_keep_and_diff_of_topics_and_scopes():
    a = ok(TOPICS + "block concept sycophancy;\nencourage concept refusal;").plan
    b = ok(TOPICS.replace('"topics/medical.txt"', '"topics/medical.txt" above 2') +
           "block concept sycophancy;\nblock concept sycophancy when topic med;\nencourage concept refusal by 1;").plan
    got = {(c.op, c.what, c.key): c.text for c in diff_plans(a, b)}
    assert set(got) == {("~", "topic", "med"), ("+", "rule", "sycophancy via loss when topic med"),
                        ("~", "rule", "refusal via loss")}
    assert "via loss (default) when topic med" in got[("+", "rule", "sycophancy via loss when topic med")]
    assert "above 0" in got[("~", "topic", "med")] and "above 2" in got[("~", "topic", "med")]
    assert got[("~", "rule", "refusal via loss")].endswith("(α′ = +1)")
    assert diff_plans(a, ok("# reordered\n" + TOPICS[TOPICS.index("\n") + 1:] + TOPICS[:TOPICS.index("\n") + 1]
                            + "encourage concept refusal;\nblock concept sycophancy;").plan) == []


# ---------------------------------------------------------------------------------------------
# lexicon modes


def test_lexicon_modes_default_to_count():
    plan = ok('concept a = lexicon "concepts/hedging.txt";\nconcept b = lexicon "concepts/hedging.txt" presence;\n'
              'concept c = lexicon "concepts/hedging.txt" density;\nkeep concept a;\nkeep concept b;\n'
              'keep concept c;\nkeep concept hedging;').plan
    assert {c.name: c.lens.mode for c in plan.concepts} == {"a": "count", "b": "presence", "c": "density",
                                                            "hedging": "count"}
    (d,) = compile_source('concept a = lexicon "concepts/hedging.txt" dens;\nkeep concept a;').diagnostics
    assert d.code == "E223" and d.hint == "did you mean 'density'?"


def test_a_mode_change_is_a_change_in_meaning():
    a = ok('concept a = lexicon "concepts/hedging.txt";\nblock concept a;').plan
    b = ok('concept a = lexicon "concepts/hedging.txt" density;\nblock concept a;').plan
    ((change),) = diff_plans(a, b)
    assert change.what == "concept" and "count" in change.text and "density" in change.text

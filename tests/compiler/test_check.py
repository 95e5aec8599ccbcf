import pytest

from ethos.compiler.check import PROTOCOLS, protocols_for
from ethos.compiler.compile import compile_source


def diag_codes(text):
    return [d.code for d in compile_source(text).diagnostics]


@pytest.mark.parametrize("text,code", [
    ("amplify concept refusal by 0.5;", "E303"),
    ("dampen concept hedging by 3;", "E303"),
    ("dampen concept hedging by -0.5;", "E303"),
    ("dampen concept hedging by 0;", "E303"),
    ("amplify concept refusal by 1;", "E303"),
    ("amplify concept refusal by 1e999;", "E303"),
    ("amplify concept refusal;", "E302"),
    ("block concept refusal by 0.5;", "E301"),
    ("reverse concept refusal by 2;", "E301"),
    ("keep concept emoji via data;", "E304"),
    ("block concept refusal via ablate;", "E305"),
    ("amplify concept refusal by 2 via steering 4;", "E306"),
    ("amplify concept refusal by 2 via relabel;", "E306"),
    ("block concept verbosity via ablation;", "E307"),
    ("block concept hedging via steering 2;", "E307"),
    ("block concept verbosity via penalty 0.1;", "E307"),
    ("block concept refusal via relabel 1;", "E310"),
    ("block concept refusal via steering;", "E311"),
    ('block concept refusal via inoculation "";', "E312"),
    ("block concept refusal via inoculation 3;", "E312"),
    ("block concept refusal via steering -1;", "E313"),
    ("block concept refusal via penalty 0;", "E313"),
])
def test_rule_errors(text, code):
    assert diag_codes(text) == [code]


def test_two_factors_for_one_concept_names_both_positions():
    r = compile_source("block concept refusal;\n\namplify concept refusal by 2;", "p.ethos")
    (d,) = r.diagnostics
    assert d.code == "E308" and d.span.line == 3
    assert "at 1:1" in d.hint and "k = 2" in d.hint and "k = 0" in d.hint


def test_keep_conflicts_with_block():
    assert diag_codes("keep concept emoji;\nblock concept emoji;") == ["E308"]


def test_one_factor_through_several_protocols_is_fine():
    r = compile_source("block concept sycophancy;\nblock concept sycophancy via ablation;\n"
                       'block concept sycophancy via inoculation "You agree.";')
    assert r.ok and r.diagnostics == []
    assert [i.protocol for i in r.plan.interventions] == ["loss", "ablation", "inoculation"]
    assert [i.default_protocol for i in r.plan.interventions] == [True, False, False]
    assert r.plan.interventions[2].text == "You agree."
    assert r.plan.factors() == {"sycophancy": 0.0}


def test_duplicate_rule_is_a_warning_and_conflicting_args_an_error():
    r = compile_source("block concept refusal via data;\nblock concept refusal via data;")
    assert r.ok and [d.code for d in r.diagnostics] == ["W302"]
    assert "default" not in r.diagnostics[0].hint
    # a rule without `via` is a `via loss` rule: the warning says why the user's two rules are one
    r = compile_source("block concept refusal;\nblock concept refusal via loss;")
    assert r.ok and [d.code for d in r.diagnostics] == ["W302"]
    assert "without 'via' uses the default protocol, 'loss'" in r.diagnostics[0].hint
    assert "via data" in r.diagnostics[0].hint
    r = compile_source("block concept refusal;\nblock concept refusal via data;")
    assert r.ok and r.diagnostics == []
    assert [i.rule_id for i in r.plan.interventions] == ["refusal/loss", "refusal/data"]
    assert diag_codes("block concept refusal via steering 2;\nblock concept refusal via steering 3;") == ["E309"]


def test_no_rules_is_a_warning():
    r = compile_source('policy "x";')
    assert r.ok and [d.code for d in r.diagnostics] == ["W301"]


def test_errors_are_all_collected():
    text = "block concept sycofancy;\namplify concept refusal by 0.5;\nconcept v = metric lenght;\n"
    r = compile_source(text, "p.ethos")
    assert [(d.code, d.span.line, d.span.column) for d in r.diagnostics] == [
        ("E201", 1, 15), ("E303", 2, 28), ("E207", 3, 20)]


def test_factors_and_default_protocol():
    plan = compile_source("dampen concept hedging by 0.5;\namplify concept refusal by 2.0;\n"
                          "reverse concept apology via loss;\nkeep concept emoji;").plan
    assert plan.factors() == {"apology": -1.0, "emoji": 1.0, "hedging": 0.5, "refusal": 2.0}
    assert [i.protocol for i in plan.interventions] == ["loss", "loss", "loss"]
    assert [i.default_protocol for i in plan.interventions] == [True, True, False]
    assert [i.rule_id for i in plan.interventions] == ["hedging/loss", "refusal/loss", "apology/loss"]


def test_a_rule_without_via_gets_the_loss_protocol_and_says_so():
    from ethos.compiler.plan import DEFAULT_PROTOCOL, dump_plan, load_plan

    assert DEFAULT_PROTOCOL == "loss"
    text = ("topic med = lexicon \"topics/medical.txt\";\n"
            "block concept sycophancy;\ndampen concept hedging by 0.5 via data;\n"
            "encourage concept refusal;\nblock concept verbosity when topic med;\n")
    r = compile_source(text, "p.ethos")
    assert r.ok and r.diagnostics == [], r.diagnostics
    got = [(i.rule_id, i.protocol, i.default_protocol, i.protocol_text) for i in r.plan.interventions]
    assert got == [("sycophancy/loss", "loss", True, "loss (default)"),
                   ("hedging/data", "data", False, "data"),
                   ("refusal/loss", "loss", True, "loss (default)"),
                   ("verbosity/loss@med", "loss", True, "loss (default)")]
    # every action a default rule can take is one the loss protocol realises, as `data` did
    for action in ("block", "dampen by 0.5", "amplify by 2", "reverse", "encourage", "discourage"):
        verb, *rest = action.split(" ", 1)
        one = compile_source(f"{verb} concept verbosity {' '.join(rest)};".replace(" ;", ";"))
        assert one.ok, one.diagnostics  # (amplify on verbosity warns: W305)
        plan = one.plan
        (i,) = plan.interventions
        assert (i.protocol, i.default_protocol, i.action) == ("loss", True, verb)
    # the flag is in the plan's JSON and survives the round trip
    dumped = dump_plan(r.plan)
    assert '"default_protocol": true' in dumped and '"default_protocol": false' in dumped
    assert dump_plan(load_plan(dumped)) == dumped
    assert load_plan(dumped) == r.plan


def test_a_plan_saved_without_the_flag_reads_as_written_out():
    """A plan JSON from before ``default_protocol`` existed reads with the flag False."""
    import json

    from ethos.compiler.plan import dump_plan, load_plan

    data = json.loads(dump_plan(compile_source("block concept sycophancy via data;").plan))
    for i in data["interventions"]:
        del i["default_protocol"]
    plan = load_plan(json.dumps(data))
    assert [(i.protocol, i.default_protocol) for i in plan.interventions] == [("data", False)]


def test_protocol_table_matches_design():
    assert set(PROTOCOLS) == {"data", "filter", "relabel", "inoculation", "loss", "ablation", "steering", "penalty"}
    assert "steering" not in protocols_for("amplify", "probe")
    assert "relabel" not in protocols_for("amplify", "metric")
    assert protocols_for("block", "metric") == ["data", "filter", "relabel", "inoculation", "loss"]
    assert "ablation" in protocols_for("block", "features")


def test_expectations_are_typed():
    plan = compile_source("block concept verbosity;\nexpect concept verbosity share < 0.05;\n"
                          "expect pairs kept >= 0.8;\nexpect ess > 0.5;\n"
                          "expect concept verbosity alpha > 0 before plan;").plan
    kinds = [(e.kind, getattr(e, "phase", None)) for e in plan.expectations]
    assert kinds == [("concept", "after"), ("pairs", None), ("ess", None), ("concept", "before")]
    assert plan.expectations[0].text == "expect concept verbosity share < 0.05;"


def test_protocol_table_is_the_one_source():
    from ethos.compiler.plan import PROTOCOL_KIND, PROTOCOLS as TABLE

    assert PROTOCOLS is TABLE
    assert {n for n, p in TABLE.items() if p.shapes_data} == {"data", "filter", "relabel"}
    assert PROTOCOL_KIND == {n: p.stage for n, p in TABLE.items()}
    assert {p.argument for p in TABLE.values()} == {None, "text", "strength", "weight"}
    assert all(p.name == n and p.stage in ("data", "loss", "activation") for n, p in TABLE.items())


def test_rule_ids_are_stable_unique_and_read_the_table():
    text = ("block concept sycophancy;\nblock concept sycophancy via ablation;\n"
            "dampen concept refusal by 0.5 via steering 2;\n")
    plan = compile_source(text).plan
    assert [i.rule_id for i in plan.interventions] == ["sycophancy/loss", "sycophancy/ablation", "refusal/steering"]
    moved = compile_source("\n\n" + "\n".join(reversed(text.splitlines()))).plan
    assert sorted(i.rule_id for i in moved.interventions) == sorted(i.rule_id for i in plan.interventions)
    assert [(i.stage, i.shapes_data) for i in plan.interventions] == [
        ("loss", False), ("activation", False), ("activation", False)]
    assert plan.rule("refusal/steering").strength == 2.0


def test_rule_id_suffix_for_repeats_and_old_plans_load():
    import json

    from ethos.compiler.plan import dump_plan, load_plan, rule_id

    assert rule_id("x", "data", {"x/data"}) == "x/data#2"
    assert rule_id("x", "data", {"x/data", "x/data#2"}) == "x/data#3"
    plan = compile_source("block concept sycophancy via data;\nblock concept refusal via loss;").plan
    old = json.loads(dump_plan(plan))
    for i in old["interventions"]:
        del i["rule_id"]
    assert dump_plan(load_plan(json.dumps(old))) == dump_plan(plan)
    dup = json.loads(dump_plan(plan))
    dup["interventions"][1]["rule_id"] = "sycophancy/data"
    with pytest.raises(ValueError, match="not unique"):
        load_plan(json.dumps(dup))

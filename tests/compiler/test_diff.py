from ethos.compiler.compile import compile_source
from ethos.compiler.diff import diff_plans


def plan(text):
    r = compile_source(text, "p.ethos")
    assert r.ok, r.diagnostics
    return r.plan


def test_reformatting_and_reordering_change_nothing():
    a = plan("block concept verbosity;\namplify concept refusal by 2.0;  # x")
    b = plan("# moved\namplify  concept refusal by 2.0 ;\n\nblock concept verbosity via loss;")
    assert diff_plans(a, b) == []  # writing out the default protocol changes nothing


def test_a_rule_without_via_differs_from_one_via_data():
    a = plan("block concept verbosity;")
    b = plan("block concept verbosity via data;")
    got = [(c.op, c.what, c.key, c.text) for c in diff_plans(a, b)]
    assert got == [("+", "rule", "verbosity via data", "block concept verbosity via data  (k = 0)"),
                   ("-", "rule", "verbosity via loss", "block concept verbosity via loss (default)  (k = 0)")]


def test_changes_in_meaning():
    a = plan('block concept verbosity;\namplify concept refusal by 2.0;\nkeep concept emoji;\n'
             'expect pairs kept >= 0.8;')
    b = plan('model "x" layer 3;\nconcept verbosity = metric words;\nblock concept verbosity;\n'
             'amplify concept refusal by 3.0;\nblock concept sycophancy via ablation;\nexpect pairs kept >= 0.9;')
    got = {(c.op, c.what, c.key) for c in diff_plans(a, b)}
    assert got == {
        ("~", "model", "model"),
        ("~", "concept", "verbosity"),
        ("~", "rule", "refusal via loss"),
        ("+", "rule", "sycophancy via ablation"),
        ("-", "keep", "emoji"),
        ("-", "expect", "expect pairs kept >= 0.8;"),
        ("+", "expect", "expect pairs kept >= 0.9;"),
    }

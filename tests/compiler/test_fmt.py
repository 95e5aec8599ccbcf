from pathlib import Path

import pytest

from ethos.compiler.ast import to_ast
from ethos.compiler.fmt import format_file
from ethos.compiler.parse import parse

ROOT = Path(__file__).resolve().parents[2]
POLICIES = sorted((ROOT / "specs" / "examples").glob("*.ethos")) + sorted(
    (ROOT / "tests" / "fixtures" / "compile").glob("*.ethos"))


def fmt(text: str) -> str:
    parsed = parse(text, "t.ethos")
    assert parsed.tree is not None, parsed.diagnostics
    return format_file(to_ast(parsed.tree, "t.ethos", parsed.comments))


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_fmt_is_idempotent_and_keeps_comments(path):
    text = path.read_text()
    once = fmt(text)
    assert fmt(once) == once
    comments = [ln[ln.index("#"):] for ln in text.splitlines() if "#" in ln and '"' not in ln.split("#")[0]]
    for c in comments:
        assert c.rstrip() in once


@pytest.mark.parametrize("path", sorted((ROOT / "specs" / "examples").glob("*.ethos")), ids=lambda p: p.name)
def test_examples_are_canonical(path):
    assert fmt(path.read_text()) == path.read_text()


def test_canonical_form():
    text = ('policy   "p" ;# c1\n\n\n\n# own line\nconcept  f =features 1 ,2,3   pool max;'
            '\nblock\n concept f\n via   steering 4.0 ;  amplify concept refusal by 2.0;  # end\n')
    assert fmt(text) == ('policy "p";  # c1\n\n# own line\nconcept f = features 1, 2, 3 pool max;\n'
                         'block\n    concept f\n    via steering 4.0;\namplify concept refusal by 2.0;  # end\n')


def test_line_breaks_inside_a_statement_and_comments_stay_where_they_were():
    text = ("# header\n"
            "block concept sycophancy   # why we block it\n"
            "      via inoculation\n"
            "\n"
            "   # the instruction, said plainly\n"
            '   "You tend to agree with the user." ;  # after\n'
            "concept f = features 1,\n  2,   # two\n  3;\n"
            "keep concept emoji;\n")
    want = ("# header\n"
            "block concept sycophancy  # why we block it\n"
            "    via inoculation\n"
            "    # the instruction, said plainly\n"
            '    "You tend to agree with the user.";  # after\n'
            "concept f = features 1,\n    2,  # two\n    3;\n"
            "keep concept emoji;\n")
    assert fmt(text) == want
    assert fmt(want) == want
    for comment in ("# why we block it", "# the instruction, said plainly", "# after", "# two"):
        assert want.index(comment) > 0
    # the comment stays inside its statement: between the same tokens as before
    assert want.index("via inoculation") < want.index("# the instruction") < want.index('"You tend')


def test_format_source_reports_syntax_errors():
    from ethos.compiler.fmt import format_source

    out, diags = format_source("block concept x\nkeep concept y;", "t.ethos")
    assert out is None and [d.code for d in diags] == ["E103"] and diags[0].snippet == "block concept x"
    out, diags = format_source(b"block   concept  x;", "t.ethos")
    assert out == "block concept x;\n" and diags == []
    out, diags = format_source(b"\xff", "t.ethos")
    assert out is None and diags[0].code == "E001"


def test_fmt_preserves_meaning():
    from ethos.compiler.compile import compile_source
    from ethos.compiler.plan import dump_plan

    for path in POLICIES:
        text = path.read_text()
        a = compile_source(text, str(path))
        b = compile_source(fmt(text), str(path))
        assert a.ok and b.ok
        strip = lambda p: [i.model_dump(exclude={"span"}) for i in p.interventions]  # noqa: E731
        assert strip(a.plan) == strip(b.plan)
        assert [c.lens for c in a.plan.concepts] == [c.lens for c in b.plan.concepts]
        assert dump_plan(a.plan) == dump_plan(compile_source(text, str(path)).plan)


def test_fmt_leaves_a_rule_without_via_without_via():
    """The default protocol is the compiler's choice, not the text's: formatting never writes it out
    (a later default would then apply to the formatted policy as to the original)."""
    from ethos.compiler.compile import compile_source

    text = "block  concept sycophancy ;\nencourage concept refusal when topic med;\n"
    out = fmt('topic med = lexicon "topics/medical.txt";\n' + text)
    assert "via" not in out
    assert "block concept sycophancy;\n" in out and "encourage concept refusal when topic med;\n" in out
    plan = compile_source(out, "t.ethos").plan
    assert [(i.protocol, i.default_protocol) for i in plan.interventions] == [("loss", True), ("loss", True)]

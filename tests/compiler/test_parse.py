from ethos.compiler.ast import ExpectConcept, FeaturesLens, Rule, to_ast
from ethos.compiler.parse import decode, parse


def codes(text):
    return [(d.code, d.span.line, d.span.column) for d in parse(text, "t.ethos").diagnostics]


def test_two_statement_policy_parses_with_spans():
    parsed = parse("block concept sycophancy; amplify concept refusal by 2.0;", "t.ethos")
    assert parsed.diagnostics == []
    ast = to_ast(parsed.tree, "t.ethos", parsed.comments)
    first, second = ast.statements
    assert isinstance(first, Rule) and first.action.text == "block" and first.concept.text == "sycophancy"
    assert (first.concept.span.line, first.concept.span.column, first.concept.span.end_column) == (1, 15, 25)
    assert second.factor.value == 2.0 and second.factor.text == "2.0"
    assert second.span.column == 27


def test_features_and_expectation_nodes():
    parsed = parse("concept f = features 1, 2, 3 pool mean;\nexpect concept f share < 0.02 after plan;", "t")
    (cdef, exp) = to_ast(parsed.tree, "t").statements
    assert isinstance(cdef.lens, FeaturesLens)
    assert [n.value for n in cdef.lens.latents] == [1, 2, 3] and cdef.lens.pool.mode.text == "mean"
    assert isinstance(exp, ExpectConcept) and exp.phase.when.text == "after" and exp.value.value == 0.02


def test_comments_are_collected():
    parsed = parse('# head\nkeep concept emoji;  # tail "quoted"\npolicy "a # not a comment";', "t")
    assert [c.text for c in parsed.comments] == ["# head", '# tail "quoted"']


def test_missing_semicolon_points_after_previous_token():
    assert codes("block concept x\namplify concept y by 2;") == [("E103", 1, 16)]


def test_missing_semicolon_at_end_of_file():
    assert codes("keep concept emoji") == [("E103", 1, 19)]


def test_unknown_statement_suggests_keyword():
    diags = parse("blok concept x;", "t").diagnostics
    assert diags[0].code == "E106" and diags[0].hint == "did you mean 'block'?"


def test_labelled_errors():
    assert codes("block x;")[0][0] == "E108"
    assert codes("concept 3 = metric length;")[0][0] == "E107"
    assert codes("concept x = metrc length;")[0][0] == "E109"
    assert codes('policy "open;')[0][0] == "E101"
    assert codes("keep concept")[0][0] == "E104"


def test_recovers_to_report_several_syntax_errors():
    text = "block concept x\nkeep concept y;\n@\nblok concept z;\nexpect concept q share < 1 after plan;\n$;"
    got = [c for c, _, _ in codes(text)]
    assert got == ["E103", "E102", "E106", "E102", "E106"]  # a lone ";" is an empty statement


def test_decode_reports_the_first_bad_byte():
    text, diags = decode(b"keep concept emoji;\nblock \xff concept x;", "t")
    assert text is None and diags[0].code == "E001"
    assert (diags[0].span.line, diags[0].span.column) == (2, 7)


def test_decode_strips_bom():
    text, diags = decode("\ufeffkeep concept emoji;".encode(), "t")
    assert text == "keep concept emoji;" and diags == []

"""Property: no text, however broken, makes the compiler raise; it yields a plan or diagnostics."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ethos.compiler.compile import compile_source
from ethos.compiler.errors import render_all
from ethos.compiler.fmt import format_file
from ethos.compiler.parse import parse

WORDS = ["policy", "model", "sae", "concept", "block", "dampen", "keep", "amplify", "reverse", "expect",
         "via", "by", "layer", "metric", "lexicon", "probe", "features", "pool", "mean", "max", "pairs",
         "kept", "ess", "share", "after", "before", "plan", "data", "filter", "relabel", "inoculation",
         "loss", "ablation", "steering", "penalty", "sycophancy", "refusal", "verbosity", "length", "x",
         ";", ";", "=", ",", "<", ">=", "==", "0", "0.5", "2.0", "-1", "1e999", "4095", '"t"',
         '"concepts/hedging.txt"', "#c\n", "\n", '"', "\\", "\x00", "é", "@"]
VALID = [
    "block concept sycophancy;", "amplify concept refusal by 2.0;", "dampen concept hedging by 0.5 via filter;",
    "concept f = features 1, 2 pool max;", "block concept f via ablation;", "keep concept emoji;",
    'policy "p";', 'model "m" layer 3;', "expect pairs kept >= 0.8;", "expect concept refusal share < 0.1;",
    'block concept verbosity via inoculation "Be brief.";', "reverse concept apology via relabel;",
]

texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join),
    st.binary(max_size=200),
)


@st.composite
def mutated(draw):
    """A valid policy with a few random edits: deletions, insertions, swaps."""
    text = "\n".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=8)))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["del", "ins", "dup"]))
        if op == "del":
            text = text[:i] + text[i + draw(st.integers(1, 6)):]
        elif op == "ins":
            text = text[:i] + draw(st.sampled_from(WORDS + [" ", "\t"])) + text[i:]
        else:
            text = text[:i] + text[i:i + 12] + text[i:]
    return text


def _compiles_or_diagnoses(text):
    r = compile_source(text, "fuzz.ethos")
    assert r.plan is not None or any(d.is_error for d in r.diagnostics)
    render_all(r.diagnostics)  # rendering never raises either
    if r.plan is not None and isinstance(text, str):
        parsed = parse(text, "fuzz.ethos")
        once = format_file(r.ast)
        assert parse(once, "f").tree is not None
        assert format_file(__import__("ethos.compiler.ast", fromlist=["to_ast"]).to_ast(
            parse(once, "f").tree, "f", parse(once, "f").comments)) == once
        assert parsed.tree is not None


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_random_text_only_yields_diagnostics(text):
    _compiles_or_diagnoses(text)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_policies_only_yield_diagnostics(text):
    _compiles_or_diagnoses(text)


def test_huge_and_deep_inputs():
    for text in ["block concept refusal;" * 20000, "(" * 100000, "#" * 1_000_000, "concept x = features "
                 + ", ".join(["1"] * 50000) + ";", "\n" * 200000 + "@"]:
        _compiles_or_diagnoses(text)

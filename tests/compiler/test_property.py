"""Properties, checked on generated input (hypothesis; about half a minute in all):

- no text or bytes, however broken, makes the compiler raise; it yields a plan or an error, and
  its diagnostics render, dump as JSON and stay capped;
- the parser agrees with the reference grammar (lark on grammar.lark) on every token sequence:
  the same statements, the same spans, or both reject it;
- fmt is idempotent, keeps every comment in order and the plan's meaning, whatever line breaks
  and comments a valid policy has.

The fuzz bench (bench/fuzz.py) does the same at scale; its small form runs here too.
"""

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark.exceptions import UnexpectedInput

from ethos.compiler.ast import to_ast
from ethos.compiler.compile import compile_source
from ethos.compiler.errors import MAX_PER_CODE, render_all
from ethos.compiler.fmt import format_source
from ethos.compiler.parse import parse, parser, tokenize

ROOT = Path(__file__).resolve().parents[2]

WORDS = ["policy", "model", "sae", "concept", "block", "dampen", "keep", "amplify", "reverse", "expect",
         "encourage", "discourage", "topic", "when", "above", "column", "cluster", "of", "count", "presence",
         "density", "via", "by", "layer", "metric", "lexicon", "probe", "features", "pool", "mean", "max",
         "pairs", "kept", "ess", "share", "alpha", "after", "before", "plan", "data", "filter", "relabel",
         "inoculation", "loss", "ablation", "steering", "penalty", "sycophancy", "refusal", "verbosity", "length",
         "x", ";", ";", "=", ",", "<", ">=", "==", "0", "0.5", "2.0", "-1", "1e999", "4095", "12", '"t"',
         '"concepts/hedging.txt"', "#c\n", "\n", '"', "\\", "\x00", "é", "@"]
TOKENS = [w for w in WORDS if w not in ("#c\n", "\n", '"', "\\", "\x00", "é", "@")]
VALID = [
    "block concept sycophancy;", "amplify concept refusal by 2.0;", "dampen concept hedging by 0.5 via filter;",
    "concept f = features 1, 2 pool max;", "block concept f via ablation;", "keep concept emoji;",
    'policy "p";', 'model "m" layer 3;', "expect pairs kept >= 0.8;", "expect concept refusal share < 0.1;",
    'block concept verbosity via inoculation "Be brief.";', "reverse concept apology via relabel;",
    "expect concept refusal alpha < 0 before plan;", "expect ess >= 0.3;",
    "encourage concept warmth;", "discourage concept flattery by 0.5 via loss;",
    "block concept refusal when topic med;", 'concept s = lexicon "concepts/hedging.txt" presence;',
    'topic med = lexicon "topics/medical.txt" above 1;', 'topic m = column "category" == "math";',
    "topic t3 = cluster 3 of 12;", "keep concept verbosity when topic t3;",
]
DEFINITIONS = ("concept f", "concept s", "topic ")

texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join),
    st.binary(max_size=200),
)


@st.composite
def mutated(draw):
    """A valid policy with a few random edits: deletions, insertions, duplications."""
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


@st.composite
def laid_out(draw):
    """A valid policy with line breaks, blank lines and comments between any two tokens."""
    rules = [s for s in VALID if not s.startswith(DEFINITIONS)]
    head = [s for s in VALID if s.startswith(DEFINITIONS)]
    statements = head + draw(st.lists(st.sampled_from(rules), min_size=1, max_size=6, unique=True))
    out = []
    for s in statements:
        toks, _ = tokenize(s)
        for t in toks:
            out.append(t.text)
            out.append(draw(st.sampled_from([" ", " ", " ", "\n", "\n    ", "  # note\n", "\n\n# own\n", "\t"])))
    return "".join(out)


def _compiles_or_diagnoses(data):
    r = compile_source(data, "fuzz.ethos")
    assert r.plan is not None or any(d.is_error for d in r.diagnostics)
    render_all(r.diagnostics)
    json.dumps([d.model_dump(mode="json") for d in r.diagnostics])
    codes = [d.code for d in r.diagnostics]
    assert all(codes.count(c) <= MAX_PER_CODE for c in codes)
    if r.plan is not None:
        once, _ = format_source(data, "fuzz.ethos")
        assert once is not None and format_source(once, "fuzz.ethos")[0] == once
    return r


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_random_text_only_yields_diagnostics(data):
    _compiles_or_diagnoses(data)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_policies_only_yield_diagnostics(text):
    _compiles_or_diagnoses(text)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=30), st.sampled_from([" ", "\n", " \n "]))
def test_parser_agrees_with_the_reference_grammar(tokens, sep):
    text = sep.join(tokens)
    ours = parse(text, "t.ethos")
    try:
        reference = to_ast(parser().parse(text), "t.ethos")
    except UnexpectedInput:
        reference = None
    if reference is None:
        assert ours.diagnostics, text
    else:
        assert not ours.diagnostics, (text, ours.diagnostics)
        assert ours.ast.statements == reference.statements


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(laid_out())
def test_fmt_keeps_comments_line_breaks_and_meaning(text):
    r = _compiles_or_diagnoses(text)
    assert r.ok, render_all(r.diagnostics)
    once, _ = format_source(text, "fuzz.ethos")
    assert [c[0].rstrip() for c in tokenize(text)[1]] == [c[0] for c in tokenize(once)[1]]
    # inside a statement, a line break between two tokens is still there, and no other is made
    def breaks(t):
        toks = tokenize(t)[0]
        return [b.line > a.line for a, b in zip(toks, toks[1:]) if a.text != ";"]

    assert breaks(text) == breaks(once)
    again = compile_source(once, "fuzz.ethos")
    strip = lambda p: [i.model_dump(exclude={"span"}) for i in p.interventions]  # noqa: E731
    assert strip(again.plan) == strip(r.plan)


def test_huge_and_deep_inputs():
    for text in ["block concept refusal;" * 10000, "(" * 100000, "#" * 1_000_000, "concept x = features "
                 + ", ".join(["1"] * 50000) + ";", "\n" * 200000 + "@", "[" * 100000, '"' * 100000,
                 "block concept " + "x" * 1_000_000 + ";"]:
        _compiles_or_diagnoses(text)


def test_the_fuzz_bench_small_form():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--n", "300", "--large-every", "0",
                           "--quick", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["inputs"] == 300 and report["uncaught_exceptions"] == 0 and report["hangs"] == 0

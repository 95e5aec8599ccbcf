"""Every policy in specs/ compiles; the DESIGN.md examples compile as written."""

from pathlib import Path

import pytest

from ethos.compiler.compile import compile_file, compile_source
from ethos.compiler.errors import render_all

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "specs").rglob("*.ethos"))


def test_there_are_at_least_six_examples():
    assert len(list((ROOT / "specs" / "examples").glob("*.ethos"))) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_spec_compiles_without_warnings(path):
    r = compile_file(path)
    assert r.ok, render_all(r.diagnostics)
    assert r.diagnostics == [], render_all(r.diagnostics)
    assert path.read_text().startswith("#"), "each example says what it is for in a leading comment"


def test_introduction_example_is_a_whole_policy():
    r = compile_source("block concept sycophancy; encourage concept refusal;")
    assert r.ok and r.diagnostics == []
    assert r.plan.factors() == {"sycophancy": 0.0}
    assert [(i.concept, i.direction, i.size) for i in r.plan.interventions if i.direction] == [("refusal", 1, None)]


def test_the_shipped_examples_name_only_what_ships():
    """Every SAE an example binds is the shipped one, and no example uses 'amplify' (whose direction
    depends on the data's sign: the examples say the direction they mean)."""
    for path in sorted((ROOT / "specs" / "examples").glob("*.ethos")):
        plan = compile_file(path).plan
        assert plan.sae.name == "default", path.name
        assert all(i.action != "amplify" for i in plan.interventions), path.name


def test_design_example_compiles_verbatim():
    r = compile_file(ROOT / "tests" / "fixtures" / "compile" / "design-example.ethos")
    assert r.ok and r.diagnostics == []
    assert len(r.plan.interventions) == 7 and len(r.plan.keeps) == 1 and len(r.plan.expectations) == 2


def test_every_library_concept_compiles_in_every_action_it_allows():
    from ethos.compiler.check import PROTOCOLS
    from ethos.compiler.resolve import load_library

    for name, concept in load_library().concepts.items():
        for proto, spec in PROTOCOLS.items():
            if concept.lens.kind not in spec.lenses:
                continue
            arg = {"text": ' "x"', "strength": " 2", "weight": " 0.1"}.get(spec.argument, "")
            action = spec.actions[0]
            r = compile_source(f"{action} concept {name} via {proto}{arg};")
            assert r.ok, (name, proto, render_all(r.diagnostics))


def test_the_policies_in_docs_language_md_compile_and_are_canonical():
    import re

    from ethos.compiler.fmt import format_source

    text = (ROOT / "docs" / "language.md").read_text()
    blocks = [b for b in re.findall(r"```\n(.*?)```", text, re.S)
              if not b.startswith(("policy      :=", "specs/x.ethos"))]
    assert len(blocks) >= 3
    for block in blocks:
        r = compile_source(block, str(ROOT / "docs" / "example.ethos"))
        assert r.ok and r.diagnostics == [], (block, render_all(r.diagnostics))
        if block.count("\n") > 1:  # the one-line introduction is not in canonical form, on purpose
            assert format_source(block)[0] == block, block

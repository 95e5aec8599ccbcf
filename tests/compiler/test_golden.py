"""Golden fixtures: tests/fixtures/compile/<case>.ethos -> <case>.plan.json, and
tests/fixtures/errors/<case>.ethos -> <case>.err.txt (the exact rendered diagnostics)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ethos.compiler.compile import compile_file
from ethos.compiler.errors import render_all
from ethos.compiler.plan import dump_plan, load_plan

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

COMPILE_CASES = sorted(p.stem for p in (FIXTURES / "compile").glob("*.ethos"))
ERROR_CASES = sorted(p.stem for p in (FIXTURES / "errors").glob("*.ethos"))


@pytest.mark.parametrize("case", COMPILE_CASES)
def test_compile_golden(case, golden, monkeypatch):
    monkeypatch.chdir(FIXTURES / "compile")
    result = compile_file(f"{case}.ethos")
    assert result.ok, render_all(result.diagnostics)
    golden(FIXTURES / "compile" / f"{case}.plan.json", dump_plan(result.plan))


@pytest.mark.parametrize("case", COMPILE_CASES)
def test_golden_plan_round_trip(case):
    text = (FIXTURES / "compile" / f"{case}.plan.json").read_text(encoding="utf-8")
    assert dump_plan(load_plan(text)) == text


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_golden(case, golden, monkeypatch):
    monkeypatch.chdir(FIXTURES / "errors")
    result = compile_file(f"{case}.ethos")
    assert not result.ok
    golden(FIXTURES / "errors" / f"{case}.err.txt", render_all(result.diagnostics) + "\n")


def test_there_are_goldens():
    assert len(COMPILE_CASES) >= 5 and len(ERROR_CASES) >= 5

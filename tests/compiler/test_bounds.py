"""Bounded cost: compile time linear in the input, diagnostics deduplicated and capped, snippets
cut to a window, ``check --json`` bounded. Times are CPU seconds (process or child), so a busy
machine does not make them flaky."""

import json
import os
import resource
import subprocess
import sys
import time

from ethos.compiler.compile import compile_source
from ethos.compiler.errors import MAX_PER_CODE, SNIPPET_WIDTH, Diagnostic, error, render, render_all
from ethos.compiler.plan import Span

ONE_LINE = "block concept refusal; " * 40_000  # ~0.9 MB, one line, 39,999 duplicate rules
MANY_LINES = "block concept refusal;\n" * 40_000


def _cpu(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def test_a_1mb_policy_of_repeated_rules_compiles_in_under_2s_with_bounded_diagnostics():
    compile_source("keep concept emoji;")  # warm the parser tables
    for text in (ONE_LINE, MANY_LINES):
        r, cpu = _cpu(lambda: compile_source(text, "big.ethos"))
        assert cpu <= 2.0, cpu
        assert r.ok and len(r.plan.interventions) == 1
        (*first, last) = r.diagnostics
        assert len(r.diagnostics) == MAX_PER_CODE and {d.code for d in r.diagnostics} == {"W302"}
        assert last.more == 39_999 - MAX_PER_CODE and all(d.more == 0 for d in first)
        assert all(len(d.snippet) <= SNIPPET_WIDTH + 3 for d in r.diagnostics)
        dumped = json.dumps([d.model_dump(mode="json") for d in r.diagnostics])
        assert len(dumped) < 10_000
        text_out = render_all(r.diagnostics)
        assert "... and 39989 more like this [W302]" in text_out and "0 errors, 39999 warnings" in text_out


def test_many_distinct_mistakes_are_capped_per_code_and_counted():
    text = "".join(f"block concept nope{i};\namplify concept refusal by 0.{i % 9 + 1};\n" for i in range(5000))
    r = compile_source(text, "p.ethos")
    by_code = {}
    for d in r.diagnostics:
        by_code.setdefault(d.code, []).append(d)
    assert set(by_code) == {"E201", "E303", "W302"} or set(by_code) == {"E201", "E303"}
    assert len(by_code["E201"]) == MAX_PER_CODE and sum(1 + d.more for d in by_code["E201"]) == 5000
    assert sum(1 + d.more for d in by_code["E303"]) == 5000
    assert [d.span.line for d in by_code["E201"]] == [1 + 2 * i for i in range(MAX_PER_CODE)]  # the first ones


def test_long_names_and_paths_are_clipped_in_messages():
    name = "x" * 100_000
    r, cpu = _cpu(lambda: compile_source(f'block concept {name};\nconcept y = lexicon "{"p" * 900}";'))
    assert cpu < 1.0
    assert all(len(d.summary) < 200 and len(d.hint or "") < 2000 for d in r.diagnostics)
    assert all(len(d.snippet) <= SNIPPET_WIDTH + 3 for d in r.diagnostics)


def test_snippet_window_renders_like_the_whole_line():
    line = "x" * 500 + "block concept sycofancy;" + "y" * 500
    span = Span(file="f", line=1, column=515, end_line=1, end_column=524)
    whole = Diagnostic(severity="error", code="E201", summary="s", span=span, snippet=line)
    from ethos.compiler.errors import attach_snippets

    (windowed,) = attach_snippets([error("E201", "s", span)], line)
    assert len(windowed.snippet) == SNIPPET_WIDTH + 3 and windowed.snippet_column == 515 - SNIPPET_WIDTH // 2
    assert render(windowed) == render(whole)
    assert "snippet_column" in windowed.model_dump() and "snippet_column" not in whole.model_dump()


def test_json_of_an_ordinary_diagnostic_is_unchanged():
    (d,) = compile_source("block concept sycofancy;", "p.ethos").diagnostics
    assert set(d.model_dump(mode="json")) == {"severity", "code", "summary", "span", "hint", "snippet"}


def test_check_json_on_a_1mb_one_line_policy(tmp_path):
    """What issue 18 asks of the command: ``ethos check --json`` on the 1 MB one-line policy in
    at most 2 s of CPU (the child's own time: start-up, imports, compile, output), bounded output."""
    policy = tmp_path / "big.ethos"
    policy.write_text(ONE_LINE)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "ethos.runtime.cli", "check", "--json", str(policy)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cpu <= 2.0, cpu
    assert len(proc.stdout) < 20_000
    (file,) = json.loads(proc.stdout)["files"]
    assert file["ok"] and file["diagnostics"][-1]["more"] == 39_999 - MAX_PER_CODE

"""The compiler, top to bottom: parse -> AST -> resolve -> check -> plan.

Each stage is a pure function with a typed input and output; diagnostics are collected across
stages, and a plan is built only when there is no error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .ast import PolicyFile, to_ast
from .build import build_plan
from .check import check
from .errors import Diagnostic, attach_snippets, has_errors, sort_key
from .parse import decode, parse
from .plan import Plan
from .resolve import Library, resolve


@dataclass(frozen=True)
class Result:
    plan: Plan | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    ast: PolicyFile | None = None

    @property
    def ok(self) -> bool:
        return self.plan is not None


def compile_source(data: str | bytes, path: str = "<policy>", library: Library | None = None) -> Result:
    text, diags = decode(data, path)
    if text is None:
        return Result(None, diags)
    parsed = parse(text, path)
    if parsed.tree is None:
        return Result(None, attach_snippets(parsed.diagnostics, text))
    ast = to_ast(parsed.tree, path, parsed.comments)
    resolved = resolve(ast, library)
    checked = check(resolved)
    diags = sorted(resolved.diagnostics + checked.diagnostics, key=sort_key)
    plan = None if has_errors(diags) else build_plan(checked, text)
    return Result(plan, attach_snippets(diags, text), ast)


def compile_file(path: str | Path, library: Library | None = None) -> Result:
    """Compile a policy file. An unreadable file is a diagnostic, not an exception."""
    from .errors import error

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return Result(None, [error("E002", f"cannot read {str(path)!r}: {e.strerror or e}", None,
                                   "check the path")])
    return compile_source(data, str(path), library)


def plan_for_concepts(names: list[str], library: Library | None = None) -> Result:
    """A plan that measures the named library concepts (for ``--concepts a,b``): each one kept."""
    source = "".join(f"keep concept {n};\n" for n in names)
    return compile_source(source, "<--concepts>", library)

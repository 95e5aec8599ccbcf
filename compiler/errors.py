"""Diagnostics: plain data (severity, code, summary, span, hint), rendered by one function.

As in Terraform's diagnostics, a diagnostic is data first. ``render`` prints it for people::

    specs/x.ethos:3:15: error: unknown concept 'sycofancy' [E201]
        3 | block concept sycofancy;
          |               ^^^^^^^^^
      hint: did you mean 'sycophancy'?

and ``--json`` dumps the same data (``Diagnostic.model_dump``).
"""

from __future__ import annotations

import difflib
import unicodedata
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict

from .plan import Span

Severity = Literal["error", "warning"]


class Diagnostic(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Severity
    code: str
    summary: str
    span: Span | None = None
    hint: str | None = None
    snippet: str | None = None  # the source line the span starts on (filled by ``attach_snippets``)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def error(code: str, summary: str, span: Span | None, hint: str | None = None) -> Diagnostic:
    return Diagnostic(severity="error", code=code, summary=summary, span=span, hint=hint)


def warning(code: str, summary: str, span: Span | None, hint: str | None = None) -> Diagnostic:
    return Diagnostic(severity="warning", code=code, summary=summary, span=span, hint=hint)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def sort_key(d: Diagnostic):
    s = d.span
    return (s.file, s.line, s.column) if s else ("", 0, 0)


# ---------------------------------------------------------------------------------------------
# Rendering

_MAX_SNIPPET = 160


def _printable(line: str) -> str:
    """Make a source line safe to print: control and other invisible characters shown as U+FFFD."""
    out = []
    for ch in line:
        cat = unicodedata.category(ch)
        out.append(" " if ch == "\t" else ("\ufffd" if cat[0] == "C" else ch))
    return "".join(out)


def attach_snippets(diagnostics: Iterable[Diagnostic], text: str) -> list[Diagnostic]:
    """Fill each diagnostic's snippet from the source text (one source, one file)."""
    lines = text.split("\n")
    out = []
    for d in diagnostics:
        if d.span and d.snippet is None and 1 <= d.span.line <= len(lines):
            d = d.model_copy(update={"snippet": lines[d.span.line - 1].rstrip("\r")})
        out.append(d)
    return out


def render(d: Diagnostic) -> str:
    """One diagnostic as people read it: position, summary, source line, caret, hint."""
    where = f"{d.span.file}:{d.span.line}:{d.span.column}: " if d.span else ""
    out = [f"{where}{d.severity}: {d.summary} [{d.code}]"]
    if d.span and d.snippet is not None:
        line, col = d.snippet, d.span.column
        # a window around the column, so a huge one-line file prints a readable snippet
        start = max(0, col - 1 - _MAX_SNIPPET // 2) if len(line) > _MAX_SNIPPET else 0
        shown = line[start : start + _MAX_SNIPPET]
        prefix = "..." if start > 0 else ""
        suffix = "..." if start + _MAX_SNIPPET < len(line) else ""
        width = (
            d.span.end_column - d.span.column
            if d.span.end_line == d.span.line and d.span.end_column > d.span.column
            else 1
        )
        caret_at = len(prefix) + col - 1 - start
        width = max(1, min(width, len(prefix) + len(shown) - caret_at))
        gutter = f"{d.span.line:>5} | "
        out.append(gutter + prefix + _printable(shown) + suffix)
        out.append(" " * (len(gutter) - 2) + "| " + " " * caret_at + "^" * width)
    if d.hint:
        out.append(f"  hint: {d.hint}")
    return "\n".join(out)


def render_all(diagnostics: Iterable[Diagnostic], limit: int = 50) -> str:
    ds = list(diagnostics)
    shown = [render(d) for d in ds[:limit]]
    if len(ds) > limit:
        shown.append(f"... and {len(ds) - limit} more")
    errors = sum(d.is_error for d in ds)
    warnings = len(ds) - errors
    if ds:
        shown.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return "\n".join(shown)

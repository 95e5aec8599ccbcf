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

from pydantic import BaseModel, ConfigDict, model_serializer

from .plan import Span, as_span

Severity = Literal["error", "warning"]

# Bounds, so that no input makes the diagnostics (or ``--json``) grow without limit.
MAX_PER_CODE = 10  # diagnostics kept per code; the last kept one counts the rest in ``more``
SNIPPET_WIDTH = 160  # a longer source line is cut to a window of this many characters
MAX_SUMMARY, MAX_HINT = 240, 640  # characters; longer text quoted from a policy is cut

_OPTIONAL = (("file", None), ("snippet_column", None), ("more", 0))


class Diagnostic(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Severity
    code: str
    summary: str
    span: Span | None = None
    hint: str | None = None
    snippet: str | None = None  # the source line the span starts on (filled by ``attach_snippets``)
    # Set only where needed, and then present in the JSON too:
    file: str | None = None  # the file, for a diagnostic with no span (e.g. a file that cannot be read)
    snippet_column: int | None = None  # for a long line: the column where the snippet's window starts
    more: int = 0  # how many further diagnostics with this code were left out after this one

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def where(self) -> str | None:
        """The file this diagnostic is about."""
        return self.span.file if self.span is not None else self.file

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        data = handler(self)
        for key, default in _OPTIONAL:
            if data.get(key, default) == default:
                data.pop(key, None)
        return data


def _make(severity: Severity, code: str, summary: str, span, hint: str | None, file: str | None) -> Diagnostic:
    # model_construct: the compiler makes these from trusted values, and a 1 MB policy may make
    # tens of thousands before they are capped
    span = as_span(span)
    summary = clip(summary, MAX_SUMMARY)  # names and numbers quoted from the policy can be huge
    hint = None if hint is None else clip(hint, MAX_HINT)
    return Diagnostic.model_construct(severity=severity, code=code, summary=summary, span=span, hint=hint,
                                      snippet=None, file=None if span is not None else file,
                                      snippet_column=None, more=0)


def error(code: str, summary: str, span: Span | None, hint: str | None = None, *, file: str | None = None) -> Diagnostic:
    return _make("error", code, summary, span, hint, file)


def warning(code: str, summary: str, span: Span | None, hint: str | None = None, *, file: str | None = None) -> Diagnostic:
    return _make("warning", code, summary, span, hint, file)


def clip(text: str, limit: int = 60, marker: str = "…") -> str:
    """``text`` cut to ``limit`` characters (a name or path quoted in a message stays short)."""
    return text if len(text) <= limit else text[:limit] + marker


class Diagnostics(list):
    """A stage's diagnostics: a list that keeps the first ``per_code`` of each code and counts the
    rest (``dropped``), so a file with 40,000 copies of one mistake costs 40,000 counts, not
    40,000 stored diagnostics. A stage meets its statements in source order, so what it keeps are
    the first of each code by position."""

    def __init__(self, per_code: int = MAX_PER_CODE):
        super().__init__()
        self.per_code = per_code
        self.seen: dict[str, int] = {}
        self.errors = 0  # errors appended, kept or not

    def append(self, d: Diagnostic) -> None:
        n = self.seen.get(d.code, 0)
        self.seen[d.code] = n + 1
        self.errors += d.severity == "error"
        if n < self.per_code:
            super().append(d)

    def error(self, code: str, summary: str, span, hint: str | None = None, *, file: str | None = None) -> None:
        self._add("error", code, summary, span, hint, file)

    def warning(self, code: str, summary: str, span, hint: str | None = None, *, file: str | None = None) -> None:
        self._add("warning", code, summary, span, hint, file)

    def _add(self, severity: Severity, code: str, summary: str, span, hint: str | None, file: str | None) -> None:
        if self.full(code):  # not stored: not built either
            self.count(code, severity)
        else:
            self.append(_make(severity, code, summary, span, hint, file))

    def full(self, code: str) -> bool:
        """True when a diagnostic with this code would not be stored: the caller may then
        ``count`` it instead of building it (and its hint)."""
        return self.seen.get(code, 0) >= self.per_code

    def count(self, code: str, severity: Severity) -> None:
        self.seen[code] = self.seen.get(code, 0) + 1
        self.errors += severity == "error"

    @property
    def dropped(self) -> dict[str, int]:
        return {code: n - self.per_code for code, n in self.seen.items() if n > self.per_code}


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    if len(word) > 64:  # no name is that long; difflib's cost grows with the word
        return None
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def sort_key(d: Diagnostic):
    s = d.span
    return (s.file, s.line, s.column) if s else ("", 0, 0)


# ---------------------------------------------------------------------------------------------
# Rendering

_MAX_SNIPPET = SNIPPET_WIDTH


def _printable(line: str) -> str:
    """Make a source line safe to print: control and other invisible characters shown as U+FFFD."""
    out = []
    for ch in line:
        cat = unicodedata.category(ch)
        out.append(" " if ch == "\t" else ("\ufffd" if cat[0] == "C" else ch))
    return "".join(out)


def _window(length: int, col: int) -> int:
    """Where the snippet window of a line of ``length`` characters starts (0-based) for a span at
    column ``col``: the whole line when it fits, else the span's column near the middle."""
    return max(0, col - 1 - SNIPPET_WIDTH // 2) if length > SNIPPET_WIDTH else 0


def attach_snippets(diagnostics: Iterable[Diagnostic], text: str) -> list[Diagnostic]:
    """Fill each diagnostic's snippet from the source text (one source, one file): the line the
    span starts on, or for a line over ``SNIPPET_WIDTH`` characters a window of it around the span
    (``snippet_column`` says where the window starts), so a one-line 1 MB file costs no more."""
    diagnostics = list(diagnostics)
    wanted = {d.span.line for d in diagnostics if d.span and d.snippet is None}
    lines: dict[int, str] = {}
    if wanted:
        start, number, top = 0, 1, max(wanted)
        while number <= top:
            end = text.find("\n", start)
            if number in wanted:
                lines[number] = (text[start:] if end < 0 else text[start:end]).rstrip("\r")
            if end < 0:
                break
            start, number = end + 1, number + 1
    out = []
    for d in diagnostics:
        if d.span and d.snippet is None and d.span.line in lines:
            line = lines[d.span.line]
            begin = _window(len(line), d.span.column)
            if len(line) > SNIPPET_WIDTH:
                update = {"snippet": line[begin : begin + SNIPPET_WIDTH], "snippet_column": begin + 1}
                if begin + SNIPPET_WIDTH < len(line):
                    update["snippet"] += "..."  # the line goes on
            else:
                update = {"snippet": line}
            d = d.model_copy(update=update)
        out.append(d)
    return out


def limit_diagnostics(diagnostics: list[Diagnostic], dropped: dict[str, int] | None = None,
                      per_code: int = MAX_PER_CODE) -> list[Diagnostic]:
    """At most ``per_code`` diagnostics of each code, in order; the last one kept counts the rest
    (``more``; with ``dropped``, those a ``Diagnostics`` list never stored), rendered as
    "... and N more like this". Bounds what a file can print."""
    kept: dict[str, int] = {}
    left_out: dict[str, int] = dict(dropped or {})
    last: dict[str, int] = {}
    out: list[Diagnostic] = []
    for d in diagnostics:
        n = kept.get(d.code, 0)
        if n < per_code:
            kept[d.code] = n + 1
            last[d.code] = len(out)
            out.append(d)
        else:
            left_out[d.code] = left_out.get(d.code, 0) + 1 + d.more
    for code, extra in left_out.items():
        if extra and code in last:
            i = last[code]
            out[i] = out[i].model_copy(update={"more": out[i].more + extra})
    return out


def render(d: Diagnostic) -> str:
    """One diagnostic as people read it: position, summary, source line, caret, hint."""
    if d.span:
        where = f"{d.span.file}:{d.span.line}:{d.span.column}: "
    else:
        where = f"{d.file}: " if d.file else ""
    out = [f"{where}{d.severity}: {d.summary} [{d.code}]"]
    if d.span and d.snippet is not None:
        col = d.span.column
        if d.snippet_column is not None:  # already a window of a long line
            start = d.snippet_column - 1
            cut = d.snippet.endswith("...") and len(d.snippet) == _MAX_SNIPPET + 3
            shown = d.snippet[:-3] if cut else d.snippet
            suffix = "..." if cut else ""
        else:  # a window around the column, so a huge one-line file prints a readable snippet
            line = d.snippet
            start = _window(len(line), col)
            shown = line[start : start + _MAX_SNIPPET]
            suffix = "..." if start + _MAX_SNIPPET < len(line) else ""
        prefix = "..." if start > 0 else ""
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
    if d.more:
        out.append(f"  ... and {d.more} more like this [{d.code}]")
    return "\n".join(out)


def render_all(diagnostics: Iterable[Diagnostic], limit: int = 50) -> str:
    ds = list(diagnostics)
    shown = [render(d) for d in ds[:limit]]
    if len(ds) > limit:
        left = ds[limit:]
        shown.append(f"... and {len(left) + sum(d.more for d in left)} more")
    errors = sum((1 + d.more) * d.is_error for d in ds)
    warnings = sum(1 + d.more for d in ds) - errors
    if ds:
        shown.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return "\n".join(shown)

"""fmt: the canonical text of a policy. Idempotent; keeps every comment where it was.

Tokens are single-spaced, with no space before ``,`` and ``;``; strings and numbers stay exactly as
written. A statement on one line stays on one line. A statement the author wrote over several
lines keeps its line breaks: its first line where it starts, each further line indented four
spaces (blank lines inside it dropped). A comment on its own line stays on its own line, before
the statement that follows it (indented, if it sits inside a statement); a comment after code
stays at the end of that line, two spaces away. Each statement starts a new line. Runs of blank
lines between statements become one.
"""

from __future__ import annotations

from . import ast as A
from .errors import attach_snippets
from .parse import decode, parse

INDENT = "    "


def _lens_tokens(lens: A.LensNode) -> list[str]:
    if isinstance(lens, A.MetricLens):
        out = ["metric", lens.metric.text]
    elif isinstance(lens, A.LexiconLens):
        out = ["lexicon", lens.path.raw] + ([lens.mode.text] if lens.mode is not None else [])
    elif isinstance(lens, A.ProbeLens):
        out = ["probe", lens.path.raw]
    else:
        out = ["features"]
        for i, n in enumerate(lens.latents):
            out += [","] * (i > 0) + [n.text]
    if isinstance(lens, (A.ProbeLens, A.FeaturesLens)) and lens.pool is not None:
        out += ["pool", lens.pool.mode.text]
    return out


def _topic_tokens(src: A.TopicNode) -> list[str]:
    if isinstance(src, (A.TopicLexicon, A.TopicProbe)):
        word = "lexicon" if isinstance(src, A.TopicLexicon) else "probe"
        above = ["above", src.threshold.value.text] if src.threshold is not None else []
        return [word, src.path.raw, *above]
    if isinstance(src, A.TopicColumn):
        value = src.value.raw if isinstance(src.value, A.Str) else src.value.text
        return ["column", src.column.raw, src.op.text, value]
    return ["cluster", src.index.text, "of", src.k.text]


def statement_tokens(st: A.Statement) -> list[str]:
    """The statement's tokens in canonical spelling, one per source token, in order."""
    if isinstance(st, A.PolicyDecl):
        return ["policy", st.name.raw, ";"]
    if isinstance(st, A.ModelDecl):
        layer = ["layer", st.layer.text] if st.layer is not None else []
        return ["model", st.name.raw, *layer, ";"]
    if isinstance(st, A.SaeDecl):
        return ["sae", st.name.raw, ";"]
    if isinstance(st, A.ConceptDef):
        return ["concept", st.name.text, "=", *_lens_tokens(st.lens), ";"]
    if isinstance(st, A.TopicDef):
        return ["topic", st.name.text, "=", *_topic_tokens(st.source), ";"]
    if isinstance(st, A.Rule):
        out = [st.action.text, "concept", st.concept.text]
        if st.factor is not None:
            out += ["by", st.factor.text]
        if st.protocol is not None:
            p = st.protocol
            out += ["via", p.name.text]
            if p.arg is not None:
                out.append(p.arg.raw if isinstance(p.arg, A.Str) else p.arg.text)
        if st.scope is not None:
            out += ["when", "topic", st.scope.topic.text]
        return out + [";"]
    if isinstance(st, A.ExpectConcept):
        phase = [st.phase.when.text, "plan"] if st.phase else []
        return ["expect", "concept", st.concept.text, st.metric.text, st.op.text, st.value.text, *phase, ";"]
    if isinstance(st, A.ExpectPairs):
        return ["expect", "pairs", st.fate.text, st.op.text, st.value.text, ";"]
    if isinstance(st, A.ExpectEss):
        return ["expect", "ess", st.op.text, st.value.text, ";"]
    raise TypeError(f"not a statement: {st!r}")  # pragma: no cover


def _join(tokens: list[str]) -> str:
    out = ""
    for t in tokens:
        out += t if not out or t in (",", ";") else " " + t
    return out


def format_statement(st: A.Statement) -> str:
    """A statement on one line, in canonical form."""
    return _join(statement_tokens(st))


def _statement_lines(st: A.Statement, token_lines: tuple[int, ...] | None,
                     inner: list[A.Comment]) -> list[str]:
    """A statement as output lines: the author's line breaks kept, comments inside it in place."""
    tokens = statement_tokens(st)
    if not token_lines or len(token_lines) != len(tokens):
        token_lines = (st.span.line,) * len(tokens)
    groups: dict[int, list[str]] = {}
    for tok, line in zip(tokens, token_lines):
        groups.setdefault(line, []).append(tok)
    notes = {c.span.line: c.text.rstrip() for c in inner}
    out: list[str] = []
    for line in sorted(groups.keys() | notes.keys()):
        lead = "" if not out else INDENT
        if line in groups:
            text = lead + _join(groups[line])
            out.append(text + ("  " + notes[line] if line in notes else ""))
        else:
            out.append(lead + notes[line])
    return out


def format_file(file: A.PolicyFile) -> str:
    """The canonical text of a parsed policy."""
    statements = file.statements
    inside: dict[int, int] = {}  # a line inside a multi-line statement (not its last) -> the statement
    ends: dict[int, int] = {}  # a line -> the last statement ending on it (it owns the line's comment)
    for i, st in enumerate(statements):
        ends[st.span.end_line] = i
        for line in range(st.span.line, st.span.end_line):
            inside[line] = i
    inner: dict[int, list[A.Comment]] = {}
    trailing: dict[int, list[A.Comment]] = {}
    items: list[tuple[int, int, str, object]] = []  # (line, column, kind, payload) in source order
    for c in file.comments:
        line = c.span.line
        i = inside.get(line)
        if i is not None and (line > statements[i].span.line or c.span.column > statements[i].span.column):
            inner.setdefault(i, []).append(c)
            continue
        i = ends.get(line)
        if i is not None and statements[i].span.end_column <= c.span.column:
            trailing.setdefault(i, []).append(c)
        else:
            items.append((line, c.span.column, "comment", c))
    for i, st in enumerate(statements):
        items.append((st.span.line, st.span.column, "statement", i))
    items.sort(key=lambda t: (t[0], t[1]))

    lines: list[str] = []
    prev_end = None
    for line, _, kind, payload in items:
        if prev_end is not None and line - prev_end > 1 and lines and lines[-1] != "":
            lines.append("")
        if kind == "comment":
            lines.append(payload.text.rstrip())
            prev_end = line
        else:
            st = statements[payload]
            block = _statement_lines(st, file.layout.get(payload), inner.get(payload, []))
            for c in trailing.get(payload, []):
                block[-1] += "  " + c.text.rstrip()
            lines.extend(block)
            prev_end = st.span.end_line
    return "\n".join(lines).strip("\n") + "\n" if lines else ""


def format_source(data: str | bytes, path: str = "<policy>"):
    """Format a policy's text: (the canonical text, []) or (None, the diagnostics of a file that
    does not decode or parse). What ``ethos fmt`` runs."""
    text, diags = decode(data, path)
    if text is None:
        return None, diags
    parsed = parse(text, path)
    if parsed.diagnostics:
        return None, attach_snippets(parsed.diagnostics, text)
    return format_file(parsed.ast), []

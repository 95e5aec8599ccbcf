"""fmt: the canonical text of a policy. Idempotent; keeps every comment.

One statement a line, single spaces, ``, `` between latents, strings and numbers exactly as
written. A comment on its own line stays on its own line before the statement that follows it;
a comment after a statement stays after it, two spaces away. Runs of blank lines become one.
"""

from __future__ import annotations

from . import ast as A


def _protocol(p: A.Protocol) -> str:
    if p.arg is None:
        return f"via {p.name.text}"
    return f"via {p.name.text} {p.arg.raw if isinstance(p.arg, A.Str) else p.arg.text}"


def _lens(lens: A.LensNode) -> str:
    pool = ""
    if isinstance(lens, (A.ProbeLens, A.FeaturesLens)) and lens.pool is not None:
        pool = f" pool {lens.pool.mode.text}"
    if isinstance(lens, A.MetricLens):
        return f"metric {lens.metric.text}"
    if isinstance(lens, A.LexiconLens):
        return f"lexicon {lens.path.raw}"
    if isinstance(lens, A.ProbeLens):
        return f"probe {lens.path.raw}{pool}"
    return "features " + ", ".join(n.text for n in lens.latents) + pool


def format_statement(st: A.Statement) -> str:
    if isinstance(st, A.PolicyDecl):
        return f"policy {st.name.raw};"
    if isinstance(st, A.ModelDecl):
        layer = f" layer {st.layer.text}" if st.layer is not None else ""
        return f"model {st.name.raw}{layer};"
    if isinstance(st, A.SaeDecl):
        return f"sae {st.name.raw};"
    if isinstance(st, A.ConceptDef):
        return f"concept {st.name.text} = {_lens(st.lens)};"
    if isinstance(st, A.Rule):
        parts = [st.action.text, "concept", st.concept.text]
        if st.factor is not None:
            parts += ["by", st.factor.text]
        if st.protocol is not None:
            parts.append(_protocol(st.protocol))
        return " ".join(parts) + ";"
    if isinstance(st, A.ExpectConcept):
        phase = f" {st.phase.when.text} plan" if st.phase else ""
        return f"expect concept {st.concept.text} {st.metric.text} {st.op.text} {st.value.text}{phase};"
    if isinstance(st, A.ExpectPairs):
        return f"expect pairs {st.fate.text} {st.op.text} {st.value.text};"
    if isinstance(st, A.ExpectEss):
        return f"expect ess {st.op.text} {st.value.text};"
    raise TypeError(f"not a statement: {st!r}")  # pragma: no cover


def format_file(file: A.PolicyFile) -> str:
    """The canonical text of a parsed policy."""
    # (start line, order, kind, payload): comments and statements in source order
    items: list[tuple[int, int, str, object]] = []
    trailing: dict[int, list[A.Comment]] = {}  # statement index -> its end-of-line comments
    ends = {}
    for i, st in enumerate(file.statements):
        ends[st.span.end_line] = i  # the last statement ending on a line owns that line's comment
    for c in file.comments:
        i = ends.get(c.span.line)
        if i is not None and file.statements[i].span.end_column <= c.span.column:
            trailing.setdefault(i, []).append(c)
        else:
            items.append((c.span.line, c.span.column, "comment", c))
    for i, st in enumerate(file.statements):
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
            st = file.statements[payload]
            text = format_statement(st)
            for c in trailing.get(payload, []):
                text += "  " + c.text.rstrip()
            lines.append(text)
            prev_end = st.span.end_line
    return "\n".join(lines).strip("\n") + "\n" if lines else ""

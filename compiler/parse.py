"""Policy text -> lark tree, with positions; syntax mistakes become labelled diagnostics.

LALR stops at the first syntax error. To report every independent mistake in one pass, the
parser records the error, blanks the text up to the end of the broken statement (keeping line
breaks, so positions stay true), and parses again, up to ``MAX_SYNTAX_ERRORS`` times.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .errors import Diagnostic, did_you_mean, error
from .plan import Span

GRAMMAR = Path(__file__).with_name("grammar.lark")
MAX_SYNTAX_ERRORS = 20
STATEMENT_KEYWORDS = ("policy", "model", "sae", "concept", "block", "dampen", "keep", "amplify", "reverse", "expect")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_sink = threading.local()  # where the lexer drops comments during one parse


def _collect_comment(tok: Token) -> Token:
    comments = getattr(_sink, "comments", None)
    if comments is not None:
        comments.append(tok)
    return tok


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    return Lark(
        GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _collect_comment},
    )


@dataclass(frozen=True)
class Parsed:
    tree: Tree | None
    comments: list[Token]
    diagnostics: list[Diagnostic]


def decode(data: bytes | str, path: str) -> tuple[str | None, list[Diagnostic]]:
    """Bytes -> text. Non-UTF-8 input is a diagnostic at the first bad byte, not an exception."""
    if isinstance(data, str):
        return data, []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        span = Span(file=path, line=line, column=col, end_line=line, end_column=col + 1)
        return None, [
            error(
                "E001",
                f"the file is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
                span,
                "policies are UTF-8 text; re-save the file as UTF-8",
            )
        ]
    return text.removeprefix("\ufeff"), []


def parse(text: str, path: str) -> Parsed:
    diagnostics: list[Diagnostic] = []
    current = text
    for _ in range(MAX_SYNTAX_ERRORS):
        comments: list[Token] = []
        try:
            tree = _parse_once(current, comments)
        except UnexpectedInput as e:
            diag = _syntax_diagnostic(e, current, path)
            diagnostics.append(diag)
            tok = getattr(e, "token", None)
            if diag.code == "E103" and isinstance(tok, Token) and tok.type != "$END":
                resume = tok.start_pos  # the ';' was missing: the unexpected token starts the next statement
            elif diag.code == "E102":
                resume = e.pos_in_stream + 1  # skip the stray character
            elif diag.code == "E101":
                end = current.find("\n", e.pos_in_stream)
                resume = None if end < 0 else end  # skip the rest of the line
            else:
                resume = _resume_offset(e, current)
            if resume is None:
                break
            current = _blank(current, resume)
            continue
        return Parsed(None if diagnostics else tree, comments, diagnostics)
    return Parsed(None, [], diagnostics)


def _parse_once(text: str, comments: list[Token]) -> Tree:
    # comments are ignored by the grammar; fmt needs them, so the lexer hands them to ``comments``
    _sink.comments = comments
    try:
        return parser().parse(text)
    finally:
        _sink.comments = None


def _blank(text: str, upto: int) -> str:
    head = "".join(ch if ch == "\n" else " " for ch in text[:upto])
    return head + text[upto:]


def _resume_offset(e: UnexpectedInput, text: str) -> int | None:
    """Where to go on after a syntax error: just past the next ';' outside strings and comments."""
    if isinstance(e, UnexpectedEOF):
        return None
    start = e.pos_in_stream if e.pos_in_stream is not None else None
    if start is None:
        return None
    tok = getattr(e, "token", None)
    if isinstance(tok, Token) and tok.type == "$END":
        return None
    if isinstance(tok, Token) and tok.type == "SEMICOLON":
        return start + 1
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch == ";":
            return i + 1
        if ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif ch == '"':
            j = i + 1
            while j < n and text[j] not in '"\n':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        else:
            i += 1
    return None


# ---------------------------------------------------------------------------------------------
# Turning lark's exceptions into labelled diagnostics


def _describe(term: str) -> str:
    try:
        pattern = parser().get_terminal(term).pattern
    except KeyError:
        return term
    names = {
        "NAME": "a name",
        "NUMBER": "a number",
        "STRING": 'a quoted string ("...")',
        "CMP": "a comparison (<, <=, >, >=, ==, !=)",
        "ACTION": "an action (block, dampen, keep, amplify, reverse)",
        "PHASE": "'after' or 'before'",
    }
    if term in names:
        return names[term]
    if pattern.type == "str":
        return f"'{pattern.value}'"
    return term.lower()


def _token_text(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    s = str(tok)
    return f"'{s[:40]}{'...' if len(s) > 40 else ''}'"


def _prev_token_end(text: str, pos: int) -> tuple[int, int]:
    """Line and column just after the last non-blank, non-comment character before ``pos``."""
    i = pos - 1
    while i >= 0:
        line_start = text.rfind("\n", 0, i + 1) + 1
        line = text[line_start : i + 1]
        # drop a comment on this line (a '#' outside a string; rare enough to scan simply)
        hash_at = _comment_start(line)
        if hash_at is not None:
            i = line_start + hash_at - 1
            line = line[:hash_at]
        stripped = line.rstrip()
        if stripped:
            end = line_start + len(stripped)
            line_no = text.count("\n", 0, end) + 1
            return line_no, end - line_start + 1
        i = line_start - 2
    return 1, 1


def _comment_start(line: str) -> int | None:
    in_str = False
    i = 0
    while i < len(line):
        ch = line[i]
        if in_str:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "#":
            return i
        i += 1
    return None


def _span_at(path: str, line: int, col: int, width: int = 1) -> Span:
    return Span(file=path, line=line, column=col, end_line=line, end_column=col + max(1, width))


def _syntax_diagnostic(e: UnexpectedInput, text: str, path: str) -> Diagnostic:
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        span = _span_at(path, e.line, e.column)
        if ch == '"':
            return error("E101", "unterminated string", span, 'close the string with " on the same line')
        shown = repr(ch)[1:-1] if not ch.isprintable() else ch
        return error(
            "E102",
            f"unexpected character '{shown}'",
            span,
            "statements are made of keywords, names, numbers, quoted strings, ',', '=' and ';'",
        )

    tok: Token = e.token if isinstance(e, UnexpectedToken) else Token("$END", "")
    expected = set(getattr(e, "expected", None) or getattr(e, "accepts", None) or ())
    if tok.type == "$END" or isinstance(e, UnexpectedEOF):
        line, col = _prev_token_end(text, len(text))
        span = _span_at(path, line, col)
        if "SEMICOLON" in expected:
            return error("E103", "missing ';' at the end of the file", span, "every statement ends with ';'")
        return error("E104", "the file ends in the middle of a statement", span, _expected_hint(expected))

    span = Span(file=path, line=tok.line, column=tok.column, end_line=tok.end_line or tok.line,
                end_column=tok.end_column or tok.column + 1)
    text_of = _token_text(tok)

    if "SEMICOLON" in expected and tok.type != "SEMICOLON":
        line, col = _prev_token_end(text, tok.start_pos)
        if line < tok.line or tok.type in ("ACTION",) or str(tok) in STATEMENT_KEYWORDS:
            return error("E103", "missing ';' after statement", _span_at(path, line, col),
                         "every statement ends with ';'")
        return error("E105", f"unexpected {text_of}; expected ';' or the rest of the statement", span,
                     _expected_hint(expected))

    if expected >= {"POLICY", "CONCEPT", "EXPECT"} or "ACTION" in expected and "EXPECT" in expected:
        word = str(tok)
        hint = None
        if _WORD.fullmatch(word):
            hint = did_you_mean(word, STATEMENT_KEYWORDS)
        hint = hint or "a statement starts with one of: " + ", ".join(STATEMENT_KEYWORDS)
        return error("E106", f"unexpected {text_of} at the start of a statement", span, hint)

    if expected == {"NAME"}:
        prev = _previous_word(text, tok.start_pos)
        what = {"concept": "a concept name", "metric": "a metric name", "pool": "'mean' or 'max'",
                "via": "a protocol name (data, filter, relabel, inoculation, loss, ablation, steering, penalty)"}
        if prev in what:
            return error("E107", f"expected {what[prev]} after '{prev}', found {text_of}", span,
                         _name_hint(prev))
    if "CONCEPT" in expected and len(expected) <= 2:
        prev = _previous_word(text, tok.start_pos)
        return error("E108", f"expected 'concept' after '{prev}', found {text_of}", span,
                     f"write '{prev} concept <name> ...;'")
    if expected & {"METRIC", "LEXICON", "PROBE", "FEATURES"}:
        word = str(tok)
        hint = did_you_mean(word, ("metric", "lexicon", "probe", "features")) if _WORD.fullmatch(word) else None
        return error("E109", f"expected a lens (metric, lexicon, probe or features), found {text_of}", span,
                     hint or "e.g. 'concept verbosity = metric length;'")
    return error("E110", f"unexpected {text_of}", span, _expected_hint(expected))


def _previous_word(text: str, pos: int) -> str:
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", text[:pos])
    return m.group(1) if m else ""


def _name_hint(prev: str) -> str | None:
    return {
        "concept": "concept names are identifiers: letters, digits and '_', not starting with a digit",
        "metric": "e.g. 'metric length'; see docs/language.md for the metric names",
    }.get(prev)


def _expected_hint(expected: set[str]) -> str | None:
    if not expected:
        return None
    names = sorted({_describe(t) for t in expected})
    if len(names) > 8:
        names = names[:8] + ["..."]
    return "expected " + ", ".join(names)

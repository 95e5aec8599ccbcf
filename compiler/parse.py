"""Policy text -> AST, with positions; syntax mistakes become labelled diagnostics.

The grammar is ``grammar.lark``; lark builds its LALR table once. The text is cut into tokens by
one regular expression, line by line. A statement's parse depends only on its tokens' classes
(which keyword, or a name, a number, a string), so a small driver runs lark's table over the
classes once per statement shape and records the steps that build the AST (``_plan``, cached);
every statement of that shape is then built by replaying them (``_run``). This is several times
faster than lark's own lexer and parse tree — a 1 MB policy parses in well under a second — and
keeps every syntax diagnostic exact: the "expected ..." sets are the table's. Tests hold the
result to lark's own parse of the same text.

Each statement starts from the table's start state, so a syntax error loses only its statement:
the parser records the error, skips to the end of the broken statement and goes on, up to
``MAX_SYNTAX_ERRORS`` errors. Every statement that parsed is kept (``Parsed.ast``), so the later
stages can still report the file's other mistakes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from lark import Lark

from . import ast as A
from .errors import Diagnostic, clip, did_you_mean, error
from .plan import Span

GRAMMAR = Path(__file__).with_name("grammar.lark")
MAX_SYNTAX_ERRORS = 20
STATEMENT_KEYWORDS = ("policy", "model", "sae", "concept", "topic", "block", "dampen", "keep", "amplify", "reverse",
                      "encourage", "discourage", "expect")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    """The reference lark parser of the grammar (its table drives ``parse``)."""
    return Lark(
        GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
    )


# ---------------------------------------------------------------------------------------------
# Tokens. The patterns are the grammar's terminals (NAME, NUMBER, STRING, COMMENT, WS, CMP and the
# keywords); a word is typed by what the parser's state accepts, as lark's contextual lexer does,
# so keywords are names where a name is expected.

# One line at a time (no token spans lines): blanks, then one token. BADSTR is an unterminated
# string (to the end of the line), BAD any other character no terminal matches.
_TOKEN = re.compile(
    r"""[ \t\f\r]*
        (?: (?P<COMMENT>\#.*)
          | (?P<STRING>"(?:[^"\\]|\\.)*")
          | (?P<NUMBER>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
          | (?P<WORD>[A-Za-z_][A-Za-z0-9_]*)
          | (?P<SYM><=|>=|==|!=|[<>;,=])
          | (?P<BADSTR>".*)
          | (?P<BAD>[^ \t\f\r]))""",
    re.X,
)


class Tok(NamedTuple):
    kind: str  # STRING, NUMBER, WORD, SYM, BADSTR (an unterminated string), BAD (a stray character)
    text: str
    line: int
    column: int
    end_column: int


def tokenize(text: str) -> tuple[list[Tok], list[tuple[str, int, int]]]:
    """The tokens of ``text`` and its comments as (text, line, column)."""
    toks: list[Tok] = []
    comments: list[tuple[str, int, int]] = []
    new = tuple.__new__  # a Tok without NamedTuple's Python-level __new__ (a 1 MB file has ~160,000)
    append = toks.append
    for number, line in enumerate(text.split("\n"), 1):
        for m in _TOKEN.finditer(line):
            kind = m.lastgroup
            s, e = m.span(kind)
            if kind == "COMMENT":
                comments.append((line[s:e], number, s + 1))
            else:
                append(new(Tok, (kind, line[s:e], number, s + 1, e + 1)))
    return toks, comments


@dataclass(frozen=True)
class _Rule:
    name: str
    size: int
    keep: tuple[bool, ...]  # which children the AST keeps (anonymous keywords are dropped)
    inline: bool  # an ``_rule``: its children are spliced into the parent
    build: object  # ast.BUILDERS[name], None when inline
    statement: bool  # a whole statement: the driver stops here


@dataclass(frozen=True, eq=False)
class _Table:
    """lark's LALR table in plain form: ``states[s][symbol]`` is a state (int) to shift or go to,
    or the ``_Rule`` to reduce by."""

    states: list[dict[str, object]]
    start: int
    keywords: dict[str, str]  # "concept" -> "CONCEPT"
    pattern_words: dict[str, str]  # "block" -> "ACTION"
    symbols: dict[str, str]  # ";" -> "SEMICOLON", "<=" -> "CMP"

    @functools.cached_property
    def words(self) -> dict[str, str]:
        """Every word that is a token class of its own: the keywords and pattern words."""
        return {w: w for w in (*self.keywords, *self.pattern_words)}


@functools.lru_cache(maxsize=1)
def _table() -> _Table:
    lark = parser()
    pt = lark.parser.parser.parser.parse_table
    keywords, pattern_words, symbols = {}, {}, {}
    for t in lark.terminals:
        pat = t.pattern
        if pat.type == "str":
            (keywords if _WORD.fullmatch(pat.value) else symbols)[pat.value] = t.name
        elif t.name not in ("NAME", "NUMBER", "STRING", "COMMENT", "WS"):
            body = pat.value[3:-1] if pat.value.startswith("(?:") and pat.value.endswith(")") else pat.value
            for alt in body.split("|"):
                (pattern_words if _WORD.fullmatch(alt) else symbols)[alt] = t.name
    statement_rules = {str(r.expansion[0].name) for r in lark.rules if str(r.origin.name) == "_statement"}
    rules: dict = {}
    states: list[dict[str, object]] = [{} for _ in range(max(pt.states) + 1)]
    for s, acts in pt.states.items():
        for sym, (action, arg) in acts.items():
            if action.name == "Shift":
                states[s][str(sym)] = arg
                continue
            if arg not in rules:
                name = str(arg.origin.name)
                inline = name.startswith("_")
                rules[arg] = _Rule(name, len(arg.expansion),
                                   tuple(not getattr(x, "filter_out", False) for x in arg.expansion),
                                   inline, None if inline else A.BUILDERS[name], name in statement_rules)
            states[s][str(sym)] = rules[arg]
    return _Table(states, pt.start_states["start"], keywords, pattern_words, symbols)


# A token's class: all the parser needs to know about it. A keyword or a word of a pattern
# terminal (``block``, ``after``) is its own class; any other word, number or string is one class.
_CLASS_OF_KIND = {"NUMBER": "\0N", "STRING": "\0S", "BAD": "\0B", "BADSTR": "\0B"}
_OTHER_WORD = "\0W"


def _class(tok: Tok, words: dict[str, str]) -> str:
    kind = tok.kind
    if kind == "WORD":
        return words.get(tok.text, _OTHER_WORD)
    if kind == "SYM":
        return tok.text
    return _CLASS_OF_KIND[kind]


def _terminal(cls: str | None, acts: dict, table: _Table) -> str:
    """The terminal a token of this class is in this parser state (the contextual lexer's choice:
    a keyword is a name where the state takes a name and not the keyword)."""
    if cls is None:
        return "$END"
    if cls[0] == "\0":
        return {"\0W": "NAME", "\0N": "NUMBER", "\0S": "STRING"}.get(cls, "$BAD")
    kw = table.keywords.get(cls)
    if kw is not None:
        return kw if kw in acts or "NAME" not in acts else "NAME"
    pw = table.pattern_words.get(cls)
    if pw is not None:
        return "NAME" if "NAME" in acts or pw not in acts else pw
    return table.symbols.get(cls, "$BAD")


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    ast: A.PolicyFile  # every statement that parsed (all of them when there is no diagnostic)
    diagnostics: list[Diagnostic]
    unparsed_words: frozenset[str] = field(default_factory=frozenset)  # names in broken statements

    @property
    def tree(self) -> A.PolicyFile | None:
        """The whole file's AST, or None after a syntax error (``to_ast`` accepts it as is)."""
        return None if self.diagnostics else self.ast

    @property
    def comments(self) -> tuple[A.Comment, ...]:
        return self.ast.comments


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


@dataclass
class _Error:
    tok: Tok | None  # None: end of file
    terminal: str
    expected: set[str]
    prev: Tok | None  # the statement's token before the error


def parse(text: str, path: str) -> Parsed:
    toks, raw_comments = tokenize(text)
    comments = tuple(A.Comment(t, A.Loc(path, ln, col, ln, col + len(t))) for t, ln, col in raw_comments)
    table = _table()
    words = table.words
    statements: list = []
    layout: dict[int, tuple[int, ...]] = {}
    diagnostics: list[Diagnostic] = []
    unparsed: set[str] = set()
    i, n = 0, len(toks)
    while i < n:
        # the statement's token classes, to its ';'; a short statement's parse is cached by them
        shape: list[str] = []
        j = i
        while j < n and len(shape) <= _MAX_CACHED:
            c = _class(toks[j], words)
            shape.append(c)
            j += 1
            if c == ";":
                break
        if len(shape) <= _MAX_CACHED:
            result = _plan_cached(tuple(shape))
        else:  # a long statement (a features list, garbage without ';'): not cached
            result = _plan(_LazyClasses(toks, i, words), table)
        if result[0] is _OK:
            _, steps, used = result
            node = _run(steps, toks, i, path)
            if node.span.end_line != node.span.line:
                layout[len(statements)] = tuple(t.line for t in toks[i : i + used])
            statements.append(node)
            i += used
            continue
        _, k, term, expected = result
        j = i + k
        err = _Error(toks[j] if j < n else None, term, expected, toks[j - 1] if k > 0 else None)
        diag = _syntax_diagnostic(err, toks, path, table)
        diagnostics.append(diag)
        resume = _resume(err, diag, toks, j)
        unparsed.update(t.text for t in toks[i : n if resume is None else max(resume, j + 1)] if t.kind == "WORD")
        if resume is None or len(diagnostics) >= MAX_SYNTAX_ERRORS:
            break
        i = resume
    ast = A.PolicyFile(path, tuple(statements), comments, layout)
    return Parsed(ast, diagnostics, frozenset(unparsed))


_MAX_CACHED = 64  # statements up to this many tokens have their parse plans cached
_OK, _FAIL = "ok", "fail"


class _LazyClasses:
    """The token classes from token ``i`` on, computed as the parser asks for them."""

    def __init__(self, toks: list[Tok], i: int, words: dict[str, str]):
        self.toks, self.i, self.words = toks, i, words

    def __len__(self) -> int:
        return len(self.toks) - self.i

    def __getitem__(self, k: int) -> str:
        return _class(self.toks[self.i + k], self.words)


@functools.lru_cache(maxsize=4096)
def _plan_cached(shape: tuple[str, ...]):
    return _plan(shape, _table())


def _plan(classes, table: _Table):
    """Run the LALR table over one statement's token classes. Returns (_OK, steps, tokens used):
    the steps that build the statement's AST from its tokens (``_run``), the same for every
    statement of this shape; or (_FAIL, offending token offset, its terminal, expected terminals).

    A step is (0, offset, terminal): the leaf for the token at ``offset``; or (1, builder, refs,
    first, last): a node from earlier steps' results ``refs``, spanning tokens first..last."""
    states = table.states
    stack = [table.start]
    # per stack entry: the step it refers to (None: a dropped keyword), or a list of refs for an
    # inlined rule; and the offsets of its first and last tokens
    refs: list = []
    firsts: list = []
    lasts: list = []
    steps: list = []
    n = len(classes)
    k = 0
    cls = classes[0] if n else None
    acts = states[table.start]
    term = _terminal(cls, acts, table)
    while True:
        act = acts.get(term)
        if act is None:
            return _FAIL, k, term, {s for s in acts if s.isupper()}
        if act.__class__ is int:  # shift
            stack.append(act)
            if term in _LEAVES:
                refs.append(len(steps))
                steps.append((0, k, term))
            else:
                refs.append(None)
            firsts.append(k)
            lasts.append(k)
            k += 1
            cls = None if term == "SEMICOLON" or k >= n else classes[k]  # ';' ends the statement
            acts = states[act]
            term = _terminal(cls, acts, table)
            continue
        size = act.size  # reduce
        kids = refs[-size:] if size else []
        kid_first = firsts[-size:] if size else []
        kid_last = lasts[-size:] if size else []
        if size:
            del refs[-size:], firsts[-size:], lasts[-size:], stack[-size:]
        children = None  # an inlined first child's list is extended in place: a long
        for r, keep in zip(kids, act.keep):  # left-recursive list stays linear
            if r is None or not keep:
                continue
            if r.__class__ is _Inline:
                if children is None:
                    children = r
                else:
                    children.extend(r)
            elif children is None:
                children = _Inline((r,))
            else:
                children.append(r)
        if children is None:
            children = _Inline()
        first = next((f for f in kid_first if f is not None), None)
        last = next((x for x in reversed(kid_last) if x is not None), None)
        if act.inline:
            ref = children
        else:
            ref = len(steps)
            steps.append((1, act.build, tuple(children), first, last))
        if act.statement:
            return _OK, tuple(steps), k
        goto = states[stack[-1]][act.name]
        stack.append(goto)
        refs.append(ref)
        firsts.append(first)
        lasts.append(last)
        acts = states[goto]


def _run(steps: tuple, toks: list[Tok], i: int, path: str):
    """Build one statement's AST from its tokens (from ``i``) by its plan's steps."""
    Loc, leaf = A.Loc, A.leaf
    vals: list = []
    for step in steps:
        if step[0] == 0:
            t = toks[i + step[1]]
            vals.append(leaf(step[2], t.text, Loc(path, t.line, t.column, t.line, t.end_column)))
        else:
            _, build, refs, first, last = step
            a, b = toks[i + first], toks[i + last]
            vals.append(build([vals[r] for r in refs], Loc(path, a.line, a.column, b.line, b.end_column)))
    return vals[-1]


class _Inline(list):
    """The children of an inlined rule (``_statement``, ``__start_star_0``, ...), spliced into
    the parent."""


_LEAVES = frozenset({"NAME", "NUMBER", "STRING", "ACTION", "PHASE", "CMP"})


def _resume(err: _Error, diag: Diagnostic, toks: list[Tok], i: int) -> int | None:
    """The token to go on from after a syntax error at token ``i``, or None to stop."""
    tok = err.tok
    if tok is None:
        return None
    if diag.code == "E103":
        return i  # the ';' was missing: the unexpected token starts the next statement
    if tok.kind in ("BAD", "BADSTR"):
        return i + 1  # a stray character / the rest of the line after an unterminated string
    for j in range(i, len(toks)):  # just past the next ';'
        if toks[j].kind == "SYM" and toks[j].text == ";":
            return j + 1
    return None


# ---------------------------------------------------------------------------------------------
# Labelled diagnostics


def _describe(term: str) -> str:
    names = {
        "NAME": "a name",
        "NUMBER": "a number",
        "STRING": 'a quoted string ("...")',
        "CMP": "a comparison (<, <=, >, >=, ==, !=)",
        "ACTION": "an action (block, dampen, keep, amplify, reverse, encourage, discourage)",
        "PHASE": "'after' or 'before'",
    }
    if term in names:
        return names[term]
    try:
        pattern = parser().get_terminal(term).pattern
    except KeyError:
        return term
    if pattern.type == "str":
        return f"'{pattern.value}'"
    return term.lower()


def _token_text(tok: Tok | None) -> str:
    if tok is None:
        return "end of file"
    return f"'{clip(tok.text, 40, '...')}'"


def _span_at(path: str, line: int, col: int, width: int = 1) -> Span:
    return Span(file=path, line=line, column=col, end_line=line, end_column=col + max(1, width))


def _after(tok: Tok | None) -> tuple[int, int]:
    """Line and column just after a token (1, 1 for none)."""
    return (tok.line, tok.end_column) if tok is not None else (1, 1)


def _syntax_diagnostic(err: _Error, toks: list[Tok], path: str, table: _Table) -> Diagnostic:
    tok, expected = err.tok, err.expected
    if tok is not None and tok.kind in ("BAD", "BADSTR"):
        span = _span_at(path, tok.line, tok.column)
        if tok.kind == "BADSTR":
            return error("E101", "unterminated string", span, 'close the string with " on the same line')
        ch = tok.text
        shown = repr(ch)[1:-1] if not ch.isprintable() else ch
        return error(
            "E102",
            f"unexpected character '{shown}'",
            span,
            "statements are made of keywords, names, numbers, quoted strings, ',', '=' and ';'",
        )

    if tok is None:
        line, col = _after(toks[-1] if toks else None)
        span = _span_at(path, line, col)
        if "SEMICOLON" in expected:
            return error("E103", "missing ';' at the end of the file", span, "every statement ends with ';'")
        return error("E104", "the file ends in the middle of a statement", span, _expected_hint(expected))

    span = Span(file=path, line=tok.line, column=tok.column, end_line=tok.line, end_column=tok.end_column)
    text_of = _token_text(tok)

    if "SEMICOLON" in expected and err.terminal != "SEMICOLON":
        line, col = _after(err.prev)
        if line < tok.line or err.terminal == "ACTION" or tok.text in STATEMENT_KEYWORDS:
            return error("E103", "missing ';' after statement", _span_at(path, line, col),
                         "every statement ends with ';'")
        return error("E105", f"unexpected {text_of}; expected ';' or the rest of the statement", span,
                     _expected_hint(expected))

    if expected >= {"POLICY", "CONCEPT", "EXPECT"} or "ACTION" in expected and "EXPECT" in expected:
        word = tok.text
        hint = did_you_mean(word, STATEMENT_KEYWORDS) if _WORD.fullmatch(word) else None
        hint = hint or "a statement starts with one of: " + ", ".join(STATEMENT_KEYWORDS)
        return error("E106", f"unexpected {text_of} at the start of a statement", span, hint)

    if expected == {"NAME"}:
        prev = err.prev.text if err.prev is not None and err.prev.kind == "WORD" else ""
        what = {"concept": "a concept name", "topic": "a topic name", "metric": "a metric name",
                "pool": "'mean' or 'max'",
                "via": "a protocol name (data, filter, relabel, inoculation, loss, ablation, steering, penalty)"}
        if prev in what:
            return error("E107", f"expected {what[prev]} after '{prev}', found {text_of}", span,
                         _name_hint(prev))
    if "CONCEPT" in expected and len(expected) <= 2:
        prev = err.prev.text if err.prev is not None and err.prev.kind == "WORD" else ""
        return error("E108", f"expected 'concept' after '{prev}', found {text_of}", span,
                     f"write '{prev} concept <name> ...;'")
    if expected & {"COLUMN", "CLUSTER"}:
        word = tok.text
        hint = did_you_mean(word, ("lexicon", "probe", "column", "cluster")) if _WORD.fullmatch(word) else None
        return error("E111", f"expected a topic definition (lexicon, probe, column or cluster), found {text_of}",
                     span, hint or "e.g. 'topic cooking = lexicon \"topics/cooking.txt\";'")
    if expected & {"METRIC", "LEXICON", "PROBE", "FEATURES"}:
        word = tok.text
        hint = did_you_mean(word, ("metric", "lexicon", "probe", "features")) if _WORD.fullmatch(word) else None
        return error("E109", f"expected a lens (metric, lexicon, probe or features), found {text_of}", span,
                     hint or "e.g. 'concept verbosity = metric length;'")
    return error("E110", f"unexpected {text_of}", span, _expected_hint(expected))


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

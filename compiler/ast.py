"""The typed AST: frozen dataclasses, one per grammar rule, every node with its span.

``to_ast`` is purely structural (STYLE.md): it turns a lark tree into these nodes and checks
nothing. Names, ranges and protocol fit are judged in resolve.py and check.py, where a mistake
becomes a diagnostic instead of an exception inside a lark transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from lark import Token, Transformer, Tree, v_args



@dataclass(frozen=True)
class Ident:
    text: str
    span: Loc


@dataclass(frozen=True)
class Num:
    text: str  # as written, kept for fmt
    value: float
    span: Loc

    @property
    def is_int(self) -> bool:
        return math.isfinite(self.value) and self.value == int(self.value)


@dataclass(frozen=True)
class Str:
    raw: str  # as written, with quotes and escapes, kept for fmt
    value: str
    span: Loc


@dataclass(frozen=True)
class PolicyDecl:
    name: Str
    span: Loc


@dataclass(frozen=True)
class ModelDecl:
    name: Str
    layer: Num | None
    span: Loc


@dataclass(frozen=True)
class SaeDecl:
    name: Str
    span: Loc


@dataclass(frozen=True)
class Pool:
    mode: Ident
    span: Loc


@dataclass(frozen=True)
class MetricLens:
    metric: Ident
    span: Loc


@dataclass(frozen=True)
class LexiconLens:
    path: Str
    span: Loc


@dataclass(frozen=True)
class ProbeLens:
    path: Str
    pool: Pool | None
    span: Loc


@dataclass(frozen=True)
class FeaturesLens:
    latents: tuple[Num, ...]
    pool: Pool | None
    span: Loc


LensNode = Union[MetricLens, LexiconLens, ProbeLens, FeaturesLens]


@dataclass(frozen=True)
class ConceptDef:
    name: Ident
    lens: LensNode
    span: Loc


@dataclass(frozen=True)
class Protocol:
    name: Ident
    arg: Str | Num | None
    span: Loc


@dataclass(frozen=True)
class Rule:
    action: Ident
    concept: Ident
    factor: Num | None
    protocol: Protocol | None
    span: Loc


@dataclass(frozen=True)
class Phase:
    when: Ident  # after | before
    span: Loc


@dataclass(frozen=True)
class ExpectConcept:
    concept: Ident
    metric: Ident
    op: Ident
    value: Num
    phase: Phase | None
    span: Loc


@dataclass(frozen=True)
class ExpectPairs:
    fate: Ident
    op: Ident
    value: Num
    span: Loc


@dataclass(frozen=True)
class ExpectEss:
    op: Ident
    value: Num
    span: Loc


Statement = Union[PolicyDecl, ModelDecl, SaeDecl, ConceptDef, Rule, ExpectConcept, ExpectPairs, ExpectEss]


@dataclass(frozen=True)
class Comment:
    text: str
    span: Loc


@dataclass(frozen=True)
class PolicyFile:
    path: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...]


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loc:
    """A node's position in the AST: the same fields as ``plan.Span``, which accepts a Loc where a
    Span is expected. A plain slotted dataclass, because the AST makes one per token and pydantic
    construction would dominate the compile time of a large policy."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def span_of(file: str, obj: Token | object) -> Loc:
    """The position of a lark token or a tree's meta."""
    return Loc(
        file=file,
        line=obj.line,
        column=obj.column,
        end_line=obj.end_line,
        end_column=obj.end_column,
    )


def _unescape(raw: str) -> str:
    body = raw[1:-1]
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(simple.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _number(text: str) -> float:
    try:
        return float(text)
    except (OverflowError, ValueError):  # pragma: no cover - the grammar admits only numerals
        return float("nan")


class _ToAst(Transformer):
    """lark tree -> AST. Structural only; never raises on content."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _span(self, meta) -> Loc:
        return span_of(self.file, meta)

    # terminals
    def NAME(self, tok: Token) -> Ident:
        return Ident(str(tok), span_of(self.file, tok))

    ACTION = PHASE = CMP = NAME

    def NUMBER(self, tok: Token) -> Num:
        return Num(str(tok), _number(str(tok)), span_of(self.file, tok))

    def STRING(self, tok: Token) -> Str:
        return Str(str(tok), _unescape(str(tok)), span_of(self.file, tok))

    # rules
    @v_args(meta=True)
    def start(self, meta, children):
        return tuple(children)

    @v_args(meta=True)
    def policy_decl(self, meta, c):
        return PolicyDecl(c[0], self._span(meta))

    @v_args(meta=True)
    def model_decl(self, meta, c):
        return ModelDecl(c[0], c[1] if len(c) > 1 else None, self._span(meta))

    @v_args(meta=True)
    def sae_decl(self, meta, c):
        return SaeDecl(c[0], self._span(meta))

    @v_args(meta=True)
    def concept_def(self, meta, c):
        return ConceptDef(c[0], c[1], self._span(meta))

    @v_args(meta=True)
    def pool(self, meta, c):
        return Pool(c[0], self._span(meta))

    @v_args(meta=True)
    def metric_lens(self, meta, c):
        return MetricLens(c[0], self._span(meta))

    @v_args(meta=True)
    def lexicon_lens(self, meta, c):
        return LexiconLens(c[0], self._span(meta))

    @v_args(meta=True)
    def probe_lens(self, meta, c):
        return ProbeLens(c[0], c[1] if len(c) > 1 else None, self._span(meta))

    @v_args(meta=True)
    def features_lens(self, meta, c):
        pool = c[-1] if c and isinstance(c[-1], Pool) else None
        nums = tuple(x for x in c if isinstance(x, Num))
        return FeaturesLens(nums, pool, self._span(meta))

    @v_args(meta=True)
    def protocol(self, meta, c):
        return Protocol(c[0], c[1] if len(c) > 1 else None, self._span(meta))

    @v_args(meta=True)
    def rule(self, meta, c):
        action, concept, rest = c[0], c[1], c[2:]
        factor = next((x for x in rest if isinstance(x, Num)), None)
        protocol = next((x for x in rest if isinstance(x, Protocol)), None)
        return Rule(action, concept, factor, protocol, self._span(meta))

    @v_args(meta=True)
    def phase(self, meta, c):
        return Phase(c[0], self._span(meta))

    @v_args(meta=True)
    def expect_concept(self, meta, c):
        phase = c[4] if len(c) > 4 else None
        return ExpectConcept(c[0], c[1], c[2], c[3], phase, self._span(meta))

    @v_args(meta=True)
    def expect_pairs(self, meta, c):
        return ExpectPairs(c[0], c[1], c[2], self._span(meta))

    @v_args(meta=True)
    def expect_ess(self, meta, c):
        return ExpectEss(c[0], c[1], self._span(meta))


def to_ast(tree: Tree, path: str, comment_tokens: list[Token] = ()) -> PolicyFile:
    statements = _ToAst(path).transform(tree)
    comments = tuple(Comment(str(t), span_of(path, t)) for t in comment_tokens)
    return PolicyFile(path, statements, comments)

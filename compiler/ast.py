"""The typed AST: frozen dataclasses, one per grammar rule, every node with its span.

``to_ast`` is purely structural (STYLE.md): it turns a lark tree into these nodes and checks
nothing. Names, ranges and protocol fit are judged in resolve.py and check.py, where a mistake
becomes a diagnostic instead of an exception inside a lark transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from lark import Token, Transformer



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
    mode: Ident | None  # count | presence | density
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
class Scope:
    topic: Ident  # when topic <name>
    span: Loc


@dataclass(frozen=True)
class Rule:
    action: Ident
    concept: Ident
    factor: Num | None
    protocol: Protocol | None
    scope: Scope | None
    span: Loc


@dataclass(frozen=True)
class Threshold:
    value: Num  # above <value>
    span: Loc


@dataclass(frozen=True)
class TopicLexicon:
    path: Str
    threshold: Threshold | None
    span: Loc


@dataclass(frozen=True)
class TopicProbe:
    path: Str
    threshold: Threshold | None
    span: Loc


@dataclass(frozen=True)
class TopicColumn:
    column: Str
    op: Ident
    value: Str | Num
    span: Loc


@dataclass(frozen=True)
class TopicCluster:
    index: Num
    k: Num
    span: Loc


TopicNode = Union[TopicLexicon, TopicProbe, TopicColumn, TopicCluster]


@dataclass(frozen=True)
class TopicDef:
    name: Ident
    source: TopicNode
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


Statement = Union[PolicyDecl, ModelDecl, SaeDecl, ConceptDef, TopicDef, Rule, ExpectConcept, ExpectPairs, ExpectEss]


@dataclass(frozen=True)
class Comment:
    text: str
    span: Loc


@dataclass(frozen=True)
class PolicyFile:
    path: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...]
    # statement index -> the line of each of its tokens, for statements written over several
    # lines (fmt keeps the author's line breaks); single-line statements are not listed
    layout: dict[int, tuple[int, ...]] = field(default_factory=dict, compare=False)


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


# ---------------------------------------------------------------------------------------------
# Builders: one per grammar rule, from the rule's kept children (named terminals already turned
# into leaves, anonymous keywords dropped, inlined ``_rules`` spliced in) and its span. The fast
# parser (parse.py) calls them on each reduction; ``to_ast`` calls them on a lark tree.


def _opt(c: list, i: int):
    return c[i] if len(c) > i else None


def _features(c: list, loc: Loc) -> FeaturesLens:
    pool = c[-1] if c and isinstance(c[-1], Pool) else None
    return FeaturesLens(tuple(x for x in c if isinstance(x, Num)), pool, loc)


def _rule(c: list, loc: Loc) -> Rule:
    factor = protocol = scope = None
    for x in c[2:]:
        if x.__class__ is Num:
            factor = x
        elif x.__class__ is Protocol:
            protocol = x
        elif x.__class__ is Scope:
            scope = x
    return Rule(c[0], c[1], factor, protocol, scope, loc)


BUILDERS = {
    "start": lambda c, loc: tuple(c),
    "policy_decl": lambda c, loc: PolicyDecl(c[0], loc),
    "model_decl": lambda c, loc: ModelDecl(c[0], _opt(c, 1), loc),
    "sae_decl": lambda c, loc: SaeDecl(c[0], loc),
    "concept_def": lambda c, loc: ConceptDef(c[0], c[1], loc),
    "pool": lambda c, loc: Pool(c[0], loc),
    "metric_lens": lambda c, loc: MetricLens(c[0], loc),
    "lexicon_lens": lambda c, loc: LexiconLens(c[0], _opt(c, 1), loc),
    "probe_lens": lambda c, loc: ProbeLens(c[0], _opt(c, 1), loc),
    "features_lens": _features,
    "protocol": lambda c, loc: Protocol(c[0], _opt(c, 1), loc),
    "rule": _rule,
    "scope": lambda c, loc: Scope(c[0], loc),
    "topic_def": lambda c, loc: TopicDef(c[0], c[1], loc),
    "topic_lexicon": lambda c, loc: TopicLexicon(c[0], _opt(c, 1), loc),
    "topic_probe": lambda c, loc: TopicProbe(c[0], _opt(c, 1), loc),
    "topic_column": lambda c, loc: TopicColumn(c[0], c[1], c[2], loc),
    "topic_cluster": lambda c, loc: TopicCluster(c[0], c[1], loc),
    "threshold": lambda c, loc: Threshold(c[0], loc),
    "phase": lambda c, loc: Phase(c[0], loc),
    "expect_concept": lambda c, loc: ExpectConcept(c[0], c[1], c[2], c[3], _opt(c, 4), loc),
    "expect_pairs": lambda c, loc: ExpectPairs(c[0], c[1], c[2], loc),
    "expect_ess": lambda c, loc: ExpectEss(c[0], c[1], loc),
}


def leaf(kind: str, text: str, loc: Loc) -> Ident | Num | Str:
    """A named terminal as an AST leaf: NUMBER -> Num, STRING -> Str, any other -> Ident."""
    if kind == "NUMBER":
        return Num(text, _number(text), loc)
    if kind == "STRING":
        return Str(text, _unescape(text), loc)
    return Ident(text, loc)


class _ToAst(Transformer):
    """lark tree -> AST through ``BUILDERS``. Structural only; never raises on content. The
    compiler's own parser builds the AST directly; this is the reference path (tests hold the
    two to the same output)."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def __default_token__(self, tok: Token):
        return leaf(tok.type, str(tok), span_of(self.file, tok))

    def __default__(self, data, children, meta):
        return BUILDERS[data](children, span_of(self.file, meta) if not meta.empty else None)


def to_ast(tree, path: str, comment_tokens=()) -> PolicyFile:
    """The AST of a parse. ``tree`` is what ``parse`` returns in ``Parsed.tree`` (already a
    ``PolicyFile``: returned as is) or a lark tree from the reference grammar."""
    if isinstance(tree, PolicyFile):
        return tree
    statements = _ToAst(path).transform(tree)
    comments = tuple(Comment(str(t), span_of(path, t)) for t in comment_tokens)
    return PolicyFile(path, statements, comments)

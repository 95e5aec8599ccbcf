"""The ``metric`` lens: model-free text measures of a reply, exactly the names of
``ethos.compiler.names.METRICS``.

Counts are raw counts per reply, except ``first_person`` and ``hedging``, which are matches per
100 words (words as in :func:`ethos.runtime.lenses.words`; 0 for a reply without words).
``length`` counts the reply's tokens with the model's tokenizer (the reply tokenised on its own,
without special tokens), so it is the only metric that needs a tokenizer.

Rate or count: a measure carries no length of its own when it does not move with the reply's
length on data where the habit does not. Which form that is depends on how the habit occurs
(measured on the embedded hh-rlhf helpful-base test pairs, 798 replies; see
tests/runtime/test_lexicon_modes.py for the controls):

- ``first_person`` and ``hedging`` occur throughout a reply, at a rate per word: their counts rise
  with length (mean first-person count 0.44 → 1.40 from the shortest to the longest length
  quartile; Spearman ρ with words +0.21, hedging +0.38) while the rates move less (−0.04, +0.25).
  On the real pairs the hedging count is "significant" (d +0.09, q 0.047) with 93% of its d
  explained by the length difference; its rate is not (d +0.01). A marker sprinkled at random at
  3% per word on both sides is reported significant in 13 of 20 seeds as a count, 3 of 20 as a
  rate. So these stay rates (version 1 scores).
- ``apology`` occurs once per reply when it occurs (23 of the 24 replies with a match have exactly
  one; the mean count is 0.03 in every length quartile), like a planted phrase: a rate divides
  that one match by the length (ρ −0.99 with words among those replies) and a phrase put on 40%
  of each side at random is reported significant in 3 of 20 seeds as a rate, 0 of 20 as a count.
  So ``apology`` is a count (since version 2 of the metric's identity).

Whatever remains, the audit states how much of each concept's d the length difference explains.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from ethos.compiler.names import METRICS

from . import Lens, LensContext, LensError, Scores, per_100_words, register_lens, words

_M = re.MULTILINE
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+•]|\d+[.)])[ \t]+\S", _M)
_HEADER = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+\S", _M)
_BOLD = re.compile(r"\*\*(?=\S)(?:.+?)(?<=\S)\*\*|__(?=\S)(?:.+?)(?<=\S)__", re.DOTALL)
_FENCE = re.compile(r"^[ \t]*(?:```|~~~)", _M)
_TABLE_ROW = re.compile(r"^[ \t]*\|.*\|[ \t]*$", _M)
_MD_LINK = re.compile(r"\[[^\]\n]+\]\([^)\s]+\)")
_URL = re.compile(r"\bhttps?://[^\s<>()\]]+|\bwww\.[^\s<>()\]]+", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\s][^.!?]*(?:[.!?]+|$)")
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # mahjong .. symbols and pictographs extended-A
    "\u2600-\u27bf"  # misc symbols, dingbats
    "\u2b00-\u2bff"  # arrows, stars (⭐)
    "\u2300-\u23ff"  # technical (⌚ ⏰)
    "\u3030\u303d\u3297\u3299"
    "]"
)
_FIRST_PERSON = re.compile(r"(?<!\w)(?:i|me|my|mine|myself)(?!\w)", re.IGNORECASE)  # "I'm" counts
_APOLOGY = re.compile(
    r"(?<!\w)(?:sorry|apologi[sz]e[sd]?|apologi[sz]ing|apology|apologies|my bad|i regret|forgive me|pardon me)(?!\w)",
    re.IGNORECASE,
)
_HEDGING = re.compile(
    r"(?<!\w)(?:might|perhaps|maybe|possibly|probably|likely|unlikely|may|could|somewhat|"
    r"i think|i believe|i guess|i suppose|it seems|seems|appears to|not sure|not certain|"
    r"generally|typically|usually|in some cases|to some extent|it depends)(?!\w)",
    re.IGNORECASE,
)


def _code_blocks(text: str) -> int:
    return (len(_FENCE.findall(text)) + 1) // 2


def _links(text: str) -> int:
    md = _MD_LINK.findall(text)
    return len(md) + len(_URL.findall(_MD_LINK.sub(" ", text)))


def _markdown(text: str) -> int:
    return (
        len(_HEADER.findall(text))
        + len(_BOLD.findall(text))
        + len(_LIST_ITEM.findall(text))
        + _code_blocks(text)
        + len(_TABLE_ROW.findall(text))
    )


TEXT_METRICS: dict[str, Callable[[str], float]] = {
    "words": lambda t: float(len(words(t))),
    "chars": lambda t: float(len(t)),
    "sentences": lambda t: float(len(_SENTENCE.findall(t))),
    "list_items": lambda t: float(len(_LIST_ITEM.findall(t))),
    "markdown_headers": lambda t: float(len(_HEADER.findall(t))),
    "bold": lambda t: float(len(_BOLD.findall(t))),
    "markdown": lambda t: float(_markdown(t)),
    "code_blocks": lambda t: float(_code_blocks(t)),
    "emoji": lambda t: float(len(_EMOJI.findall(t))),
    "exclamations": lambda t: float(t.count("!")),
    "questions": lambda t: float(t.count("?")),
    "links": lambda t: float(_links(t)),
    "first_person": lambda t: per_100_words(len(_FIRST_PERSON.findall(t)), t),
    "apology": lambda t: float(len(_APOLOGY.findall(t))),
    "hedging": lambda t: per_100_words(len(_HEDGING.findall(t)), t),
}

#: The version in a metric's identity (to_dict); bumped when its scoring changes, so the score
#: cache never serves an old score for a new definition. ``apology`` was per 100 words in version 1.
VERSIONS: dict[str, int] = {"apology": 2}

#: Every metric the lens implements (``length`` needs the tokenizer).
IMPLEMENTED: frozenset[str] = frozenset(TEXT_METRICS) | {"length"}


@register_lens("metric")
class MetricLens(Lens):
    """A text measure of the reply; the prompt is not used."""

    def __init__(self, concept: Any, context: LensContext) -> None:
        super().__init__(concept, context)
        self.metric: str = concept.lens.metric
        if self.metric not in METRICS or self.metric not in IMPLEMENTED:
            known = ", ".join(sorted(IMPLEMENTED))
            raise LensError(f"concept {concept.name!r}: unknown metric {self.metric!r} (known: {known})")
        self.needs = "tokenizer" if self.metric == "length" else "text"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "metric", "metric": self.metric, "version": VERSIONS.get(self.metric, 1)}
        if self.needs == "tokenizer":
            out["tokenizer"] = self.context.tokenizer_fingerprint
        return out

    def score_texts(self, items: Sequence[tuple[Sequence[Any], str]]) -> list[Scores]:
        if self.metric == "length":
            tok = self.context.tokenizer
            if tok is None:
                raise LensError("metric 'length' needs the model's tokenizer")
            replies = [r for _, r in items]
            ids = tok(replies, add_special_tokens=False)["input_ids"] if replies else []
            return [{"value": float(len(x))} for x in ids]
        fn = TEXT_METRICS[self.metric]
        return [{"value": fn(reply)} for _, reply in items]

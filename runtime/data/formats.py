"""Recognising a file's format from its rows, and turning a row of each format into a pair.

The format is decided per file by the rows' own columns: each decodable row is classified by the
keys it has (for a table, by the columns where it has a value); the class most rows share wins,
a tie going to the class seen first. A row of another class is excluded as ``format_mismatch``,
so one stray row can neither flip the format nor take other rows with it. A row that fits no
class is read with the file's format and excluded for what it lacks (``missing_field``, ...).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .core import ASSISTANT, DataError, Message
from .fields import (
    Converted,
    Converter,
    Reject,
    as_int,
    is_missing,
    message,
    present,
    prompt_from,
    reply,
    short,
    text,
)
from .readers import Rows

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}

PROMPT_FIELDS = ("prompt", "instruction", "question")
RESPONSE_PAIRS = (("response_a", "response_b"), ("answer_a", "answer_b"), ("response1", "response2"))
LABEL_FIELDS = ("label", "preference", "winner")
_ANNOTATOR = re.compile(r"annotator\d+")
_LABEL_A = frozenset({"a", "model_a", "response_a", "answer_a", "response1"})
_LABEL_B = frozenset({"b", "model_b", "response_b", "answer_b", "response2"})
_LABEL_TIE = frozenset({"tie", "tie (bothbad)", "draw", "equal", "same", "both", "neither"})

CLASSES = {
    "trl": "trl (prompt, chosen, rejected)",
    "transcripts": "hh-rlhf (chosen, rejected without prompt)",
    "pandalm": "pandalm (instruction, response1, response2, annotator1..N)",
    "pairwise": "pairwise (a prompt, two responses, a label)",
}
"""The row classes the format vote is over, with how they are described to users."""


def row_class(keys: Sequence[str] | set[str]) -> str | None:
    """The class of a row with these keys (the first rule that fits), or None."""
    keys = set(keys)
    if {"prompt", "chosen", "rejected"} <= keys:
        return "trl"
    if {"chosen", "rejected"} <= keys:
        return "transcripts"
    prompt_field = any(f in keys for f in PROMPT_FIELDS)
    pair = next((p for p in RESPONSE_PAIRS if set(p) <= keys), None)
    if prompt_field and pair == ("response1", "response2") and any(_ANNOTATOR.fullmatch(k) for k in keys):
        return "pandalm"
    if prompt_field and pair and any(f in keys for f in LABEL_FIELDS):
        return "pairwise"
    return None


def row_keys(row: Mapping[str, Any], dense: bool) -> list[str]:
    """A row's keys; in a table only those with a value (every table row has every column)."""
    return [k for k, v in row.items() if not is_missing(v)] if dense else list(row)


@dataclass
class Decision:
    """The format of a file and how its rows are read."""

    format: str
    convert: Converter
    classes: list[str | None]
    """Each record's class (None: undecodable, or fits no class)."""
    winner: str
    votes: int
    """Rows of the winning class."""
    voters: int
    """Rows that fit some class."""

    def mismatch(self, index: int) -> str | None:
        """Why record ``index`` is a ``format_mismatch``, or None when it is not."""
        found = self.classes[index]
        if found is None or found == self.winner:
            return None
        return (
            f"its columns are those of {CLASSES[found]}, but the file's format is {self.format} "
            f"({self.votes} of {self.voters} rows)"
        )


def decide(rows: Rows, source: str) -> Decision:
    """Pick the file's format by majority of the rows' classes (ties: the class seen first)."""
    classes: list[str | None] = []
    keys: list[list[str]] = []
    for record in rows.records:
        row_keys_ = row_keys(record.value, rows.dense) if isinstance(record.value, dict) else []
        keys.append(row_keys_)
        classes.append(row_class(row_keys_) if isinstance(record.value, dict) else None)
    votes = Counter(c for c in classes if c is not None)
    if not votes:
        decodable = sum(isinstance(r.value, dict) for r in rows.records)
        if not rows.records:
            raise DataError(f"{source}: no rows")
        if not decodable:
            raise DataError(f"{source}: no decodable rows ({len(rows.records)} undecodable)")
        raise DataError(
            f"{source}: columns {', '.join(map(repr, rows.columns))} match no known format; expected one of: "
            "trl (prompt, chosen, rejected); hh-rlhf (chosen, rejected transcripts); "
            "pandalm (instruction, response1, response2, annotator1..N); "
            "pairwise (prompt|instruction|question, response_a/response_b or answer_a/answer_b or "
            "response1/response2, label|preference|winner); "
            "or name the columns with a column mapping (see docs/your-data.md)"
        )
    most = max(votes.values())
    winner = next(c for c in classes if c is not None and votes[c] == most)
    columns: dict[str, None] = {}
    for found, names in zip(classes, keys):
        if found == winner:
            columns.update(dict.fromkeys(names))
    fmt, convert = _reader(winner, list(columns), rows, classes)
    return Decision(fmt, convert, classes, winner, most, sum(votes.values()))


def _reader(winner: str, columns: list[str], rows: Rows, classes: list[str | None]) -> tuple[str, Converter]:
    cols = set(columns)
    if winner == "trl":
        return "trl", preference_converter("prompt", "chosen", "rejected")
    if winner == "transcripts":
        first = next(
            (r.value["chosen"] for r, c in zip(rows.records, classes)
             if c == winner and isinstance(r.value, dict) and not is_missing(r.value.get("chosen"))),
            None,
        )
        return ("trl" if isinstance(first, list) else "hh-rlhf"), transcripts_converter("chosen", "rejected")
    prompt_field = next(f for f in PROMPT_FIELDS if f in cols)
    input_key = "input" if prompt_field == "instruction" else None
    if winner == "pandalm":
        annotators = sorted((c for c in cols if _ANNOTATOR.fullmatch(c)), key=lambda c: int(c[9:]))
        return "pandalm", _pandalm_converter(prompt_field, input_key, annotators)
    pair = next(p for p in RESPONSE_PAIRS if set(p) <= cols)
    label = next(f for f in LABEL_FIELDS if f in cols)
    return "pairwise", _pairwise_converter(prompt_field, input_key, pair, label)


# --------------------------------------------------------------------------- converters


def preference_converter(prompt_key: str, chosen_key: str, rejected_key: str,
                         input_key: str | None = None) -> Converter:
    """A prompt column (text or messages) and a chosen and a rejected reply (text, or a list of
    one message): trl's explicit-prompt form."""

    def convert(row: Mapping[str, Any]) -> Converted:
        prompt, used = prompt_from(row, prompt_key, input_key)
        chosen = reply(present(row, chosen_key), chosen_key)
        rejected = reply(present(row, rejected_key), rejected_key)
        return prompt, chosen, rejected, frozenset(used | {chosen_key, rejected_key})

    return convert


def transcripts_converter(chosen_key: str, rejected_key: str) -> Converter:
    """hh-rlhf string transcripts, or trl implicit-prompt message lists."""

    def convert(row: Mapping[str, Any]) -> Converted:
        chosen, rejected = present(row, chosen_key), present(row, rejected_key)
        used = frozenset({chosen_key, rejected_key})
        if isinstance(chosen, list) and isinstance(rejected, list):
            return (*_split_conversations(chosen, rejected, chosen_key, rejected_key), used)
        for key, value in ((chosen_key, chosen), (rejected_key, rejected)):
            if not isinstance(value, str):
                raise Reject("not_text", f"field {key!r} is a {type(value).__name__}, not text")
        return (*_split_transcripts(chosen, rejected), used)

    return convert


def _split_transcripts(chosen: str, rejected: str) -> tuple[tuple[Message, ...], str, str]:
    """hh-rlhf: prompt = common prefix cut back to its last ``\\n\\nAssistant:``."""
    common = len(os.path.commonprefix([chosen, rejected]))
    marker = chosen.rfind(ASSISTANT, 0, common)
    if marker < 0:
        raise Reject("missing_field", "the transcripts share no '\\n\\nAssistant:' turn, so there is no prompt")
    cut = marker + len(ASSISTANT)
    return _parse_transcript(chosen[:cut]), chosen[cut:].lstrip(), rejected[cut:].lstrip()


def _parse_transcript(text_: str) -> tuple[Message, ...]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` → user a, assistant b, user c."""
    messages: list[Message] = []
    marks = list(_TURN.finditer(text_))
    head = text_[: marks[0].start()].strip() if marks else text_.strip()
    if head:
        messages.append(Message("system", head))
    for mark, following in zip(marks, [*marks[1:], None]):
        end = following.start() if following else len(text_)
        content = text_[mark.end() : end].strip()
        if following is None and mark.group(1) == "Assistant" and not content:
            break  # the open assistant turn the replies complete
        messages.append(Message(_ROLES[mark.group(1)], content))
    return tuple(messages)


def _split_conversations(chosen: list[Any], rejected: list[Any], chosen_key: str,
                         rejected_key: str) -> tuple[tuple[Message, ...], str, str]:
    """trl implicit prompt: the common leading messages are the prompt, one message follows."""
    chosen_messages = tuple(message(m, chosen_key) for m in chosen)
    rejected_messages = tuple(message(m, rejected_key) for m in rejected)
    common = 0
    while (
        common < min(len(chosen_messages), len(rejected_messages)) - 1
        and chosen_messages[common] == rejected_messages[common]
    ):
        common += 1
    for key, messages in ((chosen_key, chosen_messages), (rejected_key, rejected_messages)):
        if len(messages) - common != 1:
            raise Reject(
                "not_text",
                f"field {key!r} has {len(messages) - common} messages after the shared prompt, expected 1",
            )
    return chosen_messages[:common], chosen_messages[-1].content, rejected_messages[-1].content


def _side(value: Any, key: str, one_based: bool) -> str:
    """``"a"``, ``"b"`` or ``"tie"`` from a pairwise label value (see the package docstring)."""
    number = as_int(value)
    if number is not None:
        table = {1: "a", 2: "b", 0: "tie"} if one_based else {0: "a", 1: "b"}
        if number in table:
            return table[number]
    elif isinstance(value, str):
        token = " ".join(value.lower().split())
        if token in _LABEL_A:
            return "a"
        if token in _LABEL_B:
            return "b"
        if token in _LABEL_TIE:
            return "tie"
    raise Reject("missing_field", f"field {key!r} has {short(value)}, not a recognised label")


def _pairwise_converter(prompt_field: str, input_key: str | None, pair: tuple[str, str], label: str) -> Converter:
    one_based = pair == ("response1", "response2")

    def convert(row: Mapping[str, Any]) -> Converted:
        prompt, used = prompt_from(row, prompt_field, input_key)
        first, second = text(row, pair[0]), text(row, pair[1])
        side = _side(present(row, label), label, one_based)
        if side == "tie":
            raise Reject("tie", f"field {label!r} is {short(row[label])}: a tie")
        chosen, rejected = (first, second) if side == "a" else (second, first)
        return prompt, chosen, rejected, frozenset(used | set(pair))

    return convert


def _pandalm_converter(prompt_field: str, input_key: str | None, annotators: Sequence[str]) -> Converter:
    def convert(row: Mapping[str, Any]) -> Converted:
        prompt, used = prompt_from(row, prompt_field, input_key)
        first, second = text(row, "response1"), text(row, "response2")
        votes = []
        for key in annotators:
            vote = as_int(present(row, key))
            if vote not in (0, 1, 2):
                raise Reject("missing_field", f"field {key!r} has {short(row[key])}, not 0, 1 or 2")
            votes.append(vote)
        winner, count = Counter(votes).most_common(1)[0]
        if count * 2 <= len(votes):
            raise Reject("tie", f"annotators split {votes}: no majority")
        if winner == 0:
            raise Reject("tie", f"annotators {votes}: majority says tie")
        chosen, rejected = (first, second) if winner == 1 else (second, first)
        return prompt, chosen, rejected, frozenset(used | {"response1", "response2"})

    return convert


def check_pair(prompt: tuple[Message, ...], chosen: str, rejected: str, max_chars: int) -> None:
    """The checks every format shares, after the fields and the label were read."""
    if not any(m.content.strip() for m in prompt):
        raise Reject("missing_field", "the prompt is empty")
    if chosen == rejected:
        raise Reject("identical", "chosen and rejected are the same text")
    for key, reply_ in (("chosen", chosen), ("rejected", rejected)):
        if not reply_.strip():
            raise Reject("empty_reply", f"the {key} reply is empty")
    total = sum(len(m.content) for m in prompt) + len(chosen) + len(rejected)
    if total > max_chars:
        raise Reject("too_long", f"{total} characters (prompt + chosen + rejected) > max_chars {max_chars}")

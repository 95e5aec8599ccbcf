"""Column mappings: telling ethos which columns of a dataset hold the prompt, the two replies and
the label (or two scores), for data in no recognised format.

A mapping is given as text (``"prompt=question,a=answer_a,b=answer_b,label=overall_preference"``)
or a dict, with the label values that mean a, b and a tie; or in a TOML file beside the data,
``<data>.ethos.toml`` (``prefs.jsonl`` → ``prefs.jsonl.ethos.toml``; for a folder ``saved/`` →
``saved.ethos.toml``)::

    [columns]
    prompt = "question"
    a = "answer_a"
    b = "answer_b"
    label = "overall_preference"

    [labels]
    a = -1
    b = 1
    tie = 0

Three shapes (roles):

- ``chosen``, ``rejected`` (+ ``prompt``; without it the two are hh-rlhf transcripts or message
  lists with a shared head);
- ``prompt``, ``a``, ``b``, ``label`` with the label values ``a`` and ``b`` (and ``tie``);
- ``prompt``, ``a``, ``b``, ``score_a``, ``score_b``: the higher score wins, equal is a tie.

``input`` may join any shape that has a prompt: a non-blank input is appended to a text prompt
after a blank line (``instruction`` + ``input`` datasets).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core import DataError
from .fields import Converted, Converter, Reject, label_key, number, present, prompt_from, reply, short
from .formats import preference_converter, transcripts_converter

ROLES: tuple[str, ...] = ("prompt", "input", "chosen", "rejected", "a", "b", "label", "score_a", "score_b")
"""Every role a column can be mapped to."""

SHAPES: dict[str, frozenset[str]] = {
    "preference": frozenset({"chosen", "rejected"}),
    "label": frozenset({"prompt", "a", "b", "label"}),
    "rated": frozenset({"prompt", "a", "b", "score_a", "score_b"}),
}
_USAGE = (
    "a column mapping is one of: chosen=…,rejected=… [prompt=…]; "
    "prompt=…,a=…,b=…,label=… with the label values for a and b [and tie]; "
    "prompt=…,a=…,b=…,score_a=…,score_b=…"
)
MAPPING_SUFFIX = ".ethos.toml"


def mapping_file_for(data: Path) -> Path:
    """Where the mapping of the data file or folder ``data`` is looked for: ``<data>.ethos.toml``
    beside it."""
    return data.parent / (data.name + MAPPING_SUFFIX)


def _label_value(value: Any) -> Any:
    """A label value as recorded: a numeric string becomes its number (``"-1"`` → ``-1``)."""
    found = number(value) if isinstance(value, str) else None
    return found if found is not None else value


@dataclass(frozen=True)
class ColumnMapping:
    """Which column plays which role, and which label values mean a, b and a tie."""

    columns: dict[str, str]
    """role → column name."""
    labels: dict[str, Any]
    """``"a"``/``"b"``/``"tie"`` → label value (only for the ``label`` shape)."""
    origin: str = "arguments"
    """``"arguments"`` or the TOML file it came from."""

    @property
    def shape(self) -> str:
        """``"preference"``, ``"label"`` or ``"rated"``."""
        roles = set(self.columns)
        return next(name for name, needed in SHAPES.items() if needed <= roles)

    @property
    def format(self) -> str:
        """The :attr:`LoadResult.format` a load with this mapping reports."""
        return {"preference": "trl", "label": "pairwise", "rated": "rated"}[self.shape]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: ``{"columns": {...}, "labels": {...}, "origin": ...}``."""
        return {"columns": dict(self.columns), "labels": dict(self.labels), "origin": self.origin}

    def canonical(self) -> str:
        """The mapping as compact sorted JSON, without its origin (for the data fingerprint)."""
        return json.dumps({"columns": self.columns, "labels": self.labels}, sort_keys=True, separators=(",", ":"))

    def check_columns(self, columns: list[str], source: str) -> None:
        """Every mapped column must be one of the file's columns (exit 2, listing them)."""
        unknown = [c for c in self.columns.values() if c not in columns]
        if unknown:
            where = "" if self.origin == "arguments" else f" in {self.origin}"
            raise DataError(
                f"{source}: the column mapping{where} names "
                f"{', '.join(map(repr, unknown))}, not a column of the data; its columns are: "
                f"{', '.join(map(repr, columns)) or '(none)'}",
                exit_code=2,
            )

    def converter(self) -> Converter:
        c = self.columns
        if self.shape == "preference":
            if "prompt" not in c:
                return transcripts_converter(c["chosen"], c["rejected"])
            return preference_converter(c["prompt"], c["chosen"], c["rejected"], c.get("input"))
        if self.shape == "label":
            return _label_converter(c, self.labels)
        return _rated_converter(c)


def parse_columns(text: str) -> dict[str, str]:
    """``"prompt=question,a=answer_a"`` → ``{"prompt": "question", "a": "answer_a"}``."""
    columns: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        role, sep, column = item.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not role or not column:
            raise DataError(f"column mapping: {item.strip()!r} is not role=column; {_USAGE}", exit_code=2)
        if role in columns:
            raise DataError(f"column mapping: the role {role!r} is given twice", exit_code=2)
        columns[role] = column
    return columns


def build_mapping(columns: str | Mapping[str, str], *, label_a: Any = None, label_b: Any = None,
                  label_tie: Any = None, origin: str = "arguments") -> ColumnMapping:
    """Check a mapping's roles and label values; raises :class:`DataError` (exit 2)."""
    where = "column mapping" if origin == "arguments" else origin
    cols = parse_columns(columns) if isinstance(columns, str) else dict(columns)
    if not cols:
        raise DataError(f"{where}: no columns; {_USAGE}", exit_code=2)
    for role, column in cols.items():
        if role not in ROLES:
            raise DataError(f"{where}: unknown role {role!r}; the roles are {', '.join(ROLES)}", exit_code=2)
        if not isinstance(column, str) or not column:
            raise DataError(f"{where}: the column of {role!r} must be a non-empty text, not {short(column)}", exit_code=2)
    roles = set(cols)
    shapes = [name for name, needed in SHAPES.items() if needed <= roles]
    allowed = {"preference": {"chosen", "rejected", "prompt", "input"},
               "label": {"prompt", "input", "a", "b", "label"},
               "rated": {"prompt", "input", "a", "b", "score_a", "score_b"}}
    if len(shapes) != 1 or roles - allowed[shapes[0]]:
        raise DataError(f"{where}: roles {', '.join(sorted(roles))} do not fit together; {_USAGE}", exit_code=2)
    if "input" in roles and "prompt" not in roles:
        raise DataError(f"{where}: 'input' needs a 'prompt' column", exit_code=2)
    doubled = sorted({c for c in cols.values() if list(cols.values()).count(c) > 1})
    if doubled:
        raise DataError(f"{where}: the column {doubled[0]!r} is mapped to two roles", exit_code=2)
    labels = {side: _label_value(v) for side, v in (("a", label_a), ("b", label_b), ("tie", label_tie)) if v is not None}
    for side, value in labels.items():
        if label_key(value) is None:
            raise DataError(f"{where}: the label value for {side} must be text, a number or a boolean, not {short(value)}", exit_code=2)
    if shapes[0] == "label":
        missing = [side for side in ("a", "b") if side not in labels]
        if missing:
            raise DataError(
                f"{where}: a label column needs the values that mean a and b "
                f"(label_a/label_b, --label-a/--label-b, or [labels] a/b in the TOML file); missing: {', '.join(missing)}",
                exit_code=2,
            )
        keys = [label_key(v) for v in labels.values()]
        if len(set(keys)) != len(keys):
            raise DataError(f"{where}: two sides share a label value ({labels})", exit_code=2)
    elif labels:
        raise DataError(f"{where}: label values are only for a mapping with a 'label' column", exit_code=2)
    return ColumnMapping(cols, labels, origin)


def read_mapping_file(path: Path) -> ColumnMapping:
    """A mapping from a TOML file with a ``[columns]`` table and an optional ``[labels]`` table."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the column mapping: {exc}", exit_code=2) from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: not valid TOML: {exc}", exit_code=2) from None
    extra = sorted(set(document) - {"columns", "labels"})
    if extra:
        raise DataError(f"{path}: unknown key {extra[0]!r}; a column mapping has [columns] and [labels]", exit_code=2)
    columns, labels = document.get("columns"), document.get("labels", {})
    if not isinstance(columns, dict):
        raise DataError(f"{path}: a column mapping needs a [columns] table (role = \"column\")", exit_code=2)
    if not isinstance(labels, dict) or set(labels) - {"a", "b", "tie"}:
        raise DataError(f"{path}: [labels] holds a, b and tie (the label values), nothing else", exit_code=2)
    return build_mapping(columns, label_a=labels.get("a"), label_b=labels.get("b"), label_tie=labels.get("tie"),
                         origin=str(path))


def resolve_mapping(columns: str | Mapping[str, str] | ColumnMapping | None, *, label_a: Any, label_b: Any,
                    label_tie: Any, data: Path | None) -> ColumnMapping | None:
    """The mapping of a load: the one given, else the TOML file beside ``data`` if there is one,
    else None (recognise the format). Label values without columns are a usage error."""
    if isinstance(columns, ColumnMapping):
        if any(v is not None for v in (label_a, label_b, label_tie)):
            raise DataError("give the label values inside the ColumnMapping, not beside it", exit_code=2)
        return columns
    if columns is not None:
        return build_mapping(columns, label_a=label_a, label_b=label_b, label_tie=label_tie)
    if any(v is not None for v in (label_a, label_b, label_tie)):
        raise DataError("label values (--label-a/--label-b/--label-tie) need a column mapping (--columns)", exit_code=2)
    if data is not None:
        file = mapping_file_for(data)
        if file.is_file():
            return read_mapping_file(file)
    return None


# --------------------------------------------------------------------------- converters


def _label_converter(c: Mapping[str, str], labels: Mapping[str, Any]) -> Converter:
    sides = {label_key(value): side for side, value in labels.items()}
    wanted = ", ".join(f"{side}={short(value)}" for side, value in labels.items())

    def convert(row: Mapping[str, Any]) -> Converted:
        prompt, used = prompt_from(row, c["prompt"], c.get("input"))
        first, second = reply(present(row, c["a"]), c["a"]), reply(present(row, c["b"]), c["b"])
        value = present(row, c["label"])
        side = sides.get(label_key(value))
        if side is None:
            raise Reject("missing_field", f"field {c['label']!r} has {short(value)}, not one of the label values {wanted}")
        if side == "tie":
            raise Reject("tie", f"field {c['label']!r} is {short(value)}: a tie")
        chosen, rejected = (first, second) if side == "a" else (second, first)
        return prompt, chosen, rejected, frozenset(used | {c["a"], c["b"]})

    return convert


def _score(row: Mapping[str, Any], key: str) -> int | float:
    value = present(row, key)
    found = number(value)
    if found is None:
        raise Reject("missing_field", f"field {key!r} has {short(value)}, not a number")
    return found


def _rated_converter(c: Mapping[str, str]) -> Converter:
    def convert(row: Mapping[str, Any]) -> Converted:
        prompt, used = prompt_from(row, c["prompt"], c.get("input"))
        first, second = reply(present(row, c["a"]), c["a"]), reply(present(row, c["b"]), c["b"])
        score_a, score_b = _score(row, c["score_a"]), _score(row, c["score_b"])
        if score_a == score_b:
            raise Reject("tie", f"scores {c['score_a']!r} and {c['score_b']!r} are equal ({short(score_a)}): a tie")
        chosen, rejected = (first, second) if score_a > score_b else (second, first)
        return prompt, chosen, rejected, frozenset(used | {c["a"], c["b"]})

    return convert

"""Reading one row's fields: text, message lists, replies, labels and numbers, with the exclusion
(:class:`Reject`) a bad value earns. Shared by the recognised formats and the column mapping."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .core import REASONS, Message

Converted = tuple[tuple[Message, ...], str, str, frozenset[str]]
"""What a converter makes of a row: prompt, chosen, rejected, and the columns it used."""
Converter = Callable[[Mapping[str, Any]], Converted]

SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate code point: not valid Unicode, cannot be written as UTF-8."""


class Reject(Exception):
    """Raised while reading a row: the row is excluded for ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a label can be a 20 MB string)."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
        return repr(value)[:-1] + "…" + repr(value)[-1]
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def present(row: Mapping[str, Any], key: str) -> Any:
    if key not in row:
        raise Reject("missing_field", f"missing field {key!r}")
    if is_missing(row[key]):
        raise Reject("missing_field", f"field {key!r} is null")
    return row[key]


def text(row: Mapping[str, Any], key: str) -> str:
    value = present(row, key)
    if not isinstance(value, str):
        raise Reject("not_text", f"field {key!r} is a {type(value).__name__}, not text")
    return value


def message(value: Any, key: str) -> Message:
    if not isinstance(value, Mapping):
        raise Reject("not_text", f"field {key!r}: a message is a {type(value).__name__}, not an object")
    role, content = value.get("role"), value.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        if len(parts) == len(content) and all(isinstance(p, str) for p in parts):
            content = "".join(parts)
    if not isinstance(role, str) or not isinstance(content, str):
        raise Reject("not_text", f"field {key!r}: a message needs a text 'role' and 'content'")
    return Message(role, content)


def messages(value: Any, key: str) -> tuple[Message, ...]:
    """A prompt: a string (one user message) or a list of messages."""
    if isinstance(value, str):
        return (Message("user", value),)
    if not isinstance(value, list):
        raise Reject("not_text", f"field {key!r} is a {type(value).__name__}, not text or messages")
    return tuple(message(item, key) for item in value)


def reply(value: Any, key: str) -> str:
    """A reply: a string, or a list holding exactly one message."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if len(value) != 1:
            raise Reject("not_text", f"field {key!r} holds {len(value)} messages, expected 1")
        return message(value[0], key).content
    raise Reject("not_text", f"field {key!r} is a {type(value).__name__}, not text or a message")


def prompt_from(row: Mapping[str, Any], key: str, input_key: str | None) -> tuple[tuple[Message, ...], set[str]]:
    """The prompt in column ``key`` (text or messages); with ``input_key`` the prompt is text and
    a non-blank input is appended after a blank line (``instruction`` + ``input``)."""
    if input_key is None:
        return messages(present(row, key), key), {key}
    value = text(row, key)
    extra = row.get(input_key)
    if isinstance(extra, str) and extra.strip():
        value = f"{value}\n\n{extra}"
    elif not is_missing(extra) and not isinstance(extra, str):
        raise Reject("not_text", f"field {input_key!r} is a {type(extra).__name__}, not text")
    return (Message("user", value),), {key, input_key}


def as_int(value: Any) -> int | None:
    """An integer label from an int, an integral float or a string holding one; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):  # "1", " 2 ", "1.0" (CSV values are text)
        found = number(value)
        return found if isinstance(found, int) else None
    return None


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def number(value: Any) -> int | float | None:
    """A finite number from an int, a float or a numeric string (not a bool); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return (int(value) if value.is_integer() else value) if math.isfinite(value) else None
    if isinstance(value, str):
        token = value.strip()
        if len(token) > 100 or not _NUMBER.fullmatch(token):
            return None
        return int(token) if _INTEGER.fullmatch(token) else number(float(token))
    return None


def label_key(value: Any) -> tuple[str, Any] | None:
    """What a label value is compared by: numbers by value (``-1`` = ``"-1"`` = ``-1.0``), text
    case- and space-insensitively, booleans as booleans."""
    if isinstance(value, bool):
        return ("bool", value)
    found = number(value)
    if found is not None:
        return ("number", found)
    if isinstance(value, str):
        return ("text", " ".join(value.split()).casefold())
    return None


def first_lone_surrogate(value: Any) -> tuple[str | None, str] | None:
    """The first string holding a lone surrogate in a decoded JSON value: ``(top-level key,
    the code point as \\uXXXX)``; ``None`` when there is none."""
    stack: list[tuple[Any, str | None]] = [(value, None)]
    while stack:
        item, top = stack.pop()
        if isinstance(item, str):
            found = SURROGATE.search(item)
            if found:
                return top, f"\\u{ord(found.group()):04x}"
        elif isinstance(item, dict):
            for key, inner in item.items():
                found = SURROGATE.search(key)
                if found:
                    return top if top is not None else key, f"\\u{ord(found.group()):04x}"
                stack.append((inner, top if top is not None else key))
        elif isinstance(item, list):
            stack.extend((inner, top) for inner in item)
    return None

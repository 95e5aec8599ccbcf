"""Accounting for excluded rows: a short preview of each, and the JSON Lines file of them that
``--excluded FILE`` writes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ethos.runtime.io import atomic_write_text

from .core import DataError, LoadResult
from .fields import SURROGATE

PREVIEW_CHARS = 200
"""The longest preview of an excluded row."""


def clean(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, so it can be written as UTF-8."""
    return SURROGATE.sub("\ufffd", text)


def raw_preview(raw: bytes | str) -> str:
    """The start of a row as it stands in the file (undecodable bytes shown as U+FFFD)."""
    if isinstance(raw, bytes):
        raw = raw[: PREVIEW_CHARS * 4].decode("utf-8", "replace")
    text = clean(raw[: PREVIEW_CHARS * 2].strip())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def value_preview(row: Any) -> str:
    """A decoded row as compact JSON, long strings and lists cut, at most ``PREVIEW_CHARS``."""
    text = clean(json.dumps(_trim(row, 0), ensure_ascii=False, default=str))
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _trim(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= 80 else value[:79] + "…"
    if isinstance(value, bool | float | type(None)):
        return value
    if isinstance(value, int):
        return value if value.bit_length() < 64 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if depth >= 3:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k)[:80]: _trim(v, depth + 1) for k, v in items[:12]}
        if len(items) > 12:
            out["…"] = f"{len(items) - 12} more"
        return out
    if isinstance(value, list | tuple):
        out_list = [_trim(v, depth + 1) for v in value[:4]]
        return out_list + ["…"] if len(value) > 4 else out_list
    return str(value)[:80]


def excluded_rows(result: LoadResult) -> Iterator[dict[str, Any]]:
    """One JSON-ready dict per excluded row, in input order: ``record`` (1-based row number),
    ``line`` (1-based file line, or ``None`` for record formats), ``reason``, ``detail`` and
    ``preview``."""
    for e in result.exclusions:
        yield {
            "record": e.record,
            "line": e.line,
            "reason": e.reason,
            "detail": clean(e.detail),
            "preview": e.preview,
        }


def write_excluded(result: LoadResult, path: str | os.PathLike[str]) -> Path:
    """Write :func:`excluded_rows` as JSON Lines to ``path`` (atomically; an empty file when
    nothing was excluded) and return the path. This is what ``--excluded FILE`` writes."""
    out = Path(path)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in excluded_rows(result))
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise DataError(f"cannot write the excluded rows to {out}: {exc.strerror or exc}") from None
    return out

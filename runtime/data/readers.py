"""Reading input rows, one reader per file type: JSON Lines (plain or gzip), JSON arrays, CSV,
Parquet (through ``datasets``), and folders saved with ``datasets``' ``save_to_disk``.

A reader returns :class:`Rows`: one :class:`Record` per input row, in file order, each a decoded
object or an :class:`Undecodable` stand-in with the reason, and the 1-based line where the row
starts (files with lines) or ``None`` (record formats). A bad row never fails the read; only a
file that cannot be read at all does (:class:`~ethos.runtime.data.core.DataError`).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .accounting import raw_preview
from .core import EXTENSIONS, DataError
from .fields import first_lone_surrogate

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Undecodable:
    """Stands in for an input row that could not be decoded."""

    detail: str
    preview: str


@dataclass(frozen=True)
class Record:
    """One input row as read."""

    value: dict[str, Any] | Undecodable
    line: int | None
    """1-based line where the row starts, or ``None`` for record formats."""


@dataclass
class Rows:
    """The input rows of one source."""

    records: list[Record]
    dense: bool
    """True for tables (every row has every column, a missing value is a null); False for JSON,
    where a row has the keys it was written with."""
    columns: list[str]
    """The table's columns, or the keys over all decodable rows in first-seen order."""


def first_line(exc: BaseException) -> str:
    """The first line of the message of ``exc``'s deepest cause (``datasets`` wraps the reader's
    own error in a generic one)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_file(file: Path, source: str, limit: int | None, split: str | None) -> Rows:
    """The first ``limit`` input rows of the file or saved folder ``file`` (all when None)."""
    if file.is_dir():
        return read_saved_dataset(file, source, limit, split)
    if split is not None:
        raise DataError(f"{source}: a split is chosen only in a dataset folder or a Hub dataset", exit_code=2)
    name = file.name.lower()
    try:
        if name.endswith(".jsonl.gz"):
            return read_jsonl(lambda: gzip.open(file, "rb"), source, limit)
        if name.endswith(".jsonl"):
            return read_jsonl(lambda: open(file, "rb"), source, limit)
        if name.endswith(".json"):
            return read_json(file.read_bytes(), source, limit)
        if name.endswith(".csv"):
            return read_csv(file.read_bytes(), source, limit)
        if name.endswith(".parquet"):
            return read_parquet(file, source, limit)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{source}: cannot read the file: {exc}") from None
    raise DataError(
        f"{source}: unsupported file type; expected a file ending in {', '.join(EXTENSIONS)}, "
        "or a folder saved with datasets' save_to_disk"
    )


# --------------------------------------------------------------------------- JSON

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_ANY_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")


def _unreadable_json(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read"
    if "digits" in str(exc):  # ValueError: Exceeds the limit (4300 digits) for integer string conversion
        return "a number with more than 4300 digits"
    return f"unreadable JSON: {first_line(exc)}"


def _as_row(value: Any, source_text: str, maybe_surrogates: bool, what: str = "") -> dict[str, Any] | Undecodable:
    """A decoded JSON value as a row: an object without lone surrogates, else Undecodable."""
    if not isinstance(value, dict):
        return Undecodable(f"{what}a JSON {type(value).__name__}, not an object", raw_preview(source_text))
    if maybe_surrogates:
        found = first_lone_surrogate(value)
        if found is not None:
            key, code = found
            return Undecodable(
                f"field {key!r} is not valid Unicode (a lone surrogate {code}: a broken \\u escape or invalid UTF-8)",
                raw_preview(source_text),
            )
    return value


def decode_line(raw: bytes) -> dict[str, Any] | Undecodable:
    """One JSON Lines line as a row."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Undecodable(f"invalid UTF-8 at byte {exc.start}", raw_preview(raw))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Undecodable(f"invalid JSON: {exc.msg} (column {exc.colno})", raw_preview(text))
    except (RecursionError, ValueError) as exc:
        return Undecodable(_unreadable_json(exc), raw_preview(text))
    return _as_row(value, text, bool(_ESCAPED_SURROGATE.search(text)))


def read_jsonl(opener: Callable[[], IO[bytes]], source: str, limit: int | None) -> Rows:
    """JSON Lines, one line at a time; blank lines are not rows but count as lines."""
    records: list[Record] = []
    try:
        with opener() as stream:
            _jsonl_records(stream, limit, records)
    except (OSError, EOFError, zlib.error) as exc:
        where = f" after line {records[-1].line}" if records else ""
        raise DataError(f"{source}: cannot read the file{where}: {exc}") from None
    return Rows(records, False, _seen_columns(records))


def _jsonl_records(lines: Iterable[bytes], limit: int | None, records: list[Record]) -> None:
    for number, raw in enumerate(lines, start=1):
        if limit is not None and len(records) >= limit:
            return
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if not raw.strip():
            continue
        records.append(Record(decode_line(raw), number))


def _seen_columns(records: Iterable[Record]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record.value, dict):
            seen.update(dict.fromkeys(record.value))
    return list(seen)


_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_STRUCTURE = re.compile(r'[\[\]{}"]')
_SCALAR_END = re.compile(r"[,\]}\s]")


def _skip_value(text: str, pos: int) -> int | None:
    """End of the JSON value at ``pos``, found from brackets and strings only: for a value the
    parser refused (nested too deeply, a number too long). None when it does not end."""
    if text.startswith('"', pos):
        found = _STRING.match(text, pos)
        return found.end() if found else None
    if text[pos] in "[{":
        depth = 0
        while True:
            found = _STRUCTURE.search(text, pos)
            if found is None:
                return None
            if found.group() == '"':
                string = _STRING.match(text, found.start())
                if string is None:
                    return None
                pos = string.end()
                continue
            depth += 1 if found.group() in "[{" else -1
            pos = found.end()
            if depth == 0:
                return pos
    end = _SCALAR_END.search(text, pos)
    return end.start() if end else len(text)


def read_json(data: bytes, source: str, limit: int | None) -> Rows:
    """A ``.json`` file: a JSON array of objects, or JSON Lines under a ``.json`` name.

    Bytes that are not UTF-8 become lone surrogates (``surrogateescape``), so only the rows
    holding them are excluded."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    text = data.decode("utf-8", "surrogateescape")
    start = _WS.match(text).end()
    if start == len(text):
        raise DataError(f"{source}: no rows")
    if text[start] == "[":
        return _json_array(text, start, source, limit)
    several_lines = "\n" in text.strip()
    if text[start] == "{":
        try:
            _, end = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError as exc:
            if not several_lines:
                raise DataError(f"{source}: not valid JSON: {exc}") from None
        except (RecursionError, ValueError) as exc:
            if not several_lines:
                raise DataError(f"{source}: {_unreadable_json(exc)}") from None
        else:
            if _WS.match(text, end).end() == len(text):
                raise DataError(f"{source}: expected a JSON array of objects, found a JSON object")
        records: list[Record] = []
        _jsonl_records(data.splitlines(keepends=True), limit, records)
        return Rows(records, False, _seen_columns(records))
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{source}: not valid JSON: {first_line(exc)}") from None
    raise DataError(f"{source}: expected a JSON array of objects, found a JSON {type(value).__name__}")


def _json_array(text: str, start: int, source: str, limit: int | None) -> Rows:
    """The elements of a JSON array one at a time, each with the line it starts on."""
    decoder = json.JSONDecoder()
    maybe_surrogates = bool(_ANY_SURROGATE.search(text))
    records: list[Record] = []
    pos = _WS.match(text, start + 1).end()
    line, counted = 1 + text.count("\n", 0, pos), pos
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            if limit is not None and len(records) >= limit:
                return Rows(records, False, _seen_columns(records))
            line += text.count("\n", counted, pos)
            begin = counted = pos
            try:
                value, pos = decoder.raw_decode(text, pos)
                row = _as_row(value, text[begin : begin + 1000], maybe_surrogates, f"array element {len(records)} is ")
            except json.JSONDecodeError as exc:
                raise DataError(f"{source}: not valid JSON: {exc}") from None
            except (RecursionError, ValueError) as exc:
                end = _skip_value(text, pos)
                if end is None:
                    raise DataError(f"{source}: not valid JSON: a value at line {line} does not end") from None
                row, pos = Undecodable(_unreadable_json(exc), raw_preview(text[begin : begin + 1000])), end
            records.append(Record(row, line))
            pos = _WS.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            at = 1 + text.count("\n", 0, pos)
            raise DataError(f"{source}: not valid JSON: expected ',' or ']' at line {at}")
    if _WS.match(text, pos).end() != len(text):
        at = 1 + text.count("\n", 0, pos)
        raise DataError(f"{source}: not valid JSON: extra data after the array (line {at})")
    return Rows(records, False, _seen_columns(records))


# --------------------------------------------------------------------------- CSV


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def read_csv(data: bytes, source: str, limit: int | None) -> Rows:
    """CSV with a header row (comma-separated, ``"``-quoted fields may span lines), read with
    the standard ``csv`` module so each record keeps its line: a record with more or fewer
    fields than the header is one ``undecodable`` row, an empty field is a null, every other
    value is text. Bytes that are not UTF-8 make their record undecodable."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    text = data.decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[Record] = []
    header: list[str] | None = None
    ended = 0  # the line the previous record ended on
    try:
        with _csv_field_limit(2**31 - 1):
            for fields in reader:
                begin, ended = ended + 1, reader.line_num
                if not fields or fields == [""]:
                    continue  # a blank line is not a row
                if header is None:
                    header = fields
                    doubled = sorted({f for f in fields if fields.count(f) > 1})
                    if doubled:
                        raise DataError(f"{source}: the header names the column {doubled[0]!r} twice")
                    continue
                if limit is not None and len(records) >= limit:
                    break
                records.append(Record(_csv_row(header, fields), begin))
    except csv.Error as exc:
        raise DataError(f"{source}: not valid CSV at line {reader.line_num}: {exc}") from None
    if header is None:
        raise DataError(f"{source}: no rows")
    return Rows(records, True, header)


def _csv_row(header: list[str], fields: list[str]) -> dict[str, Any] | Undecodable:
    preview = raw_preview(",".join(fields))
    if len(fields) != len(header):
        return Undecodable(f"{len(fields)} fields where the header has {len(header)}", preview)
    row: dict[str, Any] = {name: (value if value != "" else None) for name, value in zip(header, fields)}
    found = first_lone_surrogate(row)
    if found is not None:
        return Undecodable(f"field {found[0]!r} is not valid UTF-8 ({found[1]})", preview)
    return row


# --------------------------------------------------------------------------- datasets


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Switch off ``datasets``' progress bars and info/warning logs for the duration, then
    restore both."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from datasets.utils import logging as ds_logging

    was_disabled = are_progress_bars_disabled()
    verbosity = ds_logging.get_verbosity()
    disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # a failure is reported once, as a DataError
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if not was_disabled:
            enable_progress_bars()


def read_parquet(file: Path, source: str, limit: int | None) -> Rows:
    """Parquet through ``datasets``, with a throwaway cache and rows kept in memory."""
    import datasets

    try:
        with quiet_datasets(), tempfile.TemporaryDirectory(prefix="ethos-data-") as cache:
            dataset = datasets.Dataset.from_parquet(str(file), cache_dir=cache, keep_in_memory=True)
    except (OSError, ValueError, TypeError, datasets.exceptions.DatasetGenerationError) as exc:
        raise DataError(f"{source}: cannot read the file: {first_line(exc)}") from None
    return dataset_rows(dataset, limit)


def read_saved_dataset(folder: Path, source: str, limit: int | None, split: str | None) -> Rows:
    """A folder written by ``save_to_disk``: a ``Dataset``, or a ``DatasetDict`` whose split is
    ``split`` (or its only split)."""
    import datasets

    try:
        with quiet_datasets():
            loaded = datasets.load_from_disk(str(folder), keep_in_memory=True)
    except (OSError, ValueError) as exc:  # FileNotFoundError when it is not a dataset folder
        raise DataError(
            f"{source}: not a dataset folder saved with datasets' save_to_disk ({first_line(exc)})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return dataset_rows(pick_split(loaded, split, source), limit)
    if split is not None:
        raise DataError(f"{source}: a dataset without splits; drop the split {split!r}", exit_code=2)
    return dataset_rows(loaded, limit)


def pick_split(loaded: Any, split: str | None, source: str, *, folder: bool = True) -> Any:
    """The split ``split`` of a ``DatasetDict``, or its only split when ``split`` is None."""
    splits = list(loaded)
    if split is not None:
        if split not in loaded:
            raise DataError(f"{source}: no split {split!r}; the splits are {', '.join(splits)}", exit_code=2)
        return loaded[split]
    if len(splits) != 1:
        example = splits[0] if splits else "NAME"
        also = f", or name the split's own folder, e.g. {os.path.join(source, example)}" if folder else ""
        raise DataError(
            f"{source}: a DatasetDict with splits {', '.join(splits)}; choose one with a split "
            f"(--split {example}){also}"
        )
    return loaded[splits[0]]


def dataset_rows(dataset: Any, limit: int | None) -> Rows:
    """The first ``limit`` rows of a ``datasets.Dataset`` (record format: no line numbers)."""
    size = len(dataset) if limit is None else min(limit, len(dataset))
    records: list[Record] = []
    for start in range(0, size, 1000):
        batch = dataset[start : min(start + 1000, size)]  # columns -> lists
        names = list(batch)
        records.extend(Record(dict(zip(names, values)), None) for values in zip(*(batch[n] for n in names)))
    return Rows(records, True, list(dataset.column_names))


# --------------------------------------------------------------------------- content hash


def content_sha256(file: Path) -> str:
    """sha256 of a file's bytes; for a folder, of its sorted relative paths, sizes and bytes."""
    if not file.is_dir():
        return files_sha256([file], None)
    return files_sha256(sorted(p for p in file.rglob("*") if p.is_file()), file)


def files_sha256(files: Iterable[Path], root: Path | None) -> str:
    """sha256 over ``files`` in the order given; with ``root``, each file's path relative to it
    and its size go in before its bytes."""
    digest = hashlib.sha256()
    for member in files:
        if root is not None:
            relative = member.relative_to(root).as_posix()
            digest.update(f"{relative}\0{member.stat().st_size}\0".encode())
        with open(member, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()

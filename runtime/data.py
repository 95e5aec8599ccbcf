"""Load preference pairs (prompt, chosen reply, rejected reply) from local files.

Entry point: :func:`load_pairs`. It returns a :class:`LoadResult` in which every input row is
accounted for: it became a :class:`Pair`, or an :class:`Exclusion` with a reason. Nothing is
dropped silently (``usable + excluded == input_rows``).

Files
-----
``.jsonl`` and ``.jsonl.gz`` (JSON Lines, read line by line here, so one bad line is one
``undecodable`` row, not a failed load; blank lines are not rows), ``.json`` (a JSON array of
objects; a ``.json`` file that holds JSON Lines is read as JSON Lines), ``.parquet`` and
``.csv`` (read with Hugging Face ``datasets``), or a folder written by
``datasets.Dataset.save_to_disk`` (read with ``datasets.load_from_disk``; a ``DatasetDict``
folder must have one split, or name the split's own folder). ``datasets`` is given a temporary
cache folder and ``keep_in_memory=True``, so loading leaves nothing under ``HF_HOME``; its
progress bars are switched off during a load and restored after.

Formats (recognised from the column names; the first that matches wins)
-----------------------------------------------------------------------
``trl``
    ``prompt``/``chosen``/``rejected``. ``prompt`` is a string (it becomes one user message) or
    a list of ``{"role", "content"}`` messages; ``chosen``/``rejected`` are strings or lists
    holding exactly one (assistant) message, whose content is the reply. Content given as a
    list of ``{"type": "text", "text": ...}`` parts is joined.
``hh-rlhf``
    ``chosen``/``rejected`` without ``prompt``: whole dialogue transcripts
    (``"\\n\\nHuman: …\\n\\nAssistant: …"``). The prompt is the longest common character prefix
    of the two, cut back to the end of the last ``"\\n\\nAssistant:"`` it contains; the two
    remainders, without leading whitespace, are the replies (a remainder can hold more than one
    turn). The prompt transcript is split into user (``Human:``) and assistant
    (``Assistant:``) messages, each stripped; text before the first turn marker, if any,
    becomes a ``system`` message. (When ``chosen``/``rejected`` hold message lists instead,
    this is trl's implicit-prompt form: the prompt is the longest common list of messages, and
    each side must have exactly one message after it; the format is then reported as ``trl``.)
``pandalm``
    ``response1``/``response2`` with annotator columns ``annotator1``, ``annotator2``, …
    (values ``0`` = tie, ``1`` = response1 better, ``2`` = response2 better, as in PandaLM's
    test set). The label that more than half of the annotators gave wins; label ``0`` or no
    such majority makes the row a ``tie``. The prompt is ``instruction``, plus
    ``"\\n\\n" + input`` when ``input`` is not blank (or ``prompt`` / ``question``).
``pairwise``
    a pair of responses, ``response_a``/``response_b``, ``answer_a``/``answer_b`` or
    ``response1``/``response2``, a label column ``label``, ``preference`` or ``winner`` (the
    first present), and a prompt column ``prompt`` (string or messages), ``instruction``
    (+ ``input``) or ``question``. Accepted label values (strings case- and
    space-insensitive):

    - first response better: ``"a"``, ``"model_a"``, ``"response_a"``, ``"answer_a"``,
      ``"response1"``;
    - second response better: ``"b"``, ``"model_b"``, ``"response_b"``, ``"answer_b"``,
      ``"response2"``;
    - tie: ``"tie"``, ``"tie (bothbad)"``, ``"draw"``, ``"equal"``, ``"same"``, ``"both"``,
      ``"neither"``;
    - integers (or digit strings, or integral floats) depend on how the responses are named:
      with ``*_a``/``*_b`` they are a 0-based index, ``0`` = a, ``1`` = b; with
      ``response1``/``response2`` they are PandaLM's ``1`` = response1, ``2`` = response2,
      ``0`` = tie.

    Any other value (booleans included) excludes the row as ``missing_field``.

Other columns of a row are kept in ``Pair.meta`` (for ``pairwise`` and ``pandalm`` that includes
the label or annotator columns, so the original side stays traceable).

Exclusion reasons (:data:`REASONS`)
-----------------------------------
A row gets the first that applies: decoding, then each field as it is read (``missing_field`` /
``not_text``), then the label (``tie``), then the blank-prompt check, ``identical``,
``empty_reply`` and ``too_long``.

``undecodable``
    a JSON Lines line that is not valid UTF-8, not valid JSON or not a JSON object (or an
    element of a JSON array that is not an object).
``missing_field``
    a needed field is absent or null (or, for hh-rlhf, the two transcripts share no
    ``"\\n\\nAssistant:"`` turn, so there is no prompt; or the prompt is blank; or a label
    value is not one of the accepted ones).
``not_text``
    a field has the wrong type: not a string, not a well-formed message list, or a reply list
    with other than one message.
``tie``
    the label says neither response is better (or the annotators have no majority).
``identical``
    chosen == rejected (exactly, after extraction).
``empty_reply``
    chosen or rejected is empty or only whitespace.
``too_long``
    prompt contents + chosen + rejected exceed ``max_chars`` characters.

With ``strict=True`` the first exclusion raises :class:`DataError` instead.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DATA",
    "EXTENSIONS",
    "FORMATS",
    "REASONS",
    "DataError",
    "Exclusion",
    "LoadResult",
    "Message",
    "Pair",
    "load_pairs",
    "messages_to_text",
]

REASONS: tuple[str, ...] = (
    "missing_field",
    "identical",
    "empty_reply",
    "tie",
    "not_text",
    "undecodable",
    "too_long",
)
"""Every reason code an :class:`Exclusion` can carry."""

FORMATS: tuple[str, ...] = ("hh-rlhf", "trl", "pairwise", "pandalm")
"""The recognised dataset formats (the values of :attr:`LoadResult.format`)."""

EXTENSIONS: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
"""File name endings :func:`load_pairs` reads (besides a saved ``datasets`` folder)."""

DEFAULT_DATA: Path = (
    Path(__file__).resolve().parent.parent / "specs" / "data" / "hh-rlhf-helpful-base-test-400.jsonl.gz"
)
"""The embedded sample: the first 400 rows of Anthropic hh-rlhf helpful-base test (MIT)."""

DEFAULT_SOURCE = "embedded sample"

_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}

_PROMPT_FIELDS = ("prompt", "instruction", "question")
_RESPONSE_PAIRS = (("response_a", "response_b"), ("answer_a", "answer_b"), ("response1", "response2"))
_LABEL_FIELDS = ("label", "preference", "winner")
_ANNOTATOR = re.compile(r"annotator\d+")
_LABEL_A = frozenset({"a", "model_a", "response_a", "answer_a", "response1"})
_LABEL_B = frozenset({"b", "model_b", "response_b", "answer_b", "response2"})
_LABEL_TIE = frozenset({"tie", "tie (bothbad)", "draw", "equal", "same", "both", "neither"})


class DataError(Exception):
    """A dataset cannot be loaded (or, with ``strict=True``, has a bad row).

    The message is meant for users as is: it names the path and what is wrong.
    """


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class Pair:
    """One usable preference pair."""

    id: str
    """Stable row id: the 0-based index of the input row, as a string."""
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """The row's other columns (not compared, not hashed)."""


@dataclass(frozen=True)
class Exclusion:
    """An input row that did not become a pair, and why."""

    row: int
    """0-based index of the input row."""
    reason: str
    """One of :data:`REASONS`."""
    detail: str
    """Short human explanation, e.g. ``"missing field 'rejected'"``."""


@dataclass
class LoadResult:
    """Everything :func:`load_pairs` read: pairs, exclusions and where they came from."""

    pairs: list[Pair]
    exclusions: list[Exclusion]
    input_rows: int
    format: str
    """One of :data:`FORMATS`."""
    source: str
    """The path as given, or ``"embedded sample"``."""
    fingerprint: str
    """sha256 hex of ``f"{content_sha256}:limit={limit}:max_chars={max_chars}"``, where the
    content hash is over the file's bytes (for a folder: over its sorted relative paths, sizes
    and bytes)."""

    def counts(self) -> dict[str, Any]:
        """``{"input": n, "usable": n, "excluded": {reason: n}}``; only reasons that occur,
        sorted by name."""
        excluded = Counter(e.reason for e in self.exclusions)
        return {
            "input": self.input_rows,
            "usable": len(self.pairs),
            "excluded": dict(sorted(excluded.items())),
        }


def messages_to_text(prompt: Sequence[Message]) -> str:
    """Render messages as an hh-rlhf style transcript ending with an open assistant turn.

    ``user`` turns are written as ``Human:``, ``assistant`` turns as ``Assistant:``, other roles
    with their name capitalised; e.g. ``"\\n\\nHuman: Hi\\n\\nAssistant:"``.
    """
    names = {"user": "Human", "assistant": "Assistant"}
    turns = [f"\n\n{names.get(m.role, m.role.capitalize())}: {m.content}" for m in prompt]
    return "".join(turns) + _ASSISTANT


def load_pairs(
    path: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    strict: bool = False,
    max_chars: int = 20000,
) -> LoadResult:
    """Load preference pairs from ``path`` (default: :data:`DEFAULT_DATA`).

    ``limit=N`` reads only the first N input rows (counted before exclusion), so
    ``usable + excluded == input_rows == min(N, rows)``. ``strict=True`` raises
    :class:`DataError` at the first row that would be excluded. ``max_chars`` bounds the
    characters of prompt contents + chosen + rejected per pair.

    Raises :class:`DataError` for a missing path, an unsupported file type, an unreadable file,
    or columns that match no format (the message names the columns found and those expected).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, not {limit!r}")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise DataError(f"max_chars must be a positive integer, not {max_chars!r}")

    if path is None:
        file, source = DEFAULT_DATA, DEFAULT_SOURCE
    else:
        file, source = Path(path), os.fspath(path)
    if not file.exists():
        raise DataError(f"{source}: no such file or directory")

    rows = _read_rows(file, source, limit)
    columns = _columns(rows)
    fmt, convert = _detect(columns, rows, source)

    pairs: list[Pair] = []
    exclusions: list[Exclusion] = []
    for index, row in enumerate(rows):
        try:
            if isinstance(row, _Undecodable):
                raise _Reject("undecodable", row.detail)
            prompt, chosen, rejected, used = convert(row)
            _check(prompt, chosen, rejected, max_chars)
        except _Reject as reject:
            if strict:
                raise DataError(f"{source}: row {index}: {reject.reason}: {reject.detail}") from None
            exclusions.append(Exclusion(index, reject.reason, reject.detail))
            continue
        meta = {k: v for k, v in row.items() if k not in used}
        pairs.append(Pair(str(index), prompt, chosen, rejected, meta))

    digest = _content_sha256(file)
    fingerprint = hashlib.sha256(f"{digest}:limit={limit}:max_chars={max_chars}".encode()).hexdigest()
    return LoadResult(pairs, exclusions, len(rows), fmt, source, fingerprint)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for an input row that could not be decoded."""

    detail: str


_Row = dict[str, Any] | _Undecodable


class _Reject(Exception):
    """Raised while converting a row: the row is excluded for ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _read_rows(file: Path, source: str, limit: int | None) -> list[_Row]:
    """The first ``limit`` input rows of ``file`` (all when ``limit`` is None)."""
    if file.is_dir():
        return _read_saved_dataset(file, source, limit)
    name = file.name.lower()
    try:
        if name.endswith(".jsonl.gz"):
            with gzip.open(file, "rb") as stream:
                return _take(_jsonl_rows(stream), limit)
        if name.endswith(".jsonl"):
            with open(file, "rb") as stream:
                return _take(_jsonl_rows(stream), limit)
        if name.endswith(".json"):
            return _read_json(file, source, limit)
        if name.endswith(".parquet") or name.endswith(".csv"):
            return _read_tabular(file, source, limit)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{source}: cannot read the file: {exc}") from None
    raise DataError(
        f"{source}: unsupported file type; expected a file ending in {', '.join(EXTENSIONS)}, "
        "or a folder saved with datasets' save_to_disk"
    )


def _take(rows: Iterator[_Row], limit: int | None) -> list[_Row]:
    out: list[_Row] = []
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(row)
    return out


def _jsonl_rows(lines: Iterator[bytes]) -> Iterator[_Row]:
    """Decode JSON Lines one line at a time; blank lines are skipped (they are not rows)."""
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _Undecodable(f"line {number}: invalid UTF-8 at byte {exc.start}")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield _Undecodable(f"line {number}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if isinstance(value, dict):
            yield value
        else:
            yield _Undecodable(f"line {number}: a JSON {type(value).__name__}, not an object")


def _read_json(file: Path, source: str, limit: int | None) -> list[_Row]:
    """A ``.json`` file: a JSON array of objects, or JSON Lines under a ``.json`` name."""
    data = file.read_bytes()
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several JSON values: JSON Lines
            return _take(_jsonl_rows(iter(data.splitlines(keepends=True))), limit)
        raise DataError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise DataError(f"{source}: expected a JSON array of objects, found a JSON {type(value).__name__}")
    rows: list[_Row] = []
    for index, item in enumerate(value[:limit] if limit is not None else value):
        if isinstance(item, dict):
            rows.append(item)
        else:
            rows.append(_Undecodable(f"array element {index} is a JSON {type(item).__name__}, not an object"))
    return rows


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Switch off ``datasets`` progress bars for the duration, then restore the setting."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _read_tabular(file: Path, source: str, limit: int | None) -> list[_Row]:
    """Parquet or CSV through ``datasets``, with a throwaway cache and rows kept in memory."""
    import datasets

    reader = datasets.Dataset.from_parquet if file.name.lower().endswith(".parquet") else datasets.Dataset.from_csv
    try:
        with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="ethos-data-") as cache:
            dataset = reader(str(file), cache_dir=cache, keep_in_memory=True)
    except (OSError, ValueError, TypeError, datasets.exceptions.DatasetGenerationError) as exc:
        raise DataError(f"{source}: cannot read the file: {_first_line(exc)}") from None
    return _dataset_rows(dataset, limit)


def _read_saved_dataset(folder: Path, source: str, limit: int | None) -> list[_Row]:
    """A folder written by ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` of one split)."""
    import datasets

    try:
        with _quiet_datasets():
            loaded = datasets.load_from_disk(str(folder), keep_in_memory=True)
    except (OSError, ValueError) as exc:  # FileNotFoundError when it is not a dataset folder
        raise DataError(
            f"{source}: not a dataset folder saved with datasets' save_to_disk ({_first_line(exc)})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if len(splits) != 1:
            raise DataError(
                f"{source}: a DatasetDict with splits {', '.join(splits)}; name one split's folder, "
                f"e.g. {os.path.join(source, splits[0]) if splits else source}"
            )
        loaded = loaded[splits[0]]
    return _dataset_rows(loaded, limit)


def _dataset_rows(dataset: Any, limit: int | None) -> list[_Row]:
    size = len(dataset) if limit is None else min(limit, len(dataset))
    rows: list[_Row] = []
    for start in range(0, size, 1000):
        batch = dataset[start : min(start + 1000, size)]  # columns -> lists
        names = list(batch)
        rows.extend(dict(zip(names, values)) for values in zip(*(batch[n] for n in names)))
    return rows


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _content_sha256(file: Path) -> str:
    """sha256 of a file's bytes; for a folder, of its sorted relative paths, sizes and bytes."""
    digest = hashlib.sha256()
    files = sorted(p for p in file.rglob("*") if p.is_file()) if file.is_dir() else [file]
    for member in files:
        if file.is_dir():
            relative = member.relative_to(file).as_posix()
            digest.update(f"{relative}\0{member.stat().st_size}\0".encode())
        with open(member, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- formats

_Converted = tuple[tuple[Message, ...], str, str, frozenset[str]]
_Converter = Callable[[Mapping[str, Any]], _Converted]


def _columns(rows: Sequence[_Row]) -> list[str]:
    """Column names in first-seen order, over all decodable rows."""
    seen: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            seen.update(dict.fromkeys(row))
    return list(seen)


def _detect(columns: Sequence[str], rows: Sequence[_Row], source: str) -> tuple[str, _Converter]:
    """Pick the format from the column names (see the module docstring for the rules)."""
    cols = set(columns)
    prompt_field = next((f for f in _PROMPT_FIELDS if f in cols), None)
    pair = next((p for p in _RESPONSE_PAIRS if set(p) <= cols), None)
    label = next((f for f in _LABEL_FIELDS if f in cols), None)
    annotators = sorted((c for c in cols if _ANNOTATOR.fullmatch(c)), key=lambda c: int(c[9:]))

    if {"prompt", "chosen", "rejected"} <= cols:
        return "trl", _convert_trl
    if {"chosen", "rejected"} <= cols:
        first = next(
            (r["chosen"] for r in rows if isinstance(r, dict) and r.get("chosen") is not None), None
        )
        return ("trl" if isinstance(first, list) else "hh-rlhf"), _convert_transcripts
    if prompt_field and pair == ("response1", "response2") and annotators:
        return "pandalm", _pandalm_converter(prompt_field, annotators)
    if prompt_field and pair and label:
        return "pairwise", _pairwise_converter(prompt_field, pair, label)

    if not rows:
        raise DataError(f"{source}: no rows")
    if not columns:
        raise DataError(f"{source}: no decodable rows ({len(rows)} undecodable)")
    raise DataError(
        f"{source}: columns {', '.join(map(repr, columns))} match no known format; expected one of: "
        "trl (prompt, chosen, rejected); hh-rlhf (chosen, rejected transcripts); "
        "pandalm (instruction, response1, response2, annotator1..N); "
        "pairwise (prompt|instruction|question, response_a/response_b or answer_a/answer_b or "
        "response1/response2, label|preference|winner)"
    )


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(row: Mapping[str, Any], key: str) -> str:
    if key not in row:
        raise _Reject("missing_field", f"missing field {key!r}")
    value = row[key]
    if _is_missing(value):
        raise _Reject("missing_field", f"field {key!r} is null")
    if not isinstance(value, str):
        raise _Reject("not_text", f"field {key!r} is a {type(value).__name__}, not text")
    return value


def _present(row: Mapping[str, Any], key: str) -> Any:
    if key not in row:
        raise _Reject("missing_field", f"missing field {key!r}")
    if _is_missing(row[key]):
        raise _Reject("missing_field", f"field {key!r} is null")
    return row[key]


def _message(value: Any, key: str) -> Message:
    if not isinstance(value, Mapping):
        raise _Reject("not_text", f"field {key!r}: a message is a {type(value).__name__}, not an object")
    role, content = value.get("role"), value.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        if len(parts) == len(content) and all(isinstance(p, str) for p in parts):
            content = "".join(parts)
    if not isinstance(role, str) or not isinstance(content, str):
        raise _Reject("not_text", f"field {key!r}: a message needs a text 'role' and 'content'")
    return Message(role, content)


def _messages(value: Any, key: str) -> tuple[Message, ...]:
    if isinstance(value, str):
        return (Message("user", value),)
    if not isinstance(value, list):
        raise _Reject("not_text", f"field {key!r} is a {type(value).__name__}, not text or messages")
    return tuple(_message(item, key) for item in value)


def _reply(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if len(value) != 1:
            raise _Reject("not_text", f"field {key!r} holds {len(value)} messages, expected 1")
        return _message(value[0], key).content
    raise _Reject("not_text", f"field {key!r} is a {type(value).__name__}, not text or a message")


def _convert_trl(row: Mapping[str, Any]) -> _Converted:
    prompt = _messages(_present(row, "prompt"), "prompt")
    chosen = _reply(_present(row, "chosen"), "chosen")
    rejected = _reply(_present(row, "rejected"), "rejected")
    return prompt, chosen, rejected, frozenset({"prompt", "chosen", "rejected"})


def _convert_transcripts(row: Mapping[str, Any]) -> _Converted:
    """hh-rlhf string transcripts, or trl implicit-prompt message lists."""
    chosen, rejected = _present(row, "chosen"), _present(row, "rejected")
    used = frozenset({"chosen", "rejected"})
    if isinstance(chosen, list) and isinstance(rejected, list):
        return (*_split_conversations(chosen, rejected), used)
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise _Reject("not_text", f"field {key!r} is a {type(value).__name__}, not text")
    return (*_split_transcripts(chosen, rejected), used)


def _split_transcripts(chosen: str, rejected: str) -> tuple[tuple[Message, ...], str, str]:
    """hh-rlhf: prompt = common prefix cut back to its last ``\\n\\nAssistant:``."""
    common = len(os.path.commonprefix([chosen, rejected]))
    marker = chosen.rfind(_ASSISTANT, 0, common)
    if marker < 0:
        raise _Reject("missing_field", "the transcripts share no '\\n\\nAssistant:' turn, so there is no prompt")
    cut = marker + len(_ASSISTANT)
    return _parse_transcript(chosen[:cut]), chosen[cut:].lstrip(), rejected[cut:].lstrip()


def _parse_transcript(text: str) -> tuple[Message, ...]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` → user a, assistant b, user c."""
    messages: list[Message] = []
    marks = list(_TURN.finditer(text))
    head = text[: marks[0].start()].strip() if marks else text.strip()
    if head:
        messages.append(Message("system", head))
    for mark, following in zip(marks, [*marks[1:], None]):
        end = following.start() if following else len(text)
        content = text[mark.end() : end].strip()
        if following is None and mark.group(1) == "Assistant" and not content:
            break  # the open assistant turn the replies complete
        messages.append(Message(_ROLES[mark.group(1)], content))
    return tuple(messages)


def _split_conversations(chosen: list[Any], rejected: list[Any]) -> tuple[tuple[Message, ...], str, str]:
    """trl implicit prompt: the common leading messages are the prompt, one message follows."""
    chosen_messages = tuple(_message(m, "chosen") for m in chosen)
    rejected_messages = tuple(_message(m, "rejected") for m in rejected)
    common = 0
    while (
        common < min(len(chosen_messages), len(rejected_messages)) - 1
        and chosen_messages[common] == rejected_messages[common]
    ):
        common += 1
    for key, messages in (("chosen", chosen_messages), ("rejected", rejected_messages)):
        if len(messages) - common != 1:
            raise _Reject(
                "not_text",
                f"field {key!r} has {len(messages) - common} messages after the shared prompt, expected 1",
            )
    return chosen_messages[:common], chosen_messages[-1].content, rejected_messages[-1].content


def _prompt_from(row: Mapping[str, Any], prompt_field: str) -> tuple[tuple[Message, ...], set[str]]:
    """The prompt of a pairwise/PandaLM row; ``instruction`` takes a non-blank ``input`` along."""
    if prompt_field != "instruction":
        return _messages(_present(row, prompt_field), prompt_field), {prompt_field}
    text = _text(row, "instruction")
    extra = row.get("input")
    if isinstance(extra, str) and extra.strip():
        text = f"{text}\n\n{extra}"
    elif not _is_missing(extra) and not isinstance(extra, str):
        raise _Reject("not_text", f"field 'input' is a {type(extra).__name__}, not text")
    return (Message("user", text),), {"instruction", "input"}


def _as_int(value: Any) -> int | None:
    """An integer label from an int, an integral float or a digit string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _side(value: Any, key: str, one_based: bool) -> str:
    """``"a"``, ``"b"`` or ``"tie"`` from a label value (see the module docstring)."""
    number = _as_int(value)
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
    raise _Reject("missing_field", f"field {key!r} has {value!r}, not a recognised label")


def _pairwise_converter(prompt_field: str, pair: tuple[str, str], label: str) -> _Converter:
    one_based = pair == ("response1", "response2")

    def convert(row: Mapping[str, Any]) -> _Converted:
        prompt, used = _prompt_from(row, prompt_field)
        first, second = _text(row, pair[0]), _text(row, pair[1])
        side = _side(_present(row, label), label, one_based)
        if side == "tie":
            raise _Reject("tie", f"field {label!r} is {row[label]!r}: a tie")
        chosen, rejected = (first, second) if side == "a" else (second, first)
        return prompt, chosen, rejected, frozenset(used | set(pair))

    return convert


def _pandalm_converter(prompt_field: str, annotators: Sequence[str]) -> _Converter:
    def convert(row: Mapping[str, Any]) -> _Converted:
        prompt, used = _prompt_from(row, prompt_field)
        first, second = _text(row, "response1"), _text(row, "response2")
        votes = []
        for key in annotators:
            vote = _as_int(_present(row, key))
            if vote not in (0, 1, 2):
                raise _Reject("missing_field", f"field {key!r} has {row[key]!r}, not 0, 1 or 2")
            votes.append(vote)
        winner, count = Counter(votes).most_common(1)[0]
        if count * 2 <= len(votes):
            raise _Reject("tie", f"annotators split {votes}: no majority")
        if winner == 0:
            raise _Reject("tie", f"annotators {votes}: majority says tie")
        chosen, rejected = (first, second) if winner == 1 else (second, first)
        return prompt, chosen, rejected, frozenset(used | {"response1", "response2"})

    return convert


def _check(prompt: tuple[Message, ...], chosen: str, rejected: str, max_chars: int) -> None:
    """The checks every format shares, after the fields and the label were read."""
    if not any(m.content.strip() for m in prompt):
        raise _Reject("missing_field", "the prompt is empty")
    if chosen == rejected:
        raise _Reject("identical", "chosen and rejected are the same text")
    for key, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply.strip():
            raise _Reject("empty_reply", f"the {key} reply is empty")
    total = sum(len(m.content) for m in prompt) + len(chosen) + len(rejected)
    if total > max_chars:
        raise _Reject("too_long", f"{total} characters (prompt + chosen + rejected) > max_chars {max_chars}")

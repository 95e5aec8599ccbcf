"""The data model of a load: pairs, exclusions, the result, and the names every other module of
:mod:`ethos.runtime.data` shares (reason codes, formats, the error)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ethos.runtime.errors import EthosError

REASONS: tuple[str, ...] = (
    "missing_field",
    "identical",
    "empty_reply",
    "tie",
    "not_text",
    "undecodable",
    "too_long",
    "format_mismatch",
)
"""Every reason code an :class:`Exclusion` can carry."""

FORMATS: tuple[str, ...] = ("hh-rlhf", "trl", "pairwise", "pandalm", "rated")
"""The dataset formats (the values of :attr:`LoadResult.format`); ``rated`` comes only from a
column mapping with two scores."""

EXTENSIONS: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
"""File name endings :func:`~ethos.runtime.data.load_pairs` reads (besides a saved ``datasets``
folder and a Hub id)."""

DEFAULT_DATA: Path = (
    Path(__file__).resolve().parents[2] / "specs" / "data" / "hh-rlhf-helpful-base-test-400.jsonl.gz"
)
"""The embedded sample: the first 400 rows of Anthropic hh-rlhf helpful-base test (MIT)."""

DEFAULT_SOURCE = "embedded sample"

ASSISTANT = "\n\nAssistant:"


class DataError(EthosError):
    """A dataset cannot be loaded (or, with ``strict=True``, has a bad row).

    The message is meant for users as is: it names the path (or Hub id) and what is wrong. A
    column mapping that does not fit is a usage error (exit code 2).
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
    """0-based index of the input row (the ``row`` of apply's accounting)."""
    reason: str
    """One of :data:`REASONS`."""
    detail: str
    """Short human explanation, e.g. ``"missing field 'rejected'"``."""
    line: int | None = None
    """1-based line of the file where the row starts, for JSON Lines and JSON arrays; ``None``
    for the record formats (Parquet, CSV, ``datasets`` folders, Hub ids): see :attr:`record`."""
    preview: str = field(default="", compare=False)
    """The start of the row as read (at most ~200 characters), to find it by eye."""

    @property
    def record(self) -> int:
        """1-based number of the input row among the file's rows (blank lines are not rows)."""
        return self.row + 1

    @property
    def position(self) -> str:
        """``"line 12"`` where the file has lines, else ``"record 12"``."""
        return f"line {self.line}" if self.line is not None else f"record {self.record}"


@dataclass
class LoadResult:
    """Everything :func:`~ethos.runtime.data.load_pairs` read: pairs, exclusions and where they
    came from. ``len(pairs) + len(exclusions) == input_rows``."""

    pairs: list[Pair]
    exclusions: list[Exclusion]
    input_rows: int
    format: str
    """One of :data:`FORMATS`."""
    source: str
    """The path or Hub id as given, or ``"embedded sample"``."""
    fingerprint: str
    """sha256 hex of ``f"{content_sha256}:limit={limit}:max_chars={max_chars}"`` (plus
    ``f":columns={mapping}"`` when a column mapping was used), where the content hash is over
    the file's bytes (for a folder: over its sorted relative paths, sizes and bytes; for a Hub
    id: over the cached Arrow files of the split)."""
    mapping: dict[str, Any] | None = None
    """The column mapping used (``{"columns": {role: column}, "labels": {side: value},
    "origin": ...}``, plain JSON values), or ``None`` when the format was recognised."""
    split: str | None = None
    """The split asked for (a Hub dataset or a saved ``DatasetDict`` folder), else ``None``."""
    subset: str | None = None
    """The Hub dataset's subset (configuration) asked for, else ``None``."""

    def counts(self) -> dict[str, Any]:
        """``{"input": n, "usable": n, "excluded": {reason: n}}``; only reasons that occur,
        sorted by name."""
        excluded = Counter(e.reason for e in self.exclusions)
        return {
            "input": self.input_rows,
            "usable": len(self.pairs),
            "excluded": dict(sorted(excluded.items())),
        }

    @property
    def alarm(self) -> str | None:
        """``"all"`` when no input row is usable, ``"most"`` when more than half of the input
        rows were excluded, else ``None``. The command line warns loudly on ``"most"`` and fails
        on ``"all"``."""
        if self.input_rows and not self.pairs:
            return "all"
        if 2 * len(self.exclusions) > self.input_rows:
            return "most"
        return None

    def alarm_message(self) -> str | None:
        """One line saying how many rows were excluded and why, when :attr:`alarm` is set."""
        if self.alarm is None:
            return None
        share = len(self.exclusions) / self.input_rows
        why = ", ".join(f"{reason} {n}" for reason, n in self.counts()["excluded"].items())
        head = "every input row" if self.alarm == "all" else "most input rows"
        return (
            f"{self.source}: {head} excluded: {len(self.exclusions)} of {self.input_rows} "
            f"({share:.0%}): {why}"
        )


def messages_to_text(prompt: Sequence[Message]) -> str:
    """Render messages as an hh-rlhf style transcript ending with an open assistant turn.

    ``user`` turns are written as ``Human:``, ``assistant`` turns as ``Assistant:``, other roles
    with their name capitalised; e.g. ``"\\n\\nHuman: Hi\\n\\nAssistant:"``.
    """
    names = {"user": "Human", "assistant": "Assistant"}
    turns = [f"\n\n{names.get(m.role, m.role.capitalize())}: {m.content}" for m in prompt]
    return "".join(turns) + ASSISTANT

""":func:`load_pairs`: read the rows, decide how to read them (recognised format or column
mapping), and account for every row: a :class:`Pair`, or an :class:`Exclusion` with its reason
and position."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .accounting import value_preview
from .core import DEFAULT_DATA, DEFAULT_SOURCE, DataError, Exclusion, LoadResult, Pair
from .fields import Converter, Reject, is_missing
from .formats import Decision, check_pair, decide
from .hub import hub_id, read_hub
from .mapping import ColumnMapping, resolve_mapping
from .readers import Rows, Undecodable, content_sha256, read_file


def load_pairs(
    path: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    strict: bool = False,
    max_chars: int = 20000,
    columns: str | Mapping[str, str] | ColumnMapping | None = None,
    label_a: Any = None,
    label_b: Any = None,
    label_tie: Any = None,
    split: str | None = None,
    subset: str | None = None,
    mapping_file: bool = True,
) -> LoadResult:
    """Load preference pairs from ``path`` (default: :data:`DEFAULT_DATA`): a file, a folder
    saved with ``datasets``, or a Hugging Face Hub dataset id (``org/name``) from the cache.

    ``limit=N`` reads only the first N input rows (counted before exclusion), so
    ``usable + excluded == input_rows == min(N, rows)``. ``strict=True`` raises
    :class:`DataError` at the first row that would be excluded, naming its line (or record),
    counted from 1. ``max_chars`` bounds the characters of prompt contents + chosen + rejected
    per pair.

    ``columns`` maps roles to columns (``"prompt=question,a=answer_a,b=answer_b,label=pref"``,
    a dict, or a :class:`ColumnMapping`), with ``label_a``/``label_b``/``label_tie`` the label
    values; without it, ``<path>.ethos.toml`` beside the data is read when it exists (unless
    ``mapping_file=False``), else the format is recognised from the rows. ``split`` picks a
    split of a Hub dataset or of a saved ``DatasetDict`` folder; ``subset`` the Hub dataset's
    configuration.

    Raises :class:`DataError` for a missing path or uncached Hub id, an unsupported or unreadable
    file, columns that match no format, or a mapping that does not fit (exit code 2, listing the
    data's columns). A bad row is never an error (except with ``strict``): it is an exclusion.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, not {limit!r}", exit_code=2)
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise DataError(f"max_chars must be a positive integer, not {max_chars!r}", exit_code=2)
    for name, value in (("split", split), ("subset", subset)):
        if value is not None and (not isinstance(value, str) or not value):
            raise DataError(f"{name} must be a non-empty name, not {value!r}", exit_code=2)

    if path is None:
        file, source = DEFAULT_DATA, DEFAULT_SOURCE
    else:
        file, source = Path(path), os.fspath(path)
    repo = None
    if not file.exists():
        repo = hub_id(source) if path is not None else None
        if repo is None:
            raise DataError(f"{source}: no such file or directory")
    if subset is not None and repo is None:
        raise DataError(f"{source}: a subset is chosen only for a Hub dataset id", exit_code=2)
    on_disk = repo is None and path is not None and mapping_file
    mapping = resolve_mapping(columns, label_a=label_a, label_b=label_b, label_tie=label_tie,
                              data=file if on_disk else None)

    if repo is not None:
        rows, digest = read_hub(repo, source, subset=subset, split=split, limit=limit)
    else:
        rows, digest = read_file(file, source, limit, split), ""

    decision: Decision | None = None
    if mapping is None:
        decision = decide(rows, source)
        fmt, convert = decision.format, decision.convert
    else:
        fmt, convert = _mapped(mapping, rows, source)

    pairs: list[Pair] = []
    exclusions: list[Exclusion] = []
    for index, record in enumerate(rows.records):
        row = record.value
        try:
            if isinstance(row, Undecodable):
                raise Reject("undecodable", row.detail)
            mismatch = decision.mismatch(index) if decision is not None else None
            if mismatch is not None:
                raise Reject("format_mismatch", mismatch)
            prompt, chosen, rejected, used = convert(row)
            check_pair(prompt, chosen, rejected, max_chars)
        except Reject as reject:
            preview = row.preview if isinstance(row, Undecodable) else value_preview(row)
            exclusion = Exclusion(index, reject.reason, reject.detail, record.line, preview)
            if strict:
                raise DataError(f"{source}: {exclusion.position}: {reject.reason}: {reject.detail}") from None
            exclusions.append(exclusion)
            continue
        meta = {k: v for k, v in row.items() if k not in used}
        pairs.append(Pair(str(index), prompt, chosen, rejected, meta))

    digest = digest or content_sha256(file)
    key = f"{digest}:limit={limit}:max_chars={max_chars}"
    if mapping is not None:
        key += f":columns={mapping.canonical()}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()
    return LoadResult(pairs, exclusions, len(rows.records), fmt, source, fingerprint,
                      mapping.to_dict() if mapping is not None else None, split, subset)


def _mapped(mapping: ColumnMapping, rows: Rows, source: str) -> tuple[str, Converter]:
    """The format name and converter of a load through a column mapping."""
    if not rows.records:
        raise DataError(f"{source}: no rows")
    if not any(isinstance(r.value, dict) for r in rows.records):
        raise DataError(f"{source}: no decodable rows ({len(rows.records)} undecodable)")
    mapping.check_columns(rows.columns, source)
    fmt = mapping.format
    if mapping.shape == "preference" and "prompt" not in mapping.columns:
        key = mapping.columns["chosen"]
        first = next((r.value[key] for r in rows.records
                      if isinstance(r.value, dict) and not is_missing(r.value.get(key))), None)
        fmt = "trl" if isinstance(first, list) else "hh-rlhf"
    return fmt, mapping.converter()

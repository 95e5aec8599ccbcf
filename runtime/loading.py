"""The one way a command loads its preference data from :class:`~ethos.runtime.settings.DataSettings`
(``plan``, ``apply``, ``lock``, ``featurize``, ``audit``): :func:`load_data`.

It calls :func:`ethos.runtime.data.load_pairs` with the settings' options (limit, strict, column
mapping, label values, split, subset), writes the excluded rows to ``data.excluded`` when asked
(``--excluded FILE``), fails when every row was excluded and warns on stderr when most were.
"""

from __future__ import annotations

import sys
from typing import Any

from .data import DataError, load_pairs, write_excluded
from .settings import DataSettings


def load_data(data: DataSettings, command: str) -> Any:
    """The :class:`~ethos.runtime.data.LoadResult` of ``data`` for ``ethos <command>``.

    Raises :class:`~ethos.runtime.data.DataError` (exit 1) when no row is usable — after writing
    ``data.excluded``, so the user can see why — and for every bad option or path (the data
    library's messages and exit codes). When more than half the rows are excluded it prints
    ``ethos <command>: warning: …`` to stderr and goes on."""
    result = load_pairs(data.path, **data.load_options())
    if data.excluded:
        write_excluded(result, data.excluded)
    if not result.input_rows:
        raise DataError(f"{result.source}: no rows; nothing to {command}")
    if not result.pairs:
        why = ", ".join(f"{reason} {n}" for reason, n in result.counts()["excluded"].items())
        raise DataError(f"{result.source}: all {result.input_rows} input rows were excluded ({why}); "
                        f"nothing to {command}" + _listed(data))
    if result.alarm == "most":
        print(f"ethos {command}: warning: {result.alarm_message()}" + _listed(data), file=sys.stderr, flush=True)
    return result


def _listed(data: DataSettings) -> str:
    return f"; listed in {data.excluded}" if data.excluded else "; list them with --excluded FILE"


def data_entry(result: Any, data: DataSettings) -> dict[str, Any]:
    """How a document records the data a run read, so the run can be reproduced: its source,
    fingerprint, the ``--limit``, and the column mapping, split and subset used (None when not)."""
    return {"source": data.source, "fingerprint": result.fingerprint, "limit": data.limit,
            "mapping": result.mapping, "split": result.split, "subset": result.subset}

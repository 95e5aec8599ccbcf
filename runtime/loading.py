"""How a command loads its inputs: the policy (compiled, or a plan saved by ``ethos plan
--save``) and the preference data of its :class:`~ethos.runtime.settings.DataSettings`.

- :func:`load_data` — the one way every command (``plan``, ``apply``, ``lock``, ``featurize``,
  ``audit``) loads its data: :func:`ethos.runtime.data.load_pairs` with the settings' options
  (limit, strict, column mapping, label values, split, subset), the excluded rows written to
  ``data.excluded`` when asked (``--excluded FILE``), a failure when every row was excluded and a
  warning on stderr when most were.
- :func:`load_inputs` — the policy and the data of ``plan``, ``apply`` and ``lock``, checked
  against each other (a saved plan only applies to the data it was made on).

Light on purpose (the compiler and the data library only): ``ethos lock`` imports no statistics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ethos.compiler.plan import Plan

from .data import DataError, load_pairs, write_excluded
from .documents import SAVED_PLAN_KIND
from .errors import EthosError
from .settings import DataSettings


class PlanError(EthosError):
    """A clear, expected failure (bad input, stale lock, unwritable output): one line, exit 1.
    (Also importable from :mod:`ethos.runtime.planner`.)"""


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


def load_policy_or_plan(path: str) -> tuple[Plan | None, dict[str, Any] | None, list]:
    """A policy file (compiled) or a saved plan file (``ethos plan --save``). Returns (plan, saved
    document or None, diagnostics)."""
    import json

    from ethos.compiler.compile import compile_file
    from ethos.compiler.plan import load_plan

    p = Path(path)
    if p.suffix == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"cannot read saved plan {path}: {e}") from e
        if not isinstance(doc, dict) or doc.get("kind") != SAVED_PLAN_KIND:
            raise PlanError(f"{path} is not a saved plan (write one with `ethos plan POLICY --save FILE`)")
        try:
            plan = load_plan(json.dumps(doc["plan"]))
        except (ValueError, KeyError) as e:
            raise PlanError(f"{path}: {e}") from e
        return plan, doc, []
    result = compile_file(path)
    return result.plan, None, result.diagnostics


@dataclass
class Inputs:
    """A policy's plan and its loaded data (nothing scored yet)."""

    plan: Plan
    policy_path: str | None  # None for a saved plan
    data: Any  # LoadResult
    data_source: str


def load_inputs(policy: str | Path, data: DataSettings = DataSettings(), *, command: str = "plan") -> Inputs:
    """Compile ``policy`` (or load a plan saved by ``ethos plan --save``) and load the data
    (:func:`load_data`). Diagnostics of the policy go to stderr as the compiler renders them.
    Raises ``EthosError`` (:class:`PlanError` for a policy with errors or a saved plan made on other data)."""
    from ethos.compiler.errors import render_all

    policy = str(policy)
    plan, saved, diags = load_policy_or_plan(policy)
    if plan is None:
        print(render_all(diags), file=sys.stderr)
        raise PlanError(f"{policy} has errors")
    if diags:
        print(render_all(diags), file=sys.stderr)
    # a DataError (an EthosError) propagates as is
    loaded = load_data(data, command)
    if saved is not None and saved.get("data", {}).get("fingerprint") != loaded.fingerprint:
        raise PlanError(
            f"the saved plan {policy} was made on other data (fingerprint "
            f"{str(saved.get('data', {}).get('fingerprint'))[:12]}…, this data {loaded.fingerprint[:12]}…); "
            f"apply it to the same data and --limit, or plan again")
    return Inputs(plan, None if saved is not None else policy, loaded, data.source)

"""Every JSON document ethos writes: its kind and format version, owned here.

Producers (audit, featurize, planner, apply, trainer, evaluate, lock, sae) stamp their documents
with these constants; the renderers in ``report/`` and every reader check them from here, so no
module imports a format constant from the module that produces the document.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import EthosError

AUDIT_FORMAT = "ethos.audit/1"  # ethos audit --json, audit.json
FEATURIZE_FORMAT = 1  # the featurize table: table.attrs["ethos"]["format"] (parquet metadata key ethos.featurize)
PLAN_REPORT_FORMAT = 1  # ethos plan --json, plan.json (the dry-run document)
SAVED_PLAN_KIND = "ethos-saved-plan"  # ethos plan --save FILE
SAVED_PLAN_FORMAT = PLAN_REPORT_FORMAT
TRAIN_CONFIG_FORMAT = PLAN_REPORT_FORMAT  # train.json written by ethos apply
TRAIN_RECORD_KIND = "ethos-train"  # train.json written by ethos train
TRAIN_RECORD_FORMAT = 1
EVALUATE_FORMAT = 1  # evaluate.json
LOCK_FORMAT = 1  # ethos.lock
SAE_META_FORMAT = 1  # ethos-sae.json beside an SAE, and latent label files
POLICY_FORMAT_VERSION = "1"  # the compiled Plan's format_version (ethos.compiler.plan.FORMAT_VERSION)


class DocumentError(EthosError):
    """A document is not of the kind or format version this ethos reads."""


def check_format(doc: Mapping[str, Any], expected: Any, what: str, *, key: str = "format") -> None:
    """Refuse a document whose ``key`` is not ``expected``, naming both."""
    found = doc.get(key) if isinstance(doc, Mapping) else None
    if found != expected:
        raise DocumentError(f"{what}: format {found!r} is not supported (this ethos reads {expected!r})")

# The fate of an input pair in the plan/apply accounting (the plan document's vocabulary).
FATES = ("kept", "reweighted", "relabelled", "excluded")


def concepts_by_share(concepts: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The order an audit document's concepts are shown in (reports, the terminal summary, the
    draft policy): by share, largest first; concepts without a share last, by |d|."""

    def key(c: Mapping[str, Any]) -> tuple[int, float]:
        s, d = c.get("share"), c.get("d")
        if _finite(s):
            return (0, -s)
        return (1, -abs(d) if _finite(d) else 0.0)

    return sorted(concepts, key=key)


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def clean(x: Any) -> Any:
    """JSON-safe: NaN/±inf → None, numpy scalars and bools → Python, tuples → lists, dict keys → str.
    (No numpy import: numpy's integer and floating types register as ``numbers.Integral`` /
    ``numbers.Real``; its bool is recognised by type.)"""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, bool) or _is_numpy_bool(x):
        return bool(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x) if math.isfinite(x) else None
    return x


def _is_numpy_bool(x: Any) -> bool:
    t = type(x)
    return t.__module__ == "numpy" and t.__name__ in ("bool", "bool_")

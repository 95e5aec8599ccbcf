"""ethos.lock: what a policy's names resolved to, so a policy in git means the same thing next month.

The lock sits beside the policy (``<folder>/ethos.lock``, one entry per policy file in that
folder) and pins, for each policy: the model (its sha256 fingerprint) and layer; every concept's
lens identity — SAE sha256 and latent ids for ``features``, the probe direction's sha256 for
``probe``, the word list's sha256 for ``lexicon``, the metric and tokenizer for ``metric``; and
the dataset fingerprint it was locked against. ``ethos plan`` and ``ethos apply`` compare the
current resolution with the lock and refuse a stale one unless ``--update-lock`` is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .io import atomic_write_text

LOCK_NAME = "ethos.lock"
FORMAT = 1


class StaleLock(Exception):
    """The lock pins something that resolves differently now."""


def lock_path(policy_path: str | Path) -> Path:
    return Path(policy_path).resolve().parent / LOCK_NAME


def entry_from_table(table: Any, data_source: str) -> dict[str, Any]:
    """The lock entry of one featurize run (its table's ``attrs["ethos"]``)."""
    meta = table.attrs.get("ethos", {})
    concepts = {}
    for name, info in sorted(meta.get("concepts", {}).items()):
        ident = dict(info.get("lens", {}))
        if info.get("direction_sha256"):
            ident["direction_sha256"] = info["direction_sha256"]
        ident["report"] = info.get("report")
        concepts[name] = ident
    return {
        "model": {"name": meta.get("model"), "sha256": meta.get("model_fingerprint"), "layer": meta.get("layer")},
        "concepts": concepts,
        "data": {"source": data_source, "fingerprint": meta.get("data_fingerprint")},
    }


def read_lock(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format": FORMAT, "policies": {}}
    except (OSError, json.JSONDecodeError) as e:
        raise StaleLock(f"{path} cannot be read ({e}); remove it or run with --update-lock") from e
    if doc.get("format") != FORMAT or not isinstance(doc.get("policies"), dict):
        raise StaleLock(f"{path} has an unknown format; run with --update-lock")
    return doc


def write_entry(policy_path: str | Path, entry: dict[str, Any]) -> Path:
    path = lock_path(policy_path)
    doc = read_lock(path) if path.exists() else {"format": FORMAT, "policies": {}}
    doc["policies"][Path(policy_path).name] = entry
    doc["policies"] = dict(sorted(doc["policies"].items()))
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            sub = f"{where}.{key}" if where else str(key)
            if key not in new:
                out.append(f"{sub}: locked but no longer resolved")
            elif key not in old:
                out.append(f"{sub}: not in the lock")
            else:
                out += _differences(old[key], new[key], sub)
        return out
    if old != new:
        short = lambda v: (v[:12] + "…") if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
        return [f"{where}: locked {short(old)!r}, now {short(new)!r}"]
    return []


def check(policy_path: str | Path, entry: dict[str, Any], *, update: bool) -> Path | None:
    """Compare ``entry`` with the policy's lock. No lock: nothing to check (``ethos lock`` makes
    one). A stale lock raises ``StaleLock`` listing every difference, unless ``update``, which
    rewrites the entry. Returns the lock's path when it was written."""
    path = lock_path(policy_path)
    if not path.exists():
        return write_entry(policy_path, entry) if update else None
    locked = read_lock(path)["policies"].get(Path(policy_path).name)
    if locked is None:
        return write_entry(policy_path, entry) if update else None
    diffs = _differences(locked, entry)
    if not diffs:
        return None
    if update:
        return write_entry(policy_path, entry)
    shown = "\n  ".join(diffs[:12]) + (f"\n  ... and {len(diffs) - 12} more" if len(diffs) > 12 else "")
    raise StaleLock(f"{path} is stale for {Path(policy_path).name}:\n  {shown}\n"
                    f"(run again with --update-lock to accept the new resolution)")

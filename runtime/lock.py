"""ethos.lock: what a policy's names resolved to, so a policy in git means the same thing next month.

The lock sits beside the policy (``<folder>/ethos.lock``, one entry per policy file in that
folder) and pins, for each policy: the model (the sha256 fingerprint of its weight, config and
tokenizer files) and layer; every concept's lens identity — SAE sha256 and latent ids for
``features``, the exemplar file's sha256 with the model and layer for ``probe`` (the direction
is a pure function of these), the word list's sha256 for ``lexicon``, the metric and tokenizer
for ``metric``; and the dataset it was locked against (its fingerprint from its bytes, and the
column mapping, split and subset when used).

:func:`resolve_entry` computes all of it without running the model (hashes of files, the
model's config for the layer), so ``ethos lock`` takes seconds; ``ethos plan`` and ``ethos
apply`` compute the same entry before featurizing, compare it with the lock and refuse a stale
one unless ``--update-lock`` is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .documents import LOCK_FORMAT
from .errors import EthosError
from .io import atomic_write_text
from .loading import PlanError, load_inputs
from .settings import DataSettings

LOCK_NAME = "ethos.lock"


class StaleLock(EthosError):
    """The lock pins something that resolves differently now."""


def lock_policy(policy: str | Path, data: DataSettings = DataSettings(), *, progress: bool = False) -> Path:
    """``ethos lock``: resolve every name of ``policy`` on ``data`` (:func:`resolve_entry`: the
    model's files, lexicon, probe and SAE hashes, the data's fingerprint from its bytes; nothing
    is scored, the model is not run) and pin it in the ethos.lock beside the policy; returns the
    lock's path. Raises ``EthosError`` (:class:`~ethos.runtime.loading.PlanError` for a saved
    plan: a lock belongs to a policy file)."""
    from .progress import stage

    with stage("resolving the policy's names", enabled=progress):
        inputs = load_inputs(policy, data, command="lock")
        if inputs.policy_path is None:
            raise PlanError(f"{policy} is a saved plan; lock the policy file it was made from")
        entry = resolve_entry(inputs.plan, inputs.data, inputs.data_source)
    return write_entry(inputs.policy_path, entry)


def lock_path(policy_path: str | Path) -> Path:
    return Path(policy_path).resolve().parent / LOCK_NAME


# Keys older locks pinned that are no longer part of an entry (the probe direction's sha256 is a
# function of the exemplar file's sha256, the model and the layer, which the entry pins).
RETIRED_KEYS = ("direction_sha256",)


def resolve_entry(plan: Any, data: Any, data_source: str) -> dict[str, Any]:
    """The lock entry of ``plan`` on the loaded ``data`` (a ``LoadResult``), without running the
    model: every lens is built (files read and hashed, SAE latents range-checked), the model
    folder is resolved and fingerprinted only when some concept needs the model or its
    tokenizer, and the layer comes from the plan, the SAE or the model's config, as featurize
    picks it. Raises ``EthosError`` (LensError, ModelError, ...) when a name does not resolve."""
    from .lenses import LensContext, build_lens
    from .model import model_fingerprint, resolve_model

    context = LensContext.for_plan(plan)
    lenses = {c.name: build_lens(c, context) for c in plan.concepts}
    needs = {lens.needs for lens in lenses.values()}
    folder = None
    model: dict[str, Any] = {"name": None, "sha256": None, "layer": None}
    if needs & {"tokenizer", "activations"}:
        from .hub import hub_snapshot

        folder = resolve_model(plan.model.name)
        context.model_fingerprint = model_fingerprint(folder)
        if "activations" in needs:
            context.layer = _layer(folder, plan.model.layer, lenses)
        model = {"name": plan.model.name, "sha256": context.model_fingerprint, "layer": context.layer}
        snapshot = hub_snapshot(folder)
        if snapshot is not None:  # a Hub id resolved through the Hugging Face cache: pin the commit too
            model["repo_id"], model["revision"] = snapshot
    concepts = {name: {**lens.to_dict(), "report": lens.report} for name, lens in sorted(lenses.items())}
    entry_data = {"source": data_source, "fingerprint": data.fingerprint}
    for key in ("mapping", "split", "subset"):  # only when used, so older locks stay valid
        if getattr(data, key, None) is not None:
            entry_data[key] = getattr(data, key)
    return {
        "model": model,
        "concepts": concepts,
        "data": entry_data,
    }


def _layer(folder: Path, requested: int | None, lenses: dict[str, Any]) -> int:
    """The layer activation lenses read: the plan's, else the SAE's own, else the model's
    default (its config's ``num_hidden_layers // 2``); an SAE of another layer is an error.
    (The same rule featurize applies before it loads the model.)"""
    from .model import ModelError, check_layer

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder / 'config.json'} cannot be read: {e}") from None
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config["num_hidden_layers"] = config["text_config"].get("num_hidden_layers")
    sae_layers = {getattr(lens, "layer", None) for lens in lenses.values() if lens.kind == "features"} - {None}
    if len(sae_layers) > 1:
        raise ModelError(f"the SAE's layers disagree: {sorted(sae_layers)}")
    if requested is None and sae_layers:
        requested = next(iter(sae_layers))
    layer = check_layer(_Config(config), requested)
    if sae_layers and layer not in sae_layers:
        raise ModelError(f"the SAE reads layer {next(iter(sae_layers))} but the plan reads layer {layer}")
    return layer


class _Config:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def read_lock(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format": LOCK_FORMAT, "policies": {}}
    except (OSError, json.JSONDecodeError) as e:
        raise StaleLock(f"{path} cannot be read ({e}); remove it or run with --update-lock") from e
    if doc.get("format") != LOCK_FORMAT or not isinstance(doc.get("policies"), dict):
        raise StaleLock(f"{path} has an unknown format; run with --update-lock")
    return doc


def write_entry(policy_path: str | Path, entry: dict[str, Any]) -> Path:
    path = lock_path(policy_path)
    doc = read_lock(path) if path.exists() else {"format": LOCK_FORMAT, "policies": {}}
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


def _current_keys(entry: Any) -> Any:
    """A locked entry without the keys this ethos no longer pins (:data:`RETIRED_KEYS`)."""
    if isinstance(entry, dict):
        return {k: _current_keys(v) for k, v in entry.items() if k not in RETIRED_KEYS}
    return entry


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
    diffs = _differences(_current_keys(locked), entry)
    if not diffs:
        return None
    if update:
        return write_entry(policy_path, entry)
    shown = "\n  ".join(diffs[:12]) + (f"\n  ... and {len(diffs) - 12} more" if len(diffs) > 12 else "")
    raise StaleLock(f"{path} is stale for {Path(policy_path).name}:\n  {shown}\n"
                    f"(run again with --update-lock to accept the new resolution)")

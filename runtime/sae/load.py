"""Finding and loading SAEs: the one place a name (``default``, a cached name, a folder) becomes an
SAE folder and an sae-lens SAE, and where an SAE meets the model runtime at its layer.

A name resolves to: a folder holding ``cfg.json`` (sae-lens format); else
``$ETHOS_CACHE/saes/<name>/``; else, for ``default``, the SAE shipped in ``specs/saes/default/``
(docs/sae.md); else a name with a slash is an sae-lens release and id (``release/sae_id``) or a
Hub repo and folder (``org/repo/folder``), resolved through :mod:`ethos.runtime.hub`. An SAE is
always used in float32 (its weights may be stored bf16), on the model's device: :func:`load_sae`
puts it on the default device (:mod:`ethos.runtime.device`) unless told otherwise, and
:func:`sae_runtime` / :func:`sae_on` move it to the device of the model runtime it meets.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ethos.compiler.names import DEFAULT_MODEL, DEFAULT_SAE, LIBRARY_ROOT

import torch

from ..device import module_device, resolve_device
from ..errors import EthosError
from ..hub import HubError, PretrainedSae, check_sae_fits, load_pretrained_sae, pretrained_sae_info, resolve_sae_id
from ..model import ModelRuntime, cache_root, layer_of_hook, load_model, model_runtime, text_config

SHIPPED_DEFAULT = LIBRARY_ROOT / "saes" / DEFAULT_SAE
"""The default SAE shipped in the repository (SmolLM2-135M-Instruct, layer 15)."""
META_FILE = "ethos-sae.json"


class SAEError(EthosError):
    """An SAE cannot be trained, found or used as asked; the message is meant for the user."""


def find_sae(name: str | os.PathLike[str] | PretrainedSae) -> Path | PretrainedSae:
    """The folder of an SAE named in a policy or on the command line, or the sae-lens release and
    id a name with a slash means (see the module docstring)."""
    if isinstance(name, PretrainedSae):
        return name
    name = os.fspath(name)
    path = Path(name).expanduser()
    if (path / "cfg.json").is_file():
        return path
    if "/" not in name and name not in ("", ".", ".."):
        named = cache_root() / "saes" / name
        if (named / "cfg.json").is_file():
            return named
    if name == DEFAULT_SAE:
        if (SHIPPED_DEFAULT / "cfg.json").is_file():
            return SHIPPED_DEFAULT
        raise SAEError(
            f"the default SAE is missing (looked in {cache_root() / 'saes' / DEFAULT_SAE} and {SHIPPED_DEFAULT}); "
            "rebuild it with the command in docs/sae.md, or name an SAE folder in the policy (sae \"path/to/sae\";)"
        )
    if "/" in name:
        try:
            return resolve_sae_id(name)
        except HubError as exc:
            raise SAEError(str(exc)) from None
    raise SAEError(f"unknown SAE {name!r}: name a folder with cfg.json (sae-lens format) or an SAE in {cache_root() / 'saes'}")


def sae_info(folder: Path | PretrainedSae) -> dict[str, Any]:
    """``d_in``, ``d_sae``, the layer it reads (if its hook name says) and a sha256 of its files,
    from ``cfg.json`` alone (no weights loaded); for a release SAE also its release, id, repo and
    revision."""
    if isinstance(folder, PretrainedSae):
        try:
            return pretrained_sae_info(folder)
        except HubError as exc:
            raise SAEError(str(exc)) from None
    cfg = json.loads((folder / "cfg.json").read_text())
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name")
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors", ".pt")):
            h.update(p.name.encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return {
        "d_in": int(cfg["d_in"]),
        "d_sae": int(cfg["d_sae"]),
        "hook_name": hook,
        "layer": layer_of_hook(hook),
        "sha256": h.hexdigest(),
    }


def load_sae(name_or_folder: str | os.PathLike[str] | PretrainedSae, *, device: torch.device | str | None = None) -> Any:
    """The SAE named so (or in that folder) loaded with sae-lens, in float32, in eval mode, on
    ``device`` (default: :func:`ethos.runtime.device.default_device`, where models load too)."""
    from sae_lens import SAE

    path = find_sae(name_or_folder)
    try:
        where = str(resolve_device(device))
    except EthosError as exc:
        raise SAEError(str(exc)) from None
    if isinstance(path, PretrainedSae):
        try:
            return load_pretrained_sae(path.release, path.sae_id, device=where)
        except HubError as exc:
            raise SAEError(str(exc)) from None
    try:
        if where == "meta":  # no data to load onto: shapes only (the device tests)
            return sae_on(SAE.load_from_disk(path, device="cpu", dtype="float32").eval(), where)
        sae = SAE.load_from_disk(path, device=where, dtype="float32")
    except (OSError, ValueError, KeyError) as exc:
        raise SAEError(f"{path}: cannot load the SAE: {exc}") from None
    return sae.eval()


def read_meta(folder: Path | PretrainedSae) -> dict[str, Any]:
    """The SAE's ``ethos-sae.json`` (provenance, held-out rule, metrics); ``{}`` if absent (always
    for a release SAE)."""
    if not isinstance(folder, Path):
        return {}
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def sae_layer(sae: Any) -> int | None:
    """The layer (ethos numbering) an SAE reads, from its hook name, if recognisable."""
    return layer_of_hook(getattr(sae.cfg.metadata, "hook_name", None))


def sae_on(sae: Any, device: torch.device | str) -> Any:
    """``sae`` on ``device`` (moved in place when it is elsewhere; sae-lens's ``cfg.device`` follows)."""
    device = torch.device(device)
    if module_device(sae) != device:
        sae.to(device)
    return sae


def sae_runtime(sae: Any, model: str = DEFAULT_MODEL, runtime: ModelRuntime | None = None, *,
                batch_size: int = 8) -> ModelRuntime:
    """A :class:`ModelRuntime` at the SAE's layer: ``runtime`` when given (checked against the
    SAE), else ``model`` loaded and read at the SAE's layer (the model's default layer when the
    SAE's hook name does not say). The SAE is moved to the runtime's device."""
    layer = sae_layer(sae)
    if runtime is not None:
        if layer is not None and runtime.layer != layer:
            raise SAEError(f"the SAE reads layer {layer}, the model runtime reads layer {runtime.layer}")
        if runtime.encoder.d_model != sae.cfg.d_in:
            raise SAEError(f"the SAE has d_in {sae.cfg.d_in}, the model's layer has {runtime.encoder.d_model}")
        sae_on(sae, runtime.device)
        return runtime
    loaded, tokenizer, fingerprint = load_model(model)
    hidden = int(text_config(loaded.config).hidden_size)
    if hidden != sae.cfg.d_in:
        raise SAEError(f"the SAE has d_in {sae.cfg.d_in}, model {model} has d_model {hidden}")
    runtime = model_runtime(loaded, tokenizer=tokenizer, layer=layer, fingerprint=fingerprint, name=str(model),
                            batch_size=batch_size)
    try:
        check_sae_fits(sae, loaded.config, runtime.layer, model_name=f"model {model}")
    except HubError as exc:
        raise SAEError(str(exc)) from None
    sae_on(sae, runtime.device)
    return runtime

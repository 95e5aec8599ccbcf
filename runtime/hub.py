"""Models and SAEs by the names people use, and the decoder blocks of any causal LM.

- **Models by Hub id.** :func:`resolve_model_id` turns ``org/name`` into a :class:`ResolvedModel`:
  the snapshot folder in the Hugging Face cache, the commit hash it holds and a sha256 of its
  weights. A model already in the cache is used as it is, without asking the Hub (so it works
  offline); one that is not is downloaded into the cache (``config.json``, tokenizer files and
  safetensors weights only) unless ``HF_HUB_OFFLINE`` is set, in which case the error names the id,
  the cache and how to fetch it. The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub`` (read when called, not when imported).
- **SAEs by sae-lens release and id.** :func:`resolve_sae_id` turns ``release/sae_id`` (a release
  of sae-lens's ``pretrained_saes.yaml``) or ``org/repo/folder`` (an SAE folder in any Hub repo,
  sae-lens's own fallback) into a :class:`PretrainedSae`, and a local folder holding ``cfg.json``
  into its path. :func:`load_pretrained_sae` loads one with ``sae_lens.SAE.from_pretrained``
  (float32, eval mode), which reads the Hugging Face cache; :func:`pretrained_sae_info` gives its
  width, hook point, layer, revision and sha256 without loading weights. :func:`check_sae_fits`
  checks an SAE against a model's width and the layer a policy reads.
- **Layers.** :func:`decoder_stack` finds the decoder (the module whose forward returns
  ``last_hidden_state``) and its list of blocks in Llama, Qwen2/3, Gemma 1-3 (text and
  multimodal), Mistral, Phi-3, OLMo-2, SmolLM, GPT-NeoX, GPT-2 and OPT style models, through PEFT
  and DDP wrappers; :func:`decoder_layers` is the list alone. Layer ``L`` is the output of block
  ``L``: ``output_hidden_states[L + 1]`` for every block but the last (the last entry of
  ``output_hidden_states`` is after the final norm). :func:`layer_of_hook` reads the layer from an
  sae-lens hook name (``model.layers.L``, ``transformer.h.L``, ``blocks.L.hook_resid_post``,
  ``blocks.L.hook_resid_pre`` = ``L - 1``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EthosError

MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken")
"""What a model download fetches: config, tokenizer and safetensors weights (no .bin, .h5, ONNX, GGUF)."""

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubError(EthosError):
    """A model or SAE named by its Hub id or sae-lens release cannot be found, fetched or used."""


# ---------------------------------------------------------------------------------------------
# The Hugging Face cache


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids the Hub now."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub repo id ``org/name`` (callers check local folders first)."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name


def _say(message: str) -> None:
    print(f"ethos: {message}", file=sys.stderr, flush=True)


def _cached_snapshot(repo_id: str, revision: str | None, patterns: list[str] | tuple[str, ...]) -> Path | None:
    """The snapshot folder of ``repo_id`` in the hub cache, or None when the cache does not have it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=hub_cache(),
                                      allow_patterns=list(patterns), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        # ValueError: huggingface_hub rejects a malformed repo id the same way
        return None


def _download(repo_id: str, revision: str | None, patterns: list[str] | tuple[str, ...], what: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = hub_cache()
    _say(f"downloading {what} from the Hugging Face Hub into {cache}")
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=list(patterns)))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubError(
            f"{what}: cannot download it from the Hugging Face Hub into {cache}: {reason} "
            f"(check the id, HF_TOKEN for a gated repo, or fetch it with `hf download {repo_id}`)"
        ) from None


def _not_cached(what: str, repo_id: str, include: str | None = None) -> HubError:
    fetch = f"hf download {repo_id}" + (f" --include '{include}'" if include else "")
    return HubError(
        f"{what} is not in the Hugging Face cache ({hub_cache()}) and HF_HUB_OFFLINE is set, so it "
        f"cannot be downloaded; fetch it once with network access (`{fetch}`), point HF_HUB_CACHE or "
        "HF_HOME at a cache that has it, or name a local folder"
    )


def file_sha256(path: Path) -> str:
    """The sha256 of a file in the hub cache: the blob's name when the file links to an LFS blob
    (the cache names those by their sha256), else hashed."""
    if path.is_symlink():
        target = Path(os.readlink(path)).name
        if _SHA256.fullmatch(target):
            return target
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _digest(files: dict[str, str]) -> str:
    total = hashlib.sha256()
    for name in sorted(files):
        total.update(f"{name}\0{files[name]}\n".encode())
    return total.hexdigest()


# ---------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ResolvedModel:
    """A Hub model in the local cache: its snapshot ``folder`` (a normal model folder), the commit
    hash ``revision`` and ``weights_sha256`` over its safetensors files (``weights``: file → sha256)."""

    repo_id: str
    revision: str
    folder: Path
    weights_sha256: str
    weights: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, str]:
        """What a lock pins."""
        return {"repo_id": self.repo_id, "revision": self.revision, "weights_sha256": self.weights_sha256}


def _model_gaps(folder: Path) -> list[str]:
    """What a snapshot lacks to be loaded from safetensors (empty when complete)."""
    gaps = [] if (folder / "config.json").is_file() else ["config.json"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return [*gaps, f"a readable {index.name}"]
        gaps += [s for s in shards if not (folder / s).is_file()]
    elif not any(folder.glob("*.safetensors")):
        gaps.append("safetensors weights")
    return gaps


def resolve_model_id(repo_id: str, *, revision: str | None = None) -> ResolvedModel:
    """The Hub model ``repo_id`` (``org/name``) in the Hugging Face cache, downloaded first when it
    is not there and ``HF_HUB_OFFLINE`` is not set. Raises :class:`HubError` (exit 1) otherwise."""
    if not looks_like_hub_id(repo_id):
        raise HubError(f"{repo_id!r} is not a Hugging Face model id (org/name)")
    what = f"model {repo_id!r}" + (f" at revision {revision}" if revision else "")
    folder = _cached_snapshot(repo_id, revision, MODEL_FILES)
    if folder is None or _model_gaps(folder):
        if hub_offline():
            if folder is not None:
                raise HubError(
                    f"{what}: the cached snapshot {folder} lacks {', '.join(_model_gaps(folder))} and "
                    f"HF_HUB_OFFLINE is set; fetch it with network access (`hf download {repo_id}`)"
                )
            raise _not_cached(f"{what} (no local folder {repo_id} either)", repo_id)
        folder = _download(repo_id, revision, MODEL_FILES, what)
        if gaps := _model_gaps(folder):
            raise HubError(f"{what}: the Hub repo has no {', '.join(gaps)} (ethos loads safetensors weights only)")
    weights = {p.name: file_sha256(p) for p in sorted(folder.glob("*.safetensors"))}
    return ResolvedModel(repo_id, folder.name, folder, _digest(weights), weights)


def hub_snapshot(folder: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(repo_id, revision)`` when ``folder`` is a snapshot in a hub cache
    (``.../models--org--name/snapshots/<commit>``), else None."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if folder.parent.name != "snapshots" or not repo.startswith("models--"):
        return None
    parts = repo[len("models--"):].split("--")
    return ("/".join(parts), folder.name) if len(parts) == 2 else None


# ---------------------------------------------------------------------------------------------
# SAEs


@dataclass(frozen=True)
class PretrainedSae:
    """An SAE named by sae-lens release and id: ``path`` (a folder or file) in Hub repo ``repo_id``,
    loaded by the sae-lens converter ``converter``. For ``org/repo/folder`` names the release is
    the repo id itself (sae-lens's fallback for unregistered repos)."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    converter: str = "sae_lens"

    @property
    def spec(self) -> str:
        return f"{self.release}/{self.sae_id}"

    @property
    def patterns(self) -> list[str]:
        return [self.path, f"{self.path}/*"]


def _sae_directory() -> dict[str, Any]:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def resolve_sae_id(spec: str | os.PathLike[str]) -> Path | PretrainedSae:
    """A local SAE folder (holding ``cfg.json``), or the release and id an SAE name means:
    ``release/sae_id`` for a release in sae-lens's registry, ``org/repo/folder`` for any Hub repo."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if (path / "cfg.json").is_file():
        return path
    if path.is_dir():
        raise HubError(f"SAE folder {path} has no cfg.json (not an sae-lens SAE)")
    release, _, sae_id = text.partition("/")
    if not release or not sae_id:
        raise HubError(
            f"unknown SAE {text!r}: name a folder holding cfg.json, an sae-lens release and id "
            "(release/sae_id) or a Hub repo and folder (org/repo/folder)"
        )
    directory = _sae_directory()
    lookup = directory.get(release)
    if lookup is not None:
        if sae_id not in lookup.saes_map:
            ids = sorted(lookup.saes_map)
            shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
            raise HubError(f"sae-lens release {release!r} has no SAE {sae_id!r}; its ids include {shown}")
        return PretrainedSae(release, sae_id, lookup.repo_id, lookup.saes_map[sae_id], lookup.conversion_func or "sae_lens")
    parts = text.split("/")
    if len(parts) >= 3 and looks_like_hub_id("/".join(parts[:2])):
        repo = "/".join(parts[:2])
        return PretrainedSae(repo, "/".join(parts[2:]), repo, "/".join(parts[2:]))
    raise HubError(
        f"unknown SAE {text!r}: no folder {text} holding cfg.json, and {release!r} is not an sae-lens "
        "release (see sae_lens's pretrained_saes.yaml); for an SAE in a Hub repo give org/repo/folder"
    )


def _sae_snapshot(ref: PretrainedSae) -> Path:
    """The cached snapshot holding the SAE's files, downloaded first when allowed."""
    folder = _cached_snapshot(ref.repo_id, None, ref.patterns)
    if folder is None or not (folder / ref.path).exists():
        if hub_offline():
            raise _not_cached(f"SAE {ref.spec!r} (repo {ref.repo_id}, {ref.path})", ref.repo_id, f"{ref.path}/*")
        folder = _download(ref.repo_id, None, ref.patterns, f"SAE {ref.spec!r} (repo {ref.repo_id})")
        if not (folder / ref.path).exists():
            raise HubError(f"SAE {ref.spec!r}: the Hub repo {ref.repo_id} has no {ref.path}")
    return folder


def _sae_files_sha256(folder: Path, path: str) -> str:
    root = folder / path
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return _digest({p.relative_to(folder).as_posix(): file_sha256(p) for p in files})


def pretrained_sae_info(ref: PretrainedSae) -> dict[str, Any]:
    """``d_in``, ``d_sae``, ``hook_name``, ``layer`` (ethos numbering, None when the hook does not
    say), and what a lock pins — ``repo_id``, ``revision``, ``sha256`` of the SAE's files —
    from the cached config alone (no weights loaded)."""
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    folder = _sae_snapshot(ref)
    try:
        cfg = load_sae_config_from_huggingface(ref.release, ref.sae_id)
    except Exception as exc:  # noqa: BLE001 - sae-lens converters raise anything; the user gets one line
        raise HubError(f"SAE {ref.spec!r}: cannot read its config with sae-lens: {_one_line(exc)}") from None
    hook = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")
    return {
        "d_in": int(cfg["d_in"]),
        "d_sae": int(cfg["d_sae"]),
        "hook_name": hook,
        "layer": layer_of_hook(hook),
        "release": ref.release,
        "sae_id": ref.sae_id,
        "repo_id": ref.repo_id,
        "revision": folder.name,
        "sha256": _sae_files_sha256(folder, ref.path),
    }


def load_pretrained_sae(release: str, sae_id: str, *, device: str = "cpu") -> Any:
    """The SAE ``release/sae_id`` loaded by ``sae_lens.SAE.from_pretrained`` in float32, eval mode,
    from the Hugging Face cache (downloaded first when it is not cached and the Hub is allowed)."""
    ref = resolve_sae_id(f"{release}/{sae_id}")
    if not isinstance(ref, PretrainedSae):  # a local folder that happens to be called so
        raise HubError(f"{release}/{sae_id} is a local SAE folder; load it as a folder")
    _sae_snapshot(ref)
    from sae_lens import SAE

    try:
        sae = SAE.from_pretrained(ref.release, ref.sae_id, device=device, dtype="float32")
    except Exception as exc:  # noqa: BLE001 - see pretrained_sae_info
        raise HubError(f"SAE {ref.spec!r}: cannot load it with sae-lens: {_one_line(exc)}") from None
    return sae.eval()


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Layers


_STACK_PATHS = ("model.language_model", "model", "language_model", "gpt_neox", "transformer", "model.decoder", "decoder", "")
_LAYER_ATTRS = ("layers", "h")


@dataclass(frozen=True)
class DecoderStack:
    """A causal LM's decoder: ``module`` (called with ``input_ids``, ``attention_mask``, ... it
    returns ``last_hidden_state``), its blocks ``layers`` and their module ``path`` in the
    (unwrapped) model, so block ``L`` is ``f"{path}.{L}"`` — the hook name sae-lens uses."""

    module: Any
    layers: Any
    path: str

    def hook_name(self, layer: int) -> str:
        return f"{self.path}.{layer}"


def _unwrap(model: Any) -> Any:
    while True:
        if hasattr(model, "get_base_model"):  # PEFT
            inner = model.get_base_model()
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel") \
                and hasattr(model, "module"):
            inner = model.module
        else:
            return model
        if inner is model:
            return model
        model = inner


def decoder_stack(model: Any) -> DecoderStack:
    """The decoder and its blocks in ``model`` (see the module docstring for the families)."""
    from torch import nn

    model = _unwrap(model)
    for path in _STACK_PATHS:
        module = model
        for part in path.split(".") if path else ():
            module = getattr(module, part, None)
            if module is None:
                break
        if module is None:
            continue
        for attr in _LAYER_ATTRS:
            layers = getattr(module, attr, None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return DecoderStack(module, layers, f"{path}.{attr}" if path else attr)
    raise HubError(
        f"{type(model).__name__}: cannot find its decoder blocks (looked for "
        f"{', '.join(f'{p}.{a}' if p else a for p in _STACK_PATHS for a in _LAYER_ATTRS)}); ethos reads "
        "Llama, Qwen, Gemma, Mistral, Phi-3, OLMo, SmolLM, GPT-NeoX, GPT-2 and OPT style causal LMs"
    )


def decoder_layers(model: Any) -> Any:
    """The list (``nn.ModuleList``) of ``model``'s decoder blocks."""
    return decoder_stack(model).layers


def text_config(config: Any) -> Any:
    """The language model's part of a config (``text_config`` of a multimodal one), as an object
    with ``hidden_size`` and ``num_hidden_layers`` (a dict of ``config.json`` works too)."""
    if isinstance(config, dict):
        from types import SimpleNamespace

        inner = config.get("text_config")
        base = {**config, **inner} if isinstance(inner, dict) and "hidden_size" not in config else config
        return SimpleNamespace(**base)
    if hasattr(config, "get_text_config"):
        return config.get_text_config()
    inner = getattr(config, "text_config", None)
    return inner if inner is not None and not hasattr(config, "hidden_size") else config


_HOOK_PATTERNS = (
    (re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)$"), 0),
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.hook_resid_post$"), 0),
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.hook_resid_pre$"), -1),
)


def layer_of_hook(hook_name: str | None) -> int | None:
    """The layer (ethos numbering: the output of block ``L``) an sae-lens hook name reads, when it
    is the residual stream: ``model.layers.L``, ``gpt_neox.layers.L``, ``transformer.h.L`` and
    ``blocks.L.hook_resid_post`` are ``L``; ``blocks.L.hook_resid_pre`` is ``L - 1``. None otherwise."""
    if not hook_name:
        return None
    for pattern, shift in _HOOK_PATTERNS:
        m = pattern.search(hook_name)
        if m:
            return int(m.group(1)) + shift
    return None


def check_sae_fits(sae: Any, model_config: Any, layer: int | None = None, *,
                   sae_name: str = "the SAE", model_name: str = "the model") -> int | None:
    """Check that an SAE (an sae-lens SAE, or a dict with ``d_in`` and ``hook_name`` such as
    :func:`pretrained_sae_info` gives) reads the residual stream of this model: its ``d_in`` is the
    model's hidden size, its hook point a residual stream layer of the model and — when ``layer``
    (the policy's layer) is given — that layer. Returns the layer the SAE reads (``layer`` when its
    hook name does not say). Raises :class:`HubError` naming both sides."""
    if isinstance(sae, dict):
        d_in, hook = sae.get("d_in"), sae.get("hook_name")
    else:
        cfg = sae.cfg
        d_in = cfg.d_in
        hook = getattr(getattr(cfg, "metadata", None), "hook_name", None) or getattr(cfg, "hook_name", None)
    text = text_config(model_config)
    hidden, n = getattr(text, "hidden_size", None), getattr(text, "num_hidden_layers", None)
    if hidden is not None and int(d_in) != int(hidden):
        raise HubError(f"SAE {sae_name} does not fit {model_name}: the SAE's d_in is {d_in}, "
                       f"the model's hidden size is {hidden}")
    reads = layer_of_hook(hook)
    if hook and reads is None:
        raise HubError(f"SAE {sae_name} reads hook {hook!r}, which is not the residual stream after a "
                       "decoder block (ethos reads model.layers.L / blocks.L.hook_resid_post)")
    if reads is not None and n is not None and not 0 <= reads < int(n):
        raise HubError(f"SAE {sae_name} reads layer {reads} (hook {hook}), but {model_name} has layers 0..{int(n) - 1}")
    if reads is not None and layer is not None and reads != layer:
        raise HubError(f"SAE {sae_name} reads layer {reads} (hook {hook}), the policy reads layer {layer}; "
                       f"read layer {reads} or use an SAE trained on layer {layer}")
    return reads if reads is not None else layer

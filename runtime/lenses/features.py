"""The ``features`` lens: SAE latents (sae-lens format) on the residual stream at the layer.

For each latent of the concept, the latent's activation (``sae.encode`` of each reply token's
residual vector) is pooled over the reply's tokens, by mean and by max; the concept's score is
the sum over its latents of the pooled values (``sum_i mean_t z_ti`` and ``sum_i max_t z_ti``;
the concept's ``pool`` picks which is reported).

SAE names resolve in one place, :func:`resolve_sae`: a path to a folder with ``cfg.json``, or a
name looked up as ``$ETHOS_CACHE/saes/<name>/``; ``default`` falls back to the SAE shipped in
``specs/saes/default/`` (docs/sae.md). Latent ids are range-checked against the SAE's ``d_sae`` when the
lens is built, before any model is loaded, with the policy position in the message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ethos.compiler.names import DEFAULT_SAE, LIBRARY_ROOT

from ..model import cache_root, layer_of_hook
from . import Lens, LensContext, LensError, Scores, register_lens


def resolve_sae(name: str) -> Path:
    """The folder of an SAE named in a policy (see the module docstring)."""
    path = Path(name).expanduser()
    if (path / "cfg.json").is_file():
        return path
    if "/" not in name and name not in ("", ".", ".."):
        named = cache_root() / "saes" / name
        if (named / "cfg.json").is_file():
            return named
    if name == DEFAULT_SAE:
        shipped = LIBRARY_ROOT / "saes" / DEFAULT_SAE  # specs/saes/default, shipped with ethos
        if (shipped / "cfg.json").is_file():
            return shipped
        raise LensError(
            f"the default SAE is missing (looked in {cache_root() / 'saes' / DEFAULT_SAE} and {shipped}); "
            "rebuild it with the command in docs/sae.md, or name an SAE folder in the policy (sae \"path/to/sae\";)"
        )
    raise LensError(f"unknown SAE {name!r}: name a folder with cfg.json (sae-lens format) or an SAE in {cache_root() / 'saes'}")


def sae_info(folder: Path) -> dict[str, Any]:
    """``d_in``, ``d_sae``, the layer it reads (if its hook name says) and a sha256 of its files."""
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


@register_lens("features")
class FeaturesLens(Lens):
    needs = "activations"
    stats = ("mean", "max")

    def __init__(self, concept: Any, context: LensContext) -> None:
        super().__init__(concept, context)
        self.sae_name = context.sae
        self.folder = resolve_sae(self.sae_name)
        self.info = sae_info(self.folder)
        self.latents: tuple[int, ...] = tuple(concept.lens.latents)
        if not self.latents:
            raise LensError(f"concept {concept.name!r} names no latents")
        where = f"{concept.span}: " if concept.span is not None else f"concept {concept.name!r}: "
        for latent in self.latents:
            if not 0 <= latent < self.info["d_sae"]:
                raise LensError(
                    f"{where}latent {latent} is out of range for SAE '{self.sae_name}' (d_sae {self.info['d_sae']})"
                )
        self._sae: Any = None
        self._ids: torch.Tensor | None = None

    @property
    def layer(self) -> int | None:
        """The layer the SAE was trained on, if its cfg says."""
        return self.info["layer"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "features",
            "sae_sha256": self.info["sha256"],
            "latents": list(self.latents),
            "model": self.context.model_fingerprint,
            "layer": self.context.layer,
            "version": 1,
        }

    def prepare(self, context: LensContext) -> None:
        from sae_lens import SAE

        d_model = context.runtime.encoder.d_model
        if self.info["d_in"] != d_model:
            raise LensError(f"SAE '{self.sae_name}' has d_in {self.info['d_in']}, the model's layer has {d_model}")
        self._sae = SAE.load_from_disk(self.folder, device="cpu").eval()
        self._ids = torch.tensor(self.latents, dtype=torch.long)

    @torch.inference_mode()
    def score_activations(self, acts: Sequence[torch.Tensor]) -> list[Scores]:
        if self._sae is None or self._ids is None:
            raise LensError(f"features {self.concept.name!r} used before its SAE was loaded")
        lengths = [a.shape[0] for a in acts]
        if not acts or sum(lengths) == 0:
            return [{"mean": float("nan"), "max": float("nan")} for _ in acts]
        dtype = next(self._sae.parameters()).dtype
        z = self._sae.encode(torch.cat(list(acts)).to(dtype))[:, self._ids].float()
        out: list[Scores] = []
        for part in torch.split(z, lengths):
            if part.shape[0] == 0:
                out.append({"mean": float("nan"), "max": float("nan")})
            else:
                out.append({"mean": float(part.mean(dim=0).sum()), "max": float(part.max(dim=0).values.sum())})
        return out

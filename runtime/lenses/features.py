"""The ``features`` lens: SAE latents (sae-lens format) on the residual stream at the layer.

For each latent of the concept, the latent's activation (``sae.encode`` of each reply token's
residual vector) is pooled over the reply's tokens, by mean and by max; the concept's score is
the sum over its latents of the pooled values (``sum_i mean_t z_ti`` and ``sum_i max_t z_ti``;
the concept's ``pool`` picks which is reported).

SAE names resolve and SAEs load in one place, :mod:`ethos.runtime.sae.load` (:func:`find_sae`: a
path to a folder with ``cfg.json``, or a name looked up as ``$ETHOS_CACHE/saes/<name>/``;
``default`` falls back to the SAE shipped in ``specs/saes/default/``, docs/sae.md; :func:`load_sae`
loads it in float32, here on the model's device, where the latents are encoded and pooled:
:meth:`FeaturesLens.pool_activations` queues that work without waiting for the device, and the
scores cross to the host once per batch). Latent ids are range-checked against the SAE's ``d_sae`` when the lens is
built, before any model is loaded, with the policy position in the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..hub import HubError, check_sae_fits
from ..model import ReplyActivations, pool_segments_on_device, reply_tokens
from ..sae.load import SAEError, find_sae, load_sae, sae_info
from . import Lens, LensContext, LensError, register_lens

FEATURES_VERSION = 2
"""Bumped when the scores change for the same SAE, latents, model and layer (2: the SAE is used
in float32, as everywhere else; version 1 encoded in the SAE's stored dtype)."""


@register_lens("features")
class FeaturesLens(Lens):
    needs = "activations"
    stats = ("mean", "max")

    def __init__(self, concept: Any, context: LensContext) -> None:
        super().__init__(concept, context)
        self.sae_name = context.sae
        try:
            self.folder = find_sae(self.sae_name)
        except SAEError as exc:
            raise LensError(str(exc)) from None
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
            "version": FEATURES_VERSION,
        }

    def prepare(self, context: LensContext) -> None:
        runtime = context.runtime
        d_model = runtime.encoder.d_model
        if self.info["d_in"] != d_model:
            raise LensError(f"SAE '{self.sae_name}' has d_in {self.info['d_in']}, the model's layer has {d_model}")
        try:
            check_sae_fits(self.info, runtime.encoder.model.config, context.layer, sae_name=f"'{self.sae_name}'",
                           model_name=f"model {runtime.name}")
            self._sae = load_sae(self.folder, device=runtime.device)
        except (SAEError, HubError) as exc:
            raise LensError(str(exc)) from None
        self._ids = torch.tensor(self.latents, dtype=torch.long, device=runtime.device)

    @torch.inference_mode()
    def pool_activations(self, acts: ReplyActivations | Sequence[torch.Tensor]) -> torch.Tensor:
        if self._sae is None or self._ids is None:
            raise LensError(f"features {self.concept.name!r} used before its SAE was loaded")
        param = next(self._sae.parameters())
        x, lengths = reply_tokens(acts)
        if x is None or sum(lengths) == 0:
            return torch.full((len(lengths), 2), float("nan"), device=param.device)
        z = self._sae.encode(x.to(device=param.device, dtype=param.dtype))[:, self._ids.to(param.device)].float()
        return pool_segments_on_device(z, lengths)

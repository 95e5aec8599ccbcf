"""The ``probe`` lens: a direction in the residual stream from contrastive exemplars.

Exemplars are JSON lines ``{"prompt": str, "positive": str, "negative": str}``. Each exemplar's
prompt is the user turn and each of its two texts an assistant reply, rendered through the chat
template; a reply's activation is the mean of the residual stream at the layer over the reply's
own tokens. The direction is mean(positive) − mean(negative), scaled to unit norm (persona-vector
style difference of means), computed in float32.

Directions are cached under ``$ETHOS_CACHE/probes/`` keyed by (model fingerprint, layer, exemplar
file sha256) together with the sha256 of the direction's little-endian float32 bytes, which
``direction_sha256`` reports for the lock file.

Score of a reply = its tokens' projections on the direction, pooled over the reply's tokens
only: both the mean and the max are computed (and cached); the concept's ``pool`` picks one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import as_tensor, to_float, to_numpy
from ..model import ModelRuntime, ReplyActivations, cache_root, pool_segments_on_device, reply_tokens, say, tokenize_pair
from . import Lens, LensContext, LensError, register_lens

# What reading a damaged or foreign cached direction file can raise (it is then recomputed).
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)

DIRECTION_VERSION = 1


def read_exemplars(path: Path) -> list[tuple[str, str, str]]:
    """``(prompt, positive, negative)`` per line; a malformed line is an error naming it."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = (row["prompt"], row["positive"], row["negative"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LensError(f"{path}:{n}: expected {{\"prompt\", \"positive\", \"negative\"}} ({exc})") from None
        if not all(isinstance(x, str) for x in item):
            raise LensError(f"{path}:{n}: prompt, positive and negative must be strings")
        out.append(item)
    if not out:
        raise LensError(f"{path}: no exemplars")
    return out


def compute_direction(runtime: ModelRuntime, exemplars: Sequence[tuple[str, str, str]]) -> np.ndarray:
    """Unit-norm difference of means (positive − negative) of reply-mean activations."""
    items = [
        tokenize_pair(runtime.tokenizer, [{"role": "user", "content": p}], [pos, neg], max_tokens=runtime.max_tokens)
        for p, pos, neg in exemplars
    ]
    acts = runtime.encoder.encode(items, batch_size=runtime.batch_size)
    keep = [pair for pair in acts if pair[0].shape[0] and pair[1].shape[0]]
    if not keep:
        raise LensError("no exemplar has both a positive and a negative reply with tokens")
    # on the model's device; the direction crosses to the host once
    pos = torch.stack([pair[0].float().mean(dim=0) for pair in keep])
    neg = torch.stack([pair[1].float().mean(dim=0) for pair in keep])
    diff = pos.mean(dim=0) - neg.mean(dim=0)
    norm = to_float(diff.norm())
    if not np.isfinite(norm) or norm == 0.0:
        raise LensError("positive and negative exemplars give the same mean activation")
    return to_numpy(diff / norm, "<f4")


def direction_sha256(direction: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(direction, dtype="<f4").tobytes()).hexdigest()


@register_lens("probe")
class ProbeLens(Lens):
    needs = "activations"
    stats = ("mean", "max")

    def __init__(self, concept: Any, context: LensContext) -> None:
        super().__init__(concept, context)
        self.path = context.resolve_file(concept.lens.file)
        self.file_sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.exemplars = read_exemplars(self.path)
        self.direction: np.ndarray | None = None
        self._d: torch.Tensor | None = None

    def _cache_path(self) -> Path:
        ident = json.dumps(
            [self.context.model_fingerprint, self.context.layer, self.file_sha256, DIRECTION_VERSION]
        )
        return (self.context.cache_dir or cache_root()) / "probes" / (hashlib.sha256(ident.encode()).hexdigest() + ".npz")

    def to_dict(self) -> dict[str, Any]:
        # The direction is a pure function of these; its own sha256 is ``direction_sha256``.
        return {
            "kind": "probe",
            "file_sha256": self.file_sha256,
            "model": self.context.model_fingerprint,
            "layer": self.context.layer,
            "version": DIRECTION_VERSION,
        }

    @property
    def direction_sha256(self) -> str | None:
        """The sha256 of the direction's float32 bytes, if computed or cached."""
        if self.direction is not None:
            return direction_sha256(self.direction)
        path = self._cache_path()
        if path.is_file():
            try:
                with np.load(path) as data:
                    return str(data["sha256"])
            except _UNREADABLE:
                return None
        return None

    def prepare(self, context: LensContext) -> None:
        runtime: ModelRuntime = context.runtime
        path = self._cache_path()
        direction = None
        if path.is_file():
            try:
                with np.load(path) as data:
                    direction = data["direction"].astype("<f4")
                    if direction_sha256(direction) != str(data["sha256"]):
                        direction = None  # damaged: recompute
            except _UNREADABLE:
                say(f"cache: probe direction {path} could not be read; recomputing it")
                direction = None
        if direction is None:
            direction = compute_direction(runtime, self.exemplars)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, direction=direction, sha256=np.array(direction_sha256(direction)))
            os.replace(tmp, path)
        if direction.shape != (runtime.encoder.d_model,):
            raise LensError(f"{self.path}: cached direction has shape {direction.shape}")
        self.direction = direction
        self._d = as_tensor(direction, runtime.device, torch.float32)  # on the model's device

    @torch.inference_mode()
    def pool_activations(self, acts: ReplyActivations | Sequence[torch.Tensor]) -> torch.Tensor:
        if self._d is None:
            raise LensError(f"probe {self.concept.name!r} used before its direction was prepared")
        x, lengths = reply_tokens(acts)
        if x is None:
            return torch.zeros((0, 2), device=self._d.device)
        d = self._d if self._d.device == x.device else self._d.to(x.device)
        return pool_segments_on_device(x @ d, lengths)

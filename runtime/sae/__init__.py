"""Sparse autoencoders on the residual stream: what ``ethos sae train | eval | describe``, the
``features`` lens and the audit's discovery use (docs/sae.md).

- :mod:`.load` — the one SAE loader: :func:`find_sae` (a name: ``default``, a cached name, a
  folder), :func:`load_sae` (sae-lens, float32), :func:`sae_info`, :func:`read_meta`,
  :func:`sae_layer`, :func:`sae_runtime` (the model runtime at the SAE's layer, the SAE moved to
  its device) and :func:`sae_on`.
- :mod:`.store` — training data: text sources into token units (:func:`read_units`, the held-out
  rule :func:`is_held_out`), their activations (:func:`unit_activations`) in an on-disk
  :class:`ActivationStore`.
- :mod:`.train` — fitting with sae-lens (:func:`train_sae`, :func:`save_sae`) and the whole
  ``ethos sae train`` (:func:`train_and_save`).
- :mod:`.metrics` — evaluation on reply tokens (:func:`evaluate`; ``ethos sae eval`` is
  :func:`evaluate_data`).
- :mod:`.latents` — pooled latents per reply (:func:`reply_latents`, :func:`pooled_latents`),
  promoted tokens, labels (:func:`describe_latents`; ``ethos sae describe`` is
  :func:`describe_and_store`; :func:`load_labels`).

The command line lives in :mod:`ethos.runtime.cli.sae`.
"""

from __future__ import annotations

from .metrics import DENSE_THRESHOLD, eval_pairs, evaluate, evaluate_data, firing_counts
from .latents import (
    LABELS_DIR,
    MARK_CLOSE,
    MARK_OPEN,
    ReplyLatents,
    describe_and_store,
    describe_latents,
    labels_path,
    load_labels,
    pooled_latents,
    pooled_latents_both,
    promoted_tokens,
    reply_latents,
)
from .load import META_FILE, SHIPPED_DEFAULT, SAEError, find_sae, load_sae, read_meta, sae_info, sae_layer, sae_on, sae_runtime
from .store import (
    HOLDOUT,
    TEXT_FIELDS,
    ActivationStore,
    Source,
    Unit,
    activation_key,
    collect_activations,
    heldout_pairs,
    is_held_out,
    read_units,
    unit_activations,
    unit_batches,
)
from .train import TrainConfig, save_sae, train_and_save, train_sae

__all__ = [
    "DENSE_THRESHOLD",
    "HOLDOUT",
    "LABELS_DIR",
    "MARK_CLOSE",
    "MARK_OPEN",
    "META_FILE",
    "SHIPPED_DEFAULT",
    "TEXT_FIELDS",
    "ActivationStore",
    "ReplyLatents",
    "SAEError",
    "Source",
    "TrainConfig",
    "Unit",
    "activation_key",
    "collect_activations",
    "describe_and_store",
    "describe_latents",
    "eval_pairs",
    "evaluate",
    "evaluate_data",
    "firing_counts",
    "find_sae",
    "heldout_pairs",
    "is_held_out",
    "labels_path",
    "load_labels",
    "load_sae",
    "pooled_latents",
    "pooled_latents_both",
    "promoted_tokens",
    "read_meta",
    "read_units",
    "reply_latents",
    "sae_info",
    "sae_layer",
    "sae_on",
    "sae_runtime",
    "save_sae",
    "train_and_save",
    "train_sae",
    "unit_activations",
    "unit_batches",
]

"""Reward models under a plan: a small subclass of trl's ``RewardTrainer`` (trl pinned to 1.16),
and the loading of a trained reward model (``ethos evaluate`` measures its preference accuracy and
its slope on each concept: :func:`ethos.runtime.evaluate.reward_stats`).

A reward model r is a Bradley–Terry fit: P(y⁺ ≻ y⁻ | x) = σ(r(x, y⁺) − r(x, y⁻)). The plan's
per-pair numbers enter exactly as in DPO, with the margin m_i = r(x, y⁺) − r(x, y⁻):

    L = (1/n) Σ_i w_i · −log σ(m_i + o_i)

trl's RewardTrainer already subtracts a per-pair ``margin`` column from the reward difference, so
ethos hands it ``margin = −o`` (trl's own loss then carries the offset) and multiplies the per-pair
terms by ``w`` itself. ``ablation`` and ``steering`` act on the residual stream of the reward
model's decoder (the same hooks as the DPO trainer, :class:`ethos.runtime.trainer.ActivationHooks`),
in training passes only; ``via penalty`` is refused (it is defined on the reply's tokens, which
trl's reward batches do not mark).

How it hooks into trl 1.16 (``tests/runtime/test_reward.py`` guards it):

- ``compute_loss`` (public) pops ethos's per-pair tensors, sets ``margin``, calls
  ``super().compute_loss(..., return_outputs=True)`` and recomputes the per-pair loss from the
  rewards trl's forward returned; every step checks the recomputed unweighted loss equals trl's.
- ``training_step`` (public, via the mixin) arms the activation hooks.
- ``_set_signature_columns_if_needed`` (private; guarded) keeps the per-pair columns; the collator
  is :class:`RewardCollator`, a subclass of trl's reward ``DataCollatorForPreference`` (both
  through the DPO trainer's mixins, :class:`ethos.runtime.trainer.PairColumns` and
  :class:`ethos.runtime.trainer.PairTensors`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference as RewardDataCollator

from .settings import TrainSettings
from .trainer import (
    BATCH_OFFSET,
    BATCH_WEIGHT,
    ActivationHooks,
    ActivationRule,
    PairColumns,
    PairTensors,
    TrainerError,
    check_recomputed,
    check_trl,
    lora_config,
    quiet,
    trainer_args,
)


@dataclasses.dataclass
class RewardCollator(PairTensors, RewardDataCollator):
    """trl's reward collator, plus each pair's weight and margin offset (defaults 1 and 0)."""


class ShapedRewardTrainer(PairColumns, ActivationHooks, RewardTrainer):
    """``RewardTrainer`` with a plan's per-pair weights, margin offsets, ablation and steering."""

    def __init__(self, *args: Any, rules: Sequence[ActivationRule] = (), layer: int | None = None, **kwargs: Any):
        check_trl()
        penalties = [r for r in rules if r.protocol == "penalty"]
        if penalties:
            raise TrainerError(f"`via penalty` ({penalties[0].concept}) is realised for DPO only: it is defined on "
                               "the reply's tokens, which a reward model's batches do not mark")
        super().__init__(*args, **kwargs)
        if self.args.center_rewards_coefficient:
            raise TrainerError("ethos shapes the plain Bradley–Terry reward loss (no center_rewards_coefficient)")
        self._use_collator(RewardDataCollator, RewardCollator)
        self._handles = []
        self._install_rules(rules, layer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        weight = inputs.pop(BATCH_WEIGHT, None)
        offset = inputs.pop(BATCH_OFFSET, None)
        if offset is not None:
            inputs["margin"] = -offset  # trl: −log σ(r⁺ − r⁻ − margin)
        self._removed = []
        trl_loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        margin = inputs.get("margin")
        diff = chosen - rejected - margin if margin is not None else chosen - rejected
        per_pair = -F.logsigmoid(diff)
        check_recomputed(per_pair, trl_loss, "reward loss", "ethos.runtime.reward")
        n = per_pair.shape[0]
        w = weight.to(per_pair) if weight is not None else torch.ones(n, dtype=per_pair.dtype, device=per_pair.device)
        loss = (w * per_pair).mean()
        self._append_metrics(self._metrics[mode], {
            "ethos/reward_loss": per_pair.detach().mean(), "ethos/weighted_loss": loss.detach(),
            "ethos/weight_mean": w.mean(), "ethos/margin_offset_mean": offset.mean() if offset is not None else 0.0,
            **self._rule_metrics()})
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------------------
# A run (``ethos train --reward-model``)


def reward_config(settings: TrainSettings, output_dir: Path) -> RewardConfig:
    """trl's RewardConfig for ``settings``. Its ``max_length`` is None: trl would *drop* the pairs
    longer than that, which undoes the plan's weights (they balance the concepts over all pairs);
    ethos truncates them instead (:func:`tokenized`), as DPO's collator does."""
    s = settings.resolved()
    return RewardConfig(**{**trainer_args(s, output_dir), **dict(s.extra), "max_length": None}, disable_dropout=True)


def tokenized(dataset: Any, tokenizer: Any, max_length: int | None) -> tuple[Any, int]:
    """The dataset with trl's ``chosen_ids``/``rejected_ids`` (the chat template over prompt +
    reply, as trl's RewardTrainer tokenises), each cut to its first ``max_length`` tokens; and
    how many pairs were cut. trl skips its own tokenisation for a dataset that has these columns."""
    def encode(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side in ("chosen", "rejected"):
            ids = tokenizer.apply_chat_template([*row["prompt"], *row[side]], tokenize=True,
                                                return_dict=True)["input_ids"]
            out[f"{side}_ids"] = list(ids)
        out["ethos_cut"] = bool(max_length) and max(len(out["chosen_ids"]), len(out["rejected_ids"])) > max_length
        if max_length:
            out["chosen_ids"], out["rejected_ids"] = out["chosen_ids"][:max_length], out["rejected_ids"][:max_length]
        return out

    data = dataset.map(encode)
    cut = int(sum(data["ethos_cut"]))
    return data.remove_columns(["ethos_cut"]), cut


def load_reward_model(name_or_path: str | Path, *, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None, zero_head: bool = False) -> tuple[Any, Any, str]:
    """``(model, tokenizer, fingerprint)``: the model's decoder with a fresh scalar head
    (``AutoModelForSequenceClassification``, ``num_labels=1``; seed before calling for a
    reproducible head), its pad token set, on ``device``. ``zero_head``: the head starts at
    zero, so every reply's reward starts at 0 and every dependence of the reward on a concept is
    learned from the data (``ethos train --reward-model`` does this)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .device import pick_dtype, resolve_device
    from .model import ModelError, model_fingerprint, resolve_model

    folder = resolve_model(name_or_path)
    hf_logging.disable_progress_bar()
    device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "Some weights … newly initialized: score.weight" is the point here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, use_safetensors=True, dtype=dtype or pick_dtype(device))
    except OSError as exc:
        raise ModelError(f"cannot load model from {folder}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    if zero_head:
        with torch.no_grad():
            for p in model.score.parameters():
                p.zero_()
    model.to(device).eval()
    return model, tokenizer, model_fingerprint(folder)


def build_reward_trainer(model: Any, tokenizer: Any, dataset: Any, settings: TrainSettings, *, out: Path,
                         layer: int | None = None, rules: Sequence[ActivationRule] = (),
                         callbacks: Sequence[Any] = ()) -> ShapedRewardTrainer:
    """A :class:`ShapedRewardTrainer` writing its checkpoints to ``out``. Every pair is trained
    on; one longer than ``max_length`` tokens is cut to its first ``max_length`` tokens
    (``trainer.pairs_cut`` counts them)."""
    s = settings.resolved()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data, cut = tokenized(dataset, tokenizer, s.max_length)
    trainer = quiet(ShapedRewardTrainer(model, args=reward_config(s, Path(out)), train_dataset=data,
                                        processing_class=tokenizer, callbacks=list(callbacks), rules=rules,
                                        layer=layer,
                                        peft_config=lora_config(s.lora_r, task_type="SEQ_CLS") if s.lora else None))
    trainer.pairs_cut = cut
    return trainer


def load_trained(folder: Path, record: Mapping[str, Any], base: str | None = None) -> tuple[Any, Any]:
    """A trained reward model (``ethos train --reward-model`` output) ready to score: its adapter
    merged into the base it names, or its full weights."""
    weights = folder / (record.get("weights") or "")
    if (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        model, tok, _ = load_reward_model(record.get("base_model") or base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, weights).merge_and_unload().eval()
        return model, tok
    model, tok, _ = load_reward_model(weights, dtype=torch.float32)
    return model, tok

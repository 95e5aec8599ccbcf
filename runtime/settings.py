"""The settings of a run, typed, with the one home of their defaults.

The command line fills these from its flags (a flag not given leaves the default); the library
functions of :mod:`ethos.runtime.api` take them; notebooks build them directly::

    from ethos.runtime.settings import DataSettings, TrainSettings

    data = DataSettings(path="pairs.jsonl", limit=2_000)
    settings = TrainSettings(steps=200, learning_rate=1e-4)

Plain frozen dataclasses of the standard library: importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# What ``ethos apply`` writes into train.json's "defaults" and ``ethos train`` reads back for any
# of these settings that were not given (the one place their values live).
TRAIN_CONFIG_DEFAULTS: Mapping[str, Any] = {
    "beta": 0.1, "learning_rate": 2e-4, "lora": True, "lora_r": 16, "max_length": 256,
}


@dataclass(frozen=True)
class DataSettings:
    """Which preference data a dry run, apply or lock reads, and how.

    ``path`` None is the embedded hh-rlhf helpful-base sample; ``limit`` takes the first N input
    rows; ``strict`` makes any excluded row an error; ``batch_size`` is featurize's batch;
    ``seed`` seeds the filter and relabel draws and the bootstrap; ``update_lock`` accepts a
    changed resolution and rewrites ethos.lock."""

    path: str | None = None
    limit: int | None = None
    strict: bool = False
    batch_size: int = 8
    seed: int = 0
    update_lock: bool = False
    columns: str | None = None  # a column mapping (docs/your-data.md), e.g. "prompt=q,a=r1,b=r2,label=pref"
    label_a: str | None = None  # the label values meaning a / b / a tie (with columns ...,label=...)
    label_b: str | None = None
    label_tie: str | None = None
    split: str | None = None  # of a Hub dataset or a saved DatasetDict folder
    subset: str | None = None  # configuration of a Hub dataset
    excluded: str | None = None  # write each excluded row (line, reason, preview) here as JSON Lines

    def load_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`ethos.runtime.data.load_pairs` these settings give."""
        return dict(limit=self.limit, strict=self.strict, columns=self.columns, label_a=self.label_a,
                    label_b=self.label_b, label_tie=self.label_tie, split=self.split, subset=self.subset)

    @property
    def source(self) -> str:
        """How the documents name the data."""
        return str(self.path) if self.path else "embedded hh-rlhf helpful-base sample (400 rows)"


@dataclass(frozen=True)
class TrainSettings:
    """A preference-training run under a plan (``ethos train``; trl's DPOTrainer, or its
    RewardTrainer with ``reward_model``; LoRA r=16 on q/k/v/o by default).

    The settings in :data:`TRAIN_CONFIG_DEFAULTS` (``beta``, ``learning_rate``, ``lora``,
    ``lora_r``, ``max_length``) may be left None: they then take the apply folder's train.json
    "defaults", else the values there (:meth:`resolved`). ``model`` overrides the plan's model;
    ``rows`` trains on the first N rows of an apply folder's dataset; ``shaping`` False ignores
    weights, offsets and training interventions (a vanilla control); ``save`` False keeps the
    trained weights in memory only.

    ``loss``: the DPO loss (:data:`ethos.runtime.losses.LOSSES`; ``label_smoothing`` ε for
    robust/exo_pair, ``simpo_gamma`` γ for simpo); ``reward_model``: train a Bradley–Terry reward
    model (a sequence-classification head on the plan's model) instead of a policy.
    ``save_steps``: a checkpoint every N steps into ``OUT/checkpoints`` (0: none); ``resume``:
    None resumes when OUT holds checkpoints of the same run, True requires one, False starts over."""

    steps: int = 100
    batch_size: int = 4
    seed: int = 0
    learning_rate: float | None = None
    beta: float | None = None
    lora: bool | None = None
    lora_r: int | None = None
    max_length: int | None = None
    model: str | None = None
    rows: int | None = None
    shaping: bool = True
    save: bool = True
    grad_accum: int = 1
    bf16: bool | None = None  # None: where the CPU/GPU computes bf16 natively
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    progress: bool = True
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5  # trl's CPOConfig default
    reward_model: bool = False
    save_steps: int = 50
    resume: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # more DPOConfig/RewardConfig fields, passed as is

    def resolved(self, defaults: Mapping[str, Any] | None = None) -> TrainSettings:
        """These settings with every unset one filled: from ``defaults`` (an apply folder's
        train.json "defaults"), else :data:`TRAIN_CONFIG_DEFAULTS`."""
        given = dict(defaults or {})
        fill = {k: given.get(k, v) if getattr(self, k) is None else getattr(self, k)
                for k, v in TRAIN_CONFIG_DEFAULTS.items()}
        return dataclasses.replace(self, **fill)

    def record(self, rows: int) -> dict[str, Any]:
        """The "settings" entry of the train record (train.json written by ``ethos train``)."""
        s = self.resolved()
        out = {"lora": s.lora, "lora_r": s.lora_r, "steps": s.steps, "learning_rate": s.learning_rate,
               "beta": s.beta, "batch_size": s.batch_size, "max_length": s.max_length, "seed": s.seed,
               "rows": rows, "objective": "reward_model" if s.reward_model else "dpo"}
        if not s.reward_model:
            out["loss"] = s.loss
            if s.loss in ("robust", "exo_pair"):
                out["label_smoothing"] = s.label_smoothing
            if s.loss == "simpo":
                out["simpo_gamma"] = s.simpo_gamma
        return out


@dataclass(frozen=True)
class EvaluateSettings:
    """``ethos evaluate``: generate on held-out prompts with the base and each trained model,
    score every concept of ``policy``, compare the shifts with the plan's predictions.

    ``models``: ``ethos train`` output folders (or model folders); ``prompts``: jsonl with
    "prompt", or preference data; ``limit`` held-out prompts; ``samples`` sampled generations per
    prompt (seeds 0..samples−1) besides the greedy one."""

    base: str
    models: Sequence[str]
    prompts: str
    policy: str
    limit: int = 50
    max_new_tokens: int = 64
    samples: int = 0
    batch_size: int = 16

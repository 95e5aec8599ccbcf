"""DPO under a plan: a small subclass of trl's ``DPOTrainer`` (trl pinned to 1.16).

What it adds to plain DPO (docs/protocols.md has the formulas and the reasoning):

- **per-pair weights and margin offsets** (``weight`` and ``margin_offset`` columns of ``ethos
  apply``'s dataset): per pair i, ``loss_i = w_i · −log σ(h_i + o_i)`` with
  ``h_i = β·((log π − log π_ref)(chosen) − (log π − log π_ref)(rejected))``; the batch loss is
  the mean of ``loss_i`` over the batch (a pair with ``w_i = 0`` gets no gradient);
- **ablation** (``via ablation``): ``x ← x − (1−k)·D(Dᵀx)`` on the residual stream after block
  ``layer`` (D: orthonormal rows, the unit probe direction or the QR-orthonormalised SAE decoder
  rows);
- **preventative steering** (``via steering s``): ``x ← x + (1−k)·s·u`` (u: the unit direction);
- **penalty** (``via penalty λ``): ``+ (1−k)·λ·mean_i(mean over pair i's chosen-reply tokens of
  x·u)`` added to the loss.

The activation hooks act only while a training step runs *with gradients enabled*: not in the
reference pass (trl runs it under ``torch.no_grad``; with LoRA it goes through the same modules
with the adapter disabled), not in evaluation, not in ``generate``. The first position (the
attention sink) is left alone.

How it hooks into trl 1.16 (see :data:`TRL_SERIES`; ``tests/runtime/test_trainer.py`` fails
loudly if trl changes these):

- ``compute_loss`` (public) calls ``super().compute_loss`` and then *recomputes* the per-pair
  sigmoid loss from the per-token log-probabilities trl's fused LM head returned for the policy
  and reference forwards (captured with a forward hook on the model trl calls), so trl's own
  loss, metrics and reference handling stay untouched. Every step checks that the recomputed
  unshaped loss equals the loss trl returned; a mismatch (a trl change) raises.
- ``training_step`` (public) arms the activation hooks for the step (forward and backward, so a
  gradient-checkpointing recompute sees the same edits).
- ``_set_signature_columns_if_needed`` (private; guarded) keeps the per-pair columns, and the
  collator is replaced by :class:`ShapingCollator`, a subclass of trl's
  ``DataCollatorForPreference`` that carries them to ``compute_loss``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

TRL_SERIES = "1.16"
WEIGHT_COLUMN, OFFSET_COLUMN = "weight", "margin_offset"
_W, _O = "ethos_weight", "ethos_margin_offset"  # the batch keys the collator adds

from trl import DPOConfig, DPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402


class TrainerError(Exception):
    """A training run cannot be set up as asked; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------
# Directions and interventions


@dataclass
class ActivationRule:
    """One training-time intervention on the residual stream at the plan's layer."""

    protocol: str  # "ablation", "steering" or "penalty"
    concept: str
    factor: float  # k
    directions: torch.Tensor  # (m, d_model): orthonormal rows (ablation) / unit rows
    amount: float = 0.0  # steering strength s or penalty weight λ
    line: int | None = None

    @property
    def unit(self) -> torch.Tensor:
        """One unit vector for the concept: the normalised sum of its rows."""
        v = self.directions.sum(dim=0)
        return v / v.norm().clamp_min(1e-12)


def _orthonormal_rows(rows: torch.Tensor) -> torch.Tensor:
    q, r = torch.linalg.qr(rows.T.to(torch.float32))  # (d, m)
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max().clamp_min(1e-12)
    return q[:, keep].T.contiguous()


def concept_directions(plan: Any, model: Any, tokenizer: Any, layer: int, *, concepts: Sequence[str] | None = None,
                       fingerprint: str | None = None, model_name: str | None = None) -> dict[str, torch.Tensor]:
    """``{concept: (m, d_model) float32}`` with orthonormal rows, for the probe and features
    concepts of ``plan`` (or only ``concepts``): a probe gives its unit difference-of-means
    direction (computed with the plan's exemplars, or read from the probe cache), a features
    concept its SAE decoder rows ``W_dec[latents]`` orthonormalised with QR (m ≤ #latents)."""
    from .lenses import LensContext, build_lens
    from .lenses.features import resolve_sae
    from .model import Encoder, ModelRuntime

    wanted = set(concepts) if concepts is not None else None
    out: dict[str, torch.Tensor] = {}
    context = LensContext.for_plan(plan)
    context.layer = layer
    context.model_fingerprint = fingerprint or getattr(model.config, "_name_or_path", "unknown")
    for c in plan.concepts:
        if wanted is not None and c.name not in wanted:
            continue
        if c.lens.kind == "probe":
            if context.runtime is None:
                base = model.get_base_model() if hasattr(model, "get_base_model") else model
                was_training = base.training
                base.eval()
                encoder = Encoder(base, layer, pad_id=tokenizer.pad_token_id)
                context.tokenizer = tokenizer
                context.runtime = ModelRuntime(encoder, tokenizer, context.model_fingerprint, model_name or "model")
                base.train(was_training)
            lens = build_lens(c, context)
            lens.prepare(context)
            out[c.name] = torch.from_numpy(lens.direction.copy()).float()[None, :]
        elif c.lens.kind == "features":
            from sae_lens import SAE

            sae = SAE.load_from_disk(resolve_sae(plan.sae.name), device="cpu")
            rows = sae.W_dec.detach()[list(c.lens.latents)].float()
            out[c.name] = _orthonormal_rows(rows)
    return out


def rules_from_interventions(interventions: Sequence[Mapping[str, Any]],
                             directions: Mapping[str, torch.Tensor]) -> list[ActivationRule]:
    """The training-time rules from ``train.json``'s ``training_interventions`` (or a plan's
    interventions as dicts)."""
    rules = []
    for i in interventions:
        proto = i["protocol"]
        if proto not in ("ablation", "steering", "penalty"):
            continue
        if i["concept"] not in directions:
            raise TrainerError(f"concept {i['concept']!r} ({proto}) has no direction: it needs a probe or features lens")
        amount = float(i.get("strength", 0.0) if proto == "steering" else i.get("weight", 0.0) if proto == "penalty" else 0.0)
        rules.append(ActivationRule(proto, i["concept"], float(i["factor"]), directions[i["concept"]], amount, i.get("line")))
    return rules


# ---------------------------------------------------------------------------------------------
# The collator


@dataclass
class ShapingCollator(DataCollatorForPreference):
    """trl's preference collator, plus each pair's weight and margin offset (defaults 1 and 0)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        out[_W] = torch.tensor([float(e.get(WEIGHT_COLUMN, 1.0) if e.get(WEIGHT_COLUMN) is not None else 1.0)
                                for e in examples], dtype=torch.float32)
        out[_O] = torch.tensor([float(e.get(OFFSET_COLUMN, 0.0) or 0.0) for e in examples], dtype=torch.float32)
        return out


# ---------------------------------------------------------------------------------------------
# The trainer


def _decoder_layers(model: Any):
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    for cand in (getattr(m, "model", None), m):
        if cand is not None and hasattr(cand, "layers"):
            return cand.layers
    raise TrainerError(f"{type(m).__name__} has no decoder layers")


class ShapedDPOTrainer(DPOTrainer):
    """``DPOTrainer`` with a plan's per-pair weights, margin offsets and activation rules."""

    def __init__(self, *args: Any, rules: Sequence[ActivationRule] = (), layer: int | None = None, **kwargs: Any):
        import trl

        if not trl.__version__.startswith(TRL_SERIES):
            raise TrainerError(f"ethos's trainer is written for trl {TRL_SERIES}.x, found trl {trl.__version__}")
        super().__init__(*args, **kwargs)
        if list(self.loss_types) != ["sigmoid"] or list(self.loss_weights) != [1.0] or self.ld_alpha is not None \
                or self.use_weighting or self.f_divergence_type != "reverse_kl" or self.aux_loss_enabled:
            raise TrainerError("ethos shapes the standard sigmoid DPO loss only (loss_type='sigmoid', reverse KL, "
                               "no ld_alpha, no WPO weighting)")
        if type(self.data_collator) is DataCollatorForPreference:
            self.data_collator = ShapingCollator(**{f.name: getattr(self.data_collator, f.name)
                                                    for f in dataclasses.fields(DataCollatorForPreference)})
        self.rules = list(rules)
        if self.rules and layer is None:
            raise TrainerError("activation rules need a layer")
        self.layer = layer
        self._armed = False
        self._captured: list[Any] = []
        self._capturing = False
        self._resid: torch.Tensor | None = None
        self._want_resid = False
        self._removed: list[torch.Tensor] = []
        self.hook_calls = {"applied": 0, "skipped": 0}
        self.last_outputs: list[Any] = []  # the captured forward outputs of the last compute_loss (tests)
        self._handles = [self.model.register_forward_hook(self._capture_hook, with_kwargs=True)]
        if self.ref_model is not None:
            self._handles.append(self.ref_model.register_forward_hook(self._capture_hook, with_kwargs=True))
        if self.rules:
            block = _decoder_layers(self.model)[layer]
            self._handles.append(block.register_forward_hook(self._residual_hook))
        self._steer: torch.Tensor | None = None
        steer = [r for r in self.rules if r.protocol == "steering"]
        if steer:
            self._steer = sum((1.0 - r.factor) * r.amount * r.unit for r in steer)
        # fixed for the run: not recomputed per step
        self._penalties = [r for r in self.rules if r.protocol == "penalty"]
        self._has_ablation = any(r.protocol == "ablation" for r in self.rules)
        self._steer_norm = float(self._steer.norm()) if self._steer is not None else None

    # -- trl's column handling (private, guarded by a test) ------------------------------------
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for col in (WEIGHT_COLUMN, OFFSET_COLUMN):
            if col not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, col]

    # -- hooks ---------------------------------------------------------------------------------
    def _capture_hook(self, module, args, kwargs, output):
        if self._capturing and kwargs.get("fused_lm_head"):
            self._captured.append(output)

    def _residual_hook(self, module, args, output):
        if not (self._armed and torch.is_grad_enabled()):
            self.hook_calls["skipped"] += 1
            return None
        self.hook_calls["applied"] += 1
        h = output[0] if isinstance(output, tuple) else output
        head, x = h[:, :1], h[:, 1:]  # position 0 (attention sink) untouched
        for r in self.rules:
            if r.protocol == "ablation":
                D = r.directions.to(x.device, x.dtype)
                removed = (1.0 - r.factor) * ((x @ D.T) @ D)
                x = x - removed
                self._removed.append(removed.detach().float().norm(dim=-1).mean())  # no device sync here
        if self._steer is not None:
            x = x + self._steer.to(x.device, x.dtype)
        h = torch.cat([head, x], dim=1)
        if self._want_resid and self._resid is None:
            self._resid = h
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- public hooks --------------------------------------------------------------------------
    def training_step(self, *args, **kwargs):
        self._armed = True
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._armed = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        weight = inputs.pop(_W, None)
        offset = inputs.pop(_O, None)
        penalties = self._penalties
        self._captured, self._capturing = [], True
        self._resid, self._want_resid = None, bool(penalties) and self._armed
        self._removed = []
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        finally:
            self._capturing, self._want_resid = False, False
        trl_loss, outputs = result if return_outputs else (result, None)
        captured, self._captured = self._captured, []
        self.last_outputs = captured

        completion = inputs["completion_mask"]
        seq_len = completion.size(1) - 1
        expected = 1 if self.precompute_ref_logps else 2
        if len(captured) != expected:
            raise RuntimeError(f"trl {TRL_SERIES} ran {len(captured)} fused forwards in compute_loss, expected "
                               f"{expected}: DPOTrainer._compute_loss changed; update ethos.runtime.trainer")
        logps = captured[0].log_probs[:, -seq_len:].sum(dim=1)
        if self.precompute_ref_logps:
            ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps)
        else:
            ref = captured[1].log_probs[:, -seq_len:].sum(dim=1).detach()
        chosen, rejected = (logps - ref).chunk(2, dim=0)
        h = self.beta * (chosen - rejected)
        plain = -F.logsigmoid(h)
        if not torch.allclose(plain.mean().detach().float(), trl_loss.detach().float(), rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"ethos's recomputed DPO loss {float(plain.mean()):.6f} differs from trl's "
                               f"{float(trl_loss):.6f}: trl {TRL_SERIES}'s loss changed; update ethos.runtime.trainer")
        n = h.shape[0]
        w = weight.to(h) if weight is not None else torch.ones(n, dtype=h.dtype, device=h.device)
        o = offset.to(h) if offset is not None else torch.zeros(n, dtype=h.dtype, device=h.device)
        per_pair = -F.logsigmoid(h + o)
        loss = (w * per_pair).mean()
        m = self._metrics[mode]
        m["ethos/dpo_loss"].append(float(plain.detach().mean()))
        m["ethos/weighted_loss"].append(float(loss.detach()))
        m["ethos/weight_mean"].append(float(w.mean()))
        m["ethos/margin_offset_mean"].append(float(o.mean()))
        if penalties and self._resid is not None:
            resid = self._resid[:n]  # the chosen rows come first
            mask = completion[:n].to(resid.dtype)
            tokens = mask.sum(dim=1).clamp_min(1.0)
            total = 0.0
            for r in penalties:
                proj = resid @ r.unit.to(resid.device, resid.dtype)  # (n, T)
                pooled = (proj * mask).sum(dim=1) / tokens
                term = (1.0 - r.factor) * r.amount * pooled.mean()
                total = total + term
                m[f"ethos/penalty_projection/{r.concept}"].append(float(pooled.mean().detach()))
            loss = loss + total
            m["ethos/penalty"].append(float(total.detach()) if torch.is_tensor(total) else float(total))
        self._resid = None
        if self._has_ablation and self._removed:
            m["ethos/ablation_norm_removed"].append(float(torch.stack(self._removed).mean()))
        if self._steer_norm is not None:
            m["ethos/steering_norm"].append(self._steer_norm)
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------------------
# A whole run (``ethos train``)


@dataclass
class TrainSettings:
    model: str
    out: Path
    layer: int | None = None
    lora: bool = True
    lora_r: int = 16
    steps: int = 100
    learning_rate: float = 2e-4
    beta: float = 0.1
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 0
    bf16: bool | None = None  # None: where the CPU/GPU computes bf16 natively
    gradient_checkpointing: bool = False
    progress: bool = True
    logging_steps: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def dpo_config(s: TrainSettings, output_dir: Path) -> DPOConfig:
    from .model import cpu_has_native_bf16

    bf16 = s.bf16
    if bf16 is None:
        bf16 = (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) or \
            (not torch.cuda.is_available() and cpu_has_native_bf16())
    return DPOConfig(
        output_dir=str(output_dir),
        max_steps=s.steps,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.learning_rate,
        beta=s.beta,
        max_length=s.max_length,
        bf16=bool(bf16),
        gradient_checkpointing=s.gradient_checkpointing,
        logging_steps=s.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=s.seed,
        data_seed=s.seed,
        disable_tqdm=not s.progress,
        lr_scheduler_type="linear",
        warmup_steps=0,
        dataset_num_proc=None,
        use_cpu=not torch.cuda.is_available(),
        **s.extra,
    )


def lora_config(r: int = 16):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


class JsonlLog:
    """A ``TrainerCallback`` writing every ``log`` call (trl's metrics and ethos's named terms) as
    one JSON line."""

    def __new__(cls, path: Path):
        from transformers import TrainerCallback

        class _Cb(TrainerCallback):
            def __init__(self) -> None:
                self.path = path
                self.rows: list[dict[str, Any]] = []
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("")

            def on_log(self, args, state, control, logs=None, **kw):
                row = {"step": state.global_step, "time": round(time.time(), 3), **(logs or {})}
                self.rows.append(row)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row, default=float) + "\n")

        return _Cb()


def build_trainer(model: Any, tokenizer: Any, dataset: Any, settings: TrainSettings, *,
                  rules: Sequence[ActivationRule] = (), ref_model: Any = None,
                  callbacks: Sequence[Any] = (), vanilla: bool = False) -> Any:
    """A :class:`ShapedDPOTrainer` (or plain ``DPOTrainer`` with ``vanilla=True``, for benchmarks)."""
    args = dpo_config(settings, settings.out)
    kwargs: dict[str, Any] = dict(args=args, train_dataset=dataset, processing_class=tokenizer,
                                  peft_config=lora_config(settings.lora_r) if settings.lora else None,
                                  callbacks=list(callbacks))
    if ref_model is not None:
        kwargs["ref_model"] = ref_model
    if vanilla:
        return DPOTrainer(model, **kwargs)
    return ShapedDPOTrainer(model, rules=rules, layer=settings.layer, **kwargs)


def read_dataset(path: Path, limit: int | None = None):
    """``ethos apply``'s dataset.parquet as a ``datasets.Dataset`` with the trl columns and the
    per-pair ones."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    table = pq.read_table(path)
    rows = table.to_pylist()
    if limit is not None:
        rows = rows[:limit]
    keep = ("prompt", "chosen", "rejected", WEIGHT_COLUMN, OFFSET_COLUMN)
    return Dataset.from_list([{k: r.get(k) for k in keep if k in r} for r in rows])


def finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False

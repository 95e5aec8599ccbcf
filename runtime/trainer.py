"""Preference training under a plan: a small subclass of trl's ``DPOTrainer`` (trl pinned to 1.16),
and the activation hooks it shares with the reward-model trainer (:mod:`ethos.runtime.reward`).

What it adds to plain DPO (docs/protocols.md has the formulas and the reasoning):

- **per-pair weights and margin offsets** (``weight`` and ``margin_offset`` columns of ``ethos
  apply``'s dataset): per pair i, ``loss_i = w_i · f(m_i + o_i)`` where ``m_i`` is the loss's
  margin in logits (``β·Δ_i`` for sigmoid DPO, with ``Δ_i`` the difference of the chosen and
  rejected log-ratios against the reference) and ``f`` the loss's per-pair function
  (:mod:`ethos.runtime.losses`: sigmoid, hinge, ipo, sigmoid_norm, robust, exo_pair, discopop,
  simpo); the batch loss is the mean of ``loss_i`` over the batch (a pair with ``w_i = 0`` gets
  no gradient);
- **ablation** (``via ablation``): ``x ← x − (1−k)·D(Dᵀx)`` on the residual stream after block
  ``layer`` (D: orthonormal rows, the unit probe direction or the QR-orthonormalised SAE decoder
  rows);
- **preventative steering** (``via steering s``): ``x ← x + (1−k)·s·u`` (u: the unit direction);
- **penalty** (``via penalty λ``): ``+ (1−k)·λ·mean_i(mean over pair i's chosen-reply tokens of
  x·u)`` added to the loss.

The activation hooks act only while a training step runs *with gradients enabled*: not in the
reference pass (trl runs it under ``torch.no_grad``; with LoRA it goes through the same modules
with the adapter disabled), not in evaluation, not in ``generate``. The first position (the
attention sink) is left alone. Directions live on the model's device (moved once when the
trainer is built) and take the activations' dtype.

How it hooks into trl 1.16 (see :data:`TRL_SERIES`; ``tests/runtime/test_trainer.py`` fails
loudly if trl changes these):

- ``compute_loss`` (public) calls ``super().compute_loss`` and then *recomputes* the per-pair
  loss from the per-token log-probabilities trl's fused LM head returned for the policy and
  reference forwards (captured with a forward hook on the model trl calls), so trl's own loss,
  metrics and reference handling stay untouched. Every step checks that the recomputed unshaped
  loss equals the loss trl returned; a mismatch (a trl change) raises.
- ``training_step`` (public) arms the activation hooks for the step (forward and backward, so a
  gradient-checkpointing recompute sees the same edits).
- ``compute_ref_log_probs`` (public) returns zeros for a reference-free loss (SimPO), with
  ``precompute_ref_log_probs`` on, so trl runs no reference forward at all.
- ``_set_signature_columns_if_needed`` (private; guarded) keeps the per-pair columns, and the
  collator is replaced by :class:`ShapingCollator`, a subclass of trl's
  ``DataCollatorForPreference`` that carries them to ``compute_loss`` (both through mixins,
  :class:`PairColumns` and :class:`PairTensors`, that the reward-model trainer shares).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import losses as L
from .device import default_device, module_device
from .errors import EthosError
from .interventions import in_training
from .settings import TrainSettings

TRL_SERIES = "1.16"
WEIGHT_COLUMN, OFFSET_COLUMN = "weight", "margin_offset"
BATCH_WEIGHT, BATCH_OFFSET = "ethos_weight", "ethos_margin_offset"  # the batch keys the collator adds

from trl import DPOConfig, DPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402


class TrainerError(EthosError):
    """A training run cannot be set up as asked; the message is meant for the user."""


# The training-time protocols this trainer realises (``interventions.in_training``).
RULE_PROTOCOLS = ("ablation", "steering", "penalty")


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
    rule_id: str | None = None

    @property
    def unit(self) -> torch.Tensor:
        """One unit vector for the concept: the normalised sum of its rows."""
        v = self.directions.sum(dim=0)
        return v / v.norm().clamp_min(1e-12)


def orthonormal_rows(rows: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (rows) of the span of ``rows`` (QR; dependent rows dropped)."""
    q, r = torch.linalg.qr(rows.T.to(torch.float32))  # (d, m)
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max().clamp_min(1e-12)
    return q[:, keep].T.contiguous()


def concept_directions(plan: Any, model: Any, tokenizer: Any, layer: int, *, concepts: Sequence[str] | None = None,
                       fingerprint: str | None = None, model_name: str | None = None) -> dict[str, torch.Tensor]:
    """``{concept: (m, d_model) float32}`` with orthonormal rows, on the model's device, for the
    probe and features concepts of ``plan`` (or only ``concepts``): a probe gives its unit difference-of-means
    direction (computed with the plan's exemplars, or read from the probe cache), a features
    concept its SAE decoder rows ``W_dec[latents]`` orthonormalised with QR (m ≤ #latents)."""
    from .lenses import LensContext, build_lens
    from .model import model_runtime
    from .sae import load_sae

    wanted = set(concepts) if concepts is not None else None
    device = module_device(model)
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
                context.tokenizer = tokenizer
                context.runtime = model_runtime(base, layer=layer, tokenizer=tokenizer,
                                                fingerprint=context.model_fingerprint, name=model_name or "model")
                base.train(was_training)
            lens = build_lens(c, context)
            lens.prepare(context)
            out[c.name] = torch.as_tensor(lens.direction, dtype=torch.float32).to(device)[None, :]
        elif c.lens.kind == "features":
            sae = load_sae(plan.sae.name, device=device)
            rows = sae.W_dec.detach()[list(c.lens.latents)].float()
            out[c.name] = orthonormal_rows(rows)
    return out


def rules_from_plan(plan: Any, directions: Mapping[str, torch.Tensor]) -> list[ActivationRule]:
    """The trainer's rules: one per intervention of ``plan`` realised in training
    (:func:`~ethos.runtime.interventions.in_training`: ablation, steering, penalty), with its
    concept's directions and its argument (the steering strength or the penalty weight; the
    protocol table names the field)."""
    rules = []
    for i in plan.interventions:
        if not in_training(i):
            continue
        if i.protocol not in RULE_PROTOCOLS:
            raise TrainerError(f"this trainer cannot realise `via {i.protocol}` (line {i.span.line})")
        if i.concept not in directions:
            raise TrainerError(f"concept {i.concept!r} ({i.protocol}) has no direction: it needs a probe or features lens")
        argument = i.info.argument
        amount = float(getattr(i, argument)) if argument else 0.0
        rules.append(ActivationRule(i.protocol, i.concept, float(i.factor), directions[i.concept], amount,
                                    i.span.line, i.rule_id))
    return rules


def rule_concepts(plan: Any) -> list[str]:
    """The concepts whose directions the trainer's rules need, sorted."""
    return sorted({i.concept for i in plan.interventions if in_training(i)})


# ---------------------------------------------------------------------------------------------
# The collator and the per-pair columns (shared with the reward-model trainer)


class PairTensors:
    """Mixin for a trl preference collator: each pair's weight and margin offset (defaults 1 and
    0) as the batch tensors ``BATCH_WEIGHT`` and ``BATCH_OFFSET``."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        out[BATCH_WEIGHT] = torch.tensor([1.0 if e.get(WEIGHT_COLUMN) is None else float(e[WEIGHT_COLUMN])
                                          for e in examples], dtype=torch.float32)
        out[BATCH_OFFSET] = torch.tensor([float(e.get(OFFSET_COLUMN) or 0.0) for e in examples],
                                         dtype=torch.float32)
        return out


@dataclass
class ShapingCollator(PairTensors, DataCollatorForPreference):
    """trl's preference collator, plus each pair's weight and margin offset (defaults 1 and 0)."""


class PairColumns:
    """Mixin for a trl trainer: the per-pair weight and offset columns reach the collator (trl
    drops the dataset columns it does not use: ``_set_signature_columns_if_needed``, private,
    guarded by the tests), and :meth:`_use_collator` swaps trl's collator for ethos's subclass."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for col in (WEIGHT_COLUMN, OFFSET_COLUMN):
            if col not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, col]

    def _use_collator(self, trl_collator: type, shaped: type) -> None:
        """``shaped`` (a :class:`PairTensors` subclass of ``trl_collator``) in place of trl's own
        ``trl_collator``, with the same settings; a collator the caller passed is kept."""
        if type(self.data_collator) is trl_collator:
            self.data_collator = shaped(**{f.name: getattr(self.data_collator, f.name)
                                           for f in dataclasses.fields(trl_collator)})


# ---------------------------------------------------------------------------------------------
# The activation hooks (shared with the reward-model trainer)


def _decoder_layers(model: Any):
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    for cand in (getattr(m, "model", None), m):
        if cand is not None and hasattr(cand, "layers"):
            return cand.layers
    raise TrainerError(f"{type(m).__name__} has no decoder layers")


class ActivationHooks:
    """Mixin for a trl trainer: the plan's activation rules as a forward hook on decoder block
    ``layer``, armed only inside ``training_step`` with gradients enabled. Call
    :meth:`_install_rules` after the trainer's ``__init__`` (the model is then on its device)."""

    def _install_rules(self, rules: Sequence[ActivationRule], layer: int | None) -> None:
        if rules and layer is None:
            raise TrainerError("activation rules need a layer")
        device = module_device(self.model)
        # the directions live on the model's device from now on (the caller's rules are not changed)
        self.rules = [dataclasses.replace(r, directions=r.directions.to(device)) for r in rules]
        self.layer = layer
        self._armed = False
        self._resid: torch.Tensor | None = None
        self._want_resid = False
        self._removed: list[torch.Tensor] = []
        self.hook_calls = {"applied": 0, "skipped": 0}
        self._handles: list[Any] = getattr(self, "_handles", [])
        if self.rules:
            block = _decoder_layers(self.model)[layer]
            self._handles.append(block.register_forward_hook(self._residual_hook))
        steer = [r for r in self.rules if r.protocol == "steering"]
        self._steer = sum((1.0 - r.factor) * r.amount * r.unit for r in steer) if steer else None
        # fixed for the run: not recomputed per step
        self._penalties = [r for r in self.rules if r.protocol == "penalty"]
        self._has_ablation = any(r.protocol == "ablation" for r in self.rules)
        self._steer_norm = float(self._steer.norm()) if self._steer is not None else None

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

    def _rule_metrics(self) -> dict[str, Any]:
        """The step's metrics of the activation rules. The keys depend only on the rules and on
        whether a training step is running (the same on every rank of a launch): an armed step
        in which the ablation hook never fired logs NaN."""
        out: dict[str, Any] = {}
        if self._has_ablation and (self._armed or self._removed):
            out["ethos/ablation_norm_removed"] = torch.stack(self._removed).mean() if self._removed else math.nan
        if self._steer_norm is not None:
            out["ethos/steering_norm"] = self._steer_norm
        return out

    def _append_metrics(self, m: Mapping[str, list], values: Mapping[str, Any]) -> None:
        """Append ``values`` (tensors or numbers) to the step's metrics ``m`` — under a launcher
        averaged over the processes, as trl does with its own metrics (one all-gather; every rank
        passes the same keys) — crossing to the host once."""
        from .device import to_list

        if not values:
            return
        device = module_device(self.model)
        t = torch.stack([torch.as_tensor(v).detach().to(device=device, dtype=torch.float32).reshape(())
                         for v in values.values()])
        if getattr(self.accelerator, "num_processes", 1) > 1:
            t = self.accelerator.gather(t[None]).mean(dim=0)
        for k, v in zip(values, to_list(t)):
            m[k].append(float(v))

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def training_step(self, *args, **kwargs):
        self._armed = True
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._armed = False


def check_recomputed(per_pair: torch.Tensor, trl_loss: torch.Tensor, what: str, module: str) -> None:
    """Raise when the mean of ethos's recomputed unshaped per-pair loss differs from the loss trl
    returned: trl's loss changed under ethos, and ``module`` must follow it."""
    if not torch.allclose(per_pair.mean().detach().float(), trl_loss.detach().float(), rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"ethos's recomputed {what} {float(per_pair.mean()):.6f} differs from trl's "
                           f"{float(trl_loss):.6f}: trl {TRL_SERIES}'s loss changed; update {module}")


def check_trl() -> None:
    import trl

    if not trl.__version__.startswith(TRL_SERIES):
        raise TrainerError(f"ethos's trainer is written for trl {TRL_SERIES}.x, found trl {trl.__version__}")


# ---------------------------------------------------------------------------------------------
# The DPO trainer


class ShapedDPOTrainer(PairColumns, ActivationHooks, DPOTrainer):
    """``DPOTrainer`` with a plan's per-pair weights, margin offsets and activation rules, for any
    loss of :data:`ethos.runtime.losses.LOSSES` (``loss``; its trl loss type must be the
    config's ``loss_type``)."""

    def __init__(self, *args: Any, rules: Sequence[ActivationRule] = (), layer: int | None = None,
                 loss: str = "sigmoid", simpo_gamma: float = 0.0, **kwargs: Any):
        check_trl()
        # set before trl's __init__: it may call compute_ref_log_probs (precomputed reference)
        self.ethos_loss = L.LOSSES.get(loss) or L.check_loss(loss)
        self.simpo_gamma = float(simpo_gamma) if self.ethos_loss.name == "simpo" else 0.0
        super().__init__(*args, **kwargs)
        info = self.ethos_loss
        if list(self.loss_types) != [info.trl_type] or list(self.loss_weights) != [1.0] \
                or self.ld_alpha is not None or self.use_weighting or self.f_divergence_type != "reverse_kl" \
                or self.aux_loss_enabled:
            raise TrainerError(f"ethos shapes one loss at a time (loss_type={info.trl_type!r} for --loss {info.name}), "
                               "reverse KL, no ld_alpha, no WPO weighting")
        if info.reference_free and not self.precompute_ref_logps:
            raise TrainerError(f"--loss {info.name} is reference-free: it needs precompute_ref_log_probs=True")
        self._use_collator(DataCollatorForPreference, ShapingCollator)
        self._captured: list[Any] = []
        self._capturing = False
        self.last_outputs: list[Any] = []  # the captured forward outputs of the last compute_loss (tests)
        self._handles = [self.model.register_forward_hook(self._capture_hook, with_kwargs=True)]
        if self.ref_model is not None:
            self._handles.append(self.ref_model.register_forward_hook(self._capture_hook, with_kwargs=True))
        self._install_rules(rules, layer)

    # -- hooks ---------------------------------------------------------------------------------
    def _capture_hook(self, module, args, kwargs, output):
        if self._capturing and kwargs.get("fused_lm_head"):
            self._captured.append(output)

    # -- public hooks --------------------------------------------------------------------------
    def compute_ref_log_probs(self, model, inputs):
        if self.ethos_loss.reference_free:  # SimPO: log π_ref ≡ 0, no forward
            n = inputs["input_ids"].shape[0] // 2
            zeros = torch.zeros(n, device=inputs["input_ids"].device)
            return zeros, zeros.clone()
        return super().compute_ref_log_probs(model, inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        weight = inputs.pop(BATCH_WEIGHT, None)
        offset = inputs.pop(BATCH_OFFSET, None)
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
        info = self.ethos_loss
        h = L.margins(info, logps, ref, completion.sum(dim=1), self.beta)
        kw = dict(beta=self.beta, label_smoothing=self.label_smoothing,
                  discopop_tau=getattr(self.args, "discopop_tau", 0.05))
        trl_plain = L.per_pair(info, h, **kw)  # what trl computed (SimPO: with γ = 0)
        check_recomputed(trl_plain, trl_loss, f"{info.trl_type} loss", "ethos.runtime.trainer")
        n = h.shape[0]
        w = weight.to(h) if weight is not None else torch.ones(n, dtype=h.dtype, device=h.device)
        o = offset.to(h) if offset is not None else torch.zeros(n, dtype=h.dtype, device=h.device)
        plain = L.per_pair(info, h, simpo_gamma=self.simpo_gamma, **kw) if info.name == "simpo" else trl_plain
        loss = (w * L.per_pair(info, h + o, simpo_gamma=self.simpo_gamma, **kw)).mean()
        metrics: dict[str, Any] = {"ethos/dpo_loss": plain.detach().mean(), "ethos/weighted_loss": loss.detach(),
                                   "ethos/weight_mean": w.mean(), "ethos/margin_offset_mean": o.mean()}
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
                metrics[f"ethos/penalty_projection/{r.concept}"] = pooled.mean().detach()
            loss = loss + total
            metrics["ethos/penalty"] = total.detach() if torch.is_tensor(total) else total
        self._resid = None
        self._append_metrics(self._metrics[mode], {**metrics, **self._rule_metrics()})
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------------------
# A whole run (``ethos train``)


def pick_bf16(settings: TrainSettings) -> bool:
    """bf16 mixed precision: as set, else where the device computes bf16 natively
    (:func:`ethos.runtime.device.pick_dtype`, ``ETHOS_DTYPE`` included)."""
    from .device import pick_dtype

    if settings.bf16 is not None:
        return bool(settings.bf16)
    return pick_dtype(default_device()) == torch.bfloat16


def trainer_args(settings: TrainSettings, output_dir: Path) -> dict[str, Any]:
    """The ``TrainingArguments`` fields DPO and reward-model runs share (checkpoints go to
    ``output_dir`` every ``save_steps`` steps; none when it is 0)."""
    s = settings.resolved()
    save = s.save_steps > 0
    return dict(
        output_dir=str(output_dir),
        max_steps=s.steps,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.learning_rate,
        max_length=s.max_length,
        bf16=pick_bf16(s),
        gradient_checkpointing=s.gradient_checkpointing,
        logging_steps=s.logging_steps,
        save_strategy="steps" if save else "no",
        save_steps=s.save_steps if save else 500,
        save_total_limit=2 if save else None,
        report_to="none",
        seed=s.seed,
        data_seed=s.seed,
        disable_tqdm=True,  # progress: ethos.runtime.progress (training.run_training)
        lr_scheduler_type="linear",
        warmup_steps=0,
        dataset_num_proc=None,
        use_cpu=default_device().type == "cpu",
        # under a launcher (DDP): every trainable parameter takes part in every step (LoRA on
        # q/k/v/o, or the whole model), so DDP need not search the graph for unused ones
        ddp_find_unused_parameters=False,
    )


def dpo_config(settings: TrainSettings, output_dir: Path) -> DPOConfig:
    """trl's DPOConfig for ``settings`` (unset settings take their defaults)."""
    s = settings.resolved()
    info = L.check_loss(s.loss, label_smoothing=s.label_smoothing)
    return DPOConfig(**{**trainer_args(s, output_dir), **dict(s.extra)}, beta=s.beta, loss_type=[info.trl_type],
                     label_smoothing=s.label_smoothing, precompute_ref_log_probs=info.reference_free)


def lora_config(r: int = 16, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, bias="none", task_type=task_type,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


class JsonlLog:
    """A ``TrainerCallback`` writing every ``log`` call (trl's metrics and ethos's named terms) as
    one JSON line. ``keep_until``: a resumed run keeps the lines of steps up to its checkpoint.
    ``write`` False (the ranks but 0 of a launch): the rows are kept in memory only."""

    def __new__(cls, path: Path, keep_until: int | None = None, *, write: bool = True):
        from transformers import TrainerCallback

        from .io import atomic_write_text

        class _Cb(TrainerCallback):
            def __init__(self) -> None:
                self.path = path
                self.write = write
                self.rows: list[dict[str, Any]] = []
                if not write:
                    return
                if keep_until is not None and path.is_file():
                    for line in path.read_text(encoding="utf-8").splitlines():
                        try:
                            row = json.loads(line)
                        except ValueError:  # a line cut by a kill
                            continue
                        if isinstance(row, dict) and row.get("step", math.inf) <= keep_until:
                            self.rows.append(row)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in self.rows))

            def on_log(self, args, state, control, logs=None, **kw):
                row = {"step": state.global_step, "time": round(time.time(), 3), **(logs or {})}
                self.rows.append(row)
                if not self.write:
                    return
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row, default=float) + "\n")

        return _Cb()


def build_trainer(model: Any, tokenizer: Any, dataset: Any, settings: TrainSettings, *, out: Path,
                  layer: int | None = None, rules: Sequence[ActivationRule] = (), ref_model: Any = None,
                  callbacks: Sequence[Any] = (), vanilla: bool = False) -> Any:
    """A :class:`ShapedDPOTrainer` writing its checkpoints to ``out`` with ``rules`` at block
    ``layer`` (or plain ``DPOTrainer`` with ``vanilla=True``, for benchmarks)."""
    s = settings.resolved()
    kwargs: dict[str, Any] = dict(args=dpo_config(s, Path(out)), train_dataset=dataset, processing_class=tokenizer,
                                  peft_config=lora_config(s.lora_r) if s.lora else None,
                                  callbacks=list(callbacks))
    if ref_model is not None:
        kwargs["ref_model"] = ref_model
    if vanilla:
        return quiet(DPOTrainer(model, **kwargs))
    return quiet(ShapedDPOTrainer(model, rules=rules, layer=layer, loss=s.loss, simpo_gamma=s.simpo_gamma, **kwargs))


def quiet(trainer: Any) -> Any:
    """``trainer`` without transformers' printing of every log dict to stdout (ethos logs to
    OUT/log.jsonl and shows progress with :mod:`ethos.runtime.progress`)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def read_dataset(path: Path, limit: int | None = None):
    """``ethos apply``'s dataset.parquet as a ``datasets.Dataset`` (:func:`dataset_from_table`)."""
    import pyarrow.parquet as pq

    return dataset_from_table(pq.read_table(path), limit=limit)


def dataset_from_table(table: Any, limit: int | None = None):
    """An apply dataset (an Arrow table, as ``ethos apply`` writes it) as a ``datasets.Dataset``
    with the trl columns and the per-pair ones; ``limit``: its first N rows."""
    from datasets import Dataset

    if limit is not None:
        table = table.slice(0, limit)
    keep = ("prompt", "chosen", "rejected", WEIGHT_COLUMN, OFFSET_COLUMN)
    return Dataset.from_list([{k: r.get(k) for k in keep if k in r} for r in table.to_pylist()])


def finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False

"""One training run under a plan: load the model, build the shaped trainer (DPO with any shapeable
loss, or a reward model; weights, margin offsets, activation rules from the Plan), train with
checkpoints, save the weights and the train record.

:func:`ethos.runtime.api.train` resolves where the plan, its training config and the shaped table
come from (a policy applied in memory, an apply folder, an ``Applied``) and calls
:func:`run_training`.

**Complete only with train.json.** A run writes, in this order: ``OUT/checkpoints/`` while it
trains, then the weights (``OUT/adapter`` or ``OUT/model``), ``OUT/plan.json``, and last,
atomically, ``OUT/train.json``; it removes an old train.json before anything else. A folder
without train.json is an unfinished run: readers (``ethos evaluate``) refuse it.

**Checkpoints and resuming.** Every ``save_steps`` steps (default 50; 0: none) trl/transformers
save the adapter (or model), optimizer, scheduler and RNG states to
``OUT/checkpoints/checkpoint-N``; ethos marks each one complete (``ethos-checkpoint.json``, written
after transformers' own files) and keeps the last two. ``OUT/checkpoints/run.json`` holds the run's
identity: a hash of the plan, the training rows, the base model's fingerprint, the layer, the
activation rules and every setting that changes the result. Rerunning the same command resumes
from the newest complete checkpoint of the same run (``resume=None``, the default) and gives the
same weights and losses as an uninterrupted run; checkpoints of a different run are an error
(``resume=False`` starts over, discarding them; ``resume=True`` requires a checkpoint). After a
complete run the checkpoints are removed.

**Under a launcher** (``torchrun --nproc_per_node N`` or ``accelerate launch``) every rank runs
:func:`run_training` and trl's trainer trains data-parallel (DDP; ``--batch-size`` pairs per
process and step: an effective batch of batch size × gradient accumulation × processes, which
train.json records with ``world_size``). Rank 0 alone loads the model first (filling any model
cache), computes the concept directions and hands them to the others, decides what to resume,
marks checkpoints and writes every output (log.jsonl, the weights, plan.json, train.json); the
other ranks return only once it has (:mod:`ethos.runtime.distributed`). A checkpoint of a run
with another number of processes is a different run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ethos.compiler.plan import Plan, dump_plan

from .documents import TRAIN_RECORD_FORMAT, TRAIN_RECORD_KIND
from .errors import EthosError
from .settings import TrainSettings

CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"
MARK_FILE = "ethos-checkpoint.json"


@dataclass
class Trained:
    """A finished run: the train record (train.json as written), the trained model and its
    tokenizer, and the apply step when the run started from a policy."""

    out: Path
    record: dict[str, Any]
    model: Any
    tokenizer: Any
    applied: Any = None  # the api.Applied step when the run started from a policy

    @property
    def weights(self) -> Path | None:
        """The saved adapter (LoRA) or model folder; None when the weights were not saved."""
        return self.out / self.record["weights"] if self.record.get("weights") else None

    def summary_line(self) -> str:
        r = self.record["result"]
        what = "reward model" if self.record.get("objective") == "reward_model" else \
            f"DPO ({self.record['settings'].get('loss', 'sigmoid')})"
        resumed = f", resumed at step {r['resumed_from']}" if r.get("resumed_from") else ""
        return (f"trained {what}: {self.record['settings']['steps']} steps in {r['seconds']:.0f} s{resumed} "
                f"(loss {r['training_loss']:.4f}; {len(self.record['rules'])} activation rule(s)); "
                f"wrote {self.out / (self.record['weights'] or '')}, {self.out / 'train.json'}, "
                f"{self.out / 'log.jsonl'}")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the checkpoints in ``folder`` that ethos marked complete, oldest first."""
    found = []
    for p in folder.glob("checkpoint-*") if folder.is_dir() else ():
        mark = p / MARK_FILE
        try:
            step = int(json.loads(mark.read_text(encoding="utf-8"))["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append((step, p))
    return sorted(found)


def checkpoint_step(out: str | Path) -> int | None:
    """The step of the newest complete checkpoint of the run in ``out`` (None: none)."""
    found = complete_checkpoints(Path(out) / CHECKPOINTS)
    return found[-1][0] if found else None


def interrupted_message(out: str | Path, save_steps: int | None = None) -> str:
    """What a user reads after Ctrl-C: where the run can resume from."""
    step = checkpoint_step(out)
    if step is not None:
        return (f"interrupted; the checkpoint of step {step} is in {Path(out) / CHECKPOINTS}: run the same command "
                "again to resume")
    if save_steps == 0:
        return "interrupted; no checkpoints are saved with --save-steps 0: nothing to resume"
    every = f" (every {save_steps} steps)" if save_steps else ""
    return f"interrupted before the first checkpoint{every}; nothing to resume"


def _resume_point(folder: Path, key: str, resume: bool | None) -> tuple[int, Path] | None:
    """The checkpoint to resume from, or None: then ``folder`` is emptied and holds only the new
    run's run.json."""
    from .io import atomic_write_text

    run_file = folder / RUN_FILE
    try:
        old = json.loads(run_file.read_text(encoding="utf-8")).get("key") if run_file.is_file() else None
    except (OSError, ValueError, AttributeError):
        old = None
    found = complete_checkpoints(folder) if resume is not False else []
    if found and old != key:
        raise EthosError(f"{folder} holds checkpoints of a different run (another plan, data, model or settings): "
                         "pass --no-resume to discard them, or write to another --out")
    if found:
        return found[-1]
    if resume is True:
        raise EthosError(f"nothing to resume: {folder} holds no complete checkpoint of this run")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_file, json.dumps({"key": key}) + "\n")
    return None


def _checkpoint_marker(group: Any = None):
    """A callback marking each checkpoint complete once transformers has written all of it (under
    a launcher: once every rank has written its part — its RNG state — and by rank 0 only)."""
    from transformers import TrainerCallback

    from .io import atomic_write_text

    class _Mark(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if group is not None:
                group.barrier()
                if not group.is_main:
                    return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write_text(folder / MARK_FILE, json.dumps({"step": state.global_step}) + "\n")

    return _Mark()


def _progress_callback(bar: Any):
    """A callback advancing the ``train`` progress stage by one step, with the last loss."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            bar.advance(state.global_step - bar.done)  # a resumed run starts at its checkpoint

        def on_step_end(self, args, state, control, **kw):
            bar.advance(1)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                bar.advance(0, note=f"loss {float(logs['loss']):.4f}")

    return _Progress()


def run_key(plan: Plan, dataset: Any, fingerprint: str, layer: int, rules: list[Any], settings: TrainSettings,
            name: str, world_size: int = 1) -> str:
    """The identity of a run: what must match for a checkpoint to be resumed (the number of
    processes of a launch too: it changes the batches)."""
    import numpy as np

    from .device import to_numpy

    h = hashlib.sha256()
    s = settings.record(len(dataset))
    s.update(bf16=settings.bf16, grad_accum=settings.grad_accum, shaping=settings.shaping,
             gradient_checkpointing=settings.gradient_checkpointing, extra=dict(settings.extra))
    if world_size > 1:  # (a plain process keeps the key it always had)
        s["world_size"] = world_size
    for part in (dump_plan(plan), fingerprint, name, str(layer), json.dumps(s, sort_keys=True, default=str),
                 json.dumps(dataset.to_list(), sort_keys=True, default=str)):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    for r in rules:
        h.update(f"{r.protocol}|{r.concept}|{r.factor}|{r.amount}".encode())
        h.update(np.ascontiguousarray(to_numpy(r.directions, np.float32)).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The run


def run_training(plan: Plan, config: dict[str, Any], table: Any, apply_dir: Path, out: Path,
                 settings: TrainSettings) -> Trained:
    """Train under ``plan`` on ``table`` into ``out`` (see the module's docstring). Under a launcher
    (``torchrun``/``accelerate launch``: :func:`ethos.runtime.distributed.open_group`) every rank
    calls it with the same arguments; the ranks train data-parallel and rank 0 alone computes the
    concept directions, decides what to resume and writes ``out`` — the others return its record
    once everything is written."""
    import torch
    from transformers import set_seed

    from . import losses
    from . import trainer as T
    from .device import module_device
    from .distributed import open_group
    from .io import atomic_write_text
    from .model import check_layer, load_model, say
    from .progress import stage

    group = open_group()  # a group of one for a plain process
    main = group.is_main
    s = settings.resolved(config.get("defaults"))
    if not s.reward_model:
        losses.check_loss(s.loss, label_smoothing=s.label_smoothing)
    name = s.model or config.get("model") or plan.model.name

    def start_folder() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.json").unlink(missing_ok=True)  # the completion mark goes first, is written last

    group.share(start_folder)
    set_seed(s.seed)
    if s.reward_model:
        from . import reward as R

        load = lambda: R.load_reward_model(name, dtype=torch.float32, zero_head=True)  # noqa: E731
    else:
        load = lambda: load_model(name, dtype=torch.float32)  # noqa: E731
    model, tokenizer, fingerprint = group.main_first(load)  # rank 0 fills any model cache first
    layer = check_layer(model.config, config.get("layer") if config.get("layer") is not None else plan.model.layer)
    dataset = T.dataset_from_table(table, limit=s.rows)
    if not s.shaping:
        dataset = dataset.map(lambda r: {"weight": 1.0, "margin_offset": 0.0})
    rules: list[Any] = []
    needed = T.rule_concepts(plan) if s.shaping else []
    if needed:
        # rank 0 computes them (a probe may write its cache); every rank trains with the same ones
        directions = group.share(lambda: {k: v.detach().cpu() for k, v in T.concept_directions(
            plan, model, tokenizer, layer, concepts=needed, fingerprint=fingerprint, model_name=name).items()})
        device = module_device(model)
        rules = T.rules_from_plan(plan, {k: v.to(device) for k, v in directions.items()})

    checkpoints = out / CHECKPOINTS
    key = run_key(plan, dataset, fingerprint, layer, rules, s, name, world_size=group.world_size)
    start = group.share(lambda: _resume_point(checkpoints, key, s.resume))
    if start is not None and main:
        say(f"resuming from step {start[0]} ({start[1]})")
    set_seed(s.seed)  # the same state whether or not directions were computed above
    log = T.JsonlLog(out / "log.jsonl", keep_until=start[0] if start else None, write=main)
    callbacks = [log, _checkpoint_marker(group)]
    if s.reward_model:
        trainer = R.build_reward_trainer(model, tokenizer, dataset, s, out=checkpoints, layer=layer, rules=rules,
                                         callbacks=callbacks)
    else:
        trainer = T.build_trainer(model, tokenizer, dataset, s, out=checkpoints, layer=layer, rules=rules,
                                  callbacks=callbacks)
    rows_trained = len(trainer.train_dataset)
    if rows_trained == 0:
        raise T.TrainerError(f"no pair fits in --max-length {s.max_length} tokens")
    cut = getattr(trainer, "pairs_cut", None)
    if cut and main:
        say(f"{cut} of {rows_trained} pairs are longer than --max-length {s.max_length} tokens: trained on their "
            f"first {s.max_length} tokens")
    t0 = time.perf_counter()
    with stage("train", total=s.steps, unit="steps", enabled=s.progress and main) as bar:
        trainer.add_callback(_progress_callback(bar))
        trainer.train(resume_from_checkpoint=str(start[1]) if start else None)
    seconds = time.perf_counter() - t0
    trainer.remove_hooks()
    weights_dir = out / ("adapter" if s.lora else "model")
    settings_record = {**s.record(len(dataset)), "world_size": group.world_size,
                       "effective_batch_size": s.batch_size * s.grad_accum * group.world_size}

    def finish() -> dict[str, Any]:
        """Rank 0: the weights, plan.json and, last, train.json; the record every rank returns."""
        steps_logged = [r for r in log.rows if "loss" in r]
        if not steps_logged or not all(T.finite(r["loss"]) for r in steps_logged):
            raise T.TrainerError("training produced a non-finite loss")
        if s.save:
            trainer.model.save_pretrained(weights_dir)
            tokenizer.save_pretrained(weights_dir)
        record = {
            **config,
            "format": TRAIN_RECORD_FORMAT,
            "kind": TRAIN_RECORD_KIND,
            "objective": "reward_model" if s.reward_model else "dpo",
            "base_model": name,
            "base_fingerprint": fingerprint,
            "layer": layer,
            "weights": weights_dir.name if s.save else None,
            "apply_dir": str(apply_dir),
            "shaping": s.shaping,
            "rules": [{"protocol": r.protocol, "concept": r.concept, "factor": r.factor, "amount": r.amount,
                       "directions": int(r.directions.shape[0])} for r in rules],
            "settings": settings_record,
            "result": {"training_loss": sum(float(r["loss"]) for r in steps_logged) / len(steps_logged),
                       "seconds": seconds, "seconds_per_step": seconds / max(1, s.steps), "last": steps_logged[-1],
                       "rows_trained": rows_trained, "resumed_from": start[0] if start else None,
                       **({"pairs_cut": cut} if cut is not None else {})},
        }
        atomic_write_text(out / "plan.json", dump_plan(plan))
        text = json.dumps(record, indent=2, default=float)
        atomic_write_text(out / "train.json", text + "\n")  # last: the run is complete
        shutil.rmtree(checkpoints, ignore_errors=True)
        return json.loads(text)

    # the other ranks wait here until rank 0 has written everything: every rank's exit means done
    record = group.share(finish)
    return Trained(out, record, trainer.model, tokenizer)

"""``ethos train`` and ``ethos evaluate``.

``ethos train POLICY|APPLY_DIR --out DIR``: given a policy it first plans and applies it (the
outputs of ``ethos apply`` go to ``DIR/apply/``); given an ``ethos apply`` folder it trains on
that. DPO (trl) with the plan's per-pair weights, margin offsets and training-time interventions
(:mod:`ethos.runtime.trainer`); LoRA r=16 on q/k/v/o by default. Writes::

    DIR/adapter/ (or DIR/model/ with --full)   the trained weights
    DIR/plan.json                              the plan it was trained under
    DIR/train.json                             apply's training config + the settings and results
    DIR/log.jsonl                              every logged step: trl's metrics and ethos's terms

``ethos evaluate --base M --models DIR... --prompts PATH --policy FILE [--out DIR]``: see
:mod:`ethos.runtime.evaluate`. With ``--out`` it writes ``DIR/evaluate.json`` (the report
document), ``DIR/evaluate.md`` and ``DIR/evaluate.html`` (rendered from it by
:mod:`ethos.runtime.report`, like the plan and audit reports).

Exit codes: 0 ok, 1 a failed run or bad input, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

TRAIN_FORMAT = 1


class TrainCliError(Exception):
    """An expected failure with a one-line message."""


def _fail(command: str, message: str, code: int = 1) -> int:
    print(f"ethos {command}: error: {message}", file=sys.stderr)
    return code


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "train", help="DPO under a plan (weights, margin offsets, ablation, steering, penalty)",
        description="Train with DPO (trl) under a policy or an `ethos apply` output folder. Given a policy, "
                    "it plans and applies it first (outputs in OUT/apply/). LoRA (r=16, q/k/v/o) by default. "
                    "Writes OUT/adapter (or OUT/model), OUT/plan.json, OUT/train.json, OUT/log.jsonl.")
    s.add_argument("source", metavar="POLICY|APPLY_DIR")
    s.add_argument("--data", metavar="PATH", help="preference data for a policy (default: the embedded sample)")
    s.add_argument("--limit", type=int, metavar="N", help="the first N input rows (policy) or training rows (folder)")
    s.add_argument("--out", required=True, metavar="DIR")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--lora", dest="lora", action="store_true", default=None, help="train a LoRA adapter (default)")
    g.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning")
    s.add_argument("--model", metavar="NAME|DIR", help="override the plan's model")
    s.add_argument("--steps", type=int, default=100, metavar="N")
    s.add_argument("--lr", type=float, metavar="X", help="learning rate (default: train.json's, 2e-4)")
    s.add_argument("--beta", type=float, metavar="B", help="DPO beta (default: train.json's, 0.1)")
    s.add_argument("--batch-size", type=int, default=4, metavar="B")
    s.add_argument("--max-length", type=int, metavar="L", help="tokens per sequence (default: train.json's, 256)")
    s.add_argument("--lora-r", type=int, metavar="R")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-shaping", action="store_true",
                   help="ignore weights, offsets and training interventions (a vanilla-DPO control)")
    s.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "evaluate", help="compare trained models with the base on held-out prompts, concept by concept",
        description="Generate on held-out prompts (greedy, and sampled with fixed seeds), score every policy "
                    "concept with the same lenses, report each concept's shift against the base with bootstrap "
                    "CIs, and compare the plan's predicted shifts with the measured ones.")
    e.add_argument("--base", required=True, metavar="MODEL", help="the base model (name or folder)")
    e.add_argument("--models", required=True, nargs="+", metavar="DIR", help="`ethos train` output folders (or model folders)")
    e.add_argument("--prompts", required=True, metavar="PATH", help="jsonl with \"prompt\", or preference data")
    e.add_argument("--policy", required=True, metavar="FILE", help="the policy whose concepts are scored")
    e.add_argument("--limit", type=int, default=50, metavar="N", help="held-out prompts (default 50)")
    e.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    e.add_argument("--samples", type=int, default=0, metavar="N", help="sampled generations per prompt (seeds 0..N-1)")
    e.add_argument("--batch-size", type=int, default=16, metavar="B")
    e.add_argument("--out", metavar="DIR", help="write evaluate.json, evaluate.md and evaluate.html here")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=run_evaluate)


# ---------------------------------------------------------------------------------------------
# train


def apply_policy(policy: str, *, data: str | None, limit: int | None, out: Path, seed: int = 0) -> Path:
    """Run ``ethos apply`` (the lead's handler, unchanged) into ``out``; returns ``out``."""
    from . import apply as apply_mod

    ns = argparse.Namespace(policy=policy, data=data, limit=limit, strict=False, batch_size=8, seed=seed,
                            update_lock=False, out=str(out))
    code = apply_mod.run_apply(ns)
    if code != 0:
        raise TrainCliError(f"apply failed for {policy} (exit {code})")
    return out


def read_apply_dir(folder: Path) -> tuple[Any, dict[str, Any]]:
    from ethos.compiler.plan import load_plan

    for name in ("train.json", "plan.json", "dataset.parquet"):
        if not (folder / name).is_file():
            raise TrainCliError(f"{folder} is not an `ethos apply` output folder (no {name})")
    try:
        plan = load_plan((folder / "plan.json").read_text(encoding="utf-8"))
        config = json.loads((folder / "train.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise TrainCliError(f"{folder}: {e}") from e
    return plan, config


def train_from_apply(apply_dir: Path, out: Path, *, steps: int = 100, lora: bool | None = None,
                     lr: float | None = None, beta: float | None = None, batch_size: int = 4,
                     max_length: int | None = None, lora_r: int | None = None, seed: int = 0,
                     limit: int | None = None, model_name: str | None = None, shaping: bool = True,
                     progress: bool = True, save: bool = True, extra_log: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on an ``ethos apply`` folder; returns the run summary (also in ``out/train.json``)."""
    import torch
    from transformers import set_seed

    from ethos.compiler.plan import dump_plan

    from . import trainer as T
    from .io import atomic_write_text
    from .model import check_layer, load_model

    plan, config = read_apply_dir(apply_dir)
    defaults = config.get("defaults", {})
    name = model_name or config.get("model") or plan.model.name
    set_seed(seed)
    model, tokenizer, fingerprint = load_model(name, dtype=torch.float32)
    layer = check_layer(model.config, config.get("layer") if config.get("layer") is not None else plan.model.layer)
    dataset = T.read_dataset(apply_dir / "dataset.parquet", limit=limit)
    if not shaping:
        dataset = dataset.map(lambda r: {"weight": 1.0, "margin_offset": 0.0})
    interventions = config.get("training_interventions", []) if shaping else []
    rules: list[Any] = []
    if interventions:
        needed = sorted({i["concept"] for i in interventions})
        dirs = T.concept_directions(plan, model, tokenizer, layer, concepts=needed, fingerprint=fingerprint,
                                    model_name=name)
        rules = T.rules_from_interventions(interventions, dirs)
    settings = T.TrainSettings(
        model=name, out=out, layer=layer,
        lora=defaults.get("lora", True) if lora is None else lora,
        lora_r=lora_r or defaults.get("lora_r", 16), steps=steps,
        learning_rate=lr if lr is not None else defaults.get("learning_rate", 2e-4),
        beta=beta if beta is not None else defaults.get("beta", 0.1),
        batch_size=batch_size, max_length=max_length or defaults.get("max_length", 256), seed=seed,
        progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    log = T.JsonlLog(out / "log.jsonl")
    trainer = T.build_trainer(model, tokenizer, dataset, settings, rules=rules, callbacks=[log])
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    trainer.remove_hooks()
    steps_logged = [r for r in log.rows if "loss" in r]
    if not steps_logged or not all(T.finite(r["loss"]) for r in steps_logged):
        raise TrainCliError("training produced a non-finite loss")
    weights_dir = out / ("adapter" if settings.lora else "model")
    if save:
        trainer.model.save_pretrained(weights_dir)
        tokenizer.save_pretrained(weights_dir)
    summary = {
        **config,
        "format": TRAIN_FORMAT,
        "kind": "ethos-train",
        "base_model": name,
        "base_fingerprint": fingerprint,
        "layer": layer,
        "weights": weights_dir.name if save else None,
        "apply_dir": str(apply_dir),
        "shaping": shaping,
        "rules": [{"protocol": r.protocol, "concept": r.concept, "factor": r.factor, "amount": r.amount,
                   "directions": int(r.directions.shape[0])} for r in rules],
        "settings": {"lora": settings.lora, "lora_r": settings.lora_r, "steps": steps,
                     "learning_rate": settings.learning_rate, "beta": settings.beta, "batch_size": batch_size,
                     "max_length": settings.max_length, "seed": seed, "rows": len(dataset)},
        "result": {"training_loss": result.training_loss, "seconds": seconds,
                   "seconds_per_step": seconds / max(1, steps), "last": steps_logged[-1]},
        **(extra_log or {}),
    }
    atomic_write_text(out / "plan.json", dump_plan(plan))
    atomic_write_text(out / "train.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def run_train(args: argparse.Namespace) -> int:
    os.environ.setdefault("WANDB_DISABLED", "true")
    for flag in ("steps", "batch_size"):
        if getattr(args, flag) < 1:
            return _fail("train", f"--{flag.replace('_', '-')} must be a positive integer", 2)
    if args.limit is not None and args.limit < 1:
        return _fail("train", "--limit must be a positive integer", 2)
    src = Path(args.source)
    out = Path(args.out)
    from .model import ModelError
    from .planner import PlanError, check_output_dir

    try:
        check_output_dir(out)
        if src.is_dir():
            if args.data:
                return _fail("train", "--data goes with a policy, not with an apply folder", 2)
            apply_dir, row_limit = src, args.limit
        elif src.is_file():
            apply_dir = apply_policy(str(src), data=args.data, limit=args.limit, out=out / "apply", seed=args.seed)
            row_limit = None
        else:
            return _fail("train", f"{src}: no such policy file or apply folder")
        summary = train_from_apply(apply_dir, out, steps=args.steps, lora=args.lora, lr=args.lr, beta=args.beta,
                                   batch_size=args.batch_size, max_length=args.max_length, lora_r=args.lora_r,
                                   seed=args.seed, limit=row_limit, model_name=args.model,
                                   shaping=not args.no_shaping, progress=sys.stderr.isatty())
    except (TrainCliError, PlanError, ModelError) as e:
        return _fail("train", str(e))
    except KeyboardInterrupt:
        return _fail("train", "interrupted; nothing saved", 130)
    except Exception as e:  # trl/torch/lens failures: one line, no traceback
        if os.environ.get("ETHOS_DEBUG"):
            raise
        return _fail("train", f"{type(e).__name__}: {e}")
    r = summary["result"]
    print(f"trained {summary['settings']['steps']} steps in {r['seconds']:.0f} s "
          f"(loss {r['training_loss']:.4f}; {len(summary['rules'])} activation rule(s)); "
          f"wrote {out / (summary['weights'] or '')}, {out / 'train.json'}, {out / 'log.jsonl'}")
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from . import evaluate as E

    if args.limit < 1 or args.max_new_tokens < 1 or args.samples < 0 or args.batch_size < 1:
        return _fail("evaluate", "--limit, --max-new-tokens and --batch-size must be positive, --samples >= 0", 2)
    try:
        doc = E.evaluate(base=args.base, models=args.models, prompts=args.prompts, policy=args.policy,
                         limit=args.limit, max_new_tokens=args.max_new_tokens, samples=args.samples,
                         batch_size=args.batch_size, progress=not args.json and sys.stderr.isatty())
    except E.EvaluateError as e:
        return _fail("evaluate", str(e))
    except KeyboardInterrupt:
        return _fail("evaluate", "interrupted", 130)
    except Exception as e:
        if os.environ.get("ETHOS_DEBUG"):
            raise
        return _fail("evaluate", f"{type(e).__name__}: {e}")
    text = json.dumps(doc, indent=2, default=float)
    doc = json.loads(text)  # the reports render from exactly what evaluate.json holds
    md = E.render_markdown(doc)
    if args.out:
        from .io import atomic_write_text

        html = E.render_html(doc)  # both rendered before anything is written
        out = Path(args.out)
        written = [out / "evaluate.html", out / "evaluate.md", out / "evaluate.json"]
        atomic_write_text(written[2], text + "\n")
        atomic_write_text(written[1], md)
        atomic_write_text(written[0], html)
        print("reports: " + ", ".join(str(p) for p in written), file=sys.stderr)
    if args.json:
        print(text)
    else:
        print(md)
    return 0

"""``ethos train``: DPO (or a reward model) under a policy or an ``ethos apply`` folder.

Given a policy it plans and applies it first (the outputs of ``ethos apply`` go to
``OUT/apply/``) and trains on the result; given an apply folder it trains on that. Exit codes: 0
ok, 1 a failed run or bad input, 2 bad arguments.

Under ``torchrun``/``accelerate launch`` every process runs this command: rank 0 alone applies a
policy and hands the shaped data to the others, the ranks train data-parallel, rank 0 writes
every output and prints the result; each rank exits once the outputs are complete, 0 on success
(:mod:`ethos.runtime.training`, :mod:`ethos.runtime.distributed`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ethos.runtime.errors import EthosError, UsageError

from .common import check_limit


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "train", help="DPO or a reward model under a plan (weights, margin offsets, ablation, steering, penalty)",
        description="Train with DPO (trl; any loss that is a function of the preference margin) or a Bradley–Terry "
                    "reward model (--reward-model) under a policy or an `ethos apply` output folder. Given a "
                    "policy, it plans and applies it first (outputs in OUT/apply/). LoRA (r=16, q/k/v/o) by "
                    "default. Saves a checkpoint every --save-steps steps in OUT/checkpoints and resumes from it "
                    "when the same command is run again. Writes OUT/adapter (or OUT/model), OUT/plan.json, "
                    "OUT/log.jsonl and, last, OUT/train.json. Under torchrun or accelerate launch the processes "
                    "train data-parallel (--batch-size pairs each) and rank 0 writes the outputs.")
    s.add_argument("source", metavar="POLICY|APPLY_DIR")
    s.add_argument("--data", metavar="PATH", help="preference data for a policy (default: the embedded sample)")
    s.add_argument("--limit", type=int, metavar="N", help="the first N input rows (policy) or training rows (folder)")
    s.add_argument("--out", required=True, metavar="DIR", help="the run's folder (rerun into it to resume)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--lora", dest="lora", action="store_true", default=None, help="train a LoRA adapter (default)")
    g.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning")
    s.add_argument("--model", metavar="NAME|DIR", help="override the plan's model")
    # a flag not given is None: the setting's default lives in ethos.runtime.settings.TrainSettings
    s.add_argument("--loss", metavar="TYPE",
                   help="DPO loss: sigmoid (default), hinge, ipo, sigmoid_norm, robust, exo_pair, discopop, simpo "
                        "(docs/protocols.md)")
    s.add_argument("--label-smoothing", type=float, metavar="EPS", help="ε of --loss robust and exo_pair")
    s.add_argument("--simpo-gamma", type=float, metavar="G", help="target margin γ of --loss simpo (default 0.5)")
    s.add_argument("--reward-model", action="store_true",
                   help="train a Bradley–Terry reward model (a scalar head on the plan's model) instead of a policy")
    s.add_argument("--steps", type=int, metavar="N", help="optimizer steps (default 100)")
    s.add_argument("--lr", type=float, metavar="X", help="learning rate (default: train.json's, 2e-4)")
    s.add_argument("--beta", type=float, metavar="B", help="DPO beta (default: train.json's, 0.1)")
    s.add_argument("--batch-size", type=int, metavar="B", help="pairs per step and process (default 4)")
    s.add_argument("--max-length", type=int, metavar="L", help="tokens per sequence (default: train.json's, 256)")
    s.add_argument("--lora-r", type=int, metavar="R", help="LoRA rank (default: train.json's, 16)")
    s.add_argument("--seed", type=int, help="seed of the data order and the initialisation (default 0)")
    s.add_argument("--save-steps", type=int, metavar="N", help="a checkpoint every N steps (default 50; 0: none)")
    r = s.add_mutually_exclusive_group()
    r.add_argument("--resume", dest="resume", action="store_true", default=None,
                   help="require a checkpoint of this run in OUT to resume from (by default a run resumes when "
                        "there is one)")
    r.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over, discarding the checkpoints in OUT")
    s.add_argument("--no-shaping", action="store_true",
                   help="ignore weights, offsets and training interventions (a vanilla control)")
    s.set_defaults(func=run_train, command="train")


def quiet_libraries() -> None:
    """Only ethos's own messages: no FutureWarning/UserWarning of torch, transformers, trl,
    datasets, peft; their loggers at errors only; no datasets progress bars. ``python -W`` or
    ``ETHOS_DEBUG=1`` keep everything."""
    import logging
    import sys
    import warnings

    if sys.warnoptions or os.environ.get("ETHOS_DEBUG"):
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"ethos\.")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # trl's and datasets' bars; ethos shows its own progress
    for name in ("transformers", "trl", "peft", "datasets", "accelerate", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()


def run_train(args: Any) -> int:
    from ethos.runtime.settings import DataSettings, TrainSettings

    os.environ.setdefault("WANDB_DISABLED", "true")
    given = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed),
                               ("loss", args.loss), ("label_smoothing", args.label_smoothing),
                               ("simpo_gamma", args.simpo_gamma), ("save_steps", args.save_steps))
             if v is not None}
    settings = TrainSettings(
        **given, learning_rate=args.lr, beta=args.beta, lora=args.lora,
        lora_r=args.lora_r or None, max_length=args.max_length or None,  # 0: the default, as before
        model=args.model, shaping=not args.no_shaping, progress=True,  # a bar on a terminal, else lines
        reward_model=args.reward_model, resume=args.resume)
    for flag in ("steps", "batch_size"):
        if getattr(settings, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be a positive integer")
    if settings.save_steps < 0:
        raise UsageError("--save-steps must be 0 (no checkpoints) or a positive integer")
    if args.reward_model and (args.loss or args.label_smoothing is not None or args.simpo_gamma is not None):
        raise UsageError("--loss, --label-smoothing and --simpo-gamma are DPO settings; a reward model has the "
                         "Bradley–Terry loss")
    check_limit(args.limit)
    quiet_libraries()
    from ethos.runtime import api
    from ethos.runtime.losses import check_loss

    if not args.reward_model:
        check_loss(settings.loss, label_smoothing=settings.label_smoothing)  # exit 2 before any work
    src = Path(args.source)
    data = None
    if src.is_dir():
        if args.data:
            raise UsageError("--data goes with a policy, not with an apply folder")
        settings = dataclasses.replace(settings, rows=args.limit)
    else:
        data = DataSettings(path=args.data, limit=args.limit, seed=settings.seed)
    from ethos.runtime.distributed import close_group, open_group

    try:
        group = open_group()  # under a launcher: the process group DDP trains over; else a group of one
        trained = api.train(src, args.out, settings, data=data)  # under a launcher rank 0 alone applies
    except EthosError:
        raise
    except KeyboardInterrupt:
        from ethos.runtime.training import interrupted_message

        raise EthosError(interrupted_message(args.out, settings.save_steps), exit_code=130) from None
    except Exception as e:  # trl/torch/lens failures: one line, no traceback
        if os.environ.get("ETHOS_DEBUG"):
            raise
        raise EthosError(f"{type(e).__name__}: {e}") from e
    finally:
        close_group()
    if not group.is_main:
        return 0  # rank 0 prints the result
    if trained.applied is not None:
        print(trained.applied.summary_line())
    print(trained.summary_line())
    return 0


"""Step time of ethos's shaped DPO trainer against trl's plain ``DPOTrainer``, in the same run.

Variants (same data, same model, same settings; LoRA r=16 on q/k/v/o):

    vanilla   trl's DPOTrainer
    shaped    ShapedDPOTrainer with per-pair weights and margin offsets
    hooks     ShapedDPOTrainer with weights, offsets, ablation + steering + penalty at the layer

Rounds run the variants in turn (a fresh model each time), so a busy shared CPU slows all of
them alike; the per-step time is the median over the timed steps (the first step of each run is
warm-up and not timed). Goals: shaped ≤ 1.05× vanilla, hooks ≤ 1.15× vanilla.

    .venv/bin/python bench/train_step.py                 # default model, batch 4, max_length 128
    .venv/bin/python bench/train_step.py --tiny          # a tiny random Llama (seconds; plumbing only)
    .venv/bin/python bench/train_step.py --loss ipo      # another loss (docs/protocols.md); vanilla trl runs it too

The pairs are hh-rlhf helpful-base pairs (``--data``, default ``../shared/data/hh-rlhf/helpful-base/
test.jsonl.gz`` beside the repository), read as bench/mitigation.py reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TQDM_DISABLE", "1")


def pairs_dataset(path: Path, n: int, seed: int = 0):
    import random

    from datasets import Dataset

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mitigation import load_hh

    rows, _ = load_hh(path)  # (short single-turn pairs, other prompts)
    if len(rows) < n:
        raise SystemExit(f"{path}: only {len(rows)} usable pairs, need {n} (--steps × --batch-size × 2)")
    rows = rows[:n]
    rng = random.Random(seed)
    return Dataset.from_list([{
        "prompt": [{"role": "user", "content": u}], "chosen": [{"role": "assistant", "content": c}],
        "rejected": [{"role": "assistant", "content": r}], "weight": rng.uniform(0.2, 2.0),
        "margin_offset": rng.uniform(-1.0, 1.0)} for u, c, r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=6, help="steps per run (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--loss", default="sigmoid", help="the DPO loss of the shaped variants (vanilla trl runs the same)")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--data", type=Path, default=None, help="hh-rlhf jsonl.gz (default: the shared helpful-base test split)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mitigation import default_hh

    data_path = args.data or default_hh()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from ethos.runtime import trainer as T
    from ethos.runtime.model import resolve_model
    from ethos.runtime.settings import TrainSettings

    torch.set_num_threads(int(os.environ.get("ETHOS_THREADS", "2")))
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))
        from conftest import build_tiny_model

        folder = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
        layer = 0
    else:
        from ethos.compiler.names import DEFAULT_MODEL

        folder = resolve_model(DEFAULT_MODEL)
        layer = 15
    tok = AutoTokenizer.from_pretrained(folder)
    ds = pairs_dataset(data_path, args.batch_size * args.steps * 2)

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], 0.0

        def on_step_begin(self, a, s, c, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            self.times.append(time.perf_counter() - self._t)

    def run(variant: str) -> list[float]:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        d = model.config.hidden_size
        g = torch.Generator().manual_seed(0)
        u = torch.randn(d, generator=g)
        u = (u / u.norm())[None]
        rules = []
        if variant == "hooks":
            rules = [T.ActivationRule("ablation", "a", 0.0, T.orthonormal_rows(torch.randn(3, d, generator=g))),
                     T.ActivationRule("steering", "s", 0.0, u, 4.0), T.ActivationRule("penalty", "p", 0.0, u, 0.1)]
        data = ds if variant != "vanilla" else ds.remove_columns(["weight", "margin_offset"])
        s = TrainSettings(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, progress=False,
                          loss=args.loss, label_smoothing=args.label_smoothing, save_steps=0)
        clock = Clock()
        tr = T.build_trainer(model, tok, data, s, out=Path(tempfile.mkdtemp()), layer=layer, rules=rules,
                             callbacks=[clock], vanilla=variant == "vanilla")
        tr.train()
        return clock.times[1:]

    variants = ("vanilla", "shaped", "hooks")
    times = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            times[v] += run(v)
            print(f"round {r}: {v} median {statistics.median(times[v]):.3f} s/step", file=sys.stderr, flush=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    res = {"model": "tiny" if args.tiny else "smollm2-135m-instruct", "loss": args.loss, "batch_size": args.batch_size,
           "max_length": args.max_length, "steps_timed": {v: len(t) for v, t in times.items()},
           "median_s_per_step": med, "ratio": {v: med[v] / med["vanilla"] for v in variants},
           "goals": {"shaped": 1.05, "hooks": 1.15}}
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

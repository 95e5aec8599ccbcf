"""Training in bf16, as it runs on a GPU (``pick_dtype`` loads the model in bf16 on CUDA and
``pick_bf16`` turns mixed precision on): the tiny model in bf16 with weights, margin offsets and
every activation hook (ablation, steering, penalty, whose directions are float32 as probes and SAEs
give them), on the CPU. A dtype mixed up in a hook or in the recomputed loss fails here as it would
on CUDA, where this path is the default."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")

from ethos.runtime import trainer as T  # noqa: E402
from ethos.runtime.settings import TrainSettings  # noqa: E402

PAIRS = [
    ("Hello, how are you today?", "I am fine, thank you!", "Sorry, I cannot help with that."),
    ("What is the capital of France?", "The capital of France is Paris.", "Perhaps you might ask someone else."),
    ("Give me a list.", "Here is a list: apples, pears.", "I think it may be true."),
    ("Is water hot?", "Water boils at 100 degrees.", "It could be otherwise."),
]


def _unit(d: int, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return (v / v.norm())[None, :]


def test_two_bf16_steps_with_every_protocol(tiny_model_dir, tmp_path, monkeypatch):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ETHOS_DTYPE", "bfloat16")
    assert T.pick_bf16(TrainSettings()) is True  # what a GPU gets by default
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "weight": w, "margin_offset": o}
            for (p, c, r), w, o in zip(PAIRS, [1.0, 0.5, 2.0, 1.0], [0.1, 0.0, -0.2, 0.3])]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    d = model.config.hidden_size
    rules = [T.ActivationRule("ablation", "a", 0.0, _unit(d, 2)),
             T.ActivationRule("steering", "s", 0.5, _unit(d, 1), 2.0),
             T.ActivationRule("penalty", "p", 0.0, _unit(d, 1), 0.1)]
    assert all(r.unit.dtype == torch.float32 for r in rules)
    log = T.JsonlLog(tmp_path / "log.jsonl")
    s = TrainSettings(lora=True, lora_r=4, steps=2, batch_size=2, max_length=64, progress=False, learning_rate=1e-2)
    tr = T.build_trainer(model, tok, Dataset.from_list(rows), s, out=tmp_path / "run", layer=0, rules=rules,
                         callbacks=[log])
    assert tr.args.bf16
    out = tr.train()
    assert math.isfinite(out.training_loss)
    steps = [r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 2
    for key in ("ethos/weighted_loss", "ethos/margin_offset_mean", "ethos/penalty", "ethos/ablation_norm_removed",
                "ethos/steering_norm", "ethos/dpo_loss"):
        assert all(key in r and math.isfinite(r[key]) for r in steps), key
    # the steering vector is (1 − k)·strength·u, in bf16's precision
    assert steps[0]["ethos/steering_norm"] == pytest.approx(1.0, rel=1e-2)
    # the LoRA weights moved and stayed finite
    lora = [p for n, p in tr.model.named_parameters() if "lora_B" in n]
    assert lora and all(torch.isfinite(p).all() for p in lora) and any(p.abs().sum() > 0 for p in lora)

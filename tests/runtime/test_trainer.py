"""The shaped DPO trainer on a tiny random Llama: hooks fire only in training forwards, ablation
removes the direction, the margin offset and the weights change the loss exactly as the formula
says, a 2-step run with every protocol logs its named terms, and the trl internals ethos relies on
are still where they were (trl is pinned to 1.16)."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F

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


def dataset(weights=None, offsets=None):
    from datasets import Dataset

    rows = []
    for i, (p, c, r) in enumerate(PAIRS):
        rows.append({
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
            "weight": 1.0 if weights is None else weights[i],
            "margin_offset": 0.0 if offsets is None else offsets[i],
        })
    return Dataset.from_list(rows)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("WANDB_DISABLED", "true")
    return tmp_path


def load(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tok


def unit(d=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    return (v / v.norm())[None, :]


def make(tiny_model_dir, tmp_path, *, rules=(), lora=True, steps=2, ds=None, **kw):
    model, tok = load(tiny_model_dir)
    s = TrainSettings(lora=lora, lora_r=4, steps=steps, batch_size=4, max_length=64, bf16=False, progress=False,
                      learning_rate=1e-2, **kw)
    return T.build_trainer(model, tok, ds if ds is not None else dataset(), s, out=tmp_path / "run", layer=0,
                           rules=rules)


def batch(trainer):
    b = next(iter(trainer.get_train_dataloader()))
    return {k: v for k, v in b.items()}


# ---------------------------------------------------------------------------------------------
# trl internals ethos depends on (fail loudly when trl moves them)


def test_trl_internals_are_where_ethos_expects_them():
    import trl
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    assert trl.__version__.startswith(T.TRL_SERIES), "trl is pinned to 1.16: re-check ethos.runtime.trainer"
    assert list(inspect.signature(DPOTrainer._compute_loss).parameters) == ["self", "model", "inputs", "return_outputs"]
    assert list(inspect.signature(DPOTrainer._set_signature_columns_if_needed).parameters) == ["self"]
    src = inspect.getsource(DPOTrainer._compute_loss)
    # the policy forward first, then the reference forward, both through the fused LM head
    assert src.index("outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)") < src.index("ref_outputs = ")
    assert "logps.chunk(2, dim=0)" in src and "-F.logsigmoid(self.beta * delta_score)" in src
    assert {f.name for f in __import__("dataclasses").fields(DataCollatorForPreference)} >= {
        "pad_token_id", "max_length", "truncation_mode", "pad_to_multiple_of"}


# ---------------------------------------------------------------------------------------------
# Loss: margin offsets and weights


def _hand_loss(trainer, b, w, o):
    out = trainer.last_outputs
    seq = b["completion_mask"].size(1) - 1
    pol = out[0].log_probs[:, -seq:].sum(1).detach()
    ref = out[1].log_probs[:, -seq:].sum(1).detach()
    c, r = (pol - ref).chunk(2)
    h = trainer.beta * (c - r)
    return float((torch.tensor(w) * -F.logsigmoid(h + torch.tensor(o))).mean()), h


def test_margin_offset_and_weights_change_the_loss_as_the_formula_says(tiny_model_dir, env):
    w, o = [1.0, 0.5, 2.0, 0.0], [0.25, -1.25, 0.0, 2.5]
    tr = make(tiny_model_dir, env, ds=dataset(w, o), steps=1)
    tr.model.train()
    b = batch(tr)
    bw, bo = b["ethos_weight"].tolist(), b["ethos_margin_offset"].tolist()
    assert sorted(zip(bw, bo)) == sorted(zip(w, o))  # the columns travel with their pairs
    loss = tr.compute_loss(tr.model, b)
    hand, h = _hand_loss(tr, b, bw, bo)
    assert math.isclose(float(loss.detach()), hand, rel_tol=1e-5)
    # offsets zero and weights one: exactly trl's loss
    b0 = dict(b, ethos_weight=torch.ones(4), ethos_margin_offset=torch.zeros(4))
    assert math.isclose(float(tr.compute_loss(tr.model, b0)), float((-F.logsigmoid(h)).mean()), rel_tol=1e-5)
    m = tr._metrics["train"]
    assert m["ethos/margin_offset_mean"][0] == pytest.approx(sum(o) / 4)


def test_a_zero_weight_gives_its_pair_zero_gradient(tiny_model_dir, env):
    tr = make(tiny_model_dir, env, ds=dataset([0.0, 1.0, 1.0, 1.0]), steps=1)
    tr.model.train()
    b = batch(tr)
    zero = int(b["ethos_weight"].tolist().index(0.0))
    live = (zero + 1) % 4
    loss = tr.compute_loss(tr.model, b)
    lp = tr.last_outputs[0].log_probs
    lp.retain_grad()
    loss.backward()
    g = lp.grad
    assert g is not None
    assert float(g[zero].abs().sum()) == 0.0 and float(g[zero + 4].abs().sum()) == 0.0  # chosen row, rejected row
    assert float(g[live].abs().sum()) > 0.0


# ---------------------------------------------------------------------------------------------
# Activation hooks


def test_hooks_fire_only_in_training_forwards(tiny_model_dir, env):
    d = unit()
    rules = [T.ActivationRule("steering", "c", 0.0, d, 3.0)]
    tr = make(tiny_model_dir, env, rules=rules, steps=1)
    tr.model.train()
    b = batch(tr)
    # a plain compute_loss outside a training step: hooks stay off (policy and reference)
    tr.compute_loss(tr.model, b)
    assert tr.hook_calls == {"applied": 0, "skipped": 2}
    # inside a training step: on for the policy forward, off for the reference (no_grad) forward
    tr.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    tr.training_step(tr.model, b)
    assert tr.hook_calls["applied"] == 1 and tr.hook_calls["skipped"] == 3
    # evaluation and generation: off
    tr.model.eval()
    with torch.no_grad():
        tr.compute_loss(tr.model, b)
    ids = tr.processing_class("Hello", return_tensors="pt")["input_ids"]
    tr.model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tr.hook_calls["applied"] == 1


def test_ablation_removes_the_direction(tiny_model_dir, env):
    d = unit()
    tr = make(tiny_model_dir, env, rules=[T.ActivationRule("ablation", "c", 0.0, d)], steps=1)
    tr.model.train()
    b = batch(tr)
    seen = {}

    def probe(mod, args, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out).detach()

    layers = T._decoder_layers(tr.model)
    handle = layers[1].register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0].detach()))
    try:
        tr._armed = True
        tr.compute_loss(tr.model, b)  # the last layer-1 input seen is the reference pass: not ablated
        ref_proj = (seen["x"][:, 1:] @ d.T).abs().max()
        with torch.enable_grad():
            tr.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        proj = (seen["x"][:, 1:] @ d.T).abs().max()
    finally:
        tr._armed = False
        handle.remove()
    assert float(ref_proj) > 1e-2
    assert float(proj) < 1e-4 * float(seen["x"].norm(dim=-1).max())
    assert tr._metrics["train"]["ethos/ablation_norm_removed"][0] > 0


def test_orthonormalised_sae_rows_and_partial_ablation():
    rows = torch.randn(3, 16)
    D = T.orthonormal_rows(rows)
    assert torch.allclose(D @ D.T, torch.eye(3), atol=1e-5)
    x = torch.randn(5, 16)
    # dampen 0.25 removes 75% of the component in the span
    after = x - 0.75 * ((x @ D.T) @ D)
    assert torch.allclose(after @ D.T, 0.25 * (x @ D.T), atol=1e-5)


def test_two_steps_with_every_protocol_log_finite_named_terms(tiny_model_dir, env):
    d = unit()
    rules = [T.ActivationRule("ablation", "a", 0.0, unit(seed=2)),
             T.ActivationRule("steering", "s", 0.5, d, 2.0),
             T.ActivationRule("penalty", "p", 0.0, d, 0.1)]
    log = T.JsonlLog(env / "log.jsonl")
    model, tok = load(tiny_model_dir)
    s = TrainSettings(lora=True, lora_r=4, steps=2, batch_size=2, max_length=64, bf16=False, progress=False)
    tr = T.build_trainer(model, tok, dataset([1.0, 0.5, 2.0, 1.0], [0.1, 0.0, -0.2, 0.3]), s, out=env / "run",
                         layer=0, rules=rules, callbacks=[log])
    out = tr.train()
    assert math.isfinite(out.training_loss)
    rows = [json.loads(x) for x in (env / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2
    for key in ("ethos/weighted_loss", "ethos/margin_offset_mean", "ethos/penalty", "ethos/ablation_norm_removed",
                "ethos/steering_norm", "ethos/dpo_loss", "rewards/accuracies"):
        assert all(key in r and math.isfinite(r[key]) for r in steps), key
    assert steps[0]["ethos/steering_norm"] == pytest.approx(1.0, rel=1e-5)  # (1 − 0.5) · 2.0 · |u|


def test_full_finetune_with_a_separate_reference(tiny_model_dir, env):
    rules = [T.ActivationRule("steering", "s", 0.0, unit(), 1.0)]
    model, tok = load(tiny_model_dir)
    ref, _ = load(tiny_model_dir)
    s = TrainSettings(lora=False, steps=1, batch_size=2, max_length=64, bf16=False, progress=False)
    tr = T.build_trainer(model, tok, dataset(), s, out=env / "run", layer=1, rules=rules, ref_model=ref)
    assert math.isfinite(tr.train().training_loss)
    assert tr.hook_calls["applied"] == 1  # the separate reference has no hook on its layers


# ---------------------------------------------------------------------------------------------
# Rules from the plan


def test_rules_are_built_from_the_plan_with_the_protocol_argument():
    from ethos.compiler.compile import compile_source

    src = ('concept p = probe "concepts/sycophancy.jsonl";\nconcept q = probe "concepts/sycophancy.jsonl";\n'
           "concept v = metric words;\n"
           "block concept p via ablation;\ndampen concept q by 0.5 via steering 4;\ndampen concept q by 0.5 via penalty 0.1;\n"
           "block concept v via loss;\nblock concept v via filter;\n")
    r = compile_source(src)
    assert r.ok, r.diagnostics
    plan = r.plan
    assert T.rule_concepts(plan) == ["p", "q"]  # the loss and filter rules act in the data, not in training
    dirs = {"p": unit(seed=1), "q": unit(seed=2)}
    rules = T.rules_from_plan(plan, dirs)
    got = [(x.protocol, x.concept, x.factor, x.amount, x.rule_id) for x in rules]
    assert got == [("ablation", "p", 0.0, 0.0, "p/ablation"), ("steering", "q", 0.5, 4.0, "q/steering"),
                   ("penalty", "q", 0.5, 0.1, "q/penalty")]
    assert [x.line for x in rules] == [4, 5, 6]
    assert torch.equal(rules[1].directions, dirs["q"])
    with pytest.raises(T.TrainerError, match="concept 'q' .*has no direction"):
        T.rules_from_plan(plan, {"p": dirs["p"]})


def test_unset_settings_take_the_apply_folder_defaults_then_the_built_in_ones(tmp_path):
    from ethos.runtime.settings import TRAIN_CONFIG_DEFAULTS

    s = TrainSettings(beta=0.3).resolved({"learning_rate": 1e-3, "max_length": 99})
    assert (s.beta, s.learning_rate, s.max_length) == (0.3, 1e-3, 99)
    assert (s.lora, s.lora_r) == (TRAIN_CONFIG_DEFAULTS["lora"], TRAIN_CONFIG_DEFAULTS["lora_r"])
    d = TrainSettings().resolved()
    assert {k: getattr(d, k) for k in TRAIN_CONFIG_DEFAULTS} == dict(TRAIN_CONFIG_DEFAULTS)
    cfg = T.dpo_config(TrainSettings(steps=3, progress=False, bf16=False), tmp_path / "run")
    assert (cfg.beta, cfg.learning_rate, cfg.max_length, cfg.max_steps) == (0.1, 2e-4, 256, 3)


def test_features_directions_are_the_sae_decoder_rows_orthonormalised(tiny_model_dir, tiny_sae_dir):
    from ethos.compiler.compile import compile_source
    from ethos.runtime.sae import load_sae

    r = compile_source(f'sae "{tiny_sae_dir}";\nconcept f = features 1, 2, 5;\nblock concept f via ablation;\n')
    assert r.ok, r.diagnostics
    model, tok = load(tiny_model_dir)
    dirs = T.concept_directions(r.plan, model, tok, 0)
    D = dirs["f"]
    assert D.shape == (3, 64) and torch.allclose(D @ D.T, torch.eye(3), atol=1e-5)
    rows = load_sae(tiny_sae_dir).W_dec.detach()[[1, 2, 5]].float()
    # the same span: each decoder row is reproduced by its projection on D
    assert torch.allclose((rows @ D.T) @ D, rows, atol=1e-4)
    (rule,) = T.rules_from_plan(r.plan, dirs)
    assert rule.protocol == "ablation" and rule.directions is D


def test_probe_direction_is_a_unit_vector_read_with_the_model_runtime(tiny_model_dir, ethos_cache):
    from ethos.compiler.compile import compile_source

    r = compile_source('concept p = probe "concepts/sycophancy.jsonl";\nconcept v = metric words;\n'
                       "block concept p via steering 2;\nblock concept v;\n")
    assert r.ok, r.diagnostics
    model, tok = load(tiny_model_dir)
    model.train()
    dirs = T.concept_directions(r.plan, model, tok, 1, concepts=T.rule_concepts(r.plan), fingerprint="tiny")
    assert list(dirs) == ["p"] and dirs["p"].shape == (1, 64)
    assert float(dirs["p"].norm()) == pytest.approx(1.0, abs=1e-5)
    assert model.training  # the model is left in the mode it was in


def test_two_bf16_steps_with_every_protocol(tiny_model_dir, env, monkeypatch):
    """Training in bf16, as on a GPU (``pick_dtype`` loads the model in bf16 on CUDA and
    ``pick_bf16`` turns mixed precision on), on the CPU: weights, offsets and every hook, whose
    directions are float32 as probes and SAEs give them. A dtype mixed up in a hook or in the
    recomputed loss fails here as it would on CUDA, where this path is the default."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("ETHOS_DTYPE", "bfloat16")
    assert T.pick_bf16(TrainSettings()) is True  # what a GPU gets by default
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rules = [T.ActivationRule("ablation", "a", 0.0, unit(seed=2)),
             T.ActivationRule("steering", "s", 0.5, unit(), 2.0),
             T.ActivationRule("penalty", "p", 0.0, unit(), 0.1)]
    assert all(r.unit.dtype == torch.float32 for r in rules)
    log = T.JsonlLog(env / "log.jsonl")
    s = TrainSettings(lora=True, lora_r=4, steps=2, batch_size=2, max_length=64, progress=False, learning_rate=1e-2)
    tr = T.build_trainer(model, tok, dataset([1.0, 0.5, 2.0, 1.0], [0.1, 0.0, -0.2, 0.3]), s, out=env / "run",
                         layer=0, rules=rules, callbacks=[log])
    assert tr.args.bf16
    assert math.isfinite(tr.train().training_loss)
    steps = [r for r in map(json.loads, (env / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 2
    for key in ("ethos/weighted_loss", "ethos/margin_offset_mean", "ethos/penalty", "ethos/ablation_norm_removed",
                "ethos/steering_norm", "ethos/dpo_loss"):
        assert all(key in r and math.isfinite(r[key]) for r in steps), key
    assert steps[0]["ethos/steering_norm"] == pytest.approx(1.0, rel=1e-2)  # (1 − 0.5)·2·|u|, in bf16
    lora = [p for n, p in tr.model.named_parameters() if "lora_B" in n]  # moved, and finite
    assert lora and all(torch.isfinite(p).all() for p in lora) and any(p.abs().sum() > 0 for p in lora)

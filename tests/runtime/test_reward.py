"""The shaped reward-model trainer on a tiny random Llama: the loss is w·−log σ(r⁺ − r⁻ + o) as
computed by hand, a zero weight gives no gradient, the activation hooks act only in training
passes, the trl internals it relies on are where they were; the reward statistics of ``ethos
evaluate`` recover a planted slope; and ``ethos train --reward-model`` / ``ethos evaluate`` run
end to end."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("trl")

from ethos.runtime import evaluate as E  # noqa: E402
from ethos.runtime import reward as R  # noqa: E402
from ethos.runtime import trainer as T  # noqa: E402
from ethos.runtime.settings import TrainSettings  # noqa: E402

PAIRS = [
    ("Hello, how are you today?", "I am fine, thank you!", "Sorry, I cannot help with that."),
    ("What is the capital of France?", "The capital of France is Paris.", "Perhaps you might ask someone else."),
    ("Give me a list.", "Here is a list: apples, pears.", "I think it may be true."),
    ("Is water hot?", "Water boils at 100 degrees.", "It could be otherwise."),
]
W = [1.0, 0.5, 2.0, 0.0]
O = [0.25, -1.25, 0.0, 2.5]


def dataset(weights=W, offsets=O):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                               "chosen": [{"role": "assistant", "content": c}],
                               "rejected": [{"role": "assistant", "content": r}], "weight": w, "margin_offset": o}
                              for (p, c, r), w, o in zip(PAIRS, weights, offsets)])


def unit(d=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    return (v / v.norm())[None, :]


def make(tiny_model_dir, tmp_path, rules=(), steps=1, max_length=64):
    from transformers import set_seed

    set_seed(0)
    model, tok, _ = R.load_reward_model(tiny_model_dir, dtype=torch.float32)
    s = TrainSettings(lora=True, lora_r=4, steps=steps, batch_size=4, max_length=max_length, bf16=False,
                      progress=False, learning_rate=1e-2, save_steps=0, reward_model=True)
    tr = R.build_reward_trainer(model, tok, dataset(), s, out=tmp_path / "run", layer=0, rules=rules)
    tr.model.train()
    return tr


def test_trl_reward_internals_are_where_ethos_expects_them():
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    src = inspect.getsource(RewardTrainer.compute_loss)
    assert "-nn.functional.logsigmoid(rewards_chosen - rewards_rejected - inputs[\"margin\"])" in src
    assert "torch.chunk(outputs.logits.squeeze(-1), chunks=2)" in src
    columns = inspect.getsource(RewardTrainer._set_signature_columns_if_needed)
    assert '["chosen_ids", "rejected_ids", "margin"]' in columns
    assert {f.name for f in __import__("dataclasses").fields(DataCollatorForPreference)} == {
        "pad_token_id", "pad_to_multiple_of", "return_tensors"}


def test_reward_loss_is_weighted_with_the_offset_and_a_zero_weight_gives_no_gradient(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    tr = make(tiny_model_dir, tmp_path)
    b = next(iter(tr.get_train_dataloader()))
    w, o = b["ethos_weight"], b["ethos_margin_offset"]
    assert sorted(zip(w.tolist(), o.tolist())) == sorted(zip(W, O))  # the columns travel with their pairs
    value, outputs = tr.compute_loss(tr.model, b, return_outputs=True)
    logits = outputs.logits
    logits.retain_grad()
    rc, rr = logits.squeeze(-1).detach().chunk(2)
    expected = float((w * -F.logsigmoid(rc - rr + o)).mean())
    assert math.isclose(float(value.detach()), expected, rel_tol=1e-5)
    value.backward()
    zero = int(w.tolist().index(0.0))
    assert float(logits.grad[zero].abs().sum()) == 0.0 and float(logits.grad[zero + 4].abs().sum()) == 0.0
    assert float(logits.grad[(zero + 1) % 4].abs().sum()) > 0.0
    m = tr._metrics["train"]
    assert m["ethos/margin_offset_mean"][0] == pytest.approx(sum(O) / 4)
    assert m["ethos/reward_loss"][0] == pytest.approx(float((-F.logsigmoid(rc - rr + o)).mean()), rel=1e-5)


def test_long_pairs_are_cut_to_max_length_not_dropped(tiny_model_dir, tmp_path, monkeypatch):
    # trl's RewardTrainer drops longer pairs, which would undo the plan's weights; ethos keeps them, cut
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    full = make(tiny_model_dir, tmp_path)
    assert full.pairs_cut == 0 and full.args.max_length is None
    trl_own = full._prepare_dataset(dataset(), full.processing_class, full.args, "check")  # trl's tokenisation
    assert trl_own["chosen_ids"] == full.train_dataset["chosen_ids"]
    assert trl_own["rejected_ids"] == full.train_dataset["rejected_ids"]
    cut = make(tiny_model_dir, tmp_path, max_length=12)
    assert len(cut.train_dataset) == 4 and cut.pairs_cut == 4
    assert all(len(r["chosen_ids"]) == 12 and len(r["rejected_ids"]) == 12 for r in cut.train_dataset)
    assert [r["chosen_ids"] for r in cut.train_dataset] == [r["chosen_ids"][:12] for r in full.train_dataset]
    b = next(iter(cut.get_train_dataloader()))
    assert b["input_ids"].shape == (8, 12) and sorted(b["ethos_weight"].tolist()) == sorted(W)


def test_reward_hooks_act_only_in_training_steps_and_penalty_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rules = [T.ActivationRule("ablation", "a", 0.0, unit(seed=2)), T.ActivationRule("steering", "s", 0.5, unit(), 2.0)]
    tr = make(tiny_model_dir, tmp_path, rules=rules)
    b = next(iter(tr.get_train_dataloader()))
    tr.compute_loss(tr.model, b)  # outside a training step: off
    assert tr.hook_calls == {"applied": 0, "skipped": 1}
    tr.current_gradient_accumulation_steps = 1
    tr.training_step(tr.model, b)
    assert tr.hook_calls["applied"] == 1
    assert tr._metrics["train"]["ethos/steering_norm"][-1] == pytest.approx(1.0, rel=1e-5)
    assert tr._metrics["train"]["ethos/ablation_norm_removed"][-1] > 0
    tr.model.eval()
    with torch.no_grad():
        tr.compute_loss(tr.model, b)
    assert tr.hook_calls["applied"] == 1
    with pytest.raises(T.TrainerError, match="`via penalty` .* DPO only"):
        make(tiny_model_dir, tmp_path, rules=[T.ActivationRule("penalty", "p", 0.0, unit(), 0.1)])


def test_reward_scores_do_not_depend_on_the_batching(tiny_model_dir):
    model, tok, _ = R.load_reward_model(tiny_model_dir, dtype=torch.float32)
    pairs = [([{"role": "user", "content": p}], c, r) for p, c, r in PAIRS]
    one = E.reward_scores(model, tok, pairs, batch_size=1)
    assert one.shape == (4, 2) and one.dtype == np.float64 and np.all(np.isfinite(one))
    np.testing.assert_allclose(E.reward_scores(model, tok, pairs, batch_size=3), one, rtol=1e-4, atol=1e-5)
    assert not np.allclose(one[:, 0], one[:, 1])  # the replies get their own rewards
    zero, tok, _ = R.load_reward_model(tiny_model_dir, dtype=torch.float32, zero_head=True)
    assert np.all(E.reward_scores(zero, tok, pairs) == 0.0)  # what `ethos train --reward-model` starts from


def test_reward_stats_recover_a_planted_slope():
    rng = np.random.default_rng(0)
    n = 400
    length_c, length_r = rng.normal(10, 3, n), rng.normal(10, 3, n)
    other_c, other_r = rng.normal(0, 1, n), rng.normal(0, 1, n)
    # reward = 0.5 per sd of length + noise; the other concept does not matter
    rewards = np.column_stack([0.5 * length_c / 3 + rng.normal(0, 0.3, n), 0.5 * length_r / 3 + rng.normal(0, 0.3, n)])
    st = E.reward_stats(rewards, {"length": length_c, "other": other_c}, {"length": length_r, "other": other_r},
                        {"length": 3.0, "other": None})
    rows = {r["concept"]: r for r in st["concepts"]}
    assert st["n"] == n and 0.5 < st["accuracy"] < 1.0 and st["accuracy_ci"][0] < st["accuracy"] < st["accuracy_ci"][1]
    assert rows["length"]["sd"] == 3.0 and rows["length"]["ci"][0] < 0.5 < rows["length"]["ci"][1]
    assert rows["length"]["marginal_ci"][0] < 0.5 < rows["length"]["marginal_ci"][1]
    assert rows["other"]["ci"][0] < 0.0 < rows["other"]["ci"][1]
    flat = E.reward_stats(rewards, {"c": np.ones(n)}, {"c": np.ones(n)})  # a concept that never varies
    assert flat["concepts"][0]["slope"] is None and flat["concepts"][0]["ci"] == [None, None]


POLICY = 'policy "t";\nconcept marker = lexicon "marker.txt";\nblock concept marker via loss;\nkeep concept hedging;\n'


def test_train_a_reward_model_and_evaluate_it_from_the_command_line(tiny_model_dir, tmp_path, ethos_cache, monkeypatch,
                                                                     capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ethos.compiler.compile import compile_file
    from ethos.compiler.plan import dump_plan
    from ethos.runtime.cli import main
    from ethos.runtime.outputs import FolderWriter

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "marker.txt").write_text("hope this helps\n")
    policy = tmp_path / "p.ethos"
    policy.write_text(POLICY)
    rows = [{"id": str(i), "prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "weight": w, "margin_offset": o, "inoculation": None}
            for i, ((p, c, r), w, o) in enumerate(zip(PAIRS, W, O))]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    apply_dir = tmp_path / "apply"
    with FolderWriter(apply_dir, "apply", names=["plan.json", "dataset.parquet", "train.json"]) as w:
        w.write("plan.json", dump_plan(compile_file(str(policy)).plan))
        w.write("dataset.parquet", sink.getvalue().to_pybytes())
        w.write("train.json", json.dumps({"model": "smollm2-135m-instruct", "layer": None, "policy": str(policy),
                                          "concepts": {"marker": {"alpha": 1.2, "scale": 3.0}},
                                          "defaults": {"beta": 0.1, "learning_rate": 2e-4, "lora": True, "lora_r": 16,
                                                       "max_length": 256}}))
    out = tmp_path / "rm"
    code = main(["train", str(apply_dir), "--reward-model", "--model", str(tiny_model_dir), "--out", str(out),
                 "--steps", "2", "--batch-size", "2", "--lora-r", "4", "--max-length", "64"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "trained reward model: 2 steps" in captured.out
    record = json.loads((out / "train.json").read_text())
    assert record["objective"] == "reward_model" and record["settings"]["objective"] == "reward_model"
    assert "loss" not in record["settings"] and record["result"]["rows_trained"] == 4
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "checkpoints").exists()
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert all("ethos/weighted_loss" in r and "accuracy" in r for r in log if "loss" in r)
    # evaluate on held-out pairs (the first two are training pairs: a warning says so)
    held = tmp_path / "held.jsonl"
    extra = [("Say hi.", "Hi! I hope this helps", "no"), ("Name a fruit.", "An apple, I hope this helps.", "Water."),
             ("Count to two.", "One, two.", "I hope this helps"), ("Say bye.", "Bye, I hope this helps!", "Bye.")]
    held.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
                            for p, c, r in [*PAIRS[:2], *extra]))
    code = main(["evaluate", "--base", str(tiny_model_dir), "--models", str(out), "--prompts", str(held),
                 "--policy", str(policy), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    (entry,) = doc["reward_models"]
    assert doc["pairs"] == 6 and entry["n"] == 6 and entry["shaping"] is True and doc["models"] == []
    assert 0.0 <= entry["accuracy"] <= 1.0 and len(entry["accuracy_ci"]) == 2
    rows = {r["concept"]: r for r in entry["concepts"]}
    assert set(rows) == {"marker", "hedging"}
    assert rows["marker"]["predicted"] == pytest.approx(0.0) and rows["marker"]["alpha"] == 1.2  # blocked: k = 0
    assert rows["marker"]["sd"] == 3.0 and math.isfinite(rows["marker"]["marginal_slope"])
    assert "2 of 6 held-out prompts are training prompts" in captured.err
    line = next(x for x in captured.err.splitlines() if x.startswith(f"reward model {out.name}: accuracy"))
    assert "on 6 held-out pairs; reward slope per sd:" in line and "; marker " in line
    # the reports show the reward model (not "no trained model")
    from ethos.runtime.report import render_evaluate_html, render_evaluate_markdown

    md, html = render_evaluate_markdown(doc), render_evaluate_html(doc)
    assert "No trained model was evaluated" not in md and "No trained model was evaluated" not in html
    # their header counts held-out pairs and reward models, not the prompts nothing was generated on
    for text in (md, html):
        assert "6 held-out preference pairs; 1 reward model (no generation" in text and "held-out prompts" not in text
    assert f"### {out.name}\n" in md and "## Reward models" in md and "| marker | 0 | +1.200 | +0.000 |" in md
    assert f"<h3>{out.name}</h3>" in html and "<td class=\"text name\">hedging</td>" in html

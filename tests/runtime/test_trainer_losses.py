"""Every shapeable DPO loss on a tiny random Llama: the shaped loss equals a hand computation of
w·f(m + o) from the captured log-probabilities (and, unshaped, trl's own loss: the trainer checks
that on every call), a pair with weight 0 gets no gradient, and the losses ethos cannot shape are
refused with the reason and the list of supported ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("trl")

from ethos.runtime import losses as L  # noqa: E402
from ethos.runtime import trainer as T  # noqa: E402
from ethos.runtime.errors import UsageError  # noqa: E402
from ethos.runtime.settings import TrainSettings  # noqa: E402

PAIRS = [
    ("Hello, how are you today?", "I am fine, thank you!", "Sorry, I cannot help with that."),
    ("What is the capital of France?", "The capital of France is Paris.", "Perhaps you might ask someone else."),
    ("Give me a list.", "Here is a list: apples, pears.", "I think it may be true."),
    ("Is water hot?", "Water boils at 100 degrees.", "It could be otherwise."),
]


def dataset(weights, offsets):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                               "chosen": [{"role": "assistant", "content": c}],
                               "rejected": [{"role": "assistant", "content": r}], "weight": w, "margin_offset": o}
                              for (p, c, r), w, o in zip(PAIRS, weights, offsets)])


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)

W = [1.0, 0.5, 2.0, 0.0]
O = [0.25, -1.25, 0.0, 2.5]
EPS, TAU, GAMMA = 0.1, 0.05, 0.3


def hand(loss: str, x: torch.Tensor, beta: float) -> torch.Tensor:
    """f(x) of each loss written out again (x: the margin plus the offset)."""
    ls = F.logsigmoid
    if loss in ("sigmoid", "sigmoid_norm"):
        return -ls(x)
    if loss == "simpo":
        return -ls(x - GAMMA)
    if loss == "hinge":
        return torch.clamp(1 - x, min=0)
    if loss == "ipo":
        return (x / beta - 1 / (2 * beta)) ** 2
    if loss == "robust":
        return ((1 - EPS) * -ls(x) - EPS * -ls(-x)) / (1 - 2 * EPS)
    if loss == "exo_pair":
        p = torch.sigmoid(x)
        return p * (torch.log(p) - math.log(1 - EPS)) + (1 - p) * (torch.log(1 - p) - math.log(EPS))
    if loss == "discopop":
        mod = torch.sigmoid(x / TAU)
        return -ls(x) * (1 - mod) + torch.exp(-x) * mod
    raise AssertionError(loss)


def trainer_for(tiny_model_dir, tmp_path, loss, ds):
    model, tok = load(tiny_model_dir)
    s = TrainSettings(lora=True, lora_r=4, steps=1, batch_size=4, max_length=64, bf16=False, progress=False,
                      learning_rate=1e-2, loss=loss, label_smoothing=EPS if loss in ("robust", "exo_pair") else 0.0,
                      simpo_gamma=GAMMA, save_steps=0, extra={"discopop_tau": TAU})
    tr = T.build_trainer(model, tok, ds, s, out=tmp_path / "run")
    tr.model.train()
    return tr


def margins_by_hand(tr, b):
    """m per pair from the captured forwards: β·Δ, or β·Δ̄ (per-token means; SimPO: no reference)."""
    out, seq = tr.last_outputs, b["completion_mask"].size(1) - 1
    pol = out[0].log_probs[:, -seq:].sum(1).detach()
    info = L.LOSSES[tr.ethos_loss.name]
    ref = torch.zeros_like(pol) if info.reference_free else out[1].log_probs[:, -seq:].sum(1).detach()
    r = pol - ref
    if info.length_normalised:
        r = r / b["completion_mask"].sum(1).clamp(min=1)
    c, rj = r.chunk(2)
    return tr.beta * (c - rj)


@pytest.mark.parametrize("loss", list(L.LOSSES))
def test_each_loss_shapes_as_computed_by_hand_and_a_zero_weight_gives_no_gradient(tiny_model_dir, tmp_path,
                                                                                   monkeypatch, loss):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    tr = trainer_for(tiny_model_dir, tmp_path, loss, dataset(W, O))
    assert tr.ethos_loss.name == loss and tr.loss_types == [L.LOSSES[loss].trl_type]
    b = next(iter(tr.get_train_dataloader()))
    w, o = b["ethos_weight"], b["ethos_margin_offset"]
    # the offset: with o = 0 the loss is mean w·f(m) (and with w ≡ 1, trl's own loss: compute_loss checks it)
    b0 = dict(b, ethos_margin_offset=torch.zeros(4))
    plain = float(tr.compute_loss(tr.model, b0).detach())
    value = tr.compute_loss(tr.model, b)
    assert len(tr.last_outputs) == (1 if loss == "simpo" else 2)  # SimPO: no reference forward at all
    m = margins_by_hand(tr, b)
    expected = float((w * hand(loss, m + o, tr.beta)).mean())
    assert math.isclose(float(value.detach()), expected, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(plain, float((w * hand(loss, m, tr.beta)).mean()), rel_tol=1e-5, abs_tol=1e-6)
    assert not math.isclose(plain, expected, rel_tol=1e-4)
    # weight 0: no gradient reaches that pair's chosen and rejected rows
    zero = int(w.tolist().index(0.0))
    live = int(w.tolist().index(2.0))
    lp = tr.last_outputs[0].log_probs
    lp.retain_grad()
    value.backward()
    assert float(lp.grad[zero].abs().sum()) == 0.0 and float(lp.grad[zero + 4].abs().sum()) == 0.0
    assert float(lp.grad[live].abs().sum()) > 0.0


def test_losses_ethos_cannot_shape_are_refused_with_the_reason_and_the_list():
    supported = ", ".join(L.LOSSES)
    for name in ("nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "aot", "aot_unpaired", "sft", "kto",
                 "orpo"):
        with pytest.raises(UsageError) as e:
            L.check_loss(name)
        assert e.value.exit_code == 2 and supported in str(e.value) and L.REFUSED[name] in str(e.value)
    with pytest.raises(UsageError, match="unknown loss. Supported: sigmoid, hinge"):
        L.check_loss("nonsense")
    with pytest.raises(UsageError, match="needs --label-smoothing"):
        L.check_loss("exo_pair")
    with pytest.raises(UsageError, match="must be in"):
        L.check_loss("robust", label_smoothing=0.5)
    # every trl 1.16 DPO loss type is either shaped or refused with a reason
    from trl import DPOTrainer
    import inspect

    src = inspect.getsource(DPOTrainer._compute_loss)
    trl_types = {t for t in ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                             "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
                 if f'loss_type == "{t}"' in src}
    assert len(trl_types) == 15
    assert trl_types <= set(L.LOSSES) | set(L.REFUSED)


def test_unsupported_loss_exits_2_before_any_work(tmp_path, capsys):
    from ethos.runtime.cli import main

    policy = tmp_path / "p.ethos"
    policy.write_text("block concept verbosity;\n")
    assert main(["train", str(policy), "--out", str(tmp_path / "o"), "--loss", "kto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ethos train: error: --loss kto: ethos cannot shape it: KTO is unpaired")
    assert "Supported: sigmoid, hinge, ipo, sigmoid_norm, robust, exo_pair, discopop, simpo" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
    assert main(["train", str(policy), "--out", str(tmp_path / "o"), "--reward-model", "--loss", "ipo"]) == 2
    assert "a reward model has the Bradley–Terry loss" in capsys.readouterr().err

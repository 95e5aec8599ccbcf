"""``ethos.runtime.sae``: train a tiny SAE on a tiny model, round-trip it through sae-lens, check
the eval metrics on SAEs whose answers are known, find a planted latent with ``describe``, and
check the shipped default SAE (no model run). Sections follow the package's modules: store,
train, evaluate, latents, load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ethos.runtime.cli import main
from ethos.runtime.data import Message, Pair
from ethos.runtime.sae import (
    MARK_OPEN,
    SHIPPED_DEFAULT,
    ActivationStore,
    SAEError,
    describe_latents,
    eval_pairs,
    evaluate,
    find_sae,
    firing_counts,
    heldout_pairs,
    is_held_out,
    load_labels,
    load_sae,
    pooled_latents,
    pooled_latents_both,
    read_units,
    sae_runtime,
)

REPLIES = [
    "The capital of France is Paris.",
    "Paris is lovely in spring, I think.",
    "Sorry, I cannot help with that.",
    "Here is a list:\n- apples\n- pears",
    "You are absolutely right, what a brilliant question!",
    "I went to Paris and saw the tower.",
    "Water boils at 100 degrees.",
    "I am not sure. It could be otherwise.",
]


def _pairs() -> list[Pair]:
    out = []
    for i in range(len(REPLIES)):
        prompt = (Message("user", f"Tell me something, please ({i})."),)
        out.append(Pair(str(i), prompt, REPLIES[i], REPLIES[(i + 3) % len(REPLIES)]))
    return out


def _write_pairs(path: Path, pairs: list[Pair]) -> Path:
    rows = [
        {"prompt": [{"role": m.role, "content": m.content} for m in p.prompt], "chosen": p.chosen, "rejected": p.rejected}
        for p in pairs
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _save_topk(folder: Path, w_enc: torch.Tensor, w_dec: torch.Tensor, b_dec: torch.Tensor, k: int, layer: int = 0) -> Path:
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = w_enc.shape
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=f"model.layers.{layer}")))
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.zero_()
        sae.b_dec.copy_(b_dec)
    sae.save_model(str(folder))
    return folder


@pytest.fixture(scope="module")
def runtime_of(tiny_model_dir: Path):
    cache: dict[str, object] = {}

    def get(sae):
        if "rt" not in cache:
            cache["rt"] = sae_runtime(sae, str(tiny_model_dir))
        return cache["rt"]

    return get


# ------------------------------------------------------------------------------------- train


def test_train_tiny_sae_round_trip(tiny_model_dir: Path, tmp_path: Path, ethos_cache: Path) -> None:
    from sae_lens import SAE

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(REPLIES * 6))
    prefs = _write_pairs(tmp_path / "prefs.jsonl", _pairs())
    out = tmp_path / "sae"
    argv = ["sae", "train", "--model", str(tiny_model_dir), "--layer", "1", "--data", str(text), str(prefs),
            "--tokens", "4096", "--d-sae", "64", "--k", "4", "--batch-size", "256", "--seed", "3",
            "--eval-tokens", "0", "--out", str(out)]
    assert main(argv) == 0
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "model.layers.1" and cfg["d_sae"] == 64 and cfg["k"] == 4
    meta = json.loads((out / "ethos-sae.json").read_text())
    assert meta["layer"] == 1 and meta["train"]["seed"] == 3 and meta["train"]["steps"] == 16
    assert [d["kind"] for d in meta["data"]] == ["text", "preference"] and all(len(d["sha256"]) == 64 for d in meta["data"])
    # the activation cache excludes position 0 and padding, and is reused by a second run
    store = ActivationStore.open(next((ethos_cache / "sae-activations").iterdir()))
    assert store is not None and store.info["norm_max"] < 50 * store.info["norm_median"]
    sae = SAE.load_from_disk(out, dtype="float32")
    x = torch.randn(5, 64)
    z = sae.encode(x)
    assert z.shape == (5, 64) and ((z > 0).sum(dim=-1) <= 4).all()
    assert sae.decode(z).shape == (5, 64)
    assert load_sae(out).W_dec.dtype == torch.float32  # stored bf16, used in float32
    assert main(argv) == 2  # exists: needs --force
    assert main(argv + ["--force"]) == 0


def test_read_units_holdout_and_bos(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prefs = _write_pairs(tmp_path / "prefs.jsonl", _pairs())
    train, _ = read_units([prefs], tok)
    held, _ = read_units([prefs], tok, split="heldout")
    assert sorted(u.row for u in train) == [1, 2, 3, 4, 5, 6, 7]
    assert [u.row for u in held] == [0]
    assert all(u.skip >= 1 for u in train)  # position 0 (the attention sink) is never trained on


def test_one_held_out_rule(tmp_path: Path) -> None:
    """Training, the end-of-training eval and ``sae eval`` hold out the same rows."""
    assert [r for r in range(25) if is_held_out(r, 10)] == [0, 10, 20]
    assert not any(is_held_out(r, 0) for r in range(5))
    prefs = _write_pairs(tmp_path / "prefs.jsonl", _pairs() * 2)  # 16 rows: 0 and 10 held out
    text = tmp_path / "t.txt"
    text.write_text("only text")
    assert [p.id for p in heldout_pairs([text, prefs], 10, None)] == ["0", "10"]
    assert [p.id for p in heldout_pairs([prefs], 5, 2)] == ["0", "5"]
    from ethos.runtime.model import sha256_file

    folder = tmp_path / "sae"
    folder.mkdir()
    (folder / "ethos-sae.json").write_text(json.dumps({"data": [{"sha256": sha256_file(prefs)}], "holdout": {"modulus": 10}}))
    pairs, held = eval_pairs(folder, prefs, None, False)
    assert held and [p.id for p in pairs] == ["0", "10"]
    pairs, held = eval_pairs(folder, prefs, 3, True)
    assert not held and [p.id for p in pairs] == ["0", "1", "2"]
    (folder / "ethos-sae.json").write_text("{}")  # not trained on this file: every row
    assert len(eval_pairs(folder, prefs, None, False)[0]) == 16


# -------------------------------------------------------------------------------------- eval


def test_eval_identity_sae_is_perfect(tmp_path: Path, runtime_of) -> None:
    d = 64
    eye = torch.eye(d)
    folder = _save_topk(tmp_path / "identity", torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0), torch.zeros(d), k=d)
    sae = load_sae(folder)
    m = evaluate(sae, runtime_of(sae), _pairs(), progress=False)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert abs(m["ce_increase"]) < 1e-4
    assert m["l0"] == pytest.approx(d, abs=0.5)
    assert m["dead_fraction"] == 0.0 and m["dense_fraction"] == 1.0
    assert m["ce_tokens"] > 0 and m["tokens"] > m["ce_tokens"] - 1


def test_eval_token_budget_tokenizes_only_the_pairs_drawn(tmp_path: Path, runtime_of, monkeypatch: pytest.MonkeyPatch) -> None:
    import ethos.runtime.sae.metrics as ev

    d = 64
    eye = torch.eye(d)
    sae = load_sae(_save_topk(tmp_path / "identity", torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0), torch.zeros(d), k=d))
    rt = runtime_of(sae)
    calls: list[str] = []
    real = ev.tokenize_pair
    monkeypatch.setattr(ev, "tokenize_pair", lambda tok, prompt, replies, **kw: calls.append("x") or real(tok, prompt, replies, **kw))
    m = evaluate(sae, rt, _pairs(), max_tokens=1, progress=False)
    assert len(calls) == 1 and 0 < m["tokens"] < 40  # one pair drawn, one pair tokenised
    calls.clear()
    full = evaluate(sae, rt, _pairs(), progress=False)
    assert len(calls) == len(_pairs()) and full["tokens"] > m["tokens"]


def test_cli_eval_json(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = 64
    eye = torch.eye(d)
    folder = _save_topk(tmp_path / "identity", torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0), torch.zeros(d), k=d)
    data = _write_pairs(tmp_path / "prefs.jsonl", _pairs())
    assert main(["sae", "eval", str(folder), "--data", str(data), "--model", str(tiny_model_dir), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["sae"] == str(folder) and got["data"] == str(data) and got["layer"] == 0
    assert got["held_out"] is False and got["pairs"] == len(_pairs())
    assert got["explained_variance"] == pytest.approx(1.0, abs=1e-5)


def test_eval_zero_sae_explains_nothing(tmp_path: Path, runtime_of) -> None:
    d = 64
    probe = _save_topk(tmp_path / "probe", torch.zeros(d, 8), torch.zeros(8, d), torch.zeros(d), k=2)
    sae = load_sae(probe)
    rt = runtime_of(sae)
    from ethos.runtime.model import tokenize_pair

    items = [tokenize_pair(rt.tokenizer, p.prompt, [p.chosen, p.rejected]) for p in _pairs()]
    acts = torch.cat([a for per in rt.encoder.encode(items) for a in per])
    folder = _save_topk(tmp_path / "mean", torch.zeros(d, 8), torch.zeros(8, d), acts.mean(0), k=2)
    sae = load_sae(folder)
    m = evaluate(sae, rt, _pairs(), progress=False)
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-4)
    assert m["l0"] == 0 and m["dead_fraction"] == 1.0
    assert m["tokens"] == acts.shape[0]
    assert abs(m["ce_increase"]) > 1e-4  # the splice does change the predictions


# ---------------------------------------------------------------------- describe and pooling


def _planted(tmp_path: Path, runtime_of) -> tuple[Path, str, int]:
    """An SAE whose latent 0 fires exactly on a token found only in the replies about Paris and whose
    decoder row is that token's unembedding; latent 1 never fires."""
    d = 64
    probe = _save_topk(tmp_path / "probe", torch.zeros(d, 2), torch.zeros(2, d), torch.zeros(d), k=1)
    rt = runtime_of(load_sae(probe))
    from ethos.runtime.model import tokenize_pair

    items = [tokenize_pair(rt.tokenizer, p.prompt, [p.chosen, p.rejected]) for p in _pairs()]
    # a token that occurs in the replies about Paris and in no other reply
    paris, rest = set(), set()
    for it, p in zip(items, _pairs()):
        for (a, b), cont, reply in zip(it.spans, it.continuations, (p.chosen, p.rejected)):
            (paris if "Paris" in reply else rest).update(cont[a:b])
    preferred = rt.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    unique = paris - rest
    target = next((t for t in preferred if t in unique), min(unique))
    hits, others = [], []
    for it, per in zip(items, rt.encoder.encode(items)):
        for (a, b), cont, acts in zip(it.spans, it.continuations, per):
            for t, tid in enumerate(cont[a:b]):
                (hits if tid == target else others).append(acts[t])
    hits_t, others_t = torch.stack(hits), torch.stack(others)
    u = hits_t.mean(0) - others_t.mean(0)
    lo, hi = float((others_t @ u).max()), float((hits_t @ u).min())
    assert hi > lo  # the planted direction separates the token
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2, metadata=SAEMetadata(hook_name="model.layers.0")))
    embed = rt.encoder.model.get_output_embeddings().weight.detach()[target]
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = u
        sae.b_enc.copy_(torch.tensor([-(lo + hi) / 2, -1.0]))
        sae.W_dec.zero_()
        sae.W_dec[0] = embed
        sae.b_dec.zero_()
    folder = tmp_path / "planted"
    sae.save_model(str(folder))
    return folder, rt.tokenizer.decode([target]), target


def test_describe_finds_planted_token(tmp_path: Path, runtime_of, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, token, _ = _planted(tmp_path, runtime_of)
    rt = runtime_of(load_sae(folder))
    import ethos.runtime.sae.latents as lt

    calls: list[str] = []
    real = lt.tokenize_pair
    monkeypatch.setattr(lt, "tokenize_pair", lambda tok, prompt, replies, **kw: calls.append("x") or real(tok, prompt, replies, **kw))
    labels = describe_latents(folder, _pairs(), [0, 1], k_snippets=3, k_tokens=4, runtime=rt)
    assert len(calls) == len(_pairs())  # each pair tokenised once (the second pass reuses the tokens)
    lab = labels[0]
    assert len(lab["snippets"]) == 3
    assert all(f"{MARK_OPEN}{token}" in s for s in lab["snippets"]), lab["snippets"]
    assert lab["tokens"][0] == token
    assert lab["max_activation"] > 0 and 0 < lab["frequency"] < 0.2
    assert labels[1]["snippets"] == [] and labels[1]["frequency"] == 0.0


def test_dead_latents_on_every_reply_token(tmp_path: Path, runtime_of, tiny_model_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder, _, target = _planted(tmp_path, runtime_of)
    sae = load_sae(folder)
    rt = runtime_of(sae)
    pairs = _pairs()
    counts, n = firing_counts(sae, rt, pairs, progress=False)
    from ethos.runtime.model import tokenize_pair

    items = [tokenize_pair(rt.tokenizer, p.prompt, [p.chosen, p.rejected]) for p in pairs]
    reply_ids = [t for it in items for (a, b), c in zip(it.spans, it.continuations) for t in c[a:b]]
    assert n == len(reply_ids) == evaluate(sae, rt, pairs, splice=False, progress=False)["tokens"]
    assert counts.tolist() == [reply_ids.count(target), 0]  # latent 0 fires on each planted token, latent 1 never
    data = _write_pairs(tmp_path / "prefs.jsonl", pairs)
    base = ["sae", "eval", str(folder), "--data", str(data), "--model", str(tiny_model_dir), "--json", "--tokens", "1"]
    assert main(base) == 0
    got = json.loads(capsys.readouterr().out)
    # CE and EV on the one pair drawn; dead/dense on every reply token of the file
    assert got["tokens"] < got["dead_tokens"] == n
    assert got["dead_fraction_all_replies"] == 0.5 and got["dead_fraction"] >= 0.5
    assert got["dense_fraction_all_replies"] == float(reply_ids.count(target) / n > 0.1) / 2
    assert main(base + ["--subset-only"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert "dead_tokens" not in got and "dead_fraction_all_replies" not in got
    assert main(base[:-2] + ["--tokens", "0"]) == 0  # everything evaluated: the same tokens
    got = json.loads(capsys.readouterr().out)
    assert got["dead_tokens"] == got["tokens"] == n and got["dead_fraction_all_replies"] == got["dead_fraction"] == 0.5


def test_pooled_latents(tmp_path: Path, runtime_of) -> None:
    folder, _, target = _planted(tmp_path, runtime_of)
    rt = runtime_of(load_sae(folder))
    pairs = _pairs()
    both = pooled_latents_both(folder, pairs, runtime=rt)
    chosen, rejected = pooled_latents(folder, pairs, runtime=rt)
    assert chosen.shape == rejected.shape == (len(pairs), 2) and chosen.dtype == np.float32
    np.testing.assert_array_equal(chosen, both["max"][0])
    from ethos.runtime.model import tokenize_pair

    spans = [tokenize_pair(rt.tokenizer, p.prompt, [p.chosen]) for p in pairs]
    has = np.array([target in it.continuations[0][slice(*it.spans[0])] for it in spans])
    assert has.any() and not has.all()
    assert (chosen[has, 0] > 0).all() and (chosen[~has, 0] == 0).all()
    assert (both["mean"][0] <= both["max"][0] + 1e-6).all()
    assert (chosen[:, 1] == 0).all()


def test_cli_describe_stores_labels(tmp_path: Path, tiny_model_dir: Path, runtime_of) -> None:
    folder, token, _ = _planted(tmp_path, runtime_of)
    data = _write_pairs(tmp_path / "prefs.jsonl", _pairs())
    code = main(["sae", "describe", str(folder), "--data", str(data), "--latent", "0", "--model", str(tiny_model_dir), "--json"])
    assert code == 0
    [labels_file] = (folder / "labels").glob("*.json")
    record = json.loads(labels_file.read_text())
    assert record["data"]["sha256"] and record["params"]["k_snippets"] == 3
    assert token in record["latents"]["0"]["tokens"]
    assert load_labels(folder)[0]["tokens"] == record["latents"]["0"]["tokens"]


# ------------------------------------------------------------------------ load, errors, default


def test_sae_runtime_checks_the_layer_and_width(tmp_path: Path, runtime_of, tiny_model_dir: Path) -> None:
    from ethos.runtime.sae import sae_runtime

    d = 64
    at0 = load_sae(_save_topk(tmp_path / "l0", torch.zeros(d, 4), torch.zeros(4, d), torch.zeros(d), k=1, layer=0))
    rt = runtime_of(at0)
    assert sae_runtime(at0, "ignored", rt) is rt
    at1 = load_sae(_save_topk(tmp_path / "l1", torch.zeros(d, 4), torch.zeros(4, d), torch.zeros(d), k=1, layer=1))
    with pytest.raises(SAEError, match="reads layer 1, the model runtime reads layer 0"):
        sae_runtime(at1, "ignored", rt)
    assert sae_runtime(at1, str(tiny_model_dir)).layer == 1  # loaded at the SAE's layer
    wide = load_sae(_save_topk(tmp_path / "w", torch.zeros(32, 4), torch.zeros(4, 32), torch.zeros(32), k=1))
    with pytest.raises(SAEError, match="d_in 32"):
        sae_runtime(wide, str(tiny_model_dir))
    with pytest.raises(SAEError, match="unknown SAE"):
        load_sae(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- errors, default


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], ethos_cache: Path) -> None:
    assert main(["sae", "eval", str(tmp_path / "nowhere"), "--data", str(tmp_path / "x.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "unknown SAE" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("ethos sae eval: error: ")  # as every command's errors read
    with pytest.raises(SystemExit) as exc:
        main(["sae"])
    assert exc.value.code == 2


def test_shipped_default_sae(ethos_cache: Path) -> None:
    from sae_lens import SAE

    assert find_sae("default") == SHIPPED_DEFAULT or (find_sae("default") / "cfg.json").is_file()
    cfg = json.loads((SHIPPED_DEFAULT / "cfg.json").read_text())
    assert cfg["d_sae"] == 4096 and cfg["d_in"] == 576 and cfg["metadata"]["hook_name"] == "model.layers.15"
    meta = json.loads((SHIPPED_DEFAULT / "ethos-sae.json").read_text())
    assert meta["layer"] == 15 and meta["model"]["name"] == "smollm2-135m-instruct"
    sae = SAE.load_from_disk(SHIPPED_DEFAULT, dtype="float32")
    assert sae.W_dec.shape == (4096, 576) and sae.W_dec.dtype == torch.float32
    assert (SHIPPED_DEFAULT / "sae_weights.safetensors").stat().st_size < 12_000_000

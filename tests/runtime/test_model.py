"""The model side: loading offline, fingerprints, reply location, the truncated forward and
shared-prompt reuse, all on a tiny random Llama built by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ethos.runtime.model import (
    Encoder,
    ModelError,
    check_layer,
    layer_of_hook,
    load_model,
    model_fingerprint,
    model_runtime,
    resolve_model,
    tokenize_pair,
)

PROMPTS = [
    [{"role": "user", "content": "Hello, how are you?"}],
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And water boils at?"},
    ],
    [{"role": "user", "content": "Give me a list"}],
]
REPLIES = [
    ("I am fine, thank you!", "Sorry, I cannot help."),
    ("It boils at 100 degrees.", "I think it may be 90, but I am not sure."),
    ("- apples\n- pears", "No."),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_model(tiny_model_dir, dtype=torch.float32)


def test_load_model_gives_model_tokenizer_and_stable_fingerprint(tiny_model_dir: Path, tiny, ethos_cache: Path) -> None:
    model, tokenizer, fp = tiny
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert len(fp) == 64 and fp == model_fingerprint(tiny_model_dir)
    memo = json.loads((tiny_model_dir / "ethos-fingerprint.json").read_text())
    assert memo["fingerprint"] == fp and "model.safetensors" in memo["files"]


def test_fingerprint_changes_with_the_weights(tmp_path: Path, make_tiny_model) -> None:
    a = make_tiny_model(tmp_path / "a", seed=0)
    b = make_tiny_model(tmp_path / "b", seed=1)
    assert model_fingerprint(a) != model_fingerprint(b)


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model(tmp_path / "nope")
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(tmp_path)


def test_layers_and_hook_names(tiny) -> None:
    model, _, _ = tiny
    assert check_layer(model.config, None) == 1  # 2 blocks: the middle one
    with pytest.raises(ModelError, match="out of range"):
        check_layer(model.config, 2)
    assert layer_of_hook("model.layers.15") == 15
    assert layer_of_hook("blocks.3.hook_resid_post") == 3
    assert layer_of_hook("blocks.3.hook_resid_pre") == 2
    assert layer_of_hook("something.else") is None


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_reply_tokens_are_located_exactly_through_the_chat_template(tiny, k: int) -> None:
    _, tok, _ = tiny
    pt = tokenize_pair(tok, PROMPTS[k], REPLIES[k])
    full = tok.apply_chat_template(PROMPTS[k] + [{"role": "assistant", "content": REPLIES[k][0]}], tokenize=False)
    assert list(pt.prompt) + list(pt.continuations[0]) == tok(full, add_special_tokens=False)["input_ids"]
    for reply, cont, (a, b) in zip(REPLIES[k], pt.continuations, pt.spans):
        assert tok.decode(list(cont[a:b])) == reply
        assert tok.convert_ids_to_tokens(cont[b]) == "<|im_end|>"


def test_plain_fallback_without_a_chat_template(tmp_path: Path, make_tiny_model) -> None:
    folder = make_tiny_model(tmp_path / "plain", chat_template=None)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    pt = tokenize_pair(tok, PROMPTS[0], REPLIES[0])
    assert pt.prompt[0] == tok.bos_token_id
    assert tok.decode(list(pt.prompt)).endswith("user: Hello, how are you?\n\nassistant: ")
    for reply, cont, (a, b) in zip(REPLIES[0], pt.continuations, pt.spans):
        assert tok.decode(list(cont[a:b])) == reply and b == len(cont)


@pytest.mark.parametrize("layer", [0, 1])
def test_truncated_forward_equals_the_full_model(tiny, layer: int) -> None:
    model, tok, _ = tiny
    enc = Encoder(model, layer, pad_id=tok.pad_token_id)
    pt = tokenize_pair(tok, PROMPTS[1], REPLIES[1])
    ids = torch.tensor([list(pt.prompt) + list(pt.continuations[1])])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    got = enc.hidden(ids)
    if layer < model.config.num_hidden_layers - 1:
        torch.testing.assert_close(got, out.hidden_states[layer + 1], rtol=0, atol=0)
    else:  # the last entry of hidden_states has the final norm applied
        torch.testing.assert_close(model.model.norm(got), out.hidden_states[layer + 1])
    # and at the exact reply positions inside a padded batch
    acts = enc.encode([pt, tokenize_pair(tok, PROMPTS[0], REPLIES[0])], share_prompt=False)
    a, b = pt.spans[1]
    start = len(pt.prompt)
    torch.testing.assert_close(acts[0][1], got[0, start + a : start + b].float(), atol=1e-5, rtol=1e-5)


def test_truncated_forward_stops_after_the_layer(tiny) -> None:
    model, tok, _ = tiny
    enc = Encoder(model, 0)
    calls: list[int] = []
    handles = [
        layer.register_forward_hook(lambda *_args, i=i: calls.append(i)) for i, layer in enumerate(model.model.layers)
    ]
    try:
        enc.hidden(torch.tensor([[5, 6, 7]]))
    finally:
        for h in handles:
            h.remove()
    assert calls == [0]


def test_shared_prompt_reuse_equals_the_plain_forward(tiny) -> None:
    model, tok, _ = tiny
    enc = Encoder(model, 0, pad_id=tok.pad_token_id)
    items = [tokenize_pair(tok, p, r) for p, r in zip(PROMPTS, REPLIES)]
    assert len({len(i.prompt) for i in items}) == 3  # different prompt lengths: padding in the cache
    plain = enc.encode(items, batch_size=3, share_prompt=False)
    shared = enc.encode(items, batch_size=3, share_prompt=True)
    for p_acts, s_acts in zip(plain, shared):
        for p, s in zip(p_acts, s_acts):
            assert p.shape == s.shape and p.shape[0] > 0
            torch.testing.assert_close(s, p, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_reply_activations_are_the_replies_of_the_layer_output(tiny_model_dir: Path, share_prompt: bool) -> None:
    """encode_replies leaves the layer's output (bf16 here) as it is and says where each reply
    is; tokens() gathers exactly the per-reply slices, widened to float32, and encode_batch views
    them per item (an empty reply included)."""
    model, tok, _ = load_model(tiny_model_dir, dtype=torch.bfloat16)
    enc = Encoder(model, 0, pad_id=tok.pad_token_id)
    items = [tokenize_pair(tok, p, r) for p, r in zip(PROMPTS, REPLIES)]
    items.append(tokenize_pair(tok, PROMPTS[0], ["", "Fine."]))
    got = enc.encode_replies(items, share_prompt=share_prompt)
    assert got.hidden.dtype == torch.bfloat16 and got.per_item == (2, 2, 2, 2)
    offset = [0 if share_prompt else len(it.prompt) for it in items]
    assert got.spans == tuple((2 * i + j, offset[i] + a, offset[i] + b)
                              for i, it in enumerate(items) for j, (a, b) in enumerate(it.spans))
    slices = [got.hidden[row, a:b].float() for row, a, b in got.spans]
    assert got.lengths == [s.shape[0] for s in slices] and got.lengths[6] == 0
    tokens = got.tokens()
    assert tokens.dtype == torch.float32 and torch.equal(tokens, torch.cat(slices))
    assert got.tokens() is tokens  # gathered once, shared by the lenses of a batch
    batch = enc.encode_batch(items, share_prompt=share_prompt)
    assert [len(pair) for pair in batch] == [2, 2, 2, 2]
    for a, b in zip([a for pair in batch for a in pair], slices):
        assert torch.equal(a, b)
    if not share_prompt:  # the rows are prompt + reply: the spans point at the reply's own tokens
        ids, _ = enc.pad([list(it.prompt) + list(c) for it in items for c in it.continuations])
        for (row, a, b), (i, j) in zip(got.spans, [(i, j) for i in range(4) for j in range(2)]):
            s, e = items[i].spans[j]
            assert ids[row, a:b].tolist() == list(items[i].continuations[j][s:e])


def test_long_sequences_are_cut_to_max_tokens(tiny) -> None:
    _, tok, _ = tiny
    prompt = [{"role": "user", "content": "hello " * 200}]
    pt = tokenize_pair(tok, prompt, ["fine " * 100, "no"], max_tokens=64)
    assert all(len(pt.prompt) + len(c) <= 64 for c in pt.continuations)
    assert pt.spans[0][1] <= 32


def test_shared_forward_rows_copies_and_a_run_to_the_end(tiny) -> None:
    """Row b*n*copies + c*n + j is continuation j of prompt b (every copy the same); run to the
    end, the final hidden state is the full model's, and an edit of the layer's output changes
    only the blocks after it."""
    model, tok, _ = tiny
    enc = Encoder(model, 0, pad_id=tok.pad_token_id)
    items = [tokenize_pair(tok, p, r) for p, r in zip(PROMPTS[:2], REPLIES[:2])]
    prompts, conts = [it.prompt for it in items], [it.continuations for it in items]
    fw = enc.shared_forward(prompts, conts, copies=2)
    assert fw.final is None and fw.hidden.shape[0] == 2 * 2 * 2 and (fw.n, fw.copies) == (2, 2)
    full = enc.shared_forward(prompts, conts, copies=2, to_end=True)
    for b, it in enumerate(items):
        torch.testing.assert_close(fw.prompt_hidden[b, : len(it.prompt)], enc.hidden(torch.tensor([list(it.prompt)]))[0])
        for c in range(2):
            for j, cont in enumerate(it.continuations):
                r = b * 4 + c * 2 + j
                ids = torch.tensor([list(it.prompt) + list(cont)])
                assert fw.ids[r, : len(cont)].tolist() == list(cont) and int(fw.mask[r].sum()) == len(cont)
                torch.testing.assert_close(fw.hidden[r, : len(cont)], enc.hidden(ids)[0, len(it.prompt):], atol=1e-4, rtol=1e-4)
                with torch.no_grad():
                    last = model.model(ids).last_hidden_state[0, len(it.prompt):]
                torch.testing.assert_close(full.final[r, : len(cont)], last, atol=1e-4, rtol=1e-4)
    seen: list[tuple[int, ...]] = []

    def zero_second_copy(h: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(h.shape))
        h = h.clone()
        h[2:4] = 0  # prompt 0, copy 1
        return h

    edited = enc.shared_forward(prompts, conts, copies=2, to_end=True, edit=zero_second_copy)
    assert seen == [tuple(full.hidden.shape)]  # the edit sees the continuation rows only, once
    torch.testing.assert_close(edited.hidden, full.hidden)  # ``hidden`` is the layer's output before the edit
    torch.testing.assert_close(edited.final[:2], full.final[:2])
    assert not torch.allclose(edited.final[2:4], full.final[2:4])


def test_model_runtime_from_a_name_or_a_loaded_model(tiny_model_dir: Path, tiny) -> None:
    rt = model_runtime(tiny_model_dir, batch_size=3)
    assert rt.layer == 1 and rt.name == str(tiny_model_dir) and rt.fingerprint == model_fingerprint(tiny_model_dir)
    assert rt.batch_size == 3 and rt.encoder.pad_id == rt.tokenizer.pad_token_id
    model, tok, fp = tiny
    rt = model_runtime(model, tokenizer=tok, layer=0, fingerprint=fp, name="tiny")
    assert rt.encoder.model is model and (rt.layer, rt.fingerprint, rt.name) == (0, fp, "tiny")
    with pytest.raises(ModelError, match="tokenizer"):
        model_runtime(model)
    with pytest.raises(ModelError, match="out of range"):
        model_runtime(model, tokenizer=tok, layer=5)

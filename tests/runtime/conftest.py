"""Shared fixtures for the runtime tests: a tiny random Llama with a byte-level BPE tokenizer and a
ChatML template, and a tiny sae-lens SAE on its residual stream. Everything is built in the test
session (no download) and saved like a real model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Hello, how are you today? I am fine, thank you!",
    "Sorry, I cannot help with that. Perhaps you might ask someone else.",
    "Here is a list:\n- apples\n- pears\n1. first\n2. second",
    "# Title\nSome **bold** text and a link https://example.com and `code`.",
    "You are absolutely right, what a brilliant question! Great idea.",
    "The capital of France is Paris. Water boils at 100 degrees.",
    "I think it may be true, but I am not sure. It could be otherwise.",
] * 4


def build_tiny_model(folder: Path, *, chat_template: str | None = CHATML, seed: int = 0) -> Path:
    """Save a 2-layer random Llama (d_model 64) and its tokenizer into ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<bos>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=360, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    if chat_template:
        fast.chat_template = chat_template
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(fast),
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def build_tiny_sae(folder: Path, *, d_in: int = 64, d_sae: int = 32, layer: int | None = 0, seed: int = 0) -> Path:
    """Save a standard sae-lens SAE (ReLU) on ``model.layers.{layer}``."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=f"model.layers.{layer}") if layer is not None else SAEMetadata()
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    sae.save_model(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sae(tmp_path_factory.mktemp("tiny-sae") / "sae")


@pytest.fixture()
def ethos_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, private ETHOS_CACHE for one test."""
    path = tmp_path / "ethos-cache"
    monkeypatch.setenv("ETHOS_CACHE", str(path))
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("ETHOS_DTYPE", os.environ.get("ETHOS_TEST_DTYPE", "float32"))


@pytest.fixture(scope="session")
def make_tiny_model():
    """``build_tiny_model`` itself, for tests that need variants (another seed, no template)."""
    return build_tiny_model


@pytest.fixture(scope="session")
def make_tiny_sae():
    return build_tiny_sae

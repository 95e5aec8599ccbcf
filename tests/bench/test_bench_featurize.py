"""bench/featurize.py's ``--random-1b`` model: a Llama of about a billion parameters, built from a
config (on the meta device here: shapes only, nothing allocated or downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
BENCH = Path(__file__).resolve().parents[2] / "bench" / "featurize.py"


class DefaultModelTokenizer:
    """What the config reads of the default model's tokenizer (49,152 tokens)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 2

    def __len__(self) -> int:
        return 49152


def test_random_1b_is_a_billion_parameter_llama() -> None:
    import torch
    from transformers import LlamaForCausalLM

    spec = importlib.util.spec_from_file_location("ethos_bench_featurize", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = bench.random_1b_config(DefaultModelTokenizer())
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert 0.95e9 < n < 1.3e9, n
    assert config.num_hidden_layers == 16 and config.hidden_size == 2048 and config.vocab_size == 49152

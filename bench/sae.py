"""Benchmark of the SAE paths the audit and `ethos sae eval` use, on the default model and SAE.

    .venv/bin/python bench/sae.py [--pairs 64] [--eval-tokens 2000]

Prints pairs/s and reply tokens/s of ``pooled_latents_both`` (truncated forward + SAE encode +
pooling), and reply tokens/s of ``evaluate`` (clean + spliced full forwards). Not a test.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("WANDB_MODE", "disabled")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=2000)
    parser.add_argument("--data", default=None, help="preference data (default: the embedded hh-rlhf sample)")
    args = parser.parse_args()

    import torch

    from ethos.runtime.data import load_pairs
    from ethos.runtime.sae import evaluate, load_sae, pooled_latents_both, sae_runtime

    pairs = load_pairs(args.data, limit=args.pairs).pairs
    sae = load_sae("default")
    t0 = time.perf_counter()
    runtime = sae_runtime(sae, "smollm2-135m-instruct")
    print(f"load model: {time.perf_counter() - t0:.1f} s  (threads {torch.get_num_threads()}, "
          f"dtype {next(runtime.encoder.model.parameters()).dtype})")

    t0 = time.perf_counter()
    both = pooled_latents_both("default", pairs, runtime=runtime)
    dt = time.perf_counter() - t0
    from ethos.runtime.model import tokenize_pair

    n_tok = sum(b - a for p in pairs for a, b in tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected]).spans)
    print(f"pooled_latents: {len(pairs)} pairs, {n_tok} reply tokens in {dt:.1f} s "
          f"= {len(pairs) / dt:.1f} pairs/s, {n_tok / dt:.0f} reply tok/s; shape {both['max'][0].shape}")

    t0 = time.perf_counter()
    m = evaluate(sae, runtime, pairs, max_tokens=args.eval_tokens, progress=False)
    dt = time.perf_counter() - t0
    print(f"evaluate: {m['tokens']} reply tokens in {dt:.1f} s = {m['tokens'] / dt:.0f} tok/s; "
          f"EV {m['explained_variance']:.3f}, CE +{m['ce_increase']:.3f} nats")


if __name__ == "__main__":
    main()

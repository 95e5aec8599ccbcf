"""Benchmark of the SAE paths the audit and `ethos sae eval` use, on the default model and SAE,
on whatever device this machine has (``ethos.runtime.device``: CUDA when present; the SAE is
encoded on the model's device).

    .venv/bin/python bench/sae.py [--pairs 64] [--eval-tokens 2000] [--json FILE]

Prints pairs/s and reply tokens/s of ``pooled_latents_both`` (truncated forward + SAE encode +
pooling), and reply tokens/s of ``evaluate`` (clean + spliced full forwards), with the device
they ran on. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=2000)
    parser.add_argument("--data", default=None, help="preference data (default: the embedded hh-rlhf sample)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)

    import torch

    from ethos.runtime.data import load_pairs
    from ethos.runtime.device import device_name, synchronize
    from ethos.runtime.model import tokenize_pair
    from ethos.runtime.sae import evaluate, load_sae, pooled_latents_both, sae_runtime

    pairs = load_pairs(args.data, limit=args.pairs).pairs
    sae = load_sae("default")
    t0 = time.perf_counter()
    runtime = sae_runtime(sae, "smollm2-135m-instruct")
    where = device_name(runtime.device)
    dtype = str(next(runtime.encoder.model.parameters()).dtype).replace("torch.", "")
    load_s = time.perf_counter() - t0
    print(f"device {where}, dtype {dtype}; load model: {load_s:.1f} s (threads {torch.get_num_threads()})")

    synchronize(runtime.device)
    t0 = time.perf_counter()
    both = pooled_latents_both("default", pairs, runtime=runtime)
    latents_s = time.perf_counter() - t0
    n_tok = sum(b - a for p in pairs for a, b in tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected]).spans)
    print(f"pooled_latents: {len(pairs)} pairs, {n_tok} reply tokens in {latents_s:.1f} s "
          f"= {len(pairs) / latents_s:.1f} pairs/s, {n_tok / latents_s:.0f} reply tok/s; shape {both['max'][0].shape}")

    synchronize(runtime.device)
    t0 = time.perf_counter()
    m = evaluate(sae, runtime, pairs, max_tokens=args.eval_tokens, progress=False)
    eval_s = time.perf_counter() - t0
    print(f"evaluate: {m['tokens']} reply tokens in {eval_s:.1f} s = {m['tokens'] / eval_s:.0f} tok/s; "
          f"EV {m['explained_variance']:.3f}, CE +{m['ce_increase']:.3f} nats")
    if args.json:
        doc = {
            "bench": "sae", "date": time.strftime("%Y-%m-%d"), "device": where, "dtype": dtype,
            "load_seconds": round(load_s, 2),
            "latents": {"pairs": len(pairs), "reply_tokens": n_tok, "seconds": round(latents_s, 3),
                        "pairs_per_s": round(len(pairs) / latents_s, 2), "reply_tokens_per_s": round(n_tok / latents_s, 1)},
            "evaluate": {"reply_tokens": m["tokens"], "seconds": round(eval_s, 3),
                         "reply_tokens_per_s": round(m["tokens"] / eval_s, 1),
                         "explained_variance": m["explained_variance"], "ce_increase": m.get("ce_increase")},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

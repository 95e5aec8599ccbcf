"""Benchmark featurize against the bare forward it is built on, on whatever device this machine has.

Measures, in one process and over the same multi-turn hh-rlhf pairs and the same batches:

- **bare, plain rows**: the bare truncated forward (hook + early exit at the layer; no lens, no
  cache, no tokenisation in the timed loop) over prompt+chosen and prompt+rejected, in the
  batches featurize makes with ``share_prompt=False``;
- **featurize, no reuse**: ``featurize(share_prompt=False)`` on a cold cache; its tokens/s counts
  the same plain tokens over the model loop's wall time (tokenisation excluded; lens scoring,
  the copy of the scores to the host and cache writes included); ratio to bare (target >= 0.9);
- **bare, shared prompt** and **featurize, shared prompt**: the same with the prompt run once per
  pair and its KV cache reused by both replies (tokens/s still counts the plain-equivalent
  tokens); featurize's ratio to its bare forward (target >= 0.9) and to no reuse (target >= 1.3
  on multi-turn hh-rlhf);
- **padding**: the fraction of the positions run that were padding, per batching;
- **warm rerun**: featurize again on the warm cache; end-to-end seconds cold / warm (target >= 50).

The device and dtype are ethos's own choice (``ethos.runtime.device``: CUDA when present, bf16
where native; ``ETHOS_DEVICE``/``ETHOS_DTYPE`` override); every timing waits for the device.
Each measurement runs ``--repeats`` times, interleaved, and the best run is kept: on a shared
machine other processes only ever slow a run down. ``--random-1b`` measures a ~1B-parameter
Llama (Llama-3.2-1B's shape with the default model's tokenizer: 16 blocks of width 2048) built
from its config with random weights — speed does not depend on the weights, and nothing
downloads. ``--json FILE`` writes the figures.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/featurize.py --pairs 16 --repeats 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
SAMPLE = ROOT / "specs" / "data" / "hh-rlhf-helpful-base-test-400.jsonl.gz"

# Llama-3.2-1B's shape; the vocabulary is the default model's (its tokenizer is reused): 1.07B parameters.
RANDOM_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                 tie_word_embeddings=True)


def random_1b_config(tokenizer: Any) -> Any:
    """The config of :data:`RANDOM_1B` for ``tokenizer``'s vocabulary and special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **RANDOM_1B)


def build_random_model(folder: Path, base: str, device: Any, dtype: Any) -> tuple[Path, int]:
    """A Llama of :data:`RANDOM_1B`'s shape with random weights and ``base``'s tokenizer, built on
    ``device`` in ``dtype`` and saved in ``folder``; returns the folder and its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ethos.runtime.model import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(base))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(random_1b_config(tok)).to(dtype)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    del model
    return folder, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="hh-rlhf jsonl.gz (default: ../shared/data's helpful-base test split "
                                                 "beside the checkout, else the embedded sample)")
    ap.add_argument("--pairs", type=int, default=48, help="multi-turn pairs to score")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per batch (default 8)")
    ap.add_argument("--concepts", default="sycophancy", help="library concepts (activation lenses)")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--random-1b", action="store_true",
                    help="measure a ~1B-parameter Llama built from its config with random weights (no download)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each measurement (the best is kept)")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args(argv)

    import torch

    from ethos.compiler.compile import plan_for_concepts
    from ethos.runtime.data import LoadResult, load_pairs
    from ethos.runtime.device import default_device, device_name, pick_dtype, synchronize
    from ethos.runtime.featurize import featurize
    from ethos.runtime.model import length_batches, model_runtime, tokenize_pair

    data_path = Path(args.data) if args.data else (SHARED_DATA if SHARED_DATA.exists() else SAMPLE)
    loaded = load_pairs(data_path)
    multi = [p for p in loaded.pairs if len(p.prompt) > 1][: args.pairs]
    if not multi:
        print(f"bench/featurize: no multi-turn pairs in {data_path}", file=sys.stderr)
        return 1
    data = LoadResult(multi, [], len(multi), loaded.format, loaded.source, loaded.fingerprint + f":multi{len(multi)}")
    plan = plan_for_concepts(args.concepts.split(",")).plan
    assert plan is not None
    if args.layer is not None:
        plan = plan.model_copy(update={"model": plan.model.model_copy(update={"layer": args.layer})})

    device = default_device()
    work = Path(tempfile.mkdtemp(prefix="ethos-bench-"))
    try:
        model_name, params = args.model, None
        if args.random_1b:
            t = time.perf_counter()
            folder, params = build_random_model(work / "random-1b", args.model, device, pick_dtype(device))
            model_name = str(folder)
            print(f"built a random {params / 1e9:.2f}B-parameter Llama in {time.perf_counter() - t:.0f} s", flush=True)

        # Warm-up: converts the model if needed, computes and caches the probe direction.
        featurize(plan, LoadResult(multi[:1], [], 1, "x", "x", "warm"), cache_dir=work / "warmup", progress=False,
                  model=model_name)

        def fresh(name: str) -> Path:
            """An empty score cache that shares the warmed-up probe directions."""
            d = work / name
            d.mkdir()
            (d / "probes").symlink_to(work / "warmup" / "probes")
            return d

        runtime = model_runtime(model_name, layer=plan.model.layer)  # None: the middle block
        enc, tok, layer = runtime.encoder, runtime.tokenizer, runtime.layer
        model = enc.model
        params = params or sum(p.numel() for p in model.parameters())
        items = [tokenize_pair(tok, p.prompt, [p.chosen, p.rejected]) for p in multi]
        tokens = sum(it.n_tokens() for it in items)
        prompt_share = sum(2 * len(it.prompt) for it in items) / tokens

        def bare(share: bool) -> tuple[float, float]:
            """Seconds of the bare forward over featurize's batches, and its padding fraction."""
            p0, r0 = enc.positions, enc.real_positions
            synchronize(enc.device)
            t = time.perf_counter()
            with torch.inference_mode():
                for batch in length_batches(items, args.batch_size, share_prompt=share):
                    enc.encode_batch([items[b] for b in batch], share_prompt=share)
            synchronize(enc.device)
            seconds = time.perf_counter() - t
            positions = enc.positions - p0
            return seconds, (positions - (enc.real_positions - r0)) / max(positions, 1)

        bare(False)  # warm-up (kernels, allocator)
        bare(True)
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")

        def run(cache: Path, share: bool) -> tuple[float, dict[str, Any]]:
            synchronize(enc.device)
            t = time.perf_counter()
            table = featurize(plan, data, cache_dir=cache, batch_size=args.batch_size, progress=False,
                              share_prompt=share, model=model_name)
            return time.perf_counter() - t, table.attrs["ethos"]["stats"]

        # Interleaved and repeated; the best of each is kept (other processes only ever slow a run).
        bares_plain, bares_shared, plains, shareds = [], [], [], []
        for r in range(args.repeats):
            bares_plain.append(bare(False))
            plains.append(run(fresh(f"plain{r}"), share=False))
            bares_shared.append(bare(True))
            shareds.append(run(fresh(f"shared{r}"), share=True))
        warm_total, warm = run(work / "shared0", share=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare_plain_s, pad_plain = min(bares_plain)
    bare_shared_s, pad_shared = min(bares_shared)
    plain_total, plain = min(plains, key=lambda x: x[1]["model_seconds"])
    shared_total, shared = min(shareds, key=lambda x: x[1]["model_seconds"])
    assert warm["computed_pairs"] == 0

    def padding(stats: dict[str, Any]) -> float:
        return stats["padded_positions"] / max(stats["positions"], 1)

    bare_plain_tps = tokens / bare_plain_s
    bare_shared_tps = tokens / bare_shared_s
    plain_tps = tokens / plain["model_seconds"]
    shared_tps = tokens / shared["model_seconds"]
    where = device_name(device)
    label = f"random {params / 1e9:.2f}B Llama" if args.random_1b else args.model
    print(f"featurize benchmark on {where}: {label} ({params / 1e6:,.0f}M parameters), layer {layer}, {len(multi)} "
          f"multi-turn hh-rlhf pairs, {tokens:,} plain tokens (prompt share {prompt_share:.0%}), batch {args.batch_size}, "
          f"dtype {dtype}, torch threads {torch.get_num_threads()}")
    rows = [
        ("bare forward, plain rows", f"{bare_plain_tps:,.0f} tok/s", f"{bare_plain_s:.2f} s", f"padding {pad_plain:.0%}"),
        ("featurize cold, no reuse", f"{plain_tps:,.0f} tok/s",
         f"{plain['model_seconds']:.2f} s (end to end {plain_total:.2f} s)",
         f"{plain_tps / bare_plain_tps:.2f}x bare (target >= 0.9); padding {padding(plain):.0%}"),
        ("bare forward, shared prompt", f"{bare_shared_tps:,.0f} tok/s", f"{bare_shared_s:.2f} s", f"padding {pad_shared:.0%}"),
        ("featurize cold, shared prompt", f"{shared_tps:,.0f} tok/s",
         f"{shared['model_seconds']:.2f} s (end to end {shared_total:.2f} s)",
         f"{shared_tps / bare_shared_tps:.2f}x bare (target >= 0.9); {shared_tps / plain_tps:.2f}x no reuse "
         f"(target >= 1.3); padding {padding(shared):.0%}"),
        ("featurize warm rerun", "-", f"{warm_total:.3f} s end to end",
         f"{shared_total / warm_total:.0f}x faster than cold (target >= 50)"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, width)))
    if args.json:
        doc = {
            "bench": "featurize",
            "date": time.strftime("%Y-%m-%d"),
            "device": where,
            "dtype": dtype,
            "model": label,
            "parameters": params,
            "layer": layer,
            "data": data_path.name,
            "pairs": len(multi),
            "tokens": tokens,
            "prompt_share": round(prompt_share, 4),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "bare_plain": {"seconds": round(bare_plain_s, 4), "tokens_per_s": round(bare_plain_tps, 1),
                           "padding": round(pad_plain, 4)},
            "featurize_plain": {"seconds": round(plain["model_seconds"], 4), "tokens_per_s": round(plain_tps, 1),
                                "ratio_to_bare": round(plain_tps / bare_plain_tps, 3), "padding": round(padding(plain), 4),
                                "end_to_end_seconds": round(plain_total, 3)},
            "bare_shared": {"seconds": round(bare_shared_s, 4), "tokens_per_s": round(bare_shared_tps, 1),
                            "padding": round(pad_shared, 4)},
            "featurize_shared": {"seconds": round(shared["model_seconds"], 4), "tokens_per_s": round(shared_tps, 1),
                                 "ratio_to_bare": round(shared_tps / bare_shared_tps, 3),
                                 "ratio_to_no_reuse": round(shared_tps / plain_tps, 3),
                                 "padding": round(padding(shared), 4), "end_to_end_seconds": round(shared_total, 3)},
            "warm": {"seconds": round(warm_total, 4), "speedup": round(shared_total / warm_total, 1)},
            "targets": {"ratio_to_bare": 0.9, "ratio_to_no_reuse": 1.3, "warm_speedup": 50},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``ethos featurize``: score every usable pair's chosen and rejected reply with the concepts of a
policy (:func:`ethos.runtime.featurize.featurize`) and write the scores parquet, or merge the
parquets of a sharded run (:func:`ethos.runtime.featurize.merge_scores`).

Exit codes: 0 ok, 1 an error (bad policy, data, model, lens), 2 usage, 130 interrupted (finished
batches are cached; a rerun resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ethos.runtime.errors import EXIT_ERRORS, EXIT_INTERRUPTED, EXIT_OK, EthosError, UsageError

from .common import add_data_args, check_limit, data_settings

DEFAULT_OUT = Path("ethos-out") / "scores.parquet"


def register(subparsers: Any) -> None:
    """Add ``ethos featurize`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "featurize",
        help="score every pair's chosen and rejected reply with the concepts of a policy",
        description=(
            "Score each usable pair's chosen and rejected reply with every concept of a policy "
            "(or of --concepts) and write the scores table as parquet. Scores are cached under "
            "$ETHOS_CACHE; a rerun computes only what is missing. With --num-shards N "
            "--shard-index i a process scores the i-th of N contiguous blocks of pairs; "
            "`ethos featurize --merge OUT PART...` joins the parts into the single-run table. "
            "Under accelerate launch / torchrun each process scores block RANK of WORLD_SIZE and rank 0 writes OUT. "
            "The model runs on CUDA when present (ETHOS_DEVICE=cpu|cuda|cuda:N overrides), in bf16 where native "
            "(ETHOS_DTYPE=float32|bfloat16 overrides)."
        ),
    )
    add_data_args(p, lock=False, seed_help="not used by featurize (scores do not depend on a seed)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--policy", metavar="FILE", help="score the concepts of this policy")
    src.add_argument("--concepts", metavar="A,B", help="score these library concepts")
    p.add_argument("--out", metavar="FILE", help=f"output parquet (default {DEFAULT_OUT}; shard i of N: scores.shard-i-of-N.parquet)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--model", metavar="M", help="model name or local folder (overrides the policy)")
    p.add_argument("--layer", type=int, metavar="L", help="layer to read (overrides the policy)")
    p.add_argument("--num-shards", type=int, default=1, metavar="N", help="split the pairs into N blocks")
    p.add_argument("--shard-index", type=int, default=0, metavar="I", help="score block I (0-based)")
    share = p.add_mutually_exclusive_group()
    share.add_argument("--share-prompt", dest="share_prompt", action="store_true", default=None,
                       help="run each prompt once, its KV cache shared by both replies (default on a CPU)")
    share.add_argument("--no-share-prompt", dest="share_prompt", action="store_false",
                       help="run the prompt once per reply, no KV reuse (default on a GPU, where it is faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--merge", metavar="OUT", help="merge shard outputs (positional PARTs) into OUT and exit")
    p.add_argument("parts", nargs="*", metavar="PART", help="shard outputs to merge (with --merge)")
    p.set_defaults(func=run_featurize, command="featurize")


def _load_plan(args: argparse.Namespace) -> Any:
    """The plan of ``--policy`` or of ``--concepts``; None after printing the diagnostics."""
    from ethos.compiler.compile import compile_file, plan_for_concepts
    from ethos.compiler.errors import render_all

    if args.policy:
        result = compile_file(args.policy)
    else:
        names = [n.strip() for n in (args.concepts or "").split(",") if n.strip()]
        if not names:
            raise UsageError("give --policy FILE or --concepts a,b")
        result = plan_for_concepts(names)
    if result.plan is None:
        print(render_all(result.diagnostics), file=sys.stderr)
        return None
    return result.plan


def _merge(args: argparse.Namespace) -> int:
    from ethos.runtime.featurize import merge_scores, write_scores

    try:
        merged = merge_scores(args.parts)
        out = write_scores(merged, args.merge)
    except OSError as exc:
        raise EthosError(str(exc)) from None
    if args.json:
        print(json.dumps({"rows": len(merged), "output": str(out)}))
    else:
        print(f"merged {len(args.parts)} shards, {len(merged)} rows -> {out}")
    return EXIT_OK


def run_featurize(args: argparse.Namespace) -> int:
    """``ethos featurize``: 0 ok, 1 error, 2 usage, 130 interrupted (finished batches are cached)."""
    if args.merge:
        return _merge(args)
    if args.parts:
        raise UsageError("PART arguments are only for --merge")
    check_limit(args.limit)
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        raise UsageError(f"--shard-index must be in 0..{args.num_shards - 1}")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    from ethos.runtime.distributed import launch_from_env, shard_of

    launch = launch_from_env()  # None for a plain process
    num_shards, shard_index = shard_of(launch, args.num_shards, args.shard_index)

    plan = _load_plan(args)
    if plan is None:
        return EXIT_ERRORS
    if args.out:
        out = Path(args.out)
    elif args.num_shards > 1:
        out = DEFAULT_OUT.with_name(f"scores.shard-{args.shard_index}-of-{args.num_shards}.parquet")
    else:
        out = DEFAULT_OUT

    from ethos.runtime.featurize import featurize, write_scores
    from ethos.runtime.loading import load_data

    try:
        data = load_data(data_settings(args), "featurize")
        table = featurize(
            plan,
            data,
            batch_size=args.batch_size,
            num_shards=num_shards,
            shard_index=shard_index,
            progress=not args.no_progress and (launch is None or launch.is_main),  # stderr: never mixes with --json
            model=args.model,
            layer=args.layer,
            share_prompt=args.share_prompt,
        )
        if launch is None:
            write_scores(table, out)
        else:
            from ethos.runtime.distributed import finish_rank

            merged = finish_rank(table, out, launch)  # this rank's part; rank 0 waits, merges, writes out
            if merged is None:
                print(f"ethos featurize: rank {launch.rank} of {launch.world_size}: scored {len(table)} pairs; "
                      f"rank 0 writes {out}", file=sys.stderr)
                return EXIT_OK
            table = merged
    except KeyboardInterrupt:
        print("ethos featurize: interrupted; finished batches are cached, rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        raise EthosError(str(exc)) from None
    counts = data.counts()
    meta = table.attrs["ethos"]
    if args.json:
        print(
            json.dumps(
                {
                    "rows": counts,
                    "shard": {"index": meta["shard_index"], "of": meta["num_shards"], "pairs": len(table)},
                    "concepts": [c.name for c in plan.concepts],
                    "model": meta["model"],
                    "layer": meta["layer"],
                    "stats": meta["stats"],
                    "output": str(out),
                }
            )
        )
    else:
        excluded = counts["excluded"]
        detail = ", ".join(f"{r}: {n}" for r, n in excluded.items())
        print(
            f"rows: {counts['input']} input, {counts['usable']} usable, {sum(excluded.values())} excluded"
            + (f" ({detail})" if detail else "")
        )
        s = meta["stats"]
        rate = f", {s['tokens'] / s['model_seconds']:,.0f} tok/s" if s["model_seconds"] > 0 else ""
        print(f"scored {len(table)} pairs ({s['computed_pairs']} computed, {len(table) - s['computed_pairs']} cached{rate})")
        print(f"wrote {out}")
    return EXIT_OK

"""``ethos sae train | eval | describe``: sparse autoencoders on the residual stream
(:mod:`ethos.runtime.sae`: :func:`~ethos.runtime.sae.train_and_save`,
:func:`~ethos.runtime.sae.evaluate_data`, :func:`~ethos.runtime.sae.describe_and_store`).

Errors print as every command's do, ``ethos sae: error: <message>`` (:func:`ethos.runtime.cli.main`),
exit 1; exit 2 when ``--out`` already holds an SAE and ``--force`` is not given.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ethos.compiler.names import DEFAULT_MODEL
from ethos.runtime.errors import EXIT_OK


def _command_line() -> str | None:
    """``ethos sae train …`` as run (from ``sys.argv``), for the provenance record."""
    import shlex

    argv = sys.argv[1:] if sys.argv else []
    if "sae" not in argv:
        return None
    return "ethos " + shlex.join(argv[argv.index("sae") :])


def run_train(args: argparse.Namespace) -> int:
    from ethos.runtime.sae import HOLDOUT, TrainConfig, train_and_save

    given = {"d_sae": args.d_sae, "k": args.k, "architecture": args.architecture, "tokens": args.tokens,
             "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "aux_loss_coefficient": args.aux_coefficient}
    config = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    train_and_save(
        args.out,
        args.data,
        model=args.model,
        layer=args.layer,
        config=config,
        text_field=args.text_field,
        max_unique_tokens=args.max_unique_tokens,
        holdout=HOLDOUT if args.holdout is None else args.holdout,
        activations=args.activations,
        eval_tokens=args.eval_tokens,
        eval_rows=args.eval_rows,
        force=args.force,
        command=_command_line(),
    )
    return EXIT_OK


def run_eval(args: argparse.Namespace) -> int:
    from ethos.runtime.sae import evaluate_data

    metrics = evaluate_data(args.sae, args.data, model=args.model, limit=args.limit, tokens=args.tokens or None,
                            batch_size=args.batch_size, all_rows=args.all_rows, progress=True,
                            all_replies=not args.subset_only)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for k in ("explained_variance", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_increase"):
            if k in metrics:
                print(f"{k:20} {metrics[k]:.4f}")
        held = metrics["held_out"]
        print(f"{'tokens':20} {metrics['tokens']}  ({metrics['pairs']} pairs{', held out' if held else ''})")
        if "dead_tokens" in metrics:
            print(f"on all {metrics['dead_tokens']} reply tokens of the {metrics['pairs']} pairs:")
            for k in ("dead_fraction_all_replies", "dense_fraction_all_replies"):
                print(f"  {k:27} {metrics[k]:.4f}")
    return EXIT_OK


def run_describe(args: argparse.Namespace) -> int:
    from ethos.runtime.sae import describe_and_store

    labels, path = describe_and_store(args.sae, args.data, latents=args.latent or None, k_snippets=args.snippets,
                                      k_tokens=args.tokens, model=args.model, limit=args.limit,
                                      progress=True)  # stderr, never mixed with --json
    if args.json:
        print(json.dumps({str(i): v for i, v in labels.items()}, indent=2, ensure_ascii=False))
        return EXIT_OK
    shown = list(labels.items())
    if not args.latent:
        shown = sorted(shown, key=lambda kv: -kv[1]["frequency"])[:10]
        print(f"labelled {len(labels)} latents (stored in {path}); the 10 firing most often:")
    for i, lab in shown:
        print(f"latent {i}  freq {lab['frequency']:.4f}  max {lab['max_activation']:.2f}")
        print("  tokens: " + " ".join(repr(t) for t in lab["tokens"]))
        for s in lab["snippets"]:
            print(f"  · {s}")
    return EXIT_OK


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sae", help="train, evaluate and describe sparse autoencoders")
    sub = p.add_subparsers(dest="sae_command", metavar="SUBCOMMAND", required=True)

    # training hyper-parameters default to ethos.runtime.sae.TrainConfig's (None: not given)
    s = sub.add_parser("train", help="train a TopK SAE on a layer's residual stream (sae-lens)")
    s.add_argument("--layer", type=int, default=None, help="layer to read (default: the model's middle block)")
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="text (.txt/.md), JSON Lines with a text field, or preference data")
    s.add_argument("--text-field", default=None, help="the field holding text in JSON Lines (default: guessed)")
    s.add_argument("--tokens", type=int, default=None, help="training tokens (samples), epochs as needed")
    s.add_argument("--max-unique-tokens", type=int, default=None, help="cap on distinct tokens read from the data")
    s.add_argument("--d-sae", type=int, default=None)
    s.add_argument("--k", type=int, default=None)
    s.add_argument("--architecture", choices=("topk", "batchtopk"), default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--aux-coefficient", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--holdout", type=int, default=None, help="hold out rows with index %% N == 0 (0: none)")
    s.add_argument("--activations", default=None, help="activation cache folder (default: under $ETHOS_CACHE)")
    s.add_argument("--eval-tokens", type=int, default=8000, help="held-out reply tokens to evaluate on at the end (0: none)")
    s.add_argument("--eval-rows", type=int, default=None)
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--force", action="store_true", help="overwrite an SAE in DIR")
    s.set_defaults(func=run_train, command="sae train")

    s = sub.add_parser("eval", help="reconstruction and cross-entropy metrics on reply tokens")
    s.add_argument("sae", metavar="DIR", help="an SAE folder or name ('default')")
    s.add_argument("--data", required=True, metavar="PATH", help="preference data")
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--limit", type=int, default=None, help="at most N pairs")
    s.add_argument("--tokens", type=int, default=4000, help="about N reply tokens, a fixed-seed random subset of pairs (0: all; default 4000)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--all-rows", action="store_true", help="use every row even if the SAE was trained on this file")
    s.add_argument("--subset-only", action="store_true",
                   help="count dead/dense latents only on the --tokens subset (skip the pass over every reply token)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_eval, command="sae eval")

    s = sub.add_parser("describe", help="label latents by top snippets and promoted tokens")
    s.add_argument("sae", metavar="DIR", help="an SAE folder or name ('default')")
    s.add_argument("--data", required=True, metavar="PATH", help="preference data")
    s.add_argument("--latent", type=int, action="append", default=[], help="a latent to describe (repeatable; default all)")
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--limit", type=int, default=None, help="at most N input rows")
    s.add_argument("--snippets", type=int, default=3)
    s.add_argument("--tokens", type=int, default=8)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_describe, command="sae describe")

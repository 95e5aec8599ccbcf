"""``ethos trace``: the pairs behind a concept's learning signal, ranked, with the rule that
decides each.

``ethos trace (POLICY | --concepts A,B) --concept X [--topic T] [--top N] [--out pairs.jsonl]
[--json] [--html FILE] [data options]``. Calls :func:`ethos.runtime.trace.trace_dataset`; prints a table (rich on
a terminal, plain text otherwise) or the JSON document; ``--out`` writes the ranked pairs as JSON
Lines and ``--html`` an HTML page (atomically). Exit codes: 0 ok, 1 an error (bad policy, data, model), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ethos.runtime.errors import EXIT_ERRORS, EXIT_OK, UsageError

from .common import add_data_args, check_limit, data_settings

DEFAULT_TOP = 20  # = ethos.runtime.trace.DEFAULT_TOP (not imported here: the command line stays light)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "trace",
        help="the pairs behind a concept's learning signal, ranked, with the rule deciding each",
        description=(
            "Rank the pairs by their contribution to a concept's learning signal (alpha * z of the joint "
            "Bradley-Terry fit, and its share of the total), with prompt, both replies, both scores, the "
            "topics of the pair and the policy's rule that decides it (a 'when topic' rule wins in its topic)."
        ),
    )
    p.add_argument("policy", nargs="?", metavar="POLICY", help="the policy whose concepts, topics and rules to use")
    p.add_argument("--concepts", metavar="A,B", help="library concepts to fit jointly (instead of a policy)")
    p.add_argument("--concept", required=True, metavar="X", help="the concept to trace")
    p.add_argument("--topic", metavar="T", help="only the pairs in this topic of the policy")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N",
                   help=f"show the first N pairs (default {DEFAULT_TOP}; 0: all)")
    p.add_argument("--out", metavar="FILE", help="write the ranked pairs as JSON Lines")
    p.add_argument("--json", action="store_true", help="print the trace as JSON on stdout")
    p.add_argument("--html", metavar="FILE", help="write the trace as an HTML page (self-contained)")
    p.add_argument("--cluster-features", choices=("model", "tfidf"), default="model",
                   help="cluster topics: k-means over the model's prompt activations (default) or the prompts' TF-IDF")
    add_data_args(p, lock=False, seed_help="seed of the topic clustering (default 0)")
    p.set_defaults(func=run_trace, command="trace")


def run_trace(args: argparse.Namespace) -> int:
    """``ethos trace``: 0 ok, 1 error, 2 usage."""
    from ethos.compiler.compile import compile_file, plan_for_concepts
    from ethos.compiler.errors import render_all
    from ethos.runtime.trace import trace_dataset, write_pairs_jsonl

    check_limit(args.limit)
    if args.top < 0:
        raise UsageError("--top must be 0 (all) or more")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if bool(args.policy) == (args.concepts is not None):
        raise UsageError("give a POLICY or --concepts A,B (one of them)")
    if args.policy:
        result = compile_file(args.policy)
    else:
        names = [n.strip() for n in args.concepts.split(",") if n.strip()]
        if not names:
            raise UsageError("--concepts needs at least one concept name")
        if args.concept not in names:
            names.append(args.concept)
        result = plan_for_concepts(names)
    if result.plan is None:
        print(render_all(result.diagnostics), file=sys.stderr)
        return EXIT_ERRORS
    if result.diagnostics:
        print(render_all(result.diagnostics), file=sys.stderr)
    trace = trace_dataset(result.plan, data_settings(args), args.concept, topic=args.topic,
                          top=None if args.top == 0 else args.top, policy=args.policy,
                          progress=True, cluster_features=args.cluster_features)  # on stderr, as every command
    if args.out:
        write_pairs_jsonl(trace, args.out)
    doc = trace.to_dict()
    if args.html:
        from ethos.runtime.io import atomic_write_text
        from ethos.runtime.report.trace import render_trace_html

        atomic_write_text(args.html, render_trace_html(doc))
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    elif sys.stdout.isatty():
        _print_rich(doc)
    else:
        print(plain_text(doc), end="")
    if args.out and not args.json:
        print(f"wrote {len(doc['pairs'])} pairs to {args.out}", file=sys.stderr)
    if args.html and not args.json:
        print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK


def _fmt(x: Any, spec: str = "+.3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _short(text: str, n: int = 70) -> str:
    one = " ".join(str(text).split())
    return one if len(one) <= n else one[: n - 1] + "…"


def _last_turn(prompt: list[dict[str, str]]) -> str:
    return prompt[-1]["content"] if prompt else ""


def _header(doc: dict[str, Any]) -> list[str]:
    lines = [f"concept {doc['concept']}: alpha {_fmt(doc['alpha'])} "
             f"[{_fmt(doc['alpha_ci'][0])}, {_fmt(doc['alpha_ci'][1])}] over {doc['n_pairs']} pairs; "
             f"ranked by {doc['ranked_by']}" + (f"; topic {doc['topic']}" if doc["topic"] else "")]
    lines += [f"note: {n}" for n in doc["notes"]]
    lines.append("rules: " + "; ".join(f"{r['rule']}: {r['pairs']} pairs, {100 * r['share']:.1f}% of the signal"
                                       for r in doc["accounting"]["by_rule"]))
    return lines


def plain_text(doc: dict[str, Any]) -> str:
    """The trace as plain text (one block per pair)."""
    lines = _header(doc)
    for p in doc["pairs"]:
        lines.append("")
        lines.append(f"#{p['rank']} pair {p['id']}: contribution {_fmt(p['contribution'])} "
                     f"({100 * p['share']:.1f}%), scores chosen {_fmt(p['score_chosen'], '.3g')} "
                     f"rejected {_fmt(p['score_rejected'], '.3g')}; topics {', '.join(p['topics']) or '-'}; "
                     f"rule {p['rule']}")
        lines.append(f"  prompt:   {_short(_last_turn(p['prompt']))}")
        lines.append(f"  chosen:   {_short(p['chosen'])}")
        lines.append(f"  rejected: {_short(p['rejected'])}")
    return "\n".join(lines) + "\n"


def _print_rich(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    for line in _header(doc):
        console.print(line, markup=False, highlight=False)
    t = Table(show_lines=True)
    t.add_column("#", justify="right")
    t.add_column("α·z (share)", justify="right")
    t.add_column("score c / r", justify="right")
    t.add_column("pair: prompt / chosen / rejected", ratio=1)
    t.add_column("topics")
    t.add_column("rule", overflow="fold")
    for p in doc["pairs"]:
        text = Text()
        text.append(f"{p['id']}: {_short(_last_turn(p['prompt']), 90)}\n", style="bold")
        text.append(f"+ {_short(p['chosen'], 90)}\n", style="green")
        text.append(f"- {_short(p['rejected'], 90)}", style="red")
        t.add_row(str(p["rank"]), f"{_fmt(p['contribution'])} ({100 * p['share']:.1f}%)",
                  f"{_fmt(p['score_chosen'], '.3g')} / {_fmt(p['score_rejected'], '.3g')}",
                  text, Text(", ".join(p["topics"]) or "-"), Text(p["rule"]))  # data text is never markup
    console.print(t)

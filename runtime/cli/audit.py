"""``ethos audit``: which concepts separate chosen from rejected replies.

Parses the arguments, compiles the policy (or a plan for library concepts), calls
:func:`ethos.runtime.audit.audit_dataset`, writes audit.json, audit.md, audit.html (and with
``--emit-policy`` the draft policy of :mod:`ethos.runtime.draft`) and prints the summary or the
JSON. Exit codes: 0 ok, 1 an error (bad policy, data, model, SAE), 2 usage, 130 interrupted.

Under ``accelerate launch``/``torchrun`` the audit (``--discover`` included) runs on rank 0 only,
which writes the outputs; every other rank checks the arguments, says so on stderr and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ethos.runtime.errors import EXIT_ERRORS, EXIT_INTERRUPTED, EXIT_OK, EthosError, UsageError
from ethos.runtime.io import atomic_write_text

from .common import add_data_args, check_limit, data_settings

DEFAULT_OUT = Path("ethos-out") / "audit"
N_BOOT = 2000  # = ethos.runtime.stats.N_BOOT (not imported here: the command line stays light)
Q_MAX = 0.05  # = ethos.runtime.stats.Q_MAX


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="which concepts separate chosen from rejected: effects, CIs, q-values, shares",
        description=(
            "Audit a preference dataset: per concept the mean difference (chosen - rejected), Cohen's d "
            "with a bootstrap CI, the win rate with an exact sign test and BH q-values; jointly a "
            "Bradley-Terry fit (alpha per sd, share of the signal). --discover runs over every SAE latent. "
            "Writes audit.json, audit.md and audit.html into --out."
        ),
    )
    add_data_args(p, lock=False, seed_help="seed of the bootstrap and the split halves (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--policy", metavar="FILE", help="audit the concepts this policy uses")
    g.add_argument("--concepts", metavar="A,B", help="audit these library concepts (default: the whole library)")
    p.add_argument("--discover", action="store_true", help="also test every latent of the policy's SAE and group survivors")
    p.add_argument("--out", metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--emit-policy", metavar="FILE", help="write a draft policy with a decision line per concept")
    p.add_argument("--json", action="store_true", help="print the audit as JSON on stdout")
    p.add_argument("--n-boot", type=int, default=N_BOOT, metavar="B", help=f"bootstrap resamples (default {N_BOOT})")
    p.add_argument("--q-max", type=float, default=Q_MAX, metavar="Q", help=f"discovery FDR level (default {Q_MAX})")
    p.add_argument("--pool", choices=("max", "mean"), default="max", help="discovery: pool latents over reply tokens by")
    p.add_argument("--validate", type=float, metavar="F",
                   help="discovery: hold out this fraction of the pairs (seeded), discover on the rest and test "
                        "every candidate on the held-out pairs")
    p.add_argument("--no-length", action="store_true",
                   help="do not fit length (tokens) as a covariate beside the concepts")
    p.add_argument("--topics", type=int, metavar="K",
                   help="also split the pairs into K topics (seeded k-means of the prompts) and audit every "
                        "concept per topic (the policy's own topics are audited without it)")
    p.add_argument("--topic-features", choices=("model", "tfidf"), default="model",
                   help="cluster the prompts' pooled model activations (default) or their TF-IDF (no model)")
    p.add_argument("--model", metavar="M", help="model name or local folder (overrides the policy)")
    p.set_defaults(func=run_audit, command="audit")


def run_audit(args: argparse.Namespace) -> int:
    """``ethos audit``: 0 ok, 1 error (bad policy, data, model, SAE), 2 usage, 130 interrupted."""
    from ethos.compiler.compile import compile_file, compile_source, plan_for_concepts
    from ethos.compiler.errors import render_all
    from ethos.runtime.audit import audit_dataset
    from ethos.runtime.draft import draft_policy
    from ethos.runtime.report.audit import print_audit_summary, render_audit_html, render_audit_markdown

    check_limit(args.limit)
    if args.n_boot < 0:
        raise UsageError("--n-boot must be 0 or more")
    if not 0 < args.q_max < 1:
        raise UsageError("--q-max must be between 0 and 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.validate is not None and not args.discover:
        raise UsageError("--validate needs --discover")
    if args.validate is not None and not 0 < args.validate < 1:
        raise UsageError("--validate must be a fraction between 0 and 1 (e.g. 0.3)")
    if args.topics is not None and args.topics < 2:
        raise UsageError("--topics must be at least 2 (the number of topics to split the prompts into)")
    from ethos.runtime.distributed import launch_from_env

    launch = launch_from_env()
    if launch is not None and not launch.is_main:  # no two ranks score the same pairs or write the same files
        print(f"ethos audit: rank {launch.rank} of {launch.world_size}: the audit runs on rank 0 only; nothing to do "
              "here", file=sys.stderr)
        return EXIT_OK
    if args.policy:
        result = compile_file(args.policy)
    else:
        if args.concepts is not None:
            names = [n.strip() for n in args.concepts.split(",") if n.strip()]
            if not names:
                raise UsageError("--concepts needs at least one concept name")
        else:
            from ethos.compiler.resolve import load_library

            names = sorted(load_library().concepts)
        result = plan_for_concepts(names)
    if result.plan is None:
        print(render_all(result.diagnostics), file=sys.stderr)
        return EXIT_ERRORS
    plan = result.plan
    data = data_settings(args)
    try:
        audit = audit_dataset(
            plan, data, model=args.model, discover=args.discover, pool=args.pool, q_max=args.q_max,
            n_boot=args.n_boot, progress=True, policy=args.policy,  # on stderr: a bar on a terminal, else a line every ~10 s
            concepts_from="policy" if args.policy else ("--concepts" if args.concepts is not None else "library"),
            validate=args.validate, length=not args.no_length, topics=args.topics,
            topic_features=args.topic_features,
        )
    except KeyboardInterrupt:
        print("ethos audit: interrupted; finished featurize batches are cached, rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        raise EthosError(str(exc)) from None
    doc = audit.to_dict()
    out = Path(args.out) if args.out else DEFAULT_OUT
    written = {"json": out / "audit.json", "markdown": out / "audit.md", "html": out / "audit.html"}
    draft_text = None
    if args.emit_policy:
        draft_path = Path(args.emit_policy)
        draft_text = draft_policy(doc, plan, draft_path=draft_path)
        check = compile_source(draft_text, str(draft_path))
        if check.plan is None:  # a bug in draft_policy: say so rather than write a broken file
            print(render_all(check.diagnostics), file=sys.stderr)
            raise EthosError("internal: the draft policy does not compile")
        written["policy"] = draft_path
    doc["outputs"] = {k: str(v) for k, v in written.items()}
    try:
        atomic_write_text(written["json"], json.dumps(doc, indent=2, allow_nan=False) + "\n")
        atomic_write_text(written["markdown"], render_audit_markdown(doc))
        atomic_write_text(written["html"], render_audit_html(doc))
        if draft_text is not None:
            atomic_write_text(written["policy"], draft_text)
    except OSError as exc:
        raise EthosError(f"cannot write the outputs: {exc}") from None
    if args.json:
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        print_audit_summary(doc)
        print_length(doc)
        print_validation(doc)
        print("wrote " + ", ".join(str(v) for v in written.values()))
    return EXIT_OK


def print_validation(doc: dict[str, Any]) -> None:
    """The held-out columns beside the discovery ones, and which of them are selection-biased
    (printed after the report's summary while the summary does not show them)."""
    from rich.console import Console
    from rich.table import Table

    from ethos.runtime.report.format import num, pval

    val = (doc.get("discovery") or {}).get("validation")
    if not val:
        return
    console = Console()
    cands = doc.get("candidates") or []
    console.print(f"held-out validation: {val['heldout_pairs']} pairs set aside (seeded), discovery on "
                  f"{val['discovery_pairs']}; {val['replicated']} of {len(cands)} candidates replicated")
    if not cands:
        return
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    for col in ("candidate", "label", "d*", "q*", "held-out d", "held-out q", "replicated"):
        table.add_column(col, no_wrap=col != "label")
    for cand in cands:
        h = cand.get("heldout") or {}
        label = (cand.get("label") or {}).get("text") or "-"
        verdict = {True: "yes", False: "no", None: "-"}[cand.get("replicated")]
        table.add_row(cand["name"], label, num(cand.get("d"), "+.2f"), pval(cand.get("q")), num(h.get("d"), "+.2f"),
                      pval(h.get("q")), verdict)
    console.print(table)
    console.print("* on the discovery pairs: selection-biased (the latents were picked there); "
                  "the held-out columns are not")


def print_length(doc: dict[str, Any]) -> None:
    """How each concept's α changes when length is in the joint fit, and how much of its d the
    length difference explains (printed after the report's summary while the summary does not
    show it)."""
    from rich.console import Console

    from ethos.runtime.report.format import num, pct

    length = doc.get("length")
    if not length:
        return
    console = Console()
    what = f"the concept {length['concept']}" if length.get("concept") else "length in tokens (a covariate)"
    console.print(f"length: {what}, d {num(length.get('d'), '+.2f')}, α {num(length.get('alpha'), '+.2f')} in the joint fit")
    for c in doc.get("concepts", []):
        if c.get("alpha_without_length") is None or c.get("alpha_with_length") is None:
            continue
        console.print(f"  {c['name']}: α {num(c['alpha_without_length'], '+.2f')} without length → "
                      f"{num(c['alpha_with_length'], '+.2f')} with; length explains {pct(c.get('length_explains'))} of d")

"""``ethos evaluate``: compare trained models with the base on held-out prompts, concept by concept.

With ``--out`` it writes ``DIR/evaluate.json`` (the report document), ``DIR/evaluate.md`` and
``DIR/evaluate.html`` (rendered from exactly what evaluate.json holds). Exit codes: 0 ok, 1 a
failed run or bad input, 2 bad arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ethos.runtime.errors import EthosError, UsageError
from ethos.runtime.io import atomic_write_text


def register(subparsers: Any) -> None:
    e = subparsers.add_parser(
        "evaluate", help="compare trained models with the base on held-out prompts, concept by concept",
        description="Generate on held-out prompts (greedy, and sampled with fixed seeds), score every policy "
                    "concept with the same lenses, report each concept's shift against the base with bootstrap "
                    "CIs, and compare the plan's predicted shifts with the measured ones.")
    e.add_argument("--base", required=True, metavar="MODEL", help="the base model (name or folder)")
    e.add_argument("--models", required=True, nargs="+", metavar="DIR", help="`ethos train` output folders (or model folders)")
    e.add_argument("--prompts", required=True, metavar="PATH", help="jsonl with \"prompt\", or preference data")
    e.add_argument("--policy", required=True, metavar="FILE", help="the policy whose concepts are scored")
    # a flag not given is None: the setting's default lives in ethos.runtime.settings.EvaluateSettings
    e.add_argument("--limit", type=int, metavar="N", help="held-out prompts (default 50)")
    e.add_argument("--max-new-tokens", type=int, metavar="N")
    e.add_argument("--samples", type=int, metavar="N", help="sampled generations per prompt (seeds 0..N-1)")
    e.add_argument("--batch-size", type=int, metavar="B")
    e.add_argument("--out", metavar="DIR", help="write evaluate.json, evaluate.md and evaluate.html here")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=run_evaluate, command="evaluate")


def run_evaluate(args: Any) -> int:
    from ethos.runtime.settings import EvaluateSettings

    from .train import quiet_libraries

    given = {k: getattr(args, k) for k in ("limit", "max_new_tokens", "samples", "batch_size")
             if getattr(args, k) is not None}
    settings = EvaluateSettings(base=args.base, models=list(args.models), prompts=args.prompts, policy=args.policy,
                                **given)
    if settings.limit < 1 or settings.max_new_tokens < 1 or settings.samples < 0 or settings.batch_size < 1:
        raise UsageError("--limit, --max-new-tokens and --batch-size must be positive, --samples >= 0")
    quiet_libraries()
    from ethos.runtime import api
    from ethos.runtime.report import render_evaluate_html, render_evaluate_markdown

    try:
        result = api.evaluate(settings, progress=True)  # a bar on a terminal, else a line every ~10 s
    except EthosError:
        raise
    except KeyboardInterrupt:
        raise EthosError("interrupted", exit_code=130) from None
    except Exception as e:
        if os.environ.get("ETHOS_DEBUG"):
            raise
        raise EthosError(f"{type(e).__name__}: {e}") from e
    doc, text = result.document, result.json_text()
    for warning in doc.get("warnings") or ():
        print(f"ethos evaluate: warning: {warning}", file=sys.stderr)
    for line in reward_lines(doc):
        print(line, file=sys.stderr)
    md = render_evaluate_markdown(doc)
    if args.out:
        html = render_evaluate_html(doc)  # both rendered before anything is written
        out = Path(args.out)
        written = [out / "evaluate.html", out / "evaluate.md", out / "evaluate.json"]
        atomic_write_text(written[2], text + "\n")
        atomic_write_text(written[1], md)
        atomic_write_text(written[0], html)
        print("reports: " + ", ".join(str(p) for p in written), file=sys.stderr)
    if args.json:
        print(text)
    else:
        print(md)
    return 0


def reward_lines(doc: dict[str, Any]) -> list[str]:
    """One line per reward model: preference accuracy and each concept's slope (with CIs)."""
    from ethos.runtime.report.format import est_ci, pct

    out = []
    for m in doc.get("reward_models") or ():
        lo, hi = m["accuracy_ci"]
        slopes = "; ".join(f"{r['concept']} {est_ci(r['slope'], r['ci'], '+.3f')}" for r in m["concepts"])
        out.append(f"reward model {m['name']}{'' if m['shaping'] else ' (unshaped)'}: accuracy {pct(m['accuracy'])} "
                   f"[{pct(lo)}, {pct(hi)}] on {m['n']} held-out pairs; reward slope per sd: {slopes}")
    return out

"""``ethos plan``: the dry run — what a policy will change in the data, verified."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ethos.runtime.errors import EthosError
from ethos.runtime.io import atomic_write_text

from .common import add_data_args, check_limit, data_settings


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "plan", help="the dry run: what a policy will change in the data, verified",
        description="Compile POLICY, featurize the data (cached), audit it, simulate every intervention, "
                    "re-fit, check every expect, and write the report. Changes nothing. "
                    "Exit codes: 0 ok, 1 errors, 3 an expectation failed.")
    s.add_argument("policy", metavar="POLICY", help="a policy file (.ethos)")
    add_data_args(s)
    s.add_argument("--out", default="ethos-out/plan", metavar="DIR", help="report folder (default: ethos-out/plan)")
    s.add_argument("--save", metavar="PLANFILE", help="save the plan with its data fingerprint, for `ethos apply`")
    s.add_argument("--json", action="store_true", help="print the plan document as JSON")
    s.set_defaults(func=run_plan, command="plan")


def run_plan(args: Any) -> int:
    from ethos.runtime import api
    from ethos.runtime.outputs import FolderWriter
    from ethos.runtime.report import print_plan_report, render_plan_html, render_plan_markdown

    check_limit(args.limit)
    out = Path(args.out)
    outputs = (out, *((Path(args.save).resolve().parent,) if args.save else ()))
    try:
        run = api.dry_run(args.policy, data_settings(args), outputs=outputs, progress=True)
    except KeyboardInterrupt:
        raise EthosError("interrupted; finished featurize batches are cached, rerun to resume", exit_code=130) from None
    doc = run.document()
    plan_json = run.plan_json()
    text = json.dumps(doc, indent=2) + "\n"
    files = {"plan.json": text, "plan.md": render_plan_markdown(doc, plan_json),
             "plan.html": render_plan_html(doc, plan_json)}  # rendered before the folder is touched
    from ethos.runtime.report.trace import render_trace_html, trace_file_name

    for concept, trace in (doc.get("traces") or {}).items():  # each rule's traced pairs, linked from plan.html
        files[trace_file_name(concept)] = render_trace_html(trace)
    with FolderWriter(out, "plan", names=files) as w:
        for name, content in files.items():
            w.write(name, content)
    if args.save:
        atomic_write_text(Path(args.save), json.dumps(run.saved_plan(), indent=2) + "\n")
    if args.json:
        print(text, end="")
    else:
        print_plan_report(doc, plan_json)
        print(f"reports: {out / 'plan.html'}, {out / 'plan.md'}, {out / 'plan.json'}", file=sys.stderr)
        print(run.summary_line())
    return 3 if run.failed else 0

"""``ethos check``, ``fmt``, ``compile``, ``diff``: the policy commands. They need the compiler
only (no model, no data), so they start fast: nothing here imports torch, transformers, pandas
or scipy."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ethos.compiler.compile import Result, compile_file, read_policy
from ethos.compiler.diff import diff_plans
from ethos.compiler.errors import render_all
from ethos.compiler.fmt import format_source
from ethos.compiler.parse import decode
from ethos.compiler.plan import dump_plan
from ethos.runtime.errors import EXIT_ERRORS, EXIT_OK
from ethos.runtime.io import atomic_write_text


def print_diagnostics(results: list[tuple[str, Result]], as_json: bool) -> None:
    """The diagnostics of compiled policies: JSON on stdout, or rendered on stderr."""
    if as_json:
        payload = {
            "files": [
                {"path": path, "ok": r.ok, "diagnostics": [d.model_dump(mode="json") for d in r.diagnostics]}
                for path, r in results
            ]
        }
        print(json.dumps(payload, indent=2))
        return
    for _, r in results:
        if r.diagnostics:
            print(render_all(r.diagnostics), file=sys.stderr)


def run_check(args) -> int:
    results = [(p, compile_file(p)) for p in args.files]
    print_diagnostics(results, args.json)
    if args.summary and not args.json:
        from ethos.runtime.summary import print_plan_summary

        for _, r in results:
            if r.plan is not None:
                print_plan_summary(r.plan)
    if not args.json:
        bad = sum(not r.ok for _, r in results)
        print(f"checked {len(results)} polic{'y' if len(results) == 1 else 'ies'}: "
              f"{len(results) - bad} ok, {bad} with errors", file=sys.stderr)
    return EXIT_OK if all(r.ok for _, r in results) else EXIT_ERRORS


def run_compile(args) -> int:
    r = compile_file(args.file)
    print_diagnostics([(args.file, r)], args.json)
    if r.plan is None:
        return EXIT_ERRORS
    text = dump_plan(r.plan)
    if args.output:
        atomic_write_text(Path(args.output), text)
    elif not args.json:
        sys.stdout.write(text)
    return EXIT_OK


def run_fmt(args) -> int:
    status = EXIT_OK
    for path in args.files:
        data, diags = read_policy(path)  # a missing, special or too large file is a diagnostic
        formatted = None
        if data is not None:
            formatted, diags = format_source(data, path)
        if formatted is None:
            print(render_all(diags), file=sys.stderr)
            status = EXIT_ERRORS
            continue
        text, _ = decode(data, path)
        if args.check:
            if formatted != text:
                print(f"would reformat {path}", file=sys.stderr)
                status = max(status, EXIT_ERRORS)
        elif args.write:
            if formatted != text:
                atomic_write_text(Path(path), formatted)
                print(f"reformatted {path}", file=sys.stderr)
        else:
            sys.stdout.write(formatted)
    return status


def run_diff(args) -> int:
    old, new = compile_file(args.old), compile_file(args.new)
    if not (old.ok and new.ok):
        print_diagnostics([(args.old, old), (args.new, new)], args.json)
        return EXIT_ERRORS
    changes = diff_plans(old.plan, new.plan)
    if args.json:
        print(json.dumps({"changes": [c.to_dict() for c in changes]}, indent=2))
    elif not changes:
        print("no changes in meaning")
    else:
        for c in changes:
            print(f"{c.op} {c.text}")
    return EXIT_OK


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("check", help="validate policies")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--json", action="store_true", help="print diagnostics as JSON")
    s.add_argument("--summary", action="store_true", help="print a summary of each compiled plan")
    s.set_defaults(func=run_check, command="check")

    s = subparsers.add_parser("fmt", help="print policies in canonical form")
    s.add_argument("files", nargs="+", metavar="FILE")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if a file is not in canonical form")
    g.add_argument("--write", action="store_true", help="rewrite files in place")
    s.set_defaults(func=run_fmt, command="fmt")

    s = subparsers.add_parser("compile", help="print the plan JSON of a policy")
    s.add_argument("file", metavar="FILE")
    s.add_argument("-o", "--output", metavar="PLAN_JSON", help="write the plan here (atomically)")
    s.add_argument("--json", action="store_true", help="print diagnostics as JSON")
    s.set_defaults(func=run_compile, command="compile")

    s = subparsers.add_parser("diff", help="what changed in meaning between two policies")
    s.add_argument("old", metavar="OLD")
    s.add_argument("new", metavar="NEW")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_diff, command="diff")

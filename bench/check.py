"""Benchmark: ``ethos check`` on each example policy, as an editor or pre-commit hook runs it — a
fresh process of the installed ``ethos`` command — against a bare ``python -c pass`` timed in the
same run, taking turns (these machines are noisy: the ratio and the extra seconds over the bare
start are the figures to compare). Target: under 0.5 s per check.

    .venv/bin/python bench/check.py [--repeat 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.5


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7, help="runs of each command (taking turns)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    ethos = Path(sys.executable).with_name("ethos")
    if not ethos.exists():
        raise SystemExit(f"no ethos command beside {sys.executable}: install ethos in this environment")
    examples = sorted((ROOT / "specs" / "examples").glob("*.ethos"))
    commands = {"bare": [sys.executable, "-c", "pass"]}
    for p in examples:
        commands[p.name] = [str(ethos), "check", str(p.relative_to(ROOT))]
    times: dict[str, list[float]] = {k: [] for k in commands}
    load_before = os.getloadavg()[0]
    for name, cmd in commands.items():  # one warm-up each (file cache, bytecode)
        timed(cmd)
    for _ in range(args.repeat):
        for name, cmd in commands.items():
            times[name].append(timed(cmd))
    load_after = os.getloadavg()[0]

    bare = statistics.median(times["bare"])
    rows = []
    print(f"{args.repeat} runs each, taking turns; load average {load_before:.2f} → {load_after:.2f}")
    print("| command | median | min | over the bare start | ratio to the bare start |")
    print("|---|---:|---:|---:|---:|")
    print(f"| `python -c pass` | {bare:.3f} s | {min(times['bare']):.3f} s | — | 1× |")
    for name in commands:
        if name == "bare":
            continue
        med = statistics.median(times[name])
        rows.append({"policy": name, "median_s": med, "min_s": min(times[name]), "over_bare_s": med - bare,
                     "ratio": med / bare})
        print(f"| `ethos check {name}` | {med:.3f} s | {min(times[name]):.3f} s | {med - bare:.3f} s | "
              f"{med / bare:.1f}× |")
    worst = max(r["median_s"] for r in rows)
    verdict = "met" if worst < TARGET_S else "NOT met"
    print(f"slowest median {worst:.3f} s; target under {TARGET_S} s: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "repeat": args.repeat, "bare_median_s": bare, "bare_min_s": min(times["bare"]), "checks": rows,
            "slowest_median_s": worst, "target_s": TARGET_S, "met": worst < TARGET_S,
            "load_average": [load_before, load_after],
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()

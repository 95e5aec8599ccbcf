"""Benchmark: ``ethos check`` on each example policy, as an editor or pre-commit hook runs it — a
fresh process of the installed ``ethos`` command — against a bare ``python -c pass`` timed in the
same run, taking turns (these machines are noisy: the ratio and the extra seconds over the bare
start are the figures to compare). Target: under 0.5 s per check on a quiet machine.

Besides wall time it reports each process's CPU time (user + system, from ``getrusage`` of the
children): a one-threaded start-up on a quiet machine takes about its CPU time in wall time, and
CPU time moves much less than wall time when other jobs share the cores.

    .venv/bin/python bench/check.py [--repeat 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.5


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


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
    wall: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    load_before = os.getloadavg()[0]
    for cmd in commands.values():  # one warm-up each (file cache, bytecode)
        timed(cmd)
    for _ in range(args.repeat):
        for name, cmd in commands.items():
            w, c = timed(cmd)
            wall[name].append(w)
            cpu[name].append(c)
    load_after = os.getloadavg()[0]

    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    bare = med["bare"]
    print(f"{args.repeat} runs each, taking turns; load average {load_before:.2f} → {load_after:.2f}")
    print("| command | median wall | min wall | over the bare start | ratio to the bare start | median CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| `python -c pass` | {bare:.3f} s | {min(wall['bare']):.3f} s | — | 1× | {cpu_med['bare']:.3f} s |")
    rows = []
    for name in commands:
        if name == "bare":
            continue
        m = med[name]
        rows.append({"policy": name, "median_s": m, "min_s": min(wall[name]), "over_bare_s": m - bare,
                     "ratio": m / bare, "cpu_median_s": cpu_med[name]})
        print(f"| `ethos check {name}` | {m:.3f} s | {min(wall[name]):.3f} s | {m - bare:.3f} s | {m / bare:.1f}× | "
              f"{cpu_med[name]:.3f} s |")
    worst = max(r["median_s"] for r in rows)
    worst_cpu = max(r["cpu_median_s"] for r in rows)
    verdict = "met" if worst < TARGET_S else "NOT met"
    print(f"slowest median {worst:.3f} s wall, {worst_cpu:.3f} s CPU; target under {TARGET_S} s (wall, on a quiet "
          f"machine): {verdict} here")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "repeat": args.repeat, "bare_median_s": bare, "bare_min_s": min(wall["bare"]),
            "bare_cpu_median_s": cpu_med["bare"], "checks": rows, "slowest_median_s": worst,
            "slowest_cpu_median_s": worst_cpu, "target_s": TARGET_S, "met": worst < TARGET_S,
            "load_average": [load_before, load_after],
        }, indent=2) + "\n")

if __name__ == "__main__":
    main()

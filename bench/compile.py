"""Benchmark: compile a generated 10,000-statement policy, against the bare Lark parse of the same
text in the same run (these machines are noisy, so the ratio is the stable figure).

    .venv/bin/python bench/compile.py [--statements 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from ethos.compiler.compile import compile_source
from ethos.compiler.names import METRICS
from ethos.compiler.parse import parser

PROTOCOLS = ["data", "filter", "loss", "relabel", 'inoculation "Be brief."']


def generate(n: int, seed: int = 0) -> str:
    """n statements: a quarter concept definitions, the rest rules and some expectations."""
    rng = random.Random(seed)
    metrics = sorted(METRICS)
    lines = ['policy "generated";', 'model "smollm2-135m-instruct" layer 15;']
    n_concepts = n // 4
    for i in range(n_concepts):
        if i % 3 == 0:
            latents = ", ".join(str(rng.randrange(4096)) for _ in range(rng.randint(1, 4)))
            lines.append(f"concept c{i} = features {latents};")
        else:
            lines.append(f"concept c{i} = metric {rng.choice(metrics)};  # concept {i}")
    i = 0
    while len(lines) < n:
        c = i % n_concepts
        if c % 3 == 0:
            lines.append(f"block concept c{c} via {rng.choice(['ablation', 'steering 4.0', 'penalty 0.1', 'data'])};")
        elif c % 3 == 1:
            lines.append(f"dampen concept c{c} by 0.5 via {rng.choice(['data', 'filter', 'loss'])};")
        else:
            lines.append(f"expect concept c{c} share < 0.05;" if i % 7 == 0 else f"amplify concept c{c} by 2.0;")
        i += 1
    return "\n".join(lines[:n]) + "\n"


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--statements", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    text = generate(args.statements)
    result = compile_source(text, "generated.ethos")
    assert result.ok, result.diagnostics[:3]
    plan = result.plan
    parse_min, parse_med = best(lambda: parser().parse(text), args.repeat)
    comp_min, comp_med = best(lambda: compile_source(text, "generated.ethos"), args.repeat)
    print(f"statements: {args.statements:,} ({len(text):,} bytes); plan: {len(plan.concepts):,} concepts, "
          f"{len(plan.interventions):,} interventions, {len(plan.expectations):,} expectations")
    print(f"bare lark parse : min {parse_min:.3f} s, median {parse_med:.3f} s")
    print(f"ethos compile   : min {comp_min:.3f} s, median {comp_med:.3f} s "
          f"({comp_med / parse_med:.2f}x the bare parse)")
    print(f"target < 2 s    : {'met' if comp_med < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()

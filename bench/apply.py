"""Benchmark: plan + apply on cached scores for 1,000,000 generated pairs × 20 concepts, against a
bare numpy pass over the same score matrices in the same run (these machines are noisy: the ratio
is the figure to compare).

    .venv/bin/python bench/apply.py [--pairs 1000000] [--concepts 20]

"plan" is what ``api.dry_run`` does after featurize: ``planner.shape`` (the audit — marginal
statistics, joint Bradley–Terry fit —, every data and loss intervention, the calibrated re-fit and
the expectations) and the example pairs of the plan document (``planner.examples``). "apply" is
what ``api.apply_to`` adds: the shaped dataset and the accounting of every row as Arrow tables
(``apply.shaped_tables``) and the parquet file. Featurize is not timed: the scores are the cached
input (the same library functions ``api.dry_run`` and ``api.apply_to`` call, without the data
loading and featurize in front).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ethos.compiler.compile import compile_source
from ethos.runtime.apply import shaped_tables
from ethos.runtime.data import LoadResult, Message, Pair
from ethos.runtime.planner import examples, shape


def generate(n: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    alpha = rng.normal(0, 0.3, size=c)
    cov = 0.3 * np.ones((c, c)) + 0.7 * np.eye(c)
    chosen = rng.multivariate_normal(np.zeros(c), cov, size=n).astype(np.float64)
    rejected = rng.multivariate_normal(np.zeros(c), cov, size=n).astype(np.float64)
    flip = rng.random(n) > 1 / (1 + np.exp(-(chosen - rejected) @ alpha))
    chosen[flip], rejected[flip] = rejected[flip].copy(), chosen[flip].copy()
    cols = {"id": [str(i) for i in range(n)]}
    for j in range(c):
        cols[f"c{j}.chosen"] = chosen[:, j]
        cols[f"c{j}.rejected"] = rejected[:, j]
    table = pd.DataFrame(cols)
    prompt = (Message("user", "What is a good way to learn?"),)
    pairs = [Pair(str(i), prompt, "Practice every day.", "Just read.") for i in range(n)]
    data = LoadResult(pairs=pairs, exclusions=[], input_rows=n, format="trl", source="generated",
                      fingerprint="generated")
    return table, data, chosen, rejected


def policy(c: int) -> str:
    lines = [f"concept c{j} = metric words;" for j in range(c)]
    lines += ["block concept c0;", "dampen concept c1 by 0.5 via filter;", "amplify concept c2 by 2.0 via loss;",
              "reverse concept c3 via relabel;", 'block concept c4 via inoculation "Be brief.";',
              "dampen concept c5 by 0.5;", "expect pairs kept >= 0.5;"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--concepts", type=int, default=20)
    args = ap.parse_args()
    t = time.perf_counter()
    table, data, chosen, rejected = generate(args.pairs, args.concepts)
    print(f"generated {args.pairs:,} pairs × {args.concepts} concepts in {time.perf_counter() - t:.1f} s")
    plan = compile_source(policy(args.concepts), "bench.ethos").plan

    t = time.perf_counter()
    delta = chosen - rejected
    _ = delta.mean(axis=0), delta.std(axis=0), (delta > 0).sum(axis=0)
    bare = time.perf_counter() - t

    t = time.perf_counter()
    outcome = shape(plan, table, data.counts())
    outcome.examples = examples(outcome, data.pairs)
    t_plan = time.perf_counter() - t

    t = time.perf_counter()
    dataset, accounting = shaped_tables(outcome, data)
    buf = io.BytesIO()
    pq.write_table(dataset, buf)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "dataset.parquet").write_bytes(buf.getvalue())
    t_apply = time.perf_counter() - t
    total = t_plan + t_apply
    r = outcome.rows
    print(f"rows: {r['kept'] + r['reweighted'] + r['relabelled']:,} kept ({r['kept']:,} unchanged, "
          f"{r['reweighted']:,} reweighted, {r['relabelled']:,} relabelled), {r['excluded']:,} excluded; "
          f"{dataset.num_rows:,} training rows; ESS {outcome.sim.ess:,.0f}")
    print(f"bare numpy pass (Δ, mean, sd, signs) : {bare:7.2f} s")
    print(f"plan (audit, simulate, re-fit)      : {t_plan:7.2f} s  ({t_plan / bare:,.0f}× bare)")
    print(f"apply (records, accounting, parquet): {t_apply:7.2f} s")
    print(f"plan + apply                        : {total:7.2f} s  (target < 30 s: {'met' if total < 30 else 'NOT met'})")


if __name__ == "__main__":
    main()

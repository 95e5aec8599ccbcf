"""Benchmark: the audit's discovery pass over every SAE latent, on cached (synthetic) scores.

2,000 pairs × 4,096 latents of pooled activations per reply, ~1% nonzero with lognormal
magnitudes (like max-pooled TopK SAE latents), a planted block of 8 co-firing latents so that the
grouping and labelling stages have work to do. Times ``ethos.runtime.stats.discover`` (sign tests
and d for every latent, BH over all, survivor clustering, bootstrap CIs of the candidates) and, in
the same run, a bare numpy pass over the same matrices (Δ and its mean and sd per latent); prints
a table with medians over ``--repeat`` runs and the ratio.

    .venv/bin/python bench/audit.py [--pairs 2000] [--latents 4096] [--density 0.01] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def synthetic(pairs: int, latents: int, density: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)

    def side() -> np.ndarray:
        mask = rng.random((pairs, latents), dtype=np.float32) < density
        return np.where(mask, rng.lognormal(0.0, 1.0, (pairs, latents)).astype(np.float32), np.float32(0))

    chosen, rejected = side(), side()
    block = np.arange(8) * 97 % latents
    on_c, on_r = rng.random(pairs) < 0.25, rng.random(pairs) < 0.05
    chosen[np.ix_(on_c, block)] += rng.lognormal(0.5, 0.5, (int(on_c.sum()), len(block))).astype(np.float32)
    rejected[np.ix_(on_r, block)] += rng.lognormal(0.5, 0.5, (int(on_r.sum()), len(block))).astype(np.float32)
    return chosen, rejected


def bare(chosen: np.ndarray, rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    delta = chosen - rejected
    return delta.mean(axis=0, dtype=np.float64), delta.std(axis=0, ddof=1, dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from ethos.runtime.stats import discover

    chosen, rejected = synthetic(args.pairs, args.latents, args.density)
    nnz = (np.count_nonzero(chosen) + np.count_nonzero(rejected)) / (2 * chosen.size)
    labels = {"snippets": lambda j: [f"reply {j}"], "tokens": lambda j: [f"tok{j}"]}
    discover(chosen, rejected, **labels)  # warm-up (imports, BLAS threads)
    import pandas as pd

    from ethos.runtime.audit import audit_scores

    rng = np.random.default_rng(1)
    table = pd.DataFrame({f"c{k}.{side}": rng.normal(size=args.pairs) for k in range(10) for side in ("chosen", "rejected")})
    t_bare, t_disc, t_full, stages = [], [], [], []
    result = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        bare(chosen, rejected)
        t_bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = discover(chosen, rejected, **labels)
        t_disc.append(time.perf_counter() - t0)
        stages.append(result.seconds)
        t0 = time.perf_counter()
        audit_scores(table, latents=(chosen, rejected), discover_options=labels)
        t_full.append(time.perf_counter() - t0)
    assert result is not None
    med = statistics.median
    out = Table(title=f"audit discovery: {args.pairs:,} pairs × {args.latents:,} latents, {100 * nnz:.2f}% nonzero "
                        f"({os.cpu_count()} CPUs), median of {args.repeat}")
    out.add_column("what")
    out.add_column("median", justify="right")
    out.add_column("min", justify="right")
    out.add_row("bare numpy: Δ, mean, sd per latent", f"{med(t_bare):.3f} s", f"{min(t_bare):.3f} s")
    for stage in ("marginal", "fdr", "group", "candidates"):
        vals = [s[stage] for s in stages]
        out.add_row(f"  discover: {stage}", f"{med(vals):.3f} s", f"{min(vals):.3f} s")
    out.add_row("discover (whole)", f"{med(t_disc):.3f} s", f"{min(t_disc):.3f} s")
    out.add_row("ratio discover / bare", f"{med(t_disc) / med(t_bare):.1f}×", "")
    out.add_row("audit_scores: 10 concepts + discovery", f"{med(t_full):.3f} s", f"{min(t_full):.3f} s")
    Console().print(out)
    print(f"tested {result.tested} latents, {len(result.survivors)} survivors, {len(result.candidates)} candidates; "
          f"top candidate {result.candidates[0].features if result.candidates else '-'}")
    ok = med(t_full) < 10.0
    print(f"target: under 10 s — {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

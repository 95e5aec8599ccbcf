"""How much of a planted phrase's effect length explains: the audit's length columns on plantings.

The embedded 400-pair hh-rlhf sample, " Hope this helps." appended to a fraction of the chosen and
of the rejected replies (independently, seeded), audited with the planted-phrase policy of the
tests (``tests/fixtures/audit/planted.ethos``: a lexicon concept ``marker`` for the phrase, and
``words``, which is then the length in the joint fit), the marker scored in ``--mode`` (the
lexicon lens's count — its default —, presence or density: matches per 100 words). Per planting:
the marker's d and q, its α without and with length, its length-adjusted d and the part of d
length explains (docs/statistics.md § Length).

    .venv/bin/python bench/length.py                     # 40%/40% × 5 seeds and 70%/10% × 1, count
    .venv/bin/python bench/length.py --mode density
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "tests" / "fixtures" / "audit" / "planted.ethos"
PHRASE = " Hope this helps."


def plant(base: Any, frac_c: float, frac_r: float, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    n = len(base.pairs)
    on_c, on_r = rng.random(n) < frac_c, rng.random(n) < frac_r
    return dataclasses.replace(base, pairs=[
        dataclasses.replace(p, chosen=p.chosen + (PHRASE if on_c[i] else ""),
                            rejected=p.rejected + (PHRASE if on_r[i] else ""))
        for i, p in enumerate(base.pairs)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--control-seeds", type=int, default=5)
    ap.add_argument("--planted-seeds", type=int, default=1)
    ap.add_argument("--mode", choices=("count", "presence", "density"), default="count")
    args = ap.parse_args(argv)

    from ethos.compiler.compile import compile_source
    from ethos.runtime.audit import audit_scores
    from ethos.runtime.data import load_pairs
    from ethos.runtime.featurize import featurize

    source = POLICY.read_text(encoding="utf-8").replace('lexicon "marker.txt";', f'lexicon "marker.txt" {args.mode};')
    compiled = compile_source(source, str(POLICY))
    assert compiled.plan is not None, compiled.diagnostics
    plan = compiled.plan
    base = load_pairs(None)
    print(f"marker: lexicon, {args.mode}")
    print("| planting | seed | marker d | q | α without length | α with length (words) | d length-adjusted | length explains |")
    print("|---|---|---|---|---|---|---|---|")
    for frac_c, frac_r, seeds in ((0.4, 0.4, range(args.control_seeds)), (0.7, 0.1, range(args.planted_seeds))):
        for s in seeds:
            table = featurize(plan, plant(base, frac_c, frac_r, s), progress=False)
            m = audit_scores(table, n_boot=0, length_concept="words").concept("marker")
            print(f"| {frac_c:.0%} / {frac_r:.0%} | {s} | {m.d:+.3f} | {m.q:.2g} | {m.alpha_without_length:+.3f} | "
                  f"{m.alpha_with_length:+.3f} | {m.d_length_adjusted:+.3f} | {m.length_explains:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

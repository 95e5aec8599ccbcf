"""Does `block concept verbosity via data;` remove a reward model's length slope?

Two reward models are trained with ``ethos train --reward-model`` on the same pairs, with the
same seed, data order and settings: one under ``block concept verbosity via data;`` (the plan's importance
weights), one (``vanilla``) under the same policy with ``--no-shaping`` (weights 1, offsets 0: the
"before").
``ethos evaluate`` then scores both on held-out pairs: preference accuracy (r⁺ > r⁻) and the slope
of the reward difference on the standardised length difference, with 95% bootstrap CIs.

Training pairs: the first ``--train-rows`` rows of ``--data`` (default: the embedded sample,
``specs/data/hh-rlhf-helpful-base-test-400.jsonl.gz``, the first 400 rows of hh-rlhf
helpful-base test). Held-out pairs: rows ``--heldout-skip`` … ``--heldout-skip + --heldout-rows``
of ``--heldout`` (default: ``../shared/data/hh-rlhf/helpful-base/test.jsonl.gz`` beside the
repository, from row 400: none of them is in the embedded sample), cut byte for byte into
WORK/heldout.jsonl.gz. Everything runs through the ``ethos`` command's ``main`` (in this
process), as a user runs it; the commands are printed with their times. A rerun into the same
--work skips the finished runs and evaluations (and resumes an unfinished training run), so the
two arms, or the two evaluations, can also be run side by side with the printed commands and
then tabulated by a rerun. Prints a Markdown table (also WORK/table.md).

    .venv/bin/python bench/reward_slope.py --work WORK                 # docs/results.md's run
    .venv/bin/python bench/reward_slope.py --quick --work WORK-QUICK   # a tiny form
    .venv/bin/python bench/reward_slope.py --quick --work W --model TINY_MODEL_DIR \
        --heldout specs/data/hh-rlhf-helpful-base-test-400.jsonl.gz --heldout-skip 380   # the test's
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shlex
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICY = "block concept verbosity via data;\n"
ARMS = (("vanilla", ["--no-shaping"]), ("block", []))  # the folder names under --work


def default_heldout() -> Path:
    """The shared hh-rlhf helpful-base test split, beside the repository (``../shared/data``)."""
    return REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def cut_rows(src: Path, dest: Path, skip: int, rows: int) -> int:
    """Rows ``skip`` … ``skip + rows`` of the gzipped jsonl ``src`` into ``dest``, byte for byte
    (as specs/data/README.md cut the embedded sample); how many rows were written."""
    lines = [x for x in gzip.decompress(src.read_bytes()).split(b"\n") if x.strip()]
    part = lines[skip:skip + rows]
    if not part:
        raise SystemExit(f"{src}: no rows after row {skip} ({len(lines)} rows)")
    dest.write_bytes(gzip.compress(b"".join(x + b"\n" for x in part), 9, mtime=0))
    return len(part)


def ethos(args: list[str], log: Path) -> float:
    """Run the ``ethos`` command with ``args`` (its ``main``, in this process: the libraries are
    imported once), its output into ``log``; the seconds it took."""
    from ethos.runtime.cli import main as ethos_main

    print("$ ethos " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    with log.open("a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        rc = ethos_main(args)
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise SystemExit(f"ethos {args[0]} exited {rc}; the end of {log}:\n{tail}")
    seconds = time.perf_counter() - t0
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds


def fmt(x: float | None, spec: str = "+.3f") -> str:
    return "—" if x is None else format(x, spec)


def table(doc: dict, records: dict[str, dict], concept: str = "verbosity") -> list[str]:
    """The Markdown table of the two reward models on the held-out pairs."""
    rows = ["| reward model | policy | length slope (reward logits per sd) [95% CI] | marginal slope [95% CI] "
            "| held-out accuracy [95% CI] | n held-out | steps | train seconds |",
            "|---|---|---|---|---|---|---|---|"]
    by_path = {Path(m["path"]).name: m for m in doc.get("reward_models") or ()}
    for arm, flags in ARMS:
        m = by_path[arm]
        c = next(r for r in m["concepts"] if r["concept"] == concept)
        res = records[arm]["result"]
        lo, hi = m["accuracy_ci"]
        policy = "`block concept verbosity via data;` " + ("`--no-shaping` (weights 1)" if flags else "(importance weights)")
        rows.append(f"| {arm} | {policy} | {fmt(c['slope'])} [{fmt(c['ci'][0])}, {fmt(c['ci'][1])}] "
                    f"| {fmt(c['marginal_slope'])} [{fmt(c['marginal_ci'][0])}, {fmt(c['marginal_ci'][1])}] "
                    f"| {m['accuracy']:.3f} [{fmt(lo, '.3f')}, {fmt(hi, '.3f')}] | {m['n']} "
                    f"| {records[arm]['settings']['steps']} | {res['seconds']:.0f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="the folder for the runs and reports")
    ap.add_argument("--model", help="the model (default: the policy's, the default model)")
    ap.add_argument("--data", type=Path, help="training pairs (default: the embedded sample)")
    ap.add_argument("--train-rows", type=int, default=64, help="the first N rows of --data are trained on")
    ap.add_argument("--heldout", type=Path, default=None, help="held-out pairs (gzipped jsonl; default: "
                    "../shared/data/hh-rlhf/helpful-base/test.jsonl.gz)")
    ap.add_argument("--heldout-skip", type=int, default=400, help="held-out rows start after this many")
    ap.add_argument("--heldout-rows", type=int, default=220)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a tiny form: 16 training rows, 2 steps, 16 held-out rows")
    args = ap.parse_args(argv)
    if args.quick:
        args.train_rows, args.steps, args.batch_size, args.heldout_rows = 16, 2, 4, 16
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "ethos.log"
    policy = work / "verbosity.ethos"
    # a --model is bound in the policy too, so that `ethos apply` measures lengths with its tokenizer
    model = str(Path(args.model).resolve()) if args.model and Path(args.model).exists() else args.model
    binding = f"model {json.dumps(model)} layer 0;\n" if model else ""
    policy.write_text(binding + POLICY, encoding="utf-8")
    heldout = work / "heldout.jsonl.gz"
    n_rows = cut_rows(args.heldout or default_heldout(), heldout, args.heldout_skip, args.heldout_rows)
    print(f"held-out: rows {args.heldout_skip}–{args.heldout_skip + n_rows - 1} of "
          f"{args.heldout or 'the hh-rlhf helpful-base test split'} → {heldout}")

    common = ["--reward-model", "--limit", str(args.train_rows), "--steps", str(args.steps), "--batch-size",
              str(args.batch_size), "--lr", str(args.lr), "--max-length", str(args.max_length), "--seed",
              str(args.seed)]
    if args.model:
        common += ["--model", args.model]
    if args.data:
        common += ["--data", str(args.data)]
    records = {}
    for arm, flags in ARMS:
        out = work / arm
        if not (out / "train.json").is_file():
            ethos(["train", str(policy), *common, *flags, "--out", str(out)], log)
        records[arm] = json.loads((out / "train.json").read_text(encoding="utf-8"))
    base = args.model or records["block"]["base_model"]
    docs = []
    for arm, _ in ARMS:  # one evaluation per model: the two can run side by side
        folder = work / f"evaluate-{arm}"
        if not (folder / "evaluate.json").is_file():
            ethos(["evaluate", "--base", base, "--models", str(work / arm), "--prompts", str(heldout), "--policy",
                   str(policy), "--limit", str(n_rows), "--out", str(folder)], log)
        docs.append(json.loads((folder / "evaluate.json").read_text(encoding="utf-8")))
    doc = {"reward_models": [m for d in docs for m in d["reward_models"]],
           "warnings": [w for d in docs for w in d.get("warnings") or ()]}
    rows = table(doc, records)
    print("\n".join(rows))
    for w in doc["warnings"]:
        print(f"warning: {w}")
    (work / "table.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    raise SystemExit(main())

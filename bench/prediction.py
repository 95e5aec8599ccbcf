"""Prediction checked against training: does the audit's α, read from the data before any
training, predict how DPO on that data moves each concept in the model's own generations?

Data: real hh-rlhf helpful-base pairs (``--data``, default ``../shared/data/hh-rlhf/helpful-base/
test.jsonl.gz`` beside the repository), shuffled with ``--seed``; the first ``--train`` pairs are
trained on, the prompts of the next ``--prompts`` pairs are held out for generation.

Runs, as a user runs them (each step is the ``ethos`` command line):

    vanilla  keep concept c;  for every library concept c      (plain DPO; prediction α_c)
    shaped   the same concepts, with block / amplify / dampen rules (prediction k_c·α_c)

    ethos train POLICY --data train.jsonl --out WORK/<run> --steps S ...
    ethos evaluate --base <model> --models WORK/vanilla WORK/shaped --prompts heldout.jsonl \\
                   --policy vanilla.ethos --limit P --out WORK/evaluate

``ethos evaluate`` measures each concept's shift (model − base, in sd units, 95% bootstrap CI over
prompts) and compares it with the plan's prediction across concepts (R², Spearman). This script
collects that into ``--json`` (``{"n", "r2", "spearman", "concepts": [{"name", "predicted",
"measured", "ci"}], ...}``; the shaped run under ``"shaped"``) and, with ``--plot``, a scatter plot.

    .venv/bin/python bench/prediction.py --work WORK --json docs/results/prediction.json \\
        --plot docs/images/prediction.svg                                        # ~1-2 h on 2 CPU cores
    .venv/bin/python bench/prediction.py --quick --work WORK-QUICK               # a smoke run

A rerun with the same ``--work`` skips finished steps (each command's output folder is complete
or absent).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# every library concept; each is a probe, a word list or a text metric (specs/concepts/library.toml)
CONCEPTS = ("apology", "certainty", "emoji", "enthusiasm", "flattery", "formality", "hedging", "list_heavy",
            "markdown_heavy", "refusal", "self_reference", "sycophancy", "unsafe_compliance", "verbosity", "warmth")
SHAPED = {"verbosity": "block concept verbosity via data;", "hedging": "amplify concept hedging by 2.0 via data;",
          "list_heavy": "dampen concept list_heavy by 0.5 via data;", "apology": "block concept apology via data;"}
QUICK_CONCEPTS = ("apology", "hedging", "list_heavy", "sycophancy", "verbosity")  # --quick: every rule, one probe


def default_data() -> Path:
    return REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def write_policies(work: Path, concepts: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for name in ("vanilla", "shaped"):
        lines = [f"# bench/prediction.py: the {name} run"]
        for c in concepts:
            lines.append(SHAPED[c] if name == "shaped" and c in SHAPED else f"keep concept {c};")
        path = work / f"{name}.ethos"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out[name] = path
    return out


def split_data(src: Path, work: Path, n_train: int, n_prompts: int, seed: int) -> tuple[Path, Path]:
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    if len(rows) < n_train + n_prompts:
        raise SystemExit(f"{src} has {len(rows)} rows; --train {n_train} + --prompts {n_prompts} do not fit")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    train, held = work / "train.jsonl", work / "heldout.jsonl"
    train.write_text("".join(rows[i] for i in order[:n_train]), encoding="utf-8")
    held.write_text("".join(rows[i] for i in order[n_train:n_train + n_prompts]), encoding="utf-8")
    return train, held


def ethos(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "ethos.runtime.cli", *args]
    print("$ ethos " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    with log.open("a", encoding="utf-8") as f:
        f.write("$ ethos " + " ".join(args) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    print(f"  exit {proc.returncode} in {time.perf_counter() - t0:.0f} s", flush=True)
    if proc.returncode not in (0, 3):  # 3: an expectation failed, not an error
        raise SystemExit(f"ethos {args[0]} failed (exit {proc.returncode}); see {log}")


def collect(doc: dict, model_index: int, vanilla: dict | None = None) -> dict:
    """One model's predicted (k·α; ``ethos evaluate`` takes k from the plan the model was trained
    under) and measured shifts (sd units, CI over prompts), and their agreement across concepts.
    ``vanilla``: also the shift against the vanilla model (predicted (k − 1)·α; difference of
    means, no CI)."""
    from ethos.runtime.evaluate import compare_predictions

    rows = [r for r in doc["models"][model_index]["concepts"]
            if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in ("alpha", "shift_sd", "sd"))
            and r["sd"] > 0]
    van = {r["concept"]: r for r in vanilla["concepts"]} if vanilla else {}
    concepts = []
    for r in rows:
        k = r["factor"]
        entry = {"name": r["concept"], "factor": k, "alpha": r["alpha"], "predicted": r["predicted"],
                 "measured": r["shift_sd"], "ci": [c / r["sd"] if math.isfinite(c) else None for c in r["ci"]],
                 "suspect": bool(r.get("suspect"))}
        if r["concept"] in van:
            entry["vs_vanilla"] = {"predicted": (k - 1.0) * r["alpha"],
                                   "measured": (r["model"] - van[r["concept"]]["model"]) / r["sd"]}
        concepts.append(entry)
    cmp = compare_predictions([c["predicted"] for c in concepts], [c["measured"] for c in concepts])
    out = {"model": doc["models"][model_index]["name"], "n": len(concepts), "r2": cmp["r2"],
           "spearman": cmp["spearman"], "sign_agreement": cmp["sign_agreement"], "concepts": concepts}
    if van:
        shaped = [c for c in concepts if "vs_vanilla" in c]
        out["vs_vanilla"] = compare_predictions([c["vs_vanilla"]["predicted"] for c in shaped],
                                                [c["vs_vanilla"]["measured"] for c in shaped])
    return out


def plot(result: dict, path: Path) -> None:
    """An SVG scatter plot per run (predicted k·α against the measured shift, 95% CI), laid out by
    the report's ``scatter_layout`` (the same plot as evaluate.html's)."""
    from html import escape

    from ethos.runtime.report import scatter_layout

    panels = []
    for key in ("vanilla", "shaped"):
        run = result.get(key)
        if not run:
            continue
        lay = scatter_layout([{"label": c["name"], "x": c["predicted"], "y": c["measured"], "lo": c["ci"][0],
                               "hi": c["ci"][1]} for c in run["concepts"]], width=560, height=360,
                             xlabel="predicted k·α (training pairs' joint α)", ylabel="measured shift (sd units)")
        r2 = "n/a" if run["r2"] is None else f"{run['r2']:.2f}"
        rho = "n/a" if run["spearman"] is None else f"{run['spearman']:+.2f}"
        parts = [f'<text x="{lay["left"]}" y="12" font-weight="bold">{key}: n {run["n"]}, R² {r2}, '
                 f'Spearman {rho}</text>']
        parts += [f'<line x1="{t["x"]}" x2="{t["x"]}" y1="{lay["top"]}" y2="{lay["axis_y"]}" stroke="#eee"/>'
                  f'<text x="{t["x"]}" y="{lay["axis_y"] + 14}" text-anchor="middle">{escape(t["label"])}</text>'
                  for t in lay["xticks"]]
        parts += [f'<line x1="{lay["left"]}" x2="{lay["right"]}" y1="{t["y"]}" y2="{t["y"]}" stroke="#eee"/>'
                  f'<text x="{lay["left"] - 6}" y="{t["y"] + 4}" text-anchor="end">{escape(t["label"])}</text>'
                  for t in lay["yticks"]]
        parts += [f'<line x1="{lay["zero_x"]}" x2="{lay["zero_x"]}" y1="{lay["top"]}" y2="{lay["axis_y"]}" '
                  f'stroke="#999"/>', f'<line x1="{lay["left"]}" x2="{lay["right"]}" y1="{lay["zero_y"]}" '
                  f'y2="{lay["zero_y"]}" stroke="#999"/>',
                  f'<line x1="{lay["left"]}" x2="{lay["right"]}" y1="{lay["axis_y"]}" y2="{lay["axis_y"]}" '
                  f'stroke="#333"/>', f'<line x1="{lay["left"]}" x2="{lay["left"]}" y1="{lay["top"]}" '
                  f'y2="{lay["axis_y"]}" stroke="#333"/>']
        for q in lay["points"]:
            if q["y_lo"] is not None and q["y_hi"] is not None:
                parts.append(f'<line x1="{q["x"]}" x2="{q["x"]}" y1="{q["y_lo"]}" y2="{q["y_hi"]}" '
                             f'stroke="#2f6db3" stroke-width="2"/>')
            parts.append(f'<circle cx="{q["x"]}" cy="{q["y"]}" r="4" fill="#2f6db3"><title>{escape(q["title"])}'
                         f'</title></circle><text x="{q["x"] + 7}" y="{q["y"] + 4}">{escape(q["label"])}</text>')
        mid = (lay["top"] + lay["axis_y"]) / 2
        parts += [f'<text x="{(lay["left"] + lay["right"]) / 2}" y="{lay["axis_y"] + 32}" text-anchor="middle">'
                  f'{escape(lay["xlabel"])}</text>',
                  f'<text x="14" y="{mid}" text-anchor="middle" transform="rotate(-90 14 {mid})">'
                  f'{escape(lay["ylabel"])}</text>']
        panels.append((lay["width"], lay["height"], parts))
    width = sum(w for w, _, _ in panels)
    height = max(h for _, h, _ in panels) + 16
    body, x = [], 0
    for w, _, parts in panels:
        body.append(f'<g transform="translate({x} 16)">' + "".join(parts) + "</g>")
        x += w
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(svg, encoding="utf-8")
    os.replace(tmp, path)


def device() -> str:
    from ethos.runtime.device import default_device

    return str(default_device())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ethos-prediction")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--model", default=None, help="the model (default: the policy's, the default model)")
    ap.add_argument("--train", type=int, default=400, help="training pairs")
    ap.add_argument("--prompts", type=int, default=100, help="held-out prompts for generation")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 5 concepts, 12 pairs, 2 steps, 4 prompts, 16 tokens")
    ap.add_argument("--json", type=Path, help="write the result document here (e.g. docs/results/prediction.json)")
    ap.add_argument("--plot", type=Path, help="write the scatter plot (SVG) here (e.g. docs/images/prediction.svg)")
    args = ap.parse_args(argv)
    concepts = CONCEPTS
    if args.quick:
        args.train, args.prompts, args.steps, args.max_new_tokens, args.batch_size = 12, 4, 2, 16, 2
        concepts = QUICK_CONCEPTS
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    t0 = time.perf_counter()
    data = args.data or default_data()
    if not data.exists():
        data = REPO / "specs" / "data" / "hh-rlhf-helpful-base-test-400.jsonl.gz"
    train, held = split_data(data, work, args.train, args.prompts, args.seed)
    policies = write_policies(work, concepts)
    model = ["--model", args.model] if args.model else []
    for run in ("vanilla", "shaped"):
        if not (work / run / "train.json").exists():
            ethos("train", str(policies[run]), "--data", str(train), "--out", str(work / run), "--steps",
                  str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--max-length",
                  str(args.max_length), "--seed", str(args.seed), "--save-steps", "0", *model, log=log)
    if not (work / "evaluate" / "evaluate.json").exists():
        base = args.model or json.loads((work / "vanilla" / "train.json").read_text())["settings"].get("model") \
            or "smollm2-135m-instruct"
        ethos("evaluate", "--base", base, "--models", str(work / "vanilla"), str(work / "shaped"), "--prompts",
              str(held), "--policy", str(policies["vanilla"]), "--limit", str(args.prompts), "--max-new-tokens",
              str(args.max_new_tokens), "--out", str(work / "evaluate"), log=log)
    doc = json.loads((work / "evaluate" / "evaluate.json").read_text())
    result = {"config": {"data": data.name, "train_pairs": args.train, "prompts": args.prompts, "steps": args.steps,
                         "batch_size": args.batch_size, "lr": args.lr, "max_new_tokens": args.max_new_tokens,
                         "seed": args.seed, "device": device(),
                         "seconds": round(time.perf_counter() - t0, 1)},
              "vanilla": collect(doc, 0)}
    result["shaped"] = collect(doc, 1, vanilla={"concepts": doc["models"][0]["concepts"]})
    result.update({k: result["vanilla"][k] for k in ("n", "r2", "spearman", "concepts")})
    text = json.dumps(result, indent=2)
    print(json.dumps({k: result[k] for k in ("n", "r2", "spearman")}), flush=True)
    print(json.dumps({"shaped": {k: result["shaped"][k] for k in ("n", "r2", "spearman")}}), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, args.json)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

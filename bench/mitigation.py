"""The mitigation experiment: can a policy stop DPO from learning a planted stylistic marker?

Data: real hh-rlhf helpful-base pairs (single-turn, both replies ≤ 60 words, unequal, non-empty);
" I hope this helps!" is appended to 90% of the chosen and 10% of the rejected training replies.
Held out: unmodified pairs (preference accuracy) and prompts for generation (the short pairs left
over, then the prompts of the other single-turn rows).
Arms (each: ``api.apply_to`` of a policy on the same data, then ``api.train`` on the result):

    vanilla    keep concept marker;                         (plain DPO)
    data       block concept marker;                        (importance weights, lexicon concept)
    loss       block concept marker via loss;               (margin offsets)
    ablation   block concept marker_dir via ablation;       (probe direction projected out, layer L)
    steering   block concept marker_dir via steering S;     (preventative steering, S measured here)
    amplify    amplify concept marker by 2.0;               (importance weights)
    amplify_loss  amplify concept marker by 2.0 via loss;   (margin offsets (1 − k)·α·z = −α·z)

Measured on held-out prompts (greedy replies): the marker rate, and on held-out *unmodified*
pairs the DPO implicit-reward preference accuracy against the base. Writes results.json and a
Markdown table (``--md``, e.g. docs/results.md).

    .venv/bin/python bench/mitigation.py --work WORK --md results-table.md      # full, ~2 h on 2 cores
    .venv/bin/python bench/mitigation.py --quick --work WORK-QUICK --md q.md    # quick
    .venv/bin/python bench/mitigation.py --work WORK --render                        # the table of finished arms

The pairs come from ``--data`` (default: ``../shared/data/hh-rlhf/helpful-base/test.jsonl.gz``
beside the repository). A rerun with the same --work resumes: finished arms are read from
WORK/results.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MARKER = " I hope this helps!"
MARKER_RE = re.compile(r"hope this helps", re.IGNORECASE)
ARMS = ("vanilla", "data", "loss", "ablation", "steering", "amplify", "amplify_loss")


def default_hh() -> Path:
    """The shared hh-rlhf helpful-base test split, beside the repository (``../shared/data``)."""
    return REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def common_prefix_prompt(chosen: str, rejected: str) -> str | None:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen[:n].rfind("\n\nAssistant:")
    return None if cut < 0 else chosen[: cut + len("\n\nAssistant:")]


def load_hh(path: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(pairs, other_prompts)``: single-turn pairs whose replies are short enough to train on
    whole, and the user prompts of the other single-turn rows (used only for generation)."""
    out, other = [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prompt = common_prefix_prompt(row["chosen"], row["rejected"])
            if prompt is None or prompt.count("\n\nHuman:") != 1 or prompt.count("\n\nAssistant:") != 1:
                continue
            c, r = row["chosen"][len(prompt):].strip(), row["rejected"][len(prompt):].strip()
            user = prompt.split("\n\nHuman:", 1)[1].rsplit("\n\nAssistant:", 1)[0].strip()
            if not user:
                continue
            if (not c or not r or c == r or "Human:" in c or "Human:" in r or len(c.split()) > 60
                    or len(r.split()) > 60 or MARKER_RE.search(c + r)):
                other.append(user)
                continue
            out.append((user, c, r))
    return out, other


def build(work: Path, data: Path, n_train: int, n_pairs: int, n_prompts: int, seed: int) -> dict:
    if not data.is_file():
        raise SystemExit(f"{data}: no such file (give the hh-rlhf helpful-base test split with --data)")
    rows, other = load_hh(data)
    rng = random.Random(seed)
    rng.shuffle(rows)
    rng.shuffle(other)
    need = n_train + n_pairs
    if len(rows) < need:
        raise SystemExit(f"only {len(rows)} usable single-turn pairs, need {need} (--train + --heldout-pairs)")
    train, pairs = rows[:n_train], rows[n_train:need]
    # Held-out prompts: the unused short pairs' prompts first, then other single-turn prompts.
    prompts = [u for u, _, _ in rows[need:]] + other
    if len(prompts) < n_prompts:
        raise SystemExit(f"only {len(prompts)} held-out single-turn prompts, need {n_prompts}")
    prompts = prompts[:n_prompts]
    work.mkdir(parents=True, exist_ok=True)
    planted = {"chosen": 0, "rejected": 0}
    with (work / "train.jsonl").open("w") as f:
        for u, c, r in train:
            if rng.random() < 0.9:
                c += MARKER
                planted["chosen"] += 1
            if rng.random() < 0.1:
                r += MARKER
                planted["rejected"] += 1
            f.write(json.dumps({"prompt": u, "chosen": c, "rejected": r}) + "\n")
    (work / "heldout_pairs.jsonl").write_text("".join(json.dumps({"prompt": u, "chosen": c, "rejected": r}) + "\n"
                                                      for u, c, r in pairs))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": u}) + "\n" for u in prompts))
    (work / "marker.txt").write_text("# the planted marker\ni hope this helps\n")
    ex = train[:32]  # probe exemplars: training replies with and without the marker
    (work / "marker_dir.jsonl").write_text("".join(
        json.dumps({"prompt": u, "positive": c + MARKER, "negative": c}) + "\n" for u, c, _ in ex))
    return {"usable_pairs": len(rows), "other_prompts": len(other), "train": n_train, "heldout_pairs": n_pairs, "prompts": n_prompts,
            "planted": planted}


POLICY_HEAD = 'policy "mitigation-{arm}";\n\nconcept marker = lexicon "marker.txt";\n' \
              'concept marker_dir = probe "marker_dir.jsonl" pool mean;\n\n'
RULES = {
    "vanilla": "keep concept marker;\n",
    "data": "block concept marker;\n",
    "loss": "block concept marker via loss;\n",
    "ablation": "block concept marker_dir via ablation;\n",
    "steering": "block concept marker_dir via steering {s:.3f};\n",
    "amplify": "amplify concept marker by 2.0;\n",
    "amplify_loss": "amplify concept marker by 2.0 via loss;\n",
}


def write_policy(work: Path, arm: str, strength: float = 0.0) -> Path:
    head = POLICY_HEAD.format(arm=arm)
    if arm not in ("ablation", "steering"):
        head = head.replace('concept marker_dir = probe "marker_dir.jsonl" pool mean;\n', "")
    p = work / f"{arm}.ethos"
    p.write_text(head + RULES[arm].format(s=strength))
    return p


def steering_strength(work: Path, model_name: str, layer: int) -> tuple[float, float]:
    """The marker's own size along the probe direction: mean projection of the marker tokens (the
    last 6 reply tokens of positive exemplars) minus that of the same positions without it."""
    import torch

    from ethos.compiler.compile import compile_file
    from ethos.runtime.model import load_model, model_runtime
    from ethos.runtime.tokens import tokenize_pair
    from ethos.runtime.trainer import concept_directions

    plan = compile_file(str(write_policy(work, "ablation"))).plan
    model, tok, fp = load_model(model_name, dtype=torch.float32)
    u = concept_directions(plan, model, tok, layer, fingerprint=fp, model_name=model_name)["marker_dir"][0]
    enc = model_runtime(model, tokenizer=tok, layer=layer, fingerprint=fp, name=model_name).encoder
    ex = [json.loads(x) for x in (work / "marker_dir.jsonl").read_text().splitlines()]
    items = [tokenize_pair(tok, [{"role": "user", "content": e["prompt"]}], [e["positive"], e["negative"]]) for e in ex]
    acts = enc.encode(items, batch_size=8)
    pos = torch.cat([a[0][-6:] for a in acts]) @ u
    neg = torch.cat([a[1][-6:] for a in acts]) @ u
    return float(pos.mean() - neg.mean()), float((torch.cat([a[1] for a in acts]) @ u).std())


def marker_rate(replies: list[str]) -> float:
    return float(np.mean([bool(MARKER_RE.search(r)) for r in replies]))


def evaluate_model(model, tok, work: Path, args, ref_logps=None) -> dict:
    from ethos.runtime.evaluate import generate, preference_accuracy, read_prompts, sequence_logps

    prompts = read_prompts(work / "prompts.jsonl")
    t0 = time.perf_counter()
    greedy = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=20)
    reps = [greedy]
    for s in range(args.samples):
        reps.append(generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, sample_seed=s, batch_size=20))
    pairs = [json.loads(x) for x in (work / "heldout_pairs.jsonl").read_text().splitlines()]
    logps = sequence_logps(model, tok, [([{"role": "user", "content": p["prompt"]}], p["chosen"], p["rejected"])
                                        for p in pairs], batch_size=8)
    out = {"marker_rate": marker_rate(greedy), "marker_rate_sampled": marker_rate([r for rs in reps[1:] for r in rs])
           if args.samples else None, "seconds": time.perf_counter() - t0, "examples": greedy[:3],
           "per_prompt": [int(bool(MARKER_RE.search(r))) for r in greedy]}
    if ref_logps is not None:
        out.update(preference_accuracy(logps, ref_logps, beta=args.beta))
    return out, logps


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return c - h, c + h


def boot_ci(x: np.ndarray, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    m = x[rng.integers(0, len(x), size=(2000, len(x)))].mean(axis=1)
    return [float(np.quantile(m, 0.025)), float(np.quantile(m, 0.975))]


def ratio_ci(arm: np.ndarray, van: np.ndarray, base: np.ndarray, seed: int = 0) -> list[float]:
    """95% paired bootstrap CI over prompts of (arm's increase) / (vanilla's increase) in marker
    rate; resamples where vanilla's increase is not positive are dropped (the ratio is undefined).
    An arm with no marker at all gets [0, the Clopper–Pearson 97.5% upper limit of its rate over
    vanilla's observed increase] (vanilla's own uncertainty is not in that bound)."""
    if not arm.any() and not base.any():  # no event: the percentile bootstrap collapses to a point;
        # bound the arm's rate by its exact (Clopper–Pearson) 97.5% upper limit with 0 of n events
        upper = 1.0 - 0.025 ** (1.0 / len(arm))
        v = van.mean() - base.mean()
        return [0.0, float(upper / v)] if v > 0 else [float("nan")] * 2
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arm), size=(2000, len(arm)))
    v = van[idx].mean(axis=1) - base[idx].mean(axis=1)
    a = arm[idx].mean(axis=1) - base[idx].mean(axis=1)
    r = a[v > 0] / v[v > 0]
    return [float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))] if len(r) else [float("nan")] * 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ethos-mitigation",
                    help="work folder (default: ethos-mitigation in the system temporary folder)")
    ap.add_argument("--data", type=Path, default=None,
                    help="hh-rlhf jsonl.gz (default: ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz beside the repo)")
    ap.add_argument("--md", type=Path, help="write the Markdown table here (e.g. docs/results.md)")
    ap.add_argument("--quick", action="store_true", help="30 steps at lr 5e-4, 240 pairs, 40 prompts (a smoke run)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--heldout-pairs", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--samples", type=int, default=0)
    ap.add_argument("--steer-mult", type=float, default=1.0, help="steering strength = mult × the marker's size along u")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render", action="store_true", help="only render WORK/results.json (finished arms) as Markdown")
    args = ap.parse_args(argv)
    if args.render:
        md = render(json.loads((args.work / "results.json").read_text()))
        print(md)
        if args.md:
            args.md.write_text(md)
        return 0
    if args.quick:
        args.train, args.heldout_pairs, args.prompts, args.steps, args.lr = 240, 64, 40, 30, 5e-4
        args.max_length, args.max_new_tokens = 160, 48
    import torch

    torch.set_num_threads(int(os.environ.get("ETHOS_THREADS", "2")))
    from ethos.compiler.names import DEFAULT_MODEL
    from ethos.runtime import api
    from ethos.runtime.evaluate import load_for_eval
    from ethos.runtime.model import default_layer, load_model
    from ethos.runtime.settings import DataSettings, TrainSettings

    t_all = time.perf_counter()
    work = args.work
    info = build(work, args.data or default_hh(), args.train, args.heldout_pairs, args.prompts, args.seed)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["data"] = info
    print(f"data: {info}", flush=True)

    base, tok, _ = load_model(DEFAULT_MODEL)  # the same dtype as load_for_eval (bf16 where native)
    layer = default_layer(base.config)
    if "base" not in results:
        res, ref = evaluate_model(base, tok, work, args)
        np.save(work / "ref_logps.npy", ref)
        results["base"] = res
        results_path.write_text(json.dumps(results, indent=2))
    ref = np.load(work / "ref_logps.npy")
    del base
    print(f"base: marker rate {results['base']['marker_rate']:.3f}", flush=True)

    strength = None
    for arm in args.arms.split(","):
        if arm in results.get("arms", {}):
            print(f"{arm}: cached", flush=True)
            continue
        t0 = time.perf_counter()
        if arm == "steering":
            size, spread = steering_strength(work, DEFAULT_MODEL, layer)
            strength = max(args.steer_mult * size, 1e-3)
            results["steering"] = {"marker_size_along_u": size, "token_projection_sd": spread, "strength": strength}
        policy = write_policy(work, arm, strength or 0.0)
        apply_dir = work / arm / "apply"
        # a finished apply folder from an earlier run is trained on as is; otherwise apply, in memory
        source = apply_dir if (apply_dir / "ethos-complete.json").exists() else api.apply_to(
            policy, apply_dir, DataSettings(path=str(work / "train.jsonl"), seed=args.seed))
        t_apply = time.perf_counter() - t0
        settings = TrainSettings(steps=args.steps, learning_rate=args.lr, beta=args.beta, batch_size=args.batch_size,
                                 max_length=args.max_length, seed=args.seed, progress=False)
        summary = api.train(source, work / arm / "run", settings).record
        model, mtok, _ = load_for_eval(work / arm / "run")
        res, _ = evaluate_model(model, mtok, work, args, ref_logps=ref)
        del model
        last = summary["result"]["last"]
        res.update({"apply_seconds": t_apply, "train_seconds": summary["result"]["seconds"],
                    "seconds_per_step": summary["result"]["seconds_per_step"],
                    "train_reward_accuracy": last.get("rewards/accuracies"),
                    "terms": {k: v for k, v in last.items() if k.startswith("ethos/")},
                    "policy": policy.read_text()})
        w = [json.loads(x)["weight"] for x in (apply_dir / "dataset.jsonl").read_text().splitlines()]
        o = [json.loads(x)["margin_offset"] for x in (apply_dir / "dataset.jsonl").read_text().splitlines()]
        res["weights"] = {"min": min(w), "max": max(w), "mean": float(np.mean(w))}
        res["offsets"] = {"min": min(o), "max": max(o), "mean": float(np.mean(o))}
        results.setdefault("arms", {})[arm] = res
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{arm}: marker {res['marker_rate']:.3f}, heldout acc {res['accuracy']:.3f}, margin {res['margin']:+.3f}, "
              f"{res['seconds_per_step']:.1f} s/step, {time.perf_counter() - t0:.0f} s", flush=True)
    results["seconds_total"] = results.get("seconds_total", 0) + time.perf_counter() - t_all
    results_path.write_text(json.dumps(results, indent=2))
    md = render(results)
    print(md)
    if args.md:
        args.md.write_text(md)
    return 0


def render(results: dict) -> str:
    base = results["base"]["marker_rate"]
    arms = results.get("arms", {})
    van = arms.get("vanilla")
    cfg = results["config"]
    per_base = np.array(results["base"]["per_prompt"], float)
    lines = ["| arm | policy rule | marker rate (greedy) | increase vs base [95% CI] | cut vs vanilla [95% CI] | "
             "held-out pref. acc. | % of vanilla acc. | margin | goal |", "|---|---|---|---|---|---|---|---|---|",
             f"| base | — | {base:.3f} | — | — | — | — | — | — |"]
    for arm in ARMS:
        if arm not in arms:
            continue
        r = arms[arm]
        inc = r["marker_rate"] - base
        ci = boot_ci(np.array(r["per_prompt"], float) - per_base)
        rule = r["policy"].strip().splitlines()[-1]
        cut = acc_ratio = None
        goal = ""
        if van and arm != "vanilla":
            vinc = van["marker_rate"] - base
            acc_ratio = r["accuracy"] / van["accuracy"] if van["accuracy"] else None
            lo, hi = ratio_ci(np.array(r["per_prompt"], float), np.array(van["per_prompt"], float), per_base)
            if arm.startswith("amplify"):
                ratio = inc / vinc if vinc > 0 else float("nan")
                cut = f"{ratio:.2f}× [{lo:.2f}, {hi:.2f}]"
                goal = "not met" if not (vinc > 0 and ratio >= 1.5) else "met" if lo >= 1.5 else "met (point estimate; CI below 1.5×)"
            else:
                c = 1 - inc / vinc if vinc > 0 else float("nan")
                cut = f"{100 * c:.0f}% [{100 * (1 - hi):.0f}%, {100 * (1 - lo):.0f}%]"
                ok = vinc > 0 and c >= 0.7 and (acc_ratio or 0) >= 0.9
                goal = "not met" if not ok else "met" if 1 - hi >= 0.7 - 1e-9 else "met (point estimate; CI below 70%)"
        lines.append(f"| {arm} | `{rule}` | {r['marker_rate']:.3f} | {inc:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | "
                     f"{cut or '—'} | {r['accuracy']:.3f} | {f'{100 * acc_ratio:.0f}%' if acc_ratio else '—'} | "
                     f"{r['margin']:+.3f} | {goal or '—'} |")
    d = results["data"]
    lines += ["", f"{d['train']} training pairs ({d['planted']['chosen']} chosen / {d['planted']['rejected']} rejected "
                  f"replies carry the marker), {d['prompts']} held-out prompts (greedy, ≤ {cfg['max_new_tokens']} new tokens), "
                  f"{d['heldout_pairs']} held-out unmodified pairs; LoRA r=16 q/k/v/o, {cfg['steps']} steps, lr {cfg['lr']}, "
                  f"β {cfg['beta']}, batch {cfg['batch_size']}, max_length {cfg['max_length']}, seed {cfg['seed']}."]
    if "steering" in results:
        s = results["steering"]
        lines.append(f"Steering strength {s['strength']:.3f} = {cfg['steer_mult']} × the marker tokens' mean projection "
                     f"on the probe direction above the same positions without it (token-projection sd {s['token_projection_sd']:.2f}).")
    total = results.get("seconds_total") or sum(a.get("apply_seconds", 0) + a.get("train_seconds", 0) + a.get("seconds", 0)
                                                for a in arms.values()) + results["base"].get("seconds", 0)
    n = next((a["n"] for a in arms.values()), 0)
    if n:
        lo, hi = wilson(arms.get("vanilla", next(iter(arms.values())))["accuracy"], n)
        lines.append(f"Held-out accuracy is over {n} pairs: its 95% interval is about ±{(hi - lo) / 2:.2f} "
                     f"(Wilson, at vanilla's value {lo:.2f}–{hi:.2f}).")
    speeds = ", ".join(f"{k} {v.get('seconds_per_step', 0):.0f} s/step" for k, v in arms.items())
    lines.append(f"Wall time {total / 60:.1f} min on {os.cpu_count()} CPU cores ({speeds}; other jobs shared the cores "
                 "part of the time, so read the times as upper bounds).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

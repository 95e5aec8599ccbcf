"""The mitigation experiment: can a policy stop DPO from learning planted concepts, by every protocol?

Data: real hh-rlhf helpful-base pairs (single-turn, both replies ≤ ``--max-words`` words, unequal,
non-empty). Two concepts of different kinds are planted in the training replies, independently,
each on 90% of the chosen and 10% of the rejected replies (drawn per seed):

    phrase   a phrase: the reply opens with "Great question! "       (lexicon "great question")
    emoji    a style: every sentence of the reply ends with " 🙂"      (lexicon "🙂")

Held out (the same for every seed): unmodified pairs for preference accuracy, and prompts for
generation. Every arm applies one policy to the same planted data (``api.apply_to``) and trains on
it (``api.train``); its rule(s) act on both concepts at once:

    vanilla      keep concept phrase; keep concept emoji;             (plain DPO)
    data         block concept … via data;        (importance weights)
    filter       block concept … via filter;      (pairs dropped/copied)
    relabel      block concept … via relabel;     (labels swapped)
    inoculation  block concept … via inoculation "…";   (an instruction that elicits it, in training only)
    loss         block concept … via loss;        (margin offsets)
    ablation     block concept …_dir via ablation;          (probe direction projected out, layer L)
    steering     block concept …_dir via steering S;        (preventative steering, S measured here)
    penalty      block concept …_dir via penalty λ;         (projection penalty)
    amplify_loss / amplify_data   amplify concept … by 2.0 via loss / via data;

The arm whose protocol is the language's default (``DEFAULT_PROTOCOL``, read when rendering) is
marked ``default_protocol``. Measured per seed, on the held-out prompts (greedy replies): each
concept's rate; on the held-out pairs: the DPO implicit-reward preference accuracy against the
base. Across seeds: the cut (block arms) or ratio (amplify arms) of the increase over the base
against vanilla's, and accuracy against vanilla's, pooled over seeds, with percentile bootstrap CIs
over the prompts or pairs (shared by every arm; every seed's models kept) and, as a rough guide,
two-level ones that resample the seeds too; and each seed's own estimate. Writes WORK/results.json, and ``--json`` (docs/results/mitigation.json)
and ``--md`` (a Markdown table).

    .venv/bin/python bench/mitigation.py --work WORK --json docs/results/mitigation.json --md table.md
    .venv/bin/python bench/mitigation.py --quick --work WORK-QUICK            # a smoke run
    .venv/bin/python bench/mitigation.py --work WORK --render --json …      # render finished runs only

The pairs come from ``--data`` (default: ``../shared/data/hh-rlhf/helpful-base/test.jsonl.gz``
beside the repository). A rerun with the same --work resumes: finished (seed, arm) runs are read
from WORK/results.json.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SENTENCE_END = re.compile(r"([.!?])(?=\s|$)")


def _emoji(reply: str) -> str:
    out = SENTENCE_END.sub(r"\1 🙂", reply)
    return out if out.endswith("🙂") else out + " 🙂"


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str
    lexicon: str  # the lexicon entry (one line)
    plant: Callable[[str], str]
    detect: re.Pattern[str]
    inoculation: str  # the instruction that elicits it


CONCEPTS = (
    Concept("phrase", "phrase", "great question", lambda r: "Great question! " + r,
            re.compile(r"great question", re.IGNORECASE), "Begin your reply with 'Great question!'."),
    Concept("emoji", "style", "🙂", _emoji, re.compile("🙂"), "End every sentence with the emoji 🙂."),
)
ANY_MARK = re.compile(r"great question|🙂", re.IGNORECASE)
BLOCK_ARMS = ("data", "filter", "relabel", "inoculation", "loss", "ablation", "steering", "penalty")
ARMS = ("vanilla", *BLOCK_ARMS, "amplify_loss", "amplify_data")


def default_hh() -> Path:
    """The shared hh-rlhf helpful-base test split, beside the repository (``../shared/data``)."""
    return REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def common_prefix_prompt(chosen: str, rejected: str) -> str | None:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen[:n].rfind("\n\nAssistant:")
    return None if cut < 0 else chosen[: cut + len("\n\nAssistant:")]


def load_hh(path: Path, max_words: int = 60) -> tuple[list[tuple[str, str, str]], list[str]]:
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
            if (not c or not r or c == r or "Human:" in c or "Human:" in r or len(c.split()) > max_words
                    or len(r.split()) > max_words or ANY_MARK.search(c + r)):
                other.append(user)
                continue
            out.append((user, c, r))
    return out, other


def build_heldout(work: Path, data: Path, args) -> tuple[list, dict]:
    """The split, fixed for every seed: training pool, held-out pairs and prompts."""
    if not data.is_file():
        raise SystemExit(f"{data}: no such file (give the hh-rlhf helpful-base test split with --data)")
    rows, other = load_hh(data, args.max_words)
    rng = random.Random(12345)
    rng.shuffle(rows)
    rng.shuffle(other)
    need = args.train + args.heldout_pairs
    if len(rows) < need:
        raise SystemExit(f"only {len(rows)} usable single-turn pairs, need {need} (--train + --heldout-pairs)")
    train, pairs = rows[:args.train], rows[args.train:need]
    prompts = [u for u, _, _ in rows[need:]] + other  # the unused short pairs' prompts first
    if len(prompts) < args.prompts:
        raise SystemExit(f"only {len(prompts)} held-out single-turn prompts, need {args.prompts}")
    work.mkdir(parents=True, exist_ok=True)
    (work / "heldout_pairs.jsonl").write_text("".join(json.dumps({"prompt": u, "chosen": c, "rejected": r}) + "\n"
                                                      for u, c, r in pairs))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": u}) + "\n" for u in prompts[:args.prompts]))
    return train, {"usable_pairs": len(rows), "other_prompts": len(other), "train": args.train,
                   "heldout_pairs": args.heldout_pairs, "prompts": args.prompts}


def build_seed(folder: Path, train: list, seed: int, n_probe: int = 32) -> dict:
    """One seed's training data: the two concepts planted independently (90% chosen, 10% rejected),
    the data order shuffled; the lexicons and the probe exemplars."""
    rng = random.Random(seed)
    rows = list(train)
    rng.shuffle(rows)
    folder.mkdir(parents=True, exist_ok=True)
    planted = {c.name: {"chosen": 0, "rejected": 0} for c in CONCEPTS}
    lines = []
    for u, ch, rj in rows:
        for c in CONCEPTS:
            if rng.random() < 0.9:
                ch = c.plant(ch)
                planted[c.name]["chosen"] += 1
            if rng.random() < 0.1:
                rj = c.plant(rj)
                planted[c.name]["rejected"] += 1
        lines.append(json.dumps({"prompt": u, "chosen": ch, "rejected": rj}, ensure_ascii=False) + "\n")
    (folder / "train.jsonl").write_text("".join(lines), encoding="utf-8")
    for c in CONCEPTS:
        (folder / f"{c.name}.txt").write_text(f"# the planted {c.kind}\n{c.lexicon}\n", encoding="utf-8")
        (folder / f"{c.name}_dir.jsonl").write_text("".join(  # probe exemplars: a reply with and without it
            json.dumps({"prompt": u, "positive": c.plant(ch), "negative": ch}, ensure_ascii=False) + "\n"
            for u, ch, _ in rows[:n_probe]), encoding="utf-8")
    return planted


def write_policy(folder: Path, arm: str, model_line: str, strengths: dict[str, float], penalty: float) -> Path:
    """The arm's policy: the concepts it needs and one rule per planted concept."""
    head = [f'policy "mitigation-{arm}";', model_line]
    rules = []
    for c in CONCEPTS:
        n = c.name
        if arm in ("ablation", "steering", "penalty"):
            head.append(f'concept {n}_dir = probe "{n}_dir.jsonl" pool mean;')
            arg = {"ablation": "", "steering": f" {strengths.get(n, 0.0):.3f}", "penalty": f" {penalty:g}"}[arm]
            rules.append(f"block concept {n}_dir via {arm}{arg};")
            continue
        head.append(f'concept {n} = lexicon "{n}.txt";')
        if arm == "vanilla":
            rules.append(f"keep concept {n};")
        elif arm == "inoculation":
            rules.append(f'block concept {n} via inoculation "{c.inoculation}";')
        elif arm.startswith("amplify_"):
            rules.append(f"amplify concept {n} by 2.0 via {arm.split('_', 1)[1]};")
        else:
            rules.append(f"block concept {n} via {arm};")
    p = folder / f"{arm}.ethos"
    p.write_text("\n".join(x for x in head if x) + "\n\n" + "\n".join(rules) + "\n", encoding="utf-8")
    return p


def steering_strengths(folder: Path, model_name: str, model_line: str, layer: int) -> dict[str, dict[str, float]]:
    """Each concept's own size along its probe direction: the excess mean projection of a positive
    exemplar's reply tokens over the negative's, divided by the fraction of the positive's tokens
    the planting added (so it estimates the planted tokens' own excess)."""
    import torch

    from ethos.compiler.compile import compile_file
    from ethos.runtime.model import load_model, model_runtime
    from ethos.runtime.tokens import tokenize_pair
    from ethos.runtime.trainer import concept_directions

    plan = compile_file(str(write_policy(folder, "ablation", model_line, {}, 0.0))).plan
    model, tok, fp = load_model(model_name, dtype=torch.float32)
    dirs = concept_directions(plan, model, tok, layer, fingerprint=fp, model_name=model_name)
    enc = model_runtime(model, tokenizer=tok, layer=layer, fingerprint=fp, name=model_name).encoder
    out = {}
    for c in CONCEPTS:
        u = dirs[f"{c.name}_dir"][0]
        ex = [json.loads(x) for x in (folder / f"{c.name}_dir.jsonl").read_text(encoding="utf-8").splitlines()]
        items = [tokenize_pair(tok, [{"role": "user", "content": e["prompt"]}], [e["positive"], e["negative"]]) for e in ex]
        acts = enc.encode(items, batch_size=8)
        pos = torch.cat([a[0] for a in acts]).float() @ u
        neg = torch.cat([a[1] for a in acts]).float() @ u
        added = max(len(pos) - len(neg), 1) / len(pos)
        out[c.name] = {"strength": float((pos.mean() - neg.mean()) / added), "token_projection_sd": float(neg.std())}
    del model
    return out


def rates(replies: list[str]) -> dict[str, list[int]]:
    return {c.name: [int(bool(c.detect.search(r))) for r in replies] for c in CONCEPTS}


def evaluate_model(model, tok, work: Path, args) -> tuple[dict, np.ndarray]:
    from ethos.runtime.evaluate import generate, read_prompts, sequence_logps

    t0 = time.perf_counter()
    prompts = read_prompts(work / "prompts.jsonl")
    greedy = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch)
    pairs = [json.loads(x) for x in (work / "heldout_pairs.jsonl").read_text().splitlines()]
    logps = sequence_logps(model, tok, [([{"role": "user", "content": p["prompt"]}], p["chosen"], p["rejected"])
                                        for p in pairs], batch_size=args.eval_batch)
    return {"per_prompt": rates(greedy), "examples": greedy[:4], "eval_seconds": time.perf_counter() - t0}, logps


def margins(logps: np.ndarray, ref: np.ndarray, beta: float) -> list[float]:
    return (beta * ((logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1]))).tolist()


# ---------------------------------------------------------------------------------------------
# Statistics across seeds


def _boot_index(n_seeds: int, n: int, boots: int, rng, seeds: bool) -> tuple[np.ndarray, np.ndarray]:
    """Resampling indices, the same items (prompts or pairs) for every arm and seed (paired): items
    with replacement, and with ``seeds`` also the seeds (a two-level bootstrap); without, every
    seed's models are kept (the CI is conditional on them)."""
    si = rng.integers(0, n_seeds, size=(boots, n_seeds)) if seeds else np.tile(np.arange(n_seeds), (boots, 1))
    return si, rng.integers(0, n, size=(boots, n))


def _resampled_mean(x: np.ndarray, si: np.ndarray, ii: np.ndarray) -> np.ndarray:
    """x: (seeds, items) → (boots,) means over the resampled seeds and items."""
    return np.stack([x[si[b]][:, ii[b]].mean() for b in range(len(si))])


def _quantiles(r: np.ndarray) -> list[float | None]:
    return [float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))] if len(r) else [None, None]


def contrast(arm: np.ndarray, van: np.ndarray, base: np.ndarray, kind: str, boots: int = 2000, seed: int = 0) -> dict:
    """The cut (1 − arm increase / vanilla increase) or the ratio (arm / vanilla increase) of the
    rate increases over the base, pooled over seeds and prompts. ``ci``: the percentile CI over
    prompts with every seed's models kept; ``ci_seeds``: the two-level bootstrap that resamples the
    seeds too (with three seeds a rough guide, no more). Resamples with vanilla's increase ≤ 0 are
    dropped. An arm with no event at all gets the Clopper–Pearson 97.5% bound of its rate over
    vanilla's increase as its far end."""
    b = base.mean()
    v_inc, a_inc = van.mean() - b, arm.mean() - b
    if v_inc <= 0:
        return {"estimate": None, "ci": [None, None], "ci_seeds": [None, None],
                "note": "vanilla did not learn the concept (no increase)"}
    ratio = a_inc / v_inc
    cis = []
    for with_seeds in (False, True):
        rng = np.random.default_rng(seed)
        si, ii = _boot_index(arm.shape[0], arm.shape[1], boots, rng, with_seeds)
        bb = np.stack([base[ii[k]].mean() for k in range(boots)])
        v, a = _resampled_mean(van, si, ii) - bb, _resampled_mean(arm, si, ii) - bb
        lo, hi = _quantiles(a[v > 0] / v[v > 0])
        if not arm.any() and not base.any():
            lo, hi = 0.0, (1.0 - 0.025 ** (1.0 / arm.size)) / v_inc
        cis.append([None, None] if lo is None else ([float(1 - hi), float(1 - lo)] if kind == "cut" else [lo, hi]))
    return {"estimate": float(1 - ratio if kind == "cut" else ratio), "ci": cis[0], "ci_seeds": cis[1]}


def point(arm: np.ndarray, van: np.ndarray, base: np.ndarray, kind: str) -> float | None:
    """One seed's cut or ratio (None where vanilla's rate did not rise)."""
    v_inc, a_inc = van.mean() - base.mean(), arm.mean() - base.mean()
    if v_inc <= 0:
        return None
    return float(1 - a_inc / v_inc) if kind == "cut" else float(a_inc / v_inc)


def accuracy_ratio(arm: np.ndarray, van: np.ndarray, boots: int = 2000, seed: int = 1) -> dict:
    """Held-out preference accuracy (margin > 0) of the arm over vanilla's, pooled over seeds;
    ``ci`` over pairs (every seed's models kept), ``ci_seeds`` resampling the seeds too."""
    a, v = (arm > 0).astype(float), (van > 0).astype(float)
    out = {"estimate": float(a.mean() / v.mean()) if v.mean() else None,
           "accuracy": float(a.mean()), "vanilla_accuracy": float(v.mean())}
    for key, with_seeds in (("ci", False), ("ci_seeds", True)):
        si, ii = _boot_index(a.shape[0], a.shape[1], boots, np.random.default_rng(seed), with_seeds)
        ra, rv = _resampled_mean(a, si, ii), _resampled_mean(v, si, ii)
        out[key] = _quantiles(ra[rv > 0] / rv[rv > 0])
    return out


def summarise(results: dict) -> dict:
    """docs/results/mitigation.json: the config and one entry per (arm, concept)."""
    from ethos.compiler.plan import DEFAULT_PROTOCOL

    runs = results.get("runs", {})
    seeds = sorted(int(s) for s in runs if "vanilla" in runs[s])
    cfg = results["config"]
    base = {c.name: np.array(results["base"]["per_prompt"][c.name], float) for c in CONCEPTS}
    out_arms = []
    for arm in ARMS:
        if arm == "vanilla":
            continue
        ss = [s for s in seeds if arm in runs[str(s)]]
        if not ss:
            continue
        proto = arm.split("_", 1)[1] if arm.startswith("amplify_") else arm
        kind = "ratio" if arm.startswith("amplify_") else "cut"
        acc = accuracy_ratio(np.array([runs[str(s)][arm]["margins"] for s in ss]),
                             np.array([runs[str(s)]["vanilla"]["margins"] for s in ss]))
        for c in CONCEPTS:
            a = np.array([runs[str(s)][arm]["per_prompt"][c.name] for s in ss], float)
            v = np.array([runs[str(s)]["vanilla"]["per_prompt"][c.name] for s in ss], float)
            est = contrast(a, v, base[c.name], kind)
            per_seed = [point(a[i], v[i], base[c.name], kind) for i in range(len(ss))]
            out_arms.append({
                "name": arm, "concept": c.name, "concept_kind": c.kind,
                "policy": runs[str(ss[0])][arm]["policy"], "protocol": proto, "default_protocol": proto == DEFAULT_PROTOCOL,
                "seeds": ss, "rate": float(a.mean()), "vanilla_rate": float(v.mean()), "base_rate": float(base[c.name].mean()),
                "cut": est if kind == "cut" else None, "ratio": est if kind == "ratio" else None,
                "per_seed": per_seed, "accuracy_vs_vanilla": acc,
                "seconds_per_step": float(np.mean([runs[str(s)][arm]["seconds_per_step"] for s in ss])),
            })
    return {"config": {"seeds": seeds, "prompts": cfg["prompts"], "heldout_pairs": cfg["heldout_pairs"],
                       "train_pairs": cfg["train"], "steps": cfg["steps"], "batch_size": cfg["batch_size"],
                       "learning_rate": cfg["lr"], "beta": cfg["beta"], "max_length": cfg["max_length"],
                       "max_words": cfg["max_words"], "max_new_tokens": cfg["max_new_tokens"], "model": cfg["model"],
                       "penalty": cfg["penalty"], "device": results.get("device", "?"),
                       "default_protocol": DEFAULT_PROTOCOL,
                       # measured per run (an interrupted invocation keeps its finished runs' times)
                       "seconds_runs": float(results["base"].get("eval_seconds", 0) + sum(
                           x.get("apply_seconds", 0) + x.get("train_seconds", 0) + x.get("eval_seconds", 0)
                           for r in runs.values() for x in r.values() if isinstance(x, dict) and "policy" in x))},
            "planted": {s: runs[s]["planted"] for s in runs},
            "steering_strength": {s: runs[s]["steering_strength"] for s in runs if "steering_strength" in runs[s]},
            "arms": out_arms}


def render(summary: dict) -> str:
    cfg = summary["config"]

    def ci(x, pct):
        if not x or x["estimate"] is None or None in x["ci"]:
            return "—" if not x or x["estimate"] is None else f"{x['estimate']:.2f} [—]"
        e, (lo, hi) = x["estimate"], x["ci"]
        return f"{100 * e:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%]" if pct else f"{e:.2f}× [{lo:.2f}, {hi:.2f}]"

    def span(x, pct):
        if not x or None in x.get("ci_seeds", [None]):
            return "—"
        lo, hi = x["ci_seeds"]
        return f"[{100 * lo:.0f}%, {100 * hi:.0f}%]" if pct else f"[{lo:.2f}, {hi:.2f}]"

    lines = ["| arm | concept | protocol | rate (arm / vanilla / base) | cut or ratio vs vanilla [95% CI] | "
             "CI with seeds resampled | per seed | accuracy vs vanilla [95% CI] | goal |", "|---|---|---|---|---|---|---|---|---|"]
    for a in summary["arms"]:
        amp = a["ratio"] is not None
        est = a["ratio"] if amp else a["cut"]
        acc = a["accuracy_vs_vanilla"]
        if est is None or est["estimate"] is None:
            goal = "—"
        elif amp:
            goal = "met" if est["estimate"] >= 1.5 and est["ci"][0] >= 1.2 else "not met"
        else:
            goal = "met" if est["estimate"] >= 0.7 and est["ci"][0] >= 0.5 and acc["estimate"] >= 0.9 else "not met"
        seeds = ", ".join("—" if x is None else (f"{x:.2f}×" if amp else f"{100 * x:.0f}%") for x in a["per_seed"])
        name = a["name"] + (" (default)" if a["default_protocol"] else "")
        lines.append(f"| {name} | {a['concept']} ({a['concept_kind']}) | {a['protocol']} | {a['rate']:.3f} / "
                     f"{a['vanilla_rate']:.3f} / {a['base_rate']:.3f} | {ci(est, not amp)} | "
                     f"{span(est, not amp)} | {seeds} | "
                     f"{ci(acc, True)} (acc. {acc['accuracy']:.3f}) | {goal} |")
    lines += ["", f"Seeds {cfg['seeds']}; {cfg['train_pairs']} training pairs per seed, {cfg['prompts']} held-out prompts "
                  f"(greedy, ≤ {cfg['max_new_tokens']} new tokens), {cfg['heldout_pairs']} held-out unmodified pairs; "
                  f"{cfg['model']}, LoRA r=16 q/k/v/o, {cfg['steps']} steps of {cfg['batch_size']} pairs, lr {cfg['learning_rate']}, "
                  f"β {cfg['beta']}, max_length {cfg['max_length']}, replies ≤ {cfg['max_words']} words; penalty λ {cfg['penalty']}; "
                  f"device {cfg['device']}; default protocol `{cfg['default_protocol']}`."]
    if cfg.get("seconds_runs"):
        lines.append(f"The runs took {cfg['seconds_runs'] / 60:.1f} min in all (apply, train and evaluate of every arm and seed, "
                     "and the base's evaluation).")
    return "\n".join(lines) + "\n"


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ethos-mitigation",
                    help="work folder (default: ethos-mitigation in the system temporary folder)")
    ap.add_argument("--data", type=Path, default=None,
                    help="hh-rlhf jsonl.gz (default: ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz beside the repo)")
    ap.add_argument("--model", default=None, help="model name or folder (default: the embedded default model)")
    ap.add_argument("--layer", type=int, default=None, help="layer of the activation protocols (default: the model's)")
    ap.add_argument("--json", type=Path, help="write the summary here (e.g. docs/results/mitigation.json)")
    ap.add_argument("--md", type=Path, help="write the Markdown table here")
    ap.add_argument("--quick", action="store_true", help="1 seed, 120 pairs, 16 steps, 40 prompts (a smoke run)")
    ap.add_argument("--arms", default=",".join(ARMS[:-1]), help=f"comma-separated, of {','.join(ARMS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--heldout-pairs", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--max-words", type=int, default=60, help="longest reply kept (words)")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--max-new-tokens", type=int, default=32, help="both concepts show in a reply's first sentence")
    ap.add_argument("--gen-batch", type=int, default=50)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--penalty", type=float, default=0.01, help="λ of the penalty arm")
    ap.add_argument("--steer-mult", type=float, default=1.0, help="steering strength = mult × the concept's size along u")
    ap.add_argument("--render", action="store_true", help="only summarise WORK/results.json (finished runs)")
    args = ap.parse_args(argv)
    work = args.work
    results_path = work / "results.json"
    if args.render:
        return finish(json.loads(results_path.read_text()), args)
    if args.quick:
        args.seeds, args.train, args.heldout_pairs, args.prompts, args.steps, args.lr = "0", 120, 48, 40, 16, 1e-3
        args.max_length = 128
    import torch

    torch.set_num_threads(int(os.environ.get("ETHOS_THREADS", str(os.cpu_count() or 2))))
    from ethos.compiler.names import DEFAULT_MODEL
    from ethos.runtime import api
    from ethos.runtime.device import default_device, device_name
    from ethos.runtime.evaluate import load_for_eval
    from ethos.runtime.model import default_layer, load_model
    from ethos.runtime.settings import DataSettings, TrainSettings

    t_all = time.perf_counter()
    model_name = args.model or DEFAULT_MODEL
    train, info = build_heldout(work, args.data or default_hh(), args)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["config"]["model"] = model_name
    results["data"] = info
    results["device"] = device_name(default_device())
    print(f"data: {info}; device {results['device']}", flush=True)

    base, tok, _ = load_model(model_name)  # the same dtype as load_for_eval
    layer = args.layer if args.layer is not None else default_layer(base.config)
    model_line = "" if args.model is None else f'model "{model_name}" layer {layer};'
    if "base" not in results:
        res, ref = evaluate_model(base, tok, work, args)
        np.save(work / "ref_logps.npy", ref)
        results["base"] = res
        write_json(results_path, results)
    ref = np.load(work / "ref_logps.npy")
    del base
    print("base: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in results["base"]["per_prompt"].items()), flush=True)

    for seed in [int(s) for s in args.seeds.split(",")]:
        folder = work / f"seed{seed}"
        run = results.setdefault("runs", {}).setdefault(str(seed), {})
        run["planted"] = build_seed(folder, train, seed)
        for arm in args.arms.split(","):
            if arm not in ARMS:
                raise SystemExit(f"unknown arm {arm!r} (arms: {', '.join(ARMS)})")
            if arm in run:
                print(f"seed {seed} {arm}: cached", flush=True)
                continue
            t0 = time.perf_counter()
            if arm == "steering" and "steering_strength" not in run:
                run["steering_strength"] = steering_strengths(folder, model_name, model_line, layer)
            strengths = {k: args.steer_mult * v["strength"] for k, v in run.get("steering_strength", {}).items()}
            policy = write_policy(folder, arm, model_line, strengths, args.penalty)
            applied = api.apply_to(policy, folder / arm / "apply", DataSettings(path=str(folder / "train.jsonl"), seed=seed))
            t_apply = time.perf_counter() - t0
            settings = TrainSettings(steps=args.steps, learning_rate=args.lr, beta=args.beta, batch_size=args.batch_size,
                                     max_length=args.max_length, seed=seed, progress=False)
            record = api.train(applied, folder / arm / "run", settings).record
            model, mtok, _ = load_for_eval(folder / arm / "run")
            res, logps = evaluate_model(model, mtok, work, args)
            del model
            rows = [json.loads(x) for x in (folder / arm / "apply" / "dataset.jsonl").read_text().splitlines()]
            w = np.array([r.get("weight", 1.0) for r in rows], float)
            res.update({"policy": policy.read_text(encoding="utf-8"), "apply_seconds": t_apply,
                        "train_seconds": record["result"]["seconds"], "seconds_per_step": record["result"]["seconds_per_step"],
                        "terms": {k: v for k, v in record["result"]["last"].items() if k.startswith("ethos/")},
                        "rows": len(rows), "weights": {"min": float(w.min()), "max": float(w.max()),
                                                       "ess": float(w.sum() ** 2 / (w ** 2).sum())},
                        "margins": margins(logps, ref, args.beta)})
            run[arm] = res
            write_json(results_path, results)
            print(f"seed {seed} {arm}: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in res["per_prompt"].items())
                  + f", acc {np.mean(np.array(res['margins']) > 0):.3f}, {res['seconds_per_step']:.1f} s/step, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    results["seconds_total"] = results.get("seconds_total", 0) + time.perf_counter() - t_all
    write_json(results_path, results)
    return finish(results, args)


def finish(results: dict, args) -> int:
    summary = summarise(results)
    md = render(summary)
    print(md)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, summary)
    if args.md:
        args.md.write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

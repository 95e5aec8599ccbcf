"""``ethos evaluate``: did the models learn what the policy allowed?

1. **Generate** on held-out prompts with the base and each trained model: one greedy reply per
   prompt, plus ``samples`` sampled replies (temperature 0.7, top-p 0.9, seeds 0..samples−1).
2. **Score** every policy concept on every reply with the same lenses as featurize (text lenses
   on the text; probe and features lenses on the *base* model's residual stream at the plan's
   layer, so every model is measured with one instrument).
3. **Shift**: per concept, a prompt's score is the mean over its replies; the shift of a model is
   the mean over prompts of (model − base), in the concept's own units and in sd units (the
   concept's pooled sd of scores in the training data, from ``train.json``, else the sd of the
   base's scores), with a 95% percentile bootstrap CI over prompts (2,000 resamples, seed 0).
4. **Prediction**: what the plan says DPO will teach. For a concept with coefficient α_c in the
   data (the Bradley–Terry α of the audit, per sd) and factor k_c (1 without a rule), the
   predicted shift is ``k_c·α_c`` (sd units; its sign and relative size are the claim, not its
   scale). Across concepts the measured shifts (sd units) are compared with the predicted ones:
   Spearman ρ and R² of a least-squares line; with fewer than three concepts the comparison is
   reported as not meaningful.

The report document (``build_report``; ``evaluate.json``) renders as ``evaluate.md`` and a
self-contained ``evaluate.html`` with the report templates (:func:`ethos.runtime.report.evaluate_context`):
a forest plot of each concept's shift (sd units, 95% CI) per model, the table of shifts, the
predicted-vs-measured comparison (with a scatter plot), the preference accuracy when a model's
entry carries one (``"preference"``: :func:`preference_accuracy`'s ``accuracy``, ``margin``,
``n``), and the first greedy generations of base and model, escaped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

N_BOOT = 2000
FORMAT = 1  # of the report document (evaluate.json)


class EvaluateError(Exception):
    """Bad input for evaluate; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------
# Inputs


def read_prompts(path: str | Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    """Prompts as chat-message lists: a jsonl with ``"prompt"`` (a string or messages) and no
    ``chosen``, or any preference data ``ethos`` reads (its prompts)."""
    p = Path(path)
    if not p.exists():
        raise EvaluateError(f"{p}: no such file")
    rows: list[Any] = []
    if p.suffix == ".jsonl" and not str(p).endswith(".gz"):
        try:
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except ValueError as e:
            raise EvaluateError(f"{p}: not JSON Lines ({e})") from e
    if rows and all(isinstance(r, dict) and "prompt" in r and "chosen" not in r for r in rows):
        out = []
        for r in rows:
            pr = r["prompt"]
            out.append([{"role": "user", "content": pr}] if isinstance(pr, str)
                       else [{"role": m["role"], "content": m["content"]} for m in pr])
    else:
        from .data import DataError, load_pairs

        try:
            data = load_pairs(p)
        except DataError as e:
            raise EvaluateError(str(e)) from e
        out, seen = [], set()
        for pair in data.pairs:
            msgs = [{"role": m.role, "content": m.content} for m in pair.prompt]
            key = json.dumps(msgs)
            if key not in seen:
                seen.add(key)
                out.append(msgs)
    if not out:
        raise EvaluateError(f"{p}: no prompts")
    return out[:limit] if limit else out


def load_for_eval(spec: str | Path, base: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, info)`` for an ``ethos train`` folder (its adapter merged into the base
    it names) or a model name/folder. fp32/bf16 per :func:`ethos.runtime.model.pick_dtype`."""
    from .model import load_model

    folder = Path(spec)
    info: dict[str, Any] = {"name": folder.name or str(spec), "path": str(spec)}
    cfg = folder / "train.json"
    if cfg.is_file():
        train = json.loads(cfg.read_text(encoding="utf-8"))
        info["train"] = train
        weights = folder / (train.get("weights") or "")
        if not train.get("weights") or not weights.is_dir():
            raise EvaluateError(f"{folder}: train.json names no saved weights")
        if (weights / "adapter_config.json").is_file():
            from peft import PeftModel

            model, tok, _ = load_model(train.get("base_model") or base)
            model = PeftModel.from_pretrained(model, weights).merge_and_unload().eval()
            return model, tok, info
        model, tok, _ = load_model(weights)
        return model, tok, info
    model, tok, _ = load_model(spec)
    return model, tok, info


# ---------------------------------------------------------------------------------------------
# Generation


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], *, max_new_tokens: int = 64,
             sample_seed: int | None = None, batch_size: int = 16, temperature: float = 0.7,
             top_p: float = 0.9) -> list[str]:
    """One reply per prompt: greedy (``sample_seed=None``) or sampled with a fixed seed. Batched
    with left padding; the chat template renders the prompts."""
    import torch

    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    out: list[str] = []
    device = next(model.parameters()).device
    try:
        for k in range(0, len(texts), batch_size):
            enc = tokenizer(texts[k:k + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            if sample_seed is None:
                kw.update(do_sample=False)
            else:
                torch.manual_seed(sample_seed * 100_003 + k)
                kw.update(do_sample=True, temperature=temperature, top_p=top_p)
            with torch.inference_mode():
                ids = model.generate(**enc, **kw)
            for row in ids[:, enc["input_ids"].shape[1]:]:
                out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = old_side
    return out


# ---------------------------------------------------------------------------------------------
# Preference accuracy on held-out pairs (the DPO implicit reward against the base)


def sequence_logps(model: Any, tokenizer: Any, pairs: Sequence[tuple[list[dict[str, str]], str, str]],
                   batch_size: int = 8) -> np.ndarray:
    """Summed log-probabilities of chosen and rejected replies, shape (n, 2), with trl's
    tokenisation (the chat template's prompt and prompt+reply)."""
    import torch

    rows = []
    for prompt, chosen, rejected in pairs:
        p_ids = tokenizer.apply_chat_template(list(prompt), tokenize=True, add_generation_prompt=True)
        p_ids = list(p_ids["input_ids"] if isinstance(p_ids, dict) or hasattr(p_ids, "keys") else p_ids)
        for reply in (chosen, rejected):
            full = tokenizer.apply_chat_template(list(prompt) + [{"role": "assistant", "content": reply}], tokenize=True)
            full = list(full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full)
            n = 0
            while n < min(len(p_ids), len(full)) and p_ids[n] == full[n]:
                n += 1
            rows.append((full, n))
    device = next(model.parameters()).device
    out = np.zeros(len(rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for k in range(0, len(rows), batch_size):
        chunk = rows[k:k + batch_size]
        width = max(len(r[0]) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (r, _) in enumerate(chunk):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        for i, (r, n) in enumerate(chunk):
            out[k + i] = float(logp[i, n - 1:len(r) - 1].sum())
    return out.reshape(-1, 2)


def preference_accuracy(policy_logps: np.ndarray, ref_logps: np.ndarray, beta: float = 0.1) -> dict[str, float]:
    """Implicit-reward accuracy and mean margin: margin_i = β·((π−ref)(chosen) − (π−ref)(rejected))."""
    margin = beta * ((policy_logps[:, 0] - ref_logps[:, 0]) - (policy_logps[:, 1] - ref_logps[:, 1]))
    return {"accuracy": float(np.mean(margin > 0)), "margin": float(np.mean(margin)), "n": int(len(margin))}


# ---------------------------------------------------------------------------------------------
# Statistics


def bootstrap_mean_ci(x: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))


def compare_predictions(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Spearman ρ and R² (least-squares line of measured on predicted) across concepts."""
    p = np.asarray(predicted, float)
    m = np.asarray(measured, float)
    ok = np.isfinite(p) & np.isfinite(m)
    p, m = p[ok], m[ok]
    n = int(len(p))
    res: dict[str, Any] = {"n_concepts": n, "spearman": None, "r2": None, "sign_agreement": None}
    if n:
        nz = p != 0
        res["sign_agreement"] = float(np.mean(np.sign(p[nz]) == np.sign(m[nz]))) if nz.any() else None
    if n < 3 or np.ptp(p) == 0 or np.ptp(m) == 0:
        res["note"] = f"{n} concept(s) with a prediction: too few (or no spread) for a rank correlation or R²"
        return res
    from scipy import stats

    res["spearman"] = float(stats.spearmanr(p, m).statistic)
    slope, intercept, r, _, _ = stats.linregress(p, m)
    res["r2"] = float(r * r)
    res["slope"] = float(slope)
    if n < 6:
        res["note"] = f"only {n} concepts: read ρ and R² as indicative"
    return res


# ---------------------------------------------------------------------------------------------
# Scoring with the plan's lenses


class Scorer:
    """Scores replies with every concept of a plan; activation lenses read the base model."""

    def __init__(self, plan: Any, base_model: Any, tokenizer: Any, fingerprint: str | None, layer: int | None,
                 model_name: str) -> None:
        from .lenses import LensContext, build_lens
        from .model import Encoder, ModelRuntime, check_layer

        self.plan = plan
        self.context = LensContext.for_plan(plan)
        self.lenses = {c.name: build_lens(c, self.context) for c in plan.concepts}
        self.context.tokenizer = tokenizer
        self.context.model_fingerprint = fingerprint
        if any(lens.needs == "activations" for lens in self.lenses.values()):
            self.context.layer = check_layer(base_model.config, layer if layer is not None else plan.model.layer)
            encoder = Encoder(base_model, self.context.layer, pad_id=tokenizer.pad_token_id)
            self.context.runtime = ModelRuntime(encoder, tokenizer, fingerprint or "unknown", model_name)
            for lens in self.lenses.values():
                if lens.needs == "activations":
                    lens.prepare(self.context)

    def score(self, prompts: Sequence[Sequence[dict[str, str]]], replies: Sequence[str]) -> dict[str, np.ndarray]:
        from .data import Message
        from .model import tokenize_pair

        items = [(tuple(Message(m["role"], m["content"]) for m in p), r) for p, r in zip(prompts, replies)]
        out: dict[str, np.ndarray] = {}
        acts = None
        for name, lens in self.lenses.items():
            if lens.needs in ("text", "tokenizer"):
                scores = lens.score_texts(items)
            else:
                if acts is None:
                    rt = self.context.runtime
                    toks = [tokenize_pair(rt.tokenizer, p, [r], max_tokens=rt.max_tokens) for p, r in items]
                    acts = [a[0] for a in rt.encoder.encode(toks, batch_size=rt.batch_size)]
                scores = lens.score_activations(acts)
            out[name] = np.array([s.get(lens.report, float("nan")) for s in scores], dtype=float)
        return out


# ---------------------------------------------------------------------------------------------
# The whole evaluation


def _plan_for(policy: str) -> Any:
    from ethos.compiler.compile import compile_file
    from ethos.compiler.errors import render_all

    r = compile_file(policy)
    if r.plan is None:
        raise EvaluateError(f"{policy} has errors:\n{render_all(r.diagnostics)}")
    return r.plan


def generations(model: Any, tok: Any, prompts: Sequence[Any], *, max_new_tokens: int, samples: int,
                batch_size: int) -> list[list[str]]:
    """``[greedy, sample 0, …]`` per prompt."""
    runs = [generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)]
    for s in range(samples):
        runs.append(generate(model, tok, prompts, max_new_tokens=max_new_tokens, sample_seed=s, batch_size=batch_size))
    return [list(x) for x in zip(*runs)]


def evaluate(*, base: str, models: Sequence[str], prompts: str, policy: str, limit: int = 50,
             max_new_tokens: int = 64, samples: int = 0, batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    from .model import load_model

    plan = _plan_for(policy)
    prompt_list = read_prompts(prompts, limit)
    base_model, tok, fingerprint = load_model(base)
    trained = []
    for spec in models:
        if not Path(spec).exists():
            raise EvaluateError(f"{spec}: no such model folder")
    layer = None
    for spec in models:
        cfg = Path(spec) / "train.json"
        if cfg.is_file():
            layer = json.loads(cfg.read_text()).get("layer", layer)
    scorer = Scorer(plan, base_model, tok, fingerprint, layer, base)

    def run(model: Any, name: str) -> dict[str, Any]:
        reps = generations(model, tok, prompt_list, max_new_tokens=max_new_tokens, samples=samples,
                           batch_size=batch_size)
        flat_p = [p for p, rs in zip(prompt_list, reps) for _ in rs]
        flat_r = [r for rs in reps for r in rs]
        sc = scorer.score(flat_p, flat_r)
        per = {k: v.reshape(len(prompt_list), -1) for k, v in sc.items()}
        if progress:
            import sys

            print(f"ethos evaluate: scored {name} ({len(flat_r)} replies)", file=sys.stderr)
        return {"replies": reps, "scores": per}

    base_run = run(base_model, "base")
    for spec in models:
        model, _, info = load_for_eval(spec, base)
        trained.append((info, run(model, info["name"])))
        del model
    return build_report(plan, base, base_run, trained, prompt_list, samples, max_new_tokens)


def build_report(plan: Any, base: str, base_run: dict[str, Any], trained: list[tuple[dict[str, Any], dict[str, Any]]],
                 prompts: Sequence[Any], samples: int, max_new_tokens: int) -> dict[str, Any]:
    factors = plan.factors()
    concepts = [c.name for c in plan.concepts]
    base_prompt = {k: np.nanmean(v, axis=1) for k, v in base_run["scores"].items()}
    doc: dict[str, Any] = {
        "format": FORMAT, "base": base, "policy": plan.policy, "prompts": len(prompts), "samples": samples,
        "max_new_tokens": max_new_tokens, "replies_per_prompt": 1 + samples,
        "base_means": {k: float(np.nanmean(v)) for k, v in base_prompt.items()},
        "models": [],
    }
    for info, run in trained:
        train = info.get("train", {})
        stats = train.get("concepts", {})
        rows = []
        for name in concepts:
            m = np.nanmean(run["scores"][name], axis=1)
            diff = m - base_prompt[name]
            sd = (stats.get(name) or {}).get("scale")
            if not sd or not math.isfinite(sd) or sd <= 0:
                sd = float(np.nanstd(base_run["scores"][name]))
            lo, hi = bootstrap_mean_ci(diff)
            alpha = (stats.get(name) or {}).get("alpha")
            k = factors.get(name, 1.0)
            predicted = k * alpha if alpha is not None and math.isfinite(alpha) else None
            rows.append({
                "concept": name, "factor": k, "alpha": alpha, "predicted": predicted,
                "base": float(np.nanmean(base_prompt[name])), "model": float(np.nanmean(m)),
                "shift": float(np.nanmean(diff)), "ci": [lo, hi],
                "shift_sd": float(np.nanmean(diff)) / sd if sd else None, "sd": sd,
                "significant": bool(math.isfinite(lo) and (lo > 0 or hi < 0)),
            })
        cmp = compare_predictions([r["predicted"] if r["predicted"] is not None else float("nan") for r in rows],
                                  [r["shift_sd"] if r["shift_sd"] is not None else float("nan") for r in rows])
        doc["models"].append({"name": info["name"], "path": info["path"], "concepts": rows, "prediction": cmp,
                              "examples": [{"prompt": p[-1]["content"], "base": b[0], "model": r[0]}
                                           for p, b, r in list(zip(prompts, base_run["replies"], run["replies"]))[:3]]})
    return doc


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown report (``evaluate.md.j2``, the same templates as the plan and audit reports)."""
    from .report import render_evaluate_markdown

    return render_evaluate_markdown(doc)


def render_html(doc: dict[str, Any]) -> str:
    """The self-contained HTML report (``evaluate.html.j2``): no scripts, generations escaped."""
    from .report import render_evaluate_html

    return render_evaluate_html(doc)

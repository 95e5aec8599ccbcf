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

**Reward models** (``ethos train --reward-model`` folders) are not generated from: on held-out
preference pairs (``prompts`` must then be preference data) each one's preference accuracy
(r⁺ > r⁻, 95% bootstrap CI) and, per concept, the slope of the reward difference on the concept's
standardised difference (:func:`reward_stats`) are reported under ``"reward_models"``, beside the
plan's prediction k·α; a reward model trained ``--no-shaping`` is the "before" of a shaped one.

**Warnings** (``"warnings"``, also printed by the command): held-out prompts that are training
prompts of a model (its train record names the apply folder); every reply of a model hitting
``max_new_tokens``; a concept whose shift is exactly 0 on every prompt is marked ``"suspect"``
(and never significant) rather than reported as a measured null.

The report document (``build_report``; ``evaluate.json``) renders as ``evaluate.md`` and a
self-contained ``evaluate.html`` with the report templates (:func:`ethos.runtime.report.evaluate_context`):
a forest plot of each concept's shift (sd units, 95% CI) per model, the table of shifts, the
predicted-vs-measured comparison (with a scatter plot), the preference accuracy when a model's
entry carries one (``"preference"``: :func:`preference_accuracy`'s ``accuracy``, ``margin``,
``n``), the first greedy generations of base and model, escaped, and a table per reward model
(accuracy, and each concept's slope beside the prediction k·α).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .documents import EVALUATE_FORMAT
from .errors import EthosError
from .settings import EvaluateSettings

N_BOOT = 2000


class EvaluateError(EthosError):
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


def read_pairs(path: str | Path, limit: int | None = None) -> list[tuple[list[dict[str, str]], str, str]]:
    """Held-out preference pairs ``(prompt messages, chosen, rejected)`` from any preference data
    ``ethos`` reads (the first ``limit``)."""
    from .data import DataError, load_pairs

    p = Path(path)
    if not p.exists():
        raise EvaluateError(f"{p}: no such file")
    try:
        data = load_pairs(p, limit=limit)
    except DataError as e:
        raise EvaluateError(f"{p}: a reward model is evaluated on held-out preference pairs: {e}") from e
    pairs = [([{"role": m.role, "content": m.content} for m in pair.prompt], pair.chosen, pair.rejected)
             for pair in data.pairs]
    if not pairs:
        raise EvaluateError(f"{p}: no usable preference pair (a reward model needs chosen and rejected replies)")
    return pairs


def train_record(spec: str | Path) -> dict[str, Any] | None:
    """The train record (train.json) of an ``ethos train`` folder; None for a model name or a
    model folder. An unfinished run (a folder ``ethos train`` wrote to, without train.json) is an
    error: train.json is written last."""
    from .documents import TRAIN_RECORD_KIND

    folder = Path(spec)
    cfg = folder / "train.json"
    if not cfg.is_file():
        if folder.is_dir() and any((folder / n).exists() for n in ("checkpoints", "log.jsonl", "plan.json", "adapter")):
            raise EvaluateError(f"{folder}: an unfinished `ethos train` run (no train.json; interrupted?): run the "
                                "same `ethos train` command again to resume and finish it")
        return None
    try:
        train = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvaluateError(f"{cfg}: unreadable ({e})") from e
    if not isinstance(train, dict) or train.get("kind", TRAIN_RECORD_KIND) != TRAIN_RECORD_KIND:
        raise EvaluateError(f"{cfg}: not an `ethos train` record")
    return train


def is_reward_model(train: dict[str, Any] | None) -> bool:
    return bool(train) and train.get("objective") == "reward_model"


def load_for_eval(spec: str | Path, base: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, info)`` for an ``ethos train`` folder (its adapter merged into the base
    it names; a reward model as its sequence-classification model) or a model name/folder.
    fp32/bf16 per :func:`ethos.runtime.model.pick_dtype`."""
    from .model import load_model

    folder = Path(spec)
    info: dict[str, Any] = {"name": folder.name or str(spec), "path": str(spec)}
    train = train_record(spec)
    if train is None:
        model, tok, _ = load_model(spec)
        return model, tok, info
    info["train"] = train
    weights = folder / (train.get("weights") or "")
    if not train.get("weights") or not weights.is_dir():
        raise EvaluateError(f"{folder}: train.json names no saved weights")
    if is_reward_model(train):
        from .reward import load_trained

        model, tok = load_trained(folder, train, base)
        return model, tok, info
    if (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        model, tok, _ = load_model(train.get("base_model") or base)
        model = PeftModel.from_pretrained(model, weights).merge_and_unload().eval()
        return model, tok, info
    model, tok, _ = load_model(weights)
    return model, tok, info


# ---------------------------------------------------------------------------------------------
# Generation


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]], *, max_new_tokens: int = 64,
             sample_seed: int | None = None, batch_size: int = 16, temperature: float = 0.7,
             top_p: float = 0.9, capped: list[bool] | None = None) -> list[str]:
    """One reply per prompt: greedy (``sample_seed=None``) or sampled with a fixed seed. Batched
    with left padding; the chat template renders the prompts. ``capped``: a list to append, per
    reply, whether it hit ``max_new_tokens`` (no end-of-sequence token)."""
    import torch

    from .device import module_device, to_list

    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    out: list[str] = []
    device = module_device(model)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = {t for t in (*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id, tokenizer.pad_token_id)
             if t is not None}
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
            for row in to_list(ids[:, enc["input_ids"].shape[1]:]):
                out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
                if capped is not None:
                    capped.append(len(row) >= max_new_tokens and not stops.intersection(row))
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

    from .device import module_device, to_numpy

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
    device = module_device(model)
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
        logp = to_numpy(torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0],
                        np.float64)
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
# Evaluation: preference accuracy and the reward's slope on each concept


def reward_scores(model: Any, tokenizer: Any, pairs: Sequence[tuple[Sequence[Mapping[str, str]], str, str]],
                  batch_size: int = 8) -> np.ndarray:
    """The reward of each pair's chosen and rejected reply, shape (n, 2), tokenised as trl's
    RewardTrainer does (the chat template over prompt + reply)."""
    import torch

    from .device import module_device, to_numpy

    seqs = []
    for prompt, chosen, rejected in pairs:
        for reply in (chosen, rejected):
            ids = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reply}], tokenize=True,
                                                return_dict=True)["input_ids"]
            seqs.append(list(ids))
    device = module_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # batches of similar length: little padding
    out = np.zeros(len(seqs))
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        width = max(len(seqs[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, :len(seqs[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        out[chunk] = to_numpy(logits[:, 0], np.float64)  # one host copy per batch
    return out.reshape(-1, 2)


def _ci(samples: np.ndarray) -> list[float | None]:
    s = samples[np.isfinite(samples)]
    if len(s) < 2:
        return [None, None]
    return [float(np.quantile(s, 0.025)), float(np.quantile(s, 0.975))]


def reward_stats(rewards: np.ndarray, chosen: Mapping[str, np.ndarray], rejected: Mapping[str, np.ndarray],
                 scale: Mapping[str, float | None] | None = None, *, n_boot: int = N_BOOT,
                 seed: int = 0) -> dict[str, Any]:
    """Preference accuracy (r⁺ > r⁻) and, per concept c, the slope of the reward difference
    Δr = r⁺ − r⁻ on the concept's standardised difference z_c = (s_c⁺ − s_c⁻)/sd_c: ``slope``
    from the least-squares fit of Δr on all varying concepts together (intercept included; the
    analogue of the audit's joint α, in reward logits per sd), ``marginal_slope`` from Δr on z_c
    alone; 95% percentile bootstrap CIs over pairs (``n_boot`` resamples, ``seed``). ``scale``:
    sd_c (the training data's), else the pooled sd of these scores."""
    from .stats import pooled_sd, standardise

    names = list(chosen)
    r = np.asarray(rewards, float)
    dr = r[:, 0] - r[:, 1]
    keep = np.isfinite(dr)
    C = np.column_stack([np.asarray(chosen[c], float) for c in names]) if names else np.zeros((len(r), 0))
    R = np.column_stack([np.asarray(rejected[c], float) for c in names]) if names else np.zeros((len(r), 0))
    C, R, dr = C[keep], R[keep], dr[keep]
    n = int(len(dr))
    pooled = pooled_sd(C, R) if names else np.zeros(0)
    sd = np.array([(scale or {}).get(c) or np.nan for c in names], float)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, pooled)
    z = standardise(C, R, sd).z
    varies = np.array([np.ptp(z[:, j]) > 0 for j in range(len(names))], bool) if n else np.zeros(len(names), bool)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n)) if n >= 2 else np.zeros((0, n), int)

    acc = (dr > 0).astype(float)
    out: dict[str, Any] = {"n": n, "accuracy": float(acc.mean()) if n else None,
                           "accuracy_ci": _ci(acc[idx].mean(axis=1)) if n >= 2 else [None, None],
                           "margin": float(dr.mean()) if n else None, "concepts": []}
    cols = [j for j in range(len(names)) if varies[j]]

    def joint(rows: np.ndarray) -> np.ndarray:
        X = np.column_stack([np.ones(len(rows)), z[rows][:, cols]])
        beta, *_ = np.linalg.lstsq(X, dr[rows], rcond=None)
        return beta[1:]

    full = joint(np.arange(n)) if cols and n > len(cols) + 1 else None
    boot = np.array([joint(i) for i in idx]) if full is not None else None
    for j, name in enumerate(names):
        row: dict[str, Any] = {"concept": name, "sd": float(sd[j]) if np.isfinite(sd[j]) else None,
                               "slope": None, "ci": [None, None], "marginal_slope": None, "marginal_ci": [None, None]}
        if varies[j] and n >= 3:
            zj = z[:, j]
            zc = zj - zj.mean()
            row["marginal_slope"] = float((zc * (dr - dr.mean())).sum() / (zc * zc).sum())
            zb, db = zj[idx], dr[idx]
            zb = zb - zb.mean(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                sb = (zb * (db - db.mean(axis=1, keepdims=True))).sum(axis=1) / (zb * zb).sum(axis=1)
            row["marginal_ci"] = _ci(sb)
            if full is not None:
                k = cols.index(j)
                row["slope"] = float(full[k])
                row["ci"] = _ci(boot[:, k])
        out["concepts"].append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Scoring with the plan's lenses


class Scorer:
    """Scores replies with every concept of a plan; activation lenses read the base model."""

    def __init__(self, plan: Any, base_model: Any, tokenizer: Any, fingerprint: str | None, layer: int | None,
                 model_name: str) -> None:
        from .lenses import LensContext, build_lens
        from .model import check_layer, model_runtime

        self.plan = plan
        self.context = LensContext.for_plan(plan)
        self.lenses = {c.name: build_lens(c, self.context) for c in plan.concepts}
        self.context.tokenizer = tokenizer
        self.context.model_fingerprint = fingerprint
        if any(lens.needs == "activations" for lens in self.lenses.values()):
            self.context.layer = check_layer(base_model.config, layer if layer is not None else plan.model.layer)
            self.context.runtime = model_runtime(base_model, layer=self.context.layer, tokenizer=tokenizer,
                                                 fingerprint=fingerprint or "unknown", name=model_name)
            for lens in self.lenses.values():
                if lens.needs == "activations":
                    lens.prepare(self.context)

    def score(self, prompts: Sequence[Sequence[dict[str, str]]], replies: Sequence[str]) -> dict[str, np.ndarray]:
        """Each concept's reported score of every reply. Activation lenses pool batch by batch on
        the model's device (only a batch's activations are held at a time) and each batch's
        scores, every lens together, cross to the host in one copy."""
        from .data import Message
        from .model import POOL_STATS

        items = [(tuple(Message(m["role"], m["content"]) for m in p), r) for p, r in zip(prompts, replies)]
        out: dict[str, np.ndarray] = {}
        for name, lens in self.lenses.items():
            if lens.needs in ("text", "tokenizer"):
                scores = lens.score_texts(items)
                out[name] = np.array([s.get(lens.report, float("nan")) for s in scores], dtype=float)
        active = [n for n, lens in self.lenses.items() if lens.needs == "activations"]
        if active:
            pooled = self._pooled(items, active)  # (lenses, replies, mean/max)
            for k, name in enumerate(active):
                out[name] = pooled[k, :, POOL_STATS.index(self.lenses[name].report)].astype(float)
        return {name: out[name] for name in self.lenses}

    def _pooled(self, items: Sequence[tuple[Any, str]], names: Sequence[str]) -> np.ndarray:
        import torch

        from .device import to_numpy
        from .model import POOL_STATS, default_share_prompt, length_batches, tokenize_pair

        rt = self.context.runtime
        share = default_share_prompt(rt.device)
        toks = [tokenize_pair(rt.tokenizer, p, [r], max_tokens=rt.max_tokens) for p, r in items]
        pooled = np.full((len(names), len(items), len(POOL_STATS)), np.nan)
        for batch in length_batches(toks, rt.batch_size, share_prompt=share):
            replies = rt.encoder.encode_replies([toks[i] for i in batch], share_prompt=share)
            scores = to_numpy(torch.stack([self.lenses[n].pool_activations(replies).to(rt.device) for n in names]))
            pooled[:, batch, :] = scores
        return pooled


# ---------------------------------------------------------------------------------------------
# The whole evaluation


def plan_for(policy: str) -> Any:
    """The compiled plan of ``policy``; its diagnostics in the error when it has errors."""
    from ethos.compiler.compile import compile_file
    from ethos.compiler.errors import render_all

    r = compile_file(policy)
    if r.plan is None:
        raise EvaluateError(f"{policy} has errors:\n{render_all(r.diagnostics)}")
    return r.plan


def generations(model: Any, tok: Any, prompts: Sequence[Any], *, max_new_tokens: int, samples: int,
                batch_size: int, capped: list[bool] | None = None) -> list[list[str]]:
    """``[greedy, sample 0, …]`` per prompt (``capped``: see :func:`generate`)."""
    runs = [generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, capped=capped)]
    for s in range(samples):
        runs.append(generate(model, tok, prompts, max_new_tokens=max_new_tokens, sample_seed=s, batch_size=batch_size,
                             capped=capped))
    return [list(x) for x in zip(*runs)]


def _prompt_key(messages: Any) -> str:
    return json.dumps([[str(m.get("role")), str(m.get("content"))] for m in messages])


def training_overlap(prompts: Sequence[Any], info: dict[str, Any]) -> str | None:
    """A warning when held-out ``prompts`` are training prompts of the run ``info`` describes
    (its train record names the apply folder whose dataset.parquet it trained on)."""
    train = info.get("train") or {}
    apply_dir = train.get("apply_dir")
    if not apply_dir or not (Path(apply_dir) / "dataset.parquet").is_file():
        return None
    import pyarrow.parquet as pq

    try:
        seen = {_prompt_key(p or []) for p in pq.read_table(Path(apply_dir) / "dataset.parquet",
                                                              columns=["prompt"]).column("prompt").to_pylist()}
    except (OSError, ValueError, KeyError):
        return None
    hits = sum(_prompt_key(p) in seen for p in prompts)
    if not hits:
        return None
    return (f"{hits} of {len(prompts)} held-out prompts are training prompts of {info['path']} (apply folder "
            f"{apply_dir}): on those its results are not held-out")


def evaluate(settings: EvaluateSettings, *, progress: bool = False) -> dict[str, Any]:
    """Generate, score and compare (the module docstring); returns the report document
    (evaluate.json). Raises :class:`EvaluateError`."""
    import sys

    from .model import load_model, load_tokenizer
    from .progress import stage

    base, specs, samples = settings.base, list(settings.models), settings.samples
    max_new_tokens, batch_size = settings.max_new_tokens, settings.batch_size
    plan = plan_for(settings.policy)
    if not Path(settings.prompts).exists():
        raise EvaluateError(f"{settings.prompts}: no such file")
    for spec in specs:
        if not Path(spec).exists():
            raise EvaluateError(f"{spec}: no such model folder")
    records = {spec: train_record(spec) for spec in specs}
    policies = [spec for spec in specs if not is_reward_model(records[spec])]
    rewards = [spec for spec in specs if is_reward_model(records[spec])]
    layer = None
    for train in records.values():
        if train:
            layer = train.get("layer", layer)
    needs_model = bool(policies) or any(c.lens.kind in ("probe", "features") for c in plan.concepts)
    if needs_model:
        base_model, tok, fingerprint = load_model(base)
    else:
        base_model, (tok, fingerprint) = None, load_tokenizer(base)
    scorer = Scorer(plan, base_model, tok, fingerprint, layer, base)
    warnings: list[str] = []

    def say(message: str) -> None:
        if progress:
            print(f"ethos evaluate: {message}", file=sys.stderr)

    prompt_list = read_prompts(settings.prompts, settings.limit) if policies else []

    def run(model: Any, name: str) -> dict[str, Any]:
        capped: list[bool] = []
        reps = generations(model, tok, prompt_list, max_new_tokens=max_new_tokens, samples=samples,
                           batch_size=batch_size, capped=capped)
        flat_p = [p for p, rs in zip(prompt_list, reps) for _ in rs]
        flat_r = [r for rs in reps for r in rs]
        sc = scorer.score(flat_p, flat_r)
        per = {k: v.reshape(len(prompt_list), -1) for k, v in sc.items()}
        if capped and all(capped):
            warnings.append(f"every reply of {name} hit --max-new-tokens {max_new_tokens}: the replies are cut off, "
                            "so length-like concepts cannot shift; raise --max-new-tokens")
        say(f"scored {name} ({len(flat_r)} replies)")
        return {"replies": reps, "scores": per}

    trained = []
    total = (1 + len(policies) if policies else 0) + len(rewards)
    with stage("evaluate", total=total, unit="models", enabled=progress) as bar:
        base_run = run(base_model, "base") if policies else None
        if policies:
            bar.advance(1, note="base done")
        for spec in policies:
            model, _, info = load_for_eval(spec, base)
            trained.append((info, run(model, info["name"])))
            del model
            warnings.extend(w for w in [training_overlap(prompt_list, info)] if w)
            bar.advance(1, note=f"{info['name']} done")
        doc = build_report(plan, base, base_run, trained, prompt_list, samples, max_new_tokens)
        if rewards:
            pairs = read_pairs(settings.prompts, settings.limit)
            prompts = [p for p, _, _ in pairs]
            chosen = scorer.score(prompts, [c for _, c, _ in pairs])
            rejected = scorer.score(prompts, [r for _, _, r in pairs])
            doc["pairs"] = len(pairs)
            doc["reward_models"] = []
            for spec in rewards:
                model, rtok, info = load_for_eval(spec, base)
                r = reward_scores(model, rtok, pairs, batch_size=batch_size)
                del model
                doc["reward_models"].append(reward_entry(plan, info, reward_stats(r, chosen, rejected, _scales(info))))
                warnings.extend(w for w in [training_overlap(prompts, info)] if w)
                say(f"scored reward model {info['name']} on {len(pairs)} held-out pairs")
                bar.advance(1, note=f"{info['name']} done")
    for m in doc["models"]:
        for row in m["concepts"]:
            if row.get("suspect"):
                warnings.append(f"{m['name']}: {row['concept']}: {row['suspect']}")
    doc["warnings"] = warnings
    return doc


def _scales(info: dict[str, Any]) -> dict[str, float | None]:
    stats = (info.get("train") or {}).get("concepts") or {}
    return {k: (v or {}).get("scale") for k, v in stats.items()}


def model_factors(plan: Any, info: dict[str, Any]) -> dict[str, float]:
    """The factors k a model was trained under, for its predictions k·α: none (every k = 1) for an
    unshaped control (``--no-shaping``), else the plan its ``ethos train`` run saved (plan.json in
    its folder), so models trained under different policies are each judged by their own; the
    ``--policy`` plan's for a plain model folder or a run without a saved plan."""
    train = info.get("train")
    if train and not train.get("shaping", True):
        return {}
    saved = Path(info["path"]) / "plan.json"
    if train and saved.is_file():
        from ethos.compiler.plan import load_plan

        try:
            return load_plan(saved.read_bytes()).factors()
        except Exception as e:  # noqa: BLE001 - a damaged plan.json is named, not a traceback
            raise EvaluateError(f"{saved}: unreadable plan ({e})") from e
    return plan.factors()


def reward_entry(plan: Any, info: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """A reward model's entry of the report: :func:`reward_stats` with, per concept, the plan's
    factor k, the training data's α and the prediction k·α (a reward trained on shaped data
    should have the slope the shaped data's α has); ``shaping`` False marks an unshaped control."""
    train = info.get("train") or {}
    factors = model_factors(plan, info)
    concepts = train.get("concepts") or {}
    rows = []
    for row in stats["concepts"]:
        alpha = (concepts.get(row["concept"]) or {}).get("alpha")
        k = factors.get(row["concept"], 1.0)
        rows.append({**row, "factor": k, "alpha": alpha,
                     "predicted": k * alpha if alpha is not None and math.isfinite(alpha) else None,
                     "significant": bool(row["ci"][0] is not None and (row["ci"][0] > 0 or row["ci"][1] < 0))})
    return {"name": info["name"], "path": info["path"], "shaping": bool(train.get("shaping", True)),
            "rules": train.get("rules", []), "n": stats["n"], "accuracy": stats["accuracy"],
            "accuracy_ci": stats["accuracy_ci"], "margin": stats["margin"], "concepts": rows}


def build_report(plan: Any, base: str, base_run: dict[str, Any] | None,
                 trained: list[tuple[dict[str, Any], dict[str, Any]]], prompts: Sequence[Any], samples: int,
                 max_new_tokens: int) -> dict[str, Any]:
    concepts = [c.name for c in plan.concepts]
    base_prompt = {k: np.nanmean(v, axis=1) for k, v in base_run["scores"].items()} if base_run else {}
    doc: dict[str, Any] = {
        "format": EVALUATE_FORMAT, "base": base, "policy": plan.policy, "prompts": len(prompts), "samples": samples,
        "max_new_tokens": max_new_tokens, "replies_per_prompt": 1 + samples,
        "base_means": {k: float(np.nanmean(v)) for k, v in base_prompt.items()},
        "models": [],
    }
    for info, run in trained:
        train = info.get("train", {})
        stats = train.get("concepts", {})
        factors = model_factors(plan, info)
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
            row = {
                "concept": name, "factor": k, "alpha": alpha, "predicted": predicted,
                "base": float(np.nanmean(base_prompt[name])), "model": float(np.nanmean(m)),
                "shift": float(np.nanmean(diff)), "ci": [lo, hi],
                "shift_sd": float(np.nanmean(diff)) / sd if sd else None, "sd": sd,
                "significant": bool(math.isfinite(lo) and (lo > 0 or hi < 0)),
            }
            finite_diff = diff[np.isfinite(diff)]
            if len(finite_diff) and not np.any(finite_diff):
                row["significant"] = False
                row["suspect"] = ("a shift of exactly 0 on every prompt: the model's replies score as the base's "
                                  "(identical or cut-off replies?), not a measured null")
            rows.append(row)
        cmp = compare_predictions([r["predicted"] if r["predicted"] is not None else float("nan") for r in rows],
                                  [r["shift_sd"] if r["shift_sd"] is not None else float("nan") for r in rows])
        doc["models"].append({"name": info["name"], "path": info["path"], "concepts": rows, "prediction": cmp,
                              "examples": [{"prompt": p[-1]["content"], "base": b[0], "model": r[0]}
                                           for p, b, r in list(zip(prompts, base_run["replies"], run["replies"]))[:3]]})
    return doc

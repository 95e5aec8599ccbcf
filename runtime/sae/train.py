"""SAE training with sae-lens: :func:`train_sae` fits a TopK (or BatchTopK) SAE with sae-lens's
``SAETrainer`` on the activation store; :func:`train_and_save` is ``ethos sae train``: read the
data (:mod:`.store`), run the model's truncated forward once to layer ``L`` into an activation
cache (keyed by model, layer, data and split, so another run with other hyper-parameters skips
the model), fit, and write the SAE in sae-lens format (``cfg.json`` + ``sae_weights.safetensors``,
bf16, hook ``model.layers.L``) with ``ethos-sae.json`` (provenance and held-out metrics).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ethos.compiler.names import DEFAULT_MODEL

from ..documents import SAE_META_FORMAT
from ..io import atomic_write_text
from ..device import resolve_device, to_float, to_numpy
from ..model import cache_root, check_layer, load_model, model_runtime, say
from ..progress import stage
from .load import META_FILE, SAEError, load_sae
from .metrics import evaluate
from .store import HOLDOUT, ActivationStore, activation_key, collect_activations, heldout_pairs, read_units


@dataclass
class TrainConfig:
    """The SAE's hyper-parameters: the one home of their defaults (``ethos sae train`` passes only
    the flags given)."""

    d_sae: int = 4096
    k: int = 32
    architecture: str = "topk"  # or "batchtopk"
    tokens: int = 2_000_000  # training samples (epochs over the cached activations as needed)
    batch_size: int = 4096
    lr: float = 4e-4
    warmup_frac: float = 0.02
    decay_frac: float = 0.2
    aux_loss_coefficient: float = 1.0 / 32
    dead_window_tokens: int = 400_000  # a latent idle this many tokens counts as dead (aux loss)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm."""
    m = x.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(1e-6)
        m = (w[:, None] * x).sum(dim=0) / w.sum()
    return m


def _batches(store: ActivationStore, cfg: TrainConfig, on_batch: Callable[[int], None]) -> Iterator[torch.Tensor]:
    """Endless shuffled float32 batches from the store (a new permutation every epoch)."""
    gen = np.random.default_rng(cfg.seed)
    data = store.array()
    while True:
        order = gen.permutation(store.n)
        # read in large sorted chunks (fast on a memmap), shuffle inside each chunk
        chunk = cfg.batch_size * 32
        for a in range(0, store.n - cfg.batch_size + 1, chunk):
            idx = np.sort(order[a : a + chunk])
            block = torch.from_numpy(np.ascontiguousarray(data[idx])).view(torch.bfloat16).float()
            block = block[torch.from_numpy(gen.permutation(block.shape[0]))]
            for b in range(0, block.shape[0] - cfg.batch_size + 1, cfg.batch_size):
                on_batch(cfg.batch_size)
                yield block[b : b + cfg.batch_size]


def train_sae(store: ActivationStore, cfg: TrainConfig, *, hook_name: str, model_name: str,
              device: torch.device | str | None = None) -> tuple[Any, dict[str, Any]]:
    """Fit a TopK (or BatchTopK) SAE with sae-lens's ``SAETrainer`` on the cached activations, on
    ``device`` (default: :func:`ethos.runtime.device.default_device`; batches are read from the
    store on the host and moved there by the trainer).

    Activations are scaled to mean norm sqrt(d_in) (sae-lens ``expected_average_only_in``; the
    factor is folded into the weights at the end), ``b_dec`` starts at their geometric median,
    and dead latents (idle for ``dead_window_tokens``) get the TopK auxiliary loss.
    """
    where = str(resolve_device(device))
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    if store.n < cfg.batch_size:
        raise SAEError(f"only {store.n} training tokens; need at least one batch of {cfg.batch_size}")
    meta = SAEMetadata(hook_name=hook_name, model_name=model_name, context_size=None)
    common = dict(
        d_in=store.d,
        d_sae=cfg.d_sae,
        k=cfg.k,
        normalize_activations="expected_average_only_in",
        aux_loss_coefficient=cfg.aux_loss_coefficient,
        metadata=meta,
        device=where,
    )
    if cfg.architecture == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    elif cfg.architecture == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common))
    else:
        raise SAEError(f"unknown architecture {cfg.architecture!r}: topk or batchtopk")

    # scaling factor and b_dec from a sample
    rng = np.random.default_rng(cfg.seed + 1)
    sample = store.rows(rng.choice(store.n, size=min(store.n, 50_000), replace=False)).to(where)
    scale = math.sqrt(store.d) / to_float(sample.norm(dim=-1).mean())
    with torch.no_grad():
        sae.b_dec.copy_(_geometric_median(sample[:20_000] * scale))

    steps = max(1, cfg.tokens // cfg.batch_size)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=int(steps * cfg.warmup_frac),
        lr_decay_steps=int(steps * cfg.decay_frac),
        dead_feature_window=max(1, cfg.dead_window_tokens // cfg.batch_size),
        feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=1,
        device=where,
    )
    losses: list[torch.Tensor] = []  # on the device; read once at the end
    bar = stage("sae train", total=steps * cfg.batch_size, unit="tok")
    data = _batches(store, cfg, lambda n: bar.advance(n))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)
    trainer.activation_scaler.scaling_factor = scale
    original_step = trainer.step

    def step(batch: torch.Tensor) -> Any:
        out = original_step(batch)
        losses.append(out.loss.detach())
        return out

    trainer.step = step  # type: ignore[method-assign]
    import sae_lens.training.sae_trainer as trainer_module

    plain_tqdm = trainer_module.tqdm
    trainer_module.tqdm = lambda *a, **kw: plain_tqdm(*a, **{**kw, "disable": True})  # rich shows progress
    t0 = time.perf_counter()
    try:
        with bar:
            trained = trainer.fit()
    finally:
        trainer_module.tqdm = plain_tqdm
    seconds = time.perf_counter() - t0
    stats = {
        "fit_seconds": round(seconds, 1),
        "steps": steps,
        "training_tokens": steps * cfg.batch_size,
        "unique_tokens": store.n,
        "epochs": round(steps * cfg.batch_size / store.n, 2),
        "final_loss": round(float(np.mean(to_numpy(torch.stack(losses[-20:])))), 5) if losses else None,
        "dead_at_end": int(to_float(trainer.dead_neurons.sum())),
        "scaling_factor": scale,
    }
    return trained, stats


def save_sae(sae: Any, folder: Path, *, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write ``sae`` in sae-lens inference format with weights in ``dtype`` (cfg says so)."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(sae, "save_inference_model"):
        sae.save_inference_model(str(folder))
    else:
        sae.save_model(str(folder))
    weights = folder / "sae_weights.safetensors"
    tensors = {k: v.to(dtype).contiguous() for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg["device"] = "cpu"
    atomic_write_text(folder / "cfg.json", json.dumps(cfg, indent=2, sort_keys=True))



def train_and_save(
    out: str | os.PathLike[str],
    data: Sequence[str | os.PathLike[str]],
    *,
    model: str = DEFAULT_MODEL,
    layer: int | None = None,
    config: TrainConfig | None = None,
    text_field: str | None = None,
    max_unique_tokens: int | None = None,
    holdout: int = HOLDOUT,
    activations: str | os.PathLike[str] | None = None,
    eval_tokens: int = 8000,
    eval_rows: int | None = None,
    force: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Train an SAE on ``data`` at ``layer`` of ``model`` and write it to ``out`` (atomically: built
    in ``.<out>.tmp`` and renamed); returns its ``ethos-sae.json`` record. ``max_unique_tokens``
    caps the distinct tokens read (a fixed-seed subset of the units); ``activations`` overrides
    the activation cache folder; ``eval_tokens`` held-out reply tokens (at most ``eval_rows``
    pairs) are evaluated at the end (0: none); ``command`` is recorded as run."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    cfg = config or TrainConfig()
    out = Path(out)
    paths = [Path(p) for p in data]
    if (out / "cfg.json").exists() and not force:
        raise SAEError(f"{out} already holds an SAE; pass --force to overwrite", exit_code=2)
    loaded, tokenizer, fingerprint = load_model(model)
    layer = check_layer(loaded.config, layer)
    torch.manual_seed(cfg.seed)
    units, sources = read_units(paths, tokenizer, holdout=holdout, text_field=text_field)
    if not units:
        raise SAEError("no training text in the data")
    # a fixed-seed subset when the data has more tokens than max_unique_tokens
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(units))
    if max_unique_tokens:
        chosen, total = [], 0
        for i in order:
            if total >= max_unique_tokens:
                break
            chosen.append(units[i])
            total += units[i].n_train()
        units = chosen
    for s in sources:
        say(f"{s.path}: {s.kind}, {s.rows} rows, {s.train_rows} for training, {s.tokens:,} tokens")
    key = activation_key(fingerprint, layer, sources, units, holdout)
    acts_dir = Path(activations) if activations else cache_root() / "sae-activations" / key
    runtime = model_runtime(loaded, tokenizer=tokenizer, layer=layer, fingerprint=fingerprint, name=model)
    store = ActivationStore.open(acts_dir)
    if store is None:
        say(f"reading layer {layer} activations of {sum(u.n_train() for u in units):,} tokens into {acts_dir}")
        store = collect_activations(runtime.encoder, units, acts_dir, info={"key": key, "model": fingerprint, "layer": layer})
        say(f"activations: {store.n:,} tokens in {store.info['seconds']} s ({store.info['tokens_per_s']:,} tok/s)")
    else:
        say(f"reusing cached activations in {acts_dir} ({store.n:,} tokens)")
    hook_name = f"model.layers.{layer}"
    model_name = model if model == DEFAULT_MODEL else Path(model).name
    sae, stats = train_sae(store, cfg, hook_name=hook_name, model_name=model_name, device=runtime.device)
    tmp = out.with_name(f".{out.name}.tmp")
    save_sae(sae, tmp)
    metrics: dict[str, Any] = {}
    eval_pairs = heldout_pairs(paths, holdout, eval_rows)
    if eval_pairs and eval_tokens > 0:
        metrics = evaluate(load_sae(tmp), runtime, eval_pairs, max_tokens=eval_tokens)
    meta = {
        "format_version": SAE_META_FORMAT,
        "model": {"name": model, "fingerprint": fingerprint},
        "layer": layer,
        "hook_name": hook_name,
        "data": [{"path": str(s.path), "sha256": s.sha256, "kind": s.kind, "rows": s.rows, "train_rows": s.train_rows,
                  "tokens": s.tokens} for s in sources],
        "holdout": {"rule": f"row index % {holdout} == 0 held out", "modulus": holdout},
        "activations": {"tokens": store.n, "seconds": store.info.get("seconds"),
                        "tokens_per_s": store.info.get("tokens_per_s"),
                        "norm_median": store.info.get("norm_median"), "norm_max": store.info.get("norm_max")},
        "train": cfg.to_dict() | stats,
        "metrics_heldout": metrics,
        "command": command,
    }
    atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    say(f"SAE written to {out} ({stats['fit_seconds']} s fit)")
    if metrics:
        say("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return meta

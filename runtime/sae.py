"""Sparse autoencoders on the residual stream: ``ethos sae train | eval | describe``.

- **train** reads local text (plain text, JSON Lines with a text field, or preference data:
  prompts and both replies through the chat template), runs the model's truncated forward once
  to layer ``L`` (bf16 where the CPU has it; no block after ``L`` runs), writes the activations to
  an on-disk cache (bf16, keyed by model, layer, data and split, so another run with other
  hyper-parameters skips the model), and fits a TopK SAE with sae-lens's ``SAETrainer`` fed from
  that cache. Excluded from training: position 0 of every sequence (the attention sink, whose
  norm is ~150x the others'), padding, the chat template's fixed preamble after its first
  occurrence, and the held-out rows (row index % ``holdout`` == 0; see :data:`HOLDOUT`). Output:
  sae-lens format (``cfg.json`` + ``sae_weights.safetensors``, bf16, hook ``model.layers.L``)
  plus ``ethos-sae.json`` (provenance and metrics).
- **eval** measures, on reply tokens: explained variance, mean L0, dead and dense latent
  fractions, and the increase in next-token cross-entropy when the reconstruction is spliced
  into the model at the layer (see :func:`evaluate`). When the eval file is one the SAE was
  trained on, only its held-out rows are used.
- **describe** labels latents by their top activating reply snippets and their top promoted
  tokens, and stores the labels with the SAE (``labels/<data sha256[:16]>.json``).

The audit's discovery reads every latent through :func:`reply_latents` (max- and mean-pooled
activations per reply, with each latent's peak) and labels them with :func:`promoted_tokens`;
:func:`pooled_latents` and :func:`describe_latents` are the same passes for other callers.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import heapq
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ethos.compiler.names import DEFAULT_MODEL, DEFAULT_SAE, LIBRARY_ROOT

from .io import atomic_write_text
from .model import _say, sha256_file

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2

HOLDOUT = 10
"""Rows whose 0-based index is a multiple of ``HOLDOUT`` are never trained on; ``eval`` uses them
when it is given a file the SAE was trained on."""
DENSE_THRESHOLD = 0.10
"""A latent is *dense* when it fires on more than this fraction of the eval tokens."""
SHIPPED_DEFAULT = LIBRARY_ROOT / "saes" / DEFAULT_SAE
"""The default SAE shipped in the repository (SmolLM2-135M-Instruct, layer 15)."""
META_FILE = "ethos-sae.json"
LABELS_DIR = "labels"
TEXT_FIELDS = ("text", "content", "question", "instruction", "prompt", "response", "output")
_TEXT_SUFFIXES = (".txt", ".md", ".text")
MARK_OPEN, MARK_CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧


class SAEError(Exception):
    """An SAE cannot be trained, found or used as asked; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------
# Finding and loading SAEs


def find_sae(name: str | os.PathLike[str]) -> Path:
    """An SAE folder from a path or a name (``default`` included, which falls back to the
    shipped default), via the features lens's :func:`resolve_sae`."""
    from .lenses import LensError
    from .lenses.features import resolve_sae

    try:
        return resolve_sae(os.fspath(name))  # "default" falls back to the shipped SAE there
    except LensError as exc:
        raise SAEError(str(exc)) from None


def load_sae(folder: str | os.PathLike[str], *, device: str = "cpu") -> Any:
    """The SAE in ``folder`` (or named so), in float32, in eval mode (weights may be stored bf16)."""
    from sae_lens import SAE

    path = find_sae(folder)
    try:
        sae = SAE.load_from_disk(path, device=device, dtype="float32")
    except (OSError, ValueError, KeyError) as exc:
        raise SAEError(f"{path}: cannot load the SAE: {exc}") from None
    return sae.eval()


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def sae_layer(sae: Any) -> int | None:
    from .model import layer_of_hook

    return layer_of_hook(getattr(sae.cfg.metadata, "hook_name", None))


def _runtime_for(sae: Any, model: str, runtime: Any, batch_size: int = 8) -> Any:
    """A :class:`ModelRuntime` at the SAE's layer: the one given (checked) or a freshly loaded one."""
    from .model import Encoder, ModelRuntime, load_model

    layer = sae_layer(sae)
    if runtime is not None:
        if layer is not None and runtime.layer != layer:
            raise SAEError(f"the SAE reads layer {layer}, the model runtime reads layer {runtime.layer}")
        if runtime.encoder.d_model != sae.cfg.d_in:
            raise SAEError(f"the SAE has d_in {sae.cfg.d_in}, the model's layer has {runtime.encoder.d_model}")
        return runtime
    loaded, tokenizer, fingerprint = load_model(model)
    if layer is None:
        from .model import default_layer

        layer = default_layer(loaded.config)
    if int(loaded.config.hidden_size) != sae.cfg.d_in:
        raise SAEError(f"the SAE has d_in {sae.cfg.d_in}, model {model} has d_model {loaded.config.hidden_size}")
    encoder = Encoder(loaded, layer, pad_id=tokenizer.pad_token_id)
    return ModelRuntime(encoder=encoder, tokenizer=tokenizer, fingerprint=fingerprint, name=str(model), batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# Training data: files → token sequences


@dataclass(frozen=True)
class Unit:
    """One training unit: a prompt (or a text chunk) and the continuations that follow it.

    Trained on: ``prompt[skip:]`` and every continuation's tokens. ``row`` is the input row's
    0-based index (the held-out split is decided on it)."""

    prompt: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    skip: int
    row: int

    def n_train(self) -> int:
        return max(0, len(self.prompt) - self.skip) + sum(len(c) for c in self.continuations)


@dataclass
class Source:
    path: Path
    sha256: str
    kind: str  # "preference" | "text"
    rows: int
    train_rows: int = 0
    tokens: int = 0


def _text_rows(path: Path, field_name: str | None) -> list[str]:
    """Texts of a JSON Lines / JSON array file (a text field) or a plain-text file (paragraphs)."""
    name = path.name.lower()
    if name.endswith(_TEXT_SUFFIXES):
        text = path.read_text(encoding="utf-8", errors="replace")
        return [p.strip() for p in text.split("\n\n") if p.strip()]
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        raw = f.read()
    try:
        value = json.loads(raw)
        rows = value if isinstance(value, list) else [value]
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    texts: list[str] = []
    for row in rows:
        if isinstance(row, str):
            texts.append(row)
            continue
        if not isinstance(row, dict):
            texts.append("")
            continue
        keys = [field_name] if field_name else [k for k in TEXT_FIELDS if isinstance(row.get(k), str)]
        parts = [row[k] for k in keys if isinstance(row.get(k), str)]
        texts.append("\n\n".join(p for p in parts if p.strip()))
    if field_name is None and texts and not any(texts):
        raise SAEError(f"{path}: no text field found (looked for {', '.join(TEXT_FIELDS)}); pass --text-field")
    return texts


def read_units(
    paths: Sequence[Path],
    tokenizer: Any,
    *,
    holdout: int = HOLDOUT,
    split: str = "train",
    text_field: str | None = None,
    context: int = 512,
    limit: int | None = None,
    both_replies: bool = False,
) -> tuple[list[Unit], list[Source]]:
    """Token units of the ``split`` (``train``: rows not held out; ``heldout``; ``all``) of each
    file. Preference data (any format :func:`load_pairs` recognises) gives the prompt and one
    reply through the chat template (the chosen reply in even rows, the rejected one in odd rows:
    every position the model runs is then trained on, where both replies would run the prompt
    twice), or with ``both_replies`` a unit of the prompt and both replies (its KV cache shared);
    anything else is read as text and cut into ``context``-token chunks, each starting with BOS
    (when the tokenizer has one). Sequences are cut to ``context`` tokens (prompts from the left)."""
    from .data import DataError, load_pairs
    from .model import tokenize_pair

    def wanted(row: int) -> bool:
        if split == "all" or holdout <= 0:
            return True
        held = row % holdout == 0
        return held if split == "heldout" else not held

    units: list[Unit] = []
    sources: list[Source] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    for path in paths:
        if not path.exists():
            raise SAEError(f"{path}: no such file or directory")
        digest = sha256_file(path) if path.is_file() else ""
        pairs = None
        if not path.name.lower().endswith(_TEXT_SUFFIXES):
            try:
                pairs = load_pairs(path, limit=limit).pairs
            except DataError:
                pairs = None
        before = len(units)
        if pairs is not None:
            src = Source(path, digest, "preference", len(pairs))
            for p in pairs:
                row = int(p.id)
                if not wanted(row):
                    continue
                if both_replies:
                    pt = tokenize_pair(tokenizer, p.prompt, [p.chosen, p.rejected], max_tokens=context)
                    units.append(Unit(pt.prompt, pt.continuations, 1, row))
                else:  # one reply per pair, alternating: every position run is trained on
                    reply = p.chosen if row % 2 == 0 else p.rejected
                    pt = tokenize_pair(tokenizer, p.prompt, [reply], max_tokens=context)
                    units.append(Unit(pt.prompt + pt.continuations[0], (), 1, row))
        else:
            try:
                texts = _text_rows(path, text_field)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise SAEError(f"{path}: cannot read text: {exc}") from None
            if limit is not None:
                texts = texts[:limit]
            src = Source(path, digest, "text", len(texts))
            step = context - (1 if bos is not None else 0)
            for row, text in enumerate(texts):
                if not text or not wanted(row):
                    continue
                ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                for k in range(0, len(ids), step):
                    chunk = ([bos] if bos is not None else []) + ids[k : k + step]
                    if len(chunk) > 1:
                        units.append(Unit(tuple(chunk), (), 1, row))
        units[before:] = _skip_shared_preamble(units[before:])
        src.train_rows = len({u.row for u in units[before:]})
        src.tokens = sum(u.n_train() for u in units[before:])
        sources.append(src)
    return units, sources


def _skip_shared_preamble(units: list[Unit]) -> list[Unit]:
    """A chat template's fixed preamble (e.g. SmolLM2's default system prompt) is the same tokens
    in every prompt of a file: train on it once (in the file's first unit), not in every row."""
    units = list(units)
    prompts = [u.prompt for u in units]
    if len(prompts) < 2:
        return units
    from collections import Counter

    head, count = Counter(p[:4] for p in prompts).most_common(1)[0]
    if count < len(prompts) / 2:
        return units
    group = [p for p in prompts if p[:4] == head]
    common = min(len(p) for p in group)
    first = group[0]
    for p in group[1:]:
        n = 0
        while n < common and p[n] == first[n]:
            n += 1
        common = n
    preamble = first[:common]
    seen = False
    for i, u in enumerate(units):
        if u.prompt[:common] != preamble:
            continue
        if seen and common > u.skip:
            units[i] = Unit(u.prompt, u.continuations, min(common, len(u.prompt) - 1), u.row)
        seen = True
    return units


# ---------------------------------------------------------------------------------------------
# Activations: the truncated forward, prompt shared by its continuations


def unit_activations(encoder: Any, units: Sequence[Unit]) -> list[torch.Tensor]:
    """Residual activations (native dtype) of each unit's trained tokens, one (n, d) tensor each.

    Units with continuations run their prompt once (its KV cache repeated for each continuation);
    text chunks run as plain rows.
    """
    out: list[torch.Tensor] = [torch.empty(0)] * len(units)
    plain = [i for i, u in enumerate(units) if not u.continuations]
    shared = [i for i, u in enumerate(units) if u.continuations]
    if plain:
        ids, mask = encoder._pad([units[i].prompt for i in plain])
        h = encoder.hidden(ids, mask)
        for row, i in enumerate(plain):
            u = units[i]
            out[i] = h[row, u.skip : len(u.prompt)].clone()
    # group shared units by their number of continuations (a batch repeats the cache n times)
    by_n: dict[int, list[int]] = {}
    for i in shared:
        by_n.setdefault(len(units[i].continuations), []).append(i)
    for n, idx in by_n.items():
        from transformers import DynamicCache

        p_ids, p_mask = encoder._pad([units[i].prompt for i in idx])
        cache = DynamicCache()
        hp = encoder.hidden(p_ids, p_mask, cache=cache)
        if n > 1:
            cache.batch_repeat_interleave(n)
        rows = [list(c) for i in idx for c in units[i].continuations]
        r_ids, r_mask = encoder._pad(rows)
        p_len = p_mask.sum(dim=1).repeat_interleave(n)
        positions = p_len[:, None] + torch.arange(r_ids.shape[1], device=encoder.device)[None, :]
        mask = torch.cat([p_mask.repeat_interleave(n, dim=0), r_mask], dim=1)
        hc = encoder.hidden(r_ids, mask, position_ids=positions, cache=cache)
        for b, i in enumerate(idx):
            u = units[i]
            parts = [hp[b, u.skip : len(u.prompt)]]
            parts += [hc[b * n + j, : len(c)] for j, c in enumerate(u.continuations)]
            out[i] = torch.cat(parts).clone()
    return out


def _unit_batches(units: Sequence[Unit], max_tokens: int, group: int = 16) -> Iterator[list[int]]:
    """Indices of ``units`` in batches of at most ~``max_tokens`` padded positions (prompt rows +
    continuation rows), with little padding: units sorted by prompt length, then, within groups
    of ``group``, by continuation length."""
    def cont(i: int) -> int:
        return max((len(c) for c in units[i].continuations), default=0)

    by_prompt = sorted(range(len(units)), key=lambda i: len(units[i].prompt))
    order = [i for g in range(0, len(by_prompt), group) for i in sorted(by_prompt[g : g + group], key=cont)]
    batch: list[int] = []
    tp = tc = 0
    for i in order:
        u = units[i]
        n = len(u.continuations)
        ntp, ntc = max(tp, len(u.prompt)), max(tc, cont(i))
        if batch and (len(batch) + 1) * (ntp + n * ntc) > max_tokens:
            yield batch
            batch, ntp, ntc = [], len(u.prompt), cont(i)
        batch.append(i)
        tp, tc = ntp, ntc
    if batch:
        yield batch


def _progress(total: int, label: str, unit: str = "tok") -> Any:
    """A rich progress bar on stderr with a rate column (tokens/s)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"? {unit}/s")

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
        disable=bool(os.environ.get("ETHOS_NO_PROGRESS")),
    )
    progress.start()
    task = progress.add_task(label, total=total)
    return progress, task


@dataclass
class ActivationStore:
    """Activations on disk: ``acts.bin`` (bf16 rows of ``d`` values) and ``acts.json``."""

    folder: Path
    n: int
    d: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / "acts.bin"

    def array(self) -> np.ndarray:
        """A read-only memmap of the raw bf16 bits (int16), shape (n, d)."""
        return np.memmap(self.path, dtype=np.int16, mode="r", shape=(self.n, self.d))

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """Rows ``index`` as float32."""
        bits = torch.from_numpy(np.ascontiguousarray(self.array()[np.sort(index)]))
        return bits.view(torch.bfloat16).float()

    @classmethod
    def open(cls, folder: Path) -> "ActivationStore | None":
        try:
            info = json.loads((folder / "acts.json").read_text())
        except (OSError, ValueError):
            return None
        if not info.get("complete") or not (folder / "acts.bin").is_file():
            return None
        return cls(folder, int(info["n"]), int(info["d"]), info)


def collect_activations(
    encoder: Any,
    units: Sequence[Unit],
    folder: Path,
    *,
    info: dict[str, Any],
    batch_tokens: int = 4096,
) -> ActivationStore:
    """Run the truncated forward over ``units`` and append their activations (bf16) to
    ``folder/acts.bin``; ``acts.json`` is written last (``complete``), so an interrupted run is
    redone, never half-used."""
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(u.n_train() for u in units)
    n = 0
    norms: list[torch.Tensor] = []
    progress, task = _progress(total, "activations")
    t0 = time.perf_counter()
    try:
        with open(folder / "acts.bin.part", "wb") as f:
            for batch in _unit_batches(units, batch_tokens):
                acts = unit_activations(encoder, [units[i] for i in batch])
                block = torch.cat([a for a in acts if a.numel()]).to(torch.bfloat16)
                norms.append(block.float().norm(dim=-1))
                f.write(block.view(torch.int16).numpy().tobytes())
                n += block.shape[0]
                progress.update(task, advance=block.shape[0])
    finally:
        progress.stop()
    seconds = time.perf_counter() - t0
    os.replace(folder / "acts.bin.part", folder / "acts.bin")
    all_norms = torch.cat(norms) if norms else torch.zeros(1)
    q = torch.quantile(all_norms[torch.randperm(all_norms.numel())[:200_000]], torch.tensor([0.5, 0.99, 0.999]))
    record = dict(info, n=n, d=encoder.d_model, seconds=round(seconds, 1), tokens_per_s=round(n / max(seconds, 1e-9)),
                  norm_median=float(q[0]), norm_p99=float(q[1]), norm_p999=float(q[2]), norm_max=float(all_norms.max()),
                  complete=True)
    atomic_write_text(folder / "acts.json", json.dumps(record, indent=2))
    return ActivationStore(folder, n, encoder.d_model, record)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
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


def train_sae(store: ActivationStore, cfg: TrainConfig, *, hook_name: str, model_name: str) -> tuple[Any, dict[str, Any]]:
    """Fit a TopK (or BatchTopK) SAE with sae-lens's ``SAETrainer`` on the cached activations.

    Activations are scaled to mean norm sqrt(d_in) (sae-lens ``expected_average_only_in``; the
    factor is folded into the weights at the end), ``b_dec`` starts at their geometric median,
    and dead latents (idle for ``dead_window_tokens``) get the TopK auxiliary loss.
    """
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
    )
    if cfg.architecture == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    elif cfg.architecture == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common))
    else:
        raise SAEError(f"unknown architecture {cfg.architecture!r}: topk or batchtopk")

    # scaling factor and b_dec from a sample
    rng = np.random.default_rng(cfg.seed + 1)
    sample = store.rows(rng.choice(store.n, size=min(store.n, 50_000), replace=False))
    scale = math.sqrt(store.d) / float(sample.norm(dim=-1).mean())
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
    )
    progress, task = _progress(steps * cfg.batch_size, "training")
    losses: list[float] = []
    data = _batches(store, cfg, lambda n: progress.update(task, advance=n))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)
    trainer.activation_scaler.scaling_factor = scale
    original_step = trainer.step

    def step(batch: torch.Tensor) -> Any:
        out = original_step(batch)
        losses.append(float(out.loss.detach()))
        return out

    trainer.step = step  # type: ignore[method-assign]
    import sae_lens.training.sae_trainer as trainer_module

    plain_tqdm = trainer_module.tqdm
    trainer_module.tqdm = lambda *a, **kw: plain_tqdm(*a, **{**kw, "disable": True})  # rich shows progress
    t0 = time.perf_counter()
    try:
        trained = trainer.fit()
    finally:
        trainer_module.tqdm = plain_tqdm
        progress.stop()
    seconds = time.perf_counter() - t0
    stats = {
        "fit_seconds": round(seconds, 1),
        "steps": steps,
        "training_tokens": steps * cfg.batch_size,
        "unique_tokens": store.n,
        "epochs": round(steps * cfg.batch_size / store.n, 2),
        "final_loss": round(float(np.mean(losses[-20:])), 5) if losses else None,
        "dead_at_end": int(trainer.dead_neurons.sum()),
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


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class _EvalAccumulator:
    d_in: int
    d_sae: int
    n: int = 0
    sse: float = 0.0
    sum_x: torch.Tensor | None = None
    sum_sq: float = 0.0
    l0_sum: float = 0.0
    fires: torch.Tensor | None = None
    ce_clean: float = 0.0
    ce_spliced: float = 0.0
    ce_n: int = 0

    def add(self, x: torch.Tensor, z: torch.Tensor, x_hat: torch.Tensor) -> None:
        if self.sum_x is None:
            self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
            self.fires = torch.zeros(self.d_sae, dtype=torch.float64)
        x64 = x.double()
        self.n += x.shape[0]
        self.sse += float((x64 - x_hat.double()).pow(2).sum())
        self.sum_x += x64.sum(dim=0)
        self.sum_sq += float(x64.pow(2).sum())
        active = z > 0
        self.l0_sum += float(active.sum())
        self.fires += active.sum(dim=0).double()

    def result(self) -> dict[str, Any]:
        if self.n == 0 or self.sum_x is None or self.fires is None:
            raise SAEError("no reply tokens to evaluate on")
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n
        freq = self.fires / self.n
        out = {
            "explained_variance": 1.0 - self.sse / total_var if total_var > 0 else float("nan"),
            "mse": self.sse / self.n,
            "l0": self.l0_sum / self.n,
            "dead_fraction": float((freq == 0).double().mean()),
            "dense_fraction": float((freq > DENSE_THRESHOLD).double().mean()),
            "tokens": self.n,
        }
        if self.ce_n:
            out.update(
                ce_clean=self.ce_clean / self.ce_n,
                ce_spliced=self.ce_spliced / self.ce_n,
                ce_increase=(self.ce_spliced - self.ce_clean) / self.ce_n,
                ce_tokens=self.ce_n,
            )
        return out


@torch.inference_mode()
def evaluate(
    sae: Any,
    runtime: Any,
    pairs: Sequence[Any],
    *,
    max_tokens: int | None = None,
    splice: bool = True,
    progress: bool = True,
    context: int = 512,
) -> dict[str, Any]:
    """Reconstruction and downstream metrics of ``sae`` on the reply tokens of ``pairs``.

    - explained variance = 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖² over all reply tokens (x̄ their mean);
    - ``l0`` = mean number of active latents per token;
    - ``dead_fraction``: latents that never fire on these tokens; ``dense_fraction``: latents that
      fire on more than ``DENSE_THRESHOLD`` (10%) of them;
    - ``ce_increase`` (nats): the mean next-token cross-entropy of the predictions made *at* the
      reply tokens (each reply token predicting the one after it, the last predicting the
      end-of-turn marker), with the layer's output at every reply token replaced by
      ``sae.decode(sae.encode(x))``, minus the same without the replacement. The prompt runs once
      (clean; its KV cache is shared) and the clean and spliced continuations run in one batch.

    Each prompt + reply is cut to ``context`` tokens (long prompts lose their oldest turns);
    ``max_tokens`` evaluates a fixed-seed random subset of the pairs holding about that many reply
    tokens.
    """
    from transformers import DynamicCache

    from .model import length_batches, tokenize_pair

    encoder = runtime.encoder
    model = encoder.model
    decoder = encoder.decoder
    head = model.get_output_embeddings()
    acc = _EvalAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    items = [tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected], max_tokens=context) for p in pairs]
    if max_tokens is not None:  # a fixed-seed random subset of pairs with about max_tokens reply tokens
        subset, count = [], 0
        for i in np.random.default_rng(0).permutation(len(items)):
            if count >= max_tokens:
                break
            subset.append(items[i])
            count += sum(b - a for a, b in items[i].spans)
        items = subset
    total = sum(b - a for it in items for a, b in it.spans)
    bar = _progress(total, "eval") if progress else None
    state: dict[str, Any] = {}

    def hook(_module: Any, _args: Any, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        sel = state.get("select")
        if sel is None:
            return None
        rows_clean, pos_clean, rows_splice, pos_splice = sel
        x = h[rows_clean, pos_clean].float()
        z = sae.encode(x)
        x_hat = sae.decode(z)
        acc.add(x, z, x_hat)
        if splice:
            h = h.clone()
            h[rows_splice, pos_splice] = x_hat.to(h.dtype)
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return None

    handle = encoder.block.register_forward_hook(hook)
    try:
        for batch in length_batches(items, runtime.batch_size):
            its = [items[i] for i in batch]
            if any(not it.prompt for it in its):
                continue
            n = len(its[0].continuations)
            copies = 2 * n if splice else n
            state["select"] = None
            p_ids, p_mask = encoder._pad([it.prompt for it in its])
            cache = DynamicCache()
            decoder(input_ids=p_ids, attention_mask=p_mask, use_cache=True, **{encoder._cache_kw: cache})
            cache.batch_repeat_interleave(copies)
            rows = []
            for it in its:
                rows += [list(c) for c in it.continuations] * (2 if splice else 1)
            r_ids, r_mask = encoder._pad(rows)
            p_len = p_mask.sum(dim=1).repeat_interleave(copies)
            positions = p_len[:, None] + torch.arange(r_ids.shape[1], device=encoder.device)[None, :]
            mask = torch.cat([p_mask.repeat_interleave(copies, dim=0), r_mask], dim=1)
            rc, pc, rs, ps = [], [], [], []
            for b, it in enumerate(its):
                for j, (a, e) in enumerate(it.spans):
                    span = list(range(a, e))
                    rc += [b * copies + j] * len(span)
                    pc += span
                    if splice:
                        rs += [b * copies + n + j] * len(span)
                        ps += span
            if not pc:
                continue
            t = torch.tensor
            state["select"] = (t(rc), t(pc), t(rs), t(ps))
            out = decoder(input_ids=r_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          **{encoder._cache_kw: cache})
            state["select"] = None
            if splice:
                hidden = out.last_hidden_state
                # predictions at reply positions whose next token exists in the continuation
                keep = [(r, p) for r, p in zip(rc, pc) if p + 1 < len(rows[r])]
                if keep:
                    kr = t([r for r, _ in keep])
                    kp = t([p for _, p in keep])
                    targets = r_ids[kr, kp + 1]
                    logits_c = head(hidden[kr, kp]).float()
                    sr = kr + n  # the spliced copy of the same row
                    logits_s = head(hidden[sr, kp]).float()
                    ce = torch.nn.functional.cross_entropy
                    acc.ce_clean += float(ce(logits_c, targets, reduction="sum"))
                    acc.ce_spliced += float(ce(logits_s, targets, reduction="sum"))
                    acc.ce_n += len(keep)
            if bar is not None:
                bar[0].update(bar[1], completed=min(acc.n, total))
    finally:
        handle.remove()
        if bar is not None:
            bar[0].stop()
    return acc.result()


# ---------------------------------------------------------------------------------------------
# Pooled latents and labels: what the audit uses


@torch.inference_mode()
def _reply_latents(
    sae: Any, runtime: Any, pairs: Sequence[Any], visit: Callable[[int, list[torch.Tensor], list[Any]], None], progress: bool
) -> None:
    """For each batch: ``visit(batch_start_index_list, z per reply (tokens, d_sae), items)``."""
    from .model import length_batches, tokenize_pair

    items = [tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected], max_tokens=runtime.max_tokens) for p in pairs]
    bar = _progress(len(items), "latents", unit="pairs") if progress else None
    try:
        for batch in length_batches(items, runtime.batch_size):
            acts = runtime.encoder.encode_batch([items[i] for i in batch])
            flat = [a for per in acts for a in per]
            lengths = [a.shape[0] for a in flat]
            z = sae.encode(torch.cat(flat).float()) if sum(lengths) else torch.zeros(0, sae.cfg.d_sae)
            parts = list(torch.split(z, lengths))
            for k, i in enumerate(batch):
                visit(i, parts[2 * k : 2 * k + 2], items[i])
            if bar is not None:
                bar[0].update(bar[1], advance=len(batch))
    finally:
        if bar is not None:
            bar[0].stop()


@dataclass
class ReplyLatents:
    """Every latent of an SAE pooled over each reply's tokens (BOS, template markup and prompt
    never included; an empty reply pools to 0). Arrays are (n_pairs, d_sae); each pair of them is
    ``(chosen, rejected)``. ``peak`` (where each latent's max is, an index into the reply's own
    tokens) and ``tokens`` (those token ids) are filled when asked for."""

    max: tuple[np.ndarray, np.ndarray]
    mean: tuple[np.ndarray, np.ndarray]
    peak: tuple[np.ndarray, np.ndarray] | None
    tokens: tuple[list[list[int]], list[list[int]]] | None


def reply_latents(sae: Any, runtime: Any, pairs: Sequence[Any], *, peaks: bool = False, progress: bool = False) -> ReplyLatents:
    """Max- and mean-pooled latents of every reply in one pass over the data (and, with
    ``peaks``, where each max is and the replies' token ids: what snippet labels need)."""
    n, d = len(pairs), sae.cfg.d_sae
    mx = (np.zeros((n, d), np.float32), np.zeros((n, d), np.float32))
    mean = (np.zeros((n, d), np.float32), np.zeros((n, d), np.float32))
    peak = (np.zeros((n, d), np.int32), np.zeros((n, d), np.int32)) if peaks else None
    toks: tuple[list[list[int]], list[list[int]]] | None = ([[] for _ in range(n)], [[] for _ in range(n)]) if peaks else None

    def visit(i: int, zs: list[torch.Tensor], item: Any) -> None:
        for side, z in enumerate(zs):
            if toks is not None:
                a, b = item.spans[side]
                toks[side][i] = list(item.continuations[side][a:b])
            if z.shape[0]:
                values, where = z.max(dim=0)
                mx[side][i] = values.numpy()
                mean[side][i] = z.mean(dim=0).numpy()
                if peak is not None:
                    peak[side][i] = where.numpy().astype(np.int32)

    _reply_latents(sae, runtime, pairs, visit, progress)
    return ReplyLatents(mx, mean, peak, toks)


def pooled_latents_both(
    sae_folder: str | os.PathLike[str],
    pairs: Sequence[Any],
    *,
    model: str = DEFAULT_MODEL,
    runtime: Any = None,
    progress: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"max": (chosen, rejected), "mean": (chosen, rejected)}``, each an (n_pairs, d_sae)
    float32 array of a latent's max / mean activation over the reply's tokens (see
    :class:`ReplyLatents`). One pass over the data."""
    sae = load_sae(sae_folder)
    got = reply_latents(sae, _runtime_for(sae, model, runtime), pairs, progress=progress)
    return {"max": got.max, "mean": got.mean}


def pooled_latents(
    sae_folder: str | os.PathLike[str],
    pairs: Sequence[Any],
    *,
    pool: str = "max",
    model: str = DEFAULT_MODEL,
    runtime: Any = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(chosen, rejected)``: (n_pairs, d_sae) float32 arrays of each latent pooled (``max`` or
    ``mean``) over each reply's tokens. See :func:`pooled_latents_both` for both at once."""
    if pool not in ("max", "mean"):
        raise SAEError(f"pool must be 'max' or 'mean', not {pool!r}")
    return pooled_latents_both(sae_folder, pairs, model=model, runtime=runtime, progress=progress)[pool]


def _readable(tokenizer: Any, token_id: int) -> str | None:
    """The token as text, or None for partial UTF-8 bytes, bare whitespace and special tokens."""
    text = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token_id)]).strip()
    ok = text and "\ufffd" not in text and text.isprintable() and token_id not in getattr(tokenizer, "all_special_ids", ())
    return text if ok else None


def promoted_tokens(
    sae: Any, model: Any, tokenizer: Any, latents: Sequence[int], k: int = 8, *, readable: bool = False
) -> dict[int, list[str]]:
    """The ``k`` tokens each latent's decoder row promotes most: ``W_U @ (g * W_dec[i])``, with
    ``g`` the final norm's gain (the unembedding reads the normed residual). ``readable``: skip
    tokens that print as nothing useful (partial UTF-8, whitespace, specials) and strip the rest."""
    head = model.get_output_embeddings().weight.detach().float().cpu()  # (vocab, d)
    rows = sae.W_dec.detach().float().cpu()[list(latents)]
    norm = getattr(getattr(model, "model", model), "norm", None)
    gain = getattr(norm, "weight", None)
    if gain is not None and gain.shape[-1] == rows.shape[-1]:
        rows = rows * gain.detach().float().cpu()
    with torch.inference_mode():
        top = (rows @ head.T).topk(min(head.shape[0], 8 * k if readable else k), dim=-1).indices
    out: dict[int, list[str]] = {}
    for r, i in enumerate(latents):
        if not readable:
            out[int(i)] = [tokenizer.decode([int(t)]) for t in top[r]]
            continue
        words = [w for w in (_readable(tokenizer, int(t)) for t in top[r]) if w]
        out[int(i)] = words[:k]
    return out


def _snippet(tokenizer: Any, ids: Sequence[int], acts: torch.Tensor, peak: int, window: int = 12) -> str:
    """The reply text around ``peak`` with the tokens where the latent fires in ⟦ ⟧."""
    a, b = max(0, peak - window), min(len(ids), peak + window + 1)
    out: list[str] = []
    inside = False
    for t in range(a, b):
        on = bool(acts[t] > 0)
        piece = tokenizer.decode([int(ids[t])])
        if on and not inside:
            out.append(MARK_OPEN)
        if not on and inside:
            out.append(MARK_CLOSE)
        inside = on
        out.append(piece)
    if inside:
        out.append(MARK_CLOSE)
    text = "".join(out).replace("\n", "\\n")
    return ("…" if a > 0 else "") + text + ("…" if b < len(ids) else "")


def describe_latents(
    sae_folder: str | os.PathLike[str],
    pairs: Sequence[Any],
    latents: Sequence[int] | None = None,
    k_snippets: int = 3,
    k_tokens: int = 8,
    *,
    model: str = DEFAULT_MODEL,
    runtime: Any = None,
    progress: bool = False,
) -> dict[int, dict[str, Any]]:
    """Labels of ``latents`` (all when None): ``{i: {"snippets": [...], "tokens": [...],
    "max_activation": float, "frequency": float, "pairs": [ids]}}``.

    Snippets are the replies where the latent's activation peaks highest (one per reply, chosen
    or rejected), each cut to a window around the peak with firing tokens in ⟦ ⟧; ``frequency``
    is the fraction of reply tokens on which it fires; ``tokens`` are its top promoted tokens.
    """
    sae = load_sae(sae_folder)
    runtime = _runtime_for(sae, model, runtime)
    d = sae.cfg.d_sae
    ids = list(range(d)) if latents is None else [int(i) for i in latents]
    for i in ids:
        if not 0 <= i < d:
            raise SAEError(f"latent {i} is out of range (d_sae {d})")
    idx = torch.tensor(ids, dtype=torch.long)
    heaps: list[list[tuple[float, int, int, int]]] = [[] for _ in ids]  # (act, pair, side, peak)
    fires = torch.zeros(len(ids), dtype=torch.float64)
    tokens = 0
    keep: dict[tuple[int, int], tuple[tuple[int, ...], torch.Tensor]] = {}

    def visit(i: int, zs: list[torch.Tensor], item: Any) -> None:
        nonlocal tokens
        for side, z in enumerate(zs):
            if not z.shape[0]:
                continue
            sub = z[:, idx]
            tokens += sub.shape[0]
            fires.add_((sub > 0).sum(dim=0).double())
            peak_vals, peak_pos = sub.max(dim=0)
            for r in torch.nonzero(peak_vals > 0).flatten().tolist():
                entry = (float(peak_vals[r]), i, side, int(peak_pos[r]))
                h = heaps[r]
                if len(h) < k_snippets:
                    heapq.heappush(h, entry)
                elif entry > h[0]:
                    heapq.heapreplace(h, entry)

    _reply_latents(sae, runtime, pairs, visit, progress)
    # second pass only over the replies that made some latent's top list: their token activations
    needed_set = {(e[1], e[2]) for h in heaps for e in h}
    needed = sorted(needed_set)
    if needed:
        from .model import tokenize_pair

        by_pair: dict[int, Any] = {}
        for pi in sorted({p for p, _ in needed}):
            p = pairs[pi]
            by_pair[pi] = tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected], max_tokens=runtime.max_tokens)
        order = sorted(by_pair)
        with torch.inference_mode():
            for a in range(0, len(order), runtime.batch_size):
                chunk = order[a : a + runtime.batch_size]
                acts = runtime.encoder.encode([by_pair[pi] for pi in chunk], batch_size=runtime.batch_size)
                for pi, per in zip(chunk, acts):
                    for side in (0, 1):
                        if (pi, side) in needed_set:
                            it = by_pair[pi]
                            s0, s1 = it.spans[side]
                            z = sae.encode(per[side].float())[:, idx] if per[side].shape[0] else torch.zeros(0, len(ids))
                            keep[(pi, side)] = (it.continuations[side][s0:s1], z)
    tok = promoted_tokens(sae, runtime.encoder.model, runtime.tokenizer, ids, k_tokens)
    out: dict[int, dict[str, Any]] = {}
    for r, i in enumerate(ids):
        best = sorted(heaps[r], reverse=True)
        snippets = []
        for act, pi, side, peak in best:
            reply_ids, z = keep[(pi, side)]
            snippets.append(_snippet(runtime.tokenizer, reply_ids, z[:, r], peak))
        out[i] = {
            "snippets": snippets,
            "tokens": tok[i],
            "max_activation": best[0][0] if best else 0.0,
            "frequency": float(fires[r] / tokens) if tokens else 0.0,
            "pairs": [f"{pairs[pi].id}:{'chosen' if side == 0 else 'rejected'}" for _, pi, side, _ in best],
        }
    return out


def _labels_dirs(sae_folder: Path) -> list[Path]:
    """Where labels of an SAE live: ``<sae>/labels/``, except for SAEs shipped in the library or in
    read-only folders, whose labels go under ``$ETHOS_CACHE/sae-labels/<folder hash>/``."""
    from .model import cache_root

    key = hashlib.sha256(str(sae_folder.resolve()).encode()).hexdigest()[:16]
    cached = cache_root() / "sae-labels" / key
    shipped = sae_folder.resolve().is_relative_to(LIBRARY_ROOT.resolve())
    if shipped or not os.access(sae_folder, os.W_OK):
        return [cached]
    return [sae_folder / LABELS_DIR, cached]


def labels_path(sae_folder: Path, data_sha256: str) -> Path:
    """The labels file of an SAE from one dataset: ``labels/<data sha256[:16]>.json``."""
    return _labels_dirs(Path(sae_folder))[0] / f"{data_sha256[:16]}.json"


def load_labels(sae_folder: str | os.PathLike[str], data_sha256: str | None = None) -> dict[int, dict[str, Any]]:
    """Stored labels (from the dataset with ``data_sha256``, or from every stored dataset)."""
    folder = find_sae(sae_folder)
    pattern = f"{data_sha256[:16]}.json" if data_sha256 else "*.json"
    out: dict[int, dict[str, Any]] = {}
    for d in reversed(_labels_dirs(folder)):
        for f in sorted(d.glob(pattern)):
            try:
                record = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            out.update({int(k): v for k, v in record.get("latents", {}).items()})
    return out


# ---------------------------------------------------------------------------------------------
# CLI


def _activation_key(fingerprint: str, layer: int, sources: Sequence[Source], units: Sequence[Unit], holdout: int) -> str:
    h = hashlib.sha256()
    h.update(f"v1\0{fingerprint}\0{layer}\0{holdout}\0".encode())
    for s in sources:
        h.update(f"{s.sha256}\0{s.kind}\0".encode())
    h.update(f"{len(units)}\0{sum(u.n_train() for u in units)}".encode())
    return h.hexdigest()[:24]


def cmd_train(args: argparse.Namespace) -> int:
    os.environ.setdefault("WANDB_MODE", "disabled")
    from .model import Encoder, ModelError, check_layer, load_model, cache_root

    out = Path(args.out)
    if (out / "cfg.json").exists() and not args.force:
        _say(f"{out} already holds an SAE; pass --force to overwrite")
        return EXIT_USAGE
    try:
        model, tokenizer, fingerprint = load_model(args.model)
        layer = check_layer(model.config, args.layer)
    except ModelError as exc:
        _say(str(exc))
        return EXIT_ERRORS
    torch.manual_seed(args.seed)
    units, sources = read_units([Path(p) for p in args.data], tokenizer, holdout=args.holdout, text_field=args.text_field)
    if not units:
        _say("no training text in the data")
        return EXIT_ERRORS
    # a fixed-seed subset when the data has more tokens than --max-unique-tokens
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(units))
    if args.max_unique_tokens:
        chosen, total = [], 0
        for i in order:
            if total >= args.max_unique_tokens:
                break
            chosen.append(units[i])
            total += units[i].n_train()
        units = chosen
    for s in sources:
        _say(f"{s.path}: {s.kind}, {s.rows} rows, {s.train_rows} for training, {s.tokens:,} tokens")
    key = _activation_key(fingerprint, layer, sources, units, args.holdout)
    acts_dir = Path(args.activations) if args.activations else cache_root() / "sae-activations" / key
    store = ActivationStore.open(acts_dir)
    if store is None:
        _say(f"reading layer {layer} activations of {sum(u.n_train() for u in units):,} tokens into {acts_dir}")
        encoder = Encoder(model, layer, pad_id=tokenizer.pad_token_id)
        store = collect_activations(encoder, units, acts_dir, info={"key": key, "model": fingerprint, "layer": layer})
        _say(f"activations: {store.n:,} tokens in {store.info['seconds']} s ({store.info['tokens_per_s']:,} tok/s)")
    else:
        _say(f"reusing cached activations in {acts_dir} ({store.n:,} tokens)")
    cfg = TrainConfig(d_sae=args.d_sae, k=args.k, architecture=args.architecture, tokens=args.tokens,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      aux_loss_coefficient=args.aux_coefficient)
    hook_name = f"model.layers.{layer}"
    model_name = args.model if args.model == DEFAULT_MODEL else Path(args.model).name
    sae, stats = train_sae(store, cfg, hook_name=hook_name, model_name=model_name)
    tmp = out.with_name(f".{out.name}.tmp")
    save_sae(sae, tmp)
    metrics: dict[str, Any] = {}
    eval_pairs = _heldout_pairs([Path(p) for p in args.data], args.holdout, args.eval_rows)
    if eval_pairs and args.eval_tokens > 0:
        from .model import ModelRuntime

        runtime = ModelRuntime(encoder=Encoder(model, layer, pad_id=tokenizer.pad_token_id), tokenizer=tokenizer,
                               fingerprint=fingerprint, name=args.model)
        metrics = evaluate(load_sae(tmp), runtime, eval_pairs, max_tokens=args.eval_tokens)
    meta = {
        "format_version": 1,
        "model": {"name": args.model, "fingerprint": fingerprint},
        "layer": layer,
        "hook_name": hook_name,
        "data": [{"path": str(s.path), "sha256": s.sha256, "kind": s.kind, "rows": s.rows, "train_rows": s.train_rows,
                  "tokens": s.tokens} for s in sources],
        "holdout": {"rule": f"row index % {args.holdout} == 0 held out", "modulus": args.holdout},
        "activations": {"tokens": store.n, "seconds": store.info.get("seconds"),
                        "tokens_per_s": store.info.get("tokens_per_s"),
                        "norm_median": store.info.get("norm_median"), "norm_max": store.info.get("norm_max")},
        "train": cfg.to_dict() | stats,
        "metrics_heldout": metrics,
        "command": _command_line(),
    }
    atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    _say(f"SAE written to {out} ({stats['fit_seconds']} s fit)")
    if metrics:
        _say("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return EXIT_OK


def _command_line() -> str | None:
    """``ethos sae train …`` as run (from ``sys.argv``), for the provenance record."""
    import shlex

    argv = sys.argv[1:] if sys.argv else []
    if "sae" not in argv:
        return None
    return "ethos " + shlex.join(argv[argv.index("sae") :])


def _heldout_pairs(paths: Sequence[Path], holdout: int, rows: int | None) -> list[Any]:
    from .data import DataError, load_pairs

    out: list[Any] = []
    for p in paths:
        try:
            pairs = load_pairs(p).pairs
        except DataError:
            continue
        out += [x for x in pairs if holdout > 0 and int(x.id) % holdout == 0]
    return out[:rows] if rows else out


def _eval_pairs(folder: Path, data: Path, limit: int | None, all_rows: bool) -> tuple[list[Any], bool]:
    """The pairs to evaluate on: only the held-out rows when the SAE was trained on ``data``."""
    from .data import load_pairs

    pairs = load_pairs(data).pairs
    meta = read_meta(folder)
    digest = sha256_file(data)
    trained_on = any(d.get("sha256") == digest for d in meta.get("data", []))
    held = False
    if trained_on and not all_rows:
        modulus = int(meta.get("holdout", {}).get("modulus", HOLDOUT))
        pairs = [p for p in pairs if modulus > 0 and int(p.id) % modulus == 0]
        held = True
    return (pairs[:limit] if limit else pairs), held


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import DataError
    from .model import ModelError

    try:
        folder = find_sae(args.sae)
        sae = load_sae(folder)
        pairs, held = _eval_pairs(folder, Path(args.data), args.limit, args.all_rows)
        if held:
            _say(f"the SAE was trained on {args.data}: evaluating on its {len(pairs)} held-out rows")
        runtime = _runtime_for(sae, args.model, None, batch_size=args.batch_size)
        metrics = evaluate(sae, runtime, pairs, max_tokens=args.tokens or None, progress=not args.json)
    except (SAEError, DataError, ModelError) as exc:
        _say(str(exc))
        return EXIT_ERRORS
    metrics = {"sae": str(folder), "layer": runtime.layer, "data": args.data, "held_out": held, "pairs": len(pairs), **metrics}
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for k in ("explained_variance", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_increase"):
            if k in metrics:
                print(f"{k:20} {metrics[k]:.4f}")
        print(f"{'tokens':20} {metrics['tokens']}  ({len(pairs)} pairs{', held out' if held else ''})")
    return EXIT_OK


def cmd_describe(args: argparse.Namespace) -> int:
    from .data import DataError, load_pairs
    from .model import ModelError

    try:
        folder = find_sae(args.sae)
        result = load_pairs(Path(args.data), limit=args.limit)
        pairs = result.pairs
        labels = describe_latents(folder, pairs, args.latent or None, args.snippets, args.tokens,
                                  model=args.model, progress=not args.json)
    except (SAEError, DataError, ModelError) as exc:
        _say(str(exc))
        return EXIT_ERRORS
    digest = sha256_file(Path(args.data))
    path = labels_path(folder, digest)
    record = {"format_version": 1, "data": {"path": args.data, "sha256": digest, "pairs": len(pairs)},
              "params": {"limit": args.limit, "k_snippets": args.snippets, "k_tokens": args.tokens, "model": args.model},
              "latents": {}}
    try:
        old = json.loads(path.read_text())
        if old.get("params") == record["params"]:
            record["latents"] = old.get("latents", {})
    except (OSError, ValueError):
        pass
    record["latents"].update({str(i): v for i, v in labels.items()})
    atomic_write_text(path, json.dumps(record, indent=1, ensure_ascii=False))
    if args.json:
        print(json.dumps({str(i): v for i, v in labels.items()}, indent=2, ensure_ascii=False))
        return EXIT_OK
    shown = list(labels.items())
    if not args.latent:
        shown = sorted(shown, key=lambda kv: -kv[1]["frequency"])[:10]
        print(f"labelled {len(labels)} latents (stored in {path}); the 10 firing most often:")
    for i, lab in shown:
        print(f"latent {i}  freq {lab['frequency']:.4f}  max {lab['max_activation']:.2f}")
        print("  tokens: " + " ".join(repr(t) for t in lab["tokens"]))
        for s in lab["snippets"]:
            print(f"  · {s}")
    return EXIT_OK


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sae", help="train, evaluate and describe sparse autoencoders")
    sub = p.add_subparsers(dest="sae_command", metavar="SUBCOMMAND", required=True)

    s = sub.add_parser("train", help="train a TopK SAE on a layer's residual stream (sae-lens)")
    s.add_argument("--layer", type=int, default=None, help="layer to read (default: the model's middle block)")
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="text (.txt/.md), JSON Lines with a text field, or preference data")
    s.add_argument("--text-field", default=None, help="the field holding text in JSON Lines (default: guessed)")
    s.add_argument("--tokens", type=int, default=2_000_000, help="training tokens (samples), epochs as needed")
    s.add_argument("--max-unique-tokens", type=int, default=None, help="cap on distinct tokens read from the data")
    s.add_argument("--d-sae", type=int, default=4096)
    s.add_argument("--k", type=int, default=32)
    s.add_argument("--architecture", choices=("topk", "batchtopk"), default="topk")
    s.add_argument("--lr", type=float, default=4e-4)
    s.add_argument("--batch-size", type=int, default=4096)
    s.add_argument("--aux-coefficient", type=float, default=1.0 / 32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--holdout", type=int, default=HOLDOUT, help="hold out rows with index %% N == 0 (0: none)")
    s.add_argument("--activations", default=None, help="activation cache folder (default: under $ETHOS_CACHE)")
    s.add_argument("--eval-tokens", type=int, default=8000, help="held-out reply tokens to evaluate on at the end (0: none)")
    s.add_argument("--eval-rows", type=int, default=None)
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--force", action="store_true", help="overwrite an SAE in DIR")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="reconstruction and cross-entropy metrics on reply tokens")
    s.add_argument("sae", metavar="DIR", help="an SAE folder or name ('default')")
    s.add_argument("--data", required=True, metavar="PATH", help="preference data")
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--limit", type=int, default=None, help="at most N pairs")
    s.add_argument("--tokens", type=int, default=4000, help="about N reply tokens, a fixed-seed random subset of pairs (0: all; default 4000)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--all-rows", action="store_true", help="use every row even if the SAE was trained on this file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("describe", help="label latents by top snippets and promoted tokens")
    s.add_argument("sae", metavar="DIR", help="an SAE folder or name ('default')")
    s.add_argument("--data", required=True, metavar="PATH", help="preference data")
    s.add_argument("--latent", type=int, action="append", default=[], help="a latent to describe (repeatable; default all)")
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--limit", type=int, default=None, help="at most N input rows")
    s.add_argument("--snippets", type=int, default=3)
    s.add_argument("--tokens", type=int, default=8)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_describe)

"""SAE evaluation on reply tokens (``ethos sae eval``): explained variance, mean L0, dead and
dense latent fractions, and the increase in next-token cross-entropy when the reconstruction is
spliced into the model at the layer (:func:`evaluate`). When the eval file is one the SAE was
trained on, only its held-out rows are used (:func:`eval_pairs`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ethos.compiler.names import DEFAULT_MODEL

from ..device import to_float, to_numpy
from ..model import ModelRuntime, PairTokens, length_batches, say, sha256_file, tokenize_pair
from ..progress import stage
from .load import SAEError, find_sae, load_sae, read_meta, sae_on, sae_runtime
from .store import HOLDOUT, is_held_out

DENSE_THRESHOLD = 0.10
"""A latent is *dense* when it fires on more than this fraction of the eval tokens."""


@dataclass
class _EvalAccumulator:
    """Running sums, kept on the device of the activations (float64); read on the host once, by
    :meth:`result`."""

    d_in: int
    d_sae: int
    n: int = 0
    sums: torch.Tensor | None = None  # [sse, sum of squares, active latents]
    sum_x: torch.Tensor | None = None
    fires: torch.Tensor | None = None
    ce: torch.Tensor | None = None  # [clean, spliced] summed cross-entropies
    ce_n: int = 0

    def add(self, x: torch.Tensor, z: torch.Tensor, x_hat: torch.Tensor) -> None:
        if self.sum_x is None:
            self.sums = torch.zeros(3, dtype=torch.float64, device=x.device)
            self.sum_x = torch.zeros(self.d_in, dtype=torch.float64, device=x.device)
            self.fires = torch.zeros(self.d_sae, dtype=torch.float64, device=x.device)
        assert self.sums is not None and self.fires is not None
        x64 = x.double()
        self.n += x.shape[0]
        active = z > 0
        self.sums += torch.stack([(x64 - x_hat.double()).pow(2).sum(), x64.pow(2).sum(), active.sum().double()])
        self.sum_x += x64.sum(dim=0)
        self.fires += active.sum(dim=0).double()

    def add_ce(self, clean: torch.Tensor, spliced: torch.Tensor, n: int) -> None:
        both = torch.stack([clean.double(), spliced.double()])
        self.ce = both if self.ce is None else self.ce + both
        self.ce_n += n

    def result(self) -> dict[str, Any]:
        if self.n == 0 or self.sum_x is None or self.fires is None or self.sums is None:
            raise SAEError("no reply tokens to evaluate on")
        sse, sum_sq, l0_sum = (float(v) for v in to_numpy(self.sums))
        total_var = sum_sq - to_float(self.sum_x.pow(2).sum()) / self.n
        freq = to_numpy(self.fires) / self.n
        out = {
            "explained_variance": 1.0 - sse / total_var if total_var > 0 else float("nan"),
            "mse": sse / self.n,
            "l0": l0_sum / self.n,
            "dead_fraction": float((freq == 0).mean()),
            "dense_fraction": float((freq > DENSE_THRESHOLD).mean()),
            "tokens": self.n,
        }
        if self.ce_n and self.ce is not None:
            ce_clean, ce_spliced = (float(v) for v in to_numpy(self.ce))
            out.update(
                ce_clean=ce_clean / self.ce_n,
                ce_spliced=ce_spliced / self.ce_n,
                ce_increase=(ce_spliced - ce_clean) / self.ce_n,
                ce_tokens=self.ce_n,
            )
        return out




@torch.inference_mode()
def evaluate(
    sae: Any,
    runtime: ModelRuntime,
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
    encoder = runtime.encoder
    sae_on(sae, runtime.device)
    head = encoder.model.get_output_embeddings()
    acc = _EvalAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    items = _sample(runtime, pairs, max_tokens, context)
    total = sum(b - a for it in items for a, b in it.spans)

    def t(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=runtime.device)

    with stage("sae eval", total=total, unit="tok", enabled=progress) as bar:
        for batch in length_batches(items, runtime.batch_size):
            its = [items[i] for i in batch]
            if any(not it.prompt for it in its):
                continue
            n = len(its[0].continuations)
            copies = 2 * n if splice else n  # rows per prompt: the clean continuations, then the spliced ones
            rows = [list(c) for it in its for c in it.continuations * (2 if splice else 1)]
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
            select = (t(rc), t(pc), t(rs), t(ps))

            def edit(h: torch.Tensor, select: tuple[torch.Tensor, ...] = select) -> torch.Tensor | None:
                rows_clean, pos_clean, rows_splice, pos_splice = select
                x = h[rows_clean, pos_clean].float()
                z = sae.encode(x)
                x_hat = sae.decode(z)
                acc.add(x, z, x_hat)
                if not splice:
                    return None
                h = h.clone()
                h[rows_splice, pos_splice] = x_hat.to(h.dtype)
                return h

            fw = encoder.shared_forward([it.prompt for it in its], [it.continuations for it in its],
                                        copies=2 if splice else 1, to_end=True, edit=edit)
            if splice:
                assert fw.final is not None
                # predictions at reply positions whose next token exists in the continuation
                keep = [(r, p) for r, p in zip(rc, pc) if p + 1 < len(rows[r])]
                if keep:
                    kr = t([r for r, _ in keep])
                    kp = t([p for _, p in keep])
                    targets = fw.ids[kr, kp + 1]
                    logits_c = head(fw.final[kr, kp]).float()
                    sr = kr + n  # the spliced copy of the same row
                    logits_s = head(fw.final[sr, kp]).float()
                    ce = torch.nn.functional.cross_entropy
                    acc.add_ce(ce(logits_c, targets, reduction="sum"), ce(logits_s, targets, reduction="sum"), len(keep))
            bar.advance(min(acc.n, total) - bar.done)
    return acc.result()


@torch.inference_mode()
def firing_counts(
    sae: Any, runtime: ModelRuntime, pairs: Sequence[Any], *, progress: bool = True, context: int = 512
) -> tuple[np.ndarray, int]:
    """``(counts, n)``: on how many of the ``n`` reply tokens of ``pairs`` each latent fires
    (activation > 0). Only the truncated forward and the encoder run (no splice, no
    cross-entropy), so it is cheap enough for every reply token of a file. Tokens are cut as in
    :func:`evaluate` (``context`` tokens per prompt + reply)."""
    sae_on(sae, runtime.device)
    items = [tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected], max_tokens=context) for p in pairs]
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=runtime.device)
    n = 0
    total = sum(b - a for it in items for a, b in it.spans)
    with stage("sae firing counts", total=total, unit="tok", enabled=progress) as bar:
        for batch in length_batches(items, runtime.batch_size):
            flat = [a for per in runtime.encoder.encode_batch([items[i] for i in batch]) for a in per if a.shape[0]]
            if flat:
                x = torch.cat(flat).float()
                fires += (sae.encode(x) > 0).sum(dim=0).double()
                n += x.shape[0]
            bar.advance(min(n, total) - bar.done)
    return to_numpy(fires).astype(np.int64), n


def _sample(runtime: ModelRuntime, pairs: Sequence[Any], max_tokens: int | None, context: int) -> list[PairTokens]:
    """The pairs tokenised, or (``max_tokens``) a fixed-seed random subset of them holding about
    ``max_tokens`` reply tokens, tokenised as drawn (the rest never are)."""

    def tok(p: Any) -> PairTokens:
        return tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected], max_tokens=context)

    if max_tokens is None:
        return [tok(p) for p in pairs]
    subset, count = [], 0
    for i in np.random.default_rng(0).permutation(len(pairs)):
        if count >= max_tokens:
            break
        item = tok(pairs[i])
        subset.append(item)
        count += sum(b - a for a, b in item.spans)
    return subset


def eval_pairs(folder: Path, data: str | os.PathLike[str], limit: int | None, all_rows: bool) -> tuple[list[Any], bool]:
    """The pairs to evaluate on and whether they are held out: only the held-out rows when the
    SAE in ``folder`` was trained on ``data`` (unless ``all_rows``), at most ``limit``."""
    from ..data import load_pairs

    pairs = load_pairs(data).pairs
    meta = read_meta(folder)
    digest = sha256_file(Path(data))
    trained_on = any(d.get("sha256") == digest for d in meta.get("data", []))
    held = False
    if trained_on and not all_rows:
        modulus = int(meta.get("holdout", {}).get("modulus", HOLDOUT))
        pairs = [p for p in pairs if is_held_out(int(p.id), modulus)]
        held = True
    return (pairs[:limit] if limit else pairs), held


def evaluate_data(
    sae: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    model: str = DEFAULT_MODEL,
    limit: int | None = None,
    tokens: int | None = 4000,
    batch_size: int = 8,
    all_rows: bool = False,
    progress: bool = True,
    all_replies: bool = True,
) -> dict[str, Any]:
    """``ethos sae eval``: the SAE named ``sae`` evaluated on the preference data ``data`` (its
    held-out rows when the SAE was trained on it; about ``tokens`` reply tokens, None for all).
    Returns the metrics with ``sae``, ``layer``, ``data``, ``held_out`` and ``pairs``.

    With ``all_replies`` the dead and dense fractions are also measured on *every* reply token
    of those pairs (``dead_fraction_all_replies``, ``dense_fraction_all_replies``, over
    ``dead_tokens`` tokens), not only on the ``tokens`` subset the other metrics use: "never
    fires on a few thousand tokens" overstates deadness when there are thousands of latents."""
    folder = find_sae(sae)
    loaded = load_sae(folder)
    pairs, held = eval_pairs(folder, data, limit, all_rows)
    if held:
        say(f"the SAE was trained on {os.fspath(data)}: evaluating on its {len(pairs)} held-out rows")
    runtime = sae_runtime(loaded, model, batch_size=batch_size)
    metrics = evaluate(loaded, runtime, pairs, max_tokens=tokens, progress=progress)
    if all_replies:
        if tokens is None:  # the eval already covered every reply token
            counts_n = metrics["tokens"]
            dead, dense = metrics["dead_fraction"], metrics["dense_fraction"]
        else:
            counts, counts_n = firing_counts(loaded, runtime, pairs, progress=progress)
            freq = counts / max(counts_n, 1)
            dead, dense = float((counts == 0).mean()), float((freq > DENSE_THRESHOLD).mean())
        metrics.update(dead_fraction_all_replies=dead, dense_fraction_all_replies=dense, dead_tokens=counts_n)
    return {"sae": str(folder) if isinstance(folder, Path) else folder.spec, "layer": runtime.layer, "data": os.fspath(data), "held_out": held, "pairs": len(pairs),
            **metrics}

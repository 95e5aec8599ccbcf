"""What the audit and ``ethos sae describe`` read from an SAE: every latent pooled over each reply
(:func:`reply_latents`: max- and mean-pooled activations per reply, with each latent's peak), the
tokens a latent promotes (:func:`promoted_tokens`), and labels (:func:`describe_latents`: top
activating reply snippets and promoted tokens), stored with the SAE
(``labels/<data sha256[:16]>.json``, :func:`describe_and_store`, :func:`load_labels`)."""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ethos.compiler.names import DEFAULT_MODEL, LIBRARY_ROOT

from ..documents import SAE_META_FORMAT
from ..io import atomic_write_text
from ..device import to_list, to_numpy
from ..model import ModelRuntime, PairTokens, cache_root, length_batches, sha256_file, tokenize_pair
from ..progress import stage
from .load import SAEError, find_sae, load_sae, sae_on, sae_runtime

LABELS_DIR = "labels"
MARK_OPEN, MARK_CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧


@torch.inference_mode()
def _reply_latents(
    sae: Any, runtime: ModelRuntime, pairs: Sequence[Any], visit: Callable[[int, list[torch.Tensor], PairTokens], None],
    progress: bool,
) -> list[PairTokens]:
    """One pass over ``pairs``: for each pair ``i``, ``visit(i, z per reply (tokens, d_sae), its
    tokens)``, ``z`` on the model's device (the SAE is moved there). Returns every pair's tokens
    (for a second pass over some of them)."""
    sae_on(sae, runtime.device)
    items = [tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected], max_tokens=runtime.max_tokens) for p in pairs]
    with stage("sae latents", total=len(items), unit="pairs", enabled=progress) as bar:
        for batch in length_batches(items, runtime.batch_size):
            acts = runtime.encoder.encode_batch([items[i] for i in batch])
            flat = [a for per in acts for a in per]
            lengths = [a.shape[0] for a in flat]
            z = sae.encode(torch.cat(flat).float()) if sum(lengths) else torch.zeros(0, sae.cfg.d_sae, device=runtime.device)
            parts = list(torch.split(z, lengths))
            for k, i in enumerate(batch):
                visit(i, parts[2 * k : 2 * k + 2], items[i])
            bar.advance(len(batch))
    return items


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


def reply_latents(sae: Any, runtime: ModelRuntime, pairs: Sequence[Any], *, peaks: bool = False, progress: bool = False) -> ReplyLatents:
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
                pooled = to_numpy(torch.stack([values, z.mean(dim=0)]))  # one copy to the host
                mx[side][i] = pooled[0]
                mean[side][i] = pooled[1]
                if peak is not None:
                    peak[side][i] = to_numpy(where, np.int32)

    _reply_latents(sae, runtime, pairs, visit, progress)
    return ReplyLatents(mx, mean, peak, toks)


def pooled_latents_both(
    sae_folder: str | os.PathLike[str],
    pairs: Sequence[Any],
    *,
    model: str = DEFAULT_MODEL,
    runtime: ModelRuntime | None = None,
    progress: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"max": (chosen, rejected), "mean": (chosen, rejected)}``, each an (n_pairs, d_sae)
    float32 array of a latent's max / mean activation over the reply's tokens (see
    :class:`ReplyLatents`). One pass over the data."""
    sae = load_sae(sae_folder)
    got = reply_latents(sae, sae_runtime(sae, model, runtime), pairs, progress=progress)
    return {"max": got.max, "mean": got.mean}


def pooled_latents(
    sae_folder: str | os.PathLike[str],
    pairs: Sequence[Any],
    *,
    pool: str = "max",
    model: str = DEFAULT_MODEL,
    runtime: ModelRuntime | None = None,
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
    weight = model.get_output_embeddings().weight  # (vocab, d), on the model's device
    with torch.inference_mode():
        rows = sae.W_dec.detach()[list(latents)].float().to(weight.device)
        norm = getattr(getattr(model, "model", model), "norm", None)
        gain = getattr(norm, "weight", None)
        if gain is not None and gain.shape[-1] == rows.shape[-1]:
            rows = rows * gain.detach().float().to(weight.device)
        logits = rows @ weight.detach().float().T
        top = to_list(logits.topk(min(weight.shape[0], 8 * k if readable else k), dim=-1).indices)
    out: dict[int, list[str]] = {}
    for r, i in enumerate(latents):
        if not readable:
            out[int(i)] = [tokenizer.decode([int(t)]) for t in top[r]]
            continue
        words = [w for w in (_readable(tokenizer, int(t)) for t in top[r]) if w]
        out[int(i)] = words[:k]
    return out


def _snippet(tokenizer: Any, ids: Sequence[int], acts: np.ndarray, peak: int, window: int = 12) -> str:
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
    runtime: ModelRuntime | None = None,
    progress: bool = False,
) -> dict[int, dict[str, Any]]:
    """Labels of ``latents`` (all when None): ``{i: {"snippets": [...], "tokens": [...],
    "max_activation": float, "frequency": float, "pairs": [ids]}}``.

    Snippets are the replies where the latent's activation peaks highest (one per reply, chosen
    or rejected), each cut to a window around the peak with firing tokens in ⟦ ⟧; ``frequency``
    is the fraction of reply tokens on which it fires; ``tokens`` are its top promoted tokens.
    """
    sae = load_sae(sae_folder)
    runtime = sae_runtime(sae, model, runtime)
    d = sae.cfg.d_sae
    ids = list(range(d)) if latents is None else [int(i) for i in latents]
    for i in ids:
        if not 0 <= i < d:
            raise SAEError(f"latent {i} is out of range (d_sae {d})")
    idx = torch.tensor(ids, dtype=torch.long, device=runtime.device)
    heaps: list[list[tuple[float, int, int, int]]] = [[] for _ in ids]  # (act, pair, side, peak)
    fires = torch.zeros(len(ids), dtype=torch.float64, device=runtime.device)
    tokens = 0
    keep: dict[tuple[int, int], tuple[tuple[int, ...], np.ndarray]] = {}

    def visit(i: int, zs: list[torch.Tensor], item: Any) -> None:
        nonlocal tokens
        for side, z in enumerate(zs):
            if not z.shape[0]:
                continue
            sub = z[:, idx]
            tokens += sub.shape[0]
            fires.add_((sub > 0).sum(dim=0).double())
            peak_vals, peak_pos = sub.max(dim=0)
            vals, pos = to_numpy(peak_vals), to_numpy(peak_pos)  # one copy each to the host
            for r in np.flatnonzero(vals > 0).tolist():
                entry = (float(vals[r]), i, side, int(pos[r]))
                h = heaps[r]
                if len(h) < k_snippets:
                    heapq.heappush(h, entry)
                elif entry > h[0]:
                    heapq.heapreplace(h, entry)

    items = _reply_latents(sae, runtime, pairs, visit, progress)
    # second pass only over the replies that made some latent's top list: their token activations
    # (the pairs' tokens are the first pass's)
    needed_set = {(e[1], e[2]) for h in heaps for e in h}
    if needed_set:
        order = sorted({p for p, _ in needed_set})
        with torch.inference_mode():
            for a in range(0, len(order), runtime.batch_size):
                chunk = order[a : a + runtime.batch_size]
                acts = runtime.encoder.encode([items[pi] for pi in chunk], batch_size=runtime.batch_size)
                for pi, per in zip(chunk, acts):
                    for side in (0, 1):
                        if (pi, side) in needed_set:
                            it = items[pi]
                            s0, s1 = it.spans[side]
                            z = (to_numpy(sae.encode(per[side].float())[:, idx]) if per[side].shape[0]
                                 else np.zeros((0, len(ids)), np.float32))
                            keep[(pi, side)] = (it.continuations[side][s0:s1], z)
    tok = promoted_tokens(sae, runtime.encoder.model, runtime.tokenizer, ids, k_tokens)
    fires_host = to_numpy(fires)
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
            "frequency": float(fires_host[r] / tokens) if tokens else 0.0,
            "pairs": [f"{pairs[pi].id}:{'chosen' if side == 0 else 'rejected'}" for _, pi, side, _ in best],
        }
    return out


def _labels_dirs(sae_folder: Any) -> list[Path]:
    """Where labels of an SAE live: ``<sae>/labels/``, except for SAEs shipped in the library, in
    read-only folders or named by sae-lens release, whose labels go under
    ``$ETHOS_CACHE/sae-labels/<folder or release hash>/``."""
    if not isinstance(sae_folder, Path):  # a release SAE (hub.PretrainedSae)
        return [cache_root() / "sae-labels" / hashlib.sha256(sae_folder.spec.encode()).hexdigest()[:16]]
    key = hashlib.sha256(str(sae_folder.resolve()).encode()).hexdigest()[:16]
    cached = cache_root() / "sae-labels" / key
    shipped = sae_folder.resolve().is_relative_to(LIBRARY_ROOT.resolve())
    if shipped or not os.access(sae_folder, os.W_OK):
        return [cached]
    return [sae_folder / LABELS_DIR, cached]


def labels_path(sae_folder: Path, data_sha256: str) -> Path:
    """The labels file of an SAE from one dataset: ``labels/<data sha256[:16]>.json``."""
    return _labels_dirs(sae_folder if not isinstance(sae_folder, (str, os.PathLike)) else Path(sae_folder))[0] \
        / f"{data_sha256[:16]}.json"


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



def describe_and_store(
    sae: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    latents: Sequence[int] | None = None,
    k_snippets: int = 3,
    k_tokens: int = 8,
    model: str = DEFAULT_MODEL,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[dict[int, dict[str, Any]], Path]:
    """``ethos sae describe``: label ``latents`` (all when None) of the SAE named ``sae`` from the
    preference data ``data`` (its first ``limit`` rows) and store them with the SAE (merged into
    the labels file of that data when it was made with the same parameters). Returns the labels
    and the labels file."""
    from ..data import load_pairs

    folder = find_sae(sae)
    pairs = load_pairs(Path(data), limit=limit).pairs
    labels = describe_latents(folder, pairs, latents, k_snippets, k_tokens, model=model, progress=progress)
    digest = sha256_file(Path(data))
    path = labels_path(folder, digest)
    record: dict[str, Any] = {
        "format_version": SAE_META_FORMAT,
        "data": {"path": os.fspath(data), "sha256": digest, "pairs": len(pairs)},
        "params": {"limit": limit, "k_snippets": k_snippets, "k_tokens": k_tokens, "model": model},
        "latents": {},
    }
    try:
        old = json.loads(path.read_text())
        if old.get("params") == record["params"]:
            record["latents"] = old.get("latents", {})
    except (OSError, ValueError):
        pass
    record["latents"].update({str(i): v for i, v in labels.items()})
    atomic_write_text(path, json.dumps(record, indent=1, ensure_ascii=False))
    return labels, path

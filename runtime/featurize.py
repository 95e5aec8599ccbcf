"""featurize: score every usable pair's chosen and rejected reply with every concept of a plan.

``featurize(plan, load_result, ...)`` returns a table (pandas) with one row per usable pair: ``id``
and, per concept, ``<name>.chosen`` and ``<name>.rejected`` (floats). It

1. builds each concept's lens (range-checking SAE latents before anything heavy happens);
2. looks every (lens, reply) up in the score cache (:mod:`ethos.runtime.cache`); a warm rerun
   stops here, without loading any model;
3. computes the missing text scores (metrics, lexicons; the tokenizer only for ``length``);
4. loads the model only if an activation lens (probe, features) has missing scores, tokenises
   the missing pairs through the chat template, and runs them in length-sorted batches of
   ``batch_size`` pairs through the truncated forward, the prompt once per pair with its KV cache
   shared by the two replies. The model runs on :func:`ethos.runtime.device.default_device` in
   :func:`~ethos.runtime.device.pick_dtype` (bf16 on CUDA); the lenses score on that device and
   each batch's scores (all lenses together) cross to the host once. The loop never lets the
   device wait for the host: batch k+1's forward and lens kernels are queued before batch k's
   scores are brought to the host, turned into rows and written, so that host work overlaps
   the device's.

**Resume.** Activation scores are written to the cache (one shard per write) at least every
``FLUSH_SECONDS`` (2 s) or ``FLUSH_ROWS`` rows, at the end, and when the run stops early: on
Ctrl-C or an error, every batch whose scores are complete is written before the exception goes
on, and only the batch whose forward was being queued is lost. A rerun computes only what no
shard holds. A process killed outright (SIGKILL, power loss) loses the batches scored since the
last write — at most about ``FLUSH_SECONDS`` of work plus the batches in flight — which a rerun
recomputes. Text scores are written in shards of ``TEXT_CHUNK`` pairs.

``attrs["ethos"]["stats"]`` also records the ``device`` the model ran on and the padding of its
batches: ``positions`` (rows × width of every padded batch, prompts and continuations) of which
``padded_positions`` were padding.

**Shards.** ``num_shards=N, shard_index=i`` scores only the i-th contiguous block of the usable
pairs (``pairs[i*n//N:(i+1)*n//N]``), so N processes (or machines sharing ``ETHOS_CACHE``) can
split the work. Each output parquet records its block in its metadata; ``merge_scores`` (CLI:
``ethos featurize --merge OUT PART...``) checks that the parts are the N blocks of one dataset and
plan and concatenates them in order, giving exactly the single-run table.

The command line (``ethos featurize``) lives in :mod:`ethos.runtime.cli.featurize`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ethos.compiler.plan import Plan

from .cache import Row, ScoreCache, group_id, text_key
from .device import to_numpy
from .documents import FEATURIZE_FORMAT
from .errors import EthosError
from .hub import hub_snapshot, text_config
from .lenses import Lens, LensContext, build_lens
from .model import (
    DEFAULT_MAX_TOKENS,
    POOL_STATS,
    PairTokens,
    check_layer,
    default_share_prompt,
    length_batches,
    model_fingerprint,
    model_runtime,
    resolve_model,
    tokenize_pair,
)
from .progress import stage

META_KEY = b"ethos.featurize"
TEXT_CHUNK = 1024  # pairs per shard for text lenses
FLUSH_SECONDS = 2.0  # activation scores are written to the cache at least this often ...
FLUSH_ROWS = 1 << 16  # ... or once this many rows wait (and at the end, and when stopped)

SIDES = ("chosen", "rejected")


class FeaturizeError(EthosError):
    """A featurize run cannot proceed; the message is meant for the user."""


def shard_bounds(n: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of ``n`` pairs that shard ``shard_index`` scores."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise FeaturizeError(f"--shard-index must be in 0..{num_shards - 1} (got {shard_index} of {num_shards})")
    return shard_index * n // num_shards, (shard_index + 1) * n // num_shards


class _HostCopies:
    """Brings a batch's pooled scores to the host without waiting for the work queued after them.

    On CUDA the stream is in order: a plain copy of batch k's scores, asked for once batch k+1's
    forward is queued, would wait for that forward too. :meth:`mark` records an event after
    batch k's kernels; :meth:`fetch` copies on a side stream that waits for that event only, so
    the host builds rows and writes shards while the device runs the next forward. Elsewhere
    (CPU, meta) the work is already done or has no data, and :meth:`fetch` is a plain
    :func:`~ethos.runtime.device.to_numpy`, the one door to the host either way."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def mark(self) -> Any:
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def fetch(self, tensor: torch.Tensor, mark: Any) -> np.ndarray:
        if self.stream is None or mark is None:
            return to_numpy(tensor)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(mark)
            return to_numpy(tensor)  # a blocking copy: it waits for this stream only


def featurize(
    plan: Plan,
    load_result: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: bool = True,
    model: str | None = None,
    layer: int | None = None,
    share_prompt: bool | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    on_shard: Callable[[Path], None] | None = None,
) -> pd.DataFrame:
    """Score the usable pairs of ``load_result`` (this shard's block) with ``plan``'s concepts.

    ``cache_dir`` is the ethos cache root (default ``$ETHOS_CACHE``); ``model``/``layer``
    override the plan's binding; ``share_prompt`` runs each prompt once with its KV cache shared by
    the two replies (None: on the CPU, where it is faster, not on CUDA, where it measured slower —
    :func:`default_share_prompt`); ``on_shard`` is called with each cache shard written (for
    tests and monitoring). The table's ``attrs["ethos"]`` holds the run's metadata (shard block,
    fingerprints, lens identities) and statistics (pairs computed and cached, tokens, seconds).
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise FeaturizeError("--batch-size must be at least 1")
    all_pairs = list(load_result.pairs)
    start, stop = shard_bounds(len(all_pairs), num_shards, shard_index)
    pairs = all_pairs[start:stop]
    cache = ScoreCache(cache_dir) if cache_dir is not None else ScoreCache()

    # 1. Lenses.
    context = LensContext.for_plan(plan)
    context.cache_dir = Path(cache_dir) if cache_dir is not None else None
    lenses: dict[str, Lens] = {c.name: build_lens(c, context) for c in plan.concepts}
    needs = {lens.needs for lens in lenses.values()}
    model_name = model or plan.model.name
    folder: Path | None = None
    snapshot: tuple[str, str] | None = None
    if needs & {"tokenizer", "activations"}:
        folder = resolve_model(model_name)
        snapshot = hub_snapshot(folder)
        context.model_fingerprint = model_fingerprint(folder)
        if "activations" in needs:
            context.layer = pick_layer(folder, layer if layer is not None else plan.model.layer, lenses)

    # 2. Cache look-up.
    keys = [(text_key(p.prompt, p.chosen), text_key(p.prompt, p.rejected)) for p in pairs]
    groups: dict[str, str] = {}
    for name, lens in lenses.items():
        if lens.needs == "text":
            groups[name] = group_id(None, None)
        else:
            groups[name] = group_id(context.model_fingerprint, context.layer if lens.needs == "activations" else None)
    ns = {name: lens.key() for name, lens in lenses.items()}
    found: dict[tuple[str, str], dict[str, float]] = {}
    for g in set(groups.values()):
        found.update(cache.load(g, [ns[n] for n in lenses if groups[n] == g]))

    def missing(name: str, i: int) -> bool:
        lens = lenses[name]
        return any(not set(lens.stats) <= set(found.get((ns[name], k), {})) for k in keys[i])

    stats: dict[str, Any] = {"pairs": len(pairs), "computed_pairs": 0, "tokens": 0, "model_seconds": 0.0,
                             "shards_written": 0, "positions": 0, "padded_positions": 0, "device": None}

    def write(group: str, rows: list[Row]) -> None:
        """Put ``rows`` in the cache as one shard and empty the list (before ``on_shard`` runs,
        so a failing callback never writes them twice)."""
        path = cache.put(group, rows)
        for n, k, s, v in rows:
            found.setdefault((n, k), {})[s] = v
        rows.clear()
        if path is not None:
            stats["shards_written"] += 1
            if on_shard is not None:
                on_shard(path)

    # 3. Text lenses.
    text_lenses = [n for n, lens in lenses.items() if lens.needs in ("text", "tokenizer")]
    todo_text = {n: [i for i in range(len(pairs)) if missing(n, i)] for n in text_lenses}
    if any(todo_text.values()):
        if any(lenses[n].needs == "tokenizer" and todo_text[n] for n in text_lenses):
            from transformers import AutoTokenizer

            context.tokenizer = AutoTokenizer.from_pretrained(folder)
        for n in text_lenses:
            idx = todo_text[n]
            for k in range(0, len(idx), TEXT_CHUNK):
                chunk = idx[k : k + TEXT_CHUNK]
                items = [(pairs[i].prompt, getattr(pairs[i], side)) for i in chunk for side in SIDES]
                scores = lenses[n].score_texts(items)
                rows = [
                    (ns[n], keys[i][j], s, v)
                    for (i, j), sc in zip(((i, j) for i in chunk for j in range(2)), scores)
                    for s, v in sc.items()
                ]
                write(groups[n], rows)

    # 4. Activation lenses.
    act_lenses = [n for n, lens in lenses.items() if lens.needs == "activations"]
    todo = sorted({i for n in act_lenses for i in range(len(pairs)) if missing(n, i)})
    if todo:
        assert folder is not None and context.layer is not None
        runtime = model_runtime(folder, layer=context.layer, name=model_name, batch_size=batch_size, max_tokens=max_tokens)
        if runtime.fingerprint != context.model_fingerprint:
            raise FeaturizeError(f"model folder {folder} changed while featurize was starting")
        encoder, tokenizer = runtime.encoder, runtime.tokenizer
        stats["device"] = str(runtime.device)
        if share_prompt is None:
            share_prompt = default_share_prompt(runtime.device)
        stats["share_prompt"] = share_prompt
        context.tokenizer = tokenizer
        context.runtime = runtime
        for n in act_lenses:
            lenses[n].prepare(context)
        group = group_id(context.model_fingerprint, context.layer)
        items: list[PairTokens] = [
            tokenize_pair(tokenizer, pairs[i].prompt, [pairs[i].chosen, pairs[i].rejected], max_tokens=max_tokens)
            for i in todo
        ]
        positions0, real0 = encoder.positions, encoder.real_positions
        host = _HostCopies(encoder.device)
        batch_rows: list[Row] = []  # computed scores not yet in the cache
        # Batches whose lens kernels are queued on the device but whose scores are not yet on the
        # host: (pair indices, pooled (lenses, replies, 2) tensor, the device's mark after it).
        inflight: list[tuple[list[int], Any, Any]] = []
        last_flush = time.perf_counter()

        def collect(bar: Any) -> None:
            """Bring the oldest in-flight batch's scores to the host, as rows to be written."""
            batch, pooled, mark = inflight[0]
            scores = host.fetch(pooled, mark)  # waits for this batch's kernels only
            sides = [(b, j) for b in batch for j in range(2)]
            rows = [(ns[n], keys[todo[b]][j], stat, float(v))
                    for n, per_lens in zip(act_lenses, scores)
                    for (b, j), per_reply in zip(sides, per_lens)
                    for stat, v in zip(POOL_STATS, per_reply)]
            batch_rows.extend(rows)
            del inflight[0]
            stats["computed_pairs"] += len(batch)
            stats["tokens"] += sum(items[b].n_tokens() for b in batch)
            elapsed = time.perf_counter() - t_model
            stats["model_seconds"] = elapsed
            bar.advance(len(batch), note=f"{stats['tokens'] / max(elapsed, 1e-9):,.0f} tok/s")

        def flush() -> None:
            nonlocal last_flush
            write(group, batch_rows)
            last_flush = time.perf_counter()

        with stage("featurize", total=len(todo), unit="pairs", enabled=progress) as bar, torch.inference_mode():
            t_model = time.perf_counter()
            try:
                for batch in length_batches(items, batch_size, share_prompt=share_prompt):
                    replies = encoder.encode_replies([items[b] for b in batch], share_prompt=share_prompt)
                    pooled = torch.stack([lenses[n].pool_activations(replies).to(encoder.device) for n in act_lenses])
                    del replies  # the layer's output is no longer needed once the lens kernels are queued
                    inflight.append((batch, pooled, host.mark()))
                    if len(inflight) > 1:  # the previous batch, while this one runs on the device
                        collect(bar)
                        if len(batch_rows) >= FLUSH_ROWS or time.perf_counter() - last_flush >= FLUSH_SECONDS:
                            flush()
                while inflight:
                    collect(bar)
                flush()
            except BaseException:
                # Ctrl-C or an error: keep every batch whose scores are complete, then re-raise.
                # A batch whose scores cannot be read back (the device failed) is lost, and so is
                # the batch whose forward was running; a failing write leaves the original error.
                try:
                    while inflight:
                        collect(bar)
                except Exception:
                    pass
                try:
                    flush()
                except Exception:
                    pass
                raise
            stats["model_seconds"] = time.perf_counter() - t_model
        stats["positions"] = encoder.positions - positions0
        stats["padded_positions"] = stats["positions"] - (encoder.real_positions - real0)
        for g in set(groups.values()):
            cache.compact(g)

    # 5. The table.
    columns: dict[str, list[Any]] = {"id": [p.id for p in pairs]}
    for name, lens in lenses.items():
        stat = lens.report
        for j, side in enumerate(SIDES):
            columns[f"{name}.{side}"] = [float(found[(ns[name], keys[i][j])][stat]) for i in range(len(pairs))]
    table = pd.DataFrame(columns)
    stats["seconds"] = time.perf_counter() - t0
    table.attrs["ethos"] = {
        "format": FEATURIZE_FORMAT,
        "num_shards": num_shards,
        "shard_index": shard_index,
        "start": start,
        "stop": stop,
        "total_pairs": len(all_pairs),
        "data_fingerprint": getattr(load_result, "fingerprint", None),
        "model": model_name if folder is not None else None,
        "model_fingerprint": context.model_fingerprint,
        "model_repo": snapshot[0] if snapshot else None,
        "model_revision": snapshot[1] if snapshot else None,
        "layer": context.layer,
        "concepts": {
            name: {"lens": lens.to_dict(), "report": lens.report, **_extra(lens)} for name, lens in lenses.items()
        },
        "stats": stats,
    }
    return table


def _extra(lens: Lens) -> dict[str, Any]:
    sha = getattr(lens, "direction_sha256", None)
    return {"direction_sha256": sha} if sha else {}


def pick_layer(folder: Path, requested: int | None, lenses: dict[str, Lens]) -> int:
    """The layer to read: the requested one, else the SAE's own layer, else the model's default;
    an SAE trained on another layer than the requested one is an error."""
    # config.json read directly: importing transformers' auto classes costs seconds on a warm run
    config = text_config(json.loads((folder / "config.json").read_text()))
    sae_layers = {getattr(lens, "layer", None) for lens in lenses.values() if lens.kind == "features"} - {None}
    if len(sae_layers) > 1:
        raise FeaturizeError(f"the SAE's layers disagree: {sorted(sae_layers)}")
    if requested is None and sae_layers:
        requested = next(iter(sae_layers))
    layer = check_layer(config, requested)
    if sae_layers and layer not in sae_layers:
        raise FeaturizeError(f"the SAE reads layer {next(iter(sae_layers))} but the plan reads layer {layer}")
    return layer


# ---------------------------------------------------------------------------------------------
# Files


def write_scores(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the table as parquet (metadata under ``ethos.featurize``), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[META_KEY] = json.dumps(table.attrs.get("ethos", {}), sort_keys=True).encode()
    arrow = arrow.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(arrow, tmp)
    os.replace(tmp, path)
    return path


def read_scores(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a scores parquet written by :func:`write_scores` (metadata back in ``attrs``)."""
    import pyarrow.parquet as pq

    arrow = pq.read_table(path)
    table = arrow.to_pandas()
    raw = (arrow.schema.metadata or {}).get(META_KEY)
    table.attrs["ethos"] = json.loads(raw) if raw else {}
    return table


def merge_scores(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate the parts of a sharded run into the single-run table, after checking that
    they are exactly shards 0..N-1 of one dataset scored with one plan."""
    if not paths:
        raise FeaturizeError("--merge needs the shard outputs to merge")
    parts = [read_scores(p) for p in paths]
    metas = [t.attrs.get("ethos", {}) for t in parts]
    first = metas[0]
    for p, m, t in zip(paths, metas, parts):
        if not m:
            raise FeaturizeError(f"{p}: not a featurize output (no ethos metadata)")
        for field in ("num_shards", "total_pairs", "data_fingerprint", "model_fingerprint", "layer"):
            if m.get(field) != first.get(field):
                raise FeaturizeError(f"{p}: {field} {m.get(field)!r} differs from {paths[0]}'s {first.get(field)!r}")
        if {k: v["lens"] for k, v in m.get("concepts", {}).items()} != {
            k: v["lens"] for k, v in first.get("concepts", {}).items()
        } or list(t.columns) != list(parts[0].columns):
            raise FeaturizeError(f"{p}: scored with other concepts than {paths[0]}")
    n = first["num_shards"]
    got = sorted(m["shard_index"] for m in metas)
    if got != list(range(n)):
        raise FeaturizeError(f"need shards 0..{n - 1} exactly once, got {got}")
    order = sorted(range(len(parts)), key=lambda k: metas[k]["shard_index"])
    merged = pd.concat([parts[k] for k in order], ignore_index=True)
    stats = [metas[k].get("stats", {}) for k in order]
    merged.attrs["ethos"] = {
        **first,
        "num_shards": 1,
        "shard_index": 0,
        "start": 0,
        "stop": first["total_pairs"],
        "stats": {
            **{key: sum(s.get(key, 0) for s in stats)
               for key in ("pairs", "computed_pairs", "tokens", "shards_written", "positions", "padded_positions")},
            "device": next((s["device"] for s in stats if s.get("device")), None),
        },
    }
    if len(merged) != first["total_pairs"]:
        raise FeaturizeError(f"merged {len(merged)} rows, expected {first['total_pairs']}")
    return merged

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
   shared by the two replies. Every batch's scores are written to the cache as one shard before
   the next batch starts, so a run stopped with Ctrl-C resumes where it stopped.

**Shards.** ``num_shards=N, shard_index=i`` scores only the i-th contiguous block of the usable
pairs (``pairs[i*n//N:(i+1)*n//N]``), so N processes (or machines sharing ``ETHOS_CACHE``) can
split the work. Each output parquet records its block in its metadata; ``merge_scores`` (CLI:
``ethos featurize --merge OUT PART...``) checks that the parts are the N blocks of one dataset and
plan and concatenates them in order, giving exactly the single-run table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ethos.compiler.plan import Plan

from .cache import Row, ScoreCache, group_id, text_key
from .lenses import Lens, LensContext, LensError, build_lens
from .model import (
    DEFAULT_MAX_TOKENS,
    Encoder,
    ModelError,
    ModelRuntime,
    PairTokens,
    check_layer,
    length_batches,
    load_model,
    model_fingerprint,
    resolve_model,
    tokenize_pair,
)

FORMAT = 1
META_KEY = b"ethos.featurize"
DEFAULT_OUT = Path("ethos-out") / "scores.parquet"
TEXT_CHUNK = 1024  # pairs per shard for text lenses

SIDES = ("chosen", "rejected")


class FeaturizeError(Exception):
    """A featurize run cannot proceed; the message is meant for the user."""


def shard_bounds(n: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of ``n`` pairs that shard ``shard_index`` scores."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise FeaturizeError(f"--shard-index must be in 0..{num_shards - 1} (got {shard_index} of {num_shards})")
    return shard_index * n // num_shards, (shard_index + 1) * n // num_shards


def _progress(enabled: bool, total: int) -> Any:
    """A rich progress bar on stderr showing pairs and tokens/s (or a no-op)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("featurize"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pairs"),
        TextColumn("{task.fields[tps]:>7} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    return progress


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
    share_prompt: bool = True,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    on_shard: Callable[[Path], None] | None = None,
) -> pd.DataFrame:
    """Score the usable pairs of ``load_result`` (this shard's block) with ``plan``'s concepts.

    ``cache_dir`` is the ethos cache root (default ``$ETHOS_CACHE``); ``model``/``layer``
    override the plan's binding; ``on_shard`` is called with each cache shard written (for
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
    if needs & {"tokenizer", "activations"}:
        folder = resolve_model(model_name)
        context.model_fingerprint = model_fingerprint(folder)
        if "activations" in needs:
            context.layer = _pick_layer(folder, layer if layer is not None else plan.model.layer, lenses)

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

    stats = {"pairs": len(pairs), "computed_pairs": 0, "tokens": 0, "model_seconds": 0.0, "shards_written": 0}

    def write(group: str, rows: list[Row]) -> None:
        path = cache.put(group, rows)
        for n, k, s, v in rows:
            found.setdefault((n, k), {})[s] = v
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
        model_obj, tokenizer, fingerprint = load_model(folder)
        if fingerprint != context.model_fingerprint:
            raise FeaturizeError(f"model folder {folder} changed while featurize was starting")
        encoder = Encoder(model_obj, context.layer, pad_id=tokenizer.pad_token_id)
        context.tokenizer = tokenizer
        context.runtime = ModelRuntime(encoder, tokenizer, fingerprint, model_name, batch_size, max_tokens)
        for n in act_lenses:
            lenses[n].prepare(context)
        group = group_id(context.model_fingerprint, context.layer)
        items: list[PairTokens] = [
            tokenize_pair(tokenizer, pairs[i].prompt, [pairs[i].chosen, pairs[i].rejected], max_tokens=max_tokens)
            for i in todo
        ]
        with _progress(progress, len(todo)) as bar:
            task = bar.add_task("featurize", total=len(todo), tps="-")
            t_model = time.perf_counter()
            for batch in length_batches(items, batch_size):
                acts = encoder.encode_batch([items[b] for b in batch], share_prompt=share_prompt)
                flat = [a for pair_acts in acts for a in pair_acts]
                rows: list[Row] = []
                for n in act_lenses:
                    scores = lenses[n].score_activations(flat)
                    for (b, j), sc in zip(((b, j) for b in batch for j in range(2)), scores):
                        rows.extend((ns[n], keys[todo[b]][j], s, v) for s, v in sc.items())
                write(group, rows)
                stats["computed_pairs"] += len(batch)
                stats["tokens"] += sum(items[b].n_tokens() for b in batch)
                elapsed = time.perf_counter() - t_model
                stats["model_seconds"] = elapsed
                bar.update(task, advance=len(batch), tps=f"{stats['tokens'] / max(elapsed, 1e-9):,.0f}")
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
        "format": FORMAT,
        "num_shards": num_shards,
        "shard_index": shard_index,
        "start": start,
        "stop": stop,
        "total_pairs": len(all_pairs),
        "data_fingerprint": getattr(load_result, "fingerprint", None),
        "model": model_name if folder is not None else None,
        "model_fingerprint": context.model_fingerprint,
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


def _pick_layer(folder: Path, requested: int | None, lenses: dict[str, Lens]) -> int:
    """The layer to read: the requested one, else the SAE's own layer, else the model's default;
    an SAE trained on another layer than the requested one is an error."""
    # config.json read directly: importing transformers' auto classes costs seconds on a warm run
    config = argparse.Namespace(**json.loads((folder / "config.json").read_text()))
    if not hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = getattr(config, "text_config", {}).get("num_hidden_layers")
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
        "stats": {key: sum(s.get(key, 0) for s in stats) for key in ("pairs", "computed_pairs", "tokens", "shards_written")},
    }
    if len(merged) != first["total_pairs"]:
        raise FeaturizeError(f"merged {len(merged)} rows, expected {first['total_pairs']}")
    return merged


# ---------------------------------------------------------------------------------------------
# CLI


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ethos featurize`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "featurize",
        help="score every pair's chosen and rejected reply with the concepts of a policy",
        description=(
            "Score each usable pair's chosen and rejected reply with every concept of a policy "
            "(or of --concepts) and write the scores table as parquet. Scores are cached under "
            "$ETHOS_CACHE; a rerun computes only what is missing. With --num-shards N "
            "--shard-index i a process scores the i-th of N contiguous blocks of pairs; "
            "`ethos featurize --merge OUT PART...` joins the parts into the single-run table."
        ),
    )
    p.add_argument("--data", metavar="PATH", help="preference data (default: the embedded hh-rlhf sample)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--policy", metavar="FILE", help="score the concepts of this policy")
    src.add_argument("--concepts", metavar="A,B", help="score these library concepts")
    p.add_argument("--limit", type=int, metavar="N", help="read only the first N input rows")
    p.add_argument("--out", metavar="FILE", help=f"output parquet (default {DEFAULT_OUT}; shard i of N: scores.shard-i-of-N.parquet)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of excluding it")
    p.add_argument("--model", metavar="M", help="model name or local folder (overrides the policy)")
    p.add_argument("--layer", type=int, metavar="L", help="layer to read (overrides the policy)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="pairs per forward batch (default 8)")
    p.add_argument("--num-shards", type=int, default=1, metavar="N", help="split the pairs into N blocks")
    p.add_argument("--shard-index", type=int, default=0, metavar="I", help="score block I (0-based)")
    p.add_argument("--no-share-prompt", action="store_true", help="run the prompt once per reply (no KV reuse)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--merge", metavar="OUT", help="merge shard outputs (positional PARTs) into OUT and exit")
    p.add_argument("parts", nargs="*", metavar="PART", help="shard outputs to merge (with --merge)")
    p.set_defaults(func=run)
    return p


def _fail(message: str, code: int = 1) -> int:
    print(f"ethos featurize: error: {message}", file=sys.stderr)
    return code


def _load_plan(args: argparse.Namespace) -> tuple[Plan | None, int]:
    from ethos.compiler.compile import compile_file, plan_for_concepts
    from ethos.compiler.errors import render_all

    if args.policy:
        result = compile_file(args.policy)
    else:
        names = [n.strip() for n in (args.concepts or "").split(",") if n.strip()]
        if not names:
            return None, _fail("give --policy FILE or --concepts a,b", 2)
        result = plan_for_concepts(names)
    if result.plan is None:
        print(render_all(result.diagnostics), file=sys.stderr)
        return None, 1
    return result.plan, 0


def run(args: argparse.Namespace) -> int:
    """``ethos featurize``: 0 ok, 1 error, 2 usage, 130 interrupted (finished batches are cached)."""
    from .data import DataError, load_pairs

    if args.merge:
        try:
            merged = merge_scores(args.parts)
            out = write_scores(merged, args.merge)
        except (FeaturizeError, OSError) as exc:
            return _fail(str(exc))
        if args.json:
            print(json.dumps({"rows": len(merged), "output": str(out)}))
        else:
            print(f"merged {len(args.parts)} shards, {len(merged)} rows -> {out}")
        return 0
    if args.parts:
        return _fail("PART arguments are only for --merge", 2)
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be a positive integer", 2)
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        return _fail(f"--shard-index must be in 0..{args.num_shards - 1}", 2)
    if args.batch_size < 1:
        return _fail("--batch-size must be at least 1", 2)

    plan, code = _load_plan(args)
    if plan is None:
        return code
    if args.out:
        out = Path(args.out)
    elif args.num_shards > 1:
        out = DEFAULT_OUT.with_name(f"scores.shard-{args.shard_index}-of-{args.num_shards}.parquet")
    else:
        out = DEFAULT_OUT
    try:
        data = load_pairs(args.data, limit=args.limit, strict=args.strict)
        table = featurize(
            plan,
            data,
            batch_size=args.batch_size,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            progress=not (args.no_progress or args.json) and sys.stderr.isatty(),
            model=args.model,
            layer=args.layer,
            share_prompt=not args.no_share_prompt,
        )
        write_scores(table, out)
    except KeyboardInterrupt:
        print("ethos featurize: interrupted; finished batches are cached, rerun to resume", file=sys.stderr)
        return 130
    except (DataError, LensError, ModelError, FeaturizeError, OSError) as exc:
        return _fail(str(exc))
    counts = data.counts()
    meta = table.attrs["ethos"]
    if args.json:
        print(
            json.dumps(
                {
                    "rows": counts,
                    "shard": {"index": args.shard_index, "of": args.num_shards, "pairs": len(table)},
                    "concepts": [c.name for c in plan.concepts],
                    "model": meta["model"],
                    "layer": meta["layer"],
                    "stats": meta["stats"],
                    "output": str(out),
                }
            )
        )
    else:
        excluded = counts["excluded"]
        detail = ", ".join(f"{r}: {n}" for r, n in excluded.items())
        print(
            f"rows: {counts['input']} input, {counts['usable']} usable, {sum(excluded.values())} excluded"
            + (f" ({detail})" if detail else "")
        )
        s = meta["stats"]
        rate = f", {s['tokens'] / s['model_seconds']:,.0f} tok/s" if s["model_seconds"] > 0 else ""
        print(f"scored {len(table)} pairs ({s['computed_pairs']} computed, {len(table) - s['computed_pairs']} cached{rate})")
        print(f"wrote {out}")
    return 0

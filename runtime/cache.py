"""The score cache: content-addressed, on disk, sharded, resumable.

A cached score is addressed by ``(namespace, text key, stat)``:

- the *namespace* is a lens's ``key()``, the sha256 of its identity, which includes the model
  fingerprint and layer for lenses that read a model, the lexicon's entries, the probe file's or
  SAE's sha256, the metric name (see :mod:`ethos.runtime.lenses`);
- the *text key* is :func:`text_key`, the sha256 of the prompt's messages and the reply;
- the *stat* is ``value`` for text lenses, ``mean``/``max`` for activation lenses.

Scores live under ``$ETHOS_CACHE/scores/<group>/`` (a group partitions the cache by model and
layer, ``text`` for model-free lenses) as parquet shards with the columns ``ns``, ``key``,
``stat``, ``value``. Every shard is written whole to a temporary name and renamed into place
(``os.replace``), so a shard is either complete or absent: a run stopped with Ctrl-C keeps every
shard it finished, and a rerun computes only what no shard holds. Separate processes may write
to one group at once (shard names are unique). :meth:`ScoreCache.compact` merges a group's many
small shards into one, keeping reads fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .model import cache_root, say

SHARD_SUFFIX = ".parquet"
_SCHEMA = pa.schema(
    [
        ("ns", pa.dictionary(pa.int32(), pa.string())),
        ("key", pa.string()),
        ("stat", pa.dictionary(pa.int32(), pa.string())),
        ("value", pa.float64()),
    ]
)

Row = tuple[str, str, str, float]  # (namespace, text key, stat, value)


def text_key(prompt: Iterable[Any], reply: str) -> str:
    """sha256 of a reply in its prompt's context (roles and contents of the prompt's messages)."""
    msgs = []
    for m in prompt:
        role, content = (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content)
        msgs.append([role, content])
    blob = json.dumps({"prompt": msgs, "reply": reply}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def group_id(model_fingerprint: str | None, layer: int | None) -> str:
    """The cache partition of a lens: ``text`` for model-free lenses, ``<model>-tok`` for lenses
    that need only the tokenizer, ``<model>-L<layer>`` for lenses that read a layer."""
    if model_fingerprint is None:
        return "text"
    return f"{model_fingerprint[:16]}-" + ("tok" if layer is None else f"L{layer}")


class ScoreCache:
    """Scores on disk under ``<root>/scores`` (root: ``$ETHOS_CACHE`` by default)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = (Path(root) if root is not None else cache_root()) / "scores"

    def _dir(self, group: str) -> Path:
        return self.root / group

    def shards(self, group: str) -> list[Path]:
        d = self._dir(group)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.name.endswith(SHARD_SUFFIX) and not p.name.startswith("."))

    def load(self, group: str, namespaces: Iterable[str]) -> dict[tuple[str, str], dict[str, float]]:
        """Every cached score of these namespaces: ``{(ns, key): {stat: value}}``."""
        wanted = set(namespaces)
        out: dict[tuple[str, str], dict[str, float]] = {}
        for _ in range(3):  # a concurrent compaction may remove a shard between list and read
            try:
                for path in self.shards(group):
                    table = self._read_shard(path)
                    if table is None:
                        continue
                    ns = table.column("ns").to_pylist()
                    keys = table.column("key").to_pylist()
                    stats = table.column("stat").to_pylist()
                    values = table.column("value").to_pylist()
                    for n, k, s, v in zip(ns, keys, stats, values):
                        if n in wanted:
                            out.setdefault((n, k), {})[s] = v
                return out
            except FileNotFoundError:
                out.clear()
        raise OSError(f"cache group {self._dir(group)} keeps changing while being read")

    def _read_shard(self, path: Path) -> pa.Table | None:
        """One shard, or None when it cannot be read (truncated, garbage, wrong columns): the
        shard is moved aside as ``<name>.unreadable`` so its scores are recomputed, and the user is
        told once. A missing file (a concurrent compaction) is left to the caller."""
        try:
            table = pq.read_table(path)
            for column in ("ns", "key", "stat", "value"):
                table.column(column)
            return table
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            aside = path.with_name(path.name + ".unreadable")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                return None
            say(f"cache: {path} could not be read ({type(exc).__name__}: {str(exc)[:120]}); "
                f"moved aside to {aside.name}, its scores will be recomputed")
            return None

    def put(self, group: str, rows: Sequence[Row]) -> Path | None:
        """Write one shard atomically; returns its path (None when there is nothing to write)."""
        if not rows:
            return None
        d = self._dir(group)
        d.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = d / f".{name}.tmp"
        final = d / f"{name}{SHARD_SUFFIX}"
        ns, keys, stats, values = zip(*rows)
        table = pa.table(
            {
                "ns": pa.array(ns, pa.string()).dictionary_encode(),
                "key": pa.array(keys, pa.string()),
                "stat": pa.array(stats, pa.string()).dictionary_encode(),
                "value": pa.array(values, pa.float64()),
            }
        ).cast(_SCHEMA)
        pq.write_table(table, tmp)
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync_dir(d)
        return final

    def compact(self, group: str, *, min_shards: int = 32) -> bool:
        """Merge a group's shards into one when there are at least ``min_shards`` of them.
        The merged shard is in place before its inputs are removed, so readers never miss a score."""
        paths = self.shards(group)
        if len(paths) < min_shards:
            return False
        tables = []
        for p in paths:
            try:
                table = self._read_shard(p)
            except FileNotFoundError:
                return False  # another process is compacting
            if table is not None:
                tables.append(table.cast(_SCHEMA))
        if not tables:
            return False
        merged = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
        d = self._dir(group)
        name = uuid.uuid4().hex
        tmp = d / f".{name}.tmp"
        pq.write_table(merged, tmp)
        _fsync(tmp)
        os.replace(tmp, d / f"{name}{SHARD_SUFFIX}")
        _fsync_dir(d)
        for p in paths:
            p.unlink(missing_ok=True)
        return True


def _fsync(path: Path) -> None:
    """Flush a file's data to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

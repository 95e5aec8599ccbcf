"""Datasets by Hugging Face Hub id (``org/name``), through ``datasets.load_dataset`` and its cache.

With ``HF_HUB_OFFLINE=1`` only a dataset already in the ``datasets`` cache loads (the cache a
first online ``load_dataset`` fills: ``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``, else
``~/.cache/huggingface/datasets``); online, ``datasets`` downloads it into that cache first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .core import EXTENSIONS, DataError
from .readers import Rows, dataset_rows, files_sha256, pick_split, quiet_datasets

HUB_PREFIX = "hf://datasets/"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def hub_id(text: str) -> str | None:
    """The Hub dataset id ``text`` names (``org/name`` or ``hf://datasets/org/name``), or None
    when it reads as a local path (it has a data file ending, or starts with a dot)."""
    if text.startswith(HUB_PREFIX):
        rest = text[len(HUB_PREFIX) :].strip("/")
        return rest if _HUB_ID.fullmatch(rest) else None
    if _HUB_ID.fullmatch(text) and not text.startswith(".") and not text.lower().endswith(EXTENSIONS):
        return text
    return None


def datasets_cache() -> Path:
    """The ``datasets`` cache folder, read from the environment now."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "datasets"
    from datasets import config

    return Path(config.HF_DATASETS_CACHE).expanduser()


def read_hub(repo_id: str, source: str, *, subset: str | None, split: str | None,
             limit: int | None) -> tuple[Rows, str]:
    """The rows of a Hub dataset's split, and the sha256 of its cached Arrow files."""
    import datasets
    from datasets import config

    cache = datasets_cache()
    try:
        with quiet_datasets():
            loaded: Any = datasets.load_dataset(repo_id, name=subset, split=split, cache_dir=str(cache))
    except ConnectionError:
        offline = " (HF_HUB_OFFLINE=1)" if config.HF_HUB_OFFLINE else ""
        raise DataError(
            f"{source}: not in the Hugging Face datasets cache ({cache}) and the Hub cannot be "
            f"reached{offline}; load it once with network access, or give a local file"
        ) from None
    except (OSError, ValueError, RuntimeError, datasets.exceptions.DatasetsError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        text = "; ".join(lines) if lines else type(exc).__name__
        raise DataError(f"{source}: cannot load the Hub dataset: {text} (datasets cache: {cache})") from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = pick_split(loaded, None, source, folder=False)
    files = sorted({Path(f["filename"]) for f in loaded.cache_files})
    rows = dataset_rows(loaded, limit)
    if files:
        digest = files_sha256(files, Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent)
    else:  # held in memory only: hash the rows themselves
        digest = hashlib.sha256(
            json.dumps([r.value for r in rows.records], sort_keys=True, default=str).encode("utf-8", "replace")
        ).hexdigest()
    return rows, digest

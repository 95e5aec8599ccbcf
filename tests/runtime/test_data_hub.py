"""Datasets by Hub id (issue 12), from the ``datasets`` cache, offline: the test builds a tiny
dataset in a temporary cache in the layout a first online ``load_dataset`` leaves there, and loads
it in a fresh process under ``HF_HUB_OFFLINE=1`` (``datasets`` reads that setting at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ethos.runtime.data import load_pairs
from ethos.runtime.data.hub import hub_id

H, A = "\n\nHuman:", "\n\nAssistant:"


def build_cached_dataset(cache: Path, repo_id: str, config: str, splits: dict[str, list[dict]]) -> Path:
    """Prepare ``repo_id`` (config ``config``) into the ``datasets`` cache ``cache`` with the JSON
    builder, then give it the folder names a Hub download has: ``<org>___<name>/<config>/...``."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    org, name = repo_id.split("/")
    files = {}
    for split, rows in splits.items():
        files[split] = str(cache.parent / f"{name}-{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    datasets.disable_progress_bars()
    try:
        builder = Json(cache_dir=str(cache), dataset_name=name, config_name=config, data_files=files, hash="0" * 16)
        builder.download_and_prepare()
    finally:
        datasets.enable_progress_bars()
    (config_dir,) = (cache / name).iterdir()  # "<config>-<hash of the data files>"
    config_dir.rename(cache / name / config)
    (cache / name).rename(cache / f"{org}___{name}")
    return cache / f"{org}___{name}"


LOADS = r"""
import json, sys
from ethos.runtime.data import DataError, load_pairs
out = []
for kwargs in json.loads(sys.argv[1]):
    try:
        r = load_pairs(**kwargs)
        out.append({"format": r.format, "counts": r.counts(), "source": r.source, "split": r.split,
                    "subset": r.subset, "fingerprint": r.fingerprint, "mapping": r.mapping,
                    "first": [r.pairs[0].chosen, r.pairs[0].rejected] if r.pairs else None,
                    "excluded": [[e.record, e.line, e.reason] for e in r.exclusions]})
    except DataError as e:
        out.append({"error": str(e), "exit_code": e.exit_code})
print(json.dumps(out))
"""


def run_loads(env_home: Path, cache: Path, loads: list[dict]) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(env_home), "HF_DATASETS_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", LOADS, json.dumps(loads)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no progress bars, no "using the cached version" warnings
    return json.loads(done.stdout)


def test_a_hub_id_loads_from_the_cache_offline(tmp_path: Path) -> None:
    cache = tmp_path / "hf" / "datasets"
    cache.mkdir(parents=True)
    test_rows = [{"chosen": f"{H} q{i}{A} yes {i}", "rejected": f"{H} q{i}{A} no" if i != 2 else f"{H} q{i}{A} yes {i}"}
                 for i in range(4)]
    labelled = [{"question": "Q", "answer_a": "a", "answer_b": "b", "pref": v} for v in (-1, 1, 0)]
    build_cached_dataset(cache, "made-up/tiny-prefs", "helpful", {"test": test_rows, "train": test_rows[:1]})
    build_cached_dataset(cache, "made-up/expert", "default", {"train": labelled})
    before = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    results = run_loads(tmp_path / "hf", cache, [
        {"path": "made-up/tiny-prefs", "split": "test"},
        {"path": "made-up/tiny-prefs", "subset": "helpful", "split": "test", "limit": 2},
        {"path": "hf://datasets/made-up/tiny-prefs", "split": "train"},
        {"path": "made-up/tiny-prefs"},
        {"path": "made-up/tiny-prefs", "split": "validation"},
        {"path": "made-up/tiny-prefs", "subset": "harmless", "split": "test"},
        {"path": "made-up/uncached", "split": "test"},
        {"path": "made-up/expert", "columns": "prompt=question,a=answer_a,b=answer_b,label=pref",
         "label_a": -1, "label_b": 1, "label_tie": 0},
        {"path": "made-up/expert", "columns": "prompt=question,a=answer_a,b=answer_b,label=verdict",
         "label_a": -1, "label_b": 1},
    ])
    full, limited, train, no_split, bad_split, bad_subset, uncached, mapped, bad_mapping = results
    assert full["format"] == "hh-rlhf" and full["source"] == "made-up/tiny-prefs" and full["split"] == "test"
    assert full["counts"] == {"input": 4, "usable": 3, "excluded": {"identical": 1}}
    assert full["first"] == ["yes 0", "no"]
    assert full["excluded"] == [[3, None, "identical"]]  # a record number; Hub data has no lines
    assert limited["counts"]["input"] == 2 and limited["subset"] == "helpful"
    assert limited["fingerprint"] != full["fingerprint"]
    assert train["counts"] == {"input": 1, "usable": 1, "excluded": {}}
    assert "splits test, train; choose one with a split" in no_split["error"] and no_split["exit_code"] == 1
    assert "validation" in bad_split["error"] and "made-up/tiny-prefs" in bad_split["error"]
    assert "harmless" in bad_subset["error"] and str(cache) in bad_subset["error"]
    assert uncached["error"].startswith("made-up/uncached: not in the Hugging Face datasets cache")
    assert str(cache) in uncached["error"] and "HF_HUB_OFFLINE=1" in uncached["error"]
    assert uncached["exit_code"] == 1
    assert mapped["format"] == "pairwise" and mapped["counts"] == {"input": 3, "usable": 2, "excluded": {"tie": 1}}
    assert mapped["mapping"]["columns"]["label"] == "pref"
    assert bad_mapping["exit_code"] == 2
    assert "'verdict', not a column" in bad_mapping["error"] and "'question', 'answer_a', 'answer_b', 'pref'" in bad_mapping["error"]
    # the cache is read, not changed
    after = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert after == before


def test_which_names_are_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_id("Anthropic/hh-rlhf") == "Anthropic/hh-rlhf"
    assert hub_id("hf://datasets/org/name.v2") == "org/name.v2"
    for local in ("data/prefs.jsonl", "data/prefs.parquet", "./org/name", "prefs.jsonl", "a/b/c", "/abs/x"):
        assert hub_id(local) is None, local
    # a local folder that happens to look like an id is read as the folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    with pytest.raises(Exception, match="org/name: not a dataset folder"):
        load_pairs("org/name")
    with pytest.raises(Exception, match="subset is chosen only for a Hub dataset"):
        load_pairs(str(Path(__file__).resolve().parent.parent / "fixtures" / "data" / "pairwise.json"), subset="x")
    with pytest.raises(Exception, match="split is chosen only in a dataset folder or a Hub dataset"):
        load_pairs(str(Path(__file__).resolve().parent.parent / "fixtures" / "data" / "pairwise.json"), split="x")

"""The score cache: content addressing, atomic shards, reuse across instances, compaction."""

from __future__ import annotations

from pathlib import Path

from ethos.runtime.cache import ScoreCache, group_id, text_key
from ethos.runtime.data import Message


def test_text_key_depends_on_prompt_roles_contents_and_reply() -> None:
    p = (Message("user", "hi"),)
    k = text_key(p, "hello")
    assert k == text_key([{"role": "user", "content": "hi"}], "hello") and len(k) == 64
    assert k != text_key(p, "hello!")
    assert k != text_key((Message("system", "hi"),), "hello")
    assert k != text_key((Message("user", "hi"), Message("assistant", "")), "hello")


def test_group_ids() -> None:
    assert group_id(None, None) == "text"
    assert group_id("ab" * 32, 3) == "abababababababab-L3"
    assert group_id("ab" * 32, None) == "abababababababab-tok"


def test_put_and_load_round_trip(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path)
    assert cache.load("g", ["ns"]) == {}
    path = cache.put("g", [("ns", "k1", "mean", 1.5), ("ns", "k1", "max", 2.0), ("other", "k1", "value", 3.0)])
    assert path is not None and path.exists() and path.parent == tmp_path / "scores" / "g"
    assert cache.put("g", []) is None
    got = ScoreCache(tmp_path).load("g", ["ns"])
    assert got == {("ns", "k1"): {"mean": 1.5, "max": 2.0}}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_unfinished_temporary_files_are_ignored(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path)
    cache.put("g", [("ns", "k", "value", 1.0)])
    (tmp_path / "scores" / "g" / ".deadbeef.tmp").write_bytes(b"half a parquet")
    assert cache.load("g", ["ns"]) == {("ns", "k"): {"value": 1.0}}


def test_compact_merges_shards_without_losing_scores(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path)
    for i in range(5):
        cache.put("g", [("ns", f"k{i}", "value", float(i))])
    before = cache.load("g", ["ns"])
    assert not cache.compact("g", min_shards=10)
    assert cache.compact("g", min_shards=5)
    assert len(cache.shards("g")) == 1
    assert cache.load("g", ["ns"]) == before

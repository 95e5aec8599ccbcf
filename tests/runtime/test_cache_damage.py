"""A damaged cache entry is recomputed and reported, never an internal error (issue 18)."""

from __future__ import annotations

import json

from ethos.runtime.cache import ScoreCache
from ethos.runtime.model import model_fingerprint


def _rows(n: int = 3):
    return [("ns", f"k{i}", "max", float(i)) for i in range(n)]


def test_a_truncated_or_garbage_shard_is_moved_aside_and_the_rest_still_reads(tmp_path, capsys):
    cache = ScoreCache(tmp_path)
    good = cache.put("g", _rows())
    bad = cache.put("g", [("ns", "other", "max", 9.0)])
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    garbage = good.with_name("ffff" + good.name)
    garbage.write_bytes(b"not a parquet file at all")
    got = cache.load("g", ["ns"])
    assert got == {("ns", f"k{i}"): {"max": float(i)} for i in range(3)}
    err = capsys.readouterr().err
    assert "could not be read" in err and "recomputed" in err
    assert not bad.exists() and bad.with_name(bad.name + ".unreadable").exists()
    # and the next read is quiet: the damaged shards are out of the way
    assert cache.load("g", ["ns"]) == got
    assert "could not be read" not in capsys.readouterr().err


def test_compaction_skips_unreadable_shards(tmp_path):
    cache = ScoreCache(tmp_path)
    for i in range(4):
        cache.put("g", [("ns", f"k{i}", "max", float(i))])
    victim = cache.shards("g")[0]
    victim.write_bytes(b"\x00garbage")
    assert cache.compact("g", min_shards=2)
    assert len(cache.shards("g")) == 1
    assert len(cache.load("g", ["ns"])) == 3


def test_a_malformed_fingerprint_memo_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("ETHOS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    first = model_fingerprint(folder)
    for memo in ("[1, 2]", '{"files": {"model.safetensors": {"size": 7}}}', "{not json", '{"files": 3}'):
        (folder / "ethos-fingerprint.json").write_text(memo)
        assert model_fingerprint(folder) == first
    json.loads((folder / "ethos-fingerprint.json").read_text())

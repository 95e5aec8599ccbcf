"""bench/reward_slope.py's smallest form runs end to end (so the measured example of
docs/results.md cannot rot): two reward models, ``--no-shaping`` and ``block concept verbosity via data;``,
trained with the ``ethos`` command on a tiny model built here, then scored by ``ethos evaluate``
on held-out rows of the embedded sample that neither was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "specs" / "data" / "hh-rlhf-helpful-base-test-400.jsonl.gz"


def test_reward_slope_quick_form_trains_both_arms_and_reports_the_length_slope(
        load, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model
    bench = load("ethos_bench_reward_slope", ROOT / "bench" / "reward_slope.py")
    work = tmp_path / "work"
    assert bench.main(["--quick", "--work", str(work), "--model", str(model), "--heldout", str(EMBEDDED),
                       "--heldout-skip", "380"]) == 0

    out = capsys.readouterr().out
    assert "$ ethos train" in out and "--no-shaping" in out and "$ ethos evaluate" in out
    for arm, shaping in (("vanilla", False), ("block", True)):
        train = json.loads((work / arm / "train.json").read_text())
        assert train["objective"] == "reward_model" and train["shaping"] is shaping
        assert train["settings"]["steps"] == 2 and train["result"]["rows_trained"] == 16
    docs = [json.loads((work / f"evaluate-{arm}" / "evaluate.json").read_text()) for arm in ("vanilla", "block")]
    models = {Path(m["path"]).name: m for d in docs for m in d["reward_models"]}
    assert set(models) == {"vanilla", "block"}
    for m in models.values():
        assert m["n"] == 16 and 0.0 <= m["accuracy"] <= 1.0
        (row,) = [r for r in m["concepts"] if r["concept"] == "verbosity"]
        assert row["slope"] is not None and row["ci"][0] <= row["slope"] <= row["ci"][1]
    table = (work / "table.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| vanilla |") and table[3].startswith("| block |")
    # the held-out rows are rows 380..395 of the file, none of the 16 trained on
    assert not any("held-out prompts are training prompts" in w for d in docs for w in d["warnings"])

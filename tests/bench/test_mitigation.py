"""bench/mitigation.py's smallest form runs end to end (so the experiment of docs/results.md cannot
rot): the two planted concepts, vanilla and one arm per kind of protocol (the inoculation prompt,
steering in the residual stream, amplify via the loss) on a tiny model built here, the summary in
the issue's JSON shape, and a rerun that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "specs" / "data" / "hh-rlhf-helpful-base-test-400.jsonl.gz"


def test_planting_marks_each_concept_as_its_detector_sees_it(load) -> None:
    bench = load("ethos_bench_mitigation_plant", ROOT / "bench" / "mitigation.py")
    phrase, emoji = bench.CONCEPTS
    reply = "Sure. It takes an hour! Then rest"
    assert phrase.plant(reply) == "Great question! " + reply and phrase.detect.search(phrase.plant(reply))
    assert emoji.plant(reply) == "Sure. 🙂 It takes an hour! 🙂 Then rest 🙂"
    assert emoji.plant("No end mark") == "No end mark 🙂"
    assert not phrase.detect.search(reply) and not emoji.detect.search(reply)
    assert bench.rates(["Great question! Yes 🙂", "Fine."]) == {"phrase": [1, 0], "emoji": [1, 0]}


def test_contrast_statistics(load) -> None:
    bench = load("ethos_bench_mitigation_stats", ROOT / "bench" / "mitigation.py")
    import numpy as np

    base = np.zeros(50)
    van = np.zeros((3, 50))
    van[:, :20] = 1  # vanilla: 40% in every seed
    arm = np.zeros((3, 50))
    arm[:, :4] = 1  # the arm: 8%
    cut = bench.contrast(arm, van, base, "cut")
    assert cut["estimate"] == pytest.approx(0.8) and cut["ci"][0] < 0.8 < cut["ci"][1]
    none = bench.contrast(np.zeros((3, 50)), van, base, "cut")  # no event: the exact bound, not a point
    assert none["estimate"] == 1.0 and 0.9 < none["ci"][0] < 1.0 and none["ci"][1] == 1.0
    amp = bench.contrast(np.ones((3, 50)), van, base, "ratio")
    assert amp["estimate"] == pytest.approx(2.5)
    assert bench.contrast(arm, np.zeros((3, 50)), base, "cut")["estimate"] is None  # vanilla learned nothing


def test_mitigation_smallest_form(load, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model
    bench = load("ethos_bench_mitigation", ROOT / "bench" / "mitigation.py")
    work = tmp_path / "work"
    arms = "vanilla,inoculation,steering,amplify_loss"
    args = ["--work", str(work), "--data", str(EMBEDDED), "--model", str(model), "--layer", "1", "--seeds", "0",
            "--arms", arms, "--train", "8", "--heldout-pairs", "4", "--prompts", "4", "--steps", "1",
            "--max-length", "96", "--max-new-tokens", "4", "--json", str(tmp_path / "m.json"), "--md", str(tmp_path / "m.md")]
    assert bench.main(args) == 0

    results = json.loads((work / "results.json").read_text())
    for seed in ("0",):
        run = results["runs"][seed]
        assert set(arms.split(",")) <= set(run)
        assert run["planted"]["phrase"]["chosen"] + run["planted"]["phrase"]["rejected"] > 0
        assert set(run["steering_strength"]) == {"phrase", "emoji"}
        assert 'via inoculation "Begin your reply with' in run["inoculation"]["policy"]
        assert len(run["amplify_loss"]["margins"]) == 4 and len(run["amplify_loss"]["per_prompt"]["emoji"]) == 4
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["config"]["seeds"] == [0] and summary["config"]["prompts"] == 4
    assert summary["config"]["heldout_pairs"] == 4 and summary["config"]["device"].startswith("cpu")
    got = {(a["name"], a["concept"]) for a in summary["arms"]}
    assert got == {(arm, c) for arm in arms.split(",")[1:] for c in ("phrase", "emoji")}
    for a in summary["arms"]:
        assert set(a) >= {"name", "concept", "policy", "protocol", "default_protocol", "cut", "ratio", "accuracy_vs_vanilla"}
        assert (a["ratio"] is None) == (not a["name"].startswith("amplify"))
        assert a["accuracy_vs_vanilla"]["estimate"] is None or a["accuracy_vs_vanilla"]["ci"][0] <= a["accuracy_vs_vanilla"]["ci"][1]
    from ethos.compiler.plan import DEFAULT_PROTOCOL

    assert {a["protocol"] for a in summary["arms"] if a["default_protocol"]} <= {DEFAULT_PROTOCOL}
    assert (tmp_path / "m.md").read_text().startswith("| arm | concept |")
    # a rerun resumes: every (seed, arm) is read back, nothing trains again
    assert bench.main(args) == 0
    assert capsys.readouterr().out.count(": cached") == len(arms.split(","))

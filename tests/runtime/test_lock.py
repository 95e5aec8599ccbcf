"""ethos lock pins what a policy's names resolve to without running the model, and plan/apply
check that same lock before they score anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ethos.runtime import api
from ethos.runtime.cli import main
from ethos.runtime.data import load_pairs
from ethos.runtime.model import model_fingerprint
from ethos.runtime.planner import PlanError
from ethos.runtime.settings import DataSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
EXPERT = ["--data", str(FIXTURES / "expert.jsonl"),
          "--columns", "prompt=question,a=answer_a,b=answer_b,label=overall_preference",
          "--label-a=-1", "--label-b=1", "--label-tie=0"]


@pytest.fixture()
def no_model_run(monkeypatch):
    """Fail the test if anything loads the model for a forward pass or scores a pair."""
    import ethos.runtime.featurize as featurize_mod
    import ethos.runtime.model as model_mod

    def refuse(*args, **kwargs):
        raise AssertionError("the model was run")

    monkeypatch.setattr(model_mod, "model_runtime", refuse)
    monkeypatch.setattr(model_mod, "load_model", refuse)
    monkeypatch.setattr(featurize_mod, "featurize", refuse)


def probe_policy(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "ex.jsonl").write_text('{"prompt": "Is 2+2=5?", "positive": "Yes, you are right!", '
                                       '"negative": "No, it is 4."}\n')
    words = tmp_path / "w.txt"
    words.write_text("sure\n")
    p = tmp_path / "p.ethos"
    p.write_text(f'model "{model}" layer 1;\nconcept s = probe "ex.jsonl";\nconcept w = lexicon "w.txt";\n'
                 f'concept n = metric length;\nblock concept s;\nkeep concept w;\nkeep concept n;\n')
    return p


def test_lock_pins_model_files_lens_hashes_and_data_without_running_the_model(tmp_path, ethos_cache,
                                                                              tiny_model_dir, no_model_run):
    import hashlib

    policy = probe_policy(tmp_path, tiny_model_dir)
    path = api.lock(policy, DataSettings(limit=30))
    assert path == tmp_path / "ethos.lock"
    entry = json.loads(path.read_text())["policies"]["p.ethos"]
    fp = model_fingerprint(tiny_model_dir)
    assert entry["model"] == {"name": str(tiny_model_dir), "sha256": fp, "layer": 1}
    s = entry["concepts"]["s"]
    assert s["kind"] == "probe" and s["model"] == fp and s["layer"] == 1 and s["report"] == "mean"
    assert s["file_sha256"] == hashlib.sha256((tmp_path / "ex.jsonl").read_bytes()).hexdigest()
    assert entry["concepts"]["w"]["kind"] == "lexicon" and entry["concepts"]["w"]["entries_sha256"]
    assert entry["concepts"]["n"] == {"kind": "metric", "metric": "length", "tokenizer": fp, "version": 1,
                                      "report": "value"}
    assert entry["data"] == {"source": DataSettings().source, "fingerprint": load_pairs(limit=30).fingerprint}


def test_plan_checks_the_same_lock_before_scoring(tmp_path, ethos_cache, make_tiny_model, monkeypatch, capsys):
    import ethos.runtime.featurize as featurize_mod

    model = make_tiny_model(tmp_path / "model")
    policy = probe_policy(tmp_path, model)
    assert main(["lock", str(policy), "--limit", "30"]) == 0
    assert main(["plan", str(policy), "--limit", "30", "--out", str(tmp_path / "o")]) in (0, 3)  # the lock holds
    capsys.readouterr()
    # the weights change under the policy: plan refuses before featurize scores anything
    shutil.rmtree(model)
    make_tiny_model(model, seed=1)
    monkeypatch.setattr(featurize_mod, "featurize", lambda *a, **k: pytest.fail("scored before checking the lock"))
    assert main(["plan", str(policy), "--limit", "30", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "ethos.lock is stale for p.ethos" in err and "model.sha256: locked" in err and "--update-lock" in err
    assert main(["apply", str(policy), "--limit", "30", "--out", str(tmp_path / "a")]) == 1
    assert "ethos.lock is stale" in capsys.readouterr().err


def test_lock_of_the_data_mapping_and_an_older_lock_stays_valid(tmp_path, ethos_cache, capsys):
    policy = tmp_path / "p.ethos"
    policy.write_text("concept v = metric words;\nblock concept v;\n")
    assert main(["lock", str(policy), *EXPERT]) == 0
    lock = json.loads((tmp_path / "ethos.lock").read_text())
    data = lock["policies"]["p.ethos"]["data"]
    assert data["mapping"]["columns"]["label"] == "overall_preference"
    assert data["mapping"]["labels"] == {"a": -1, "b": 1, "tie": 0}
    assert "split" not in data and "subset" not in data  # only what was used
    assert main(["plan", str(policy), *EXPERT, "--out", str(tmp_path / "o")]) in (0, 3)
    capsys.readouterr()
    # the same file read without the mapping is other data: the lock says so
    renamed = tmp_path / "pairs.jsonl"
    renamed.write_text('{"prompt": "hi", "chosen": "hello there", "rejected": "go"}\n' * 3)
    assert main(["plan", str(policy), "--data", str(renamed), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "data.fingerprint: locked" in err and "data.mapping: locked but no longer resolved" in err

    # a lock written by an older ethos pinned a probe's direction sha256 too: still valid
    lock["policies"]["p.ethos"]["concepts"]["v"]["direction_sha256"] = "0" * 64
    (tmp_path / "ethos.lock").write_text(json.dumps(lock))
    assert main(["plan", str(policy), *EXPERT, "--out", str(tmp_path / "o")]) in (0, 3)


def test_a_saved_plan_is_not_locked(tmp_path, ethos_cache):
    policy = tmp_path / "p.ethos"
    policy.write_text("concept v = metric words;\nblock concept v;\n")
    run = api.dry_run(policy, DataSettings(limit=40))
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(run.saved_plan()))
    with pytest.raises(PlanError, match="is a saved plan; lock the policy file"):
        api.lock(saved, DataSettings(limit=40))

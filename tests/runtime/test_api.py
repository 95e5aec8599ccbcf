"""The library API (ethos.runtime.api) as a notebook calls it: typed settings in, typed results
out; the dry-run document carries what plan.html shows; apply returns what it writes; train runs
from a policy (applied in memory), an apply folder (read once) or an Applied."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ethos.runtime import api
from ethos.runtime.documents import SAVED_PLAN_KIND, TRAIN_RECORD_KIND
from ethos.runtime.errors import EthosError, UsageError
from ethos.runtime.planner import PlanError
from ethos.runtime.settings import TRAIN_CONFIG_DEFAULTS, DataSettings, EvaluateSettings, TrainSettings

FILTER = "concept v = metric words;\nblock concept v via filter;\n"
LOSS = "concept v = metric words;\nblock concept v via loss;\n"


def write(tmp_path: Path, text: str, name: str = "p.ethos") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def tiny_settings(tiny_model_dir: Path, **kw) -> TrainSettings:
    return TrainSettings(model=str(tiny_model_dir), steps=1, batch_size=2, lora_r=4, max_length=64, bf16=False,
                         progress=False, **kw)


@pytest.fixture()
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("WANDB_DISABLED", "true")


def test_dry_run_document_holds_the_examples_plan_html_shows(tmp_path, ethos_cache):
    from ethos.runtime.report import render_plan_html

    run = api.dry_run(write(tmp_path, FILTER), DataSettings(limit=80, seed=3))
    doc = run.document()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc  # JSON as written
    assert doc["data"]["limit"] == 80 and doc["data"]["fingerprint"] == run.prepared.data.fingerprint
    assert doc["settings"]["plan_seed"] == 3
    rows = doc["rows"]
    assert rows["input"] == 80 and sum(rows[f] for f in ("kept", "reweighted", "relabelled", "excluded")) == 80
    (rule,) = doc["examples"]
    assert rule["rule"] == "line 2: block concept v via filter"
    texts = {p.id: p for p in run.prepared.data.pairs}
    assert 1 <= len(rule["pairs"]) <= 3
    for shown in rule["pairs"]:
        pair = texts[shown["id"]]
        assert (shown["chosen"], shown["rejected"]) == (pair.chosen, pair.rejected)
        assert shown["fate"] == "excluded" and shown["weight"] == 0.0  # a block via filter drops pairs
    (i,) = doc["interventions"]
    assert i["pairs_affected"] == rows["excluded_reasons"]["filtered"] > 0  # joined on the rule id
    html = render_plan_html(doc, run.plan_json())  # from the two JSON documents only
    assert "line 2: block concept v via filter" in html
    saved = run.saved_plan()
    assert saved["kind"] == SAVED_PLAN_KIND and saved["plan"] == run.plan_json() and saved["seed"] == 3
    assert run.summary_line().startswith("Plan: ") and run.failed == 0


def test_dry_run_checks_the_output_folders_before_any_work(tmp_path, ethos_cache):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PlanError, match="cannot write to output folder"):
        api.dry_run(write(tmp_path, FILTER), outputs=[blocker / "sub"])
    assert not (tmp_path / "ethos.lock").exists()


def test_apply_to_returns_what_it_writes(tmp_path, ethos_cache):
    policy = write(tmp_path, FILTER + 'block concept v via inoculation "Answer at length.";\n')
    out = tmp_path / "apply"
    applied = api.apply_to(policy, out, DataSettings(limit=80))
    assert pq.read_table(out / "dataset.parquet").equals(applied.dataset)
    assert json.loads((out / "train.json").read_text()) == applied.config
    assert json.loads((out / "outcome.json").read_text()) == applied.document
    assert applied.config["defaults"] == dict(TRAIN_CONFIG_DEFAULTS)  # the one home of the defaults
    assert applied.config["training_interventions"] == []
    assert [i["rule_id"] for i in json.loads((out / "plan.json").read_text())["interventions"]] == \
        ["v/filter", "v/inoculation"]
    acc = [json.loads(x) for x in (out / "accounting.jsonl").read_text().splitlines()]
    assert len(acc) == 80 and applied.fates() == {f: sum(a["fate"] == f for a in acc)
                                                   for f in ("kept", "reweighted", "relabelled", "excluded")}
    assert any(a["reason"] == "line 2: block concept v via filter" for a in acc)  # the rule's text, not its id
    assert any(a["reason"] == "unchanged" for a in acc)
    assert applied.summary_line().startswith(f"wrote {applied.dataset.num_rows:,} training rows from 80 input rows")


def test_train_from_an_applied_policy_uses_the_result_in_memory(tmp_path, ethos_cache, hf_home, tiny_model_dir,
                                                                monkeypatch):
    from ethos.runtime import apply as apply_mod

    applied = api.apply_to(write(tmp_path, LOSS), tmp_path / "apply", DataSettings(limit=40))
    for name in ("dataset.parquet", "plan.json", "train.json"):
        (tmp_path / "apply" / name).unlink()  # nothing is read back from disk

    def no_reading(folder):
        raise AssertionError("train re-read the apply folder")

    monkeypatch.setattr(apply_mod, "read_folder", no_reading)
    trained = api.train(applied, tmp_path / "run", tiny_settings(tiny_model_dir, save=False))
    rec = trained.record
    assert rec == json.loads((tmp_path / "run" / "train.json").read_text())
    assert rec["kind"] == TRAIN_RECORD_KIND and rec["base_model"] == str(tiny_model_dir)
    assert rec["settings"]["rows"] == applied.dataset.num_rows and rec["settings"]["steps"] == 1
    assert rec["settings"]["beta"] == TRAIN_CONFIG_DEFAULTS["beta"] and rec["settings"]["lora_r"] == 4
    assert rec["apply_dir"] == str(tmp_path / "apply") and rec["rules"] == [] and rec["weights"] is None
    assert trained.weights is None and trained.applied is applied
    assert np.isfinite(rec["result"]["training_loss"])
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("ethos/margin_offset_mean", 0.0) != 0.0 for r in log)  # the loss rule's offsets arrived


def test_train_from_a_policy_applies_then_trains_and_from_a_folder_reads_it_once(tmp_path, ethos_cache, hf_home,
                                                                                tiny_model_dir, monkeypatch):
    from ethos.runtime import apply as apply_mod

    calls = []
    real = apply_mod.read_folder
    monkeypatch.setattr(apply_mod, "read_folder", lambda folder: calls.append(folder) or real(folder))
    policy = write(tmp_path, LOSS)
    trained = api.train(policy, tmp_path / "run", tiny_settings(tiny_model_dir), data=DataSettings(limit=40))
    assert calls == []  # applied in memory, not read back
    assert trained.applied is not None and trained.applied.out == tmp_path / "run" / "apply"
    assert (tmp_path / "run" / "apply" / "accounting.jsonl").is_file()
    assert trained.weights == tmp_path / "run" / "adapter" and (trained.weights / "adapter_config.json").is_file()
    assert trained.summary_line().startswith("trained ") and " 1 steps in " in trained.summary_line()

    again = api.train(tmp_path / "run" / "apply", tmp_path / "run2", tiny_settings(tiny_model_dir, rows=3, save=False))
    assert calls == [tmp_path / "run" / "apply"]
    assert again.applied is None and again.record["settings"]["rows"] == 3
    assert again.record["apply_dir"] == str(tmp_path / "run" / "apply")


def test_train_refuses_what_it_cannot_train_on(tmp_path):
    with pytest.raises(PlanError, match="no such policy file or apply folder"):
        api.train(tmp_path / "nope.ethos", tmp_path / "o")
    with pytest.raises(PlanError, match=r"not an `ethos apply` output folder \(no train.json\)"):
        api.train(tmp_path, tmp_path / "o")
    with pytest.raises(UsageError):
        api.train(tmp_path, tmp_path / "o", data=DataSettings())
    assert issubclass(PlanError, EthosError)


def test_lock_pins_the_policy(tmp_path, ethos_cache):
    policy = write(tmp_path, FILTER)
    path = api.lock(policy, DataSettings(limit=40))
    assert path == tmp_path / "ethos.lock"
    entry = json.loads(path.read_text())["policies"]["p.ethos"]
    assert entry["concepts"]["v"]["kind"] == "metric" and entry["data"]["fingerprint"]


def test_evaluate_returns_the_document_as_written(tmp_path, monkeypatch):
    from ethos.runtime import evaluate as E

    seen = {}

    def fake(settings, *, progress):
        seen["settings"] = settings
        return {"format": 1, "shift": np.float64(0.25), "n": np.int64(3), "ci": (np.float64(0.1), 0.4)}

    monkeypatch.setattr(E, "evaluate", fake)
    settings = EvaluateSettings(base="b", models=["m"], prompts="p.jsonl", policy="p.ethos")
    result = api.evaluate(settings)
    assert seen["settings"] is settings and (settings.limit, settings.samples, settings.batch_size) == (50, 0, 16)
    assert result.document == {"format": 1, "shift": 0.25, "n": 3.0, "ci": [0.1, 0.4]}
    assert json.loads(result.json_text()) == result.document

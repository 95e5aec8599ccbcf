"""``ethos evaluate`` and ``ethos train`` on a tiny model: statistics, prompt reading, scoring with
the plan's lenses, the report, and both CLI handlers (one-line errors, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ethos.runtime import evaluate as E
from ethos.runtime.report import render_evaluate_html, render_evaluate_markdown

POLICY = 'policy "t";\nconcept marker = lexicon "marker.txt";\nblock concept marker via loss;\nkeep concept hedging;\n'


@pytest.fixture()
def policy(tmp_path):
    (tmp_path / "marker.txt").write_text("hope this helps\n")
    p = tmp_path / "p.ethos"
    p.write_text(POLICY)
    return p


def test_compare_predictions_and_bootstrap():
    res = E.compare_predictions([1.0, -2.0, 0.5, 0.0], [0.9, -1.5, 0.4, 0.1])
    assert res["n_concepts"] == 4 and res["spearman"] == pytest.approx(1.0) and res["r2"] > 0.95
    assert res["sign_agreement"] == 1.0
    few = E.compare_predictions([1.0, -1.0], [0.5, -0.2])
    assert few["spearman"] is None and "too few" in few["note"]
    lo, hi = E.bootstrap_mean_ci(np.array([0.0, 1.0] * 20))
    assert lo < 0.5 < hi
    acc = E.preference_accuracy(np.array([[-1.0, -2.0], [-3.0, -1.0]]), np.zeros((2, 2)), beta=0.1)
    assert acc["accuracy"] == 0.5 and acc["margin"] == pytest.approx(0.1 * (1 - 2) / 2)


def test_read_prompts_formats(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text('{"prompt": "hi"}\n{"prompt": [{"role": "user", "content": "yo"}]}\n')
    assert E.read_prompts(a) == [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"prompt": "q", "chosen": "x", "rejected": "y"}) + "\n"
                 + json.dumps({"prompt": "q", "chosen": "z", "rejected": "w"}) + "\n")
    assert E.read_prompts(b) == [[{"role": "user", "content": "q"}]]  # preference data: its distinct prompts
    with pytest.raises(E.EvaluateError):
        E.read_prompts(tmp_path / "missing.jsonl")


def test_report_from_scores(policy):
    plan = E.plan_for(str(policy))
    prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(6)]
    base = {"replies": [["a"]] * 6, "scores": {"marker": np.zeros((6, 1)), "hedging": np.ones((6, 1))}}
    run = {"replies": [["b"]] * 6, "scores": {"marker": np.full((6, 1), 2.0), "hedging": np.ones((6, 1))}}
    info = {"name": "m", "path": "m", "train": {"concepts": {"marker": {"alpha": 1.5, "scale": 4.0},
                                                            "hedging": {"alpha": 0.2, "scale": 1.0}}}}
    doc = E.build_report(plan, "base", base, [(info, run)], prompts, 0, 8)
    rows = {r["concept"]: r for r in doc["models"][0]["concepts"]}
    assert rows["marker"]["shift"] == 2.0 and rows["marker"]["shift_sd"] == 0.5 and rows["marker"]["predicted"] == 0.0
    assert rows["hedging"]["predicted"] == pytest.approx(0.2) and rows["hedging"]["shift"] == 0.0
    # a shift of exactly 0 on every prompt is flagged, never a significant (or plain) result
    assert "not a measured null" in rows["hedging"]["suspect"] and rows["hedging"]["significant"] is False
    assert "suspect" not in rows["marker"]
    md = render_evaluate_markdown(doc)
    assert "| marker |" in md and "too few" in md
    html = render_evaluate_html(doc)
    assert "<h2>m</h2>" in html and "marker" in html and "hedging" in html and "<script" not in html.lower()


def test_each_model_is_predicted_under_the_plan_it_was_trained_with(policy, tmp_path):
    """Two runs of different policies in one ``ethos evaluate``: each model's k comes from its own
    run's plan.json (a ``--no-shaping`` control: k = 1), not from ``--policy``."""
    from ethos.compiler.compile import compile_source
    from ethos.compiler.plan import dump_plan

    plan = E.plan_for(str(policy))  # block marker (k = 0), keep hedging
    other = tmp_path / "amplify"
    other.mkdir()
    (tmp_path / "o.ethos").write_text('policy "o";\nconcept marker = lexicon "marker.txt";\n'
                                      "amplify concept marker by 2.0;\nkeep concept hedging;\n")
    compiled = compile_source((tmp_path / "o.ethos").read_text(), path=str(tmp_path / "o.ethos")).plan
    (other / "plan.json").write_text(dump_plan(compiled))
    prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(4)]
    base = {"replies": [["a"]] * 4, "scores": {"marker": np.zeros((4, 1)), "hedging": np.zeros((4, 1))}}
    run = {"replies": [["b"]] * 4, "scores": {"marker": np.ones((4, 1)), "hedging": np.ones((4, 1))}}
    stats = {"concepts": {"marker": {"alpha": 1.5, "scale": 1.0}, "hedging": {"alpha": 0.2, "scale": 1.0}}}
    models = [({"name": "amplify", "path": str(other), "train": stats}, run),
              ({"name": "control", "path": str(tmp_path / "c"), "train": {**stats, "shaping": False}}, run),
              ({"name": "policy", "path": str(tmp_path / "p"), "train": stats}, run)]
    doc = E.build_report(plan, "base", base, models, prompts, 0, 8)
    marker = {m["name"]: next(r for r in m["concepts"] if r["concept"] == "marker") for m in doc["models"]}
    assert marker["amplify"]["factor"] == 2.0 and marker["amplify"]["predicted"] == pytest.approx(3.0)
    assert marker["control"]["factor"] == 1.0 and marker["control"]["predicted"] == pytest.approx(1.5)
    assert marker["policy"]["factor"] == 0.0 and marker["policy"]["predicted"] == 0.0
    (other / "plan.json").write_text("{not json")
    with pytest.raises(E.EvaluateError, match="plan.json"):
        E.build_report(plan, "base", base, models[:1], prompts, 0, 8)


def _scores_doc(policy, replies=("<script>alert(1)</script>", "fine")):
    """A report document from hand-made scores (no model), with a hostile generation."""
    plan = E.plan_for(str(policy))
    prompts = [[{"role": "user", "content": f"p{i} <i>"}] for i in range(6)]
    rng = np.random.default_rng(0)
    base = {"replies": [["a"]] * 6, "scores": {"marker": rng.normal(size=(6, 1)), "hedging": rng.normal(size=(6, 1))}}
    run = {"replies": [[replies[i % 2]] for i in range(6)],
           "scores": {"marker": rng.normal(1.0, 1.0, size=(6, 1)), "hedging": rng.normal(size=(6, 1))}}
    info = {"name": "shaped", "path": "runs/shaped", "train": {"concepts": {"marker": {"alpha": 1.5, "scale": 4.0}}}}
    return E.build_report(plan, "base-model", base, [(info, run)], prompts, 0, 8)


def test_cli_writes_json_markdown_and_html(policy, tmp_path, monkeypatch, capsys):
    from ethos.runtime.cli import main

    doc = _scores_doc(policy)
    monkeypatch.setattr(E, "evaluate", lambda settings, **kw: doc)
    out = tmp_path / "ev"
    code = main(["evaluate", "--base", "b", "--models", "m", "--prompts", "p.jsonl", "--policy", str(policy),
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["evaluate.html", "evaluate.json", "evaluate.md"]  # no temp files
    assert "evaluate.html" in captured.err and "evaluate.md" in captured.err and "evaluate.json" in captured.err
    saved = json.loads((out / "evaluate.json").read_text())
    md, html = (out / "evaluate.md").read_text(), (out / "evaluate.html").read_text()
    assert captured.out.strip() == md.strip()
    assert md == render_evaluate_markdown(saved) and html == render_evaluate_html(saved)  # rendered from what was saved
    for text in (md, html):
        assert "marker" in text and "hedging" in text and "shaped" in text
        assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<script" not in html.lower()
    assert html.count("<svg") == 2  # one model: its forest and the scatter of its one predicted concept


def test_generate_and_score_with_tiny_model(tiny_model_dir, policy, ethos_cache):
    from ethos.runtime.model import load_model

    model, tok, fp = load_model(tiny_model_dir)
    prompts = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "What is the capital of France?"}]]
    greedy = E.generate(model, tok, prompts, max_new_tokens=4)
    assert len(greedy) == 2 and greedy == E.generate(model, tok, prompts, max_new_tokens=4)
    s0 = E.generate(model, tok, prompts, max_new_tokens=4, sample_seed=0)
    assert s0 == E.generate(model, tok, prompts, max_new_tokens=4, sample_seed=0)  # fixed seeds reproduce
    plan = E.plan_for(str(policy))
    scorer = E.Scorer(plan, model, tok, fp, None, str(tiny_model_dir))
    sc = scorer.score(prompts, ["I hope this helps", "Paris."])
    assert sc["marker"][0] > 0 and sc["marker"][1] == 0
    lp = E.sequence_logps(model, tok, [(prompts[0], "Hi there", "No")])
    assert lp.shape == (1, 2) and np.all(np.isfinite(lp)) and np.all(lp < 0)


def _apply_dir(tmp_path: Path, policy: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ethos.compiler.compile import compile_file
    from ethos.compiler.plan import dump_plan

    from ethos.runtime.outputs import FolderWriter

    d = tmp_path / "apply"
    plan = compile_file(str(policy)).plan
    rows = [{"id": str(i), "prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "weight": 1.0, "margin_offset": 0.5 * i,
             "inoculation": None}
            for i, (p, c, r) in enumerate(PAIRS)]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    with FolderWriter(d, "apply", names=["plan.json", "dataset.parquet", "train.json"]) as w:  # a complete folder
        w.write("plan.json", dump_plan(plan))
        w.write("dataset.parquet", sink.getvalue().to_pybytes())
        w.write("train.json", json.dumps({
            "model": "smollm2-135m-instruct", "layer": None, "sae": "default", "policy": str(policy),
            "concepts": {"marker": {"alpha": 1.2, "scale": 3.0}}, "training_interventions": [],
            "defaults": {"beta": 0.1, "learning_rate": 2e-4, "lora": True, "lora_r": 16, "max_length": 256}}))
    return d


PAIRS = [("Hello", "I am fine, thank you!", "Sorry."),
         ("Capital of France?", "Paris. I hope this helps", "It may be Paris.")]


def test_train_and_evaluate_cli_on_a_tiny_model(tiny_model_dir, policy, tmp_path, ethos_cache, monkeypatch, capsys):
    from ethos.runtime.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    apply_dir = _apply_dir(tmp_path, policy)
    out = tmp_path / "run"
    code = main(["train", str(apply_dir), "--model", str(tiny_model_dir), "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--lora-r", "4", "--max-length", "64"])
    assert code == 0, capsys.readouterr().err
    train = json.loads((out / "train.json").read_text())
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "plan.json").is_file()
    assert train["base_model"] == str(tiny_model_dir) and train["settings"]["steps"] == 2
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any("ethos/margin_offset_mean" in r and r["ethos/margin_offset_mean"] == pytest.approx(0.25) for r in log)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n{"prompt": "Capital of France?"}\n{"prompt": "Hi"}\n')
    code = main(["evaluate", "--base", str(tiny_model_dir), "--models", str(out), "--prompts", str(prompts),
                 "--policy", str(policy), "--max-new-tokens", "4", "--samples", "1", "--out", str(tmp_path / "ev"),
                 "--json"])
    assert code == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    doc = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    assert doc["replies_per_prompt"] == 2 and {r["concept"] for r in doc["models"][0]["concepts"]} == {"marker", "hedging"}
    # two of the three held-out prompts were trained on; 4 new tokens: every reply is cut off
    overlap = f"2 of 3 held-out prompts are training prompts of {out} (apply folder {apply_dir})"
    assert any(w.startswith(overlap) for w in doc["warnings"]) and f"warning: {overlap}" in err
    assert "every reply of base hit --max-new-tokens 4" in " ".join(doc["warnings"])
    assert (tmp_path / "ev" / "evaluate.md").read_text().startswith("# ethos evaluate")
    html = (tmp_path / "ev" / "evaluate.html").read_text()
    assert "marker" in html and "hedging" in html and out.name in html and "<script" not in html.lower()


def test_generate_reports_replies_cut_off_at_the_token_cap(tiny_model_dir, ethos_cache):
    from ethos.runtime.model import load_model

    model, tok, _ = load_model(tiny_model_dir)
    prompts = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Hi"}]]
    capped: list[bool] = []
    replies = E.generate(model, tok, prompts, max_new_tokens=3, capped=capped)
    assert len(capped) == len(replies) == 2
    # the random tiny model does not say <|im_end|> within 3 tokens: each reply is cut off at the cap
    assert capped == [True, True]
    model.generation_config.eos_token_id = list(range(len(tok)))  # every token ends the reply
    capped = []
    E.generate(model, tok, prompts, max_new_tokens=3, capped=capped)
    assert capped == [False, False]


def test_cli_errors_are_one_line(tmp_path, policy, capsys):
    from ethos.runtime.cli import main

    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ethos train: error:") and "Traceback" not in err and err.count("\n") == 1
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "o")]) == 1  # a folder that is no apply output
    assert "not an `ethos apply` output folder" in capsys.readouterr().err
    assert main(["train", str(policy), "--out", str(tmp_path / "o"), "--steps", "0"]) == 2
    assert main(["evaluate", "--base", "x", "--models", str(tmp_path / "none"), "--prompts", str(tmp_path / "p.jsonl"),
                 "--policy", str(policy)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_activation_lenses_score_batch_by_batch_as_each_reply_alone(tiny_model_dir, tiny_sae_dir, tmp_path, ethos_cache):
    """``Scorer`` pools the activation lenses batch by batch (only a batch's activations held on
    the device); every reply's score equals scoring it alone, mean or max as the concept reports."""
    from ethos.compiler.compile import compile_source
    from ethos.runtime.data import Message
    from ethos.runtime.model import load_model, tokenize_pair

    (tmp_path / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Is Paris the capital?", "positive": "Yes, brilliant question!", "negative": "Yes."},
        {"prompt": "Hello", "positive": "You are amazing!", "negative": "Hello."}]))
    source = (f'policy "s";\nmodel "{tiny_model_dir}" layer 0;\nsae "{tiny_sae_dir}";\n'
              'concept p = probe "probe.jsonl";\nconcept f = features 1, 7 pool max;\nconcept v = metric words;\n'
              'keep concept p;\nkeep concept f;\nkeep concept v;\n')
    (tmp_path / "s.ethos").write_text(source)
    plan = compile_source(source, path=str(tmp_path / "s.ethos")).plan
    model, tok, fp = load_model(tiny_model_dir)
    scorer = E.Scorer(plan, model, tok, fp, 0, str(tiny_model_dir))
    scorer.context.runtime.batch_size = 2
    prompts = [[{"role": "user", "content": f"Question {i}: {'why ' * i}?"}] for i in range(5)]
    replies = ["Sure.", "You are amazing, brilliant question!", "", "Paris is the capital of France, I think.", "Ok " * 9]
    got = scorer.score(prompts, replies)
    assert list(got) == [c.name for c in plan.concepts] and set(got) == {"p", "f", "v"}
    rt = scorer.context.runtime
    for name in ("p", "f"):
        lens = scorer.lenses[name]
        alone = [lens.score_activations(rt.encoder.encode_batch([tokenize_pair(tok, [Message(**m) for m in p], [r])])[0])
                 [0][lens.report] for p, r in zip(prompts, replies)]
        np.testing.assert_allclose(got[name], alone, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert scorer.lenses["f"].report == "max" and got["v"][1] == 5.0

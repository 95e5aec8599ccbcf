"""Long-run safety of ``ethos train`` on a tiny model: a run killed (SIGKILL) or interrupted
(SIGINT) after a checkpoint resumes, when the same command is run again, to the same losses and
weights as an uninterrupted run; Ctrl-C prints one line; train.json is written last (a stale one is
removed first, and ``ethos evaluate`` refuses a folder without it); checkpoints of another run are
not resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")

POLICY = 'policy "t";\nconcept marker = lexicon "marker.txt";\nblock concept marker via loss;\nkeep concept hedging;\n'
PAIRS = [("Hello", "I am fine, thank you!", "Sorry."),
         ("Capital of France?", "Paris. I hope this helps", "It may be Paris."),
         ("Is water hot?", "Water boils at 100 degrees.", "It could be otherwise.")]


def apply_folder(tmp_path: Path) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ethos.compiler.compile import compile_file
    from ethos.compiler.plan import dump_plan
    from ethos.runtime.outputs import FolderWriter

    (tmp_path / "marker.txt").write_text("hope this helps\n")
    policy = tmp_path / "p.ethos"
    policy.write_text(POLICY)
    rows = [{"id": str(i), "prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "weight": 1.0 + 0.5 * i, "margin_offset": 0.5 * i,
             "inoculation": None} for i, (p, c, r) in enumerate(PAIRS)]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    d = tmp_path / "apply"
    with FolderWriter(d, "apply", names=["plan.json", "dataset.parquet", "train.json"]) as w:
        w.write("plan.json", dump_plan(compile_file(str(policy)).plan))
        w.write("dataset.parquet", sink.getvalue().to_pybytes())
        w.write("train.json", json.dumps({"model": "smollm2-135m-instruct", "layer": None, "policy": str(policy),
                                          "defaults": {"beta": 0.1, "learning_rate": 2e-4, "lora": True, "lora_r": 16,
                                                       "max_length": 256}}))
    return d, policy


def losses(out: Path) -> list[float]:
    """The loss of steps 1, 2, … (each step logged once)."""
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [k for k, _ in steps] == list(range(1, len(steps) + 1))
    return [v for _, v in steps]


def weights(out: Path):
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


def start_and_stop(cmd: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a subprocess and send ``sig`` once a checkpoint is complete."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("checkpoint-*/ethos-checkpoint.json")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint before the run ended: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tiny_model_dir, tmp_path, ethos_cache, monkeypatch,
                                                                capsys):
    import torch

    from ethos.runtime.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ETHOS_PROGRESS_INTERVAL", "0")
    apply_dir, policy = apply_folder(tmp_path)

    def args(out: Path, *more: str) -> list[str]:
        return ["train", str(apply_dir), "--model", str(tiny_model_dir), "--out", str(out), "--steps", "24",
                "--batch-size", "1", "--lora-r", "4", "--max-length", "64", "--lr", "0.01", "--save-steps", "2", *more]

    # the uninterrupted run
    assert main(args(tmp_path / "a")) == 0, capsys.readouterr().err
    capsys.readouterr()
    a = tmp_path / "a"
    assert sorted(p.name for p in a.iterdir()) == ["adapter", "log.jsonl", "plan.json", "train.json"]  # no checkpoints
    assert json.loads((a / "train.json").read_text())["result"]["resumed_from"] is None

    # killed (SIGKILL) after a checkpoint, in a folder holding a stale train.json: that one goes first
    b = tmp_path / "b"
    b.mkdir()
    (b / "train.json").write_text("{}")
    cli = [sys.executable, "-m", "ethos.runtime.cli"]
    done = start_and_stop(cli + args(b), b, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    assert not (b / "train.json").exists()
    held = tmp_path / "held.jsonl"
    held.write_text('{"prompt": "Hi"}\n')
    assert main(["evaluate", "--base", str(tiny_model_dir), "--models", str(b), "--prompts", str(held),
                 "--policy", str(policy)]) == 1
    assert "an unfinished `ethos train` run (no train.json; interrupted?)" in capsys.readouterr().err
    assert main(args(b)) == 0, capsys.readouterr().err
    assert "resuming from step" in capsys.readouterr().err
    record = json.loads((b / "train.json").read_text())
    assert record["result"]["resumed_from"] in range(2, 24, 2)  # a checkpoint every 2 steps
    assert losses(b) == pytest.approx(losses(a), rel=1e-5)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert record["result"]["training_loss"] == pytest.approx(
        json.loads((a / "train.json").read_text())["result"]["training_loss"], rel=1e-6)

    # Ctrl-C (SIGINT): one line, exit 130; other settings do not resume these checkpoints
    c = tmp_path / "c"
    for _ in range(3):  # the tiny run can finish its last steps before the signal lands: then again
        shutil.rmtree(c, ignore_errors=True)
        done = start_and_stop(cli + args(c), c, signal.SIGINT)
        if done.returncode != 0:
            break
    assert done.returncode == 130, done.stderr[-2000:]
    err = [x for x in done.stderr.splitlines() if x.strip()]
    assert "Traceback" not in done.stderr and len(err) == 1, done.stderr[-2000:]
    assert err[0].startswith("ethos train: error: interrupted; the checkpoint of step ")
    assert err[0].endswith("run the same command again to resume")
    assert main(args(c)[:-2] + ["--lr", "0.02", "--save-steps", "2"]) == 1
    assert "holds checkpoints of a different run" in capsys.readouterr().err
    assert main(args(c, "--resume")) == 0, capsys.readouterr().err
    assert losses(c) == pytest.approx(losses(a), rel=1e-5)
    wc = weights(c)
    assert all(torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)


def test_resume_needs_a_checkpoint_and_no_resume_starts_over(tiny_model_dir, tmp_path, ethos_cache, monkeypatch,
                                                             capsys):
    from ethos.runtime.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    apply_dir, _ = apply_folder(tmp_path)
    base = ["train", str(apply_dir), "--model", str(tiny_model_dir), "--steps", "1", "--batch-size", "2",
            "--lora-r", "4", "--max-length", "64"]
    assert main(base + ["--out", str(tmp_path / "r"), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    # a foreign checkpoint folder is discarded by --no-resume
    ck = tmp_path / "s" / "checkpoints" / "checkpoint-1"
    ck.mkdir(parents=True)
    (ck / "ethos-checkpoint.json").write_text('{"step": 1}')
    assert main(base + ["--out", str(tmp_path / "s")]) == 1
    assert "holds checkpoints of a different run" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "s"), "--no-resume"]) == 0, capsys.readouterr().err
    assert (tmp_path / "s" / "train.json").is_file() and not (tmp_path / "s" / "checkpoints").exists()
    assert main(base + ["--out", str(tmp_path / "t"), "--save-steps", "-1"]) == 2
    assert os.environ.get("ETHOS_DTYPE") == "float32"
    from ethos.runtime.training import interrupted_message

    assert interrupted_message(tmp_path / "none", 50) == ("interrupted before the first checkpoint (every 50 steps); "
                                                          "nothing to resume")
    assert "--save-steps 0" in interrupted_message(tmp_path / "none", 0)
    assert interrupted_message(tmp_path / "s", 50).startswith("interrupted before")  # its checkpoints were removed

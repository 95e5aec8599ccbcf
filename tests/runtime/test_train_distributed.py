"""``ethos train`` under a launcher: ``torchrun --standalone --nproc_per_node 2`` starts two real
processes on the CPU (gloo), which train data-parallel (DDP) on a tiny model built in the test,
with a policy that gives per-pair weights (``via data``), margin offsets (``via loss``) and an
activation hook (``via ablation`` on a probe direction). Rank 0 alone applies the policy, computes
the direction and writes the outputs, once; every rank exits 0; a run killed after a checkpoint
resumes under the launcher to the uninterrupted run's losses and weights."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")

pytestmark = pytest.mark.slow  # three launches of two processes: about a minute on 2 cores

TORCHRUN = Path(sys.executable).parent / "torchrun"
LIMIT = 24


def policy(tmp_path: Path, model: Path) -> Path:
    p = tmp_path / "p.ethos"
    p.write_text(f'model "{model}" layer 1;\n'
                 "concept v = metric words;\n"
                 'concept p = probe "concepts/sycophancy.jsonl";\n'
                 "block concept v via loss;\n"  # margin offsets
                 "dampen concept hedging by 0.5 via data;\n"  # weights
                 "block concept p via ablation;\n")  # an activation hook at layer 1
    return p


def launch(tmp_path: Path, args: list[str], logs: Path, *, stop_at_checkpoint: Path | None = None,
           monitor_s: float = 0.1) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m ethos.runtime.cli ARGS`` with each rank's
    stdout and stderr in files under ``logs``; ``stop_at_checkpoint``: SIGKILL both ranks once a
    checkpoint of that run folder is complete (the launcher then fails); ``monitor_s``: how often
    torchrun looks at its workers (it stops the others as soon as it sees one fail)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true",
               ETHOS_GATHER_TIMEOUT="300")
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "--log-dir", str(logs), "--redirects", "3",
           "--monitor-interval", str(monitor_s), "-m", "ethos.runtime.cli", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if stop_at_checkpoint is not None:
        deadline = time.monotonic() + 300
        while not list((stop_at_checkpoint / "checkpoints").glob("checkpoint-*/ethos-checkpoint.json")):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        else:  # both ranks at once, as a crash of the machine would (torchrun starts each in its own session)
            import psutil

            for child in psutil.Process(proc.pid).children(recursive=True):
                child.send_signal(signal.SIGKILL)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def rank_output(logs: Path, rank: int, stream: str) -> str:
    """What rank ``rank`` wrote to ``stream`` (torchrun: ``LOG_DIR/<run>/attempt_0/<rank>/``)."""
    (path,) = logs.glob(f"*/attempt_0/{rank}/{stream}.log")
    return path.read_text()


def log_steps(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def train_args(policy_file: Path, out: str, *more: str) -> list[str]:
    return ["train", str(policy_file), "--limit", str(LIMIT), "--out", out, "--batch-size", "2", "--lora-r", "4",
            "--max-length", "64", "--lr", "0.01", *more]


def test_two_processes_train_and_rank_0_alone_writes(tiny_model_dir, tmp_path, ethos_cache):
    import torch
    from safetensors.torch import load_file

    assert TORCHRUN.is_file(), "torch's launcher is not installed next to this Python"
    p = policy(tmp_path, tiny_model_dir)
    t0 = time.perf_counter()
    done = launch(tmp_path, train_args(p, "run", "--steps", "8", "--save-steps", "2"), tmp_path / "logs")
    print(f"torchrun, 2 processes, 8 steps: {time.perf_counter() - t0:.1f} s")
    assert done.returncode == 0, (done.stderr[-3000:], rank_output(tmp_path / "logs", 1, "stderr")[-3000:])

    out = tmp_path / "run"
    # the outputs, complete, once; no checkpoints left
    assert sorted(x.name for x in out.iterdir()) == ["adapter", "apply", "log.jsonl", "plan.json", "train.json"]
    assert (out / "apply" / "dataset.parquet").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    record = json.loads((out / "train.json").read_text())
    assert record["settings"]["world_size"] == 2
    assert record["settings"]["effective_batch_size"] == 4 and record["settings"]["batch_size"] == 2
    assert record["rules"] == [{"protocol": "ablation", "concept": "p", "factor": 0.0, "amount": 0.0,
                                "directions": 1}]
    assert record["apply_dir"] == str(Path("run") / "apply") and record["result"]["resumed_from"] is None
    assert math.isfinite(record["result"]["training_loss"])
    # one writer: each step's line once (two ranks appending would write every line twice)
    steps = log_steps(out)
    assert [r["step"] for r in steps] == list(range(1, 9))
    for r in steps:
        assert math.isfinite(r["loss"])
        # the ablation hook fired on both ranks in every step (averaged over the ranks: a rank whose
        # hook did not fire would make it NaN) and removed something
        assert math.isfinite(r["ethos/ablation_norm_removed"]) and r["ethos/ablation_norm_removed"] > 0
    assert any(r["ethos/weight_mean"] != 1.0 for r in steps)  # the weights arrived
    assert any(r["ethos/margin_offset_mean"] != 0.0 for r in steps)  # and the offsets
    # only rank 0 prints the result; rank 1 prints nothing (it neither applied nor wrote)
    out0, out1 = (rank_output(tmp_path / "logs", r, "stdout") for r in (0, 1))
    assert out0.count("trained DPO (sigmoid): 8 steps") == 1 and out0.count("wrote 24 training rows") == 1
    assert out1.strip() == ""
    assert "Traceback" not in rank_output(tmp_path / "logs", 1, "stderr")

    # killed (every process, SIGKILL) after a checkpoint: the same command resumes under the launcher
    b = tmp_path / "b"
    for _ in range(3):  # the tiny run can finish before the kill lands: then again
        killed = launch(tmp_path, train_args(p, "b", "--steps", "8", "--save-steps", "2"), tmp_path / "logs-b",
                        stop_at_checkpoint=b)
        if killed.returncode != 0:
            break
        for x in sorted(b.rglob("*"), reverse=True):
            x.unlink() if x.is_file() else x.rmdir()
    assert killed.returncode != 0 and not (b / "train.json").exists()
    again = launch(tmp_path, train_args(p, "b", "--steps", "8", "--save-steps", "2", "--resume"), tmp_path / "logs-c")
    assert again.returncode == 0, (again.stderr[-3000:], rank_output(tmp_path / "logs-c", 1, "stderr")[-3000:])
    assert "resuming from step" in rank_output(tmp_path / "logs-c", 0, "stderr")
    assert "resuming" not in rank_output(tmp_path / "logs-c", 1, "stderr")
    resumed = json.loads((b / "train.json").read_text())
    assert resumed["result"]["resumed_from"] in range(2, 8, 2) and resumed["settings"]["world_size"] == 2
    assert [r["step"] for r in log_steps(b)] == list(range(1, 9))
    assert [r["loss"] for r in log_steps(b)] == pytest.approx([r["loss"] for r in steps], rel=1e-5)
    wa, wb = (load_file(x / "adapter" / "adapter_model.safetensors") for x in (out, b))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert not (b / "checkpoints").exists()


def test_a_failure_on_rank_0_stops_every_rank_with_an_error(tiny_model_dir, tmp_path, ethos_cache):
    """--resume with nothing to resume: rank 0 decides, and both ranks exit 1 with its message. (torchrun
    looks at its workers every 2 s here, so that it does not stop rank 1 before rank 1 has said why.)"""
    p = policy(tmp_path, tiny_model_dir)
    done = launch(tmp_path, train_args(p, "run", "--steps", "1", "--resume"), tmp_path / "logs", monitor_s=2)
    assert done.returncode != 0
    for rank in (0, 1):  # torchrun's report of each rank's exit code
        assert re.search(rf"rank\s*:\s*{rank} \(local_rank: {rank}\)\s*\n\s*exitcode\s*:\s*1\b", done.stderr), \
            done.stderr[-3000:]
    err0, err1 = (rank_output(tmp_path / "logs", r, "stderr") for r in (0, 1))
    assert "ethos train: error: nothing to resume" in err0
    assert "ethos train: error: rank 0 of 2 failed (nothing to resume" in err1 and "rank 1 stopped" in err1
    assert "Traceback" not in err0 + err1
    assert not (tmp_path / "run" / "train.json").exists()

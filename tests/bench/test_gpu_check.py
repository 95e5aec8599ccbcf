"""``bench/gpu-check --size tiny``: every step of the GPU check (the README's main job, every lens,
discovery, apply, training of every protocol, evaluate, the SAE commands, the benches) at the
smallest sizes, on this machine's device, each step ok. The benches rot when nothing runs them;
this runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(3600)
def test_gpu_check_tiny_passes_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    # a cold score cache (every step computes), sharing the default model converted once into the
    # user's ethos cache (as the featurize tests do)
    from ethos.runtime.model import cache_root

    models = cache_root() / "models"
    models.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models, target_is_directory=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ETHOS_NO_PROGRESS="1",
               ETHOS_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu-check"), "--size", "tiny", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=3500)
    summary = json.loads((out / "summary.json").read_text())
    failed = {s["step"]: s.get("tail", "") for s in summary["steps"] if not s["ok"]}
    assert p.returncode == 0 and summary["ok"] and not failed, (p.stdout[-3000:], failed)
    steps = {s["step"] for s in summary["steps"]}
    assert {"plan", "featurize-lenses", "audit-discover", "apply", "train-all-protocols", "train-ablation",
            "train-steering", "train-penalty", "train-features-ablation", "train-vanilla", "evaluate", "sae-train",
            "sae-eval", "sae-describe", "bench-featurize", "bench-sae", "bench-train-step"} <= steps
    assert summary["size"] == "tiny" and summary["machine"]["device"]
    by_step = {s["step"]: s for s in summary["steps"]}
    # every lens ran on the device gpu-check names, and the benches report it too
    featurize = by_step["featurize-lenses"]["result"]
    assert featurize["stats"]["device"] == ("cuda:0" if summary["machine"]["cuda"] else "cpu")
    bench = by_step["bench-featurize"]["result"]
    assert bench["device"].split()[0] == featurize["stats"]["device"]
    assert 0 <= bench["featurize_shared"]["padding"] < 1 and bench["featurize_shared"]["tokens_per_s"] > 0
    assert by_step["bench-sae"]["result"]["device"].split()[0] == featurize["stats"]["device"]

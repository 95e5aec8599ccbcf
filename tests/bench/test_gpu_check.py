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
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu-check"), "--size", "tiny", "--out", str(out), "--jobs", "2"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=3500)
    summary = json.loads((out / "summary.json").read_text())
    failed = {s["step"]: s.get("tail", "") for s in summary["steps"] if not s["ok"]}
    assert p.returncode == 0 and summary["ok"] and not failed, (p.stdout[-3000:], failed)
    steps = {s["step"] for s in summary["steps"]}
    assert {"default-model", "plan", "featurize-lenses", "audit-discover", "apply", "train-all-protocols", "train-ablation",
            "train-steering", "train-penalty", "train-features-ablation", "train-vanilla", "evaluate", "gpu-tests", "sae-train",
            "sae-eval", "sae-describe", "bench-featurize", "bench-sae", "bench-train-step"} <= steps
    assert summary["size"] == "tiny" and summary["jobs"] == 2 and summary["machine"]["device"]
    by_step = {s["step"]: s for s in summary["steps"]}
    # every lens ran on the device gpu-check names, and the benches report it too
    featurize = by_step["featurize-lenses"]["result"]
    assert featurize["stats"]["device"] == ("cuda:0" if summary["machine"]["cuda"] else "cpu")
    bench = by_step["bench-featurize"]["result"]
    assert bench["device"].split()[0] == featurize["stats"]["device"]
    assert 0 <= bench["featurize_shared"]["padding"] < 1 and bench["featurize_shared"]["tokens_per_s"] > 0
    assert by_step["bench-sae"]["result"]["device"].split()[0] == featurize["stats"]["device"]


def _gpu_check_module():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("ethos_bench_gpu_check", str(ROOT / "bench" / "gpu-check"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def _sleep(seconds: float, code: int = 0) -> list[str]:
    return [sys.executable, "-c", f"import time, sys; time.sleep({seconds}); sys.exit({code})"]


def test_steps_run_side_by_side_after_what_they_need_and_benches_alone(tmp_path: Path) -> None:
    gc = _gpu_check_module()
    Step = gc.Step
    steps = [
        Step("first", _sleep(0.2)),
        Step("a", _sleep(1.0), after=("first",)),
        Step("b", _sleep(1.0), after=("first",)),
        Step("needs-a", _sleep(0.1), after=("a",)),
        Step("broken", _sleep(0.1, code=3), after=("first",)),
        Step("needs-broken", _sleep(0.1), after=("broken",)),
        Step("bench-1", _sleep(0.5), exclusive=True, after=("first",)),
        Step("bench-2", _sleep(0.5), exclusive=True, after=("first",)),
    ]
    summaries: list[int] = []
    r = gc.Runner(tmp_path, timeout=60, jobs=3)
    r.run_all(steps, budget=None, on_done=lambda: summaries.append(len(r.steps)))
    by = {s["step"]: s for s in r.steps}
    span = {n: (s["started_at"], s["ended_at"]) for n, s in by.items()}
    assert r.not_run == ["needs-broken"]
    assert not by["broken"]["ok"] and by["broken"]["exit"] == 3 and all(by[n]["ok"] for n in by if n != "broken")
    assert summaries == list(range(1, len(steps)))  # the summary after every finished step
    # a and b ran side by side, both after "first"; "needs-a" after a
    assert span["a"][0] >= span["first"][1] and span["b"][0] >= span["first"][1]
    assert span["a"][0] < span["b"][1] and span["b"][0] < span["a"][1]
    assert span["needs-a"][0] >= span["a"][1]
    # each bench alone: no other step's run overlaps its run
    for bench in ("bench-1", "bench-2"):
        s0, s1 = span[bench]
        assert all(e <= s0 or s >= s1 for n, (s, e) in span.items() if n != bench), (bench, span)
    assert (tmp_path / "logs" / "broken.log").read_text().startswith("$ ")


def test_a_step_over_its_time_is_killed_and_the_budget_stops_new_steps(tmp_path: Path) -> None:
    gc = _gpu_check_module()
    r = gc.Runner(tmp_path, timeout=1.0, jobs=1)
    r.run_all([gc.Step("slow", _sleep(30)), gc.Step("late", _sleep(0.1))], budget=0.5, on_done=lambda: None)
    (slow,) = r.steps
    assert slow["exit"] == 124 and slow["seconds"] < 10 and "timed out after 1 s" in slow["tail"]
    assert r.not_run == ["late"]


def test_a_step_that_cannot_start_fails_and_the_run_goes_on(tmp_path: Path) -> None:
    gc = _gpu_check_module()
    r = gc.Runner(tmp_path, timeout=60, jobs=2)
    r.run_all([gc.Step("missing", [str(tmp_path / "no-such-program")]), gc.Step("next", _sleep(0.1)),
               gc.Step("after-missing", _sleep(0.1), after=("missing",))], budget=None, on_done=lambda: None)
    by = {s["step"]: s for s in r.steps}
    assert by["missing"]["exit"] == 127 and "could not start" in by["missing"]["tail"] and by["next"]["ok"]
    assert r.not_run == ["after-missing"]


def test_ctrl_c_stops_the_steps_that_run(tmp_path: Path) -> None:
    import time

    gc = _gpu_check_module()
    pid_file = tmp_path / "pid"
    long = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"]
    r = gc.Runner(tmp_path, timeout=120, jobs=2)

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        r.run_all([gc.Step("long", long), gc.Step("quick", _sleep(1.0))], budget=None, on_done=interrupt)
    pid = int(pid_file.read_text())
    for _ in range(100):  # killed (then reaped by its waiting thread)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"step process {pid} still runs after Ctrl-C")

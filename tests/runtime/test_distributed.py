"""Scale-out (:mod:`ethos.runtime.distributed`): ranks from the launcher's environment, each rank's
block of pairs written as a part with a completion marker, rank 0 gathering the parts into the
table one process writes — checked row for row against a single process, with two real processes
and under ``accelerate launch``; and ``ethos audit`` under ``torchrun`` running on rank 0 only.
The concept is ``verbosity`` (metric ``length``: the tiny model's tokenizer, no forward pass).
(``ethos train`` under a launcher: tests/runtime/test_train_distributed.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ethos.runtime.distributed import (
    Launch,
    finish_rank,
    launch_from_env,
    marker_path,
    parts_dir,
    shard_of,
    signature,
    write_part,
)
from ethos.runtime.errors import EthosError, UsageError

LIMIT = 16


# ---------------------------------------------------------------------------------------------
# Ranks


def test_ranks_come_from_the_launcher_environment() -> None:
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert launch_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Launch(2, 4, 0)
    assert launch_from_env({"WORLD_SIZE": "2", "RANK": "1"}) == Launch(1, 2, 1)
    assert Launch(0, 2, 0).is_main and not Launch(1, 2, 1).is_main
    for env, message in [
        ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not a whole number"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK is not set"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, r"RANK=2 is outside 0\.\.1"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ]:
        with pytest.raises(UsageError, match=message) as e:
            launch_from_env(env)
        assert e.value.exit_code == 2


def test_training_group_of_a_plain_process_and_what_a_launch_refuses() -> None:
    from ethos.runtime.distributed import open_group

    solo = open_group(environ={})
    assert (solo.rank, solo.world_size, solo.is_main) == (0, 1, True)
    assert solo.share(lambda: 7) == 7 and solo.main_first(lambda: 8) == 8
    solo.barrier()
    for var, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        with pytest.raises(UsageError, match=f"{what} \\({var}\\) is not supported by ethos train: it trains "
                                             "data-parallel"):
            open_group(environ={"WORLD_SIZE": "2", "RANK": "0", var: "true"})
    import torch.distributed as dist

    assert not dist.is_initialized()  # refused before any process group was opened


def test_a_rank_is_a_featurize_shard() -> None:
    assert shard_of(None, 3, 1) == (3, 1)
    assert shard_of(Launch(1, 2, 1)) == (2, 1)
    with pytest.raises(UsageError, match=r"--num-shards/--shard-index split the pairs by hand; under a launcher \(WORLD_SIZE=2\)"):
        shard_of(Launch(0, 2, 0), 4, 0)


# ---------------------------------------------------------------------------------------------
# Parts and the gather, in one process


def _featurize(model: Path, cache: Path, *, num_shards: int = 1, shard_index: int = 0, limit: int = LIMIT):
    from ethos.compiler.compile import plan_for_concepts
    from ethos.runtime.data import load_pairs
    from ethos.runtime.featurize import featurize

    plan = plan_for_concepts(["verbosity"]).plan
    data = load_pairs(None, limit=limit)
    return featurize(plan, data, cache_dir=cache, num_shards=num_shards, shard_index=shard_index, progress=False,
                     model=str(model))


def _same_table(merged, single) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(merged.reset_index(drop=True), single.reset_index(drop=True), check_exact=True)
    strip = lambda meta: {k: v for k, v in meta.items() if k != "stats"}  # noqa: E731 (timings differ)
    assert strip(merged.attrs["ethos"]) == strip(single.attrs["ethos"])


def test_rank_0_waits_for_every_part_of_this_run_and_merges(tiny_model_dir: Path, tmp_path: Path) -> None:
    from ethos.runtime.featurize import read_scores

    out = tmp_path / "out" / "scores.parquet"
    single = _featurize(tiny_model_dir, tmp_path / "c1")
    part0 = _featurize(tiny_model_dir, tmp_path / "c2", num_shards=2, shard_index=0)
    part1 = _featurize(tiny_model_dir, tmp_path / "c2", num_shards=2, shard_index=1)
    assert 0 < len(part0) < len(single) and len(part0) + len(part1) == len(single)

    with pytest.raises(EthosError, match="featurize must run with num_shards=WORLD_SIZE, shard_index=RANK"):
        write_part(part0, out, Launch(1, 2, 1))
    # alone, rank 0 gives up naming the missing rank
    with pytest.raises(EthosError, match=r"waited 0\.3 s for the parts of rank\(s\) 1 of 2 in .*\.scores\.parquet\.parts"):
        finish_rank(part0, out, Launch(0, 2, 0), timeout_s=0.3, poll_s=0.05)
    # a part left by a run over other data (another signature) is not taken
    stale = _featurize(tiny_model_dir, tmp_path / "c3", num_shards=2, shard_index=1, limit=LIMIT - 4)
    write_part(stale, out, Launch(1, 2, 1))
    assert signature(stale.attrs["ethos"]) != signature(part1.attrs["ethos"])
    with pytest.raises(EthosError, match=r"rank\(s\) 1 of 2"):
        finish_rank(part0, out, Launch(0, 2, 0), timeout_s=0.3, poll_s=0.05)
    # nor a marker that does not match its part file
    write_part(part1, out, Launch(1, 2, 1))
    record = json.loads(marker_path(out, 1, 2).read_text())
    marker_path(out, 1, 2).write_text(json.dumps({**record, "sha256": "0" * 64}))
    with pytest.raises(EthosError, match=r"rank\(s\) 1 of 2"):
        finish_rank(part0, out, Launch(0, 2, 0), timeout_s=0.3, poll_s=0.05)
    # this run's part: merged into the single-process table, parts removed
    write_part(part1, out, Launch(1, 2, 1))
    assert finish_rank(part1, out.with_name("other.parquet"), Launch(1, 2, 1)) is None  # not rank 0: no wait
    merged = finish_rank(part0, out, Launch(0, 2, 0), timeout_s=5, poll_s=0.05)
    _same_table(merged, single)
    _same_table(read_scores(out), single)
    assert merged.attrs["ethos"]["stats"]["ranks"] == 2
    assert not parts_dir(out).exists()


# ---------------------------------------------------------------------------------------------
# Two processes

RANK_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from ethos.compiler.compile import plan_for_concepts
    from ethos.runtime.data import load_pairs
    from ethos.runtime.distributed import finish_rank, launch_from_env, shard_of
    from ethos.runtime.featurize import featurize

    model, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    time.sleep(delay)
    launch = launch_from_env()
    num_shards, shard_index = shard_of(launch)
    table = featurize(plan_for_concepts(["verbosity"]).plan, load_pairs(None, limit=%d),
                      num_shards=num_shards, shard_index=shard_index, progress=False, model=model)
    merged = finish_rank(table, out, launch, timeout_s=300, poll_s=0.1)
    print(f"rank {launch.rank}: {len(table)} pairs, merged {None if merged is None else len(merged)}")
    """ % LIMIT
)


def _env(ethos_cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(ETHOS_CACHE=str(ethos_cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def test_two_processes_write_the_single_process_table(tiny_model_dir: Path, tmp_path: Path) -> None:
    from ethos.runtime.featurize import read_scores

    single = _featurize(tiny_model_dir, tmp_path / "c1")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "out" / "scores.parquet"
    # rank 1 starts late: rank 0 finishes its block first and has to wait for it
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tiny_model_dir), str(out), str(delay)],
                         env=_env(tmp_path / "c2", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank, delay in ((0, 0.0), (1, 3.0))
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
    assert results[0][0].strip() == f"rank 0: {LIMIT // 2} pairs, merged {len(single)}"
    assert results[1][0].strip() == f"rank 1: {len(single) - LIMIT // 2} pairs, merged None"
    _same_table(read_scores(out), single)
    assert not parts_dir(out).exists()


def _cli_has_the_launch_hook() -> bool:
    """Whether ``ethos featurize`` reads the launcher's ranks yet (H2 request for cli/featurize.py)."""
    import inspect

    import ethos.runtime.cli.featurize as cli_featurize

    return "launch_from_env" in inspect.getsource(cli_featurize)


def test_accelerate_launch_featurize_equals_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2 -m ethos.runtime.cli featurize ...`` on CPU.
    (``--cpu --num_processes 2`` starts one process in accelerate 1.16: its CPU launcher only
    spreads over several processes through mpirun; ``--multi_gpu`` picks the torchrun launcher,
    which starts two processes with RANK/WORLD_SIZE whether or not there is a GPU.)"""
    if not _cli_has_the_launch_hook():
        pytest.skip("waits on the H2 request: cli/featurize.py should call distributed.launch_from_env/finish_rank")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is not installed next to this Python"
    args = ["featurize", "--concepts", "verbosity", "--limit", str(LIMIT), "--model", str(tiny_model_dir), "--json"]
    one = subprocess.run([sys.executable, "-m", "ethos.runtime.cli", *args, "--out", str(tmp_path / "one.parquet")],
                         env=_env(tmp_path / "c1"), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    t0 = time.perf_counter()
    two = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "0", "-m", "ethos.runtime.cli", *args,
         "--out", str(tmp_path / "two.parquet")],
        env=_env(tmp_path / "c2"), capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr
    print(f"accelerate launch, 2 processes: {time.perf_counter() - t0:.1f} s")
    doc = json.loads(two.stdout.strip().splitlines()[-1])  # only rank 0 prints the document
    assert doc["stats"]["ranks"] == 2
    from ethos.runtime.featurize import read_scores

    _same_table(read_scores(tmp_path / "two.parquet"), read_scores(tmp_path / "one.parquet"))


def test_audit_under_a_launcher_runs_on_rank_0_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m ethos.runtime.cli audit ...``: rank 0 audits, writes and
    prints the document; rank 1 only says it has nothing to do; both exit 0."""
    torchrun = Path(sys.executable).parent / "torchrun"
    assert torchrun.is_file(), "torch's launcher is not installed next to this Python"
    logs = tmp_path / "logs"
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "--log-dir", str(logs), "--redirects", "3",
         "-m", "ethos.runtime.cli", "audit", "--concepts", "verbosity", "--limit", str(LIMIT), "--model",
         str(tiny_model_dir), "--n-boot", "50", "--json", "--out", str(tmp_path / "audit")],
        env=_env(tmp_path / "c"), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # every rank exited 0
    out0, out1, err1 = (next(logs.glob(f"*/attempt_0/{r}/{stream}.log")).read_text()
                        for r, stream in ((0, "stdout"), (1, "stdout"), (1, "stderr")))
    doc = json.loads(out0)
    assert doc == json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [c["name"] for c in doc["concepts"]] == ["verbosity"]
    assert out1 == "" and "ethos audit: rank 1 of 2: the audit runs on rank 0 only" in err1
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == ["audit.html", "audit.json", "audit.md"]

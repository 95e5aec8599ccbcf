"""featurize end to end: the table, the cache (warm rerun, resume after Ctrl-C), shards and their
merge, the CLI handler, and one integration run on the real default model with hh-rlhf pairs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from ethos.compiler.plan import (
    Concept,
    FeaturesLens,
    FileRef,
    LexiconLens,
    MetricLens,
    ModelBinding,
    Plan,
    ProbeLens,
    SaeBinding,
    Source,
)
from ethos.runtime.data import LoadResult, Message, Pair, load_pairs
from ethos.runtime.cli import main
from ethos.runtime.featurize import featurize, merge_scores, read_scores, write_scores

REPLIES = [
    "Sure! Here is how: - step one\n- step two",
    "I think it might work, perhaps.",
    "Sorry, I can't help with that.",
    "Paris is the capital of France.",
    "Great question!!! You are brilliant.",
    "No.",
]


def make_pairs(n: int) -> LoadResult:
    pairs = []
    for i in range(n):
        prompt = (Message("user", f"Question number {i}: how are you?"),)
        if i % 3 == 0:
            prompt = (*prompt, Message("assistant", "Fine."), Message("user", "And today?" * (1 + i % 4)))
        pairs.append(Pair(str(i), prompt, REPLIES[i % 6] + f" ({i})", REPLIES[(i + 2) % 6]))
    return LoadResult(pairs, [], n, "trl", "test", hashlib.sha256(str(n).encode()).hexdigest())


def file_ref(path: Path) -> FileRef:
    return FileRef(path=path.name, root="policy", sha256=hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture()
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    d.mkdir()
    (d / "hedge.txt").write_text("might\nperhaps\ni think\n")
    rows = [
        {"prompt": "Is it true?", "positive": "You are so right, brilliant!", "negative": "No, it is not."},
        {"prompt": "Hello", "positive": "What a great question!", "negative": "Hello."},
    ]
    (d / "syc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def make_plan(policy_dir: Path, model: Path, sae: Path | None = None, *, probe: bool = True) -> Plan:
    concepts = [
        Concept(name="verbosity", lens=MetricLens(metric="length"), origin="policy"),
        Concept(name="lists", lens=MetricLens(metric="list_items"), origin="policy"),
        Concept(name="hedging", lens=LexiconLens(file=file_ref(policy_dir / "hedge.txt")), origin="policy"),
    ]
    if probe:
        concepts.append(Concept(name="syc", lens=ProbeLens(file=file_ref(policy_dir / "syc.jsonl")), origin="policy"))
    if sae is not None:
        concepts.append(Concept(name="feat", lens=FeaturesLens(latents=(0, 3, 9), pool="mean"), origin="policy"))
    return Plan(
        policy="t",
        source=Source(path=str(policy_dir / "t.ethos"), sha256="0" * 64),
        model=ModelBinding(name=str(model), layer=0),
        sae=SaeBinding(name=str(sae) if sae else "default"),
        concepts=tuple(sorted(concepts, key=lambda c: c.name)),
        interventions=(),
        keeps=(),
        expectations=(),
    )


def test_table_has_one_row_per_pair_and_two_columns_per_concept(
    tmp_path: Path, policy_dir: Path, tiny_model_dir: Path, tiny_sae_dir: Path
) -> None:
    plan = make_plan(policy_dir, tiny_model_dir, tiny_sae_dir)
    data = make_pairs(10)
    table = featurize(plan, data, cache_dir=tmp_path / "c", batch_size=4, progress=False)
    assert list(table.columns) == ["id"] + [f"{c}.{s}" for c in ("feat", "hedging", "lists", "syc", "verbosity") for s in ("chosen", "rejected")]
    assert list(table["id"]) == [p.id for p in data.pairs]
    assert table.drop(columns="id").notna().all().all()
    assert table.loc[1, "hedging.chosen"] == 3.0  # "I think it might work, perhaps. (1)": 3 matches (mode count)
    assert table.loc[0, "lists.chosen"] == 1.0
    meta = table.attrs["ethos"]
    assert meta["layer"] == 0 and meta["stats"]["computed_pairs"] == 10
    assert len(meta["concepts"]["syc"]["direction_sha256"]) == 64


def test_shared_prompt_reuse_gives_the_same_scores(tmp_path: Path, policy_dir: Path, tiny_model_dir: Path, tiny_sae_dir: Path) -> None:
    plan = make_plan(policy_dir, tiny_model_dir, tiny_sae_dir)
    data = make_pairs(9)
    shared = featurize(plan, data, cache_dir=tmp_path / "a", batch_size=4, progress=False, share_prompt=True)
    plain = featurize(plan, data, cache_dir=tmp_path / "b", batch_size=4, progress=False, share_prompt=False)
    pd.testing.assert_frame_equal(shared, plain, check_exact=False, atol=1e-4, rtol=1e-4)
    assert shared.attrs["ethos"]["stats"]["share_prompt"] is True and plain.attrs["ethos"]["stats"]["share_prompt"] is False


def test_the_prompt_is_shared_by_default_on_a_cpu_only(tmp_path: Path, policy_dir: Path, tiny_model_dir: Path,
                                                       tiny_sae_dir: Path) -> None:
    """Shared-prompt reuse wins on the CPU and loses on a GPU (docs/performance.md): the default follows
    the device, and the command line can force either."""
    import torch

    from ethos.runtime.cli.featurize import register
    from ethos.runtime.featurize import default_share_prompt

    assert default_share_prompt(torch.device("cpu")) is True
    assert default_share_prompt(torch.device("cuda", 0)) is False
    table = featurize(make_plan(policy_dir, tiny_model_dir, tiny_sae_dir), make_pairs(3), cache_dir=tmp_path / "c",
                      progress=False)
    assert table.attrs["ethos"]["stats"]["share_prompt"] is True  # this machine: a CPU
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    flags = {(): None, ("--share-prompt",): True, ("--no-share-prompt",): False}
    for extra, value in flags.items():
        assert parser.parse_args(["featurize", "--concepts", "verbosity", *extra]).share_prompt is value


def test_text_only_plan_loads_no_model(tmp_path: Path, policy_dir: Path) -> None:
    plan = make_plan(policy_dir, tmp_path / "no-such-model", probe=False)
    plan = plan.model_copy(update={"concepts": tuple(c for c in plan.concepts if c.name != "verbosity")})
    table = featurize(plan, make_pairs(4), cache_dir=tmp_path / "c", progress=False)
    assert table.attrs["ethos"]["model"] is None and len(table) == 4


def test_warm_rerun_computes_nothing_and_loads_no_model(
    tmp_path: Path, policy_dir: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = make_plan(policy_dir, tiny_model_dir)
    data = make_pairs(6)
    cold = featurize(plan, data, cache_dir=tmp_path / "c", progress=False)
    import ethos.runtime.model as model

    monkeypatch.setattr(model, "load_model", lambda *a, **k: pytest.fail("warm rerun loaded the model"))
    warm = featurize(plan, data, cache_dir=tmp_path / "c", progress=False)
    pd.testing.assert_frame_equal(cold, warm)
    assert warm.attrs["ethos"]["stats"]["shards_written"] == 0


def model_shards(paths: list[Path]) -> list[Path]:
    return [p for p in paths if "-L" in p.parent.name]  # the activation scores' group


def test_resume_after_interrupt_computes_only_the_rest(
    tmp_path: Path, policy_dir: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch written as its own shard (FLUSH_SECONDS 0); the callback stops the run at the
    first model shard, written while the second batch was in flight: that batch's scores are
    complete, so they are written too before the interrupt goes on."""
    import ethos.runtime.featurize as fz

    monkeypatch.setattr(fz, "FLUSH_SECONDS", 0.0)
    plan = make_plan(policy_dir, tiny_model_dir)
    data = make_pairs(10)
    written: list[Path] = []

    def stop_at_the_first_model_shard(path: Path) -> None:
        written.append(path)
        if len(model_shards(written)) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        featurize(plan, data, cache_dir=tmp_path / "c", batch_size=4, progress=False, on_shard=stop_at_the_first_model_shard)
    assert len(model_shards(written)) == 2 and all(p.exists() for p in written)
    resumed = featurize(plan, data, cache_dir=tmp_path / "c", batch_size=4, progress=False)
    assert resumed.attrs["ethos"]["stats"]["computed_pairs"] == 2  # 10 pairs in batches of 4, 4, 2: two kept
    fresh = featurize(plan, data, cache_dir=tmp_path / "fresh", batch_size=4, progress=False)
    pd.testing.assert_frame_equal(resumed, fresh)


@pytest.mark.parametrize("k", [1, 2])
def test_ctrl_c_during_a_forward_writes_every_complete_batch(
    tmp_path: Path, policy_dir: Path, tiny_model_dir: Path, tiny_sae_dir: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    """Ctrl-C while batch k+1's forward runs: batches 1..k (one on the host, waiting to be
    written, one still in flight on the device) go to the cache in one shard, batch k+1 is lost,
    and a rerun computes only the rest, giving exactly a fresh run's table."""
    import ethos.runtime.featurize as fz
    from ethos.runtime.model import Encoder

    plan = make_plan(policy_dir, tiny_model_dir, tiny_sae_dir)  # two activation lenses
    data = make_pairs(10)
    batches: list[list[int]] = []
    stop_at = [k + 1]
    real_batches, real_encode = fz.length_batches, Encoder.encode_replies

    def counted(*args, **kwargs):
        for batch in real_batches(*args, **kwargs):
            batches.append(batch)
            yield batch

    def encode_replies(self, items, **kwargs):
        if len(batches) == stop_at[0]:  # the forward of batch k+1 (the probe direction's came before any)
            raise KeyboardInterrupt
        return real_encode(self, items, **kwargs)

    monkeypatch.setattr(fz, "length_batches", counted)
    monkeypatch.setattr(Encoder, "encode_replies", encode_replies)
    written: list[Path] = []
    with pytest.raises(KeyboardInterrupt):
        featurize(plan, data, cache_dir=tmp_path / "c", batch_size=4, progress=False, on_shard=written.append)
    assert len(model_shards(written)) == 1  # batches 1..k, written together when the run stopped
    batches.clear()
    stop_at[0] = -1  # no more interrupts
    resumed = featurize(plan, data, cache_dir=tmp_path / "c", batch_size=4, progress=False)
    assert resumed.attrs["ethos"]["stats"]["computed_pairs"] == 10 - 4 * k
    fresh = featurize(plan, data, cache_dir=tmp_path / "fresh", batch_size=4, progress=False)
    pd.testing.assert_frame_equal(resumed, fresh)


def test_scores_are_written_together_until_flush_seconds(
    tmp_path: Path, policy_dir: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Activation scores reach the cache in one shard per FLUSH_SECONDS (here: the whole run),
    or one per batch when FLUSH_SECONDS is 0, with the same table either way."""
    import ethos.runtime.featurize as fz

    plan = make_plan(policy_dir, tiny_model_dir)
    data = make_pairs(10)
    tables, shards = [], []
    for seconds in (3600.0, 0.0):
        monkeypatch.setattr(fz, "FLUSH_SECONDS", seconds)
        written: list[Path] = []
        tables.append(featurize(plan, data, cache_dir=tmp_path / str(seconds), batch_size=4, progress=False,
                                on_shard=written.append))
        shards.append(len(model_shards(written)))
    assert shards == [1, 3]  # 10 pairs in batches of 4, 4, 2
    pd.testing.assert_frame_equal(tables[0], tables[1])


@pytest.mark.parametrize("share_prompt", [True, False])
def test_featurize_equals_scoring_each_pair_alone(
    tmp_path: Path, policy_dir: Path, tiny_model_dir: Path, tiny_sae_dir: Path, share_prompt: bool
) -> None:
    """The pipelined, batched run gives each pair the scores it gets scored on its own through
    the lenses' host API (no batch, no padding, no pipeline)."""
    import math

    from ethos.runtime.lenses import LensContext, build_lens
    from ethos.runtime.model import model_runtime, tokenize_pair

    plan = make_plan(policy_dir, tiny_model_dir, tiny_sae_dir)
    data = make_pairs(11)
    table = featurize(plan, data, cache_dir=tmp_path / "c", batch_size=4, progress=False, share_prompt=share_prompt)
    runtime = model_runtime(tiny_model_dir, layer=0)
    ctx = LensContext.for_plan(plan)
    ctx.cache_dir, ctx.layer, ctx.runtime = tmp_path / "c", 0, runtime
    ctx.model_fingerprint = runtime.fingerprint
    for c in plan.concepts:
        if c.name not in ("syc", "feat"):
            continue
        lens = build_lens(c, ctx)
        lens.prepare(ctx)  # the probe direction the run cached
        for i, p in enumerate(data.pairs):
            item = tokenize_pair(runtime.tokenizer, p.prompt, [p.chosen, p.rejected])
            alone = lens.score_activations(runtime.encoder.encode_batch([item], share_prompt=share_prompt)[0])
            for j, side in enumerate(("chosen", "rejected")):
                got = table.loc[i, f"{c.name}.{side}"]
                assert math.isclose(got, alone[j][lens.report], rel_tol=1e-6, abs_tol=1e-6), (c.name, i, side)


def test_shards_merge_to_exactly_the_single_run(tmp_path: Path, policy_dir: Path, tiny_model_dir: Path) -> None:
    plan = make_plan(policy_dir, tiny_model_dir)
    data = make_pairs(11)
    single = featurize(plan, data, cache_dir=tmp_path / "one", progress=False)
    parts = []
    for i in (2, 0, 1):  # order of the parts given does not matter
        part = featurize(plan, data, cache_dir=tmp_path / f"s{i}", num_shards=3, shard_index=i, progress=False)
        assert len(part) in (3, 4)
        parts.append(write_scores(part, tmp_path / f"part{i}.parquet"))
    merged = merge_scores(parts)
    pd.testing.assert_frame_equal(merged, single)
    from ethos.runtime.featurize import FeaturizeError

    with pytest.raises(FeaturizeError, match="exactly once"):
        merge_scores(parts[:2])


def cli(argv: list[str]) -> int:
    return main(["featurize", *argv])


def test_cli_json_accounts_for_every_input_row(
    tmp_path: Path, tiny_model_dir: Path, ethos_cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "hi", "chosen": "Hello! I think so.", "rejected": "Go away."}] * 3
    rows += [{"prompt": "hi", "chosen": "same", "rejected": "same"}, {"prompt": "hi", "chosen": "x"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.parquet"
    monkeypatch.chdir(tmp_path)
    code = cli(["--data", str(data), "--concepts", "verbosity,hedging", "--model", str(tiny_model_dir), "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows_ = report["rows"]
    assert rows_["input"] == 5 and rows_["usable"] + sum(rows_["excluded"].values()) == 5
    assert report["output"] == str(out)
    table = read_scores(out)
    assert len(table) == rows_["usable"] == 3 and "verbosity.chosen" in table


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--data", str(tmp_path / "missing.jsonl"), "--concepts", "hedging"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ethos featurize: error:") and "Traceback" not in err and err.count("\n") == 1
    assert cli(["--concepts", "hedging", "--num-shards", "2", "--shard-index", "2"]) == 2


def test_cli_merge(tmp_path: Path, policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = make_plan(policy_dir, tmp_path, probe=False)
    plan = plan.model_copy(update={"concepts": tuple(c for c in plan.concepts if c.name != "verbosity")})
    data = make_pairs(5)
    parts = [
        str(write_scores(featurize(plan, data, cache_dir=tmp_path / "c", num_shards=2, shard_index=i, progress=False), tmp_path / f"p{i}.parquet"))
        for i in range(2)
    ]
    assert cli(["--merge", str(tmp_path / "all.parquet"), *parts]) == 0
    assert len(read_scores(tmp_path / "all.parquet")) == 5


HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


@pytest.mark.timeout(300)
def test_real_default_model_on_hh_rlhf(tmp_path: Path) -> None:
    """The real SmolLM2 (converted once into the default ethos cache, reused by later runs) on
    20 real hh-rlhf pairs, with a library probe and the length metric."""
    from ethos.compiler.compile import plan_for_concepts
    from ethos.runtime.model import load_tokenizer

    data = load_pairs(HH if HH.exists() else None, limit=20)
    plan = plan_for_concepts(["verbosity", "sycophancy"]).plan
    assert plan is not None
    table = featurize(plan, data, cache_dir=tmp_path / "c", batch_size=8, progress=False)
    assert len(table) == len(data.pairs) >= 15
    assert table.drop(columns="id").notna().all().all()
    tok, _ = load_tokenizer("smollm2-135m-instruct")
    first = data.pairs[0]
    assert table.loc[0, "verbosity.chosen"] == len(tok(first.chosen, add_special_tokens=False)["input_ids"])
    meta = table.attrs["ethos"]
    assert meta["layer"] == 15 and meta["stats"]["computed_pairs"] == len(table)
    # the probe separates its own exemplars' direction from noise: scores vary across replies
    assert table["sycophancy.chosen"].std() > 0
    # shared-prompt reuse matches the plain forward on real multi-turn pairs
    multi = [p for p in data.pairs if len(p.prompt) > 1][:2]
    few = LoadResult(multi, [], 2, data.format, data.source, data.fingerprint)
    plain = featurize(plan, few, cache_dir=tmp_path / "plain", progress=False, share_prompt=False)
    shared = table.set_index("id").loc[[p.id for p in multi]].reset_index()
    pd.testing.assert_frame_equal(shared, plain, check_exact=False, atol=2e-2, rtol=1e-2)

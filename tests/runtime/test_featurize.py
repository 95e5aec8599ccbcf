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


def test_resume_after_interrupt_computes_only_the_rest(tmp_path: Path, policy_dir: Path, tiny_model_dir: Path) -> None:
    plan = make_plan(policy_dir, tiny_model_dir)
    data = make_pairs(10)
    written: list[Path] = []

    def stop_after_first_model_shard(path: Path) -> None:
        written.append(path)
        if "-L" in path.parent.name:  # the first batch of activations
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        featurize(plan, data, cache_dir=tmp_path / "c", batch_size=4, progress=False, on_shard=stop_after_first_model_shard)
    assert written and all(p.exists() for p in written)
    resumed = featurize(plan, data, cache_dir=tmp_path / "c", batch_size=4, progress=False)
    assert resumed.attrs["ethos"]["stats"]["computed_pairs"] == 6  # 10 pairs, the first batch of 4 kept
    fresh = featurize(plan, data, cache_dir=tmp_path / "fresh", batch_size=4, progress=False)
    pd.testing.assert_frame_equal(resumed, fresh)


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

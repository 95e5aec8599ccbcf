"""Each lens on small inputs: metrics (exactly the compiler's METRICS), lexicons, probe
directions and scores, SAE features (range errors name the policy line)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from ethos.compiler.names import METRICS
from ethos.compiler.plan import Concept, FeaturesLens, FileRef, LexiconLens, MetricLens, ProbeLens, Span
from ethos.runtime.lenses import LENSES, LensContext, LensError, build_lens, per_100_words, words
from ethos.runtime.lenses.metric import IMPLEMENTED
from ethos.runtime.lenses.probe import direction_sha256
from ethos.runtime.model import ModelRuntime, model_runtime
from ethos.runtime.sae import SAEError, find_sae


def ref(path: Path, root: str = "policy") -> FileRef:
    return FileRef(path=path.name, root=root, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def metric(name: str, text: str, ctx: LensContext | None = None) -> float:
    lens = build_lens(Concept(name="c", lens=MetricLens(metric=name), origin="policy"), ctx or LensContext())
    return lens.score_texts([((), text)])[0]["value"]


def test_registry_has_the_four_lenses() -> None:
    assert set(LENSES) == {"metric", "lexicon", "probe", "features"}


def test_metric_lens_implements_exactly_the_compiler_metrics() -> None:
    assert set(IMPLEMENTED) == set(METRICS)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("words", "Hello there, it's me!", 4),
        ("chars", "abc", 3),
        ("sentences", "One. Two! Three? four", 4),
        ("list_items", "Intro:\n- a\n* b\n+ c\n1. d\n2) e\nnot - this", 5),
        ("markdown_headers", "# A\n## B\nnot # this\n####### too deep", 2),
        ("bold", "**a** and __b__ but not ** c **", 2),
        ("code_blocks", "```py\nx\n```\ntext\n```\ny\n```", 2),
        ("markdown", "# H\n**b**\n- i\n| a | b |\n```\nc\n```", 5),
        ("emoji", "great 😀🎉 ☀ ok", 3),
        ("exclamations", "Wow! Really!!", 3),
        ("questions", "Why? How?", 2),
        ("links", "see https://a.com and [b](http://b.org) or www.c.net", 3),
        ("first_person", "I think my dog likes me", 50.0),
        ("apology", "Sorry, I apologize for that", 2.0),  # a count since the metric's version 2
        ("hedging", "It might rain, perhaps. I think so.", 300 / 7),
    ],
)
def test_metrics(name: str, text: str, expected: float) -> None:
    assert metric(name, text) == pytest.approx(expected)


def test_per_100_words_of_an_empty_reply_is_zero() -> None:
    assert words("") == [] and per_100_words(3, "") == 0.0
    assert metric("hedging", "") == 0.0


def test_length_counts_reply_tokens_of_the_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "The capital of France is Paris."
    assert metric("length", text, LensContext(tokenizer=tok)) == len(tok(text, add_special_tokens=False)["input_ids"])
    with pytest.raises(LensError, match="tokenizer"):
        metric("length", text)


def test_lexicon_lens_counts_whole_words_case_insensitively(tmp_path: Path) -> None:
    f = tmp_path / "hedge.txt"
    f.write_text("# hedges\nmight\ni think\n\nperhaps\n")
    ctx = LensContext(policy_dir=tmp_path)
    lens = build_lens(Concept(name="h", lens=LexiconLens(file=ref(f)), origin="policy"), ctx)
    assert lens.pattern.pattern.count("|") == 2  # one regex for all entries
    text = "I  THINK it Might work, mighty perhaps; perhapsnot"  # 8 words, 3 matches
    assert lens.score_texts([((), text)])[0]["value"] == 3.0  # mode count, the default
    density = build_lens(Concept(name="h", lens=LexiconLens(file=ref(f), mode="density"), origin="policy"), ctx)
    assert density.score_texts([((), text)])[0]["value"] == pytest.approx(100 * 3 / 8)  # per 100 words


def test_lexicon_file_changed_since_compile_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("a\n")
    stale = FileRef(path="x.txt", root="policy", sha256="0" * 64)
    with pytest.raises(LensError, match="changed since the plan was compiled"):
        build_lens(Concept(name="x", lens=LexiconLens(file=stale), origin="policy"), LensContext(policy_dir=tmp_path))


def test_library_files_resolve_against_the_library_root() -> None:
    from ethos.compiler.names import LIBRARY_ROOT

    path = LIBRARY_ROOT / "concepts" / "hedging.txt"
    fr = FileRef(path="concepts/hedging.txt", root="library", sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    lens = build_lens(Concept(name="hedging", lens=LexiconLens(file=fr), origin="library"), LensContext())
    assert lens.score_texts([((), "Perhaps it might work.")])[0]["value"] > 0


@pytest.fixture(scope="module")
def runtime(tiny_model_dir: Path) -> ModelRuntime:
    return model_runtime(tiny_model_dir, layer=0, dtype=torch.float32, batch_size=4)


def probe_file(tmp_path: Path) -> Path:
    f = tmp_path / "syc.jsonl"
    rows = [
        {"prompt": "Is Paris the capital?", "positive": "Yes you are so right, brilliant!", "negative": "Yes."},
        {"prompt": "Is water wet?", "positive": "What a great question, absolutely!", "negative": "It depends."},
        {"prompt": "Hello", "positive": "You are amazing!", "negative": "Hello."},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def test_probe_direction_is_the_unit_difference_of_means_and_is_cached(tmp_path: Path, runtime: ModelRuntime) -> None:
    f = probe_file(tmp_path)
    ctx = LensContext(policy_dir=tmp_path, model_fingerprint=runtime.fingerprint, layer=0, runtime=runtime, cache_dir=tmp_path / "c")
    concept = Concept(name="syc", lens=ProbeLens(file=ref(f), pool="max"), origin="policy")
    lens = build_lens(concept, ctx)
    assert lens.direction_sha256 is None
    lens.prepare(ctx)
    d = torch.from_numpy(lens.direction)
    assert float(d.norm()) == pytest.approx(1.0, abs=1e-5)
    # recompute by hand: mean over each reply's tokens, positives minus negatives
    from ethos.runtime.lenses.probe import read_exemplars
    from ethos.runtime.model import tokenize_pair

    items = [tokenize_pair(runtime.tokenizer, [{"role": "user", "content": p}], [a, b]) for p, a, b in read_exemplars(f)]
    acts = runtime.encoder.encode(items)
    diff = torch.stack([a[0].mean(0) for a in acts]).mean(0) - torch.stack([a[1].mean(0) for a in acts]).mean(0)
    torch.testing.assert_close(d, diff / diff.norm(), atol=1e-5, rtol=1e-5)
    assert lens.direction_sha256 == direction_sha256(lens.direction)
    # a second lens finds the cached direction (same sha) without recomputing
    again = build_lens(concept, ctx)
    assert again.direction_sha256 == lens.direction_sha256
    # scores: projections pooled over the reply's tokens; pool picks the reported stat
    reply = acts[0][0]
    s = lens.score_activations([reply])[0]
    proj = reply @ d
    assert s["mean"] == pytest.approx(float(proj.mean()), abs=1e-5) and s["max"] == pytest.approx(float(proj.max()), abs=1e-5)
    assert lens.report == "max"


def test_probe_with_a_bad_line_names_it(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a", "positive": "b", "negative": "c"}\n{"prompt": "a"}\n')
    with pytest.raises(LensError, match=r"bad.jsonl:2"):
        build_lens(Concept(name="p", lens=ProbeLens(file=ref(f)), origin="policy"), LensContext(policy_dir=tmp_path))


def test_features_lens_sums_pooled_latents(tiny_sae_dir: Path, runtime: ModelRuntime) -> None:
    from sae_lens import SAE

    ctx = LensContext(sae=str(tiny_sae_dir), runtime=runtime, model_fingerprint=runtime.fingerprint, layer=0)
    lens = build_lens(Concept(name="f", lens=FeaturesLens(latents=(1, 7)), origin="policy"), ctx)
    assert lens.layer == 0 and lens.report == "max"
    lens.prepare(ctx)
    acts = [torch.randn(5, 64), torch.randn(3, 64), torch.zeros(0, 64)]
    got = lens.score_activations(acts)
    sae = SAE.load_from_disk(tiny_sae_dir)
    for a, s in zip(acts[:2], got):
        z = sae.encode(a).detach()[:, [1, 7]]
        assert s["mean"] == pytest.approx(float(z.mean(0).sum()), abs=1e-5)
        assert s["max"] == pytest.approx(float(z.max(0).values.sum()), abs=1e-5)
    assert got[2]["mean"] != got[2]["mean"]  # NaN for a reply without tokens


def test_features_lens_uses_the_sae_in_float32(tmp_path: Path, tiny_sae_dir: Path, runtime: ModelRuntime) -> None:
    """An SAE stored in bf16 is used in float32 (the one loader), like everywhere else."""
    from sae_lens import SAE

    from ethos.runtime.sae import save_sae

    folder = tmp_path / "bf16"
    save_sae(SAE.load_from_disk(tiny_sae_dir), folder, dtype=torch.bfloat16)
    assert json.loads((folder / "cfg.json").read_text())["dtype"] == "bfloat16"
    ctx = LensContext(sae=str(folder), runtime=runtime, model_fingerprint=runtime.fingerprint, layer=0)
    lens = build_lens(Concept(name="f", lens=FeaturesLens(latents=(1, 7)), origin="policy"), ctx)
    lens.prepare(ctx)
    assert lens.to_dict()["version"] == 2
    acts = [torch.randn(6, 64) * 3]
    got = lens.score_activations(acts)[0]
    sae = SAE.load_from_disk(folder, dtype="float32")
    z = sae.encode(acts[0]).detach()[:, [1, 7]]
    assert got["mean"] == pytest.approx(float(z.mean(0).sum()), abs=1e-5)
    assert got["max"] == pytest.approx(float(z.max(0).values.sum()), abs=1e-5)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_pool_activations_on_a_batch_equals_scoring_its_replies(
    tmp_path: Path, tiny_model_dir: Path, tiny_sae_dir: Path, share_prompt: bool
) -> None:
    """The device half of scoring: pooled from a batch as the forward left it (bf16, padded,
    an empty reply among them), it equals score_activations on the per-reply tensors exactly,
    columns mean and max, NaN for the empty reply."""
    import math

    from ethos.runtime.model import POOL_STATS, tokenize_pair

    rt = model_runtime(tiny_model_dir, layer=0, dtype=torch.bfloat16)
    ctx = LensContext(policy_dir=tmp_path, sae=str(tiny_sae_dir), model_fingerprint=rt.fingerprint, layer=0,
                      runtime=rt, cache_dir=tmp_path / "c")
    lenses = [build_lens(Concept(name="p", lens=ProbeLens(file=ref(probe_file(tmp_path))), origin="policy"), ctx),
              build_lens(Concept(name="f", lens=FeaturesLens(latents=(1, 7)), origin="policy"), ctx)]
    items = [tokenize_pair(rt.tokenizer, [{"role": "user", "content": q}], replies) for q, replies in (
        ("Is it true?", ["You are so right, brilliant!", "No."]),
        ("Hello", ["", "Hello, how are you today? I am fine."]),
        ("Give me a list", ["- apples\n- pears", "Sorry, I cannot help with that."]))]
    replies = rt.encoder.encode_replies(items, share_prompt=share_prompt)
    per_reply = [a for pair in rt.encoder.encode_batch(items, share_prompt=share_prompt) for a in pair]
    assert replies.hidden.dtype == torch.bfloat16 and replies.lengths[2] == 0
    for lens in lenses:
        lens.prepare(ctx)
        pooled = lens.pool_activations(replies)
        assert isinstance(pooled, torch.Tensor) and pooled.shape == (6, 2) and pooled.dtype == torch.float32
        expected = lens.score_activations(per_reply)
        for scores in ([dict(zip(POOL_STATS, row)) for row in pooled.tolist()], lens.score_activations(replies)):
            assert len(scores) == len(expected) == 6
            for got, want in zip(scores, expected):
                assert all(got[s] == want[s] or math.isnan(got[s]) and math.isnan(want[s]) for s in POOL_STATS)
        assert math.isnan(pooled[2, 0]) and math.isnan(pooled[2, 1])
        assert not math.isnan(pooled[0, 0]) and not math.isnan(pooled[0, 1])
        assert lens.pool_activations([]).shape == (0, 2) and lens.score_activations([]) == []


def test_latent_out_of_range_names_the_policy_line(tiny_sae_dir: Path) -> None:
    span = Span(file="specs/x.ethos", line=7, column=28, end_line=7, end_column=40)
    concept = Concept(name="f", lens=FeaturesLens(latents=(3, 5000)), origin="policy", span=span)
    with pytest.raises(LensError) as err:
        build_lens(concept, LensContext(sae=str(tiny_sae_dir)))
    assert str(err.value) == f"specs/x.ethos:7:28: latent 5000 is out of range for SAE '{tiny_sae_dir}' (d_sae 32)"


def test_sae_names_resolve_in_one_place(tmp_path: Path, tiny_sae_dir: Path, ethos_cache: Path) -> None:
    assert find_sae(str(tiny_sae_dir)) == tiny_sae_dir
    from ethos.compiler.names import LIBRARY_ROOT

    assert find_sae("default") == LIBRARY_ROOT / "saes" / "default"  # the shipped SAE
    with pytest.raises(SAEError, match="unknown SAE 'nope'"):
        find_sae("nope")
    # the features lens names the same error as a LensError
    with pytest.raises(LensError, match="unknown SAE 'nope'"):
        build_lens(Concept(name="f", lens=FeaturesLens(latents=(1,)), origin="policy"), LensContext(sae="nope"))
    import shutil

    shutil.copytree(tiny_sae_dir, ethos_cache / "saes" / "default")
    assert find_sae("default") == ethos_cache / "saes" / "default"  # a cached one takes precedence

"""Device handling without a GPU: the one place that picks device and dtype
(``ethos.runtime.device``), and every path that reads a model's activations run with the model
on PyTorch's ``meta`` device.

A meta tensor has a shape and a device but no data, so — like a CUDA tensor seen from CPU code —
it cannot be mixed with CPU tensors ("Tensor on device cpu is not on the expected device meta")
and cannot be read by ``.numpy()``, ``float()``, ``.item()`` or ``.tolist()``. The ``on_meta``
fixture lets exactly one door through: ``ethos.runtime.device.to_numpy`` (its ``_to_host``),
which gives made-up host values for meta tensors. A lens, an SAE pass or featurize that keeps a
tensor on the CPU while the model is elsewhere, or reads a device tensor without going through
``to_numpy``, fails here as it would on CUDA. The ``gpu`` tests run the same on real CUDA.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ethos.compiler.plan import Concept, FeaturesLens, FileRef, ProbeLens
from ethos.runtime import device as dev
from ethos.runtime.device import DeviceError, default_device, pick_dtype, resolve_device, to_float, to_list, to_numpy
from ethos.runtime.lenses import LensContext, build_lens
from ethos.runtime.model import ModelError, load_model, model_runtime, tokenize_pair

META = torch.device("meta")
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------------------------------------
# Choosing the device and dtype


def test_cpu_by_default_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETHOS_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == CPU and resolve_device() == CPU and resolve_device("cpu") == CPU


def test_cuda_when_present_normalised_to_an_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETHOS_DEVICE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert default_device() == torch.device("cuda", 0)  # equal to what tensors report
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("ETHOS_DEVICE", "cpu")
    assert default_device() == CPU
    # under a launcher each process takes the GPU of its local rank
    monkeypatch.delenv("ETHOS_DEVICE")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert default_device() == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="2 CUDA device"):
        resolve_device("cuda:5")


def test_bad_device_and_dtype_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ETHOS_DEVICE", "cuda")
    with pytest.raises(DeviceError, match=r"ETHOS_DEVICE='cuda': CUDA is not available"):
        default_device()
    monkeypatch.setenv("ETHOS_DEVICE", "tpu")
    with pytest.raises(DeviceError, match=r"ETHOS_DEVICE='tpu'"):
        default_device()
    with pytest.raises(DeviceError, match="cpu, cuda or cuda:N"):
        resolve_device("gpu please")
    monkeypatch.delenv("ETHOS_DEVICE")
    monkeypatch.setenv("ETHOS_DTYPE", "float8")
    with pytest.raises(DeviceError, match="ETHOS_DTYPE='float8': use float32 or bfloat16"):
        pick_dtype("cpu")


def test_dtype_bf16_on_cuda_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETHOS_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype(torch.device("cuda", 0)) == torch.bfloat16
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert pick_dtype("cpu") == torch.float32
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert pick_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("ETHOS_DTYPE", "float32")
    assert pick_dtype(torch.device("cuda", 0)) == torch.float32


def test_a_model_asked_for_on_missing_cuda_is_a_model_error(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ETHOS_DEVICE", "cuda")
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model(tiny_model_dir)


def test_to_numpy_detaches_widens_and_copies_to_the_host() -> None:
    t = torch.tensor([1.5, -2.0], dtype=torch.bfloat16, requires_grad=True)
    a = to_numpy(t * 2)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.tolist() == [3.0, -4.0]
    assert to_numpy(torch.arange(3), np.int32).dtype == np.int32
    assert to_numpy(torch.tensor([1.0], dtype=torch.float16)).dtype == np.float32
    assert to_float(torch.tensor(2.5)) == 2.5 and isinstance(to_float(torch.tensor([2.5])), float)
    assert to_list(torch.tensor([[1, 2]])) == [[1, 2]]
    with pytest.raises(ValueError, match="one element"):
        to_float(torch.zeros(2))


# ---------------------------------------------------------------------------------------------
# Every activation path with the model on the meta device


class StrictDevices(TorchFunctionMode):
    """CUDA's rule for every torch op: no op mixes tensors of two devices, except a CPU scalar
    (0-dim) operand, CPU index tensors in ``[]``, and the explicit copies (``to``, ``copy_``).
    (The meta device alone lets ``cpu_tensor += meta_tensor`` through; CUDA does not.)"""

    COPIES = {torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.cpu, torch._has_compatible_shallow_copy_type}  # + Module.to
    INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func not in self.COPIES:
            devices = set()
            for a in tree_leaves((args, kwargs)):
                if not isinstance(a, torch.Tensor) or (a.device.type == "cpu" and a.dim() == 0):
                    continue
                if func in self.INDEXING and a.device.type == "cpu" and not a.is_floating_point():
                    continue
                devices.add(a.device.type)
            if len(devices) > 1:
                raise RuntimeError(f"{getattr(func, '__name__', func)} mixes tensors on {sorted(devices)}")
        return func(*args, **kwargs)


@pytest.fixture()
def on_meta(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[tuple[int, ...], str]]]:
    """Let meta tensors through ``to_numpy`` only (made-up values, fixed seed), with CUDA's rule
    against mixing devices in force; yields the log of what crossed."""
    real = dev._to_host
    rng = np.random.default_rng(0)
    crossed: list[tuple[tuple[int, ...], str]] = []

    def to_host(t: torch.Tensor) -> np.ndarray:
        if t.device.type != "meta":
            return real(t)
        crossed.append((tuple(t.shape), str(t.dtype)))
        if t.is_floating_point():
            return rng.standard_normal(tuple(t.shape)).astype(str(t.dtype).removeprefix("torch."))
        return np.zeros(tuple(t.shape), dtype=str(t.dtype).removeprefix("torch."))

    monkeypatch.setattr(dev, "_to_host", to_host)
    with StrictDevices():
        yield crossed


@pytest.fixture(scope="module")
def meta_runtime(tiny_model_dir: Path):
    """The tiny model on the meta device (eager attention: SDPA's mask peeks at values), layer 0."""
    model, tok, fp = load_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    model.set_attn_implementation("eager")
    model.to(META)
    return model_runtime(model, tokenizer=tok, fingerprint=fp, name="tiny-on-meta", layer=0, batch_size=2)


def _probe_file(folder: Path) -> FileRef:
    f = folder / "probe.jsonl"
    rows = [{"prompt": "Is Paris the capital?", "positive": "Yes, brilliant question!", "negative": "Yes."},
            {"prompt": "Hello", "positive": "You are amazing!", "negative": "Hello."}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return FileRef(path=f.name, root="policy", sha256=hashlib.sha256(f.read_bytes()).hexdigest())


def _pairs(n: int = 5) -> list:
    from ethos.runtime.data import Message, Pair

    texts = ["I am fine, thank you!", "Sorry, I cannot help.", "It boils at 100 degrees.", "- apples\n- pears", "No."]
    return [Pair(id=str(i), prompt=(Message(role="user", content=f"Question {i}?"),),
                 chosen=texts[i % 5], rejected=texts[(i + 2) % 5]) for i in range(n)]


def _is_host_float(x: object) -> bool:
    return type(x) is float


def test_model_activations_stay_on_the_models_device(meta_runtime, on_meta) -> None:
    item = tokenize_pair(meta_runtime.tokenizer, [{"role": "user", "content": "Hello?"}], ["Fine.", "Sorry, no."])
    for share in (True, False):
        acts = meta_runtime.encoder.encode_batch([item, item], share_prompt=share)
        assert {a.device for pair in acts for a in pair} == {META}
    assert meta_runtime.device == META and meta_runtime.encoder.positions > meta_runtime.encoder.real_positions > 0


def test_probe_lens_on_the_models_device(tmp_path: Path, meta_runtime, on_meta) -> None:
    ctx = LensContext(policy_dir=tmp_path, model_fingerprint="meta", layer=0, runtime=meta_runtime, cache_dir=tmp_path / "c")
    lens = build_lens(Concept(name="p", lens=ProbeLens(file=_probe_file(tmp_path)), origin="policy"), ctx)
    lens.prepare(ctx)  # the direction: computed on the device, one copy to the host
    assert isinstance(lens.direction, np.ndarray) and lens.direction.dtype == np.dtype("<f4")
    assert lens._d is not None and lens._d.device == META  # scoring happens where the activations are
    item = tokenize_pair(meta_runtime.tokenizer, [{"role": "user", "content": "Hi"}], ["Great question!", ""])
    acts = meta_runtime.encoder.encode_batch([item])[0]
    got = lens.score_activations(acts)
    assert len(got) == 2 and all(_is_host_float(v) for s in got for v in s.values())
    assert on_meta[-1] == ((2, 2), "torch.float32")  # both replies' (mean, max) in one copy


def test_features_lens_puts_the_sae_on_the_models_device(tiny_sae_dir: Path, meta_runtime, on_meta) -> None:
    ctx = LensContext(sae=str(tiny_sae_dir), runtime=meta_runtime, model_fingerprint="meta", layer=0)
    lens = build_lens(Concept(name="f", lens=FeaturesLens(latents=(1, 7)), origin="policy"), ctx)
    lens.prepare(ctx)
    assert next(lens._sae.parameters()).device == META
    item = tokenize_pair(meta_runtime.tokenizer, [{"role": "user", "content": "Hi"}], ["Hello there.", "No."])
    got = lens.score_activations(meta_runtime.encoder.encode_batch([item])[0])
    assert len(got) == 2 and all(_is_host_float(v) for s in got for v in s.values())
    # one copy to the host for the whole batch, not one per reply
    assert len(on_meta) == 1


def test_sae_latents_describe_and_eval_on_the_models_device(tiny_sae_dir: Path, meta_runtime, on_meta) -> None:
    from ethos.runtime.sae import describe_latents, evaluate, load_sae, reply_latents

    pairs = _pairs()
    sae = load_sae(tiny_sae_dir, device="cpu")  # loaded elsewhere: the passes move it to the model
    got = reply_latents(sae, meta_runtime, pairs, peaks=True)
    assert next(sae.parameters()).device == META
    for arrays in (got.max, got.mean, got.peak):
        assert arrays is not None
        assert all(isinstance(a, np.ndarray) and a.shape == (5, 32) for a in arrays)
    labels = describe_latents(tiny_sae_dir, pairs, [1, 2], k_snippets=2, k_tokens=3, runtime=meta_runtime)
    assert set(labels) == {1, 2}
    assert all(isinstance(v["frequency"], float) and isinstance(v["tokens"], list) for v in labels.values())
    metrics = evaluate(load_sae(tiny_sae_dir, device="cpu"), meta_runtime, pairs, progress=False)
    assert metrics["tokens"] > 0 and metrics["ce_tokens"] > 0
    assert all(_is_host_float(metrics[k]) for k in ("explained_variance", "l0", "dead_fraction", "ce_increase"))


def test_sae_activation_store_reads_the_device(tmp_path: Path, meta_runtime, on_meta) -> None:
    from ethos.runtime.sae.store import Unit, collect_activations

    tok = meta_runtime.tokenizer
    ids = tuple(tok("Hello, how are you today? I am fine.", add_special_tokens=False)["input_ids"])
    units = [Unit(ids, (), 0, 0), Unit(ids[:4], (ids[4:8], ids[8:]), 1, 1)]
    store = collect_activations(meta_runtime.encoder, units, tmp_path / "acts", info={"key": "meta"})
    assert store.n == sum(u.n_train() for u in units) and store.d == 64
    assert (tmp_path / "acts" / "acts.bin").stat().st_size == store.n * store.d * 2


def _chats(n: int = 5) -> list:
    return [([{"role": "user", "content": p.prompt[0].content}], p.chosen, p.rejected) for p in _pairs(n)]


def test_evaluate_heldout_log_probs_on_the_models_device(tiny_model_dir: Path, on_meta) -> None:
    """``ethos evaluate``'s preference accuracy reads summed reply log-probs of the trained and the
    base model wherever they are; one host copy per batch."""
    from ethos.runtime.evaluate import sequence_logps

    model, tok, _ = load_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    model.set_attn_implementation("eager")
    logps = sequence_logps(model.to(META), tok, _chats(5), batch_size=2)
    assert isinstance(logps, np.ndarray) and logps.shape == (5, 2) and np.isfinite(logps).all()
    assert len(on_meta) == 5  # 10 sequences in batches of 2: to_numpy once per batch, nothing else crossed


def test_reward_model_scores_on_the_models_device(tiny_model_dir: Path, on_meta) -> None:
    """The reward model's held-out scores (``ethos evaluate`` of a ``--reward-model`` run)."""
    from ethos.runtime.evaluate import reward_scores
    from ethos.runtime.reward import load_reward_model

    model, tok, _ = load_reward_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    model.set_attn_implementation("eager")
    scores = reward_scores(model.to(META), tok, _chats(4), batch_size=4)
    assert isinstance(scores, np.ndarray) and scores.shape == (4, 2) and len(on_meta) == 2


def test_featurize_with_the_model_on_the_meta_device(tmp_path: Path, tiny_model_dir: Path, tiny_sae_dir: Path,
                                                      meta_runtime, on_meta, monkeypatch: pytest.MonkeyPatch) -> None:
    """featurize end to end (a probe and a features concept) while the model sits on meta."""
    from ethos.compiler.compile import compile_source
    from ethos.runtime import featurize as fz
    from ethos.runtime.data import LoadResult

    _probe_file(tmp_path)
    source = (f'policy "meta";\nmodel "{tiny_model_dir}" layer 0;\nsae "{tiny_sae_dir}";\n'
              'concept p = probe "probe.jsonl";\nconcept f = features 1, 7;\nkeep concept p;\nkeep concept f;\n')
    (tmp_path / "p.ethos").write_text(source)
    result = compile_source(source, path=str(tmp_path / "p.ethos"))
    assert result.plan is not None, result.diagnostics
    monkeypatch.setattr(fz, "model_runtime", lambda *a, **k: meta_runtime.__class__(
        meta_runtime.encoder, meta_runtime.tokenizer, fz.model_fingerprint(tiny_model_dir), "tiny-on-meta", 2))
    pairs = _pairs(6)
    data = LoadResult(pairs, [], len(pairs), "test", "test", "meta-data")
    table = fz.featurize(result.plan, data, cache_dir=tmp_path / "cache", batch_size=4, progress=False)
    assert len(table) == 6 and table.attrs["ethos"]["stats"]["device"] == "meta"
    assert all(table[c].dtype == np.float64 for c in table.columns if c != "id")
    stats = table.attrs["ethos"]["stats"]
    assert stats["positions"] >= stats["padded_positions"] >= 0 and stats["positions"] > 0
    # the probe direction (its norm, then itself), then one copy to the host per batch (6 pairs
    # in batches of 4 and 2) for both lenses together: (lenses, replies, mean/max)
    assert sorted(shape for shape, _ in on_meta) == [(), (2, 4, 2), (2, 8, 2), (64,)]


# ---------------------------------------------------------------------------------------------
# On a real GPU (skipped on CPU machines)


@pytest.mark.gpu
@needs_cuda
def test_featurize_on_cuda_equals_cpu(tmp_path: Path, tiny_model_dir: Path, tiny_sae_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ethos.compiler.compile import compile_source
    from ethos.runtime.data import LoadResult
    from ethos.runtime.featurize import featurize

    _probe_file(tmp_path)
    source = (f'policy "gpu";\nmodel "{tiny_model_dir}" layer 0;\nsae "{tiny_sae_dir}";\n'
              'concept p = probe "probe.jsonl";\nconcept f = features 1, 7;\nkeep concept p;\nkeep concept f;\n')
    (tmp_path / "p.ethos").write_text(source)
    plan = compile_source(source, path=str(tmp_path / "p.ethos")).plan
    pairs = _pairs(6)
    data = LoadResult(pairs, [], len(pairs), "test", "test", "gpu-data")
    monkeypatch.setenv("ETHOS_DTYPE", "float32")
    tables = {}
    for device in ("cpu", "cuda"):
        monkeypatch.setenv("ETHOS_DEVICE", device)
        tables[device] = featurize(plan, data, cache_dir=tmp_path / device, batch_size=4, progress=False)
    assert tables["cuda"].attrs["ethos"]["stats"]["device"].startswith("cuda")
    for c in tables["cpu"].columns:
        if c != "id":
            np.testing.assert_allclose(tables["cuda"][c], tables["cpu"][c], rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_featurize_brings_a_batch_to_the_host_without_waiting_for_the_next() -> None:
    """featurize's pipeline on CUDA: batch k's scores come to the host while the work queued
    after them (batch k+1's forward, here ~20 large matmuls) still runs on the device."""
    from ethos.runtime.featurize import _HostCopies

    cuda = torch.device("cuda", torch.cuda.current_device())
    host = _HostCopies(cuda)
    scores = torch.arange(6.0, device=cuda).reshape(3, 2) * 2
    mark = host.mark()
    a = torch.randn(8192, 8192, device=cuda)
    later = [a @ a for _ in range(20)]
    done = torch.cuda.Event()
    done.record()
    got = host.fetch(scores, mark)
    still_running = not done.query()
    torch.cuda.synchronize()
    assert got.tolist() == [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]] and len(later) == 20
    assert still_running, "the copy of batch k's scores waited for the work queued after it"


@pytest.mark.gpu
@needs_cuda
def test_sae_eval_on_cuda_equals_cpu(tiny_model_dir: Path, tiny_sae_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ethos.runtime.sae import evaluate, load_sae

    monkeypatch.setenv("ETHOS_DTYPE", "float32")
    got = {}
    for device in ("cpu", "cuda"):
        runtime = model_runtime(tiny_model_dir, layer=0, device=device)
        got[device] = evaluate(load_sae(tiny_sae_dir, device=device), runtime, _pairs(), progress=False)
    for k in ("explained_variance", "l0", "ce_clean", "ce_spliced"):
        assert got["cuda"][k] == pytest.approx(got["cpu"][k], rel=1e-3, abs=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_evaluate_on_cuda_equals_cpu(tiny_model_dir: Path) -> None:
    """``ethos evaluate``'s pieces on CUDA: held-out log-probs and a reward model's scores equal the
    CPU's, and greedy generation runs on the device and returns host strings."""
    from ethos.runtime.evaluate import generate, reward_scores, sequence_logps
    from ethos.runtime.reward import load_reward_model

    got, rewards, replies = {}, {}, {}
    for device in ("cpu", "cuda"):
        model, tok, _ = load_model(tiny_model_dir, dtype=torch.float32, device=device)
        got[device] = sequence_logps(model, tok, _chats(5), batch_size=2)
        replies[device] = generate(model, tok, [c[0] for c in _chats(3)], max_new_tokens=6, batch_size=2)
        rm, rtok, _ = load_reward_model(tiny_model_dir, dtype=torch.float32, device=device)
        rewards[device] = reward_scores(rm, rtok, _chats(4), batch_size=4)
    np.testing.assert_allclose(got["cuda"], got["cpu"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(rewards["cuda"], rewards["cpu"], rtol=1e-3, atol=1e-3)
    assert len(replies["cuda"]) == 3 and all(isinstance(r, str) for r in replies["cuda"])


@pytest.mark.gpu
@needs_cuda
def test_two_training_steps_on_cuda_with_every_protocol(tiny_model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shaped trainer on CUDA in bf16 (the default there): weights, offsets and every hook,
    with the directions made on the CPU (as probes and SAEs give them) moved to the model."""
    import json
    import math

    from datasets import Dataset

    from ethos.runtime import trainer as T
    from ethos.runtime.settings import TrainSettings

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model, tok, _ = load_model(tiny_model_dir)  # ethos's choice: CUDA, bf16
    assert model.device.type == "cuda" and T.pick_bf16(TrainSettings())
    chats = _chats(4)
    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}],
             "weight": w, "margin_offset": o} for (p, c, r), w, o in zip(chats, [1.0, 0.5, 2.0, 1.0], [0.1, 0.0, -0.2, 0.3])]
    d = model.config.hidden_size
    unit = torch.nn.functional.normalize(torch.randn(1, d), dim=1)
    rules = [T.ActivationRule("ablation", "a", 0.0, unit), T.ActivationRule("steering", "s", 0.5, unit, 2.0),
             T.ActivationRule("penalty", "p", 0.0, unit, 0.1)]
    log = T.JsonlLog(tmp_path / "log.jsonl")
    s = TrainSettings(lora=True, lora_r=4, steps=2, batch_size=2, max_length=64, progress=False)
    trainer = T.build_trainer(model, tok, Dataset.from_list(rows), s, out=tmp_path / "run", layer=0, rules=rules,
                              callbacks=[log])
    assert math.isfinite(trainer.train().training_loss)
    steps = [r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["ethos/penalty"]) and r["ethos/ablation_norm_removed"] > 0
                                   for r in steps)


def test_tensors_reach_numpy_only_through_the_device_module() -> None:
    """``.numpy()`` on a CUDA tensor is the TypeError issue 11 began with; ethos reads device
    tensors through ``ethos.runtime.device.to_numpy`` (``to_float``, ``to_list``) only."""
    import re

    runtime = Path(dev.__file__).resolve().parent
    found = [f"{p.relative_to(runtime.parent)}:{n}: {line.strip()}"
             for p in sorted(runtime.rglob("*.py")) if p.name != "device.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\.numpy\(\)", line)]
    assert not found, "\n".join(found)

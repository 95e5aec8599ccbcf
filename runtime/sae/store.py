"""SAE training data: text sources read into token units, their activations at the layer, and the
on-disk activation store that training reads.

- **Sources.** Plain text (``.txt``/``.md``: paragraphs), JSON Lines or JSON with a text field, or
  preference data (any format :func:`ethos.runtime.data.load_pairs` recognises: the prompt and a
  reply through the chat template). See :func:`read_units`.
- **Held out.** Rows whose 0-based index is a multiple of ``holdout`` (:data:`HOLDOUT` by
  default; :func:`is_held_out` is the one rule) are never trained on; ``eval`` uses them when it is
  given a file the SAE was trained on.
- **Excluded from training:** position 0 of every sequence (the attention sink, whose norm is
  ~150x the others'), padding, and a chat template's fixed preamble after its first occurrence.
- **Activations** run through the model runtime's shared-prompt forward
  (:meth:`ethos.runtime.model.Encoder.shared_forward`) and are written as bf16 rows to
  ``acts.bin`` with ``acts.json`` last, so an interrupted run is redone, never half-used.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import to_numpy
from ..io import atomic_write_text
from ..model import Encoder, sha256_file, tokenize_pair
from ..progress import stage
from .load import SAEError

HOLDOUT = 10
"""Rows whose 0-based index is a multiple of ``HOLDOUT`` are never trained on; ``eval`` uses them
when it is given a file the SAE was trained on."""
TEXT_FIELDS = ("text", "content", "question", "instruction", "prompt", "response", "output")
TEXT_SUFFIXES = (".txt", ".md", ".text")


def is_held_out(row: int, holdout: int) -> bool:
    """The held-out rule: row ``row`` (0-based) is held out when ``row % holdout == 0``
    (``holdout`` <= 0: nothing is)."""
    return holdout > 0 and row % holdout == 0


@dataclass(frozen=True)
class Unit:
    """One training unit: a prompt (or a text chunk) and the continuations that follow it.

    Trained on: ``prompt[skip:]`` and every continuation's tokens. ``row`` is the input row's
    0-based index (the held-out split is decided on it)."""

    prompt: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    skip: int
    row: int

    def n_train(self) -> int:
        return max(0, len(self.prompt) - self.skip) + sum(len(c) for c in self.continuations)


@dataclass
class Source:
    path: Path
    sha256: str
    kind: str  # "preference" | "text"
    rows: int
    train_rows: int = 0
    tokens: int = 0


def _text_rows(path: Path, field_name: str | None) -> list[str]:
    """Texts of a JSON Lines / JSON array file (a text field) or a plain-text file (paragraphs)."""
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        text = path.read_text(encoding="utf-8", errors="replace")
        return [p.strip() for p in text.split("\n\n") if p.strip()]
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        raw = f.read()
    try:
        value = json.loads(raw)
        rows = value if isinstance(value, list) else [value]
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    texts: list[str] = []
    for row in rows:
        if isinstance(row, str):
            texts.append(row)
            continue
        if not isinstance(row, dict):
            texts.append("")
            continue
        keys = [field_name] if field_name else [k for k in TEXT_FIELDS if isinstance(row.get(k), str)]
        parts = [row[k] for k in keys if isinstance(row.get(k), str)]
        texts.append("\n\n".join(p for p in parts if p.strip()))
    if field_name is None and texts and not any(texts):
        raise SAEError(f"{path}: no text field found (looked for {', '.join(TEXT_FIELDS)}); pass --text-field")
    return texts


def read_units(
    paths: Sequence[Path],
    tokenizer: Any,
    *,
    holdout: int = HOLDOUT,
    split: str = "train",
    text_field: str | None = None,
    context: int = 512,
    limit: int | None = None,
    both_replies: bool = False,
) -> tuple[list[Unit], list[Source]]:
    """Token units of the ``split`` (``train``: rows not held out; ``heldout``; ``all``) of each
    file. Preference data (any format :func:`load_pairs` recognises) gives the prompt and one
    reply through the chat template (the chosen reply in even rows, the rejected one in odd rows:
    every position the model runs is then trained on, where both replies would run the prompt
    twice), or with ``both_replies`` a unit of the prompt and both replies (its KV cache shared);
    anything else is read as text and cut into ``context``-token chunks, each starting with BOS
    (when the tokenizer has one). Sequences are cut to ``context`` tokens (prompts from the left)."""
    from ..data import DataError, load_pairs

    def wanted(row: int) -> bool:
        if split == "all" or holdout <= 0:
            return True
        return is_held_out(row, holdout) == (split == "heldout")

    units: list[Unit] = []
    sources: list[Source] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    for path in paths:
        if not path.exists():
            raise SAEError(f"{path}: no such file or directory")
        digest = sha256_file(path) if path.is_file() else ""
        pairs = None
        if not path.name.lower().endswith(TEXT_SUFFIXES):
            try:
                pairs = load_pairs(path, limit=limit).pairs
            except DataError:
                pairs = None
        before = len(units)
        if pairs is not None:
            src = Source(path, digest, "preference", len(pairs))
            for p in pairs:
                row = int(p.id)
                if not wanted(row):
                    continue
                if both_replies:
                    pt = tokenize_pair(tokenizer, p.prompt, [p.chosen, p.rejected], max_tokens=context)
                    units.append(Unit(pt.prompt, pt.continuations, 1, row))
                else:  # one reply per pair, alternating: every position run is trained on
                    reply = p.chosen if row % 2 == 0 else p.rejected
                    pt = tokenize_pair(tokenizer, p.prompt, [reply], max_tokens=context)
                    units.append(Unit(pt.prompt + pt.continuations[0], (), 1, row))
        else:
            try:
                texts = _text_rows(path, text_field)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise SAEError(f"{path}: cannot read text: {exc}") from None
            if limit is not None:
                texts = texts[:limit]
            src = Source(path, digest, "text", len(texts))
            step = context - (1 if bos is not None else 0)
            for row, text in enumerate(texts):
                if not text or not wanted(row):
                    continue
                ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                for k in range(0, len(ids), step):
                    chunk = ([bos] if bos is not None else []) + ids[k : k + step]
                    if len(chunk) > 1:
                        units.append(Unit(tuple(chunk), (), 1, row))
        units[before:] = _skip_shared_preamble(units[before:])
        src.train_rows = len({u.row for u in units[before:]})
        src.tokens = sum(u.n_train() for u in units[before:])
        sources.append(src)
    return units, sources


def _skip_shared_preamble(units: list[Unit]) -> list[Unit]:
    """A chat template's fixed preamble (e.g. SmolLM2's default system prompt) is the same tokens
    in every prompt of a file: train on it once (in the file's first unit), not in every row."""
    units = list(units)
    prompts = [u.prompt for u in units]
    if len(prompts) < 2:
        return units
    head, count = Counter(p[:4] for p in prompts).most_common(1)[0]
    if count < len(prompts) / 2:
        return units
    group = [p for p in prompts if p[:4] == head]
    common = min(len(p) for p in group)
    first = group[0]
    for p in group[1:]:
        n = 0
        while n < common and p[n] == first[n]:
            n += 1
        common = n
    preamble = first[:common]
    seen = False
    for i, u in enumerate(units):
        if u.prompt[:common] != preamble:
            continue
        if seen and common > u.skip:
            units[i] = Unit(u.prompt, u.continuations, min(common, len(u.prompt) - 1), u.row)
        seen = True
    return units




def unit_activations(encoder: Encoder, units: Sequence[Unit]) -> list[torch.Tensor]:
    """Residual activations (native dtype) of each unit's trained tokens, one (n, d) tensor each.

    Units with continuations run their prompt once (its KV cache repeated for each continuation);
    text chunks run as plain rows.
    """
    out: list[torch.Tensor] = [torch.empty(0)] * len(units)
    plain = [i for i, u in enumerate(units) if not u.continuations]
    shared = [i for i, u in enumerate(units) if u.continuations]
    if plain:
        h = encoder.hidden(*encoder.pad([units[i].prompt for i in plain]))
        for row, i in enumerate(plain):
            u = units[i]
            out[i] = h[row, u.skip : len(u.prompt)].clone()
    # group shared units by their number of continuations (a batch repeats the cache n times)
    by_n: dict[int, list[int]] = {}
    for i in shared:
        by_n.setdefault(len(units[i].continuations), []).append(i)
    for n, idx in by_n.items():
        fw = encoder.shared_forward([units[i].prompt for i in idx], [units[i].continuations for i in idx])
        hp, hc = fw.prompt_hidden, fw.hidden
        for b, i in enumerate(idx):
            u = units[i]
            parts = [hp[b, u.skip : len(u.prompt)]]
            parts += [hc[b * n + j, : len(c)] for j, c in enumerate(u.continuations)]
            out[i] = torch.cat(parts).clone()
    return out


def unit_batches(units: Sequence[Unit], max_tokens: int, group: int = 16) -> Iterator[list[int]]:
    """Indices of ``units`` in batches of at most ~``max_tokens`` padded positions (prompt rows +
    continuation rows), with little padding: units sorted by prompt length, then, within groups
    of ``group``, by continuation length."""
    def cont(i: int) -> int:
        return max((len(c) for c in units[i].continuations), default=0)

    by_prompt = sorted(range(len(units)), key=lambda i: len(units[i].prompt))
    order = [i for g in range(0, len(by_prompt), group) for i in sorted(by_prompt[g : g + group], key=cont)]
    batch: list[int] = []
    tp = tc = 0
    for i in order:
        u = units[i]
        n = len(u.continuations)
        ntp, ntc = max(tp, len(u.prompt)), max(tc, cont(i))
        if batch and (len(batch) + 1) * (ntp + n * ntc) > max_tokens:
            yield batch
            batch, ntp, ntc = [], len(u.prompt), cont(i)
        batch.append(i)
        tp, tc = ntp, ntc
    if batch:
        yield batch




@dataclass
class ActivationStore:
    """Activations on disk: ``acts.bin`` (bf16 rows of ``d`` values) and ``acts.json``."""

    folder: Path
    n: int
    d: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / "acts.bin"

    def array(self) -> np.ndarray:
        """A read-only memmap of the raw bf16 bits (int16), shape (n, d)."""
        return np.memmap(self.path, dtype=np.int16, mode="r", shape=(self.n, self.d))

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """Rows ``index`` as float32."""
        bits = torch.from_numpy(np.ascontiguousarray(self.array()[np.sort(index)]))
        return bits.view(torch.bfloat16).float()

    @classmethod
    def open(cls, folder: Path) -> "ActivationStore | None":
        try:
            info = json.loads((folder / "acts.json").read_text())
        except (OSError, ValueError):
            return None
        if not info.get("complete") or not (folder / "acts.bin").is_file():
            return None
        return cls(folder, int(info["n"]), int(info["d"]), info)


def collect_activations(
    encoder: Encoder,
    units: Sequence[Unit],
    folder: Path,
    *,
    info: dict[str, Any],
    batch_tokens: int = 4096,
) -> ActivationStore:
    """Run the truncated forward over ``units`` and append their activations (bf16) to
    ``folder/acts.bin``; ``acts.json`` is written last (``complete``), so an interrupted run is
    redone, never half-used."""
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(u.n_train() for u in units)
    n = 0
    norms: list[torch.Tensor] = []
    t0 = time.perf_counter()
    with stage("sae activations", total=total, unit="tok") as bar:
        with open(folder / "acts.bin.part", "wb") as f:
            for batch in unit_batches(units, batch_tokens):
                acts = unit_activations(encoder, [units[i] for i in batch])
                block = torch.cat([a for a in acts if a.numel()]).to(torch.bfloat16)
                norms.append(block.float().norm(dim=-1))
                # bf16 bits as int16 (numpy has no bf16): the raw bytes cross to the host once
                f.write(to_numpy(block.view(torch.int16)).tobytes())
                n += block.shape[0]
                bar.advance(block.shape[0])
    seconds = time.perf_counter() - t0
    os.replace(folder / "acts.bin.part", folder / "acts.bin")
    all_norms = torch.from_numpy(to_numpy(torch.cat(norms))) if norms else torch.zeros(1)
    q = torch.quantile(all_norms[torch.randperm(all_norms.numel())[:200_000]], torch.tensor([0.5, 0.99, 0.999]))
    record = dict(info, n=n, d=encoder.d_model, seconds=round(seconds, 1), tokens_per_s=round(n / max(seconds, 1e-9)),
                  norm_median=float(q[0]), norm_p99=float(q[1]), norm_p999=float(q[2]), norm_max=float(all_norms.max()),
                  complete=True)
    atomic_write_text(folder / "acts.json", json.dumps(record, indent=2))
    return ActivationStore(folder, n, encoder.d_model, record)



def activation_key(fingerprint: str, layer: int, sources: Sequence[Source], units: Sequence[Unit], holdout: int) -> str:
    """The activation cache's key: model, layer, held-out rule, the sources' contents and the units."""
    h = hashlib.sha256()
    h.update(f"v1\0{fingerprint}\0{layer}\0{holdout}\0".encode())
    for s in sources:
        h.update(f"{s.sha256}\0{s.kind}\0".encode())
    h.update(f"{len(units)}\0{sum(u.n_train() for u in units)}".encode())
    return h.hexdigest()[:24]


def heldout_pairs(paths: Sequence[Path], holdout: int, rows: int | None) -> list[Any]:
    """The held-out pairs of the preference files among ``paths`` (text files are skipped), at
    most ``rows`` of them."""
    from ..data import DataError, load_pairs

    out: list[Any] = []
    for p in paths:
        try:
            pairs = load_pairs(p).pairs
        except DataError:
            continue
        out += [x for x in pairs if is_held_out(int(x.id), holdout)]
    return out[:rows] if rows else out

"""Lenses: the ways a concept is scored, registered by name (``metric``, ``lexicon``, ``probe``,
``features``).

A lens scores one reply in its prompt's context and returns named statistics: ``{"value": x}``
for the text lenses, ``{"mean": x, "max": y}`` for the activation lenses (both poolings are always
computed and cached; the concept's ``pool`` picks the one reported). Each lens says what it
needs: plain ``text``, the model's ``tokenizer`` (metric ``length``) or ``activations`` at the
plan's layer (probe, features), so featurize loads a model only when some concept needs one.

``to_dict()`` is a lens's identity: everything that changes its scores (the file's sha256, the
probe direction's sha256, the SAE's sha256, the latents), used in the score cache's key.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ethos.compiler.names import DEFAULT_SAE, LIBRARY_ROOT
from ethos.compiler.plan import Concept, FileRef, Plan

from ..errors import EthosError

Need = Literal["text", "tokenizer", "activations"]
Scores = dict[str, float]


class LensError(EthosError):
    """A concept cannot be scored as written (bad file, latent out of range, ...)."""


@dataclass
class LensContext:
    """What lenses may need beyond their concept: where relative files live, which SAE the plan
    binds, and, once featurize has loaded them, the tokenizer and the model runtime."""

    policy_dir: Path | None = None
    sae: str = DEFAULT_SAE
    model_fingerprint: str | None = None  # set when some lens needs the model or its tokenizer
    layer: int | None = None  # the layer activation lenses read
    tokenizer: Any = None  # loaded only when a lens must actually tokenise
    runtime: Any = None  # a model.ModelRuntime (model.model_runtime) once the model is loaded

    @property
    def tokenizer_fingerprint(self) -> str | None:
        """The model fingerprint covers the tokenizer files too."""
        return self.model_fingerprint
    cache_dir: Path | None = None  # the ethos cache root for derived artefacts (probe directions)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_plan(cls, plan: Plan) -> "LensContext":
        source = Path(plan.source.path) if plan.source.path else None
        return cls(policy_dir=source.parent if source is not None else None, sae=plan.sae.name)

    def resolve_file(self, ref: FileRef, *, check_sha: bool = True) -> Path:
        """The file a ``FileRef`` names; its content must still have the sha256 the plan recorded."""
        if ref.root == "library" or self.policy_dir is None:
            path = LIBRARY_ROOT / ref.path if ref.root == "library" else Path(ref.path)
        else:
            path = self.policy_dir / ref.path
        if not path.is_file():
            raise LensError(f"{path}: file not found")
        if check_sha and ref.sha256:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
            if actual != ref.sha256:
                raise LensError(
                    f"{path}: content changed since the plan was compiled "
                    f"(sha256 {actual[:12]}…, plan has {ref.sha256[:12]}…); recompile the policy"
                )
        return path


class Lens(ABC):
    """One concept's scorer. Subclasses set ``kind`` and implement the method of their ``needs``."""

    kind: ClassVar[str]
    needs: Need = "text"
    stats: tuple[str, ...] = ("value",)

    def __init__(self, concept: Concept, context: LensContext) -> None:
        self.concept = concept
        self.context = context

    @property
    def report(self) -> str:
        """The statistic reported as the concept's score."""
        return getattr(self.concept.lens, "pool", self.stats[0])

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able identity of the lens (see the module docstring)."""

    def prepare(self, context: LensContext) -> None:
        """Called once the tokenizer/model is available (probe directions, SAE loading)."""

    def score_texts(self, items: Sequence[tuple[Sequence[Any], str]]) -> list[Scores]:
        """Scores of ``(prompt, reply)`` items; for ``text`` and ``tokenizer`` lenses."""
        raise NotImplementedError(f"{self.kind} lens does not score text")

    def pool_activations(self, acts: Any) -> Any:
        """The device half of :meth:`score_activations`: a float32 (replies, 2) tensor on the
        activations' device, columns ``mean`` and ``max`` (``model.POOL_STATS``), queued on the
        device without waiting for it. ``acts`` is a ``model.ReplyActivations`` (one batch as the
        forward left it) or a sequence of (reply tokens, d_model) tensors, one per reply."""
        raise NotImplementedError(f"{self.kind} lens does not score activations")

    def score_activations(self, acts: Any) -> list[Scores]:
        """Scores from each reply's activations (as for :meth:`pool_activations`): its pooled
        tensor brought to the host in one copy, ``{"mean": x, "max": y}`` per reply."""
        from ..model import pooled_scores

        return pooled_scores(self.pool_activations(acts))

    def key(self) -> str:
        """The sha256 of ``to_dict()``: the lens's namespace in the score cache."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


_WORD = re.compile(r"\w+(?:['’]\w+)*")

LENSES: dict[str, type[Lens]] = {}


def register_lens(kind: str) -> Callable[[type[Lens]], type[Lens]]:
    def deco(cls: type[Lens]) -> type[Lens]:
        if kind in LENSES:
            raise ValueError(f"lens {kind!r} registered twice")
        cls.kind = kind
        LENSES[kind] = cls
        return cls

    return deco


def build_lens(concept: Concept, context: LensContext) -> Lens:
    """The registered lens for a concept (by its lens ``kind``)."""
    try:
        cls = LENSES[concept.lens.kind]
    except KeyError:
        raise LensError(f"concept {concept.name!r}: unknown lens kind {concept.lens.kind!r}") from None
    return cls(concept, context)


def words(text: str) -> list[str]:
    """The words of a text (runs of letters/digits, inner apostrophes kept): the unit of
    "per 100 words"."""
    return _WORD.findall(text)


def per_100_words(count: int, text: str) -> float:
    """``count`` per 100 words of ``text``; 0 for a text without words."""
    n = len(words(text))
    return 100.0 * count / n if n else 0.0



# Register the built-in lenses.
from . import features, lexicon, metric, probe  # noqa: E402,F401

__all__ = [
    "LENSES",
    "Lens",
    "LensContext",
    "LensError",
    "Scores",
    "build_lens",
    "per_100_words",
    "register_lens",
    "words",
]

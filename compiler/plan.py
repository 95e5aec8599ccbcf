"""The Plan: plain, frozen, versioned data that everything downstream reads.

A Plan holds no tensors and no callables. The runtime and the reports accept a ``Plan`` or its
JSON (``Plan.model_validate_json``), never the AST. ``dump_plan`` gives the canonical JSON text:
the same policy compiles to byte-identical output on every run.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = "1"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Span(Frozen):
    """Where a construct came from: 1-based lines and columns, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @model_validator(mode="before")
    @classmethod
    def _from_position(cls, data):
        """Accept any object with the five fields (the AST's ``Loc``)."""
        if not isinstance(data, dict) and hasattr(data, "end_column"):
            return {f: getattr(data, f) for f in ("file", "line", "column", "end_line", "end_column")}
        return data


# ---------------------------------------------------------------------------------------------
# Lenses: how a concept is scored. A tagged union on ``kind``.


class MetricLens(Frozen):
    kind: Literal["metric"] = "metric"
    metric: str


class FileRef(Frozen):
    """A file a concept reads. ``root`` says where ``path`` is relative to: the folder of the
    policy file (``policy``) or the concept library's root, ``specs/`` (``library``)."""

    path: str
    root: Literal["policy", "library"]
    sha256: str


class LexiconLens(Frozen):
    kind: Literal["lexicon"] = "lexicon"
    file: FileRef


class ProbeLens(Frozen):
    kind: Literal["probe"] = "probe"
    file: FileRef
    pool: Literal["mean", "max"] = "mean"


class FeaturesLens(Frozen):
    kind: Literal["features"] = "features"
    latents: tuple[int, ...]
    pool: Literal["mean", "max"] = "max"


Lens = Annotated[Union[MetricLens, LexiconLens, ProbeLens, FeaturesLens], Field(discriminator="kind")]


class Concept(Frozen):
    name: str
    lens: Lens
    origin: Literal["policy", "library"]
    description: str = ""
    span: Span | None = None  # the definition's position; None for a library concept

    def lens_text(self) -> str:
        """A short description of the lens for tables: ``metric length``, ``probe sycophancy.jsonl``,
        ``features 1203,877,4410``."""
        lens = self.lens
        if lens.kind == "metric":
            return f"metric {lens.metric}"
        if lens.kind == "features":
            return "features " + ",".join(map(str, lens.latents[:4])) + (",…" if len(lens.latents) > 4 else "")
        return f"{lens.kind} {lens.file.path.rsplit('/', 1)[-1]}"


# ---------------------------------------------------------------------------------------------
# Interventions: one factor realised by one protocol. A tagged union on ``protocol``.

Action = Literal["block", "dampen", "keep", "amplify", "reverse"]


class _Intervention(Frozen):
    concept: str
    lens: Literal["metric", "lexicon", "probe", "features"]
    action: Action
    factor: float  # k: block 0, dampen f, keep 1, amplify f, reverse -1
    span: Span


class DataIntervention(_Intervention):
    protocol: Literal["data"] = "data"


class FilterIntervention(_Intervention):
    protocol: Literal["filter"] = "filter"


class RelabelIntervention(_Intervention):
    protocol: Literal["relabel"] = "relabel"


class InoculationIntervention(_Intervention):
    protocol: Literal["inoculation"] = "inoculation"
    text: str


class LossIntervention(_Intervention):
    protocol: Literal["loss"] = "loss"


class AblationIntervention(_Intervention):
    protocol: Literal["ablation"] = "ablation"


class SteeringIntervention(_Intervention):
    protocol: Literal["steering"] = "steering"
    strength: float


class PenaltyIntervention(_Intervention):
    protocol: Literal["penalty"] = "penalty"
    weight: float


Intervention = Annotated[
    Union[
        DataIntervention,
        FilterIntervention,
        RelabelIntervention,
        InoculationIntervention,
        LossIntervention,
        AblationIntervention,
        SteeringIntervention,
        PenaltyIntervention,
    ],
    Field(discriminator="protocol"),
]

PROTOCOL_KIND = {
    "data": "data",
    "filter": "data",
    "relabel": "data",
    "inoculation": "data",
    "loss": "loss",
    "penalty": "loss",
    "ablation": "activation",
    "steering": "activation",
}


class Keep(Frozen):
    """``keep concept x;``: seen and explicitly allowed (k = 1), no intervention."""

    concept: str
    span: Span


# ---------------------------------------------------------------------------------------------
# Expectations, checked by ``ethos plan``. A tagged union on ``kind``.

Comparison = Literal["<", "<=", ">", ">=", "==", "!="]


class ConceptExpectation(Frozen):
    kind: Literal["concept"] = "concept"
    concept: str
    metric: Literal["share", "alpha", "d", "q", "win_rate"]
    op: Comparison
    value: float
    phase: Literal["before", "after"] = "after"
    text: str
    span: Span


class PairsExpectation(Frozen):
    kind: Literal["pairs"] = "pairs"
    fate: Literal["kept", "reweighted", "relabelled", "excluded"]
    op: Comparison
    value: float  # a fraction of the usable pairs
    text: str
    span: Span


class EssExpectation(Frozen):
    kind: Literal["ess"] = "ess"
    op: Comparison
    value: float  # effective sample size as a fraction of the kept pairs
    text: str
    span: Span


Expectation = Annotated[
    Union[ConceptExpectation, PairsExpectation, EssExpectation], Field(discriminator="kind")
]


# ---------------------------------------------------------------------------------------------


class ModelBinding(Frozen):
    name: str
    layer: int | None = None  # None: the runtime's default layer for that model
    span: Span | None = None  # None when the policy names no model (the default)


class SaeBinding(Frozen):
    name: str
    span: Span | None = None


class Source(Frozen):
    path: str
    sha256: str


class Plan(Frozen):
    format_version: Literal["1"] = FORMAT_VERSION
    policy: str | None
    source: Source
    model: ModelBinding
    sae: SaeBinding
    concepts: tuple[Concept, ...]  # every concept a rule or expectation uses, sorted by name
    interventions: tuple[Intervention, ...]  # in source order
    keeps: tuple[Keep, ...]
    expectations: tuple[Expectation, ...]

    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(name)

    def factors(self) -> dict[str, float]:
        """The factor k of every concept that a rule names (keep gives 1)."""
        out = {k.concept: 1.0 for k in self.keeps}
        for i in self.interventions:
            out[i.concept] = i.factor
        return dict(sorted(out.items()))


def dump_plan(plan: Plan) -> str:
    """The canonical JSON text of a plan (stable key order, two-space indent, newline at end)."""
    return plan.model_dump_json(indent=2) + "\n"


def load_plan(text: str | bytes) -> Plan:
    """Read a plan's JSON, refusing a format version this ethos does not know."""
    import json

    data = json.loads(text)
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"plan format_version {version!r} is not supported (this ethos reads {FORMAT_VERSION!r})"
        )
    return Plan.model_validate(data)

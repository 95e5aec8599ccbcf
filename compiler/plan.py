"""The Plan: plain, frozen, versioned data that everything downstream reads.

A Plan holds no tensors and no callables. The runtime and the reports accept a ``Plan`` or its
JSON (``Plan.model_validate_json``), never the AST. ``dump_plan`` gives the canonical JSON text:
the same policy compiles to byte-identical output on every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def as_span(loc) -> Span:
    """A ``Span`` from the AST's ``Loc`` (or a Span), without validation: the compiler builds one
    per rule, and a 1 MB policy has tens of thousands."""
    if loc is None or isinstance(loc, Span):
        return loc
    return Span.model_construct(file=loc.file, line=loc.line, column=loc.column, end_line=loc.end_line,
                                end_column=loc.end_column)


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


LexiconMode = Literal["count", "presence", "density"]
LEXICON_MODES: tuple[str, ...] = ("count", "presence", "density")


class LexiconLens(Frozen):
    """Matches of the file's words and phrases in the reply, scored by ``mode``: ``count`` (the
    number of matches; the default), ``presence`` (1 if any matches, else 0) or ``density``
    (matches per 100 words). Density divides by the reply's length, so it manufactures a signal
    wherever chosen and rejected replies differ in length; count does not."""

    kind: Literal["lexicon"] = "lexicon"
    file: FileRef
    mode: LexiconMode = "count"


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

Action = Literal["block", "dampen", "keep", "amplify", "reverse", "encourage", "discourage"]
FACTOR_ACTIONS: tuple[str, ...] = ("block", "dampen", "keep", "amplify", "reverse")  # k known when compiling
DIRECTION_ACTIONS: dict[str, int] = {"encourage": 1, "discourage": -1}  # a target coefficient of this sign
Stage = Literal["data", "loss", "activation"]
LensKind = Literal["metric", "lexicon", "probe", "features"]

ALL_LENSES: tuple[str, ...] = ("metric", "lexicon", "probe", "features")
MODEL_LENSES: tuple[str, ...] = ("probe", "features")


@dataclass(frozen=True)
class ProtocolInfo:
    """What the language and the runtime know about one protocol: the one table every
    "which protocols shape data / act on activations" question reads.

    - ``stage``: where the protocol acts — on the pairs before training (``data``), on the loss
      (``loss``) or on the model's activations during training (``activation``).
    - ``shapes_data``: True when it changes the pairs' weights, labels or inclusion (data,
      filter, relabel). Inoculation acts at the data stage but edits prompts, not pairs.
    - ``argument``: the field of the intervention that holds the protocol's argument
      (``text``, ``strength``, ``weight``) or None.
    - ``in_training``: True when the trainer realises it during training (activation hooks or an
      added loss term: ablation, steering, penalty); False when ``ethos apply`` realises it in the
      data it writes (weights, labels, copies, prompts, margin offsets).
    - ``actions`` / ``lenses``: which actions it can realise and on which kinds of concept.
    """

    name: str
    stage: Stage
    shapes_data: bool
    argument: str | None = None
    actions: tuple[str, ...] = ()
    lenses: tuple[str, ...] = ALL_LENSES
    argument_help: str = ""
    in_training: bool = False


PROTOCOLS: dict[str, ProtocolInfo] = {
    p.name: p
    for p in (
        ProtocolInfo("data", "data", True, None, ("block", "dampen", "amplify", "reverse", "encourage", "discourage")),
        ProtocolInfo("filter", "data", True, None, ("block", "dampen", "amplify")),
        ProtocolInfo("relabel", "data", True, None, ("block", "reverse")),
        ProtocolInfo("inoculation", "data", False, "text", ("block", "dampen"),
                     argument_help='the instruction, e.g. via inoculation "You tend to agree with the user."'),
        ProtocolInfo("loss", "loss", False, None, ("block", "dampen", "amplify", "reverse", "encourage", "discourage")),
        ProtocolInfo("ablation", "activation", False, None, ("block", "dampen"), MODEL_LENSES, in_training=True),
        ProtocolInfo("steering", "activation", False, "strength", ("block", "dampen"), MODEL_LENSES,
                     argument_help="the steering strength, e.g. via steering 4.0", in_training=True),
        ProtocolInfo("penalty", "loss", False, "weight", ("block", "dampen"), MODEL_LENSES,
                     argument_help="the penalty weight, e.g. via penalty 0.1", in_training=True),
    )
}
# The protocol of a rule without ``via``: per-pair margin offsets (docs/protocols.md, "The default
# protocol"). A defaulted intervention records it (``default_protocol``), so the reports can say so.
DEFAULT_PROTOCOL = "loss"

# A derived view, kept while the runtime moves to PROTOCOLS: protocol -> stage.
PROTOCOL_KIND: dict[str, str] = {name: info.stage for name, info in PROTOCOLS.items()}


class _Intervention(Frozen):
    """One rule realised by one protocol.

    A factor action (block, dampen, keep, amplify, reverse) has its ``factor`` k: the concept's
    coefficient α becomes k·α. ``encourage``/``discourage`` name a direction instead: the
    coefficient becomes a target of sign ``direction`` (+1 more of the concept, −1 less) and size
    ``size`` (``by s``), or the data's own |α| when ``size`` is None. Their ``factor`` is
    None: k = target/α is known only once the data's α is (``factor_for``).
    ``scope`` is the topic a ``when topic`` rule is limited to (None: every pair).
    ``default_protocol`` is True when the rule named no protocol (no ``via``) and got
    ``DEFAULT_PROTOCOL``; it changes nothing in what the rule does."""

    rule_id: str  # stable, unique within a plan: see ``rule_id`` below
    concept: str
    lens: LensKind
    action: Action
    factor: float | None  # k: block 0, dampen f, keep 1, amplify f, reverse -1; None for a direction
    direction: Literal[1, -1] | None = None  # encourage +1, discourage -1; None for a factor action
    size: float | None = None  # |target α| for encourage/discourage (None: the data's |α|)
    scope: str | None = None  # the topic of a ``when topic`` rule
    default_protocol: bool = False  # the rule had no ``via``: its protocol is DEFAULT_PROTOCOL
    span: Span

    def target_for(self, alpha: float) -> float:
        """The coefficient this rule aims at, given the data's α: k·α, or for a direction
        ``direction·(size or |α|)``."""
        if self.direction is None:
            return self.factor * alpha
        return self.direction * (self.size if self.size is not None else abs(alpha))

    def factor_for(self, alpha: float) -> float:
        """The factor k that realises this rule given the data's α (k = target/α). For a
        direction with α = 0 there is no such factor: ``inf`` (with the target's sign)."""
        if self.direction is None:
            return self.factor
        target = self.target_for(alpha)
        if alpha == 0:
            return math.copysign(math.inf, target) if target else 1.0
        return target / alpha

    @property
    def in_training(self) -> bool:
        return self.info.in_training

    @property
    def info(self) -> ProtocolInfo:
        return PROTOCOLS[self.protocol]  # type: ignore[attr-defined]

    @property
    def stage(self) -> Stage:
        return self.info.stage

    @property
    def shapes_data(self) -> bool:
        return self.info.shapes_data

    @property
    def protocol_text(self) -> str:
        """The protocol as the reports name it: ``loss (default)`` for a rule without ``via``."""
        return self.protocol + (" (default)" if self.default_protocol else "")  # type: ignore[attr-defined]


def rule_id(concept: str, protocol: str, taken: set[str] | frozenset[str] = frozenset(),
            scope: str | None = None) -> str:
    """The rule id of an intervention: ``<concept>/<protocol>``, e.g. ``sycophancy/loss`` (also for
    a rule without ``via``: its protocol is ``DEFAULT_PROTOCOL``), and ``<concept>/<protocol>@<topic>``
    for a ``when topic`` rule, e.g. ``sycophancy/data@medical``.

    A plan holds at most one intervention per (concept, protocol, topic), so this is unique; should
    one ever repeat, the later ones get ``#2``, ``#3``, ... in source order. It depends only on the
    policy's meaning, not on line numbers, so reformatting or moving a rule keeps its id.
    """
    base = f"{concept}/{protocol}" + (f"@{scope}" if scope else "")
    rid, n = base, 1
    while rid in taken:
        n += 1
        rid = f"{base}#{n}"
    return rid


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


INTERVENTION_CLASSES: dict[str, type[_Intervention]] = {
    "data": DataIntervention,
    "filter": FilterIntervention,
    "relabel": RelabelIntervention,
    "inoculation": InoculationIntervention,
    "loss": LossIntervention,
    "ablation": AblationIntervention,
    "steering": SteeringIntervention,
    "penalty": PenaltyIntervention,
}

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


class Keep(Frozen):
    """``keep concept x;``: seen and explicitly allowed (k = 1), no intervention. With a scope,
    k = 1 for the pairs in that topic (overriding an unscoped rule for those pairs)."""

    concept: str
    scope: str | None = None
    span: Span


# ---------------------------------------------------------------------------------------------
# Topics: sets of pairs chosen by their prompt. A tagged union on ``kind``.

TOPIC_DEFAULT_THRESHOLD = {"lexicon": 0.0, "probe": 0.5}
MAX_CLUSTERS = 1000


class LexiconTopic(Frozen):
    """Pairs whose prompt has more than ``threshold`` matches of the file's words and phrases
    (the default, 0: at least one)."""

    kind: Literal["lexicon"] = "lexicon"
    name: str
    file: FileRef
    threshold: float = TOPIC_DEFAULT_THRESHOLD["lexicon"]
    span: Span | None = None


class ProbeTopic(Frozen):
    """Pairs whose prompt a probe, trained on the file's exemplars (``positive``: prompts in the
    topic, ``negative``: prompts outside it), scores above ``threshold`` (a probability; default 0.5)."""

    kind: Literal["probe"] = "probe"
    name: str
    file: FileRef
    threshold: float = TOPIC_DEFAULT_THRESHOLD["probe"]
    span: Span | None = None


class ColumnTopic(Frozen):
    """Pairs whose data column ``column`` compares to ``value`` by ``op``."""

    kind: Literal["column"] = "column"
    name: str
    column: str
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: str | float
    span: Span | None = None


class ClusterTopic(Frozen):
    """Pairs whose prompt falls in cluster ``index`` (0-based) of a seeded k-means with ``k``
    clusters over the model's pooled prompt activations (pinned in ethos.lock)."""

    kind: Literal["cluster"] = "cluster"
    name: str
    index: int
    k: int
    span: Span | None = None


Topic = Annotated[Union[LexiconTopic, ProbeTopic, ColumnTopic, ClusterTopic], Field(discriminator="kind")]


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
    topics: tuple[Topic, ...] = ()  # every topic the policy defines, in source order
    interventions: tuple[Intervention, ...]  # in source order
    keeps: tuple[Keep, ...]
    expectations: tuple[Expectation, ...]

    @model_validator(mode="before")
    @classmethod
    def _fill_rule_ids(cls, data):
        """A plan saved before rule ids existed: derive them exactly as the compiler does."""
        if isinstance(data, dict) and isinstance(data.get("interventions"), (list, tuple)):
            items = data["interventions"]
            if any(isinstance(i, dict) and "rule_id" not in i for i in items):
                taken: set[str] = set()
                filled = []
                for i in items:
                    if isinstance(i, dict) and "rule_id" not in i:
                        i = {"rule_id": rule_id(str(i.get("concept")), str(i.get("protocol")), taken,
                                                i.get("scope")), **i}
                    if isinstance(i, dict):
                        taken.add(i["rule_id"])
                    filled.append(i)
                data = {**data, "interventions": filled}
        return data

    @model_validator(mode="after")
    def _unique_rule_ids(self):
        ids = [i.rule_id for i in self.interventions]
        if len(set(ids)) != len(ids):
            dup = sorted({r for r in ids if ids.count(r) > 1})
            raise ValueError(f"rule ids are not unique: {', '.join(dup)}")
        return self

    def rule(self, rule_id: str):
        """The intervention with this ``rule_id``."""
        for i in self.interventions:
            if i.rule_id == rule_id:
                return i
        raise KeyError(rule_id)

    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(name)

    def topic(self, name: str):
        for t in self.topics:
            if t.name == name:
                return t
        raise KeyError(name)

    def factors(self, scope: str | None = None) -> dict[str, float]:
        """The factor k of every concept a factor rule names (keep gives 1), for the pairs outside
        every topic (``scope`` None) or for the pairs in topic ``scope`` (its own rules override
        the unscoped ones). Concepts under ``encourage``/``discourage`` are not here: their k
        depends on the data's α (``Intervention.factor_for``)."""
        out: dict[str, float] = {}
        for want in (None,) if scope is None else (None, scope):  # a topic's own rules win
            for k in self.keeps:
                if k.scope == want:
                    out[k.concept] = 1.0
            for i in self.interventions:
                if i.scope == want:
                    if i.factor is None:
                        out.pop(i.concept, None)
                    else:
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

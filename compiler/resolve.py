"""Resolve: names -> concept definitions (the policy file, then the concept library), files ->
content hashes, lens arguments -> validated lenses. Every problem is a diagnostic; nothing raises.

A relative file path is looked up next to the policy file first, then under the library root
(``specs/``), so ``concepts/x.jsonl`` finds the library's file; files.py checks every file a
policy names as data.
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import ast as A
from .errors import Diagnostic, Diagnostics, clip, did_you_mean
from .files import Found, Problem, allowed_roots, check_content, locate
from .names import DEFAULT_MODEL, DEFAULT_SAE, LIBRARY_ROOT, METRICS
from .plan import (
    LEXICON_MODES,
    MAX_CLUSTERS,
    TOPIC_DEFAULT_THRESHOLD,
    ClusterTopic,
    ColumnTopic,
    Concept,
    FeaturesLens,
    FileRef,
    LexiconLens,
    LexiconTopic,
    MetricLens,
    ModelBinding,
    ProbeLens,
    ProbeTopic,
    SaeBinding,
    Topic,
    as_span,
)

POOLS = ("mean", "max")


# ---------------------------------------------------------------------------------------------
# The concept library


PREFERENCES = ("less", "more")


@dataclass(frozen=True)
class Library:
    root: Path
    concepts: dict[str, Concept]
    # concept -> "less" or "more": the direction one usually wants (``prefer`` in library.toml),
    # for the concepts whose desirable direction does not depend on the data or the use
    prefer: dict[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def load_library(root: Path = LIBRARY_ROOT) -> Library:
    """The starter concept library: ``specs/concepts/library.toml``. A broken library is a bug in
    ethos, not in the user's policy, so it raises."""
    path = root / "concepts" / "library.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    concepts: dict[str, Concept] = {}
    prefer: dict[str, str] = {}
    for name, entry in sorted(data.items()):
        kind = entry["lens"]
        if "prefer" in entry:
            if entry["prefer"] not in PREFERENCES:
                raise ValueError(f"{path}: concept {name}: prefer is 'less' or 'more', not {entry['prefer']!r}")
            prefer[name] = entry["prefer"]
        if kind == "metric":
            if entry["metric"] not in METRICS:
                raise ValueError(f"{path}: concept {name}: unknown metric {entry['metric']!r}")
            lens = MetricLens(metric=entry["metric"])
        else:
            file_path = root / entry["path"]
            st = os.stat(file_path)
            content = check_content(str(file_path), kind, st.st_mtime_ns, st.st_size)
            if isinstance(content, Problem):
                raise ValueError(f"{path}: concept {name}: {entry['path']} {content.what}")
            ref = FileRef(path=entry["path"], root="library", sha256=content.sha256)
            if kind == "lexicon":
                lens = LexiconLens(file=ref, mode=entry.get("mode", "count"))
            elif kind == "probe":
                lens = ProbeLens(file=ref, pool=entry.get("pool", "mean"))
            else:
                raise ValueError(f"{path}: concept {name}: unknown lens {kind!r}")
        concepts[name] = Concept(name=name, lens=lens, origin="library", description=entry.get("description", ""))
    return Library(root=root, concepts=concepts, prefer=prefer)


# ---------------------------------------------------------------------------------------------


@dataclass
class Resolved:
    file: A.PolicyFile
    policy: str | None
    model: ModelBinding
    sae: SaeBinding
    concepts: dict[str, Concept]  # every concept the policy defines or uses
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    topics: dict[str, Topic] = field(default_factory=dict)  # every topic the policy defines, in order
    prefer: dict[str, str] = field(default_factory=dict)  # library concept -> "less" | "more"


def resolve(file: A.PolicyFile, library: Library | None = None, unknown_ok: frozenset[str] = frozenset()) -> Resolved:
    """``unknown_ok``: names not to report as unknown (after a syntax error, the words of the
    statements that did not parse: one of them may define the name)."""
    library = library or load_library()
    ctx = _Context(file.path, library.root, allowed_roots(file.path, library.root))
    diags = Diagnostics()
    singles: dict[type, A.Statement] = {}
    defined: dict[str, A.ConceptDef] = {}
    concepts: dict[str, Concept] = {}
    topic_defs: dict[str, A.TopicDef] = {}
    topics: dict[str, Topic] = {}

    for st in file.statements:
        if isinstance(st, (A.PolicyDecl, A.ModelDecl, A.SaeDecl)):
            first = singles.get(type(st))
            if first is not None:
                word = {A.PolicyDecl: "policy", A.ModelDecl: "model", A.SaeDecl: "sae"}[type(st)]
                diags.error("E202", f"a second '{word}' statement", st.span,
                            f"a policy has one '{word}' statement; the first is at "
                            f"{first.span.line}:{first.span.column}")
            else:
                singles[type(st)] = st
        elif isinstance(st, A.ConceptDef):
            name = st.name.text
            if name in defined:
                first = defined[name].span
                diags.error("E203", f"concept '{name}' is defined twice", st.name.span,
                            f"the first definition is at {first.line}:{first.column}; remove or rename one")
                continue
            defined[name] = st
            concept = _concept_from_def(st, ctx, diags)
            if concept is not None:
                concepts[name] = concept
        elif isinstance(st, A.TopicDef):
            name = st.name.text
            if name in topic_defs:
                first = topic_defs[name].span
                diags.error("E218", f"topic '{clip(name)}' is defined twice", st.name.span,
                            f"the first definition is at {first.line}:{first.column}; remove or rename one")
                continue
            topic_defs[name] = st
            topic = _topic_from_def(st, ctx, diags)
            if topic is not None:
                topics[name] = topic

    known = set(defined) | set(library.concepts)
    for st in file.statements:
        ref = st.concept if isinstance(st, (A.Rule, A.ExpectConcept)) else None
        if ref is None or ref.text in defined:
            continue
        if ref.text in library.concepts:
            concepts.setdefault(ref.text, library.concepts[ref.text])
            continue
        if ref.text in unknown_ok:
            continue
        if diags.full("E201"):
            diags.count("E201", "error")
            continue
        what = "an expectation names an undefined concept" if isinstance(st, A.ExpectConcept) else "unknown concept"
        hint = did_you_mean(ref.text, known) or (
            f"define it ('concept {clip(ref.text)} = metric length;') or use one from the library: "
            + ", ".join(sorted(library.concepts))
        )
        diags.error("E201", f"{what} '{clip(ref.text)}'", ref.span, hint)

    for st in file.statements:
        if not isinstance(st, A.Rule) or st.scope is None:
            continue
        ref = st.scope.topic
        if ref.text in topic_defs or ref.text in unknown_ok:
            continue
        if diags.full("E219"):
            diags.count("E219", "error")
            continue
        hint = did_you_mean(ref.text, topic_defs) or (
            f"define it first, e.g. 'topic {clip(ref.text)} = lexicon \"topics/{clip(ref.text)}.txt\";'"
            + (f"; topics defined here: {', '.join(list(topic_defs)[:12])}" if topic_defs else ""))
        diags.error("E219", f"unknown topic '{clip(ref.text)}'", ref.span, hint)

    model_decl = singles.get(A.ModelDecl)
    sae_decl = singles.get(A.SaeDecl)
    policy_decl = singles.get(A.PolicyDecl)
    model = ModelBinding(name=DEFAULT_MODEL)
    if model_decl is not None:
        layer = None
        if model_decl.layer is not None:
            if model_decl.layer.is_int and model_decl.layer.value >= 0:
                layer = int(model_decl.layer.value)
            else:
                diags.error("E204", f"layer must be a non-negative integer, not {model_decl.layer.text}",
                            model_decl.layer.span, "layers count from 0 (the first decoder block)")
        if not model_decl.name.value.strip():
            diags.error("E205", "the model name is empty", model_decl.name.span,
                        f"name a model folder or '{DEFAULT_MODEL}'")
        model = ModelBinding(name=model_decl.name.value, layer=layer, span=as_span(model_decl.span))
    sae = SaeBinding(name=DEFAULT_SAE)
    if sae_decl is not None:
        if not sae_decl.name.value.strip():
            diags.error("E205", "the SAE name is empty", sae_decl.name.span,
                        f"name an SAE folder or '{DEFAULT_SAE}'")
        sae = SaeBinding(name=sae_decl.name.value, span=as_span(sae_decl.span))
    policy = policy_decl.name.value if policy_decl is not None else None
    return Resolved(file, policy, model, sae, dict(sorted(concepts.items())), diags, topics,
                    {c: library.prefer[c] for c in concepts if c in library.prefer and c not in defined})


def _pool(node: A.Pool | None, default: str, diags: list[Diagnostic]) -> str:
    if node is None:
        return default
    mode = node.mode.text
    if mode not in POOLS:
        diags.error("E206", f"unknown pooling '{mode}'", node.mode.span,
                    did_you_mean(mode, POOLS) or "pool is 'mean' or 'max'")
        return default
    return mode


@dataclass
class _Context:
    """What resolving files needs: where the policy is, the library, the allowed roots, and the
    files already resolved in this policy (a name repeated 40,000 times is checked once)."""

    policy_path: str
    library_root: Path
    roots: tuple[str, ...]
    seen: dict = field(default_factory=dict)


def _find(node: A.Str, kind: str, ctx: _Context, diags: Diagnostics) -> Found | None:
    """A file a policy names, or None after a diagnostic (files.py lists them)."""
    written = node.value
    key = (written, kind)
    found = ctx.seen.get(key)
    if found is None:
        found = ctx.seen[key] = locate(written, ctx.policy_path, ctx.library_root, ctx.roots, kind)
    if isinstance(found, Found):
        return found
    if isinstance(found, Problem):
        diags.error(found.code, f"{kind} file '{clip(written)}' {found.what}", node.span, found.hint)
    else:
        diags.error("E209", f"{kind} file '{clip(written)}' not found", node.span, "looked in " + " and ".join(found))
    return None


def _file_ref(node: A.Str, kind: str, ctx: _Context, diags: Diagnostics) -> FileRef | None:
    found = _find(node, kind, ctx, diags)
    return None if found is None else FileRef(path=node.value, root=found.root, sha256=found.sha256)


def _topic_from_def(st: A.TopicDef, ctx: _Context, diags: Diagnostics) -> Topic | None:
    src, name, span = st.source, st.name.text, as_span(st.span)
    if isinstance(src, (A.TopicLexicon, A.TopicProbe)):
        kind = "lexicon" if isinstance(src, A.TopicLexicon) else "probe"
        found = _find(src.path, kind, ctx, diags)
        ref = None if found is None else FileRef(path=src.path.value, root=found.root, sha256=found.sha256)
        threshold = TOPIC_DEFAULT_THRESHOLD[kind]
        if found is not None and found.above is not None:
            threshold = found.above  # the lexicon's own default (its '# ethos: above N' line)
        if src.threshold is not None:
            v = src.threshold.value.value
            ok = math.isfinite(v) and (v >= 0 if kind == "lexicon" else 0 <= v < 1)
            if not ok:
                diags.error("E221", f"threshold {clip(src.threshold.value.text)} is out of range for a {kind} topic",
                            src.threshold.value.span,
                            "a lexicon topic counts matches in the prompt: 'above 0' is at least one match"
                            if kind == "lexicon" else "a probe topic's score is a probability: 0 <= t < 1")
                return None
            threshold = v
        if ref is None:
            return None
        cls = LexiconTopic if kind == "lexicon" else ProbeTopic
        return cls(name=name, file=ref, threshold=threshold, span=span)
    if isinstance(src, A.TopicColumn):
        column = src.column.value
        if not column.strip():
            diags.error("E222", "the column name is empty", src.column.span, "name a column of the data")
            return None
        op = src.op.text
        if isinstance(src.value, A.Str):
            if op not in ("==", "!="):
                diags.error("E222", f"a text value compares with == or != only, not {op}", src.op.span,
                            f"write 'column {src.column.raw} == {src.value.raw}'")
                return None
            value = src.value.value
        else:
            if not math.isfinite(src.value.value):
                diags.error("E222", f"{clip(src.value.text)} is not a finite number", src.value.span, None)
                return None
            value = src.value.value
        return ColumnTopic(name=name, column=column, op=op, value=value, span=span)
    index, k = src.index, src.k
    if not (k.is_int and 2 <= k.value <= MAX_CLUSTERS):
        diags.error("E220", f"the number of clusters must be an integer from 2 to {MAX_CLUSTERS}, not {clip(k.text)}",
                    k.span, "e.g. 'cluster 3 of 12'")
        return None
    if not (index.is_int and 0 <= index.value < k.value):
        diags.error("E220", f"cluster {clip(index.text)} does not exist among {int(k.value)}", index.span,
                    f"clusters are numbered from 0 to {int(k.value) - 1}")
        return None
    return ClusterTopic(name=name, index=int(index.value), k=int(k.value), span=span)


def _concept_from_def(st: A.ConceptDef, ctx: _Context, diags: Diagnostics) -> Concept | None:
    lens = st.lens
    name = st.name.text
    n_errors = diags.errors
    if isinstance(lens, A.MetricLens):
        metric = lens.metric.text
        if metric not in METRICS:
            diags.error("E207", f"unknown metric '{metric}'", lens.metric.span,
                        did_you_mean(metric, METRICS) or "metrics: " + ", ".join(METRICS))
            return None
        built = MetricLens(metric=metric)
    elif isinstance(lens, A.FeaturesLens):
        latents: list[int] = []
        for num in lens.latents:
            if not num.is_int or num.value < 0:
                diags.error("E208", f"latent ids are non-negative integers, not {num.text}", num.span,
                            "write the SAE latent indices, e.g. 'features 1203, 877'")
            else:
                latents.append(int(num.value))
        if len(set(latents)) != len(latents):
            diags.warning("W201", f"concept '{name}' lists a latent more than once", lens.span,
                          "each latent counts once")
        pool = _pool(lens.pool, "max", diags)
        if diags.errors > n_errors:
            return None
        built = FeaturesLens(latents=tuple(dict.fromkeys(latents)), pool=pool)
    else:  # lexicon or probe: a file
        kind = "lexicon" if isinstance(lens, A.LexiconLens) else "probe"
        ref = _file_ref(lens.path, kind, ctx, diags)
        if ref is None:
            return None
        if kind == "lexicon":
            mode = lens.mode.text if lens.mode is not None else "count"
            if mode not in LEXICON_MODES:
                diags.error("E223", f"unknown lexicon mode '{clip(mode)}'", lens.mode.span,
                            did_you_mean(mode, LEXICON_MODES) or "a lexicon counts matches: count (the default), "
                            "presence or density")
                return None
            built = LexiconLens(file=ref, mode=mode)
        else:
            built = ProbeLens(file=ref, pool=_pool(lens.pool, "mean", diags))
    return Concept(name=name, lens=built, origin="policy", span=as_span(st.span))

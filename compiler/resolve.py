"""Resolve: names -> concept definitions (the policy file, then the concept library), files ->
content hashes, lens arguments -> validated lenses. Every problem is a diagnostic; nothing raises.

A relative file path is looked up next to the policy file first, then under the library root
(``specs/``), so ``concepts/x.jsonl`` finds the library's file; files.py checks every file a
policy names as data.
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import ast as A
from .errors import Diagnostic, Diagnostics, clip, did_you_mean
from .files import Found, Problem, allowed_roots, check_content, locate
from .names import DEFAULT_MODEL, DEFAULT_SAE, LIBRARY_ROOT, METRICS
from .plan import (
    Concept,
    FeaturesLens,
    FileRef,
    LexiconLens,
    MetricLens,
    ModelBinding,
    ProbeLens,
    SaeBinding,
    as_span,
)

POOLS = ("mean", "max")


# ---------------------------------------------------------------------------------------------
# The concept library


@dataclass(frozen=True)
class Library:
    root: Path
    concepts: dict[str, Concept]


@functools.lru_cache(maxsize=4)
def load_library(root: Path = LIBRARY_ROOT) -> Library:
    """The starter concept library: ``specs/concepts/library.toml``. A broken library is a bug in
    ethos, not in the user's policy, so it raises."""
    path = root / "concepts" / "library.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    concepts: dict[str, Concept] = {}
    for name, entry in sorted(data.items()):
        kind = entry["lens"]
        if kind == "metric":
            if entry["metric"] not in METRICS:
                raise ValueError(f"{path}: concept {name}: unknown metric {entry['metric']!r}")
            lens = MetricLens(metric=entry["metric"])
        else:
            file_path = root / entry["path"]
            st = os.stat(file_path)
            sha = check_content(str(file_path), kind, st.st_mtime_ns, st.st_size)
            if isinstance(sha, Problem):
                raise ValueError(f"{path}: concept {name}: {entry['path']} {sha.what}")
            ref = FileRef(path=entry["path"], root="library", sha256=sha)
            if kind == "lexicon":
                lens = LexiconLens(file=ref)
            elif kind == "probe":
                lens = ProbeLens(file=ref, pool=entry.get("pool", "mean"))
            else:
                raise ValueError(f"{path}: concept {name}: unknown lens {kind!r}")
        concepts[name] = Concept(name=name, lens=lens, origin="library", description=entry.get("description", ""))
    return Library(root=root, concepts=concepts)


# ---------------------------------------------------------------------------------------------


@dataclass
class Resolved:
    file: A.PolicyFile
    policy: str | None
    model: ModelBinding
    sae: SaeBinding
    concepts: dict[str, Concept]  # every concept the policy defines or uses
    diagnostics: Diagnostics = field(default_factory=Diagnostics)


def resolve(file: A.PolicyFile, library: Library | None = None, unknown_ok: frozenset[str] = frozenset()) -> Resolved:
    """``unknown_ok``: names not to report as unknown (after a syntax error, the words of the
    statements that did not parse: one of them may define the name)."""
    library = library or load_library()
    ctx = _Context(file.path, library.root, allowed_roots(file.path, library.root))
    diags = Diagnostics()
    singles: dict[type, A.Statement] = {}
    defined: dict[str, A.ConceptDef] = {}
    concepts: dict[str, Concept] = {}

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
    return Resolved(file, policy, model, sae, dict(sorted(concepts.items())), diags)


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


def _file_ref(node: A.Str, kind: str, ctx: _Context, diags: Diagnostics) -> FileRef | None:
    """The FileRef of a file a policy names, or None after a diagnostic (files.py lists them)."""
    written = node.value
    key = (written, kind)
    found = ctx.seen.get(key)
    if found is None:
        found = ctx.seen[key] = locate(written, ctx.policy_path, ctx.library_root, ctx.roots, kind)
    if isinstance(found, Found):
        return FileRef(path=written, root=found.root, sha256=found.sha256)
    if isinstance(found, Problem):
        diags.error(found.code, f"{kind} file '{clip(written)}' {found.what}", node.span, found.hint)
    else:
        diags.error("E209", f"{kind} file '{clip(written)}' not found", node.span, "looked in " + " and ".join(found))
    return None


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
            built = LexiconLens(file=ref)
        else:
            built = ProbeLens(file=ref, pool=_pool(lens.pool, "mean", diags))
    return Concept(name=name, lens=built, origin="policy", span=as_span(st.span))

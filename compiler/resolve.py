"""Resolve: names -> concept definitions (the policy file, then the concept library), files ->
content hashes, lens arguments -> validated lenses. Every problem is a diagnostic; nothing raises.

A relative file path is looked up next to the policy file first, then under the library root
(``specs/``), so ``concepts/x.jsonl`` finds the library's file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import ast as A
from .errors import Diagnostic, did_you_mean, error, warning
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
            problem, sha = _check_file(str(file_path), kind)
            if problem:
                raise ValueError(f"{path}: concept {name}: {problem}")
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
# Files: content hash and a light check of the format


def _check_file(path: str, kind: str) -> tuple[str | None, str]:
    try:
        st = os.stat(path)
    except OSError:
        return "not found", ""
    return _check_file_cached(path, kind, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _check_file_cached(path: str, kind: str, _mtime: int, _size: int) -> tuple[str | None, str]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror})", ""
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8 text", sha
    if kind == "lexicon":
        entries = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return (None if entries else "has no entries (one word or phrase a line)"), sha
    if kind == "probe":
        pos = neg = 0
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return f"line {i} is not valid JSON", sha
            if not isinstance(row, dict):
                return f"line {i} is not a JSON object", sha
            pos += isinstance(row.get("positive"), str) and bool(row["positive"].strip())
            neg += isinstance(row.get("negative"), str) and bool(row["negative"].strip())
        if pos == 0 or neg == 0:
            return 'needs exemplar lines {"prompt": ..., "positive": ..., "negative": ...}', sha
        return None, sha
    return None, sha


def _locate(written: str, policy_path: str, library_root: Path) -> tuple[Path | None, str, list[str]]:
    """Find a file named in a policy: next to the policy first, then under the library root.
    Returns (full path or None, root, the folders looked in)."""
    p = Path(written)
    if p.is_absolute():
        candidates = [(p, "policy")]
    else:
        candidates = [(library_root / p, "library")]
        if policy_path and not policy_path.startswith("<"):
            candidates.insert(0, (Path(policy_path).parent / p, "policy"))
    for full, root in candidates:
        if full.is_file():
            return full, root, []
    return None, "", [
        "the concept library (specs/)" if root == "library" else str(full.parent) + os.sep for full, root in candidates
    ]


# ---------------------------------------------------------------------------------------------


@dataclass
class Resolved:
    file: A.PolicyFile
    policy: str | None
    model: ModelBinding
    sae: SaeBinding
    concepts: dict[str, Concept]  # every concept the policy defines or uses
    diagnostics: list[Diagnostic] = field(default_factory=list)


def resolve(file: A.PolicyFile, library: Library | None = None) -> Resolved:
    library = library or load_library()
    diags: list[Diagnostic] = []
    singles: dict[type, A.Statement] = {}
    defined: dict[str, A.ConceptDef] = {}
    concepts: dict[str, Concept] = {}

    for st in file.statements:
        if isinstance(st, (A.PolicyDecl, A.ModelDecl, A.SaeDecl)):
            first = singles.get(type(st))
            if first is not None:
                word = {A.PolicyDecl: "policy", A.ModelDecl: "model", A.SaeDecl: "sae"}[type(st)]
                diags.append(error("E202", f"a second '{word}' statement", st.span,
                                   f"a policy has one '{word}' statement; the first is at "
                                   f"{first.span.line}:{first.span.column}"))
            else:
                singles[type(st)] = st
        elif isinstance(st, A.ConceptDef):
            name = st.name.text
            if name in defined:
                first = defined[name].span
                diags.append(error("E203", f"concept '{name}' is defined twice", st.name.span,
                                   f"the first definition is at {first.line}:{first.column}; remove or rename one"))
                continue
            defined[name] = st
            concept = _concept_from_def(st, file.path, library.root, diags)
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
        what = "an expectation names an undefined concept" if isinstance(st, A.ExpectConcept) else "unknown concept"
        hint = did_you_mean(ref.text, known) or (
            f"define it ('concept {ref.text} = metric length;') or use one from the library: "
            + ", ".join(sorted(library.concepts))
        )
        diags.append(error("E201", f"{what} '{ref.text}'", ref.span, hint))

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
                diags.append(error("E204", f"layer must be a non-negative integer, not {model_decl.layer.text}",
                                   model_decl.layer.span, "layers count from 0 (the first decoder block)"))
        if not model_decl.name.value.strip():
            diags.append(error("E205", "the model name is empty", model_decl.name.span,
                               f"name a model folder or '{DEFAULT_MODEL}'"))
        model = ModelBinding(name=model_decl.name.value, layer=layer, span=model_decl.span)
    sae = SaeBinding(name=DEFAULT_SAE)
    if sae_decl is not None:
        if not sae_decl.name.value.strip():
            diags.append(error("E205", "the SAE name is empty", sae_decl.name.span,
                               f"name an SAE folder or '{DEFAULT_SAE}'"))
        sae = SaeBinding(name=sae_decl.name.value, span=sae_decl.span)
    policy = policy_decl.name.value if policy_decl is not None else None
    return Resolved(file, policy, model, sae, dict(sorted(concepts.items())), diags)


def _pool(node: A.Pool | None, default: str, diags: list[Diagnostic]) -> str:
    if node is None:
        return default
    mode = node.mode.text
    if mode not in POOLS:
        diags.append(error("E206", f"unknown pooling '{mode}'", node.mode.span,
                           did_you_mean(mode, POOLS) or "pool is 'mean' or 'max'"))
        return default
    return mode


def _concept_from_def(st: A.ConceptDef, policy_path: str, library_root: Path, diags: list[Diagnostic]) -> Concept | None:
    lens = st.lens
    name = st.name.text
    n_before = len(diags)
    if isinstance(lens, A.MetricLens):
        metric = lens.metric.text
        if metric not in METRICS:
            diags.append(error("E207", f"unknown metric '{metric}'", lens.metric.span,
                               did_you_mean(metric, METRICS) or "metrics: " + ", ".join(METRICS)))
            return None
        built = MetricLens(metric=metric)
    elif isinstance(lens, A.FeaturesLens):
        latents: list[int] = []
        for num in lens.latents:
            if not num.is_int or num.value < 0:
                diags.append(error("E208", f"latent ids are non-negative integers, not {num.text}", num.span,
                                   "write the SAE latent indices, e.g. 'features 1203, 877'"))
            else:
                latents.append(int(num.value))
        if len(set(latents)) != len(latents):
            diags.append(warning("W201", f"concept '{name}' lists a latent more than once", lens.span,
                                 "each latent counts once"))
        pool = _pool(lens.pool, "max", diags)
        if len(diags) > n_before and any(d.is_error for d in diags[n_before:]):
            return None
        built = FeaturesLens(latents=tuple(dict.fromkeys(latents)), pool=pool)
    else:  # lexicon or probe: a file
        kind = "lexicon" if isinstance(lens, A.LexiconLens) else "probe"
        written = lens.path.value
        full, root, looked = _locate(written, policy_path, library_root)
        if full is None:
            diags.append(error("E209", f"{kind} file '{written}' not found", lens.path.span,
                               "looked in " + " and ".join(looked)))
            return None
        problem, sha = _check_file(str(full), kind)
        if problem:
            diags.append(error("E210", f"{kind} file '{written}' {problem}", lens.path.span,
                               "see docs/language.md for the file formats"))
            return None
        ref = FileRef(path=written, root=root, sha256=sha)
        if kind == "lexicon":
            built = LexiconLens(file=ref)
        else:
            built = ProbeLens(file=ref, pool=_pool(lens.pool, "mean", diags))
    return Concept(name=name, lens=built, origin="policy", span=st.span)

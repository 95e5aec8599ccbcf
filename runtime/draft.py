"""The draft policy ``ethos audit --emit-policy`` writes: a decision line for every concept.

:func:`draft_policy` turns an audit document (``AuditResult.to_dict()``, as written to
``audit.json``) into policy text: every audited concept and every discovered candidate gets a
``keep`` line, preceded by a comment with its statistics (and, for candidates, the labels), in
the order the reports show them (:func:`ethos.runtime.documents.concepts_by_share`). It reads
only the document and, optionally, the compiled plan the audit ran (to define again the concepts
the policy defined itself); the caller compiles the text to check it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .documents import concepts_by_share
from .report.format import est_ci, pct, pval


def _comment(text: str) -> str:
    """One comment line's text: no newlines or control characters."""
    return "".join(ch if ch.isprintable() else " " for ch in " ".join(str(text).split()))


def _stats_line(c: Mapping[str, Any]) -> str:
    parts = [f"d {est_ci(c.get('d'), c.get('d_ci'))}", f"win {pct(c.get('win_rate'))}", f"q {pval(c.get('q'))}"]
    if "alpha" in c:
        parts += [f"alpha {est_ci(c.get('alpha'), c.get('alpha_ci'))}", f"share {pct(c.get('share'))}"]
    if c.get("alpha_with_length") is not None and c.get("alpha_with_length") != c.get("alpha"):
        parts.append(f"alpha with length {est_ci(c.get('alpha_with_length'), c.get('alpha_with_length_ci'))}")
    if c.get("length_explains") is not None:
        parts.append(f"length explains {pct(c.get('length_explains'))} of d")
    return ", ".join(parts)


def _heldout_line(cand: Mapping[str, Any]) -> str | None:
    h = cand.get("heldout")
    if not h:
        return None
    verdict = {True: "replicated", False: "NOT replicated", None: "not tested"}[cand.get("replicated")]
    return (f"held-out ({h.get('n')} pairs): d {est_ci(h.get('d'), h.get('d_ci'))}, win {pct(h.get('win_rate'))}, "
            f"q {pval(h.get('q'))}: {verdict}")


def _label_line(cand: Mapping[str, Any]) -> str | None:
    label = cand.get("label") or {}
    grams = label.get("ngrams") or []
    if not grams:
        return None
    top, bg = label.get("top_replies"), label.get("background_replies")
    ev = "; ".join(f"“{g['text']}” {g['top']}/{top} vs {g['background']}/{bg}" for g in grams[:3])
    head = f"label “{label['text']}”" if label.get("text") else "no label (no phrase stands out)"
    return f"{head}: in top {label.get('side')} replies vs random replies: {ev}"


def _lens_source(concept: Any, plan: Any, draft_dir: Path | None) -> str:
    lens = concept.lens
    if lens.kind == "metric":
        return f"metric {lens.metric}"
    if lens.kind == "features":
        return f"features {', '.join(map(str, lens.latents))} pool {lens.pool}"
    path = lens.file.path
    if lens.file.root == "policy" and plan.source.path and not plan.source.path.startswith("<"):
        full = (Path(plan.source.path).parent / path).resolve()
        path = str(full)
        if draft_dir is not None:
            try:
                rel = os.path.relpath(full, draft_dir.resolve())
            except ValueError:
                rel = None
            if rel is not None and not rel.startswith(".."):
                path = rel  # beside or below the draft: keep it relative; elsewhere: absolute
    text = f'{lens.kind} "{path}"'
    return text + (f" pool {lens.pool}" if lens.kind == "probe" else "")


def _topic_lines(doc: Mapping[str, Any]) -> list[str]:
    """``topic tJ = cluster J of K;`` for the topics ``ethos audit --topics K`` discovered, each with
    its size, label and per-concept d in a comment (empty without discovered topics)."""
    clusters = doc.get("topic_clusters")
    if not clusters:
        return []
    k = clusters["k"]
    found = {t["name"]: t for t in doc.get("topics") or []}
    lines = [f"# Discovered topics: seeded k-means of the prompts ({clusters.get('features')} features), seed "
             f"{clusters.get('seed')}, centroids sha256 {str(clusters.get('centroids_sha256'))[:12]}.",
             "# Scope a rule to one with `... when topic tJ;`. `ethos plan` clusters the model's prompt activations"
             + (" (these topics came from TF-IDF: the same numbers may name other clusters there)."
                if clusters.get("features") != "model" else ".")]
    for j in range(k):
        t = found.get(f"t{j}", {})
        cells = ", ".join(f"{c['name']} d {est_ci(c.get('d'), c.get('d_ci'))} q {pval(c.get('q'))}"
                          for c in t.get("concepts", []))
        lines.append(f"# t{j}: {t.get('n_pairs')} pairs, {_comment(t.get('label') or 'no distinctive words')}"
                     + (f"; {_comment(cells)}" if cells else ""))
        lines.append(f"topic t{j} = cluster {j} of {k};")
    return lines + [""]


def draft_policy(doc: Mapping[str, Any], plan: Any = None, *, draft_path: Path | None = None, name: str = "draft") -> str:
    """A policy with a decision line (``keep``) for every audited concept and every discovered
    candidate, each preceded by a comment with its statistics (and, for candidates, labels).
    Concepts the audited policy defined itself are defined again (file paths made relative to the
    draft's folder); candidates are defined as ``features`` concepts."""
    src = doc.get("source", {})
    lines = [
        f"# Draft policy written by `ethos audit` ({doc.get('pairs')} pairs of {_comment(src.get('data') or 'the data')},"
        f" seed {doc.get('settings', {}).get('seed')}).",
        "# Every concept has a decision line; change `keep` to block, dampen ... by f, amplify ... by f",
        "# or reverse (see docs/language.md), then run `ethos plan` for the dry run. A rule without `via`",
        "# uses the default protocol, loss (a margin offset per pair, applied by `ethos train`); add",
        "# `via data` for importance weights in the dataset, or another protocol (docs/protocols.md).",
        f'policy "{name}";',
        "",
    ]
    model = src.get("model")
    if plan is not None and plan.model.span is not None:
        layer = f" layer {plan.model.layer}" if plan.model.layer is not None else ""
        lines.append(f'model "{plan.model.name}"{layer};')
    elif model:
        layer = f" layer {src['layer']}" if src.get("layer") is not None else ""
        lines.append(f'model "{model}"{layer};')
    sae = src.get("sae") or (plan.sae.name if plan is not None and plan.sae.span is not None else None)
    if sae:
        lines.append(f'sae "{sae}";')
    if lines[-1] != "":
        lines.append("")
    lines += _topic_lines(doc)
    defined = {c.name: c for c in plan.concepts if c.origin == "policy"} if plan is not None else {}
    draft_dir = draft_path.parent if draft_path is not None else None
    for c in concepts_by_share(doc.get("concepts", [])):
        lines.append(f"# {c['name']}: {_stats_line(c)}")
        if c.get("note"):
            lines.append(f"#   note: {_comment(c['note'])}")
        if c["name"] in defined:
            lines.append(f"concept {c['name']} = {_lens_source(defined[c['name']], plan, draft_dir)};")
        lines.append(f"keep concept {c['name']};")
        lines.append("")
    cands = doc.get("candidates") or []
    if cands:
        disc = doc.get("discovery", {})
        lines.append(f"# Discovered: {len(cands)} candidate concepts from {disc.get('survivors')} latents at q < "
                     f"{disc.get('q_max')} ({disc.get('pool')}-pooled). Rename them; the labels are hints, not facts.")
        val = disc.get("validation")
        if val:
            lines.append(f"# Held-out validation: {val.get('heldout_pairs')} pairs set aside before discovery; "
                         f"{val.get('replicated')} of {len(cands)} candidates replicated there.")
        lines.append("")
    for cand in cands:
        pool = doc.get("discovery", {}).get("pool", "max")
        held = _heldout_line(cand)
        lines.append(f"# {cand['name']}: {_stats_line(cand)}" + (" (discovery pairs: selection-biased)" if held else ""))
        if held:
            lines.append(f"#   {held}")
        if _label_line(cand):
            lines.append(f"#   {_comment(_label_line(cand))}")
        for lid, lab in cand.get("labels", {}).items():
            toks = ", ".join(lab.get("tokens", [])[:8])
            lines.append(f"#   latent {lid}: promotes {_comment(toks) or '-'}")
            for s in lab.get("snippets", [])[:2]:
                lines.append(f"#     “{_comment(s)[:150]}”")
        lines.append(f"concept {cand['name']} = features {', '.join(map(str, cand['features']))} pool {pool};")
        lines.append(f"keep concept {cand['name']};")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

"""Planted-phrase discovery on the real default SAE: the audit issue's planted tests, full size.

Data: the first ``--pairs`` usable pairs of the embedded hh-rlhf helpful-base sample (real
replies). One pass of the default model + default SAE over every reply with the phrase appended
gives every latent of every reply twice: with the phrase, and as written (the max over the reply's
own tokens, which come first: the model is causal, so appending text does not change them; a
reply whose tokens change at the seam, or that the token limit cuts, is run again as written).
Each planting below then selects, per pair and side, which of the two versions it sees, so all
plantings share one forward pass; the pooled latents are cached under the ethos cache
(``bench/discovery/``), so a second run (or the CI tests after one another) skips the forward.
Each condition runs the audit exactly as ``ethos audit --concepts verbosity --discover`` does
(``audit_scores`` on the featurize table with the pooled latents; snippet, promoted-token and
contrastive n-gram labels; with ``--validate F`` a seeded fraction F of the pairs is held out
of discovery and every candidate is tested on it, as ``ethos audit --validate F``):

    planted   the phrase on 70% of chosen and 10% of rejected replies (--planted-seeds plantings):
              pass when one of the top 3 candidates has the phrase's tokens in its labels;
    control   the phrase on 40% / 40% (--control-seeds plantings): pass when no top-3 candidate
              has them;
    null      the first planted data with chosen and rejected swapped at random per pair
              (--null-seeds seeds): the fraction of runs with any discovered latent or concept at
              q < 0.05 (goal: under 5%).

A candidate "has the phrase's tokens in its labels" when one of its labelled members' top snippets
(the reply tokens around the latent's peak, in the pairs where it differs most in the direction of
its effect) peaks on a token of the phrase, or a member promotes ``hope`` or ``helps``. Its
readable label (``label.text``, a contrastive n-gram, which names it) "names the phrase" when it
contains ``hope`` or ``helps``. With ``--validate``: the top candidate's held-out q, and how many
candidates replicate (held-out q < 0.05, same sign) in the plantings and in the controls.

    .venv/bin/python bench/discovery.py --json /tmp/discovery.json           # full: 399 pairs
    .venv/bin/python bench/discovery.py --pairs 80 --null-seeds 20           # the CI test's size
    .venv/bin/python bench/discovery.py --validate 0.3 --null-seeds 0        # held-out validation

The tests ``tests/runtime/test_discovery_real.py`` and ``tests/runtime/test_discovery_validate.py``
run :func:`experiment` on a small subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PHRASE = " Hope this helps."
PROMOTED = re.compile(r"^(hope|helps)$", re.IGNORECASE)
NAMED = re.compile(r"\b(hope|helps)\b", re.IGNORECASE)
CACHE_VERSION = 1  # bump when what is cached (or how it is computed) changes


def fires_on_phrase(snippet: str, phrase: str = PHRASE) -> bool:
    """Whether a snippet's marked peak token («…», see ``token_window_finder``) lies inside an
    occurrence of the phrase (whitespace-normalised, as the snippets are)."""
    a, b = snippet.find("«"), snippet.find("»")
    if a < 0 or b < a:
        return False
    plain = snippet[:a] + snippet[a + 1:b] + snippet[b + 1:]
    lo, hi = a, b - 1  # the peak token's span in ``plain``
    target = " ".join(phrase.split())
    start = plain.find(target)
    while start >= 0:
        if start < hi and lo < start + len(target):
            return True
        start = plain.find(target, start + 1)
    return False


def labels_mention_phrase(candidate: Any) -> bool:
    """The candidate "has the phrase's tokens in its labels": one of its labelled members peaks
    on the phrase in a top snippet, or promotes one of its words."""
    return any(fires_on_phrase(s) for lab in candidate.labels.values() for s in lab["snippets"]) or \
        any(PROMOTED.match(t.strip()) for lab in candidate.labels.values() for t in lab["tokens"])


def label_names_phrase(candidate: Any) -> bool:
    """The candidate's readable label (its contrastive n-gram) contains ``hope`` or ``helps``."""
    text = (candidate.label or {}).get("text") or ""
    return bool(NAMED.search(text))


def _fingerprint(pairs: list[Any], phrase: str, sae: Any, runtime: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    params = next(runtime.encoder.model.parameters())
    h.update(json.dumps([CACHE_VERSION, phrase, runtime.fingerprint, runtime.layer, runtime.max_tokens,
                         str(params.dtype), str(params.device.type)]).encode())
    h.update(sae.W_dec.detach().float().cpu().numpy().tobytes())
    for p in pairs:
        h.update(json.dumps([repr(p.prompt), p.chosen, p.rejected]).encode())
    return h.hexdigest()[:24]


def _save(path: Any, acts: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    lengths = [len(t) for t in acts.tokens_chosen] + [len(t) for t in acts.tokens_rejected]
    flat = [i for t in acts.tokens_chosen + acts.tokens_rejected for i in t]
    np.savez(tmp, chosen=acts.chosen, rejected=acts.rejected, peak_chosen=acts.peak_chosen,
             peak_rejected=acts.peak_rejected, lengths=np.asarray(lengths, np.int64), tokens=np.asarray(flat, np.int64),
             meta=np.asarray([acts.d_sae, acts.layer]))
    os.replace(tmp, path)


def _load(path: Any, sae_name: str) -> Any:
    from ethos.runtime.audit import LatentActivations

    with np.load(path) as z:
        lengths, flat = z["lengths"], z["tokens"].tolist()
        ends = np.cumsum(lengths)
        toks = [flat[e - n: e] for e, n in zip(ends, lengths)]
        m = len(lengths) // 2
        return LatentActivations(z["chosen"], z["rejected"], z["peak_chosen"], z["peak_rejected"], toks[:m], toks[m:],
                                 int(z["meta"][0]), int(z["meta"][1]), sae_name, "max")


def doubled_activations(pairs: list[Any], phrase: str, sae_name: str, *, model: str, batch_size: int = 8,
                        progress: bool = False, cache: bool = True) -> tuple[Any, tuple[Any, Any, Any]]:
    """Max-pooled latents of the ``2n`` replies of ``pairs + pairs-with-the-phrase`` (rows ``i``
    and ``n + i``), with peaks and tokens, from one forward pass over the phrase versions (see the
    module's text); cached under ``<ethos cache>/bench/discovery/``. Returns the activations and
    ``(sae, model, tokenizer)``."""
    import torch

    from ethos.runtime.audit import LatentActivations
    from ethos.runtime.model import cache_root, length_batches, tokenize_pair
    from ethos.runtime.sae import load_sae, sae_runtime

    sae = load_sae(sae_name)
    runtime = sae_runtime(sae, model, batch_size=batch_size)
    tok = runtime.tokenizer
    folder = cache_root() / "bench" / "discovery"
    path = folder / f"{_fingerprint(pairs, phrase, sae, runtime)}.npz"
    if cache and path.is_file():
        return _load(path, sae_name), (sae, runtime.encoder.model, tok)
    n, d = len(pairs), sae.cfg.d_sae
    mx = [np.zeros((2 * n, d), np.float32) for _ in range(2)]
    pk = [np.zeros((2 * n, d), np.int32) for _ in range(2)]
    toks: list[list[list[int]]] = [[[] for _ in range(2 * n)] for _ in range(2)]
    plain = [tokenize_pair(tok, p.prompt, [p.chosen, p.rejected], max_tokens=runtime.max_tokens) for p in pairs]
    marked = [tokenize_pair(tok, p.prompt, [p.chosen + phrase, p.rejected + phrase], max_tokens=runtime.max_tokens)
              for p in pairs]
    rerun: list[int] = []  # pairs whose plain replies are not a prefix of the marked ones

    def pool(z: Any, row: int, side: int, ids: list[int]) -> None:
        toks[side][row] = ids
        if z.shape[0]:
            values, where = z.max(dim=0)
            mx[side][row], pk[side][row] = values.numpy(), where.numpy().astype(np.int32)

    def run(items: list[Any], visit: Any) -> None:
        for batch in length_batches(items, runtime.batch_size):
            with torch.inference_mode():
                acts = runtime.encoder.encode_batch([items[i] for i in batch])
                flat = [a for per in acts for a in per]
                lengths = [a.shape[0] for a in flat]
                z = sae.encode(torch.cat(flat).float()) if sum(lengths) else torch.zeros(0, d)
            parts = list(torch.split(z, lengths))
            for k, i in enumerate(batch):
                visit(i, parts[2 * k: 2 * k + 2])

    def visit_marked(i: int, zs: list[Any]) -> None:
        same = plain[i].prompt == marked[i].prompt
        for side, z in enumerate(zs):
            (a, b), (a2, b2) = plain[i].spans[side], marked[i].spans[side]
            pool(z, n + i, side, list(marked[i].continuations[side][a2:b2]))
            same = same and a == a2 and b <= b2 and plain[i].continuations[side][:b] == marked[i].continuations[side][:b]
        if not same:
            rerun.append(i)
            return
        for side, z in enumerate(zs):
            a, b = plain[i].spans[side]
            pool(z[: b - a], i, side, list(plain[i].continuations[side][a:b]))

    def visit_plain(k: int, zs: list[Any]) -> None:
        item = plain[rerun[k]]
        for side, z in enumerate(zs):
            a, b = item.spans[side]
            pool(z, rerun[k], side, list(item.continuations[side][a:b]))

    run(marked, visit_marked)
    if rerun:  # the seam changed a token, or the limit cut the marked reply: run these as written
        run([plain[i] for i in rerun], visit_plain)
    acts = LatentActivations(mx[0], mx[1], pk[0], pk[1], toks[0], toks[1], d, runtime.layer, sae_name, "max")
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
        _save(path, acts)
    return acts, (sae, runtime.encoder.model, tok)


def select(acts: Any, idx_c: np.ndarray, idx_r: np.ndarray) -> Any:
    """The latent activations of a planting: chosen rows ``idx_c`` and rejected rows ``idx_r`` of
    the doubled data (row i: the pair as written, row n + i: with the phrase on both sides)."""
    return dataclasses.replace(
        acts, chosen=acts.chosen[idx_c], rejected=acts.rejected[idx_r],
        peak_chosen=acts.peak_chosen[idx_c], peak_rejected=acts.peak_rejected[idx_r],
        tokens_chosen=[acts.tokens_chosen[i] for i in idx_c], tokens_rejected=[acts.tokens_rejected[i] for i in idx_r])


def experiment(
    n_pairs: int = 400,
    *,
    planted_seeds: int = 3,
    control_seeds: int = 3,
    null_seeds: int = 100,
    batch_size: int = 8,
    progress: bool = False,
    cache_dir: str | None = None,
    validate: float | None = None,
    latent_cache: bool = True,
    q_max: float = 0.05,
) -> dict[str, Any]:
    """The three conditions on the first ``n_pairs`` embedded pairs (see the module's text);
    ``cache_dir``: featurize's cache (default: ``$ETHOS_CACHE``); ``validate``: hold out that
    fraction of the pairs in the planted and control conditions (seeded with the planting's
    seed); ``latent_cache``: keep the pooled latents under the ethos cache; ``q_max``: discovery's
    FDR level in the planted and control conditions (the null runs keep 0.05)."""
    from ethos.compiler.compile import plan_for_concepts
    from ethos.compiler.resolve import load_library
    from ethos.runtime.audit import audit_scores, promoted_token_finder
    from ethos.runtime.data import load_pairs
    from ethos.runtime.featurize import featurize
    from ethos.runtime.labels import candidate_labeler, snippet_finder, token_window_finder
    from ethos.runtime.stats import holdout_split

    t0 = time.perf_counter()
    base = load_pairs(None, limit=n_pairs)
    pairs = base.pairs
    n = len(pairs)
    doubled = list(pairs) + [dataclasses.replace(p, chosen=p.chosen + PHRASE, rejected=p.rejected + PHRASE) for p in pairs]
    plan = plan_for_concepts(["verbosity"]).plan
    assert plan is not None
    acts, (sae, model, tokenizer) = doubled_activations(pairs, PHRASE, plan.sae.name, model=plan.model.name,
                                                        batch_size=batch_size, progress=progress, cache=latent_cache)
    t_forward = time.perf_counter() - t0
    # verbosity of every reply version, featurized once (as `ethos audit` does)
    scores = featurize(plan, dataclasses.replace(base, pairs=[dataclasses.replace(p, id=f"{p.id}#{k}")
                                                              for k, p in enumerate(doubled)]),
                        cache_dir=cache_dir, progress=False)
    tokens = promoted_token_finder(sae, model, tokenizer)
    library = set(load_library().concepts)

    def audit(on_c: np.ndarray, on_r: np.ndarray, swap: np.ndarray | None = None, labels: bool = True,
              seed: int = 0) -> Any:
        idx_c, idx_r = np.arange(n) + n * on_c, np.arange(n) + n * on_r
        lat_c, lat_r = acts.chosen[idx_c], acts.rejected[idx_r]
        v_c = scores["verbosity.chosen"].to_numpy()[idx_c]
        v_r = scores["verbosity.rejected"].to_numpy()[idx_r]
        if swap is not None:  # the sides exchanged per pair (the matrices only: a null run makes no labels)
            assert not labels
            lat_c, lat_r = np.where(swap[:, None], lat_r, lat_c), np.where(swap[:, None], lat_c, lat_r)
            v_c, v_r = np.where(swap, v_r, v_c), np.where(swap, v_c, v_r)
        table = pd.DataFrame({"id": [p.id for p in pairs], "verbosity.chosen": v_c, "verbosity.rejected": v_r})
        options: dict[str, Any] = {}
        held = holdout_split(n, validate, seed) if validate is not None and labels else None
        if labels:
            keep = np.flatnonzero(~held) if held is not None else np.arange(n)
            texts_c = [doubled[i].chosen for i in idx_c[keep]]
            texts_r = [doubled[i].rejected for i in idx_r[keep]]
            window = token_window_finder(select(acts, idx_c[keep], idx_r[keep]), tokenizer)
            options = {"snippets": snippet_finder(lat_c[keep], lat_r[keep], texts_c, texts_r, window=window),
                       "tokens": tokens, "reserved": library, "q_max": q_max,
                       "label": candidate_labeler(lat_c[keep], lat_r[keep], texts_c, texts_r, seed=seed)}
        return audit_scores(table, ["verbosity"], n_boot=200 if labels else 0, latents=(lat_c, lat_r),
                            discover_options=options, holdout=held, seed=seed)

    def planting(frac_c: float, frac_r: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        return (rng.random(n) < frac_c).astype(int), (rng.random(n) < frac_r).astype(int)

    def summary(res: Any) -> dict[str, Any]:
        top = res.candidates[:3]
        out = {
            "survivors": len(res.discovery.survivors), "tested": res.discovery.tested,
            "candidates": len(res.candidates),
            "phrase_rank": next((k for k, c in enumerate(res.candidates, 1) if labels_mention_phrase(c)), None),
            "top3_has_phrase": any(labels_mention_phrase(c) for c in top),
            "top_label": (res.candidates[0].label or {}).get("text") if res.candidates else None,
            "top_label_names_phrase": bool(res.candidates) and label_names_phrase(res.candidates[0]),
            "top3": [{"name": c.name, "features": c.features[:8], "d": round(c.d, 3), "q": c.q,
                      "label": {k: (c.label or {}).get(k) for k in ("text", "ngrams", "top_replies", "background_replies")},
                      "heldout": c.heldout, "replicated": c.replicated,
                      "labels": {k: {"snippets": v["snippets"][:2], "tokens": v["tokens"][:5]} for k, v in list(c.labels.items())[:2]}}
                     for c in top],
        }
        if res.discovery.validation is not None:
            reps = [c for c in res.candidates if c.replicated]
            out["validation"] = {
                **res.discovery.validation,
                "top_heldout": res.candidates[0].heldout if res.candidates else None,
                "top_replicated": res.candidates[0].replicated if res.candidates else None,
                "replicated_names": [c.name for c in reps],
                "replicated_candidates": [{"name": c.name, "label": (c.label or {}).get("text"), "d": c.d,
                                           "heldout_d": c.heldout["d"], "heldout_q": c.heldout["q"],
                                           "built_on_phrase": labels_mention_phrase(c)} for c in reps],
                "replicated_with_phrase": int(sum(labels_mention_phrase(c) or label_names_phrase(c) for c in reps)),
            }
        return out

    out: dict[str, Any] = {"pairs": n, "q_max": q_max, "d_sae": acts.d_sae, "layer": acts.layer, "phrase": PHRASE,
                           "forward_seconds": round(t_forward, 1), "planted": [], "control": []}
    for cond, frac_c, frac_r, first_seed, count in (("planted", 0.7, 0.1, 0, planted_seeds),
                                                    ("control", 0.4, 0.4, 100, control_seeds)):
        for s in range(first_seed, first_seed + count):
            on_c, on_r = planting(frac_c, frac_r, s)
            out[cond].append({"seed": s, "chosen_with_phrase": int(on_c.sum()), "rejected_with_phrase": int(on_r.sum()),
                              **summary(audit(on_c, on_r, seed=s))})
    on_c, on_r = planting(0.7, 0.1, 0)
    hits = []
    for s in range(null_seeds):
        swap = np.random.default_rng(1000 + s).random(n) < 0.5
        res = audit(on_c, on_r, swap=swap, labels=False)
        concept_hit = any(np.isfinite(c.q) and c.q < 0.05 for c in res.concepts)
        hits.append(bool(res.discovery.survivors) or concept_hit)
    out["null"] = {"seeds": null_seeds, "runs_with_any_q_below_0.05": int(sum(hits)),
                   "fraction": float(np.mean(hits)) if hits else None}
    out["goals"] = {
        "planted_top3_has_phrase": all(r["top3_has_phrase"] for r in out["planted"]),
        "planted_top_label_names_phrase": all(r["top_label_names_phrase"] for r in out["planted"]),
        "control_no_top3_phrase": not any(r["top3_has_phrase"] for r in out["control"]),
    }
    if null_seeds:
        out["goals"]["null_under_5_percent"] = out["null"]["fraction"] is not None and out["null"]["fraction"] < 0.05
    if validate is not None:
        out["validate"] = validate
        out["goals"]["planted_top_heldout_q_below_0.01"] = all(
            (r["validation"]["top_heldout"] or {}).get("q", 1.0) < 0.01 for r in out["planted"])
        out["goals"]["control_none_replicates"] = not any(r["validation"]["replicated"] for r in out["control"])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(res: dict[str, Any]) -> str:
    val = res.get("validate")
    lines = [f"{res['pairs']} real pairs, phrase {res['phrase']!r}, SAE layer {res['layer']} ({res['d_sae']} latents); "
             f"forward {res['forward_seconds']} s, all {res['seconds']} s"
             + (f"; {val:.0%} of the pairs held out of discovery." if val else "."), "",
             "| condition | seed | phrase on chosen / rejected | latents tested | survivors | candidates | "
             "first candidate with the phrase in its labels | top candidate's label |"
             + (" top: held-out d, q | replicated (with the phrase) |" if val else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if val else "")]
    for cond in ("planted", "control"):
        for r in res[cond]:
            row = (f"| {cond} | {r['seed']} | {r['chosen_with_phrase']} / {r['rejected_with_phrase']} | {r['tested']} | "
                   f"{r['survivors']} | {r['candidates']} | {r['phrase_rank'] or '—'} | {r['top_label'] or '—'} |")
            if val:
                v = r["validation"]
                top = v["top_heldout"] or {}
                d, q = top.get("d"), top.get("q")
                row += (f" {d:+.2f}, {q:.2g} |" if d is not None and q is not None else " — |")
                row += f" {v['replicated']} of {r['candidates']} ({v['replicated_with_phrase']}) |"
            lines.append(row)
    nl = res["null"]
    if nl["seeds"]:
        lines += ["", f"Null (sides swapped at random): {nl['runs_with_any_q_below_0.05']} of {nl['seeds']} runs with any "
                      f"latent or concept at q < 0.05."]
    lines += ["", f"Goals: {res['goals']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=400, help="the first N rows of the embedded sample")
    ap.add_argument("--planted-seeds", type=int, default=3)
    ap.add_argument("--control-seeds", type=int, default=3)
    ap.add_argument("--null-seeds", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--validate", type=float, metavar="F", help="hold out this fraction of the pairs of each planting")
    ap.add_argument("--q-max", type=float, default=0.05, help="discovery's FDR level in the plantings (default 0.05)")
    ap.add_argument("--no-cache", action="store_true", help="compute the latents again (and do not keep them)")
    ap.add_argument("--json", help="write the full result here")
    args = ap.parse_args(argv)
    res = experiment(args.pairs, planted_seeds=args.planted_seeds, control_seeds=args.control_seeds,
                     null_seeds=args.null_seeds, batch_size=args.batch_size, progress=sys.stderr.isatty(),
                     validate=args.validate, latent_cache=not args.no_cache, q_max=args.q_max)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print(markdown(res))
    return 0 if all(res["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Labels for discovered latents and candidates: what a person reads to know what they are.

- :func:`snippet_finder` (with :func:`token_window_finder`): a latent's top snippets, from the
  replies that carry its difference, the tokens around its peak marked «like this»;
- :func:`contrastive_ngrams` and :func:`candidate_labeler`: a candidate's readable label, the
  words and phrases that most distinguish the replies its latents mark from random replies.

:func:`contrastive_ngrams` scores every n-gram of 1–3 words by how much more often it occurs in a
set of *top* replies than in a *background* set: the log-odds ratio of its presence (a reply
contains it or not) with an informative Beta prior centred on its pooled presence rate, divided by
its standard error (the binary form of Monroe, Colaresi & Quinn's "log-odds with an informative
Dirichlet prior", 2008). :func:`candidate_labeler` picks, for a candidate (a set of latents), the
replies on the side of its effect in the pairs where the sum of its latents differs most, and a
seeded random sample of the other replies as background, and returns the best n-gram as the
label, with its evidence (counts in top and background replies). Pure Python and numpy: no I/O
(the promoted tokens of a latent need the model: :func:`ethos.runtime.audit.promoted_token_finder`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

N_MAX = 3  # longest n-gram, in words
MIN_COUNT = 3  # an n-gram must occur in at least this many top replies
PRIOR = 10.0  # strength of the Beta prior, in pseudo-replies
Z_LABEL = 2.0  # an n-gram names a candidate only with z at least this
SUBSUMED = 0.8  # a shorter n-gram inside a longer one found in ≥ 80% as many top replies is dropped
TOP = 20  # top replies per candidate
BACKGROUND = 800  # background replies sampled (at most)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_BREAK = re.compile(r"[.!?;:,()\[\]{}\"“”\n\r\t|*#`<>=/\\]+")
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just let me more most my myself no nor
not now of off on once only or other our ours ourselves out over own same she should so some such than that
the their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves i'm it's
you're that's there's don't can't i've i'll you'll we're they're isn't aren't doesn't didn't won't also
s t ll re ve d m
""".split())


@dataclass
class NGram:
    """One n-gram's evidence: in how many top and background replies it occurs, its log-odds
    ratio (top vs background, with the prior) and that divided by its standard error (``z``)."""

    text: str
    top: int
    background: int
    log_odds: float
    z: float


def ngrams(text: str, n_max: int = N_MAX) -> set[str]:
    """The distinct n-grams (1 to ``n_max`` lower-case words) of a text, not across punctuation,
    leaving out those made only of stop words."""
    out: set[str] = set()
    for segment in _BREAK.split(text.lower()):
        words = _WORD.findall(segment)
        for n in range(1, n_max + 1):
            for i in range(len(words) - n + 1):
                gram = words[i: i + n]
                if not all(w in STOPWORDS for w in gram):
                    out.add(" ".join(gram))
    return out


def contrastive_ngrams(
    top: Sequence[set[str]] | Sequence[str],
    background: Sequence[set[str]] | Sequence[str],
    *,
    min_count: int = MIN_COUNT,
    prior: float = PRIOR,
    k: int = 5,
) -> list[NGram]:
    """The n-grams that most distinguish the ``top`` replies from the ``background`` replies
    (texts, or their :func:`ngrams` sets), best first, at most ``k``.

    For an n-gram in y_T of N_T top and y_B of N_B background replies, with p₀ = (y_T + y_B) /
    (N_T + N_B) and the prior a = prior·p₀, b = prior·(1 − p₀):
    δ = log((y_T + a)/(N_T − y_T + b)) − log((y_B + a)/(N_B − y_B + b)),
    σ² = 1/(y_T + a) + 1/(N_T − y_T + b) + 1/(y_B + a) + 1/(N_B − y_B + b), z = δ/σ.
    Only n-grams in at least ``min_count`` top replies and with δ > 0 count; a shorter n-gram
    inside a longer one that occurs in at least 80% as many top replies is dropped (the phrase
    stands for its words)."""
    top_sets = [t if isinstance(t, (set, frozenset)) else ngrams(t) for t in top]
    bg_sets = [b if isinstance(b, (set, frozenset)) else ngrams(b) for b in background]
    return _score(Counter(g for s in top_sets for g in s), len(top_sets),
                  Counter(g for s in bg_sets for g in s), len(bg_sets), min_count=min_count, prior=prior, k=k)


def _score(top: Counter[str], n_top: int, bg: Counter[str], n_bg: int, *, min_count: int, prior: float,
           k: int) -> list[NGram]:
    if n_top == 0 or n_bg == 0:
        return []
    scored: dict[str, NGram] = {}
    for gram, yt in top.items():
        if yt < min_count:
            continue
        yb = bg.get(gram, 0)
        if yt + yb >= n_top + n_bg:  # in every reply: it distinguishes nothing
            continue
        p0 = (yt + yb) / (n_top + n_bg)
        a, b = prior * p0, prior * (1.0 - p0)
        delta = math.log((yt + a) / (n_top - yt + b)) - math.log((yb + a) / (n_bg - yb + b))
        if delta <= 0:
            continue
        var = 1 / (yt + a) + 1 / (n_top - yt + b) + 1 / (yb + a) + 1 / (n_bg - yb + b)
        scored[gram] = NGram(gram, yt, yb, delta, delta / math.sqrt(var))
    subsumed: set[str] = set()
    for h, got in scored.items():
        words = h.split()
        for n in range(1, len(words)):
            for i in range(len(words) - n + 1):
                s = " ".join(words[i: i + n])
                if s in scored and got.top >= SUBSUMED * scored[s].top:
                    subsumed.add(s)
    kept = [g for g in scored if g not in subsumed]
    return sorted((scored[g] for g in kept), key=lambda x: (-x.z, -x.top, x.text))[:k]


def candidate_labeler(
    chosen: np.ndarray,
    rejected: np.ndarray,
    texts_chosen: Sequence[str],
    texts_rejected: Sequence[str],
    *,
    top: int = TOP,
    background: int = BACKGROUND,
    seed: int = 0,
    z_min: float = Z_LABEL,
    min_count: int = MIN_COUNT,
) -> Callable[[Sequence[int]], dict[str, Any]]:
    """A labeler for discovery: ``members (latent ids) -> label``. The candidate's score is the
    sum of its latents (as the features lens scores it); its top replies are those on the side of
    its effect (chosen when its mean Δ ≥ 0) in the ``top`` pairs where Δ of that score is largest
    in that direction (and > 0); the background is a seeded random sample of at most
    ``background`` of all replies (chosen and rejected), less the top replies. The label is the
    best contrastive n-gram when its z ≥ ``z_min`` (else ``text`` is None):
    ``{"text", "ngrams": [NGram...], "side", "top_replies", "background_replies"}``."""
    n = len(texts_chosen)
    if len(texts_rejected) != n or chosen.shape[0] != n or rejected.shape[0] != n:
        raise ValueError("the latent matrices and the texts must have one row per pair")
    rng = np.random.default_rng(seed)
    everyone = [(0, i) for i in range(n)] + [(1, i) for i in range(n)]
    sample = [everyone[j] for j in sorted(rng.permutation(len(everyone))[:background])]
    memo: dict[tuple[int, int], set[str]] = {}

    def grams(side: int, i: int) -> set[str]:
        if (side, i) not in memo:
            memo[(side, i)] = ngrams((texts_chosen if side == 0 else texts_rejected)[i])
        return memo[(side, i)]

    bg_all = Counter(g for side, i in sample for g in grams(side, i))

    def label(members: Sequence[int]) -> dict[str, Any]:
        cols = list(members)
        delta = chosen[:, cols].sum(axis=1, dtype=np.float64) - rejected[:, cols].sum(axis=1, dtype=np.float64)
        side = 0 if delta.mean() >= 0 else 1
        contrast = delta if side == 0 else -delta
        order = np.argsort(-contrast, kind="stable")[:top]
        picked = [(side, int(i)) for i in order if contrast[i] > 0]
        top_counts = Counter(g for s, i in picked for g in grams(s, i))
        bg = bg_all.copy()
        in_sample = set(sample)
        dropped = [key for key in picked if key in in_sample]
        for key in dropped:
            bg.subtract(grams(*key))
        best = _score(top_counts, len(picked), bg, len(sample) - len(dropped), min_count=min_count, prior=PRIOR, k=5)
        text = best[0].text if best and best[0].z >= z_min else None
        return {
            "text": text,
            "ngrams": [asdict(g) for g in best],
            "side": "chosen" if side == 0 else "rejected",
            "top_replies": len(picked),
            "background_replies": len(sample) - len(dropped),
        }

    return label


# ---------------------------------------------------------------------------------------------
# Snippets of single latents


def snippet_finder(
    chosen: np.ndarray,
    rejected: np.ndarray,
    texts_chosen: Sequence[str],
    texts_rejected: Sequence[str],
    *,
    k: int = 3,
    width: int = 160,
    window: Callable[[int, int, int], str | None] | None = None,
) -> Callable[[int], list[str]]:
    """A top-snippet finder that shows what drives a latent's *difference*: for a latent whose
    mean Δ (chosen − rejected) is ≥ 0, the chosen replies of the ``k`` pairs with the largest
    positive Δ; otherwise the rejected replies of the pairs with the largest negative Δ. Each is
    ``window(side, pair, latent)`` (side 0 chosen, 1 rejected; e.g. the tokens around the
    latent's peak) or else the reply's first ``width`` characters. (The replies where a latent
    fires most are often not where it separates the sides: a latent for sentence ends peaks on
    many replies, but differs only where a planted sentence adds one.)"""

    def find(latent: int) -> list[str]:
        delta = chosen[:, latent].astype(float) - rejected[:, latent].astype(float)
        side = 0 if delta.mean() >= 0 else 1
        contrast = delta if side == 0 else -delta
        top = np.argsort(-contrast, kind="stable")[:k]
        out = []
        for i in top:
            if not contrast[i] > 0:
                break
            text = window(side, int(i), latent) if window is not None else None
            if text is None:
                text = (texts_chosen if side == 0 else texts_rejected)[i]
                text = " ".join(text.split())
                text = text if len(text) <= width else text[: width - 1] + "…"
            out.append(text)
        return out

    return find


def token_window_finder(acts: Any, tokenizer: Any, *, before: int = 12, after: int = 4) -> Callable[[int, int, int], str]:
    """Windows of reply tokens around a latent's peak, the peak token marked «like this».
    ``acts``: an :class:`ethos.runtime.audit.LatentActivations` (peaks and the replies' tokens)."""

    def window(side: int, i: int, latent: int) -> str:
        ids = (acts.tokens_chosen if side == 0 else acts.tokens_rejected)[i]
        peak = int((acts.peak_chosen if side == 0 else acts.peak_rejected)[i, latent])
        if not ids:
            return ""
        peak = min(peak, len(ids) - 1)
        head = tokenizer.decode(ids[max(0, peak - before): peak])
        mid = tokenizer.decode(ids[peak: peak + 1])
        tail = tokenizer.decode(ids[peak + 1: peak + 1 + after])
        text = ("…" if peak > before else "") + head + "«" + mid + "»" + tail + ("…" if peak + 1 + after < len(ids) else "")
        return " ".join(text.split())

    return window

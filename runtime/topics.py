"""Topics: sets of pairs chosen by their **prompt**, and the topic × concept table.

A pair's prompt is every turn before the final reply (what the chosen and the rejected reply
share); its text here is the turns' contents joined by newlines. A topic definition of the
compiled plan (:mod:`ethos.compiler.plan`: ``LexiconTopic``, ``ProbeTopic``, ``ColumnTopic``,
``ClusterTopic``) is scored on it:

- **lexicon**: the number of matches of the file's words and phrases in the prompt (the lexicon
  lens's matcher, :func:`ethos.runtime.lenses.lexicon.compile_lexicon`); in the topic when above
  the definition's threshold (default 0: at least one match);
- **column**: the data row's column (kept in :attr:`ethos.runtime.data.Pair.meta`) compared to the
  value (text for ``==``/``!=``; a number for any comparison); a pair without the column is not in
  the topic, and a column that no pair has is an error;
- **probe**: the prompt's pooled activation (mean of the residual stream over the rendered
  prompt's tokens at the plan's layer) projected on the unit difference of means of the file's
  ``positive`` and ``negative`` prompts, turned into a probability by a one-dimensional logistic
  fit on the exemplars' projections; in the topic when above the threshold (default 0.5);
- **cluster**: cluster ``index`` of a seeded k-means with ``k`` clusters (k-means++, the best of
  a few restarts) over the prompts' features: the pooled prompt activations of the model
  (``features="model"``, what the language specifies) or, without a model, L2-normalised TF-IDF
  of the prompts' words (``features="tfidf"``). The clustering is identified by the sha256 of
  its centroids (float32, rounded to 6 decimals) for ethos.lock, and each cluster gets a readable
  label: its most distinctive prompt words (mean TF-IDF inside minus outside).

:func:`assign_topics` gives the membership masks; :func:`topic_sets` the masks with scores, labels
and cluster hashes; :func:`discover_topics` k discovered clusters (a partition of the pairs);
:func:`topic_concept_table` per (topic, concept) cell n, mean Δ, Cohen's d with its bootstrap CI,
the sign test's p and BH q over every cell, split-half stability and α of the joint
Bradley–Terry fit within the topic — through :mod:`ethos.runtime.stats`, on the z of the whole
data's scale so that cells are comparable.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ethos.compiler.plan import ClusterTopic, ColumnTopic, LexiconTopic, Plan, ProbeTopic

from .documents import clean
from .errors import EthosError

CLUSTER_FEATURES = ("model", "tfidf")
N_INIT = 4  # k-means restarts (the lowest inertia wins)
MAX_ITER = 100
MAX_VOCAB = 5000  # TF-IDF vocabulary: the most frequent words (document frequency ≥ 2)
LABEL_WORDS = 3  # words in a discovered cluster's label

_WORD = re.compile(r"[a-z0-9]+")  # "car's" gives "car" (and "s", dropped: one letter)
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


class TopicError(EthosError):
    """A topic cannot be scored as defined (a column no pair has, too few prompts to cluster, ...)."""


def prompt_text(pair: Any) -> str:
    """The text of a pair's prompt: its turns' contents joined by newlines."""
    return "\n".join(m.content for m in pair.prompt)


# ---------------------------------------------------------------------------------------------
# Scores of each kind of definition


def lexicon_scores(pattern: re.Pattern[str], prompts: Sequence[str]) -> np.ndarray:
    """Matches of a compiled lexicon in each prompt."""
    return np.array([len(pattern.findall(p)) for p in prompts], dtype=float)


def column_member(pairs: Sequence[Any], column: str, op: str, value: str | float, *, topic: str = "") -> np.ndarray:
    """Which pairs' data column ``column`` compares to ``value`` by ``op`` (a missing or
    non-numeric value is not in the topic). Raises :class:`TopicError` when no pair has the column."""
    if not any(column in p.meta for p in pairs):
        seen = sorted({k for p in pairs for k in p.meta})
        raise TopicError(f"topic {topic!r}: the data has no column {column!r} "
                         f"(columns kept beside prompt and replies: {', '.join(seen) if seen else 'none'})")
    cmp = _OPS[op]
    out = np.zeros(len(pairs), dtype=bool)
    for i, p in enumerate(pairs):
        if column not in p.meta or p.meta[column] is None:
            continue
        x = p.meta[column]
        if isinstance(value, str):
            out[i] = cmp(str(x), value)
        else:
            try:
                xf = float(x)
            except (TypeError, ValueError):
                continue
            out[i] = math.isfinite(xf) and cmp(xf, float(value))
    return out


def prompt_activations(runtime: Any, prompts: Sequence[Sequence[Any]], *, progress: bool = True) -> np.ndarray:
    """(n, d_model) float32: each prompt rendered by the chat template (with the generation
    prompt), run to the runtime's layer, its residual stream averaged over the prompt's tokens
    (the first token left out when there are others: its activation is an attention sink's).
    Progress (``ethos.runtime.progress``) as the stage "topic prompts"."""
    import torch

    from .device import to_numpy
    from .model import length_batches, tokenize_pair
    from .progress import stage

    enc = runtime.encoder
    items = [tokenize_pair(runtime.tokenizer, [_message(m) for m in p], [""], max_tokens=runtime.max_tokens)
             for p in prompts]
    out = np.zeros((len(items), enc.d_model), dtype=np.float32)
    with stage("topic prompts", total=len(items), unit="prompts", enabled=progress) as bar:
        for batch in length_batches(items, runtime.batch_size, share_prompt=False):
            ids, mask = enc.pad([items[i].prompt for i in batch])
            with torch.inference_mode():
                h = enc.hidden(ids, mask).float()
                m = mask.to(h.dtype)
                if m.shape[1] > 1:  # leave out the first token (BOS / attention sink: huge norm, same for every prompt)
                    m[:, 0] = torch.where(m.sum(dim=1) > 1, torch.zeros_like(m[:, 0]), m[:, 0])
                m = m[:, :, None]
                pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            out[batch] = to_numpy(pooled, "<f4")
            bar.advance(len(batch))
    return out


def _message(m: Any) -> dict[str, str]:
    return m if isinstance(m, dict) else {"role": m.role, "content": m.content}


def probe_probabilities(runtime: Any, positives: Sequence[str], negatives: Sequence[str],
                        prompts: Sequence[Sequence[Any]]) -> np.ndarray:
    """P(in the topic) of each prompt: the projection of its pooled activation on the unit
    difference of means (positive − negative exemplar prompts), through a 1-D logistic fit
    on the exemplars' projections (slope and intercept by Newton's method, ridge 1e-3)."""
    ex = prompt_activations(runtime, [[{"role": "user", "content": t}] for t in [*positives, *negatives]])
    pos, neg = ex[: len(positives)].astype(float), ex[len(positives):].astype(float)
    diff = pos.mean(axis=0) - neg.mean(axis=0)
    norm = float(np.linalg.norm(diff))
    if not math.isfinite(norm) or norm == 0.0:
        raise TopicError("the probe's positive and negative prompts give the same mean activation")
    direction = diff / norm
    x = np.concatenate([pos @ direction, neg @ direction])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    centre, spread = float(x.mean()), float(x.std()) or 1.0
    xs = (x - centre) / spread
    a, b = _logistic_1d(xs, y)
    proj = (prompt_activations(runtime, prompts).astype(float) @ direction - centre) / spread
    return 1.0 / (1.0 + np.exp(-(a * proj + b)))


def _logistic_1d(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """Slope and intercept of P(y=1) = σ(a·x + b) (a small ridge keeps separable exemplars finite)."""
    theta = np.zeros(2)
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        grad = design.T @ (y - p) - ridge * np.array([theta[0], 0.0])
        hess = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.diag([1.0, 1e-9])
        step = np.linalg.solve(hess, grad)
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


# ---------------------------------------------------------------------------------------------
# Discovered clusters


def tfidf(texts: Sequence[str], *, max_vocab: int = MAX_VOCAB) -> tuple[np.ndarray, list[str]]:
    """(n, v) L2-normalised TF-IDF (log-scaled counts, smoothed idf) of the texts' lower-case
    words without stopwords, over the words in at least 2 texts (at most ``max_vocab``, most
    frequent first), and the vocabulary."""
    from .labels import STOPWORDS

    docs = [[w for w in _WORD.findall(t.lower()) if w not in STOPWORDS and len(w) > 1] for t in texts]
    df: dict[str, int] = {}
    for d in docs:
        for w in set(d):
            df[w] = df.get(w, 0) + 1
    vocab = sorted((w for w, c in df.items() if c >= 2), key=lambda w: (-df[w], w))[:max_vocab]
    index = {w: j for j, w in enumerate(vocab)}
    n = len(docs)
    m = np.zeros((n, len(vocab)))
    for i, d in enumerate(docs):
        for w in d:
            j = index.get(w)
            if j is not None:
                m[i, j] += 1.0
    idf = np.log((1.0 + n) / (1.0 + np.array([df[w] for w in vocab], dtype=float))) + 1.0
    m = np.log1p(m) * idf[None, :]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0), vocab


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = N_INIT, max_iter: int = MAX_ITER
           ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means (k-means++ starts, Lloyd iterations, best of ``n_init``): ``(assignment
    (n,) int, centroids (k, d))``. An emptied cluster restarts at the point farthest from its centroid."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    sq = (x * x).sum(axis=1)
    for _ in range(n_init):
        centres = [x[rng.integers(n)]]
        d2 = ((x - centres[0]) ** 2).sum(axis=1)
        for _ in range(1, k):
            total = d2.sum()
            j = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
            centres.append(x[j])
            d2 = np.minimum(d2, ((x - x[j]) ** 2).sum(axis=1))
        c = np.array(centres, dtype=float)
        assign = np.full(n, -1)
        for _ in range(max_iter):
            dist = sq[:, None] - 2 * x @ c.T + (c * c).sum(axis=1)[None, :]
            new = dist.argmin(axis=1)
            for j in range(k):
                if not (new == j).any():  # an empty cluster takes the worst-fitted point
                    far = int(dist[np.arange(n), new].argmax())
                    new[far] = j
            if np.array_equal(new, assign):
                break
            assign = new
            c = np.stack([x[assign == j].mean(axis=0) for j in range(k)])
        inertia = float(((x - c[assign]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, assign.copy(), c.copy())
    assert best is not None
    # number clusters by their first pair so the numbering does not depend on the restarts
    order = list(dict.fromkeys(best[1].tolist()))
    order += [j for j in range(k) if j not in order]
    remap = np.empty(k, dtype=int)
    remap[order] = np.arange(k)
    return remap[best[1]], best[2][order]


def centroid_sha256(centroids: np.ndarray) -> str:
    """sha256 of the centroids as little-endian float32, rounded to 6 decimals (ethos.lock)."""
    return hashlib.sha256(np.round(np.asarray(centroids, float), 6).astype("<f4").tobytes()).hexdigest()


@dataclass
class Clusters:
    """A seeded k-means of the prompts: the cluster of each pair, a label per cluster, the centroids' hash."""

    k: int
    features: str  # "model" or "tfidf"
    assign: np.ndarray  # (n,) int in [0, k)
    labels: list[str]  # per cluster: its most distinctive prompt words
    sha256: str
    seed: int

    def lock_entry(self) -> dict[str, Any]:
        return {"k": self.k, "features": self.features, "seed": self.seed, "centroids_sha256": self.sha256}


def cluster_prompts(pairs: Sequence[Any], k: int, *, seed: int = 0, features: str = "tfidf",
                    runtime: Any = None) -> Clusters:
    """Cluster the pairs' prompts into ``k`` groups (see the module docstring)."""
    if features not in CLUSTER_FEATURES:
        raise TopicError(f"cluster features must be one of {', '.join(CLUSTER_FEATURES)}, not {features!r}")
    if k < 1:
        raise TopicError(f"a clustering needs k ≥ 1, not {k}")
    if len(pairs) < k:
        raise TopicError(f"cannot make {k} clusters of {len(pairs)} prompts")
    texts = [prompt_text(p) for p in pairs]
    words, vocab = tfidf(texts)
    if features == "model":
        if runtime is None:
            raise TopicError("clusters over the model's activations need the model")
        x = prompt_activations(runtime, [p.prompt for p in pairs]).astype(float)
        sd = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)  # every dimension on one scale: no outlier dims
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    else:
        x = words
    assign, centroids = kmeans(x, k, seed=seed)
    return Clusters(k, features, assign, distinctive_words(words, vocab, assign, k), centroid_sha256(centroids), seed)


def distinctive_words(words: np.ndarray, vocab: Sequence[str], assign: np.ndarray, k: int,
                      n_words: int = LABEL_WORDS) -> list[str]:
    """Per cluster, its ``n_words`` words with the largest mean TF-IDF inside minus outside."""
    labels = []
    for j in range(k):
        inside = assign == j
        if not len(vocab) or not inside.any():
            labels.append("")
            continue
        out_mean = words[~inside].mean(axis=0) if (~inside).any() else 0.0
        gap = words[inside].mean(axis=0) - out_mean
        top = [vocab[i] for i in np.argsort(-gap, kind="stable")[:n_words] if gap[i] > 0]
        labels.append(", ".join(top))
    return labels


# ---------------------------------------------------------------------------------------------
# Membership


@dataclass
class TopicSets:
    """Every topic's membership over the pairs, with what explains it."""

    membership: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n,) bool
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # lexicon matches, probe probability
    labels: dict[str, str] = field(default_factory=dict)
    clusters: dict[int, Clusters] = field(default_factory=dict)  # by k

    def of_pair(self, i: int) -> list[str]:
        """The topics pair ``i`` is in, in definition order."""
        return [name for name, m in self.membership.items() if m[i]]


def topic_sets(plan_or_topics: Plan | Sequence[Any], pairs: Sequence[Any], *, context: Any = None,
               runtime: Any = None, model: str | None = None, layer: int | None = None,
               cluster_features: str = "model", seed: int = 0, batch_size: int = 8) -> TopicSets:
    """Score every topic the plan (or the list of topic definitions) defines on the pairs' prompts.

    ``context``: a :class:`ethos.runtime.lenses.LensContext` to find topic files (default: the
    plan's, else the library and the working folder); ``runtime``: a model runtime for probe and
    model-cluster topics, else one is made from ``model`` (default: the plan's model) only when such
    a topic exists. ``cluster_features``: ``"model"`` or ``"tfidf"`` for cluster topics."""
    from .lenses import LensContext

    topics = list(plan_or_topics.topics) if isinstance(plan_or_topics, Plan) else list(plan_or_topics)
    if context is None:
        context = LensContext.for_plan(plan_or_topics) if isinstance(plan_or_topics, Plan) else LensContext()
    prompts = [prompt_text(p) for p in pairs]
    out = TopicSets()

    def get_runtime() -> Any:
        nonlocal runtime
        if runtime is None:
            from .model import model_runtime

            name = model or (plan_or_topics.model.name if isinstance(plan_or_topics, Plan) else None)
            if name is None:
                raise TopicError("probe and cluster topics need a model (none given)")
            lay = layer if layer is not None else (plan_or_topics.model.layer if isinstance(plan_or_topics, Plan) else None)
            runtime = model_runtime(name, layer=lay, batch_size=batch_size)
        return runtime

    for t in topics:
        if isinstance(t, LexiconTopic):
            from .lenses.lexicon import compile_lexicon, read_lexicon

            path = context.resolve_file(t.file)
            entries = read_lexicon(path)
            if not entries:
                raise TopicError(f"{path}: the lexicon of topic {t.name!r} has no entries")
            s = lexicon_scores(compile_lexicon(entries), prompts)
            out.scores[t.name], out.membership[t.name] = s, s > t.threshold
            out.labels[t.name] = f"lexicon {t.file.path}, above {t.threshold:g}"
        elif isinstance(t, ColumnTopic):
            out.membership[t.name] = column_member(pairs, t.column, t.op, t.value, topic=t.name)
            out.labels[t.name] = f"column {t.column} {t.op} {json.dumps(t.value)}"
        elif isinstance(t, ProbeTopic):
            from .lenses.probe import read_exemplars

            ex = read_exemplars(context.resolve_file(t.file))
            s = probe_probabilities(get_runtime(), [e[1] for e in ex], [e[2] for e in ex], [p.prompt for p in pairs])
            out.scores[t.name], out.membership[t.name] = s, s > t.threshold
            out.labels[t.name] = f"probe {t.file.path}, above {t.threshold:g}"
        elif isinstance(t, ClusterTopic):
            if t.k not in out.clusters:
                rt = get_runtime() if cluster_features == "model" else None
                out.clusters[t.k] = cluster_prompts(pairs, t.k, seed=seed, features=cluster_features, runtime=rt)
            c = out.clusters[t.k]
            if not 0 <= t.index < t.k:
                raise TopicError(f"topic {t.name!r}: cluster {t.index} of {t.k} does not exist")
            out.membership[t.name] = c.assign == t.index
            out.labels[t.name] = c.labels[t.index]
        else:  # pragma: no cover - the compiler's union has these four kinds
            raise TopicError(f"topic {getattr(t, 'name', t)!r}: unknown kind {getattr(t, 'kind', '?')!r}")
    return out


def assign_topics(plan_or_topics: Plan | Sequence[Any], pairs: Sequence[Any], **options: Any) -> dict[str, np.ndarray]:
    """``{topic name: (n,) bool}``: which pairs each topic holds (:func:`topic_sets`'s options)."""
    return topic_sets(plan_or_topics, pairs, **options).membership


def discover_topics(pairs: Sequence[Any], k: int, *, seed: int = 0, features: str = "tfidf",
                    runtime: Any = None) -> TopicSets:
    """``k`` discovered topics ``t0`` … ``t{k-1}``: a partition of the pairs by a seeded k-means
    of their prompts, each labelled by its most distinctive prompt words."""
    c = cluster_prompts(pairs, k, seed=seed, features=features, runtime=runtime)
    out = TopicSets(clusters={k: c})
    for j in range(k):
        out.membership[f"t{j}"] = c.assign == j
        out.labels[f"t{j}"] = c.labels[j]
    return out


def topic_definitions(sets: TopicSets, k: int) -> str:
    """``topic`` definitions of discovered clusters, for a draft policy (a comment gives each
    cluster's label and size)."""
    c = sets.clusters[k]
    lines = [f"# discovered topics: k-means of the prompts ({c.features}), seed {c.seed}, centroids sha256 {c.sha256[:12]}"]
    for j in range(k):
        n = int((c.assign == j).sum())
        lines.append(f"topic t{j} = cluster {j} of {k};  # {n} pairs: {c.labels[j] or 'no distinctive words'}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The topic × concept table

EXAMPLE_CHARS = 400  # text of an example pair kept per field (the reports clip again)


def cell_examples(doc: Mapping[str, Any], table: Any, pairs: Sequence[Any], membership: Mapping[str, np.ndarray],
                  *, per_cell: int = 2) -> None:
    """Add to every cell of a :func:`topic_concept_table` document its ``examples``: the
    ``per_cell`` pairs of the topic whose Δ goes furthest in the direction of the cell's d
    (chosen most above rejected when d ≥ 0), with their prompt's last turn, both replies (cut at
    :data:`EXAMPLE_CHARS`) and both scores. ``table`` and ``membership`` are in ``pairs``' order."""
    for t in doc["topics"]:
        mask = np.asarray(membership[t["name"]], dtype=bool)
        for cell in t["concepts"]:
            k = cell["name"]
            c = table[f"{k}.chosen"].to_numpy(dtype=float)
            r = table[f"{k}.rejected"].to_numpy(dtype=float)
            delta = c - r
            ok = np.flatnonzero(mask & np.isfinite(delta))
            sign = -1.0 if (cell.get("d") is not None and cell["d"] < 0) else 1.0
            top = ok[np.argsort(-sign * delta[ok], kind="stable")][:per_cell]
            cell["examples"] = [{
                "id": str(pairs[i].id), "delta": float(delta[i]), "score_chosen": float(c[i]),
                "score_rejected": float(r[i]),
                "prompt": (pairs[i].prompt[-1].content if pairs[i].prompt else "")[:EXAMPLE_CHARS],
                "chosen": pairs[i].chosen[:EXAMPLE_CHARS], "rejected": pairs[i].rejected[:EXAMPLE_CHARS],
            } for i in top]


def topic_concept_table(table: Any, names: Sequence[str], membership: Mapping[str, np.ndarray], *,
                        labels: Mapping[str, str] | None = None, seed: int = 0, n_boot: int | None = None,
                        min_pairs: int | None = None, weights: np.ndarray | None = None,
                        offset: np.ndarray | None = None) -> dict[str, Any]:
    """Per topic and concept: n, mean Δ, d with its CI, p (sign test), q (BH over every cell),
    split-half stability and α of the joint fit of all ``names`` within the topic.

    ``table``: featurize's table (rows in the pairs' order: ``membership`` masks index them).
    z is computed on the whole table's pooled sd, so α's are comparable across topics. A cell with
    fewer than ``min_pairs`` pairs has no statistics (None) and a note. ``weights`` (per pair, e.g. a
    plan's importance weights; 0 excludes a pair) weight the marginal statistics and the fit (its
    covariance is then the sandwich); ``offset`` (per pair) is the fit's fixed margin term (the loss
    protocol's), as :func:`ethos.runtime.stats.joint` takes them. Returns the JSON-ready
    ``{"topics": [{"name", "n_pairs", "label", "concepts": [{"name", "n", "mean_delta", "d",
    "d_ci", "p", "q", "alpha", "alpha_ci", "split_half_stable", "split_half_agreement", "note"}]}]}``."""
    from .stats import MIN_PAIRS, N_BOOT, bh, joint, marginal, standardise

    n_boot = N_BOOT if n_boot is None else n_boot
    min_pairs = MIN_PAIRS if min_pairs is None else min_pairs
    names = list(names)
    missing = [k for k in names if f"{k}.chosen" not in table.columns or f"{k}.rejected" not in table.columns]
    if missing:
        raise TopicError(f"the scores table has no scores for {', '.join(missing)}")
    c = len(names)
    n_all = len(table)
    sc = np.asarray(table.loc[:, [f"{k}.chosen" for k in names]].to_numpy(dtype=float)).reshape(n_all, c)
    sr = np.asarray(table.loc[:, [f"{k}.rejected" for k in names]].to_numpy(dtype=float)).reshape(n_all, c)
    finite = np.all(np.isfinite(sc) & np.isfinite(sr), axis=1)
    std = standardise(sc[finite], sr[finite])
    delta = np.full((n_all, c), np.nan)
    z = np.zeros((n_all, c))
    delta[finite], z[finite] = std.delta, std.z
    varies = std.varies
    w_all = None if weights is None else np.asarray(weights, dtype=float)
    o_all = None if offset is None else np.asarray(offset, dtype=float)
    for what, arr in (("weights", w_all), ("offset", o_all)):
        if arr is not None and arr.shape != (n_all,):
            raise TopicError(f"{what} has {arr.shape} entries for {n_all} pairs")
    topics: list[dict[str, Any]] = []
    p_cells: list[float] = []
    for t_i, (name, mask) in enumerate(membership.items()):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n_all,):
            raise TopicError(f"topic {name!r}: membership has {mask.shape[0]} entries for {n_all} pairs")
        rows = mask & finite
        if w_all is not None:
            rows &= w_all > 0
        n = int(rows.sum())
        cells = [{"name": k, "n": n, "mean_delta": None, "d": None, "d_ci": [None, None], "p": None, "q": None,
                  "alpha": None, "alpha_ci": [None, None], "split_half_stable": False,
                  "split_half_agreement": None, "note": ""} for k in names]
        if n < min_pairs:
            for cell in cells:
                cell["note"] = f"too few pairs ({n}; need {min_pairs})"
        else:
            w = None if w_all is None else w_all[rows]
            mg = marginal(delta[rows], w, n_boot=n_boot, seed=seed + t_i)
            fit = joint(z[rows][:, varies], w, names=[k for k, v in zip(names, varies) if v], min_pairs=min_pairs,
                        offset=None if o_all is None else o_all[rows])
            fitted = list(np.flatnonzero(varies))
            for j, cell in enumerate(cells):
                cell.update(mean_delta=mg.mean_delta[j], d=mg.d[j], d_ci=[mg.d_lo[j], mg.d_hi[j]],
                            p=mg.p[j] if varies[j] else None, split_half_stable=bool(mg.split_half_stable[j]),
                            split_half_agreement=mg.split_half_agreement[j])
                if j in fitted:
                    f = fitted.index(j)
                    cell.update(alpha=fit.alpha[f], alpha_ci=[fit.lo[f], fit.hi[f]], note=fit.notes[f])
                else:
                    cell["note"] = "constant score (sd 0): nothing to test"
        for cell in cells:
            p = cell["p"]
            p_cells.append(float(p) if p is not None and np.isfinite(p) else np.nan)
        topics.append({"name": name, "n_pairs": n, "label": (labels or {}).get(name, ""), "concepts": cells})
    q = bh(np.array(p_cells)) if p_cells else np.zeros(0)
    k = 0
    for t in topics:
        for cell in t["concepts"]:
            cell["q"] = q[k]
            k += 1
    return clean({"topics": topics, "settings": {"seed": seed, "n_boot": n_boot, "min_pairs": min_pairs,
                                                  "q": "Benjamini-Hochberg over every (topic, concept) cell",
                                                  "scale": "pooled sd of each concept over all pairs"}})


def audit_topics(plan: Plan, pairs: Sequence[Any], table: Any, k: int | None, *, features: str = "model",
                 model: str | None = None, seed: int = 0, batch_size: int = 8, n_boot: int | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """What ``ethos audit --topics K`` adds: the topic × concept table (with :func:`cell_examples`)
    of ``k`` discovered topics ``t0`` … and the plan's own topics, and the discovered clustering's
    lock entry (None without ``k``). ``table`` (featurize's) is in the order of ``pairs``."""
    if list(map(str, table["id"])) != [str(p.id) for p in pairs]:
        raise TopicError("internal: the scores are not in the order of the pairs")
    membership: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    clusters = None
    runtime = None
    model = model or plan.model.name
    if k:
        if features == "model":
            from .model import model_runtime

            runtime = model_runtime(model, layer=plan.model.layer, batch_size=batch_size)
        found = discover_topics(pairs, k, seed=seed, features=features, runtime=runtime)
        membership.update(found.membership)
        labels.update(found.labels)
        clusters = found.clusters[k].lock_entry()
    if plan.topics:
        mine = topic_sets(plan, pairs, runtime=runtime, model=model, cluster_features=features, seed=seed,
                          batch_size=batch_size)
        clash = sorted(set(mine.membership) & set(membership))
        if clash:
            raise TopicError(f"the policy defines topic {clash[0]!r}, a name --topics gives a discovered topic; "
                             f"rename it")
        membership.update(mine.membership)
        labels.update(mine.labels)
    doc = topic_concept_table(table, [c.name for c in plan.concepts], membership, labels=labels, seed=seed,
                              n_boot=n_boot)
    cell_examples(doc, table, pairs, membership)
    return clean(doc)["topics"], clusters

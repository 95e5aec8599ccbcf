"""Topics on the prompt (lexicon, column, cluster, probe) and the topic × concept table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ethos.compiler.compile import compile_file
from ethos.runtime.data import Message, Pair
from ethos.runtime.stats import bh
from ethos.runtime.topics import (
    TopicError,
    assign_topics,
    centroid_sha256,
    cluster_prompts,
    column_member,
    discover_topics,
    topic_concept_table,
    topic_definitions,
    topic_sets,
)

COOKING = ["How long do I bake bread in the oven? A recipe please", "What recipe uses a slow cooker and an oven?",
           "Can I fry eggs in butter, what recipe?", "How do I boil pasta, is there a recipe?"]
CARS = ["How often should I change my car's oil?", "Why does my car engine make a noise?",
        "What tyre pressure for my car?", "How do I jump start a car battery?"]


def pair(i: int, prompt: str, **meta) -> Pair:
    return Pair(id=str(i), prompt=(Message("user", prompt),), chosen=f"chosen {i}", rejected=f"rejected {i}", meta=meta)


def policy(tmp_path: Path, text: str):
    (tmp_path / "cook.txt").write_text("# cooking words\nbake\noven\nfry\nboil\nslow cooker\n")
    path = tmp_path / "p.ethos"
    path.write_text(text)
    result = compile_file(str(path))
    assert result.plan is not None, result.diagnostics
    return result.plan


def test_lexicon_topic_counts_matches_in_the_prompt_above_the_threshold(tmp_path):
    plan = policy(tmp_path, 'topic cook = lexicon "cook.txt";\ntopic cook2 = lexicon "cook.txt" above 1;\n'
                            "block concept verbosity when topic cook;\n")
    pairs = [pair(i, p) for i, p in enumerate(COOKING + CARS)]
    sets = topic_sets(plan, pairs)
    # "bake ... oven" 2, "slow cooker ... oven" 2, "fry" 1, "boil" 1; cars 0 ("recipe" is not in the lexicon)
    assert sets.scores["cook"].tolist() == [2, 2, 1, 1, 0, 0, 0, 0]
    assert sets.membership["cook"].tolist() == [True] * 4 + [False] * 4
    assert sets.membership["cook2"].tolist() == [True, True] + [False] * 6
    assert sets.of_pair(0) == ["cook", "cook2"] and sets.of_pair(2) == ["cook"] and sets.of_pair(5) == []


def test_lexicon_topic_reads_only_the_prompt_not_the_replies(tmp_path):
    plan = policy(tmp_path, 'topic cook = lexicon "cook.txt";\nblock concept verbosity when topic cook;\n')
    p = Pair(id="0", prompt=(Message("user", "Tell me about cars."),), chosen="Bake it in the oven.",
             rejected="Fry it.")
    assert assign_topics(plan, [p])["cook"].tolist() == [False]


def test_column_topics_compare_text_and_numbers_from_the_data_row(tmp_path):
    plan = policy(tmp_path, 'topic math = column "category" == "math";\n'
                            'topic notmath = column "category" != "math";\n'
                            'topic long = column "words" > 10;\n'
                            "block concept verbosity when topic math;\n")
    pairs = [pair(0, "a", category="math", words=12), pair(1, "b", category="art", words="3"),
             pair(2, "c", words="many"), pair(3, "d", category="math", words=None)]
    m = assign_topics(plan, pairs)
    assert m["math"].tolist() == [True, False, False, True]
    assert m["notmath"].tolist() == [False, True, False, False]  # no column: in no topic
    assert m["long"].tolist() == [True, False, False, False]  # "3" is a number, "many" and None are not


def test_a_column_no_pair_has_is_an_error_naming_the_columns_there_are():
    with pytest.raises(TopicError, match="no column 'category'.*words"):
        column_member([pair(0, "a", words=3)], "category", "==", "math", topic="math")


def test_column_topic_from_a_loaded_file(tmp_path):
    from ethos.runtime.data import load_pairs

    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no", "category": "math" if i % 3 == 0 else "art"}
            for i in range(9)]
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    plan = policy(tmp_path, 'topic math = column "category" == "math";\nblock concept verbosity when topic math;\n')
    m = assign_topics(plan, load_pairs(str(path)).pairs)
    assert m["math"].tolist() == [i % 3 == 0 for i in range(9)]


def test_tfidf_clusters_separate_two_obvious_topics_seeded_and_labelled():
    pairs = [pair(i, p) for i, p in enumerate(COOKING + CARS)]
    a = cluster_prompts(pairs, 2, seed=0, features="tfidf")
    b = cluster_prompts(pairs, 2, seed=0, features="tfidf")
    assert a.assign.tolist() == [0] * 4 + [1] * 4  # numbered by their first pair
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    assert "car" in a.labels[1].split(", ") and "car" not in a.labels[0].split(", ")
    assert a.lock_entry() == {"k": 2, "features": "tfidf", "seed": 0, "centroids_sha256": a.sha256}


def test_cluster_topics_of_a_plan_and_discovered_topics(tmp_path):
    plan = policy(tmp_path, "topic cars = cluster 1 of 2;\nblock concept verbosity when topic cars;\n")
    pairs = [pair(i, p) for i, p in enumerate(COOKING + CARS)]
    assert assign_topics(plan, pairs, cluster_features="tfidf")["cars"].tolist() == [False] * 4 + [True] * 4
    found = discover_topics(pairs, 2)
    assert list(found.membership) == ["t0", "t1"]
    assert sum(int(m.sum()) for m in found.membership.values()) == len(pairs)
    text = topic_definitions(found, 2)
    assert "topic t1 = cluster 1 of 2;  # 4 pairs: " in text
    from ethos.compiler.compile import compile_source

    assert compile_source(text + "block concept verbosity when topic t1;\n", "draft.ethos").plan is not None
    with pytest.raises(TopicError, match="cannot make 9 clusters of 8 prompts"):
        discover_topics(pairs, 9)


def test_centroid_hash_changes_with_the_centroids():
    c = np.eye(3)
    assert centroid_sha256(c) == centroid_sha256(c + 1e-9)  # rounded: float noise does not change it
    assert centroid_sha256(c) != centroid_sha256(c * 2)


def _table(chosen: np.ndarray, rejected: np.ndarray, names: list[str]) -> pd.DataFrame:
    cols = {"id": [str(i) for i in range(len(chosen))]}
    for j, k in enumerate(names):
        cols[f"{k}.chosen"] = chosen[:, j]
        cols[f"{k}.rejected"] = rejected[:, j]
    return pd.DataFrame(cols)


def test_topic_concept_table_cells_add_up_and_q_is_bh_over_every_cell():
    rng = np.random.default_rng(0)
    n = 120
    group = np.arange(n) % 3
    chosen, rejected = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    chosen[group == 0, 0] += 1.5  # concept a is rewarded only in topic g0
    membership = {f"g{g}": group == g for g in range(3)}
    doc = topic_concept_table(_table(chosen, rejected, ["a", "b"]), ["a", "b"], membership,
                              labels={"g0": "zero"}, n_boot=200)
    topics = doc["topics"]
    assert [t["name"] for t in topics] == ["g0", "g1", "g2"]
    assert sum(t["n_pairs"] for t in topics) == n
    assert topics[0]["label"] == "zero" and topics[1]["label"] == ""
    cells = [c for t in topics for c in t["concepts"]]
    assert [c["name"] for c in topics[0]["concepts"]] == ["a", "b"]
    ps = np.array([c["p"] for c in cells], dtype=float)
    assert np.allclose([c["q"] for c in cells], bh(ps))
    a0 = topics[0]["concepts"][0]
    assert a0["d"] > 0.8 and a0["d_ci"][0] > 0 and a0["q"] < 0.01 and a0["alpha"] > 0.5
    assert a0["split_half_stable"] is True
    assert all(abs(t["concepts"][0]["d"]) < 0.6 for t in topics[1:])
    for c in cells:
        assert set(c) >= {"name", "d", "d_ci", "q", "alpha", "split_half_stable"}


def test_a_small_topic_gets_a_note_not_statistics():
    rng = np.random.default_rng(1)
    chosen, rejected = rng.normal(size=(40, 1)), rng.normal(size=(40, 1))
    small = np.zeros(40, bool)
    small[:5] = True
    doc = topic_concept_table(_table(chosen, rejected, ["a"]), ["a"], {"small": small, "rest": ~small}, n_boot=50)
    cell = doc["topics"][0]["concepts"][0]
    assert cell["d"] is None and cell["q"] is None and "too few pairs (5; need 10)" in cell["note"]
    assert doc["topics"][1]["concepts"][0]["d"] is not None


def test_probe_topic_with_a_tiny_model(tmp_path, tiny_model_dir, ethos_cache):
    from ethos.runtime.model import model_runtime

    lines = [{"prompt": "", "positive": f"cook bake oven recipe {i}", "negative": f"car engine tyre oil {i}"}
             for i in range(6)]
    (tmp_path / "p.jsonl").write_text("".join(__import__("json").dumps(x) + "\n" for x in lines))
    plan = policy(tmp_path, 'topic food = probe "p.jsonl";\nblock concept verbosity when topic food;\n')
    runtime = model_runtime(str(tiny_model_dir), batch_size=4)
    pairs = [pair(i, lines[i]["positive"]) for i in range(6)] + [pair(6 + i, lines[i]["negative"]) for i in range(6)]
    sets = topic_sets(plan, pairs, runtime=runtime)
    s = sets.scores["food"]
    assert np.all((s >= 0) & (s <= 1))
    assert s[:6].mean() > s[6:].mean()  # the exemplar prompts themselves: positives score higher
    assert sets.membership["food"].tolist() == (s > 0.5).tolist()


def test_weights_weight_the_cells_and_zero_weight_leaves_a_pair_out():
    rng = np.random.default_rng(2)
    n = 80
    chosen, rejected = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    chosen[:, 0] += 0.7
    table = _table(chosen, rejected, ["a", "b"])
    membership = {"all": np.ones(n, bool)}
    plain = topic_concept_table(table, ["a", "b"], membership, n_boot=50)["topics"][0]
    twice = topic_concept_table(table, ["a", "b"], membership, n_boot=50, weights=np.full(n, 2.0))["topics"][0]
    assert twice["concepts"][0]["d"] == pytest.approx(plain["concepts"][0]["d"])
    assert twice["concepts"][0]["alpha"] == pytest.approx(plain["concepts"][0]["alpha"], rel=1e-6)
    w = np.ones(n)
    w[:30] = 0.0
    part = topic_concept_table(table, ["a", "b"], membership, n_boot=50, weights=w)["topics"][0]
    sub = topic_concept_table(_table(chosen[30:], rejected[30:], ["a", "b"]), ["a", "b"],
                              {"all": np.ones(n - 30, bool)}, n_boot=50)["topics"][0]
    assert part["n_pairs"] == n - 30
    assert part["concepts"][0]["d"] == pytest.approx(sub["concepts"][0]["d"])
    with pytest.raises(TopicError, match="weights has"):
        topic_concept_table(table, ["a", "b"], membership, weights=np.ones(3))


def test_model_feature_clusters_are_seeded_and_need_the_model(tiny_model_dir, ethos_cache):
    from ethos.runtime.model import model_runtime

    pairs = [pair(i, p) for i, p in enumerate(COOKING + CARS)]
    with pytest.raises(TopicError, match="need the model"):
        cluster_prompts(pairs, 2, features="model")
    runtime = model_runtime(str(tiny_model_dir), batch_size=3)
    a = cluster_prompts(pairs, 3, seed=0, features="model", runtime=runtime)
    b = cluster_prompts(pairs, 3, seed=0, features="model", runtime=runtime)
    assert a.features == "model" and a.assign.tolist() == b.assign.tolist() and a.sha256 == b.sha256
    assert sorted(set(a.assign.tolist())) == [0, 1, 2] and a.assign[0] == 0

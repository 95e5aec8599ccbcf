"""`ethos audit --topics K`: the topic × concept table in the JSON, the terminal, the HTML heat
map, the draft policy's topic definitions; and the trace page."""

from __future__ import annotations

import json

import pytest

from ethos.compiler.compile import compile_file
from ethos.runtime.cli import main


POLICY = "concept words = metric words;\nconcept sorry = metric apology;\nkeep concept words;\nkeep concept sorry;\n"


def write_policy(tmp_path, text=POLICY):
    path = tmp_path / "p.ethos"
    path.write_text(text)
    return str(path)


def audit(tmp_path, capsys, *extra):
    out = tmp_path / "out"
    code = main(["audit", "--limit", "90", "--policy", write_policy(tmp_path), "--topics", "4", "--topic-features",
                 "tfidf", "--n-boot", "50", "--out", str(out), "--json", *extra])
    assert code == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out), out


def test_audit_topics_partition_the_usable_pairs_and_render_a_heat_map(tmp_path, ethos_cache, capsys):
    doc, out = audit(tmp_path, capsys, "--emit-policy", str(tmp_path / "draft.ethos"))
    topics = doc["topics"]
    assert [t["name"] for t in topics] == ["t0", "t1", "t2", "t3"]
    assert sum(t["n_pairs"] for t in topics) == doc["rows"]["usable"] == doc["pairs"]
    assert doc["topic_clusters"]["k"] == 4 and doc["topic_clusters"]["features"] == "tfidf"
    assert len(doc["topic_clusters"]["centroids_sha256"]) == 64
    for t in topics:
        assert t["label"]  # its most distinctive prompt words
        assert sorted(c["name"] for c in t["concepts"]) == ["sorry", "words"]
        for c in t["concepts"]:
            assert {"name", "d", "d_ci", "q", "alpha", "split_half_stable", "examples"} <= set(c)
            assert len(c["examples"]) == min(2, t["n_pairs"])
    cells = [c for t in topics for c in t["concepts"] if c["d"] is not None]
    assert cells and all(c["q"] >= c["p"] - 1e-12 for c in cells)  # BH never lowers a p-value
    html = (out / "audit.html").read_text()
    assert '<table class="heatmap">' in html and "Topics × concepts" in html
    assert html.count('class="cell"') == 8  # 4 topics × 2 concepts
    assert "example pair" in html and "<script" not in html
    draft = (tmp_path / "draft.ethos").read_text()
    for j in range(4):
        assert f"topic t{j} = cluster {j} of 4;" in draft
    assert compile_file(str(tmp_path / "draft.ethos")).plan is not None


def test_audit_topics_in_the_terminal(tmp_path, ethos_cache, capsys):
    out = tmp_path / "out"
    assert main(["audit", "--limit", "90", "--policy", write_policy(tmp_path), "--topics", "3", "--topic-features",
                 "tfidf", "--n-boot", "50", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "topics: 3 (3 discovered: k-means of the prompts' tfidf features, seed 0)" in text
    assert "t0 words" in text and "α in topic" in text


@pytest.mark.parametrize("k", ["1", "0", "-2"])
def test_audit_topics_below_two_is_a_usage_error(tmp_path, capsys, k):
    assert main(["audit", "--concepts", "verbosity", "--topics", k, "--out", str(tmp_path / "o")]) == 2
    assert "--topics must be at least 2" in capsys.readouterr().err


def test_the_policy_s_own_topics_are_audited_without_topics_k(tmp_path, ethos_cache, capsys):
    (tmp_path / "how.txt").write_text("how\n")
    (tmp_path / "p.ethos").write_text('concept v = metric words;\ntopic how = lexicon "how.txt";\nkeep concept v;\n')
    assert main(["audit", "--policy", str(tmp_path / "p.ethos"), "--limit", "60", "--n-boot", "20",
                 "--out", str(tmp_path / "o"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (t,) = doc["topics"]
    assert t["name"] == "how" and 0 < t["n_pairs"] < 60 and doc["topic_clusters"] is None


def test_trace_writes_an_html_page(tmp_path, ethos_cache, capsys):
    page = tmp_path / "trace.html"
    policy = write_policy(tmp_path, "concept words = metric words;\nconcept sorry = metric apology;\n"
                                    "block concept words;\n")
    assert main(["trace", policy, "--concept", "words", "--limit", "40", "--top", "5", "--html", str(page)]) == 0
    html = page.read_text()
    assert "ethos trace: words" in html and html.count('class="pair"') == 5
    assert "Accounting: the rule deciding each pair" in html and "words/loss" in html

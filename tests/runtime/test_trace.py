"""``ethos trace``: a planted phrase's pairs come first, and every pair's rule is named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ethos.compiler.compile import compile_file
from ethos.runtime.errors import EthosError
from ethos.runtime.settings import DataSettings
from ethos.runtime.trace import NO_RULE, decide, trace_dataset

N = 60
PHRASE = " Hope this helps."
TOPICS = ["the weather", "my garden", "a recipe to bake bread in the oven", "my car", "a good book", "the news"]


def planted(i: int) -> tuple[bool, bool]:
    """(chosen has the phrase, rejected has it): chosen in 42 of 60 pairs (70%), rejected in 6
    (10%): 3 pairs both, 3 only the rejected reply; scattered over the file (k = 37·i mod 60)."""
    k = (37 * i) % N
    return k < 42, k < 3 or 50 <= k < 53


def write_data(path: Path) -> Path:
    rows = []
    for i in range(N):
        c, r = planted(i)
        chosen = f"Here is what I know about {TOPICS[i % 6]}: answer number {i} has some words" + " more" * (i % 5) + "."
        rejected = f"Something about {TOPICS[i % 6]}, reply {i}" + " and" * (i % 4) + "."
        rows.append({"prompt": f"Question {i}: tell me about {TOPICS[i % 6]}.",
                     "chosen": chosen + (PHRASE if c else ""), "rejected": rejected + (PHRASE if r else "")})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


POLICY = """\
concept helps = lexicon "helps.txt";
topic cooking = lexicon "cook.txt";
block concept helps;
keep concept helps when topic cooking;
"""


@pytest.fixture()
def setup(tmp_path: Path, ethos_cache: Path):
    (tmp_path / "helps.txt").write_text("hope this helps\n")
    (tmp_path / "cook.txt").write_text("bake\noven\nrecipe\n")
    (tmp_path / "p.ethos").write_text(POLICY)
    plan = compile_file(str(tmp_path / "p.ethos")).plan
    assert plan is not None
    return plan, write_data(tmp_path / "d.jsonl"), tmp_path


def test_planted_pairs_come_first_and_every_pair_names_its_rule(setup):
    plan, data, _ = setup
    t = trace_dataset(plan, DataSettings(path=str(data)), "helps", top=None)
    only_chosen = {str(i) for i in range(N) if planted(i) == (True, False)}  # 39 pairs
    assert t.ranked_by == "alpha*z" and t.alpha > 0 and t.n_pairs == N
    assert {p["id"] for p in t.pairs[: len(only_chosen)]} == only_chosen
    assert all(p["contribution"] > 0 for p in t.pairs[: len(only_chosen)])
    # the pairs where only the rejected reply has it pull against the signal: last
    only_rejected = {str(i) for i in range(N) if planted(i) == (False, True)}
    assert len(only_chosen) == 39 and len(only_rejected) == 3
    assert {p["id"] for p in t.pairs[-3:]} == only_rejected and all(p["contribution"] < 0 for p in t.pairs[-3:])
    assert abs(sum(p["share"] for p in t.pairs) - 1.0) < 1e-9
    cooking = {str(i) for i in range(N) if i % 6 == 2}
    for p in t.pairs:
        assert p["rule"] == ("keep concept helps when topic cooking" if p["id"] in cooking else "helps/loss")
        assert p["topics"] == (["cooking"] if p["id"] in cooking else [])
        assert p["score_chosen"] - p["score_rejected"] == pytest.approx(p["delta"])
        assert p["prompt"][0]["content"].startswith(f"Question {p['id']}:")
    acc = {r["rule"]: r["pairs"] for r in t.accounting["by_rule"]}
    assert acc == {"helps/loss": N - len(cooking), "keep concept helps when topic cooking": len(cooking)}
    assert sum(r["share"] for r in t.accounting["by_rule"]) == pytest.approx(1.0)


def test_topic_and_top_restrict_the_list(setup):
    plan, data, _ = setup
    t = trace_dataset(plan, DataSettings(path=str(data)), "helps", topic="cooking", top=3)
    assert len(t.pairs) == 3 and all(p["topics"] == ["cooking"] for p in t.pairs)
    assert t.accounting["pairs"] == 10
    with pytest.raises(EthosError, match="unknown topic 'baking'"):
        trace_dataset(plan, DataSettings(path=str(data)), "helps", topic="baking")
    with pytest.raises(EthosError, match="concept 'nope' is not in the policy"):
        trace_dataset(plan, DataSettings(path=str(data)), "nope")


def test_decide_follows_the_scopes(tmp_path):
    (tmp_path / "cook.txt").write_text("bake\n")
    (tmp_path / "med.txt").write_text("doctor\n")
    (tmp_path / "p.ethos").write_text(
        'topic cooking = lexicon "cook.txt";\ntopic medical = lexicon "med.txt";\n'
        "dampen concept hedging by 0.5 when topic medical;\nblock concept hedging when topic cooking;\n"
        "block concept apology via filter;\n"
        "block concept warmth when topic cooking;\nblock concept warmth when topic medical;\n")
    plan = compile_file(str(tmp_path / "p.ethos")).plan
    assert decide(plan, "hedging", []).rule == NO_RULE
    assert decide(plan, "hedging", ["medical"]).rules == ("hedging/loss@medical",)
    both = decide(plan, "hedging", ["cooking", "medical"])
    assert both.action == "conflict" and set(both.rules) == {"hedging/loss@medical", "hedging/loss@cooking"}
    assert decide(plan, "apology", ["medical"]).rule == "apology/filter"
    same = decide(plan, "warmth", ["cooking", "medical"])  # one effect in both topics: not a conflict
    assert same.action == "block" and same.rules == ("warmth/loss@cooking",)


def run_cli(argv: list[str]) -> int:
    from ethos.runtime.cli import trace as cli_trace

    parser = argparse.ArgumentParser(prog="ethos")
    cli_trace.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_json_plain_text_and_jsonl_out(setup, capsys):
    _, data, tmp = setup
    out = tmp / "pairs.jsonl"
    assert run_cli(["trace", str(tmp / "p.ethos"), "--concept", "helps", "--data", str(data), "--top", "5",
                    "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "ethos.trace/1" and len(doc["pairs"]) == 5 and doc["concept"] == "helps"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == [p["id"] for p in doc["pairs"]] and lines[0]["concept"] == "helps"
    assert run_cli(["trace", str(tmp / "p.ethos"), "--concept", "helps", "--data", str(data), "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("concept helps: alpha +") and "#1 pair " in text and "#3 pair" not in text
    assert "rules: helps/loss: 50 pairs" in text


def test_cli_usage_errors(setup):
    _, data, tmp = setup
    with pytest.raises(EthosError, match="POLICY or --concepts"):
        run_cli(["trace", "--concept", "helps", "--data", str(data)])
    with pytest.raises(EthosError, match="--top must be"):
        run_cli(["trace", str(tmp / "p.ethos"), "--concept", "helps", "--top", "-1"])


def test_cli_on_a_terminal_prints_a_rich_table(setup, capsys, monkeypatch):
    import sys

    _, data, tmp = setup
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "160")
    assert run_cli(["trace", str(tmp / "p.ethos"), "--concept", "helps", "--data", str(data), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("concept helps: alpha +")
    assert "α·z (share)" in out and "helps/loss" in out and "Hope this helps." in out
    assert "Question" in out and "#3 pair" not in out  # a table, not the plain text

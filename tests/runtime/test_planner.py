"""ethos plan / apply / lock on real hh-rlhf pairs with model-free concepts (no model needed)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ethos.compiler.compile import compile_source
from ethos.runtime.cli import main
from ethos.runtime.planner import shape

HELPFUL = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def write(tmp_path, text, name="p.ethos"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_plan_writes_reports_and_counts_every_row(tmp_path, ethos_cache, capsys):
    policy = write(tmp_path, "concept v = metric words;\nblock concept v;\nkeep concept hedging;\n"
                             "expect pairs kept >= 0.8;\nexpect concept v share < 0.05 after plan;\n")
    out = tmp_path / "out"
    assert main(["plan", policy, "--limit", "200", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert rows["input"] == 200
    assert rows["kept"] + rows["reweighted"] + rows["relabelled"] + rows["excluded"] == 200
    v = next(c for c in doc["concepts"] if c["name"] == "v")
    assert v["factor"] == 0 and v["alpha_before"] > 0
    assert v["alpha_after_ci"][0] <= 0 <= v["alpha_after_ci"][1]
    assert [e["met"] for e in doc["expectations"]] == [True, True]
    assert 0 < doc["ess"] <= rows["usable"]
    for name in ("plan.json", "plan.md", "plan.html"):
        assert (out / name).stat().st_size > 0
    assert "Plan:" in (out / "plan.md").read_text()
    assert json.loads((out / "plan.json").read_text()) == doc  # the document printed is the one written
    (rule,) = doc["examples"]  # what plan.html shows, in the document
    assert rule["rule"] == "line 2: block concept v via loss (default)" and rule["pairs"]
    assert all(f"pair {p['id']}: " in (out / "plan.html").read_text() for p in rule["pairs"])
    # a rule without `via` is realised by margin offsets: every weight 1, the offsets counted
    (i,) = doc["interventions"]
    assert (i["protocol"], i["default_protocol"], i["rule_id"]) == ("loss", True, "v/loss")
    assert rows["reweighted"] == rows["relabelled"] == 0 and doc["ess"] == pytest.approx(rows["usable"])
    assert 0 < doc["margin_offsets"]["pairs"] == i["pairs_affected"] <= rows["usable"]
    assert all(p["margin_offset"] != 0 and p["weight"] == 1 for p in rule["pairs"])
    # the pairs shown are those whose margin the rule shifts most
    assert abs(rule["pairs"][0]["margin_offset"]) >= abs(rule["pairs"][-1]["margin_offset"])
    assert abs(rule["pairs"][0]["margin_offset"]) == pytest.approx(max(abs(doc["margin_offsets"]["min"]),
                                                                       abs(doc["margin_offsets"]["max"])))
    md, html = (out / "plan.md").read_text(), (out / "plan.html").read_text()
    assert "block concept v via loss (default) |" in md and "write `via data`" in md
    assert "block concept v via loss (default)</td>" in html
    assert f"{doc['margin_offsets']['pairs']:,} with a margin offset (applied in training)" in md


def test_plan_terminal_says_which_protocol_a_rule_without_via_uses(tmp_path, ethos_cache, capsys):
    policy = write(tmp_path, "concept v = metric words;\nblock concept v;\ndampen concept hedging by 0.5 via data;\n")
    assert main(["plan", policy, "--limit", "120", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "line 2: block concept v via loss (default) — realised in loss (in training), " in out
    assert "line 3: dampen concept hedging via data — realised in data, " in out
    assert "via data (default)" not in out and "uses the default, `loss`" in out
    assert " with a margin offset (applied in training); " in out.strip().splitlines()[-1]
    # without a defaulted rule, no note and no "(default)"
    policy = write(tmp_path, "concept v = metric words;\nblock concept v via data;\n", "d.ethos")
    assert main(["plan", policy, "--limit", "120", "--out", str(tmp_path / "o2")]) == 0
    out = capsys.readouterr().out
    assert "line 2: block concept v via data — realised in data, " in out and "(default)" not in out
    assert "margin offset" not in out.strip().splitlines()[-1]


def test_failed_expectation_exits_3_with_the_summary_line(tmp_path, ethos_cache, capsys):
    policy = write(tmp_path, "concept v = metric words;\nblock concept v via filter;\nexpect pairs excluded == 0;\n")
    assert main(["plan", policy, "--limit", "120", "--out", str(tmp_path / "o")]) == 3
    out = capsys.readouterr().out
    assert "expectations met, 1 failed." in out or "expectation met, 1 failed." in out
    assert out.strip().splitlines()[-1].startswith("Plan: ")


def test_policy_errors_exit_1_and_unwritable_output_fails_first(tmp_path, ethos_cache, capsys):
    bad = write(tmp_path, "block concept sycofancy;\n")
    assert main(["plan", bad, "--out", str(tmp_path / "o")]) == 1
    assert "did you mean 'sycophancy'" in capsys.readouterr().err
    good = write(tmp_path, "concept v = metric words;\nblock concept v;\n", "g.ethos")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["plan", good, "--out", str(blocker / "sub")]) == 1
    assert "cannot write to output folder" in capsys.readouterr().err


def test_all_rows_excluded_is_a_clear_error(tmp_path, ethos_cache, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hi", "chosen": "same", "rejected": "same"}\n' * 3)
    policy = write(tmp_path, "concept v = metric words;\nblock concept v;\n")
    assert main(["plan", policy, "--data", str(data), "--out", str(tmp_path / "o")]) == 1
    assert "all 3 input rows were excluded" in capsys.readouterr().err


def test_rule_on_insignificant_concept_warns_and_unnamed_correlated_concept_is_flagged():
    rng = np.random.default_rng(0)
    n = 800
    a = rng.normal(size=n) + 0.6  # chosen − rejected differences with an effect
    table = pd.DataFrame({"id": [str(i) for i in range(n)],
                          "a.chosen": a, "a.rejected": np.zeros(n),
                          "b.chosen": a + 0.3 * rng.normal(size=n), "b.rejected": np.zeros(n),
                          "c.chosen": rng.normal(size=n), "c.rejected": rng.normal(size=n)})
    plan = compile_source("concept a = metric words;\nconcept b = metric chars;\nconcept c = metric emoji;\n"
                          "block concept a;\nblock concept c;").plan
    o = shape(plan, table, {"input": n, "usable": n, "excluded": {}}, n_boot=200)
    assert any("'c' has no significant effect" in w for w in o.warnings)
    doc = o.to_dict()
    assert {c["name"]: c["on_target"] for c in doc["concepts"]}["a"]


def test_html_report_escapes_dataset_text(tmp_path, ethos_cache):
    data = tmp_path / "d.jsonl"
    rng = np.random.default_rng(0)
    rows = [{"prompt": f"q{i} <b>bold</b>", "chosen": "<script>alert(1)</script> " + "word " * int(rng.integers(1, 12)),
             "rejected": "short <img src=x onerror=alert(2)> " + "word " * int(rng.integers(1, 8))} for i in range(60)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = write(tmp_path, "concept v = metric words;\nblock concept v via filter;\n")
    out = tmp_path / "o"
    assert main(["plan", policy, "--data", str(data), "--out", str(out), "--json"]) in (0, 3)
    html = (out / "plan.html").read_text()
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.skipif(not HELPFUL.exists(), reason="shared data not present")
@pytest.mark.parametrize("rule,check", [
    ("block concept v;", lambda a, lo, hi, a0: lo <= 0 <= hi),
    ("block concept v via filter;", lambda a, lo, hi, a0: lo <= 0 <= hi),
    ("amplify concept v by 2.0;", lambda a, lo, hi, a0: abs(a - 2 * a0) <= 0.2 * abs(2 * a0)),
])
def test_verbosity_on_helpful_base(rule, check):
    """The issue's figures, with words as the length measure (no tokenizer needed in tests)."""
    from ethos.runtime.data import load_pairs
    from ethos.runtime.featurize import featurize

    plan = compile_source("concept v = metric words;\n" + rule).plan
    data = load_pairs(HELPFUL)
    table = featurize(plan, data, progress=False)
    o = shape(plan, table, data.counts(), n_boot=200)
    c = o.to_dict()["concepts"][0]
    assert c["alpha_before"] > 0
    assert check(c["alpha_after"], *c["alpha_after_ci"], c["alpha_before"])
    if "filter" in rule:
        assert o.rows["excluded"] - 6 <= 0.2 * o.rows["usable"]  # keeps ≥ 80% of usable pairs


def test_apply_writes_dataset_accounting_and_config(tmp_path, ethos_cache):
    policy = write(tmp_path, 'concept v = metric words;\nblock concept v via filter;\n'
                             'block concept v via inoculation "Answer at length.";\n'
                             'dampen concept hedging by 0.5 via loss;\nreverse concept apology via relabel;\n')
    out = tmp_path / "a"
    assert main(["apply", policy, "--limit", "150", "--out", str(out)]) == 0
    acc = [json.loads(x) for x in (out / "accounting.jsonl").read_text().splitlines()]
    assert [a["row"] for a in acc] == list(range(150))
    assert {a["fate"] for a in acc} <= {"kept", "reweighted", "relabelled", "excluded"}
    assert all(a["reason"] for a in acc)
    assert sum(a["fate"] == "excluded" for a in acc) >= 1 and any(a["reason"] == "empty_reply" for a in acc)
    ds = pd.read_parquet(out / "dataset.parquet")
    assert list(ds.columns) == ["id", "prompt", "chosen", "rejected", "weight", "margin_offset", "inoculation"]
    assert len(ds) == sum(a["copies"] for a in acc)
    inoc = ds[ds.inoculation.notna()]
    assert len(inoc) and all(p[0]["role"] == "system" and p[0]["content"] == "Answer at length." for p in inoc.prompt)
    assert (ds.margin_offset != 0).any()
    swapped = {a["id"] for a in acc if a["swapped"]}
    from ethos.runtime.data import load_pairs

    pairs = {p.id: p for p in load_pairs(limit=150).pairs}
    for _, r in ds[ds.id.isin(swapped)].iterrows():
        assert r.chosen[0]["content"] == pairs[r.id].rejected
    assert json.loads((out / "plan.json").read_text())["format_version"] == "1"
    assert json.loads((out / "train.json").read_text())["dataset"] == "dataset.parquet"
    assert (out / "dataset.jsonl").read_text().count("\n") == len(ds)


def test_saved_plan_applies_only_to_the_same_data(tmp_path, ethos_cache, capsys):
    policy = write(tmp_path, "concept v = metric words;\nblock concept v;\n")
    saved = tmp_path / "saved.json"
    assert main(["plan", policy, "--limit", "60", "--out", str(tmp_path / "o"), "--save", str(saved)]) == 0
    assert main(["apply", str(saved), "--limit", "60", "--out", str(tmp_path / "a")]) == 0
    assert main(["apply", str(saved), "--limit", "50", "--out", str(tmp_path / "b")]) == 1
    assert "made on other data" in capsys.readouterr().err


def test_lock_pins_and_refuses_a_stale_resolution(tmp_path, ethos_cache, capsys):
    words = tmp_path / "w.txt"
    words.write_text("sure\n")
    policy = write(tmp_path, 'concept w = lexicon "w.txt";\nblock concept w;\n')
    assert main(["lock", policy, "--limit", "40"]) == 0
    lock = json.loads((tmp_path / "ethos.lock").read_text())
    entry = lock["policies"]["p.ethos"]
    assert entry["concepts"]["w"]["kind"] == "lexicon" and entry["data"]["fingerprint"]
    assert main(["plan", policy, "--limit", "40", "--out", str(tmp_path / "o")]) == 0
    words.write_text("sure\nof course\n")  # the lexicon changes under the policy
    assert main(["plan", policy, "--limit", "40", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "ethos.lock is stale" in err and "concepts.w" in err and "--update-lock" in err
    assert main(["plan", policy, "--limit", "40", "--out", str(tmp_path / "o"), "--update-lock"]) == 0
    assert main(["plan", policy, "--limit", "40", "--out", str(tmp_path / "o")]) == 0


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
EXPERT = ["--data", str(FIXTURES / "expert.jsonl"),
          "--columns", "prompt=question,a=answer_a,b=answer_b,label=overall_preference",
          "--label-a=-1", "--label-b=1", "--label-tie=0"]
WORDS = "concept v = metric words;\nblock concept v;\n"


@pytest.mark.parametrize("args,rows,reasons", [
    (EXPERT, (6, 4), {"missing_field": 1, "tie": 1}),
    (["--data", str(FIXTURES / "renamed.csv"), "--columns", "prompt=p,chosen=good,rejected=bad"], (3, 2),
     {"identical": 1}),
    (["--data", str(FIXTURES / "rated.json")], (3, 2), {"tie": 1}),  # its mapping is in rated.json.ethos.toml
])
def test_plan_reads_mapped_data_and_records_the_mapping(tmp_path, ethos_cache, capsys, args, rows, reasons):
    policy = write(tmp_path, WORDS)
    excluded = tmp_path / "excluded.jsonl"
    assert main(["plan", policy, *args, "--out", str(tmp_path / "o"), "--json", "--excluded", str(excluded)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["rows"]["input"], doc["rows"]["usable"]) == rows
    assert doc["rows"]["excluded_reasons"] == reasons
    assert doc["data"]["mapping"]["columns"]["prompt"] in ("question", "p")
    assert doc["data"]["split"] is None and doc["data"]["subset"] is None
    listed = [json.loads(x) for x in excluded.read_text().splitlines()]
    assert sorted(r["reason"] for r in listed) == sorted(r for r, n in reasons.items() for _ in range(n))
    assert all(r["line"] >= 1 for r in listed)


def test_a_bad_mapping_is_a_usage_error_listing_the_columns(tmp_path, ethos_cache, capsys):
    policy = write(tmp_path, WORDS)
    args = ["--data", str(FIXTURES / "expert.jsonl"), "--columns",
            "prompt=question,a=answer_a,b=answer_b,label=preference", "--label-a=-1", "--label-b=1"]
    assert main(["plan", policy, *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ethos plan: error: ")
    assert all(f"'{c}'" in err for c in ("question", "answer_a", "answer_b", "overall_preference"))


def test_most_rows_excluded_warns_and_all_excluded_fails_after_listing_them(tmp_path, ethos_cache, capsys):
    policy = write(tmp_path, WORDS)
    data = tmp_path / "d.jsonl"
    good = [{"prompt": f"q{i}", "chosen": "a long and helpful answer " * (i + 1), "rejected": "no"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"prompt": "x", "chosen": "s", "rejected": "s"}\n' * 5)
    assert main(["plan", policy, "--data", str(data), "--out", str(tmp_path / "o")]) in (0, 3)
    err = capsys.readouterr().err
    assert "ethos plan: warning: " in err and "most input rows excluded: 5 of 9" in err
    assert "list them with --excluded FILE" in err
    data.write_text('{"prompt": "x", "chosen": "s", "rejected": "s"}\n' * 3)
    excluded = tmp_path / "ex.jsonl"
    assert main(["apply", policy, "--data", str(data), "--out", str(tmp_path / "a"), "--excluded", str(excluded)]) == 1
    err = capsys.readouterr().err
    assert "all 3 input rows were excluded (identical 3); nothing to apply; listed in" in err
    assert [json.loads(x)["line"] for x in excluded.read_text().splitlines()] == [1, 2, 3]
    assert not (tmp_path / "a" / "dataset.parquet").exists()


def test_a_killed_apply_leaves_a_folder_train_refuses_and_no_temporary_files(tmp_path, ethos_cache, capsys,
                                                                              monkeypatch):
    from ethos.runtime import apply as apply_mod
    from ethos.runtime.outputs import MARKER

    policy = write(tmp_path, WORDS)
    out = tmp_path / "a"
    assert main(["apply", policy, "--limit", "60", "--out", str(out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["command"] == "apply" and set(marker["files"]) == set(apply_mod.FILES)
    (out / ".dataset.parquet.x1y2.tmp").write_bytes(b"left by a SIGKILL")  # a writer killed earlier

    real = apply_mod.jsonl_text
    calls = []

    def dies_on_the_second_file(table):
        calls.append(1)
        if len(calls) == 2:  # dataset.parquet and dataset.jsonl are new, the rest are the old run's
            raise KeyboardInterrupt
        return real(table)

    monkeypatch.setattr(apply_mod, "jsonl_text", dies_on_the_second_file)
    assert main(["apply", policy, "--limit", "50", "--out", str(out)]) == 130
    capsys.readouterr()
    assert not (out / MARKER).exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", str(out), "--out", str(tmp_path / "run"), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "is incomplete: an `ethos apply` into it did not finish" in err and "run `ethos apply`" in err
    monkeypatch.undo()
    assert main(["apply", policy, "--limit", "50", "--out", str(out)]) == 0
    from ethos.runtime.apply import read_folder

    plan, config, table = read_folder(out)
    assert table.num_rows == len(pd.read_parquet(out / "dataset.parquet")) and config["dataset"] == "dataset.parquet"


def test_a_plan_folder_is_marked_complete_last(tmp_path, ethos_cache, capsys, monkeypatch):
    from ethos.runtime import io as io_mod
    from ethos.runtime.outputs import MARKER, IncompleteOutput, check_complete

    policy = write(tmp_path, WORDS)
    out = tmp_path / "o"
    assert main(["plan", policy, "--limit", "40", "--out", str(out)]) == 0
    # the reports and, per concept a rule names, its trace page (linked from plan.html)
    assert set(check_complete(out, "plan")["files"]) == {"plan.json", "plan.md", "plan.html", "trace-v.html"}
    real = io_mod.os.replace

    def killed_at_plan_md(src, dst):
        if str(dst).endswith("plan.md"):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", killed_at_plan_md)
    assert main(["plan", policy, "--limit", "30", "--out", str(out)]) == 130
    monkeypatch.undo()
    assert not (out / MARKER).exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(IncompleteOutput, match="did not finish"):
        check_complete(out, "plan")


def test_amplify_on_a_concept_the_data_teaches_less_of_warns_and_encourage_does_what_it_says(tmp_path, ethos_cache,
                                                                                             capsys):
    """self_reference (first-person words): on the shipped sample the preferred replies say "I" less
    (α < 0), so amplifying teaches even less of it; encouraging teaches more."""
    amplify = write(tmp_path, "amplify concept self_reference by 2.0;\n", "a.ethos")
    assert main(["plan", amplify, "--out", str(tmp_path / "a"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (c,) = doc["concepts"]
    assert c["alpha_before_ci"][1] < 0 and c["alpha_after"] < c["alpha_before"]  # even less
    (warning,) = [w for w in doc["warnings"] if "amplifying teaches even less" in w]
    assert "the data teaches less self_reference" in warning and "`encourage concept self_reference;`" in warning

    encourage = write(tmp_path, "encourage concept self_reference;\ndiscourage concept hedging by 0.3 via loss;\n",
                      "e.ethos")
    assert main(["plan", encourage, "--out", str(tmp_path / "e"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    concepts = {c["name"]: c for c in doc["concepts"]}
    s, h = concepts["self_reference"], concepts["hedging"]
    assert s["alpha_after"] - s["alpha_before"] > 0  # more self-reference, whatever the data teaches
    assert s["alpha_target"] == pytest.approx(-s["alpha_before"]) and s["factor"] == pytest.approx(-1.0)
    assert s["verdict"] == "on target" and s["on_target"] is True
    assert h["alpha_target"] == pytest.approx(-0.3) and h["alpha_after"] == pytest.approx(-0.3, abs=0.05)
    assert not any("amplifying" in w for w in doc["warnings"])
    by_concept = {i["concept"]: i for i in doc["interventions"]}
    assert by_concept["self_reference"]["direction"] == 1 and by_concept["hedging"]["direction"] == -1
    assert by_concept["hedging"]["target"] == pytest.approx(-0.3)


def test_on_target_is_judged_with_the_interval_width(tmp_path, ethos_cache, capsys):
    """On 40 pairs the interval of α′ for a blocked weak concept holds both 0 and α: "uncertain",
    not "on target"; on the sample's strongest signal with more pairs the block is resolved."""
    policy = write(tmp_path, "concept v = metric words;\nblock concept v;\nblock concept hedging;\n")
    assert main(["plan", policy, "--limit", "40", "--out", str(tmp_path / "o"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for c in doc["concepts"]:
        lo, hi = c["alpha_after_ci"]
        both = lo <= c["alpha_before"] <= hi and lo <= c["alpha_target"] <= hi
        assert c["verdict"] == ("uncertain" if both else "on target" if lo <= c["alpha_target"] <= hi else "off target")
        assert c["on_target"] is {"on target": True, "off target": False}.get(c["verdict"])
    assert any(c["verdict"] == "uncertain" for c in doc["concepts"])
    assert any("too few pairs to tell" in w for w in doc["warnings"])
    assert main(["plan", policy, "--out", str(tmp_path / "o"), "--json"]) == 0
    v = next(c for c in json.loads(capsys.readouterr().out)["concepts"] if c["name"] == "v")
    assert v["verdict"] == "on target"


def test_the_headline_says_kept_as_expect_pairs_kept_means_it(tmp_path, ethos_cache, capsys):
    policy = write(tmp_path, WORDS + "dampen concept hedging by 0.5 via filter;\nexpect pairs kept >= 0.5;\n")
    assert main(["plan", policy, "--limit", "120", "--out", str(tmp_path / "o"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    r = doc["rows"]
    kept = r["kept"] + r["reweighted"] + r["relabelled"]  # the fate "kept" is a pair no rule changed
    assert doc["expectations"][0]["value"] == pytest.approx(kept / r["usable"])
    assert main(["plan", policy, "--limit", "120", "--out", str(tmp_path / "o")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"Plan: {kept:,} of 120 pairs kept ({r['kept']:,} unchanged, {r['reweighted']:,} "
                           f"reweighted, {r['relabelled']:,} relabelled), {r['excluded']:,} excluded; ")


def test_a_separated_concept_is_still_shaped_with_firths_estimate(tmp_path, ethos_cache, capsys):
    """Wherever the phrase differs, the chosen reply has it: the MLE of α is infinite. A rule on it
    must still act (Firth's penalised α), say so, and its check must find α′ = k·α."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(80):
        words = " ".join(rng.choice(["sure", "here", "is", "the", "answer", "to", "that", "maybe", "not"], 6 + i % 7))
        other = " ".join(rng.choice(["ok", "fine", "so", "it", "goes", "like", "this", "well"], 5 + i % 5))
        chosen = ("Great question! " if i % 2 == 0 else "") + words
        rows.append({"prompt": f"question {i}?", "chosen": chosen, "rejected": other})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "phrase.txt").write_text("great question\n")
    for rule, offsets in (("block concept phrase;", True), ("block concept phrase via data;", False),
                          ("dampen concept phrase by 0.5;", True)):
        policy = write(tmp_path, f'concept phrase = lexicon "phrase.txt";\n{rule}\n')
        rc = main(["plan", policy, "--data", str(data), "--out", str(tmp_path / "o"), "--json"])
        assert rc == 0, capsys.readouterr().err
        doc = json.loads(capsys.readouterr().out)
        (c,) = doc["concepts"]
        # the audit's MLE does not exist; the plan's α before is Firth's, with its CI, and says so
        assert "separation" in c["note"] and c["alpha_estimator"] == "firth"
        assert c["alpha_before"] > 0 and c["alpha_before_ci"][0] < c["alpha_before"] < c["alpha_before_ci"][1]
        md = (tmp_path / "o" / "plan.md").read_text()
        assert f"{c['alpha_before']:+.2f}" in md and "ᶠ" in md and "Firth's penalised estimate, before and after" in md
        (w,) = [w for w in doc["warnings"] if "Firth" in w]
        assert "concept 'phrase'" in w and ("`via loss` can" in w) == (not offsets)
        if offsets:  # the offset explains the phrase in the 40 pairs it differs in, and the check holds
            assert doc["margin_offsets"]["pairs"] == 40 and doc["margin_offsets"]["min"] > 0
            # the target is k times Firth's α (not k times a missing α), and the check reaches it
            k = 0.5 if rule.startswith("dampen") else 0.0
            assert c["alpha_target"] == pytest.approx(k * c["alpha_before"])
            assert c["alpha_after"] == pytest.approx(k * c["alpha_before"], abs=1e-6)
            # 80 pairs: halfway may be within the CI of both the target and α (uncertain), never off
            assert c["verdict"] == ("on target" if k == 0 else "uncertain")

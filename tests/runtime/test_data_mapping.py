"""Column mappings (issue 12): any pairwise or rated layout read by naming its columns, on the
call or in a ``<data>.ethos.toml`` file beside the data; every row still accounted for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ethos.runtime.data import (
    ColumnMapping,
    DataError,
    LoadResult,
    Message,
    build_mapping,
    load_pairs,
    mapping_file_for,
    parse_columns,
)


@pytest.fixture(autouse=True)
def hf_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def accounted(result: LoadResult) -> dict[str, Any]:
    counts = result.counts()
    assert counts["usable"] + sum(counts["excluded"].values()) == counts["input"] == result.input_rows
    return counts


LABELLED = "prompt=question,a=answer_a,b=answer_b,label=overall_preference"


def expert_rows() -> list[dict[str, Any]]:
    """An expert-annotated pairwise set: -1 = answer_a better, 1 = answer_b better, 0 = tie."""
    def row(i: int, label: Any, **extra: Any) -> dict[str, Any]:
        return {"question": f"Q{i}?", "answer_a": f"a{i}", "answer_b": f"b{i}", "overall_preference": label, "id": i, **extra}

    return [row(0, -1), row(1, 1), row(2, 0), row(3, "-1"), row(4, 1.0), row(5, 2), row(6, None), row(7, "b")]


def test_a_label_column_with_minus_one_and_one(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "expert.jsonl", expert_rows())
    result = load_pairs(path, columns=LABELLED, label_a=-1, label_b="1", label_tie=0)
    assert result.format == "pairwise"
    assert accounted(result) == {"input": 8, "usable": 4, "excluded": {"missing_field": 3, "tie": 1}}
    assert [(p.id, p.chosen, p.rejected) for p in result.pairs] == [
        ("0", "a0", "b0"), ("1", "b1", "a1"), ("3", "a3", "b3"), ("4", "b4", "a4")]
    assert result.pairs[0].prompt == (Message("user", "Q0?"),)
    assert result.pairs[0].meta == {"overall_preference": -1, "id": 0}  # the original side stays traceable
    assert [(e.row, e.reason) for e in result.exclusions] == [(2, "tie"), (5, "missing_field"), (6, "missing_field"), (7, "missing_field")]
    assert "not one of the label values a=-1, b=1, tie=0" in result.exclusions[1].detail
    # the mapping is part of the result, as plain JSON values (numeric text became numbers)
    assert result.mapping == {
        "columns": {"prompt": "question", "a": "answer_a", "b": "answer_b", "label": "overall_preference"},
        "labels": {"a": -1, "b": 1, "tie": 0},
        "origin": "arguments",
    }
    assert json.loads(json.dumps(result.mapping)) == result.mapping
    # without a tie value, a 0 is just an unknown label
    assert accounted(load_pairs(path, columns=LABELLED, label_a=-1, label_b=1))["excluded"] == {"missing_field": 4}


def test_the_same_labels_from_csv_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r for r in expert_rows() if isinstance(r["overall_preference"], int) or r["overall_preference"] is None]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    csv_lines = ["question,answer_a,answer_b,overall_preference,id"]
    csv_lines += [f"{r['question']},{r['answer_a']},{r['answer_b']},{'' if r['overall_preference'] is None else r['overall_preference']},{r['id']}" for r in rows]
    (tmp_path / "e.csv").write_text("\n".join(csv_lines) + "\n", encoding="utf-8")
    results = [load_pairs(tmp_path / name, columns=LABELLED, label_a=-1, label_b=1, label_tie=0) for name in ("e.parquet", "e.csv")]
    assert results[0].counts() == results[1].counts() == {"input": 5, "usable": 2, "excluded": {"missing_field": 2, "tie": 1}}
    assert results[0].pairs == results[1].pairs


def test_chosen_and_rejected_under_other_names(tmp_path: Path) -> None:
    rows = [
        {"p": "Say hi.", "good": "Hi!", "bad": "No.", "source": "x"},
        {"p": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sum?"}], "good": [{"role": "assistant", "content": "2"}], "bad": "3"},
        {"p": "Q", "good": "same", "bad": "same"},
        {"p": "Q", "good": "yes"},
    ]
    result = load_pairs(write_jsonl(tmp_path / "cr.jsonl", rows), columns="prompt=p, chosen=good, rejected=bad,")
    assert result.format == "trl"
    assert accounted(result) == {"input": 4, "usable": 2, "excluded": {"identical": 1, "missing_field": 1}}
    assert result.pairs[0].meta == {"source": "x"}
    assert result.pairs[1].prompt == (Message("system", "Be brief."), Message("user", "Sum?"))
    assert "missing field 'bad'" in result.exclusions[1].detail
    # without a prompt column the two are hh-rlhf transcripts
    transcripts = [{"good": "\n\nHuman: Hi\n\nAssistant: Hello", "bad": "\n\nHuman: Hi\n\nAssistant: Go"}]
    result = load_pairs(write_jsonl(tmp_path / "t.jsonl", transcripts), columns={"chosen": "good", "rejected": "bad"})
    assert result.format == "hh-rlhf"
    assert (result.pairs[0].prompt, result.pairs[0].chosen) == ((Message("user", "Hi"),), "Hello")


def test_rated_responses_higher_score_wins(tmp_path: Path) -> None:
    rows = [
        {"p": "Q0", "r1": "x0", "r2": "y0", "s1": 4, "s2": 2},
        {"p": "Q1", "r1": "x1", "r2": "y1", "s1": 1.5, "s2": "7"},
        {"p": "Q2", "r1": "x2", "r2": "y2", "s1": 3, "s2": 3.0},
        {"p": "Q3", "r1": "x3", "r2": "y3", "s1": "good", "s2": 1},
        {"p": "Q4", "r1": "x4", "r2": "y4", "s1": None, "s2": 1},
        {"p": "Q5", "r1": "x5", "r2": "y5", "s1": True, "s2": 1},
        {"p": "Q6", "r1": "x6", "r2": "y6", "s1": float("nan"), "s2": 1},
    ]
    path = tmp_path / "rated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # NaN as JSON's NaN
    result = load_pairs(path, columns="prompt=p,a=r1,b=r2,score_a=s1,score_b=s2")
    assert result.format == "rated"
    assert accounted(result) == {"input": 7, "usable": 2, "excluded": {"missing_field": 4, "tie": 1}}
    assert [(p.chosen, p.rejected) for p in result.pairs] == [("x0", "y0"), ("y1", "x1")]
    tie = result.exclusions[0]
    assert (tie.row, tie.reason) == (2, "tie") and "are equal" in tie.detail
    assert result.pairs[0].meta == {"s1": 4, "s2": 2}


def test_instruction_and_input_columns(tmp_path: Path) -> None:
    rows = [{"ins": "Translate.", "ctx": "chat", "x": "cat", "y": "dog", "win": "A"},
            {"ins": "Say hi.", "ctx": "  ", "x": "hi", "y": "yo", "win": "b"}]
    result = load_pairs(write_jsonl(tmp_path / "i.jsonl", rows), columns="prompt=ins,input=ctx,a=x,b=y,label=win",
                        label_a="a", label_b="B")
    assert [p.prompt for p in result.pairs] == [(Message("user", "Translate.\n\nchat"),), (Message("user", "Say hi."),)]
    assert [p.chosen for p in result.pairs] == ["cat", "yo"]  # text labels compare case-insensitively


def test_the_toml_file_beside_the_data(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "expert.jsonl", expert_rows())
    toml = mapping_file_for(path)
    assert toml == tmp_path / "expert.jsonl.ethos.toml"
    toml.write_text(
        "# how to read expert.jsonl\n[columns]\nprompt = \"question\"\na = \"answer_a\"\nb = \"answer_b\"\n"
        "label = \"overall_preference\"\n\n[labels]\na = -1\nb = 1\ntie = 0\n",
        encoding="utf-8",
    )
    from_file = load_pairs(path)
    given = load_pairs(path, columns=LABELLED, label_a="-1", label_b="1", label_tie="0", mapping_file=False)
    assert from_file.pairs == given.pairs and from_file.counts() == given.counts()
    assert from_file.mapping == {**given.mapping, "origin": str(toml)}  # type: ignore[dict-item]
    assert from_file.fingerprint == given.fingerprint  # the mapping, not where it came from
    # the mapping is part of the fingerprint; the file is ignored when columns are given
    plain = load_pairs(path, columns="prompt=question,chosen=answer_a,rejected=answer_b")
    assert plain.counts()["usable"] == 8 and plain.fingerprint != given.fingerprint
    assert plain.mapping is not None and plain.mapping["origin"] == "arguments"
    # a saved datasets folder: <folder>.ethos.toml beside it
    assert mapping_file_for(tmp_path / "saved") == tmp_path / "saved.ethos.toml"


def test_a_mapping_that_does_not_fit_is_a_usage_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "expert.jsonl", expert_rows())
    with pytest.raises(DataError) as info:
        load_pairs(path, columns="prompt=question,a=answer_a,b=answer_b,label=preference", label_a=-1, label_b=1)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "'preference', not a column of the data" in message
    assert "its columns are: 'question', 'answer_a', 'answer_b', 'overall_preference', 'id'" in message
    bad: list[tuple[dict[str, Any], str]] = [
        ({"columns": "prompt=question,answer=answer_a"}, "unknown role 'answer'"),
        ({"columns": "prompt=question,a=answer_a"}, "do not fit together"),
        ({"columns": "chosen=answer_a,rejected=answer_b,a=answer_a"}, "do not fit together"),
        ({"columns": LABELLED}, "needs the values that mean a and b"),
        ({"columns": LABELLED, "label_a": 1, "label_b": 1.0}, "share a label value"),
        ({"columns": "chosen=answer_a,rejected=answer_b", "label_a": 1}, "only for a mapping with a 'label' column"),
        ({"label_a": -1, "label_b": 1}, "need a column mapping"),
        ({"columns": "prompt=question,chosen=answer_a,rejected=answer_a"}, "mapped to two roles"),
        ({"columns": "prompt question"}, "is not role=column"),
        ({"columns": "prompt=a,prompt=b"}, "given twice"),
        ({"columns": ""}, "no columns"),
        ({"columns": "input=id,chosen=answer_a,rejected=answer_b"}, "'input' needs a 'prompt'"),
        ({"columns": LABELLED, "label_a": [1], "label_b": 2}, "must be text, a number or a boolean"),
    ]
    for kwargs, expected in bad:
        with pytest.raises(DataError, match=expected) as info:
            load_pairs(path, **kwargs)
        assert info.value.exit_code == 2, kwargs
    toml = mapping_file_for(path)
    for text, expected in (
        ("[columns\n", "not valid TOML"),
        ("columns = 3\n", "needs a \\[columns\\] table"),
        ("[columns]\nchosen = \"answer_a\"\nrejected = \"answer_b\"\n[extra]\n", "unknown key 'extra'"),
        ("[columns]\nchosen = 1\nrejected = \"answer_b\"\n", "must be a non-empty text"),
        ("[columns]\nchosen = \"answer_a\"\nrejected = \"answer_b\"\n[labels]\nwinner = 1\n", "holds a, b and tie"),
        ("[columns]\nchosen = \"nope\"\nrejected = \"answer_b\"\n", "'nope', not a column"),
    ):
        toml.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=expected) as info:
            load_pairs(path)
        assert info.value.exit_code == 2 and str(toml) in str(info.value), text
    assert load_pairs(path, mapping_file=False, columns="prompt=question,chosen=answer_a,rejected=answer_b").input_rows == 8


def test_mapping_objects_and_strict(tmp_path: Path) -> None:
    assert parse_columns(" prompt = q , a=x,b=y,label=l ,") == {"prompt": "q", "a": "x", "b": "y", "label": "l"}
    mapping = build_mapping("prompt=question,a=answer_a,b=answer_b,label=overall_preference", label_a="-1", label_b="1")
    assert isinstance(mapping, ColumnMapping) and mapping.shape == "label" and mapping.labels == {"a": -1, "b": 1}
    path = write_jsonl(tmp_path / "expert.jsonl", expert_rows())
    assert load_pairs(path, columns=mapping).counts()["usable"] == 4
    with pytest.raises(DataError, match=r"expert\.jsonl: line 3: tie: field 'overall_preference' is 0: a tie"):
        load_pairs(path, columns=LABELLED, label_a=-1, label_b=1, label_tie=0, strict=True)


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "data"


def test_committed_mapping_fixtures() -> None:
    """The three layouts of issue 12, as committed files (the command-line tests read them too)."""
    expert = load_pairs(FIXTURES / "expert.jsonl", columns=LABELLED, label_a="-1", label_b="1", label_tie="0")
    assert expert.format == "pairwise"
    assert accounted(expert) == {"input": 6, "usable": 4, "excluded": {"missing_field": 1, "tie": 1}}
    assert [(p.chosen, p.rejected) for p in expert.pairs][:2] == [("Red.", "Purple."), ("4", "5")]
    renamed = load_pairs(FIXTURES / "renamed.csv", columns="prompt=p,chosen=good,rejected=bad")
    assert accounted(renamed) == {"input": 3, "usable": 2, "excluded": {"identical": 1}}
    assert renamed.pairs[1].chosen == "1, 2, 3" and renamed.pairs[1].meta == {"source": "b"}
    assert [e.line for e in renamed.exclusions] == [4]
    # rated.json has its mapping beside it: rated.json.ethos.toml
    rated = load_pairs(FIXTURES / "rated.json")
    assert rated.format == "rated" and rated.mapping is not None
    assert rated.mapping["origin"] == str(FIXTURES / "rated.json.ethos.toml")
    assert accounted(rated) == {"input": 3, "usable": 2, "excluded": {"tie": 1}}
    assert [(p.chosen, p.rejected) for p in rated.pairs] == [("Blue and wide.", "Sky."), ("Apple.", "Rock.")]
    # without a mapping, the expert file is refused with its columns named
    with pytest.raises(DataError, match="'question', 'answer_a', 'answer_b', 'overall_preference' match no known format"):
        load_pairs(FIXTURES / "expert.jsonl")

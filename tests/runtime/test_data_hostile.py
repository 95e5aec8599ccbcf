"""Hostile datasets (issue 18): no internal error, every row accounted for, one bad row is one
excluded row with its line and reason, and a stray-format row excludes only itself."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from ethos.runtime.data import DataError, LoadResult, excluded_rows, load_pairs, write_excluded


@pytest.fixture(autouse=True)
def hf_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


H, A = "\n\nHuman:", "\n\nAssistant:"


def hh_row(i: int) -> dict[str, str]:
    return {"chosen": f"{H} question {i}{A} good answer {i}", "rejected": f"{H} question {i}{A} bad answer {i}"}


def trl_row(i: int) -> dict[str, str]:
    return {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}


def lines(path: Path, items: list[Any], *, newline: bytes = b"\n") -> Path:
    """JSON Lines from objects (dumped) and raw byte strings (written as they are)."""
    raw = [i if isinstance(i, bytes) else json.dumps(i).encode() for i in items]
    path.write_bytes(newline.join(raw) + newline)
    return path


def accounted(result: LoadResult) -> dict[str, Any]:
    """The counts, after checking that every input row is a pair or an exclusion, exactly once."""
    counts = result.counts()
    assert counts["usable"] + sum(counts["excluded"].values()) == counts["input"] == result.input_rows
    rows = sorted([int(p.id) for p in result.pairs] + [e.row for e in result.exclusions])
    assert rows == list(range(result.input_rows))
    for e in result.exclusions:
        assert e.reason and e.detail and len(e.preview) <= 200
        assert e.line is None or e.line >= 1
    return counts


# --------------------------------------------------------------------------- the format vote


@pytest.mark.parametrize("stray_at", [0, 100, 200])
@pytest.mark.parametrize(
    "stray",
    [
        {**hh_row(-1), "prompt": None},  # a `prompt` key, even null
        {**hh_row(-1), "prompt": "a trl-shaped row"},
        trl_row(-1),
        {"prompt": "Q", "response_a": "x", "response_b": "y", "label": "a"},
    ],
)
def test_a_stray_row_excludes_only_itself(tmp_path: Path, stray: dict[str, Any], stray_at: int) -> None:
    rows: list[Any] = [hh_row(i) for i in range(200)]
    rows.insert(stray_at, stray)
    result = load_pairs(lines(tmp_path / "mixed.jsonl", rows))
    assert result.format == "hh-rlhf"
    assert accounted(result) == {"input": 201, "usable": 200, "excluded": {"format_mismatch": 1}}
    (exclusion,) = result.exclusions
    assert (exclusion.row, exclusion.line) == (stray_at, stray_at + 1)
    assert "hh-rlhf" in exclusion.detail and "200 of 201" in exclusion.detail


def test_the_format_vote_goes_to_the_majority_and_a_tie_to_the_first_row(tmp_path: Path) -> None:
    # trl rows outnumber hh-rlhf rows: trl wins although the file starts with hh-rlhf
    result = load_pairs(lines(tmp_path / "m.jsonl", [hh_row(0), trl_row(1), trl_row(2)]))
    assert result.format == "trl"
    assert [(e.row, e.reason) for e in result.exclusions] == [(0, "format_mismatch")]
    # one each: the first row's format
    for first, second, fmt in ((hh_row(0), trl_row(1), "hh-rlhf"), (trl_row(0), hh_row(1), "trl")):
        result = load_pairs(lines(tmp_path / "t.jsonl", [first, second]))
        assert result.format == fmt
        assert [(e.row, e.reason) for e in result.exclusions] == [(1, "format_mismatch")]
        assert result.alarm is None  # 1 of 2 is not "most"


def test_rows_that_fit_no_format_are_read_with_the_files_format(tmp_path: Path) -> None:
    rows = [hh_row(0), {"chosen": "only one side"}, {"unrelated": 1}, hh_row(3)]
    result = load_pairs(lines(tmp_path / "n.jsonl", rows))
    assert result.format == "hh-rlhf"
    assert [(e.row, e.reason) for e in result.exclusions] == [(1, "missing_field"), (2, "missing_field")]
    assert "'rejected'" in result.exclusions[0].detail


def test_a_stray_row_in_a_table(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # in a table every row has every column: a null is no value, so the 200 hh-rlhf rows (null
    # prompt) still vote hh-rlhf and only the row with a prompt is a mismatch
    rows = [{**hh_row(i), "prompt": None} for i in range(200)] + [{**hh_row(200), "prompt": "stray"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    result = load_pairs(tmp_path / "t.parquet")
    assert result.format == "hh-rlhf"
    assert accounted(result) == {"input": 201, "usable": 200, "excluded": {"format_mismatch": 1}}
    assert result.exclusions[0].position == "record 201" and result.exclusions[0].line is None


# --------------------------------------------------------------------------- one bad line, one row


def test_every_per_line_failure_is_one_excluded_row(tmp_path: Path) -> None:
    good = [json.dumps(trl_row(i)).encode() for i in range(4)]
    bad = {
        "invalid UTF-8": b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}',
        "lone surrogate": b'{"prompt": "Q", "chosen": "broken \\ud800 emoji", "rejected": "b"}',
        "lone low surrogate in an unused column": b'{"prompt": "Q", "chosen": "a", "rejected": "b", "note": "\\udc00"}',
        "deep nesting": b'{"prompt": "Q", "chosen": "a", "rejected": "b", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        "huge integer": b'{"prompt": "Q", "chosen": "a", "rejected": "b", "n": ' + b"9" * 5000 + b"}",
        "invalid JSON": b'{"prompt": "Q", "chosen": ',
        "not an object": b'"just a string"',
    }
    path = lines(tmp_path / "bad.jsonl", [good[0], *bad.values(), *good[1:]])
    result = load_pairs(path)
    assert accounted(result) == {"input": 11, "usable": 4, "excluded": {"undecodable": 7}}
    assert [e.line for e in result.exclusions] == list(range(2, 9))
    details = [e.detail for e in result.exclusions]
    assert "invalid UTF-8 at byte" in details[0]
    assert "\\ud800" in details[1] and "'chosen'" in details[1]
    assert "\\udc00" in details[2] and "'note'" in details[2]
    assert "nested too deeply" in details[3]
    assert "4300 digits" in details[4]
    assert "invalid JSON" in details[5] and "not an object" in details[6]
    # a valid surrogate pair (an emoji written as two escapes) is text like any other
    ok = load_pairs(lines(tmp_path / "emoji.jsonl", [b'{"prompt": "Q", "chosen": "\\ud83d\\ude00", "rejected": "b"}']))
    assert ok.pairs[0].chosen == "\U0001f600"
    # the loaded pairs are all encodable (the surrogate row never reaches the cache key)
    for pair in result.pairs:
        (pair.chosen + pair.rejected + "".join(m.content for m in pair.prompt)).encode("utf-8")


def test_the_same_failures_inside_a_json_array(tmp_path: Path) -> None:
    elements = [
        json.dumps(trl_row(0)).encode(),
        b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}',  # invalid UTF-8 inside a string
        b'{"prompt": "Q", "chosen": "\\ud800", "rejected": "b"}',
        b'{"prompt": "Q", "chosen": "a", "rejected": "b", "x": ' + b"[" * 100_000 + b'"]]"' + b"]" * 100_000 + b"}",
        b'{"prompt": "Q", "chosen": "a", "rejected": "b", "n": -' + b"1" * 5000 + b"}",
        b"42",
        json.dumps(trl_row(6)).encode(),
    ]
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf[\n" + b",\n".join(elements) + b"\n]\n")
    result = load_pairs(tmp_path / "a.json")
    assert accounted(result) == {"input": 7, "usable": 2, "excluded": {"undecodable": 5}}
    assert [(e.row, e.line) for e in result.exclusions] == [(1, 3), (2, 4), (3, 5), (4, 6), (5, 7)]
    assert "not valid Unicode" in result.exclusions[0].detail
    assert "nested too deeply" in result.exclusions[2].detail
    assert "4300 digits" in result.exclusions[3].detail
    assert "array element 5 is a JSON int" in result.exclusions[4].detail
    assert [p.id for p in result.pairs] == ["0", "6"]
    # --limit stops reading: nothing past the limit is parsed
    assert load_pairs(tmp_path / "a.json", limit=2).counts()["input"] == 2


def test_a_20_mb_row_and_wrong_types(tmp_path: Path) -> None:
    huge = {"prompt": "Q", "chosen": "x" * 20_000_000, "rejected": "no"}
    wrong = [
        {"prompt": "Q", "chosen": 42, "rejected": "no"},
        {"prompt": "Q", "chosen": True, "rejected": "no"},
        {"prompt": "Q", "chosen": {"role": "assistant"}, "rejected": "no"},
        {"prompt": "Q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "rejected": "no"},
        {"prompt": 3.5, "chosen": "yes", "rejected": "no"},
        {"prompt": [{"role": 1, "content": "x"}], "chosen": "yes", "rejected": "no"},
        {"prompt": "Q", "chosen": None, "rejected": "no"},
    ]
    result = load_pairs(lines(tmp_path / "w.jsonl", [huge, *wrong, trl_row(9)]))
    assert accounted(result) == {"input": 9, "usable": 1, "excluded": {"missing_field": 1, "not_text": 6, "too_long": 1}}
    assert result.exclusions[0].reason == "too_long" and len(result.exclusions[0].preview) <= 200
    assert result.alarm == "most"


def test_bom_crlf_and_csv(tmp_path: Path) -> None:
    rows = [trl_row(0), trl_row(1)]
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in rows) + b"\r\n")
    assert accounted(load_pairs(path)) == {"input": 2, "usable": 2, "excluded": {}}
    csv_text = "prompt,chosen,rejected\r\nQ1,\"multi\r\nline\",no\r\nQ2,yes,\r\nQ3,same,same\r\n"
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbf" + csv_text.encode())
    result = load_pairs(tmp_path / "d.csv")
    assert result.format == "trl"
    assert accounted(result) == {"input": 3, "usable": 1, "excluded": {"identical": 1, "missing_field": 1}}
    assert result.pairs[0].chosen == "multi\r\nline"
    assert [e.position for e in result.exclusions] == ["line 4", "line 5"]  # the header is line 1
    # a record with more or fewer fields than the header is one undecodable row, never shifted
    (tmp_path / "ragged.csv").write_text("prompt,chosen,rejected\nQ,a,b,EXTRA\nQ2,a2\nQ3,a3,b3\n", encoding="utf-8")
    result = load_pairs(tmp_path / "ragged.csv")
    assert accounted(result) == {"input": 3, "usable": 1, "excluded": {"undecodable": 2}}
    assert [(e.line, e.detail) for e in result.exclusions] == [
        (2, "4 fields where the header has 3"), (3, "2 fields where the header has 3")]
    assert result.pairs[0].prompt[0].content == "Q3"


def test_whole_file_failures_are_data_errors_naming_the_file(tmp_path: Path) -> None:
    good = b"".join(json.dumps(hh_row(i)).encode() + b"\n" for i in range(2000))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(good)[:-2000])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot read the file after line \d+"):
        load_pairs(tmp_path / "cut.jsonl.gz")
    (tmp_path / "folder").mkdir()
    lines(tmp_path / "folder" / "a.jsonl", [hh_row(0)])
    with pytest.raises(DataError, match="folder: not a dataset folder"):
        load_pairs(tmp_path / "folder")
    for name, content, message in (
        ("one.json", b'{"chosen": "a", "rejected": "b"}', "expected a JSON array of objects, found a JSON object"),
        ("empty.json", b"  \n", "no rows"),
        ("broken.json", b'[{"chosen": "a"}, {"chosen": ', "not valid JSON"),
        ("trailing.json", b'[{"chosen": "a"}] x', "extra data after the array"),
        ("deep.json", b"[" * 100_000, "not valid JSON"),
        ("ragged.csv", b"a,b\n1,2,3,4\n", r"no decodable rows \(1 undecodable\)"),
        ("doubled.csv", b"prompt,chosen,chosen\n1,2,3\n", "names the column 'chosen' twice"),
        ("header-only.csv", b"prompt,chosen,rejected\n", "no rows"),
        ("nothing.csv", b"", "no rows"),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message):
            load_pairs(tmp_path / name)


def test_json_lines_under_a_json_name_with_a_bad_first_line(tmp_path: Path) -> None:
    (tmp_path / "l.json").write_bytes(b'{"prompt": \n' + json.dumps(trl_row(1)).encode() + b"\n")
    result = load_pairs(tmp_path / "l.json")
    assert accounted(result) == {"input": 2, "usable": 1, "excluded": {"undecodable": 1}}
    assert result.exclusions[0].line == 1


# --------------------------------------------------------------------------- alarms and the excluded file


def test_alarm_when_most_or_all_rows_are_excluded(tmp_path: Path) -> None:
    same = {"prompt": "Q", "chosen": "x", "rejected": "x"}
    assert load_pairs(lines(tmp_path / "a.jsonl", [trl_row(0), trl_row(1), same])).alarm is None
    result = load_pairs(lines(tmp_path / "b.jsonl", [trl_row(0), same, same]))
    assert result.alarm == "most"
    assert result.alarm_message() == f"{tmp_path / 'b.jsonl'}: most input rows excluded: 2 of 3 (67%): identical 2"
    result = load_pairs(lines(tmp_path / "c.jsonl", [same, b"{oops"]))
    assert result.alarm == "all"
    assert "every input row excluded: 2 of 2 (100%): identical 1, undecodable 1" in (result.alarm_message() or "")
    assert load_pairs(lines(tmp_path / "d.jsonl", [trl_row(0)])).alarm_message() is None


def test_write_excluded(tmp_path: Path) -> None:
    rows = [trl_row(0), b'{"prompt": "Q", "chosen": "\\ud800", "rejected": "b"}', b"", {"prompt": "Q", "chosen": "x" * 5000, "rejected": "x"}]
    result = load_pairs(lines(tmp_path / "e.jsonl", rows), max_chars=1000)
    out = write_excluded(result, tmp_path / "out" / "excluded.jsonl")
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == list(excluded_rows(result))
    assert [(w["record"], w["line"], w["reason"]) for w in written] == [(2, 2, "undecodable"), (3, 4, "too_long")]
    assert "\\ud800" in written[0]["detail"] and written[0]["preview"].startswith('{"prompt": "Q", "chosen": "\\ud800"')
    assert all(len(w["preview"]) <= 200 for w in written)
    assert written[1]["preview"].startswith('{"prompt": "Q", "chosen": "xxx') and "…" in written[1]["preview"]
    # nothing excluded: an empty file; an unwritable path: a DataError
    assert write_excluded(load_pairs(lines(tmp_path / "f.jsonl", [trl_row(0)])), tmp_path / "none.jsonl").read_text() == ""
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(DataError, match="cannot write the excluded rows"):
        write_excluded(result, tmp_path / "blocker" / "x.jsonl")


def test_a_hostile_matrix_never_raises_anything_but_data_error(tmp_path: Path) -> None:
    """Every file here either loads with every row accounted for or fails with a DataError."""
    cases: dict[str, bytes] = {
        "nul.jsonl": b"\x00\x00\x00\n" + json.dumps(trl_row(0)).encode() + b"\n",
        "only-blank.jsonl": b"\n\r\n   \n",
        "numbers.jsonl": b"1\n2\n3\n",
        "nulls.jsonl": b'{"prompt": null, "chosen": null, "rejected": null}\n',
        "nan.jsonl": b'{"prompt": NaN, "chosen": Infinity, "rejected": -Infinity}\n',
        "keys.jsonl": b'{"": 1, "\\ud800": 2}\n' + json.dumps(hh_row(0)).encode() + b"\n",
        "latin1.json": '[{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}]'.encode("latin-1"),
        "object-array.json": b"[[], {}, null, true]",
        "messages.jsonl": json.dumps({"prompt": [{"role": "user", "content": [{"type": "image"}]}], "chosen": "a", "rejected": "b"}).encode(),
        "labels.jsonl": b"".join(json.dumps({"prompt": "Q", "response_a": "x", "response_b": "y", "label": v}).encode() + b"\n"
                                 for v in ["a", "9" * 5000, 1e308, -0.0, [1], {"a": 1}, "\u00e9", None]),
        "pandalm.jsonl": b"".join(json.dumps({"instruction": "I", "input": 5, "response1": "x", "response2": "y",
                                              "annotator1": v, "annotator2": 1}).encode() + b"\n"
                                  for v in [1, "1", 2.0, "9" * 5000, -1, None]),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        try:
            result = load_pairs(tmp_path / name)
        except DataError as exc:
            assert str(exc).startswith(str(tmp_path / name)), (name, str(exc))
            continue
        accounted(result)
        write_excluded(result, tmp_path / f"{name}.excluded.jsonl")

"""Tests for ethos.runtime.data: file types, formats, exclusion reasons, real data.

Hostile inputs are in test_data_hostile.py, column mappings in test_data_mapping.py, Hub ids in
test_data_hub.py."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ethos.runtime.data import (
    DEFAULT_DATA,
    REASONS,
    DataError,
    Exclusion,
    LoadResult,
    Message,
    Pair,
    load_pairs,
    messages_to_text,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "data"


def _shared_data() -> Path | None:
    """The project's shared real data (``shared/data``), if this checkout can see it."""
    here = Path(__file__).resolve()
    candidates = [os.environ.get("ETHOS_SHARED_DATA"), here.parents[2] / "shared" / "data", here.parents[3] / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "README.md").is_file():
            return Path(candidate)
    return None


SHARED = _shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared/data (real datasets) not available")


@pytest.fixture(autouse=True)
def hf_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep ``datasets`` away from the user's cache; tests check nothing lands here."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


# --------------------------------------------------------------------------- writers


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_jsonl_gz(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), mtime=0))
    return path


def write_json(path: Path, rows: list[Any]) -> Path:
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_saved(path: Path, rows: list[dict[str, Any]]) -> Path:
    import datasets

    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    finally:
        datasets.enable_progress_bars()
    return path


WRITERS: dict[str, tuple[str, Callable[[Path, list[Any]], Path]]] = {
    "jsonl": ("d.jsonl", write_jsonl),
    "jsonl.gz": ("d.jsonl.gz", write_jsonl_gz),
    "json": ("d.json", write_json),
    "parquet": ("d.parquet", write_parquet),
    "csv": ("d.csv", write_csv),
    "saved": ("saved", write_saved),
}

H, A = "\n\nHuman:", "\n\nAssistant:"


def hh(*turns: str) -> str:
    """An hh-rlhf transcript from alternating Human/Assistant turns."""
    return "".join(f"{H if i % 2 == 0 else A} {t}" for i, t in enumerate(turns))


def load_rows(tmp_path: Path, rows: list[Any], **kwargs: Any) -> LoadResult:
    return load_pairs(write_jsonl(tmp_path / "rows.jsonl", rows), **kwargs)


def only_pair(result: LoadResult) -> Pair:
    assert result.exclusions == [], result.exclusions
    assert len(result.pairs) == 1
    return result.pairs[0]


def reasons(result: LoadResult) -> list[str]:
    return [e.reason for e in result.exclusions]


def user(text: str) -> Message:
    return Message("user", text)


# --------------------------------------------------------------------------- file types

HH_ROWS = [
    {"chosen": hh("Hi there", "Hello! How can I help?"), "rejected": hh("Hi there", "Go away.")},
    {"chosen": hh("What is 2+2?", "4", "And 3+3?", "6"), "rejected": hh("What is 2+2?", "4", "And 3+3?", "7")},
    {"chosen": hh("Same", "same"), "rejected": hh("Same", "same")},  # identical
]


# where HH_ROWS[2] starts: JSON Lines line 3; the indented JSON array's third element, line 10;
# CSV line 28 (after the header and rows 0 and 1, whose quoted transcripts span 9 and 17 lines);
# Parquet and datasets folders have records, not lines
HH_ROW_2_LINE = {"jsonl": 3, "jsonl.gz": 3, "json": 10, "csv": 28, "parquet": None, "saved": None}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_file_type_gives_the_same_pairs(tmp_path: Path, kind: str) -> None:
    name, writer = WRITERS[kind]
    result = load_pairs(writer(tmp_path / name, HH_ROWS))
    assert result.format == "hh-rlhf"
    assert result.source == str(tmp_path / name)
    assert result.input_rows == 3
    assert result.pairs == [
        Pair("0", (user("Hi there"),), "Hello! How can I help?", "Go away."),
        Pair("1", (user("What is 2+2?"), Message("assistant", "4"), user("And 3+3?")), "6", "7"),
    ]
    line = HH_ROW_2_LINE[kind]
    assert result.exclusions == [Exclusion(2, "identical", "chosen and rejected are the same text", line)]
    assert result.exclusions[0].position == (f"line {line}" if line else "record 3")
    assert "Human: Same" in result.exclusions[0].preview
    assert result.counts() == {"input": 3, "usable": 2, "excluded": {"identical": 1}}
    assert result.mapping is None and result.alarm is None


@pytest.mark.parametrize("kind", ["parquet", "csv", "saved"])
def test_datasets_backed_loads_leave_no_cache(tmp_path: Path, hf_home: Path, kind: str) -> None:
    name, writer = WRITERS[kind]
    path = writer(tmp_path / name, HH_ROWS)
    before = sorted(p for p in Path(path).rglob("*")) if Path(path).is_dir() else None
    load_pairs(path)
    assert list(hf_home.rglob("*")) == []
    if before is not None:  # load_from_disk must not write into the dataset folder either
        assert sorted(Path(path).rglob("*")) == before


def test_trl_message_lists_through_parquet_and_saved_folder(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon."}],
        }
    ]
    expected = Pair("0", (Message("system", "Be brief."), user("Capital of France?")), "Paris.", "Lyon.")
    for name, writer in (("c.parquet", write_parquet), ("c_saved", write_saved), ("c.jsonl", write_jsonl)):
        result = load_pairs(writer(tmp_path / name, rows))
        assert result.format == "trl"
        assert only_pair(result) == expected


def test_saved_datasetdict_with_one_split_and_with_several(tmp_path: Path) -> None:
    import datasets

    one = datasets.DatasetDict({"test": datasets.Dataset.from_list(HH_ROWS)})
    two = datasets.DatasetDict({"train": datasets.Dataset.from_list(HH_ROWS), "test": datasets.Dataset.from_list(HH_ROWS)})
    datasets.disable_progress_bars()
    try:
        one.save_to_disk(str(tmp_path / "one"))
        two.save_to_disk(str(tmp_path / "two"))
    finally:
        datasets.enable_progress_bars()
    assert load_pairs(tmp_path / "one").counts()["usable"] == 2
    with pytest.raises(DataError, match="splits train, test"):
        load_pairs(tmp_path / "two")
    assert load_pairs(tmp_path / "two" / "train").input_rows == 3
    assert load_pairs(tmp_path / "two", split="test").split == "test"
    assert load_pairs(tmp_path / "two", split="test").counts()["usable"] == 2
    with pytest.raises(DataError, match="no split 'dev'; the splits are train, test") as info:
        load_pairs(tmp_path / "two", split="dev")
    assert info.value.exit_code == 2
    with pytest.raises(DataError, match="a dataset without splits"):
        load_pairs(tmp_path / "two" / "train", split="train")


def test_json_file_holding_json_lines_and_a_bom(tmp_path: Path) -> None:
    text = "\ufeff" + "".join(json.dumps(r) + "\n" for r in HH_ROWS)
    (tmp_path / "lines.json").write_text(text, encoding="utf-8")
    (tmp_path / "bom.jsonl").write_text(text, encoding="utf-8")
    for name in ("lines.json", "bom.jsonl"):
        assert load_pairs(tmp_path / name).counts() == {"input": 3, "usable": 2, "excluded": {"identical": 1}}


def test_committed_fixture_files_agree() -> None:
    results = [load_pairs(FIXTURES / name) for name in ("pairwise.csv", "pairwise.json")]
    for result in results:
        assert result.format == "pairwise"
        assert result.counts() == {"input": 4, "usable": 2, "excluded": {"tie": 1, "empty_reply": 1}}
    assert results[0].pairs == results[1].pairs
    assert results[0].pairs[0] == Pair("0", (user("Say hi."),), "Hi!", "No.")


# --------------------------------------------------------------------------- hh-rlhf


def test_hh_prompt_is_common_prefix_cut_at_last_assistant(tmp_path: Path) -> None:
    pair = only_pair(load_rows(tmp_path, [{"chosen": hh("Hi", "Hey  there "), "rejected": hh("Hi", "Hello")}]))
    assert pair.prompt == (user("Hi"),)
    assert (pair.chosen, pair.rejected) == ("Hey  there ", "Hello")  # leading space gone, rest kept
    # replies that share a first word still split at the turn, not mid-reply
    pair = only_pair(load_rows(tmp_path, [{"chosen": hh("Q?", "I think yes"), "rejected": hh("Q?", "I think no")}]))
    assert (pair.chosen, pair.rejected) == ("I think yes", "I think no")


def test_hh_transcripts_diverging_at_an_earlier_turn(tmp_path: Path) -> None:
    # the rejected reply itself goes on with more turns: splitting each side at its own last
    # "\n\nAssistant:" would give two different prompts; the common-prefix rule gives one.
    chosen = hh("Tell me a joke", "Why did the chicken cross the road?")
    rejected = hh("Tell me a joke", "No.", "Please?", "Fine: knock knock.")
    assert chosen[: chosen.rfind(A)] != rejected[: rejected.rfind(A)]
    pair = only_pair(load_rows(tmp_path, [{"chosen": chosen, "rejected": rejected}]))
    assert pair.prompt == (user("Tell me a joke"),)
    assert pair.chosen == "Why did the chicken cross the road?"
    assert pair.rejected == "No." + H + " Please?" + A + " Fine: knock knock."
    assert messages_to_text(pair.prompt) + " " + pair.chosen == chosen
    assert messages_to_text(pair.prompt) + " " + pair.rejected == rejected


def test_hh_without_a_shared_assistant_turn_and_preamble(tmp_path: Path) -> None:
    result = load_rows(
        tmp_path,
        [
            {"chosen": "Human: a", "rejected": "Human: b"},
            {"chosen": "Be kind." + hh("Hi", "Hello"), "rejected": "Be kind." + hh("Hi", "Bye")},
        ],
    )
    assert result.exclusions[0].row == 0 and result.exclusions[0].reason == "missing_field"
    assert result.pairs[0].prompt == (Message("system", "Be kind."), user("Hi"))


def test_trl_implicit_prompt_message_lists(tmp_path: Path) -> None:
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Joke?"}]
    rows = [
        {"chosen": [*convo, {"role": "assistant", "content": "Knock knock."}], "rejected": [*convo, {"role": "assistant", "content": "No."}]},
        {"chosen": [*convo, {"role": "assistant", "content": "x"}], "rejected": convo[:1] + [{"role": "assistant", "content": "y"}, *convo[2:], {"role": "assistant", "content": "z"}]},
    ]
    result = load_rows(tmp_path, rows)
    assert result.format == "trl"
    assert result.pairs == [Pair("0", (user("Hi"), Message("assistant", "Hello"), user("Joke?")), "Knock knock.", "No.")]
    assert reasons(result) == ["not_text"]  # row 1 diverges before the last turn


# --------------------------------------------------------------------------- trl


def test_trl_strings(tmp_path: Path) -> None:
    result = load_rows(tmp_path, [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "source": "x"}])
    assert result.format == "trl"
    pair = only_pair(result)
    assert pair == Pair("0", (user("Capital of France?"),), "Paris.", "Lyon.")
    assert pair.meta == {"source": "x"}
    assert hash(pair) == hash(Pair("0", (user("Capital of France?"),), "Paris.", "Lyon.", {"other": 1}))


def test_trl_messages_with_content_parts(tmp_path: Path) -> None:
    row = {
        "prompt": [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": "Bye.",
    }
    assert only_pair(load_rows(tmp_path, [row])) == Pair("0", (user("Hello there"),), "Hi!", "Bye.")


# --------------------------------------------------------------------------- pairwise, PandaLM


@pytest.mark.parametrize(
    ("names", "label", "side"),
    [
        (("response_a", "response_b"), "a", "a"),
        (("response_a", "response_b"), " B ", "b"),
        (("response_a", "response_b"), "model_a", "a"),
        (("response_a", "response_b"), "response_b", "b"),
        (("response_a", "response_b"), 0, "a"),
        (("response_a", "response_b"), 1, "b"),
        (("answer_a", "answer_b"), "1", "b"),
        (("answer_a", "answer_b"), 0.0, "a"),
        (("response1", "response2"), 1, "a"),
        (("response1", "response2"), 2, "b"),
        (("response1", "response2"), "2", "b"),
        (("response1", "response2"), "response1", "a"),
    ],
)
def test_pairwise_label_values(tmp_path: Path, names: tuple[str, str], label: Any, side: str) -> None:
    for label_field in ("label", "preference", "winner"):
        row = {"prompt": "Q", names[0]: "first", names[1]: "second", label_field: label}
        result = load_rows(tmp_path, [row])
        assert result.format == "pairwise"
        pair = only_pair(result)
        assert (pair.chosen, pair.rejected) == (("first", "second") if side == "a" else ("second", "first"))
        assert pair.meta == {label_field: label}


@pytest.mark.parametrize(
    ("names", "label"),
    [
        (("response_a", "response_b"), "tie"),
        (("response_a", "response_b"), "Tie (bothbad)"),
        (("response_a", "response_b"), "equal"),
        (("response1", "response2"), 0),
    ],
)
def test_pairwise_ties(tmp_path: Path, names: tuple[str, str], label: Any) -> None:
    result = load_rows(tmp_path, [{"question": "Q", names[0]: "x", names[1]: "y", "winner": label}])
    assert reasons(result) == ["tie"]


@pytest.mark.parametrize("label", [2, -1, "c", True, None, [1]])
def test_pairwise_unrecognised_label_is_missing_field(tmp_path: Path, label: Any) -> None:
    result = load_rows(tmp_path, [{"prompt": "Q", "response_a": "x", "response_b": "y", "label": label}])
    assert reasons(result) == ["missing_field"]
    assert "label" in result.exclusions[0].detail


def test_pairwise_instruction_and_input(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate.", "input": "chat", "answer_a": "cat", "answer_b": "dog", "preference": "a"},
        {"instruction": "Say hi.", "input": "  ", "answer_a": "hi", "answer_b": "yo", "preference": "b"},
        {"instruction": "Say hi.", "answer_a": "hi", "answer_b": "yo", "preference": "b"},
    ]
    result = load_rows(tmp_path, rows)
    assert [p.prompt for p in result.pairs] == [(user("Translate.\n\nchat"),), (user("Say hi."),), (user("Say hi."),)]


def pandalm_row(votes: tuple[int, int, int], **extra: Any) -> dict[str, Any]:
    row = {"idx": 7, "instruction": "Fix it.", "input": "teh cat", "response1": "the cat", "response2": "teh cat"}
    row.update({f"annotator{i}": v for i, v in enumerate(votes, start=1)})
    row.update(extra)
    return row


def test_pandalm_majority(tmp_path: Path) -> None:
    rows = [pandalm_row((1, 1, 2)), pandalm_row((2, 0, 2)), pandalm_row((0, 0, 1)), pandalm_row((0, 1, 2)), pandalm_row((1, 1, 1), input="")]
    result = load_pairs(write_json(tmp_path / "p.json", rows))
    assert result.format == "pandalm"
    first, second, last = result.pairs
    assert first.prompt == (user("Fix it.\n\nteh cat"),)
    assert (first.chosen, first.rejected) == ("the cat", "teh cat")
    assert (second.chosen, second.rejected) == ("teh cat", "the cat")
    assert last.prompt == (user("Fix it."),)
    assert first.meta == {"idx": 7, "annotator1": 1, "annotator2": 1, "annotator3": 2}
    assert [(e.row, e.reason) for e in result.exclusions] == [(2, "tie"), (3, "tie")]
    assert "no majority" in result.exclusions[1].detail


def test_pandalm_bad_vote(tmp_path: Path) -> None:
    result = load_rows(tmp_path, [pandalm_row((1, 3, 1)), pandalm_row((1, 1, 1), annotator2=None)])
    assert reasons(result) == ["missing_field", "missing_field"]


# --------------------------------------------------------------------------- exclusions


def test_every_reason_once(tmp_path: Path) -> None:
    good = {"prompt": "Q", "chosen": "yes", "rejected": "no"}
    path = tmp_path / "all.jsonl"
    lines = [
        json.dumps(good).encode(),  # 0 usable
        json.dumps({"prompt": "Q", "chosen": "yes"}).encode(),  # 1 missing_field
        json.dumps({"prompt": "Q", "chosen": "same", "rejected": "same"}).encode(),  # 2 identical
        json.dumps({"prompt": "Q", "chosen": "yes", "rejected": " \n"}).encode(),  # 3 empty_reply
        json.dumps({"prompt": "Q", "chosen": 42, "rejected": "no"}).encode(),  # 4 not_text
        b'{"prompt": "Q", "chosen": "yes", ',  # 5 undecodable: bad JSON
        b'{"prompt": "Q", "chosen": "\xff", "rejected": "no"}',  # 6 undecodable: bad UTF-8
        b"",  # blank: not a row
        b"[1, 2]",  # 7 undecodable: not an object
        json.dumps({"prompt": "Q", "chosen": "y" * 50, "rejected": "no"}).encode(),  # 8 too_long
        json.dumps({"prompt": "Q", "chosen": None, "rejected": "no"}).encode(),  # 9 missing_field (null)
        json.dumps({"prompt": " ", "chosen": "yes", "rejected": "no"}).encode(),  # 10 missing_field (blank prompt)
        json.dumps({"prompt": "Q", "chosen": [], "rejected": "no"}).encode(),  # 11 not_text (no message)
        json.dumps({"chosen": hh("Q", "yes"), "rejected": hh("Q", "no")}).encode(),  # 12 format_mismatch
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load_pairs(path, max_chars=40)
    assert result.input_rows == 13
    assert [p.id for p in result.pairs] == ["0"]
    assert [(e.row, e.reason) for e in result.exclusions] == [
        (1, "missing_field"),
        (2, "identical"),
        (3, "empty_reply"),
        (4, "not_text"),
        (5, "undecodable"),
        (6, "undecodable"),
        (7, "undecodable"),
        (8, "too_long"),
        (9, "missing_field"),
        (10, "missing_field"),
        (11, "not_text"),
        (12, "format_mismatch"),
    ]
    # every exclusion names its file line (from 1; the blank line 8 counts as a line, not a row)
    assert [e.line for e in result.exclusions] == [2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]
    assert result.exclusions[6].position == "line 9"
    assert "invalid UTF-8" in result.exclusions[5].detail and "\ufffd" in result.exclusions[5].preview
    assert "hh-rlhf" in result.exclusions[-1].detail and "trl" in result.exclusions[-1].detail
    counts = result.counts()
    assert counts["excluded"] == {
        "empty_reply": 1, "format_mismatch": 1, "identical": 1, "missing_field": 3, "not_text": 2,
        "too_long": 1, "undecodable": 3,
    }
    assert list(counts["excluded"]) == sorted(counts["excluded"])
    assert counts["usable"] + sum(counts["excluded"].values()) == counts["input"]
    assert {e.reason for e in result.exclusions} | {"tie"} == set(REASONS)  # tie: see pairwise tests


def test_too_long_counts_prompt_and_both_replies(tmp_path: Path) -> None:
    row = {"prompt": "p" * 10, "chosen": "c" * 10, "rejected": "r" * 10}
    assert load_rows(tmp_path, [row], max_chars=30).counts()["usable"] == 1
    assert reasons(load_rows(tmp_path, [row], max_chars=29)) == ["too_long"]
    assert load_rows(tmp_path, [row]).counts()["usable"] == 1  # default 20000


def test_strict_raises_on_first_exclusion(tmp_path: Path) -> None:
    rows = [{"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "Q", "chosen": "a", "rejected": "a"}, {"prompt": "Q"}]
    with pytest.raises(DataError, match=r"rows\.jsonl: line 2: identical"):  # lines count from 1
        load_rows(tmp_path, rows, strict=True)
    with pytest.raises(DataError, match=r"l\.parquet: record 2: identical"):
        load_pairs(write_parquet(tmp_path / "l.parquet", rows), strict=True)
    assert load_rows(tmp_path, rows[:1], strict=True).counts()["usable"] == 1


def test_limit_counts_input_rows(tmp_path: Path) -> None:
    rows = [{"prompt": "Q", "chosen": "a", "rejected": "a" if i % 2 else "b"} for i in range(10)]
    path = write_jsonl(tmp_path / "l.jsonl", rows)
    for limit, expected in ((1, 1), (3, 3), (10, 10), (50, 10), (None, 10)):
        result = load_pairs(path, limit=limit)
        counts = result.counts()
        assert result.input_rows == expected
        assert counts["usable"] + sum(counts["excluded"].values()) == expected
    assert load_pairs(path, limit=3).counts() == {"input": 3, "usable": 2, "excluded": {"identical": 1}}
    parquet = write_parquet(tmp_path / "l.parquet", rows)
    assert load_pairs(parquet, limit=3).counts() == load_pairs(path, limit=3).counts()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="limit"):
            load_pairs(path, limit=bad)


def test_fingerprint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "f.jsonl", HH_ROWS)
    a, b = load_pairs(path), load_pairs(path)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    file_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert a.fingerprint == hashlib.sha256(f"{file_sha}:limit=None:max_chars=20000".encode()).hexdigest()
    assert load_pairs(path, limit=2).fingerprint != a.fingerprint
    write_jsonl(path, HH_ROWS[:2])
    assert load_pairs(path).fingerprint != a.fingerprint
    saved = write_saved(tmp_path / "fs", HH_ROWS)
    assert load_pairs(saved).fingerprint == load_pairs(saved).fingerprint


# --------------------------------------------------------------------------- errors


def test_missing_path_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(DataError, match=r"data\.txt: unsupported file type.*\.parquet"):
        load_pairs(tmp_path / "data.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="folder: not a dataset folder"):
        load_pairs(tmp_path / "folder")


def test_unrecognised_columns_name_columns_and_formats(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q", "answer": "A"}])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    message = str(info.value)
    assert str(path) in message and "'question', 'answer'" in message
    for fmt in ("trl", "hh-rlhf", "pandalm", "pairwise"):
        assert fmt in message
    # a response pair without a label is not pairwise data
    with pytest.raises(DataError, match="match no known format"):
        load_rows(tmp_path, [{"prompt": "Q", "response_a": "x", "response_b": "y"}])


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    with pytest.raises(DataError, match="no rows"):
        load_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "junk.jsonl").write_bytes(b"not json\n{also not\n")
    with pytest.raises(DataError, match=r"no decodable rows \(2 undecodable\)"):
        load_pairs(tmp_path / "junk.jsonl")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        load_pairs(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"chosen": "a"}')
    with pytest.raises(DataError, match="expected a JSON array"):
        load_pairs(tmp_path / "obj.json")
    (tmp_path / "fake.jsonl.gz").write_bytes(b"plain text, not gzip\n")
    with pytest.raises(DataError, match="fake.jsonl.gz: cannot read"):
        load_pairs(tmp_path / "fake.jsonl.gz")
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="fake.parquet: cannot read"):
        load_pairs(tmp_path / "fake.parquet")


# --------------------------------------------------------------------------- real data


def test_embedded_sample() -> None:
    assert DEFAULT_DATA.is_file()
    readme = (DEFAULT_DATA.parent / "README.md").read_text()
    assert hashlib.sha256(DEFAULT_DATA.read_bytes()).hexdigest() in readme
    assert (DEFAULT_DATA.parent / "LICENSE-hh-rlhf.txt").read_text().startswith("MIT License")
    result = load_pairs()
    assert result.source == "embedded sample"
    assert result.format == "hh-rlhf"
    assert result.counts() == {"input": 400, "usable": 399, "excluded": {"empty_reply": 1}}
    assert all(p.prompt and p.prompt[0].role == "user" and p.prompt[-1].role == "user" for p in result.pairs)
    assert load_pairs(limit=10).input_rows == 10


@needs_shared
def test_embedded_sample_is_the_head_of_helpful_base() -> None:
    assert SHARED is not None
    full = gzip.decompress((SHARED / "hh-rlhf" / "helpful-base" / "test.jsonl.gz").read_bytes())
    assert full.startswith(gzip.decompress(DEFAULT_DATA.read_bytes()))
    assert gzip.decompress(DEFAULT_DATA.read_bytes()).count(b"\n") == 400


@needs_shared
@pytest.mark.parametrize(
    ("name", "rows", "excluded", "empty_rows"),
    [
        ("helpful-base", 2354, {"empty_reply": 4, "identical": 2}, [120, 740, 1214, 2063]),
        ("harmless-base", 2312, {"empty_reply": 4}, [86, 516, 925, 1103]),
    ],
)
def test_real_hh_rlhf(name: str, rows: int, excluded: dict[str, int], empty_rows: list[int]) -> None:
    assert SHARED is not None
    path = SHARED / "hh-rlhf" / name / "test.jsonl.gz"
    result = load_pairs(path)
    counts = result.counts()
    assert counts == {"input": rows, "usable": rows - sum(excluded.values()), "excluded": excluded}
    assert [e.row for e in result.exclusions if e.reason == "empty_reply"] == empty_rows
    # the common-prefix rule: in every usable row both transcripts are one shared head, ending
    # with "\n\nAssistant:", followed by the reply; the prompt messages render back to that head
    # except where a turn had spaces around it that the split strips
    raw = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    exact = 0
    for pair in result.pairs:
        row = raw[int(pair.id)]
        heads = set()
        for side, reply in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            assert row[side].endswith(reply)
            heads.add(row[side][: len(row[side]) - len(reply)].rstrip())
        (head,) = heads
        assert head.endswith(A)
        assert pair.prompt[0].role == "user" and {m.role for m in pair.prompt} <= {"user", "assistant"}
        exact += messages_to_text(pair.prompt) == head
    assert exact >= 0.95 * len(result.pairs)


@needs_shared
def test_real_pandalm() -> None:
    assert SHARED is not None
    result = load_pairs(SHARED / "pandalm" / "testset-v1.json")
    counts = result.counts()
    assert result.format == "pandalm"
    assert counts["input"] == 999
    assert counts["usable"] + sum(counts["excluded"].values()) == 999
    # measured: 105 majority-tie rows (as the data README says), 52 rows with an empty
    # response, 6 with a JSON boolean `true` as a response
    assert counts["excluded"] == {"empty_reply": 52, "not_text": 6, "tie": 105}
    assert counts["usable"] == 836

"""Every path a policy names, and the policy file itself, checked as data: each problem is a
diagnostic with its own code, never an exception, never a read that blocks."""

import os

import pytest

from ethos.compiler.compile import MAX_POLICY_BYTES, compile_file, compile_source
from ethos.compiler.errors import render_all
from ethos.compiler.files import MAX_FILE_BYTES


def codes_for(tmp_path, written, kind="lexicon", setup=None):
    folder = tmp_path / "policy"
    folder.mkdir(exist_ok=True)
    if setup:
        setup(folder)
    policy = folder / "p.ethos"
    text = f'concept x = {kind} "{written}";\nblock concept x;\n'
    policy.write_text(text)
    r = compile_file(policy)
    render_all(r.diagnostics)
    assert not r.ok
    return [(d.code, d.summary) for d in r.diagnostics]


@pytest.mark.parametrize("written", ["a" * 10_000, "a/" * 3_000 + "x.txt", "b" * 300 + ".txt", " "])
def test_unusable_paths(tmp_path, written):
    ((code, summary),) = codes_for(tmp_path, written)
    assert code == "E211" and len(summary) < 200


def test_nul_in_path(tmp_path):
    r = compile_source('concept x = lexicon "a\\u0000b";\nblock concept x;', str(tmp_path / "p.ethos"))
    assert [d.code for d in r.diagnostics] in (["E209"], ["E211"])
    r = compile_source('concept x = lexicon "a\0b";\nblock concept x;', str(tmp_path / "p.ethos"))
    assert [d.code for d in r.diagnostics] == ["E211"]


def test_directory(tmp_path):
    assert codes_for(tmp_path, "sub", setup=lambda f: (f / "sub").mkdir())[0][0] == "E212"


def test_fifo_is_not_read(tmp_path):
    assert codes_for(tmp_path, "pipe", setup=lambda f: os.mkfifo(f / "pipe"))[0][0] == "E213"


def test_symlink_loop_cannot_be_read(tmp_path):
    def loop(f):
        os.symlink(f / "b", f / "a")
        os.symlink(f / "a", f / "b")

    assert codes_for(tmp_path, "a", setup=loop)[0][0] == "E214"


def test_unreadable(tmp_path, monkeypatch):
    from ethos.compiler import files

    files.check_content.cache_clear()
    real_open = os.open

    def deny(path, *a, **k):
        if str(path).endswith("secret.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(files.os, "open", deny)
    ((code, summary),) = codes_for(tmp_path, "secret.txt", setup=lambda f: (f / "secret.txt").write_text("x\n"))
    assert code == "E214" and "permission denied" in summary


@pytest.mark.parametrize("data", [b"word\n\0\1\2", b"\xff\xfe caf\xe9\n"])
def test_binary_or_not_utf8(tmp_path, data):
    assert codes_for(tmp_path, "b.txt", setup=lambda f: (f / "b.txt").write_bytes(data))[0][0] == "E215"


def test_outside_the_allowed_roots(tmp_path):
    (tmp_path / "outside.txt").write_text("secret\n")
    ((code, summary),) = codes_for(tmp_path, "../outside.txt")
    assert code == "E216" and "outside" in summary
    ((code, _),) = codes_for(tmp_path, str(tmp_path / "outside.txt"))
    assert code == "E216"
    ((code, _),) = codes_for(tmp_path, "/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd")
    assert code == "E216"


def test_symlink_out_of_the_roots_is_refused(tmp_path):
    (tmp_path / "outside.txt").write_text("secret\n")
    setup = lambda f: os.symlink(tmp_path / "outside.txt", f / "link.txt")  # noqa: E731
    assert codes_for(tmp_path, "link.txt", setup=setup)[0][0] == "E216"


def test_too_large(tmp_path):
    def big(f):
        with open(f / "big.txt", "wb") as fh:
            fh.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used

    assert codes_for(tmp_path, "big.txt", setup=big)[0][0] == "E217"


def test_not_found_and_malformed_keep_their_codes(tmp_path):
    assert codes_for(tmp_path, "nope.txt")[0][0] == "E209"
    assert codes_for(tmp_path, "e.txt", setup=lambda f: (f / "e.txt").write_text("# only a comment\n"))[0][0] == "E210"
    deep = lambda f: (f / "d.jsonl").write_text("[" * 100_000 + "\n")  # noqa: E731
    assert codes_for(tmp_path, "d.jsonl", kind="probe", setup=deep)[0][0] == "E210"


def test_inside_the_policy_folder_and_the_library_is_fine(tmp_path):
    folder = tmp_path / "policy"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.txt").write_text("word\n")
    policy = folder / "p.ethos"
    policy.write_text('concept w = lexicon "sub/w.txt";\nconcept h = lexicon "concepts/hedging.txt";\n'
                      "block concept w;\nblock concept h;\n")
    r = compile_file(policy)
    assert r.ok, render_all(r.diagnostics)
    assert [c.lens.file.root for c in r.plan.concepts] == ["library", "policy"]


# ---------------------------------------------------------------------------------------------
# The policy file itself


def test_policy_file_problems_name_the_file(tmp_path):
    cases = {"missing": tmp_path / "nope.ethos", "directory": tmp_path}
    fifo = tmp_path / "fifo.ethos"
    os.mkfifo(fifo)
    cases["fifo"] = fifo
    big = tmp_path / "big.ethos"
    with open(big, "wb") as fh:
        fh.truncate(MAX_POLICY_BYTES + 1)
    cases["big"] = big
    cases["long"] = tmp_path / ("x" * 5000)
    for name, path in cases.items():
        r = compile_file(path)
        (d,) = r.diagnostics
        assert not r.ok and d.span is None and d.file == str(path), name
        assert d.code == ("E003" if name == "big" else "E002"), name
        assert render_all(r.diagnostics).startswith(f"{path}: error:"), name
        assert d.model_dump(mode="json")["file"] == str(path)


def test_an_oversized_source_is_refused_before_parsing():
    r = compile_source("block concept refusal;\n" * (MAX_POLICY_BYTES // 20))
    assert [d.code for d in r.diagnostics] == ["E003"] and "limit" in r.diagnostics[0].summary


def test_no_rules_warning_names_the_file(tmp_path):
    p = tmp_path / "empty.ethos"
    p.write_text("# nothing yet\n")
    r = compile_file(p)
    (d,) = r.diagnostics
    assert d.code == "W301" and render_all(r.diagnostics).startswith(f"{p}: warning:")

"""The CLI paths the README's commands run, exit codes, and --json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ethos.runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(str(p) for p in (ROOT / "specs" / "examples").glob("*.ethos"))


def test_readme_main_job_path_check_summary(capsys):
    assert main(["check", "--summary", *EXAMPLES]) == 0
    out = capsys.readouterr()
    assert "honest-helper" in out.out and "steering 4" in out.out
    assert f"checked {len(EXAMPLES)} policies: {len(EXAMPLES)} ok" in out.err


def test_fmt_check_passes_on_examples():
    assert main(["fmt", "--check", *EXAMPLES]) == 0


def test_fmt_check_and_write(tmp_path, capsys):
    p = tmp_path / "p.ethos"
    p.write_text("block   concept verbosity ;")
    assert main(["fmt", "--check", str(p)]) == 1
    assert main(["fmt", "--write", str(p)]) == 0
    assert p.read_text() == "block concept verbosity;\n"
    assert main(["fmt", "--check", str(p)]) == 0


def test_compile_is_byte_identical_across_runs(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    policy = str(ROOT / "specs" / "examples" / "honest-helper.ethos")
    assert main(["compile", policy, "-o", str(a)]) == 0
    assert main(["compile", policy, "-o", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(a.read_text())["format_version"] == "1"


def test_check_reports_errors_with_exit_1_and_json(tmp_path, capsys):
    p = tmp_path / "bad.ethos"
    p.write_text("block concept sycofancy;\namplify concept refusal by 0.5;\nconcept v = metric lenght;\n")
    assert main(["check", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"{p}:1:15: error: unknown concept 'sycofancy'" in err
    assert "hint: did you mean 'sycophancy'?" in err
    assert "3 errors, 0 warnings" in err
    assert main(["check", "--json", str(p)]) == 1
    data = json.loads(capsys.readouterr().out)
    diags = data["files"][0]["diagnostics"]
    assert [(d["span"]["line"], d["span"]["column"]) for d in diags] == [(1, 15), (2, 28), (3, 20)]


def test_diff(tmp_path, capsys):
    a, b = tmp_path / "a.ethos", tmp_path / "b.ethos"
    a.write_text("block concept verbosity;\n")  # no `via`: the default protocol, loss
    b.write_text("# reworded\nblock concept verbosity via data;\nblock concept verbosity via loss;\n")
    assert main(["diff", str(a), str(a)]) == 0
    assert capsys.readouterr().out.strip() == "no changes in meaning"
    assert main(["diff", str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip() == "+ block concept verbosity via data  (k = 0)"
    assert main(["diff", "--json", str(a), str(b)]) == 0
    assert json.loads(capsys.readouterr().out)["changes"][0]["op"] == "+"


def test_missing_file_and_binary_input_are_errors_not_tracebacks(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.ethos")]) == 1
    binary = tmp_path / "bin.ethos"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["check", str(binary)]) == 1
    assert main(["fmt", str(binary)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot read" in err and "not valid UTF-8" in err


def test_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "ethos.runtime.cli", "check"], capture_output=True, text=True)
    assert proc.returncode == 2


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("ethos")
    proc = subprocess.run([str(exe), "check", EXAMPLES[0]], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr


def _readme_commands():
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_command():
    main_job, tests = _readme_commands()
    assert main_job.startswith("bash .ci/setup && ")
    assert tests.startswith("bash .ci/setup --dev && ")
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_readme_main_job_runs_as_written(tmp_path):
    """The main job's command after set-up, through a shell, as a user runs it, on a small --limit
    (the default model, real probes; the report lands in a temporary folder)."""
    main_job, _ = _readme_commands()
    command = main_job.split(" && ", 1)[1] + f" --limit 30 --out {tmp_path / 'plan'}"
    proc = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]  # 3: an expectation failed on 30 pairs
    assert "Plan: " in proc.stdout
    html = (tmp_path / "plan" / "plan.html").read_text()
    assert "<svg" in html and "ethos plan" in html


def test_expected_errors_are_caught_once_with_the_command_name(monkeypatch, capsys):
    import ethos.runtime.cli.policy as policy
    from ethos.runtime.errors import EthosError, UsageError

    def fail(args):
        raise EthosError("the data at x.jsonl has no usable row")

    monkeypatch.setattr(policy, "run_check", fail)
    assert main(["check", EXAMPLES[0]]) == 1
    assert capsys.readouterr().err == "ethos check: error: the data at x.jsonl has no usable row\n"

    def usage(args):
        raise UsageError("--limit must be a positive integer")

    monkeypatch.setattr(policy, "run_diff", usage)
    assert main(["diff", EXAMPLES[0], EXAMPLES[0]]) == 2
    assert capsys.readouterr().err == "ethos diff: error: --limit must be a positive integer\n"


def test_interrupts_and_internal_errors_are_one_line(monkeypatch, capsys):
    import ethos.runtime.cli as cli
    import ethos.runtime.cli.policy as policy

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)  # even while the commands load
    assert main(["check", EXAMPLES[0]]) == 130
    assert capsys.readouterr().err == "ethos: interrupted\n"
    monkeypatch.undo()

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(policy, "run_fmt", broken)
    monkeypatch.delenv("ETHOS_DEBUG", raising=False)
    assert main(["fmt", EXAMPLES[0]]) == 1
    err = capsys.readouterr().err
    assert err == ("ethos: internal error: ZeroDivisionError: division by zero "
                   "(set ETHOS_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("ETHOS_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["fmt", EXAMPLES[0]])


def test_version(capsys):
    import tomllib

    proc = subprocess.run([sys.executable, "-m", "ethos.runtime.cli", "--version"], capture_output=True, text=True)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert proc.returncode == 0 and proc.stdout == f"ethos {version}\n"


def test_fmt_reads_through_the_compiler_fifo_and_folder_are_diagnostics(tmp_path, capsys):
    fifo = tmp_path / "pipe.ethos"
    os.mkfifo(fifo)
    folder = tmp_path / "dir.ethos"
    folder.mkdir()
    assert main(["fmt", str(fifo), str(folder)]) == 1  # returns at once: a FIFO is not read
    err = capsys.readouterr().err
    assert f"cannot read '{fifo}': it is not a regular file [E002]" in err
    assert f"cannot read '{folder}': it is a directory [E002]" in err


def test_kto_is_refused_and_says_it_would_lose_the_default_protocol(tmp_path, capsys):
    """KTO has no pair margin: ethos refuses it for every plan (before any work), and the reason
    says that the offsets of `loss` — the protocol of a rule without `via` — would be lost."""
    policy = tmp_path / "p.ethos"
    policy.write_text("block concept verbosity;\n")  # no `via`: realised by margin offsets
    assert main(["train", str(policy), "--out", str(tmp_path / "o"), "--loss", "kto"]) == 2
    err = capsys.readouterr().err
    assert "KTO is unpaired" in err and "no pair margin for the offset to shift" in err
    assert "`via loss`, also the protocol of every rule without `via`, would be silently lost" in err
    assert not (tmp_path / "o").exists()

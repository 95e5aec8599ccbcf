"""Progress where nobody watches a terminal: plain lines on stderr every ETHOS_PROGRESS_INTERVAL
seconds, naming the stage, done/total and the rate; nothing for a stage that ends quickly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ethos.runtime import progress

LINE = re.compile(r"^ethos: (?P<stage>[^,]+?)(?: (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+) \(\d+%\))?"
                  r"(?:, [\d.,]+ \w+/s)?(?:, [^,]+)*?, (?P<elapsed>\d+) s elapsed(?:, about .+ left)?$")


def test_plain_lines_name_the_stage_its_count_rate_and_time_left(monkeypatch, capsys):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.2")
    monkeypatch.delenv("ETHOS_NO_PROGRESS", raising=False)
    with progress.stage("scoring", total=20, unit="pairs") as bar:
        for _ in range(10):
            time.sleep(0.1)
            bar.advance(1)
    err = capsys.readouterr().err.splitlines()
    lines = [x for x in err if "elapsed" in x]
    assert len(lines) >= 3, err
    for line in lines:
        m = LINE.match(line)
        assert m and m["stage"] == "scoring" and m["total"] == "20" and m["unit"] == "pairs", line
    assert any("pairs/s" in x and "left" in x for x in lines)  # a rate and the time left once pairs are done
    assert int(LINE.match(lines[-1])["done"]) >= 5
    assert re.fullmatch(r"ethos: scoring done: 10 pairs in \d+ s \([\d.]+ pairs/s\)", err[-1]), err[-1]


def test_a_quick_stage_prints_nothing_and_disabled_stages_never_print(monkeypatch, capsys):
    monkeypatch.setenv(progress.INTERVAL_ENV, "5")
    with progress.stage("quick", total=3) as bar:
        bar.advance(3)
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.05")
    with progress.stage("off", total=3, enabled=False):
        time.sleep(0.3)
    monkeypatch.setenv("ETHOS_NO_PROGRESS", "1")
    with progress.stage("env off", total=3):
        time.sleep(0.3)
    assert capsys.readouterr().err == ""


def test_the_innermost_stage_is_reported_and_a_stage_without_total_shows_elapsed_time(monkeypatch, capsys):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.1")
    monkeypatch.delenv("ETHOS_NO_PROGRESS", raising=False)
    with progress.stage("outer"):
        time.sleep(0.35)
        with progress.stage("inner", total=4, unit="batches") as bar:
            time.sleep(0.35)
            bar.advance(2)
            time.sleep(0.25)
        time.sleep(0.25)
    err = capsys.readouterr().err.splitlines()
    stages = [LINE.match(x)["stage"] for x in err if "elapsed" in x]
    assert stages[0] == "outer" and "inner" in stages and stages[-1] == "outer"
    assert any(re.match(r"ethos: inner 2/4 batches \(50%\), [\d.]+ batches/s, ", x) for x in err)
    assert "ethos: inner done: 2 batches" in "\n".join(err) and err[-1].startswith("ethos: outer done in ")


def test_plan_into_a_log_shows_progress_lines_every_interval(tmp_path, tiny_model_dir):
    """`ethos plan … > log 2>&1`: a progress line soon after the start and every interval after
    (the tiny model, so that featurize takes a few seconds)."""
    policy = tmp_path / "p.ethos"
    policy.write_text(f'model "{tiny_model_dir}" layer 0;\nblock concept sycophancy;\n')
    log = tmp_path / "log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ETHOS_CACHE": str(tmp_path / "cache"),
           progress.INTERVAL_ENV: "0.5", "ETHOS_DTYPE": "float32"}
    env.pop("ETHOS_NO_PROGRESS", None)
    exe = Path(sys.executable).with_name("ethos")
    seen: list[tuple[float, str]] = []
    with open(log, "wb") as sink:
        start = time.monotonic()
        proc = subprocess.Popen([str(exe), "plan", str(policy), "--limit", "60", "--out", str(tmp_path / "o")],
                                stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        read = 0
        while True:
            done = proc.poll() is not None
            text = log.read_text(errors="replace")
            complete = text[: text.rfind("\n") + 1]
            for line in complete[read:].splitlines():
                seen.append((time.monotonic() - start, line))
            read = len(complete)
            if done:
                break
            if time.monotonic() - start > 600:
                proc.kill()
                pytest.fail("ethos plan ran over 10 minutes")
            time.sleep(0.05)
    assert proc.returncode == 0, log.read_text()[-2000:]
    ticks = [(t, line) for t, line in seen if LINE.match(line)]
    assert ticks, log.read_text()[-2000:]
    assert ticks[0][0] <= 15  # within 15 s of the start (imports included)
    assert any(LINE.match(line)["stage"] == "featurize" for _, line in ticks)
    gaps = [b - a for (a, _), (b, _) in zip(ticks, ticks[1:])]
    assert len(ticks) >= 3 and max(gaps) <= 3.0, gaps  # every ~0.5 s (generous for a busy machine)
    assert any(line.startswith("Plan: ") for _, line in seen)


@pytest.mark.parametrize("command", ["audit", "featurize", "trace"])
def test_json_commands_into_a_log_still_show_progress(command, tmp_path, tiny_model_dir):
    """`ethos audit|featurize|trace --json > out.json 2> log`: the JSON stays clean on stdout and the
    progress lines go to stderr, as with every command (--json is no reason to go silent)."""
    policy = tmp_path / "p.ethos"
    policy.write_text(f'model "{tiny_model_dir}" layer 0;\nblock concept sycophancy;\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ETHOS_CACHE": str(tmp_path / "cache"),
           progress.INTERVAL_ENV: "0.2", "ETHOS_DTYPE": "float32"}
    env.pop("ETHOS_NO_PROGRESS", None)
    args = {"audit": ["audit", "--policy", str(policy)], "featurize": ["featurize", "--policy", str(policy)],
            "trace": ["trace", str(policy), "--concept", "sycophancy"]}[command]
    exe = Path(sys.executable).with_name("ethos")
    proc = subprocess.run([str(exe), *args, "--limit", "60", "--json"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    json.loads(proc.stdout)  # stdout is the document alone
    assert any(re.match(r"ethos: featurize \d+/60 pairs \(\d+%\), ", line) for line in proc.stderr.splitlines()), \
        proc.stderr[-2000:]

"""No absolute machine path in the repository: code, docs, policies and settings name data and
caches relative to the checkout (``../shared/data``, ``specs/``) or through the environment
(``$ETHOS_CACHE``, ``~``), so a clean clone runs anywhere."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {".py", ".md", ".ethos", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".sh", ".j2", ".txt"}
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist", "ethos-out", ".refactor"}
# a home, a machine's work folder, a fixed folder of ethos's under /tmp
MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(?:work|home|Users|root)/[\w.-]+|(?<![\w.~$-])/tmp/ethos[\w.-]*")


def repo_files() -> list[Path]:
    """Tracked files and new ones git does not ignore (every file under the root without git)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [os.path.relpath(os.path.join(d, f), ROOT) for d, dirs, files in os.walk(ROOT)
                 for f in files if not dirs.__setitem__(slice(None), [x for x in dirs if x not in SKIP_DIRS])]
    paths = []
    for name in names:
        p = Path(name)
        if set(p.parts) & SKIP_DIRS or p.name.startswith(".") and p.suffix not in SUFFIXES:
            continue
        if p.suffix in SUFFIXES or (p.parts[0] == "bench" and not p.suffix):
            paths.append(ROOT / p)
    return paths


def test_the_scan_sees_the_repository() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in repo_files()}
    assert {"runtime/device.py", "bench/gpu-check", "README.md", "pyproject.toml"} <= files
    assert MACHINE_PATH.search("data in /work/shared/data") and MACHINE_PATH.search("--work /tmp/ethos-mitigation")
    assert not MACHINE_PATH.search("~/.cache/ethos and $HOME/x and ../shared/data and /tmp/pytest-of-x")


def test_no_absolute_machine_paths() -> None:
    found = []
    for path in repo_files():
        if path == Path(__file__).resolve() or not path.is_file():  # this file names the patterns
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            m = MACHINE_PATH.search(line)
            if m:
                found.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)}")
    assert not found, "absolute machine paths (name them relative to the checkout or via the environment):\n" + "\n".join(found)

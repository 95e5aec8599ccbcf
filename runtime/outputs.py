"""Output folders that are complete or visibly not: ``ethos plan --out`` and ``ethos apply --out``.

Each file is written atomically (:mod:`ethos.runtime.io`), and the folder as a whole is marked
complete by ``ethos-complete.json``, written last: :class:`FolderWriter` removes an earlier
marker before it writes anything (and sweeps the temporary files a killed writer left), writes
the files, then the marker with every file's size and sha256. A run that stops half-way —
Ctrl-C, an error, SIGKILL — leaves no marker, and every reader (:func:`check_complete`; ``ethos
train`` on an apply folder) refuses such a folder instead of mixing new files with old ones.
Files in the folder that the command does not write are left alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import EthosError
from .io import atomic_write_bytes

MARKER = "ethos-complete.json"
MARKER_KIND = "ethos-complete"
MARKER_FORMAT = 1


class IncompleteOutput(EthosError):
    """An output folder whose writer did not finish."""


def _stale_temporaries(folder: Path, names: Iterable[str]) -> list[Path]:
    """The temporary files :func:`~ethos.runtime.io.atomic_write_bytes` makes for ``names``
    (``.<name>.<random>.tmp``), left behind by a killed writer."""
    patterns = [re.compile(rf"\.{re.escape(n)}\.[^/]+\.tmp") for n in names]
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_file() and any(r.fullmatch(p.name) for r in patterns)]


class FolderWriter:
    """Writes one command's files into ``folder`` so that the folder reads as complete only once
    all of them are there::

        with FolderWriter(out, "apply", names=[...]) as w:
            w.write("train.json", text)
            ...
        # the marker is written when the block ends without an exception
    """

    def __init__(self, folder: str | Path, command: str, *, names: Iterable[str]) -> None:
        self.folder = Path(folder)
        self.command = command
        self.names = list(names)
        self.files: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> FolderWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / MARKER).unlink(missing_ok=True)
        for p in _stale_temporaries(self.folder, [*self.names, MARKER]):
            p.unlink(missing_ok=True)
        return self

    def write(self, name: str, data: bytes | str) -> None:
        if name not in self.names:
            raise ValueError(f"{name} is not one of the files of `ethos {self.command}`")
        raw = data.encode("utf-8") if isinstance(data, str) else data
        atomic_write_bytes(self.folder / name, raw)
        self.files[name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            return
        missing = [n for n in self.names if n not in self.files]
        if missing:
            raise RuntimeError(f"`ethos {self.command}` did not write {', '.join(missing)}")
        marker = {"kind": MARKER_KIND, "format": MARKER_FORMAT, "command": self.command,
                  "files": dict(sorted(self.files.items()))}
        atomic_write_bytes(self.folder / MARKER, (json.dumps(marker, indent=2) + "\n").encode("utf-8"))


def check_complete(folder: str | Path, command: str) -> dict[str, Any]:
    """The marker of a complete ``ethos <command>`` output folder; raises
    :class:`IncompleteOutput` when the writer did not finish (no marker, another command's, or a
    listed file missing)."""
    folder = Path(folder)
    again = f"run `ethos {command}` into it again"
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IncompleteOutput(f"{folder} is incomplete: an `ethos {command}` into it did not finish "
                               f"(no {MARKER}); {again}") from None
    except (OSError, ValueError) as e:
        raise IncompleteOutput(f"{folder / MARKER} cannot be read ({e}); {again}") from None
    if not isinstance(marker, dict) or marker.get("kind") != MARKER_KIND or marker.get("command") != command:
        raise IncompleteOutput(f"{folder} is not a complete `ethos {command}` output folder ({MARKER} says "
                               f"{marker.get('command') if isinstance(marker, dict) else marker!r}); {again}")
    files = marker.get("files") if isinstance(marker.get("files"), dict) else {}
    gone = [name for name in files if not (folder / name).is_file()]
    if gone:
        raise IncompleteOutput(f"{folder} is incomplete: {', '.join(gone)} missing; {again}")
    return marker

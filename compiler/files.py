"""Files a policy names (lexicons, probe exemplars), checked as data.

Whatever a policy writes in a path — a 10,000-character name, a directory, a FIFO, a device, a
binary file, a file the user cannot read, ``/etc/shadow`` — becomes a diagnostic with its own code,
never an exception and never a read that blocks or exhausts memory:

    E209 not found              E213 not a regular file (FIFO, device, socket)
    E210 malformed content      E214 cannot be read (permissions, I/O, a symlink loop)
    E211 not a usable path      E215 binary, or not UTF-8 text
         (too long, empty, NUL) E216 outside the folders a policy may read
    E212 a directory            E217 too large

A relative path is looked up next to the policy file first, then under the concept library's root
(``specs/``). A policy may read files under its own folder, the current folder (the project ethos
runs in) and the concept library: a file anywhere else — through ``..``, an absolute path or a
symbolic link — is refused (E216), so a policy from elsewhere cannot make ethos read private files.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import clip

MAX_PATH_CHARS = 1024  # a path written in a policy
MAX_NAME_BYTES = 255  # one component of it (the usual file-system limit)
MAX_FILE_BYTES = 64 * 1024 * 1024  # a lexicon or an exemplar file


@dataclass(frozen=True)
class Problem:
    code: str
    what: str  # completes "<kind> file '<path>' ...", e.g. "is a directory"
    hint: str


@dataclass(frozen=True)
class Content:
    sha256: str
    above: float | None = None  # a lexicon's ``# ethos: above N`` line: its default topic threshold


@dataclass(frozen=True)
class Found:
    path: Path  # where it is on disk
    root: str  # "policy" or "library": what the written path is relative to
    sha256: str
    above: float | None = None


def allowed_roots(policy_path: str, library_root: Path) -> tuple[str, ...]:
    """The folders a policy may read under: its own folder, the current folder, the library."""
    roots = [library_root]
    if policy_path and not policy_path.startswith("<"):
        roots.append(Path(policy_path).parent)
    try:
        roots.append(Path.cwd())
    except OSError:  # the current folder was removed
        pass
    out = []
    for r in roots:
        try:
            out.append(os.path.realpath(r))
        except (OSError, ValueError):
            continue
    return tuple(dict.fromkeys(out))


def _inside(real: str, roots: tuple[str, ...]) -> bool:
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _path_problem(written: str) -> Problem | None:
    hint = "name the file with a short relative path, e.g. next to the policy"
    if not written.strip():
        return Problem("E211", "is an empty path", hint)
    if "\0" in written:
        return Problem("E211", "holds a NUL character", hint)
    if len(written) > MAX_PATH_CHARS:
        return Problem("E211", f"is a path of {len(written):,} characters (the limit is {MAX_PATH_CHARS:,})", hint)
    longest = max((len(part.encode("utf-8", "surrogatepass")) for part in written.split("/")), default=0)
    if longest > MAX_NAME_BYTES:
        return Problem("E211", f"has a name of {longest:,} bytes (a name is at most {MAX_NAME_BYTES})", hint)
    return None


def _os_problem(e: OSError) -> Problem:
    if e.errno == errno.ENAMETOOLONG:
        return Problem("E211", "is a path too long for the file system",
                       "name the file with a short relative path, e.g. next to the policy")
    reason = "a loop of symbolic links" if e.errno == errno.ELOOP else (e.strerror or type(e).__name__).lower()
    return Problem("E214", f"cannot be read ({reason})", "check that the file exists and that you may read it")


def locate(written: str, policy_path: str, library_root: Path, roots: tuple[str, ...],
           kind: str) -> Found | Problem | list[str]:
    """Find a file named in a policy and check it as data. Returns what was found, the problem,
    or (when it is nowhere) the places looked in."""
    problem = _path_problem(written)
    if problem is not None:
        return problem
    p = Path(written)
    if p.is_absolute():
        candidates = [(p, "policy")]
    else:
        candidates = [(library_root / p, "library")]
        if policy_path and not policy_path.startswith("<"):
            candidates.insert(0, (Path(policy_path).parent / p, "policy"))
    for full, root in candidates:
        try:
            st = os.stat(full)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            return _os_problem(e)
        except ValueError:
            return Problem("E211", "is not a usable path", "name the file with a short relative path")
        try:
            real = os.path.realpath(full)
        except (OSError, ValueError) as e:
            return _os_problem(e) if isinstance(e, OSError) else Problem("E211", "is not a usable path", "")
        if not _inside(real, roots):
            return Problem("E216", f"is outside the folders a policy may read ({clip(real, 80)})",
                           "a policy reads files under its own folder, the current folder or the concept "
                           "library (specs/); copy the file next to the policy")
        if stat.S_ISDIR(st.st_mode):
            return Problem("E212", "is a directory", f"name a {kind} file inside it")
        if not stat.S_ISREG(st.st_mode):
            return Problem("E213", "is not a regular file (a device, a pipe or a socket)",
                           f"a {kind} file is a plain text file")
        if st.st_size > MAX_FILE_BYTES:
            return Problem("E217", f"is {st.st_size / 2**20:,.0f} MiB (the limit is {MAX_FILE_BYTES // 2**20} MiB)",
                           f"a {kind} file is a short list; is this the right file?")
        result = check_content(real, kind, st.st_mtime_ns, st.st_size)
        if isinstance(result, Problem):
            return result
        return Found(full, root, result.sha256, result.above)
    return ["the concept library (specs/)" if root == "library" else str(full.parent) + os.sep
            for full, root in candidates]


@functools.lru_cache(maxsize=256)
def check_content(path: str, kind: str, _mtime: int, _size: int) -> Problem | Content:
    """A regular file's content: its sha256 (and a lexicon's default topic threshold), or the
    problem (cached by modification time and size)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        return _os_problem(e)
    try:
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                return Problem("E217", f"is over {MAX_FILE_BYTES // 2**20} MiB", f"a {kind} file is a short list")
            chunks.append(chunk)
    except OSError as e:
        return _os_problem(e)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    sha = hashlib.sha256(data).hexdigest()
    binary = Problem("E215", "is not UTF-8 text (a binary file?)",
                     f"a {kind} file is UTF-8 text; see docs/language.md for the file formats")
    if b"\0" in data:
        return binary
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return binary
    problem = format_problem(text, kind)
    if problem:
        return Problem("E210", problem, "see docs/language.md for the file formats")
    above = None
    if kind == "lexicon":
        above = default_threshold(text)
        if isinstance(above, str):
            return Problem("E210", above, "write '# ethos: above N' with N >= 0, e.g. '# ethos: above 1'")
    return Content(sha, above)


_DIRECTIVE = "# ethos:"


def default_threshold(text: str) -> float | str | None:
    """A lexicon's default threshold as a topic: a comment line ``# ethos: above N`` (matches in
    the prompt above N put a pair in the topic). None when there is none; a message when it is bad."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.lower().startswith(_DIRECTIVE):
            continue
        words = stripped[len(_DIRECTIVE):].split()
        try:
            value = float(words[1]) if len(words) == 2 and words[0] == "above" else None
        except ValueError:
            value = None
        if value is None or not (value >= 0 and value != float("inf")):
            return f"has a bad '{_DIRECTIVE}' line: {stripped[:60]!r}"
        return value
    return None


def format_problem(text: str, kind: str) -> str | None:
    """What is wrong with a lexicon's or an exemplar file's text, or None."""
    if kind == "lexicon":
        entries = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return None if entries else "has no entries (one word or phrase a line)"
    if kind == "probe":
        pos = neg = 0
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                return f"line {i} is not valid JSON"
            if not isinstance(row, dict):
                return f"line {i} is not a JSON object"
            pos += isinstance(row.get("positive"), str) and bool(row["positive"].strip())
            neg += isinstance(row.get("negative"), str) and bool(row["negative"].strip())
        if pos == 0 or neg == 0:
            return 'needs exemplar lines {"prompt": ..., "positive": ..., "negative": ...}'
    return None

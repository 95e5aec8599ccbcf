"""The compiler, top to bottom: read -> decode -> parse -> AST -> resolve -> check -> plan.

Each stage is a pure function with a typed input and output; diagnostics are collected across
stages, and a plan is built only when there is no error. After a syntax error the statements that
did parse still go through resolve and check, so one pass reports the file's other mistakes too.
The diagnostics of one file are bounded (``errors.limit_diagnostics``), and so is the size of a
policy file (``MAX_POLICY_BYTES``): no input makes the compiler's time or output unbounded.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .ast import PolicyFile
from .build import build_plan
from .check import check
from .errors import Diagnostic, attach_snippets, error, has_errors, limit_diagnostics, sort_key
from .parse import decode, parse
from .plan import Plan
from .resolve import Library, resolve

MAX_POLICY_BYTES = 4 * 1024 * 1024  # a policy is a page or two; 4 MiB is far beyond any real one


@dataclass(frozen=True)
class Result:
    plan: Plan | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    ast: PolicyFile | None = None

    @property
    def ok(self) -> bool:
        return self.plan is not None


def _too_large(size: int, path: str) -> Diagnostic:
    return error("E003", f"the policy is {size / 2**20:.1f} MiB; the limit is {MAX_POLICY_BYTES // 2**20} MiB",
                 None, "a policy is a short text file; is this the right file?", file=path)


@contextlib.contextmanager
def _no_cycle_collection():
    """Pause Python's cycle collector while compiling. The AST and the plan hold no reference
    cycles, but a large policy allocates hundreds of thousands of small objects, and the collector
    would walk them again and again (a third to a half of the compile time of a 1 MB policy).
    Nothing is lost: whatever cycles anything makes meanwhile are collected once it is back on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def compile_source(data: str | bytes, path: str = "<policy>", library: Library | None = None) -> Result:
    with _no_cycle_collection():
        return _compile(data, path, library)


def _compile(data: str | bytes, path: str, library: Library | None) -> Result:
    size = _size(data)
    if size > MAX_POLICY_BYTES:
        return Result(None, [_too_large(size, path)])
    text, diags = decode(data, path)
    if text is None:
        return Result(None, diags)
    parsed = parse(text, path)
    # a name used in a statement that did not parse may be defined there: no "unknown" for it
    resolved = resolve(parsed.ast, library, unknown_ok=parsed.unparsed_words)
    checked = check(resolved, partial=bool(parsed.diagnostics))
    diags = sorted(parsed.diagnostics + resolved.diagnostics + checked.diagnostics, key=sort_key)
    dropped = _merge(resolved.diagnostics.dropped, checked.diagnostics.dropped)
    failed = has_errors(diags) or resolved.diagnostics.errors + checked.diagnostics.errors > 0
    plan = None if failed else build_plan(checked, text)
    return Result(plan, attach_snippets(limit_diagnostics(diags, dropped), text), parsed.tree)


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}


def _size(data: str | bytes) -> int:
    if isinstance(data, bytes) or len(data) * 4 <= MAX_POLICY_BYTES:  # (a character is at most 4 bytes)
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def read_policy(path: str | Path) -> tuple[bytes | None, list[Diagnostic]]:
    """A policy file's bytes, or a diagnostic: a missing, unreadable or special file, a directory,
    a name too long, or a file over ``MAX_POLICY_BYTES`` (checked before it is read). Never raises."""
    where = str(path)

    def cannot(reason: str, hint: str = "check the path") -> tuple[None, list[Diagnostic]]:
        return None, [error("E002", f"cannot read {where!r}: {reason}", None, hint, file=where)]

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return cannot("the file name is too long")
        if e.errno == errno.EISDIR:
            return cannot("it is a directory", "name a .ethos file")
        return cannot(e.strerror or str(e))
    except ValueError:  # an embedded NUL
        return cannot("the file name holds a NUL character")
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return cannot("it is a directory", "name a .ethos file")
        if not stat.S_ISREG(st.st_mode):
            return cannot("it is not a regular file", "name a .ethos file")
        if st.st_size > MAX_POLICY_BYTES:
            return None, [_too_large(st.st_size, where)]
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_POLICY_BYTES:  # it grew while being read
                return None, [_too_large(total, where)]
        return b"".join(chunks), []
    except OSError as e:
        return cannot(e.strerror or str(e))
    finally:
        os.close(fd)


def compile_file(path: str | Path, library: Library | None = None) -> Result:
    """Compile a policy file. An unreadable file is a diagnostic, not an exception."""
    data, diags = read_policy(path)
    if data is None:
        return Result(None, diags)
    return compile_source(data, str(path), library)


def plan_for_concepts(names: list[str], library: Library | None = None) -> Result:
    """A plan that measures the named library concepts (for ``--concepts a,b``): each one kept."""
    source = "".join(f"keep concept {n};\n" for n in names)
    return compile_source(source, "<--concepts>", library)

"""Progress of long stages on stderr: a rich bar on a terminal, plain lines everywhere else.

One call for every long loop (featurize, the SAE passes, the audit, training, the dry run)::

    from ethos.runtime.progress import stage

    with stage("featurize", total=len(todo), unit="pairs", enabled=progress) as bar:
        for batch in batches:
            ...
            bar.advance(len(batch), note=f"{tps:,.0f} tok/s")

- On a terminal (stderr is a TTY) a stage with a ``total`` is a rich bar with done/total, the
  rate and the time left; several open stages share one display. A stage without a total shows
  nothing there (its inner stages do).
- Elsewhere (a log file, CI, ``| tee``) one plain line goes to stderr every
  ``ETHOS_PROGRESS_INTERVAL`` seconds (default 10; the first within 3 s of the first stage's
  start), naming the innermost open stage, its done/total, rate and time left, e.g.
  ``ethos: featurize 120/400 pairs (30%), 9.8 pairs/s, 12 s elapsed, about 29 s left``. The
  lines come from a timer thread, so they keep coming while one step is slow (loading a model).
  A stage that ends before its first line prints nothing; one that printed a line ends with a
  ``… done`` line.
- ``ETHOS_NO_PROGRESS=1`` (or ``ETHOS_PROGRESS_INTERVAL=0`` for the plain lines) turns it off;
  ``enabled=False`` makes a stage a no-op.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

INTERVAL_ENV = "ETHOS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0
FIRST_LINE_AFTER = 3.0  # seconds from the first open stage to the first plain line (at most)


def interval() -> float:
    """Seconds between plain progress lines (``ETHOS_PROGRESS_INTERVAL``; 0 or less: none)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value == value else DEFAULT_INTERVAL  # NaN: the default


def _off() -> bool:
    return bool(os.environ.get("ETHOS_NO_PROGRESS"))


def duration(seconds: float) -> str:
    """``12 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0, int(round(seconds)))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class Stage:
    """One open stage: its name, how much is done of how much, and when it started. Use it
    through :func:`stage`; ``advance`` is cheap (no output of its own in plain mode)."""

    def __init__(self, name: str, total: int | None = None, unit: str = "pairs", *, enabled: bool = True) -> None:
        self.name = name
        self.total = total
        self.unit = unit
        self.enabled = enabled and not _off()
        self.done = 0
        self.note: str | None = None
        self.started = time.monotonic()
        self.shown = False  # a plain line named this stage
        self._board: _RichBoard | None = None
        self._task: Any = None

    # -- the caller's side
    def advance(self, n: int = 1, *, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        if self._board is not None:
            self._board.update(self)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._board is not None:
            self._board.update(self)

    def __enter__(self) -> Stage:
        if self.enabled:
            self.started = time.monotonic()
            if _terminal():
                if self.total is not None:
                    self._board = _RichBoard.open(self)
            else:
                _REPORTER.push(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled:
            return
        if self._board is not None:
            self._board.close(self)
            self._board = None
        else:
            _REPORTER.pop(self, failed=exc[0] is not None)

    # -- the plain line
    def rate(self, now: float | None = None) -> float | None:
        elapsed = (now or time.monotonic()) - self.started
        return self.done / elapsed if self.done and elapsed > 0 else None

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self.started
        parts = [self.name]
        if self.total is not None:
            pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            parts[0] += f" {self.done:,}/{self.total:,} {self.unit}{pct}"
        elif self.done:
            parts[0] += f" {self.done:,} {self.unit}"
        rate = self.rate(now)
        if rate is not None:
            parts.append(f"{rate:,.1f} {self.unit}/s" if rate < 100 else f"{rate:,.0f} {self.unit}/s")
        if self.note:
            parts.append(self.note)
        parts.append(f"{duration(elapsed)} elapsed")
        if rate and self.total is not None and self.total > self.done:
            parts.append(f"about {duration((self.total - self.done) / rate)} left")
        return "ethos: " + ", ".join(parts)

    def done_line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        what = f": {self.done:,} {self.unit}" if self.done else ""
        rate = self.rate(now)
        speed = f" ({rate:,.1f} {self.unit}/s)" if rate is not None else ""
        return f"ethos: {self.name} done{what} in {duration(now - self.started)}{speed}"


def stage(name: str, total: int | None = None, *, unit: str = "pairs", enabled: bool = True) -> Stage:
    """A context manager for one long stage (see the module docstring)."""
    return Stage(name, total, unit, enabled=enabled)


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _emit(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a closed or broken stderr: progress is never worth a crash
        pass


class _Reporter:
    """The plain lines: a timer thread that names the innermost open stage every interval."""

    def __init__(self) -> None:
        self.stack: list[Stage] = []
        self.lock = threading.Lock()
        self.stop: threading.Event | None = None
        self.thread: threading.Thread | None = None

    def push(self, s: Stage) -> None:
        every = interval()
        if every <= 0:
            return
        with self.lock:
            self.stack.append(s)
            if self.thread is None:
                self.stop = threading.Event()
                self.thread = threading.Thread(target=self._run, args=(self.stop, min(FIRST_LINE_AFTER, every), every),
                                               name="ethos-progress", daemon=True)
                self.thread.start()

    def pop(self, s: Stage, *, failed: bool) -> None:
        thread = None
        with self.lock:
            if s not in self.stack:
                return
            self.stack.remove(s)
            if s.shown and not failed:
                _emit(s.done_line())
            if not self.stack and self.thread is not None:
                assert self.stop is not None
                self.stop.set()
                thread, self.thread, self.stop = self.thread, None, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    def _run(self, stop: threading.Event, first: float, every: float) -> None:
        due = time.monotonic() + first
        while not stop.wait(max(0.0, due - time.monotonic())):
            with self.lock:
                if stop.is_set():
                    return
                if self.stack:
                    top = self.stack[-1]
                    top.shown = True
                    _emit(top.line())
            due += every
            now = time.monotonic()
            if due < now:  # the process was suspended: don't print a burst
                due = now + every


_REPORTER = _Reporter()


class _RichBoard:
    """The rich display on a terminal, shared by the open stages that have a total."""

    current: _RichBoard | None = None

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.tasks = 0

    @classmethod
    def open(cls, s: Stage) -> _RichBoard | None:
        board = cls.current
        if board is None:
            board = cls()
            try:
                board.progress.start()
            except Exception:  # another live display (rich allows one at a time): show nothing
                return None
            cls.current = board
        s._task = board.progress.add_task(s.name, total=s.total, unit=s.unit, rate="", note=s.note or "")
        board.tasks += 1
        return board

    def update(self, s: Stage) -> None:
        rate = s.rate()
        shown = "" if rate is None else (f"{rate:,.1f} {s.unit}/s" if rate < 100 else f"{rate:,.0f} {s.unit}/s")
        self.progress.update(s._task, completed=s.done, total=s.total, rate=shown, note=s.note or "")

    def close(self, s: Stage) -> None:
        self.update(s)
        self.tasks -= 1
        if self.tasks <= 0:
            self.progress.stop()
            _RichBoard.current = None

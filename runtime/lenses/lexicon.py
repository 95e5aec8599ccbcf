"""The ``lexicon`` lens: matches of a word list in the reply, scored by the concept's ``mode``.

The file holds one lower-case word or phrase per line; blank lines and lines starting with ``#``
are skipped. All entries are compiled into one case-insensitive regular expression (longest
alternatives first, whitespace inside a phrase matching any run of whitespace) with word
boundaries on both sides; matches do not overlap. The score depends on the lens's ``mode``
(``ethos.compiler.plan.LexiconLens.mode``):

- ``count`` (the default): the number of matches in the reply;
- ``presence``: 1.0 if the reply has any match, else 0.0;
- ``density``: matches per 100 words of the reply (0 for a reply without words).

Density divides by the reply's length, so wherever chosen and rejected replies differ in length
it manufactures a difference that is not in the words: a phrase put on 40% of chosen and 40% of
rejected replies at random has a higher density on the shorter side (tests/runtime/
test_lexicon_modes.py measures this on the embedded data). Count and presence do not divide by
length. The mode is part of the lens's identity, so a cached score of one mode is never read as
another's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import Lens, LensContext, LensError, Scores, per_100_words, register_lens

#: The scorers of the modes, from the number of matches and the reply.
MODES: dict[str, Callable[[int, str], float]] = {
    "count": lambda n, reply: float(n),
    "presence": lambda n, reply: 1.0 if n else 0.0,
    "density": per_100_words,
}
DEFAULT_MODE = "count"


def read_lexicon(path: Path) -> list[str]:
    """The entries of a lexicon file (stripped, lower-cased, deduplicated, in file order)."""
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            seen.setdefault(" ".join(entry.lower().split()), None)
    return list(seen)


def compile_lexicon(entries: Sequence[str]) -> re.Pattern[str]:
    """One regex matching any entry as whole words, case-insensitively."""
    parts = [r"\s+".join(re.escape(w) for w in e.split()) for e in sorted(entries, key=len, reverse=True)]
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


@register_lens("lexicon")
class LexiconLens(Lens):
    def __init__(self, concept: Any, context: LensContext) -> None:
        super().__init__(concept, context)
        self.mode: str = getattr(concept.lens, "mode", DEFAULT_MODE)
        if self.mode not in MODES:
            raise LensError(f"concept {concept.name!r}: unknown lexicon mode {self.mode!r} "
                            f"(known: {', '.join(MODES)})")
        self.path = context.resolve_file(concept.lens.file)
        self.entries = read_lexicon(self.path)
        if not self.entries:
            raise LensError(f"{self.path}: the lexicon of concept {concept.name!r} has no entries")
        self.pattern = compile_lexicon(self.entries)

    def to_dict(self) -> dict[str, Any]:
        # version 2: the mode joined the identity (version 1 scores were densities)
        return {"kind": "lexicon", "entries_sha256": _sha(self.entries), "mode": self.mode, "version": 2}

    def matches(self, reply: str) -> int:
        """The number of (non-overlapping) matches of the lexicon in ``reply``."""
        return len(self.pattern.findall(reply))

    def score_texts(self, items: Sequence[tuple[Sequence[Any], str]]) -> list[Scores]:
        score = MODES[self.mode]
        return [{"value": score(self.matches(reply), reply)} for _, reply in items]


def _sha(entries: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(entries).encode()).hexdigest()

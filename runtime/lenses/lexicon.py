"""The ``lexicon`` lens: matches of a word list in the reply, per 100 words.

The file holds one lower-case word or phrase per line; blank lines and lines starting with ``#``
are skipped. All entries are compiled into one case-insensitive regular expression (longest
alternatives first, whitespace inside a phrase matching any run of whitespace) with word
boundaries on both sides; matches do not overlap. Score = matches per 100 words of the reply
(0 for a reply without words).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import Lens, LensContext, LensError, Scores, per_100_words, register_lens


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
        self.path = context.resolve_file(concept.lens.file)
        self.entries = read_lexicon(self.path)
        if not self.entries:
            raise LensError(f"{self.path}: the lexicon of concept {concept.name!r} has no entries")
        self.pattern = compile_lexicon(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "lexicon", "entries_sha256": _sha(self.entries), "version": 1}

    def score_texts(self, items: Sequence[tuple[Sequence[Any], str]]) -> list[Scores]:
        return [{"value": per_100_words(len(self.pattern.findall(reply)), reply)} for _, reply in items]


def _sha(entries: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(entries).encode()).hexdigest()

"""Numbers and text for people: the one home of the formatting every report, summary and message
uses (``num``, ``pval``, ``ci``, ``est_ci``, ``pct``, ``md_escape``, ``oneline``).

Pure functions of their arguments; no imports beyond the standard library, so any module may use
them without pulling in a renderer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


def finite(x: Any) -> bool:
    """A real, finite number (not None, not NaN, not ±inf)."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def num(x: Any, spec: str = ".3g", *, missing: str = "–") -> str:
    """A number for people; ``missing`` (``–``) for None/NaN. Integers in the default spec get
    thousands separators; booleans read yes/no."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) and spec == ".3g":
        return f"{x:,}"
    return format(x, spec)


def pval(x: Any) -> str:
    """A p- or q-value: 3 significant digits, scientific below 0.001."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x == 0:
        return "<1e-300"
    return f"{x:.2e}" if x < 1e-3 else f"{x:.3f}"


def ci(pair: Sequence[Any] | None, spec: str = "+.2f") -> str:
    if not pair or any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in pair):
        return "–"
    return f"[{format(pair[0], spec)}, {format(pair[1], spec)}]"


def est_ci(est: Any, pair: Sequence[Any] | None, spec: str = "+.2f") -> str:
    """An estimate and its CI (``+0.17 [+0.08, +0.27]``); ``–`` when the estimate is missing."""
    if est is None or (isinstance(est, float) and not math.isfinite(est)):
        return "–"
    c = ci(pair, spec)
    return format(est, spec) + ("" if c == "–" else " " + c)


def pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:.1f}%"


_MD_SPECIAL = str.maketrans({
    "\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "|": "\\|", "#": "\\#",
    "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " ", "\t": " ",
})


MAX_TOKEN = 120  # longest run of non-space characters a report shows
MAX_TEXT = 4000  # longest piece of dataset text a report shows in one place

def clip(text: Any, width: int = MAX_TEXT, token: int = MAX_TOKEN) -> str:
    """Dataset text bounded for a report: every run of more than ``token`` non-space characters
    cut with an ellipsis and a note of its length, the whole cut to ``width`` characters."""
    s = str(text)
    if len(s) > token:
        s = re.sub(r"\S{%d,}" % (token + 1), lambda m: f"{m.group(0)[:token]}… ({len(m.group(0)):,} characters)", s)
    if len(s) > width:
        s = f"{s[:width]}… ({len(s):,} characters in all)"
    return s


def md_escape(text: Any) -> str:
    """Inline Markdown text that renders literally (no markup, no HTML, one line), bounded by
    :func:`clip`."""
    return clip(text).translate(_MD_SPECIAL)


def oneline(text: Any, width: int = 160) -> str:
    """Collapse whitespace and shorten to ``width`` characters."""
    s = clip(" ".join(str(text).split()), width=max(width, 1) * 4)
    return s if len(s) <= width else s[: width - 1] + "…"

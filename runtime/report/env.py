"""The jinja2 environments of the report templates (``templates/``) and ``render``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import sys

import jinja2
import markupsafe

from .format import MAX_TOKEN, ci, clip, est_ci, md_escape, num, oneline, pct, pval
from .layouts import bars_layout, forest_layout, histogram_layout, scatter_layout

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _bounded(value: Any) -> Any:
    """Every plain string a template prints has its long tokens cut (:func:`clip`): no run of
    dataset text without spaces makes a line of the report unboundedly long. Only tokens: a
    Markdown macro's output is a plain string too, and may be long. Markup (an HTML macro's
    output, built from bounded pieces) passes as is. Markdown text is escaped by the ``md``
    filter before this, which can lengthen a token up to fivefold (``&`` → ``&amp;``), hence the
    wider bound. Where whole replies are shown the templates bound their length with ``clip``."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return clip(value, width=sys.maxsize, token=5 * MAX_TOKEN + 40)
    return value


@lru_cache(maxsize=2)
def environment(kind: str = "html") -> jinja2.Environment:
    """The jinja2 environment for ``"html"`` (autoescape on) or ``"md"`` templates."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=(kind == "html"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_bounded,
    )
    env.filters.update(num=num, pval=pval, ci=ci, est_ci=est_ci, pct=pct, md=md_escape, oneline=oneline, clip=clip)
    env.globals.update(forest_layout=forest_layout, bars_layout=bars_layout, histogram_layout=histogram_layout,
                       scatter_layout=scatter_layout)
    return env


def render(template: str, **context: Any) -> str:
    kind = "html" if template.endswith(".html.j2") else "md"
    return environment(kind).get_template(template).render(**context)

"""The jinja2 environments of the report templates (``templates/``) and ``render``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from .format import ci, est_ci, md_escape, num, oneline, pct, pval
from .layouts import bars_layout, forest_layout, histogram_layout, scatter_layout

TEMPLATES = Path(__file__).resolve().parent / "templates"


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
    )
    env.filters.update(num=num, pval=pval, ci=ci, est_ci=est_ci, pct=pct, md=md_escape, oneline=oneline)
    env.globals.update(forest_layout=forest_layout, bars_layout=bars_layout, histogram_layout=histogram_layout,
                       scatter_layout=scatter_layout)
    return env


def render(template: str, **context: Any) -> str:
    kind = "html" if template.endswith(".html.j2") else "md"
    return environment(kind).get_template(template).render(**context)

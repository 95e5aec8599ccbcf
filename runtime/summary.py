"""A terminal summary of a compiled plan (rich), rendered from the Plan only."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ethos.compiler.plan import Plan


def _via(i) -> str:
    """``protocol [argument] (stage)``; the protocol table names the argument's field."""
    field = i.info.argument
    value = getattr(i, field) if field else None
    if isinstance(value, str):
        arg = f' "{value if len(value) <= 24 else value[:21] + "..."}"'
    else:
        arg = "" if value is None else f" {value:g}"
    return f"{i.protocol}{arg} ({'default, ' if i.default_protocol else ''}{i.stage})"


def _k(i) -> str:
    """The k column: the factor, or for encourage/discourage the target coefficient's sign and size
    (``+|α|``: the data's own size; k = target/α is known only once the data is audited)."""
    if getattr(i, "direction", None) is None:
        return f"{i.factor:g}"
    return ("+" if i.direction > 0 else "-") + ("|α|" if i.size is None else f"{i.size:g}")


def _concept(name: str, scope: str | None) -> str:
    return name if scope is None else f"{name} @{scope}"


def print_plan_summary(plan: Plan, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 120  # a pipe or a log: don't squeeze the table into 80 columns
    layer = "default layer" if plan.model.layer is None else f"layer {plan.model.layer}"
    title = f"[bold]{plan.policy or plan.source.path}[/bold]  ({plan.source.path})"
    console.print(title)
    console.print(f"  model {plan.model.name}, {layer}; SAE {plan.sae.name}; "
                  f"{len(plan.concepts)} concepts, {len(plan.interventions)} interventions, "
                  f"{len(plan.keeps)} keep rule{'s' * (len(plan.keeps) != 1)}, {len(plan.expectations)} expectations")
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2))
    for col in ("line", "concept", "lens", "action", "k", "via"):
        table.add_column(col, no_wrap=True)
    for i in plan.interventions:
        table.add_row(str(i.span.line), _concept(i.concept, getattr(i, "scope", None)),
                      plan.concept(i.concept).lens_text(), i.action, _k(i), _via(i))
    for k in plan.keeps:
        table.add_row(str(k.span.line), _concept(k.concept, getattr(k, "scope", None)),
                      plan.concept(k.concept).lens_text(), "keep", "1", "-")
    console.print(table)
    for e in plan.expectations:
        console.print(f"  expect: {e.text}")
    console.print()

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
    return f"{i.protocol}{arg} ({i.stage})"


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
                  f"{len(plan.keeps)} kept, {len(plan.expectations)} expectations")
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2))
    for col in ("line", "concept", "lens", "action", "k", "via"):
        table.add_column(col, no_wrap=True)
    for i in plan.interventions:
        table.add_row(str(i.span.line), i.concept, plan.concept(i.concept).lens_text(), i.action, f"{i.factor:g}", _via(i))
    for k in plan.keeps:
        table.add_row(str(k.span.line), k.concept, plan.concept(k.concept).lens_text(), "keep", "1", "-")
    console.print(table)
    for e in plan.expectations:
        console.print(f"  expect: {e.text}")
    console.print()

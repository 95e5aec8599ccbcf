"""A terminal summary of a compiled plan (rich), rendered from the Plan only."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ethos.compiler.plan import PROTOCOL_KIND, Plan


def _lens(plan: Plan, name: str) -> str:
    lens = plan.concept(name).lens
    if lens.kind == "metric":
        return f"metric {lens.metric}"
    if lens.kind == "features":
        ids = ",".join(map(str, lens.latents[:3])) + (",..." if len(lens.latents) > 3 else "")
        return f"features {ids}"
    return f"{lens.kind} {lens.file.path.rsplit('/', 1)[-1]}"


def _via(i) -> str:
    text = getattr(i, "text", "")
    text = text if len(text) <= 24 else text[:21] + "..."
    arg = {"inoculation": lambda: f' "{text}"', "steering": lambda: f" {i.strength:g}",
           "penalty": lambda: f" {i.weight:g}"}.get(i.protocol, lambda: "")()
    return f"{i.protocol}{arg} ({PROTOCOL_KIND[i.protocol]})"


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
        table.add_row(str(i.span.line), i.concept, _lens(plan, i.concept), i.action, f"{i.factor:g}", _via(i))
    for k in plan.keeps:
        table.add_row(str(k.span.line), k.concept, _lens(plan, k.concept), "keep", "1", "-")
    console.print(table)
    for e in plan.expectations:
        console.print(f"  expect: {e.text}")
    console.print()

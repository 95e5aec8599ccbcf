"""Terminal tables that fit the console: a rich table when its rows fit the width unwrapped,
else a stacked layout (one block per row: its name, then ``column value`` items packed into
lines of the console's width), so no column's value is ever cut or dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GAP = "   "


def console_for_output(console: Any = None) -> Any:
    """The console to print to: ``console``, else stdout's (140 columns when it is not a terminal,
    so logs get the table)."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 140
    return console


def print_fitting_table(
    console: Any,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[tuple[Sequence[Any], str | None]],
    *,
    title: str | None = None,
    padding: int = 2,
) -> bool:
    """Print ``rows`` (cells, style) under ``columns`` (header, justify) as a table when it fits
    ``console.width``, else stacked. The first column names the row. Returns whether the table
    form was used."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_edge=False, pad_edge=False, box=None, padding=(0, padding))
    for head, just in columns:
        table.add_column(head, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for cells, style in rows:
        table.add_row(*[c if isinstance(c, Text) else Text(str(c)) for c in cells], style=style)
    plain = [[c.plain if isinstance(c, Text) else str(c) for c in cells] for cells, _ in rows]
    needed = sum(max([cell_len(head)] + [cell_len(r[j]) for r in plain]) for j, (head, _) in enumerate(columns))
    needed += 2 * padding * (len(columns) - 1)  # left and right padding between columns, none at the edges
    if needed <= console.width:
        console.print(table)
        return True
    if title:
        console.print(Text(title, style="bold"))
    width = max(console.width - 2, 20)
    for cells, style in rows:
        name = cells[0] if isinstance(cells[0], Text) else Text(str(cells[0]))
        console.print(Text("") + name, style=style or "bold", overflow="fold")
        line = ""
        for (head, _), cell in zip(columns[1:], cells[1:]):
            item = f"{head} {cell.plain if isinstance(cell, Text) else cell}"
            if line and len(line) + len(GAP) + len(item) > width:
                console.print(Text("  " + line, style=style or ""), overflow="fold")
                line = ""
            line = f"{line}{GAP}{item}" if line else item
        if line:
            console.print(Text("  " + line, style=style or ""), overflow="fold")
    return False

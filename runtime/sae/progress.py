"""The progress bar of the SAE passes (activations, training, eval, latents): rich, on stderr,
with a rate column; ``ETHOS_NO_PROGRESS`` turns it off."""

from __future__ import annotations

import os
from typing import Any


def progress_bar(total: int, label: str, unit: str = "tok") -> tuple[Any, Any]:
    """A started rich progress bar and its task (``unit``/s in the rate column); stop it with
    ``bar.stop()``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"? {unit}/s")

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
        disable=bool(os.environ.get("ETHOS_NO_PROGRESS")),
    )
    progress.start()
    task = progress.add_task(label, total=total)
    return progress, task

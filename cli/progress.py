"""Rich progress bars behind the library's Progress interface."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tailorrt.training.phases import Progress as LoopProgress


class RichProgress(LoopProgress):
    """One bar per training phase, with the running loss."""

    def __init__(self, console: Console, prefix: str = "") -> None:
        self.console = console
        self.prefix = prefix
        self.bars: Progress | None = None
        self.task_id = None

    def start(self, label: str, total: int, completed: int = 0) -> None:
        """A fresh bar set per phase, so a log shows each finished phase once."""
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("val {task.fields[val]}"),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        self.bars.start()
        self.task_id = self.bars.add_task(f"{self.prefix}{label}", total=total, completed=completed, loss=0.0,
                                          val="-")

    def advance(self, n: int = 1, **metrics: float) -> None:
        if self.bars is None or self.task_id is None:
            return
        fields = {"loss": metrics.get("loss", 0.0)}
        if "val" in metrics:
            fields["val"] = f"{metrics['val']:.1f}%"
        self.bars.update(self.task_id, advance=n, **fields)

    def finish(self) -> None:
        if self.bars is not None:
            self.bars.stop()
        self.bars, self.task_id = None, None

"""Progress of long work: rich bars on a terminal, throttled lines with an ETA otherwise (logs,
CI, pipes). :class:`BatteryProgress` follows an attack battery, :func:`train_progress` a trainer.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from ..train.callbacks import Callback
from .console import console

if TYPE_CHECKING:
    from ..train import Trainer


def clock(seconds: float) -> str:
    """A duration as ``12 s``, ``3 min 05 s`` or ``2 h 07 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LineProgress:
    """Progress as log lines, ``what: 3/10 (30%), elapsed 12 s, ETA 28 s``, at most one line per
    ``interval`` seconds besides the first and the last unit of work."""

    interval = 30.0

    def __init__(self, what: str) -> None:
        self.what = what
        self.t0 = time.perf_counter()
        self.first = 0
        self.last_line = -math.inf

    def begin(self, done: int) -> None:
        self.t0 = time.perf_counter()
        self.first = done
        self.last_line = -math.inf

    def update(self, done: int, total: int, detail: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and done < total and now - self.last_line < self.interval and done != self.first + 1:
            return
        self.last_line = now
        elapsed = now - self.t0
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {clock((total - done) / rate)}" if rate > 0 else "ETA unknown"
        pct = 100 * done / total if total else 100.0
        extra = f", {detail}" if detail else ""
        console.print(f"{self.what}: {done}/{total} ({pct:.0f}%){extra}, elapsed {clock(elapsed)}, {eta}",
                      highlight=False, soft_wrap=True, markup=False)


class BatteryProgress:
    """Turns run_battery's progress events into a rich bar (terminal) or ETA lines (no terminal).

    The bar lives from the battery's ``start`` event to its ``end`` event, so it never overlaps
    the training bars of a pipeline that trains, then evaluates. It remembers how many batches
    are finished (and saved), for the message of an interrupted evaluation.
    """

    def __init__(self, live: bool | None = None) -> None:
        self.live = console.is_terminal if live is None else live
        self.progress: Any = None
        self.task: Any = None
        self.lines = LineProgress("attacking (batches)")
        self.completed: int | None = None
        self.restored = 0
        self.total = 0
        self.partial: str | None = None  # the latest mid-batch save ("batch 3 after apgd-t")

    def __call__(self, event: Any) -> None:
        if event.kind == "start":
            self.completed, self.restored, self.total = event.completed, event.completed, event.total
            if event.completed == event.total:
                console.print(f"all {event.total} batches were saved by an earlier run; reading the result "
                              "back", highlight=False)
            elif event.completed:
                console.print(f"resuming: {event.completed} of {event.total} batches were saved by an "
                              "earlier run", highlight=False)
            if self.live:
                self._start_bar(event)
            else:
                self.lines.begin(event.completed)
            return
        if self.completed is None:
            return
        self.completed = event.completed
        if event.kind == "saved":
            self.partial = f"repeat {event.repeat + 1} batch {event.batch + 1} up to {event.attack}"
            return
        if event.kind == "batch":
            self.partial = None
        if event.kind == "end":
            self.close()
        elif self.progress is not None:
            if event.kind == "attack":
                self.progress.update(self.task, description=f"repeat {event.repeat + 1} batch "
                                     f"{event.batch + 1}: {event.attack} ({event.robust}/{event.size} robust)")
            elif event.kind == "batch":
                self.progress.update(self.task, completed=event.completed)
        elif not self.live and event.kind == "batch":
            self.lines.update(event.completed, event.total, f"last batch {event.robust}/{event.size} robust")

    def _start_bar(self, event: Any) -> None:
        from rich import progress as bars

        self.progress = bars.Progress(
            bars.TextColumn("{task.description}"), bars.BarColumn(), bars.MofNCompleteColumn(),
            bars.TimeElapsedColumn(), bars.TimeRemainingColumn(), console=console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("attacking", total=event.total, completed=event.completed)

    def close(self) -> None:
        """Stop the bar (at the end, or when a battery ended early)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class TrainLines(Callback):
    """The trainer's progress as ETA lines, for runs without a terminal."""

    def __init__(self) -> None:
        self.lines = LineProgress("training (steps)")
        self.total = 0
        self.started = False

    def on_fit_start(self, trainer: Trainer) -> None:
        self.started = False  # one instance serves every fit of a study: each counts its own steps
        resumed_from = getattr(trainer, "resumed_from", None)
        start = getattr(trainer, "start_epoch", None)
        if resumed_from is not None and isinstance(start, int):
            total = trainer.config.epochs
            where = f"starting at epoch {start + 1} of {total}" if start < total else f"all {total} epochs are done"
            console.print(f"resuming {resumed_from}: {start} of {total} epochs done, {where}",
                          highlight=False, markup=False, soft_wrap=True)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.started:  # the first epoch of this process (later ones when resuming)
            self.started = True
            self.total = trainer.config.epochs * trainer.steps_per_epoch
            self.lines.begin(epoch * trainer.steps_per_epoch)

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        epoch = step // trainer.steps_per_epoch + 1
        self.lines.update(step + 1, self.total, f"epoch {epoch}/{trainer.config.epochs}, loss {loss:.4f}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        parts = [f"loss {metrics['train_loss']:.4f}", f"train acc {metrics['train_acc']:.4f}"]
        if metrics.get("val_acc") is not None:
            parts.append(f"val acc {metrics['val_acc']:.4f}")
        self.lines.update((epoch + 1) * trainer.steps_per_epoch, self.total,
                          f"epoch {epoch + 1}/{trainer.config.epochs} done: {', '.join(parts)}", force=True)


def train_progress() -> list[Callback]:
    """The trainer's progress callbacks: a rich bar on a terminal, ETA lines otherwise."""
    from ..train import RichProgress

    return [RichProgress()] if console.is_terminal else [TrainLines()]

"""Trainer callbacks: progress bars and hooks for users' own logging."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer


class Callback:
    """Hooks the trainer calls; override the ones you need. All are no-ops by default."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once, after set-up (and after restoring state when resuming)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called before the first batch of ``epoch`` (0-based)."""

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """Called after every optimizer step with the batch loss."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """Called after the epoch's metrics and checkpoint are written."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called once when training finishes."""


class RichProgress(Callback):
    """A rich progress bar over batches with the running loss and each epoch's metrics.

    A resumed run first prints where it starts (``resuming <state>: 2 of 5 epochs done,
    starting at epoch 3 of 5``).

    The CLI installs it; library users opt in by passing it to ``Trainer(callbacks=[...])``.
    """

    def __init__(self, transient: bool = False) -> None:
        self.transient = transient
        self._progress: Any = None
        self._task: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            transient=self.transient,
        )
        self._progress.start()
        if trainer.resumed_from is not None:
            total = trainer.config.epochs
            where = (f"starting at epoch {trainer.start_epoch + 1} of {total}"
                     if trainer.start_epoch < total else f"all {total} epochs are done")
            self._progress.console.print(
                f"resuming {trainer.resumed_from}: {trainer.start_epoch} of {total} epochs done, {where}"
            )

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._task = self._progress.add_task(
            f"epoch {epoch + 1}/{trainer.config.epochs}", total=trainer.steps_per_epoch, info=""
        )

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self._progress.update(self._task, advance=1, info=f"loss {loss:.4f}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        parts = [f"loss {metrics['train_loss']:.4f}", f"train acc {metrics['train_acc']:.4f}"]
        if metrics.get("val_acc") is not None:
            parts.append(f"val acc {metrics['val_acc']:.4f}")
        self._progress.update(self._task, info="  ".join(parts))

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            self._progress.stop()

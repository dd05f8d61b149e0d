"""Trainer callbacks: progress bars, best-robust checkpointing and hooks for users' own logging."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..attacks import PGD
from ..checkpoints import save
from ..core import InputError, ThreatModel, check_int
from ..core.checkpoint import read_checkpoint
from ..data import ImageDataset, make_loader

if TYPE_CHECKING:
    from .trainer import Trainer

logger = logging.getLogger(__name__)

BEST_ROBUST_FILE = "best_robust.safetensors"


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


class BestRobust(Callback):
    """Keep the weights of the epoch with the best PGD accuracy on a held-out split: early
    stopping against robust overfitting (Rice, Wong & Kolter 2020, "Overfitting in adversarially
    robust deep learning": PGD-10 on a validation split, the best checkpoint kept).

    Every ``every`` epochs, and after the last epoch, the live model (``trainer.model``, in eval
    mode) is attacked with :class:`robustlab.attacks.PGD` (``steps`` steps of ``2.5 * eps /
    steps`` from a uniform start, e.g. 2/255 at 8/255 as in Rice et al.). The library's
    evaluation attack rather than the training-time ``pgd_perturb``: it applies the evaluation
    rules (a sample counts as broken if any iterate was adversarial, the one verdict rule,
    randomized models met through the randomness protocol), so the number selected on is the
    number a later evaluation reports. Its random starts come from a generator seeded with
    ``seed`` at every evaluation, so epochs are compared on the same starts.

    Each epoch's metrics gain ``robust_acc`` (``None`` when not evaluated), ``best_robust_acc``
    and ``best_robust_epoch`` (1-based, as ``epoch``). The best weights are kept in memory
    (:attr:`best_state`, on the CPU; :meth:`load_best`) and, when the trainer has an ``out_dir``
    and the model a recipe, written with the library's checkpoint writer
    (:func:`robustlab.checkpoints.save`, as ``model.safetensors``) to ``best_robust.safetensors``,
    whose header's ``metrics`` hold that epoch's metrics; a resumed run reads its best back from
    there. With EMA on, the live weights are evaluated, not the average.

    Args:
        data: the held-out split, an :class:`~robustlab.data.ImageDataset` or ``(x, y)`` tensors.
        eps, norm: the threat model (Fashion-MNIST default 0.1, L-inf).
        steps: PGD steps (10, Rice et al.).
        step_size: PGD step; ``None`` is ``2.5 * eps / steps``.
        every: evaluate every this many epochs.
        batch_size: images per attack batch.
        seed: seed of the attack's random starts.
        filename: the checkpoint's name inside ``out_dir``.
    """

    def __init__(
        self,
        data: ImageDataset | tuple[torch.Tensor, torch.Tensor],
        *,
        eps: float = 0.1,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        every: int = 1,
        batch_size: int = 256,
        seed: int = 0,
        filename: str = BEST_ROBUST_FILE,
    ) -> None:
        check_int(every, "best-robust every", 1)
        check_int(batch_size, "best-robust batch_size", 1)
        if isinstance(data, tuple):
            x, y = data
            if x.shape[0] != y.shape[0]:
                raise InputError(f"held-out images and labels differ in number: {x.shape[0]} and {y.shape[0]}")
        if len(data[1] if isinstance(data, tuple) else data) == 0:
            raise InputError("the held-out split for best-robust checkpointing is empty")
        self.data = data
        self.attack = PGD(ThreatModel(norm, eps), steps=steps, step_size=step_size)  # type: ignore[arg-type]
        self.every = int(every)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.filename = filename
        self.path: Path | None = None
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def _batches(self) -> Any:
        if isinstance(self.data, tuple):
            x, y = self.data
            return ((x[i:i + self.batch_size], y[i:i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size))
        return make_loader(self.data, self.batch_size)

    def robust_accuracy(self, model: nn.Module) -> float:
        """PGD accuracy of ``model`` on the held-out split (the caller sets eval mode)."""
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
        generator = torch.Generator(device=device).manual_seed(self.seed)
        robust = total = 0
        for x, y in self._batches():
            result = self.attack.run(model, x.to(device), y.to(device), generator=generator)
            robust += int((~result.success).sum())
            total += int(y.numel())
        return robust / total

    def load_best(self, model: nn.Module) -> None:
        """Load the best weights into ``model``."""
        if self.best_state is None:
            raise InputError("no robust accuracy was evaluated yet, so there are no best weights")
        model.load_state_dict(self.best_state)

    def on_fit_start(self, trainer: Trainer) -> None:
        self.best_value = self.best_epoch = self.best_state = None
        self.path = trainer.out_dir / self.filename if trainer.out_dir is not None else None
        if trainer.resumed_from is None or self.path is None or not self.path.exists():
            return
        tensors, header = read_checkpoint(self.path)
        metrics = header.get("metrics") or {}
        epoch, value = metrics.get("best_robust_epoch"), metrics.get("best_robust_acc")
        if isinstance(epoch, int) and isinstance(value, (int, float)) and epoch <= trainer.start_epoch:
            self.best_epoch, self.best_value, self.best_state = epoch, float(value), tensors
            logger.info("best robust accuracy so far %.4f at epoch %d (%s)", value, epoch, self.path)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        done = epoch + 1
        value: float | None = None
        if done % self.every == 0 or done == trainer.config.epochs:
            model = trainer.model
            was_training = model.training
            model.eval()
            try:
                value = float(self.robust_accuracy(model))
            finally:
                model.train(was_training)
            improved = self.best_value is None or value > self.best_value
            if improved:
                self.best_value, self.best_epoch = value, done
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        metrics.update(robust_acc=value, best_robust_acc=self.best_value, best_robust_epoch=self.best_epoch)
        if value is not None and improved:
            self._write(trainer, trainer.model, metrics)
        if trainer.out_dir is not None:
            trainer._write_metrics()  # the trainer wrote metrics.jsonl before calling back

    def _write(self, trainer: Trainer, model: nn.Module, metrics: dict[str, Any]) -> None:
        if self.path is None or not trainer.world.main:  # under torchrun, rank 0 writes
            return
        if getattr(model, "robustlab_recipe", None) is None:
            logger.info("best-robust weights kept in memory only: the model carries no recipe")
            return
        save(model, self.path, dataset=trainer.dataset_name,
             train_config={**trainer.config.to_dict(), "objective": trainer.objective.config()},
             metrics=dict(metrics))

"""``robustlab train``: train a model on a registered dataset and write its checkpoint."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from ..core import RobustlabError
from ..train import OBJECTIVES, OPTIMIZERS, SCHEDULES
from ..train.callbacks import Callback
from .console import console, note
from .errors import boundary, on_interrupt, rerun
from .options import (
    DATASET_NAMES,
    MODEL_NAMES,
    Device,
    Download,
    Root,
    check_writable,
    names,
    parse_device,
)
from .progress import train_progress

if TYPE_CHECKING:
    from ..data.base import DatasetInfo
    from ..train import Trainer


def schedule_options(schedule: str) -> set[str]:
    """The options a registered schedule takes from the command line (an unknown one is refused)."""
    factory = SCHEDULES.get(schedule)
    return {p for p in inspect.signature(factory).parameters if p not in ("total_steps", "steps_per_epoch")}


def schedules_taking(option: str) -> str:
    return ", ".join(s for s in SCHEDULES.names() if option in schedule_options(s))


def check_forward(net: torch.nn.Module, info: DatasetInfo, model: str) -> None:
    """One forward pass on a blank image, so a model that cannot take the dataset's image size
    is refused before training starts (not with a torch traceback in the first step)."""
    x = torch.zeros(2, info.in_channels, *info.image_size)
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RobustlabError(f"--model {model} cannot take {info.image_size[0]}x{info.image_size[1]} "
                             f"{info.name} images ({first}); pick a model for small images, e.g. "
                             "resnet-mini") from None
    finally:
        net.train(was)


class WorldSizeNote(Callback):
    """Says so when a run resumes a training state written by another number of processes."""

    def on_fit_start(self, trainer: Trainer) -> None:
        before, now = trainer.resumed_world_size, trainer.world.size
        if trainer.resumed_from is not None and before is not None and before != now:
            note(f"{trainer.resumed_from} was written by {before} process(es) and resumes on {now}: the "
                 f"same global batch of {trainer.config.batch_size} ({trainer.config.batch_size // now} "
                 "per process); random streams of the ranks other than 0 are drawn afresh")


@boundary(ema_decay="--ema")
def train(
    dataset: Annotated[str, typer.Option(help=f"dataset: {DATASET_NAMES}")] = "fashion-mnist",
    model: Annotated[str, typer.Option(help=f"architecture: {MODEL_NAMES}")] = "resnet-mini",
    objective: Annotated[str, typer.Option(help=f"training objective: {names(OBJECTIVES)}")] = "standard",
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 5,
    lr: Annotated[float, typer.Option(min=0, help="peak learning rate (> 0)")] = 0.1,
    optimizer: Annotated[str, typer.Option(help=f"optimizer: {names(OPTIMIZERS)}")] = "sgd",
    weight_decay: Annotated[float, typer.Option(min=0, help="L2 weight decay (not on norms and biases)")] = 5e-4,
    schedule: Annotated[str, typer.Option(help=f"learning-rate schedule: {names(SCHEDULES)}")] = "onecycle",
    milestones: Annotated[str | None, typer.Option(help="multistep: epochs where the rate drops 10x, e.g. 100,105")] = None,
    warmup_epochs: Annotated[float, typer.Option(min=0, help=f"linear warmup epochs ({schedules_taking('warmup_epochs')})")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="images per step, over all processes under torchrun (the global batch)")] = 128,
    label_smoothing: Annotated[float, typer.Option(min=0, max=1, help="standard objective: label smoothing in [0, 1]")] = 0.0,
    ema: Annotated[float | None, typer.Option(min=0, max=1, help="EMA decay of the weights, e.g. 0.999")] = None,
    grad_clip: Annotated[float | None, typer.Option(min=0, help="clip the gradient norm to this value (0: no clipping)")] = None,
    seed: Annotated[int, typer.Option(min=0, help="seed of the weights, the data order and the subsets")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="train on a stratified subset of this many images")] = None,
    val_size: Annotated[float, typer.Option(min=0, help="hold out this many training images (>= 1) or this fraction (< 1) for validation")] = 0,
    root: Root = None,
    download: Download = False,
    device: Device = "auto",
    out: Annotated[Path, typer.Option(help="run folder (checkpoints, metrics.jsonl)")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="continue from OUT/last.safetensors if present (--no-resume starts over)")] = True,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="under torchrun: batch norm with the global batch's statistics (default: each process's own)")] = False,
) -> None:
    """Train a model and write OUT/model.safetensors.

    Example: robustlab train --dataset fashion-mnist --model resnet-mini --epochs 5 --out runs/fm

    On several GPUs (or CPU processes), launch the same command with torchrun, e.g.
    torchrun --nproc_per_node 4 -m robustlab train --batch-size 512 --device cuda ...
    Each process trains on its share of every batch: --batch-size is the global batch (a
    multiple of the number of processes; 128 each here), --lr is that global batch's rate,
    and the data order is the single-process run's. Only the first process prints and writes
    OUT; a run resumes on another number of processes with the same --batch-size.
    """
    from ..core.distributed import current_world
    from ..data import get_info, load_dataset
    from ..models import create_model
    from ..train import TrainConfig, Trainer, create_objective
    from ..train.trainer import STATE_FILE

    dev = parse_device(device)
    check_writable(out, "--out", folder=True)
    takes = schedule_options(schedule)  # an unknown schedule lists the known ones
    if milestones and "milestones" not in takes:
        raise RobustlabError(f"--milestones applies to --schedule {schedules_taking('milestones')}, not {schedule}")
    if warmup_epochs and "warmup_epochs" not in takes:
        raise RobustlabError(f"--warmup-epochs applies to --schedule {schedules_taking('warmup_epochs')}, "
                             f"not {schedule}")
    obj_params = inspect.signature(OBJECTIVES.get(objective)).parameters
    if label_smoothing and "label_smoothing" not in obj_params:
        raise RobustlabError(f"--label-smoothing applies to --objective standard, not {objective}")
    OPTIMIZERS.get(optimizer)
    if val_size >= 1 and not float(val_size).is_integer():
        raise RobustlabError(f"--val-size takes a count of images (>= 1) or a fraction in (0, 1), got {val_size:g}")
    held_out: int | float = int(val_size) if val_size >= 1 else float(val_size)
    world = current_world()  # under torchrun: join its process group (one process otherwise)
    torch.manual_seed(seed)
    info = get_info(dataset, **({"root": root} if root else {}))
    kw: dict[str, Any] = {"root": root} if root else {}
    if download:
        kw["download"] = True
    if download and not world.main:
        world.barrier()  # the first process downloads; the others read what it wrote
    train_set = load_dataset(dataset, "train", limit=limit, val_size=held_out, seed=seed, **kw)
    if limit is not None and len(train_set) < limit and world.main:
        after = " after the --val-size hold-out" if held_out else ""
        note(f"--limit {limit} > {len(train_set)} training images{after}: training on all {len(train_set)}")
    val_set = load_dataset(dataset, "val", val_size=held_out, seed=seed, **kw) if held_out else None
    if download and world.main:
        world.barrier()
    net = create_model(model, num_classes=info.num_classes, in_channels=info.in_channels,
                       mean=info.mean, std=info.std, seed=seed)
    check_forward(net, info, model)
    obj_kw: dict[str, Any] = {"label_smoothing": label_smoothing} if "label_smoothing" in obj_params else {}
    sched_kw: dict[str, Any] = {"warmup_epochs": warmup_epochs} if warmup_epochs else {}
    if milestones:
        try:
            sched_kw["milestones"] = [float(m) for m in milestones.split(",") if m.strip()]
        except ValueError:
            raise RobustlabError(f"--milestones takes comma-separated epochs such as 100,105, got {milestones!r}") from None
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                      weight_decay=weight_decay, schedule=schedule, schedule_options=sched_kw,
                      ema_decay=ema, grad_clip=grad_clip, seed=seed, sync_bn=sync_bn)
    callbacks = [WorldSizeNote(), *train_progress()] if world.main else []  # one process prints
    trainer = Trainer(net, create_objective(objective, **obj_kw), cfg, callbacks=callbacks,
                      out_dir=out, device=dev, dataset_name=dataset, world=world)

    def interrupted() -> str:
        saved = out / STATE_FILE
        return "interrupted: " + (f"the last finished epoch is saved in {saved}; to resume, rerun: {rerun()}"
                                  if saved.exists() else "no epoch had finished, nothing was saved")

    with on_interrupt(interrupted):
        result = trainer.fit(train_set, val_set, resume=resume)
    last = result.history[-1] if result.history else {}
    if world.main:
        console.print(f"saved [bold]{result.checkpoint}[/]; last epoch: {json.dumps(last)}", soft_wrap=True)

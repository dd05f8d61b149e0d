"""The ``robustlab`` command line. It owns the console: rich tables and progress bars.

Everything a user types is checked here, before any work, and every refusal is one line that
names the flag and the fix (``error: ...``): click's usage errors too (:class:`_Commands`), and
library messages that speak in Python keywords (``milestones=(100, 105)``) are translated into
the command's flags (``--milestones 100,105``) by :func:`_cli_words`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from . import __version__
from .attacks.verdict import VERDICT_DRAWS
from .core import RobustlabError, ThreatModel
from .data import DATASETS
from .defenses.downsampling import METHODS
from .evaluate import BATTERIES
from .models import MODELS
from .train import OBJECTIVES, OPTIMIZERS, SCHEDULES
from .train.callbacks import Callback

if TYPE_CHECKING:
    from .data.base import DatasetInfo
    from .train import Trainer

PROG = "robustlab"
_INVOCATION: list[str] = []  # the arguments of the running command, for "rerun to resume" hints

# click's exception base, found through a public class (typer >= 0.2x vendors click)
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


class _Commands(TyperGroup):
    """Typer's command group, with click's usage errors as one ``error:`` line (no boxed panel)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        _INVOCATION[:] = argv
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `robustlab` alone: the help, as typer shows it
                return super().main(argv, prog_name, complete_var, standalone_mode=standalone_mode, **extra)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _error_line(f"{e.format_message()}{hint}")  # type: ignore[attr-defined]
            rv = int(getattr(e, "exit_code", 2))
        except typer.Abort:
            _error_line("aborted")
            rv = 1
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_Commands,
    help="robustlab: adversarial robustness research in PyTorch.\n\n"
         "Example: robustlab train --dataset digits --epochs 2 --out runs/digits && "
         "robustlab evaluate runs/digits/model.safetensors --n 100",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error is one line, however long


def _error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def _note(message: str) -> None:
    """A line saying what the CLI did with an input it adjusted."""
    console.print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# errors in the CLI's own words


def _flags(command: Callable[..., Any], **renames: str) -> dict[str, str]:
    """Python keyword -> CLI flag for a command: its parameters, plus library names it renames."""
    flags = {name: "--" + name.replace("_", "-") for name in inspect.signature(command).parameters}
    return {**flags, **renames}


_PLURALS = {"batterys": "batteries"}


def _with_value(flag: str, listed: bool = False) -> Callable[[re.Match[str]], str]:
    """A regex replacement ``flag value``; a listed ``(100, 105)`` becomes ``100,105``."""

    def replace(m: re.Match[str]) -> str:
        value = m.group(1).strip()
        if listed:
            value = re.sub(r"[,\s]+", ",", value)
        return f"{flag} {value}"

    return replace


def _cli_words(message: str, flags: dict[str, str]) -> str:
    """Rewrite Python keywords in a library message as the command's flags.

    ``milestones=(100, 105)`` -> ``--milestones 100,105``; ``include_pooling=True`` ->
    ``--include-pooling``; ``resume=False`` -> ``--no-resume``; ``root=`` -> ``--root``;
    ``_sd() got an unexpected keyword argument 'p'`` -> ``does not take --p``; ``limit must`` ->
    ``--limit must``; ``n=None`` -> ``leave out --n``; ``must be None or`` -> ``must be`` (a flag
    is never None).
    """
    for wrong, right in _PLURALS.items():
        message = message.replace(wrong, right)
    message = message.replace("must be None or ", "must be ")

    def unexpected(m: re.Match[str]) -> str:
        name = m.group(2)
        return f"does not take {flags.get(name, '--' + name.replace('_', '-'))}"

    message = re.sub(r"(\w+\(\) )?got an unexpected keyword argument '(\w+)'", unexpected, message)
    for name in sorted(flags, key=len, reverse=True):
        flag = flags[name]
        word = rf"(?<![\w./\-']){re.escape(name)}"
        message = re.sub(word + r"=True\b", flag, message)
        message = re.sub(word + r"=False\b", "--no-" + flag[2:], message)
        message = re.sub(word + r"=None\b", "leave out " + flag, message)
        message = re.sub(word + r"(?= ?(<=|>=|<|>) )", flag, message)
        message = re.sub(word + r"=[(\[]([^()\[\]]*)[)\]]", _with_value(flag, listed=True), message)
        message = re.sub(word + r"='([^']*)'", _with_value(flag), message)
        message = re.sub(word + r"=(?=[\s,;)]|$)", flag, message)
        message = re.sub(word + r"=(?=\S)", flag + " ", message)
        message = re.sub(word + r"\b(?= must\b)", flag, message)
        if "_" in name:  # "(grad_clip)", not a plain word such as "(epochs)"
            message = re.sub(r"\(" + re.escape(name) + r"\)", f"({flag})", message)
        message = re.sub(r"takes no option " + re.escape(name) + r"\b", f"takes no {flag}", message)
    return message


def _fail(e: Exception, flags: dict[str, str] | None = None) -> None:
    """Print ``e`` as one ``error:`` line in the CLI's words and exit with code 2."""
    _error_line(_cli_words(str(e), flags or {}))
    raise typer.Exit(code=2)


def _os_error(e: OSError) -> RobustlabError:
    """An OSError (a path that cannot be read or written, a full disk) as one line naming the path."""
    where = f" {e.filename}" if e.filename else ""
    return RobustlabError(f"cannot use{where}: {e.strerror or e}; check the path and its permissions")


# ---------------------------------------------------------------------------------------------
# choices, listed in every option's help from the registries


def _names(registry: Any, *extra: str) -> str:
    return ", ".join([*registry.names(), *extra])


DATASET_NAMES = _names(DATASETS)
MODEL_NAMES = _names(MODELS, "torchvision:<name>", "timm:<name>")
BATTERY_NAMES = _names(BATTERIES)
NORMS = ("linf", "l2")
DEVICE_HELP = "cpu, cuda, cuda:N or auto (a GPU when there is one)"

# L2 radii per dataset in [0, 1] pixel space: the datasets' ThreatModel defaults are all L-inf.
# Fashion-MNIST 1.5: the MNIST L2 radius of Schott et al. 2019 ("Towards the first adversarially
# robust neural network model on MNIST", Sec. 5). CIFAR 0.5: the RobustBench L2 leaderboard
# (Croce et al. 2021, Sec. 3) and AutoAttack's L2 evaluations (Croce & Hein 2020, Sec. 5).
# ImageNet-scale (imagefolder) 3.0: the L2 ImageNet models of Engstrom et al.'s robustness
# library and Salman et al. 2020 ("Do adversarially robust ImageNet models transfer better?").
# A dataset without a published radius gets Fashion-MNIST's per-pixel size, 1.5 / sqrt(28 * 28),
# times sqrt(its pixel count): the same RMS change per pixel (digits, 8x8: 0.43).
L2_EPS = {"fashion-mnist": 1.5, "cifar10": 0.5, "cifar100": 0.5, "imagefolder": 3.0}
_L2_PER_PIXEL = 1.5 / 28


def l2_default(info: DatasetInfo) -> float:
    """The CLI's L2 radius for a dataset (see :data:`L2_EPS` for where the values come from)."""
    if info.name in L2_EPS:
        return L2_EPS[info.name]
    pixels = info.in_channels * info.image_size[0] * info.image_size[1]
    return round(_L2_PER_PIXEL * math.sqrt(pixels), 3)


def _eps(text: str, norm: str = "linf") -> float:
    """Parse an eps given as a number or a fraction such as ``8/255``, checked for ``norm``."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise RobustlabError(f"--eps must be a number or a fraction such as 8/255, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise RobustlabError(f"--eps must be a finite number >= 0, got {text!r}")
    if norm == "linf" and value > 1:
        guess = f"{value:g}/255"
        raise RobustlabError(f"--eps {text} is larger than the whole [0, 1] pixel range for linf; "
                             f"did you mean {guess}? (pass --eps {guess})")
    return value


def _norm(norm: str | None) -> str | None:
    if norm is not None and norm not in NORMS:
        raise RobustlabError(f"unknown --norm {norm!r}; use linf or l2")
    return norm


def _threat(info: DatasetInfo, norm: str | None, eps: str | None) -> ThreatModel:
    """``--norm``/``--eps`` over the dataset's default; ``--norm l2`` alone gets the L2 default."""
    chosen = norm or info.threat.norm
    if eps is not None:
        return ThreatModel(chosen, _eps(eps, chosen))  # type: ignore[arg-type]
    if chosen == info.threat.norm:
        return info.threat
    if chosen == "l2":
        return ThreatModel("l2", l2_default(info))
    raise RobustlabError(f"{info.name} has no default {chosen} radius; pass --eps")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RobustlabError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise RobustlabError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobustlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


# ---------------------------------------------------------------------------------------------
# output paths, checked before any work


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable(path: Path, flag: str, *, folder: bool) -> None:
    """Refuse an output path that cannot be written: a file where a folder is wanted (or the
    reverse), a file on the way, or a folder without write permission."""
    if folder and path.exists() and not path.is_dir():
        raise RobustlabError(f"{flag} {path} is a file, not a folder; pass a folder (it is created if missing)")
    if not folder and path.is_dir():
        raise RobustlabError(f"{flag} {path} is a folder; pass a file path inside it")
    parent = _existing_parent(path if folder else path.parent)
    if not parent.is_dir():
        raise RobustlabError(f"{flag} {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RobustlabError(f"{flag} {path} cannot be written: no write permission in "
                             f"{path if path.exists() and folder else parent}; pass a path you can write")


def _rerun() -> str:
    """The command that was run, to print in a 'rerun to resume' hint."""
    return shlex.join([PROG, *_INVOCATION])


# ---------------------------------------------------------------------------------------------
# progress: rich bars on a terminal, throttled lines with an ETA otherwise (logs, CI, pipes)


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _LineProgress:
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
        eta = f"ETA {_clock((total - done) / rate)}" if rate > 0 else "ETA unknown"
        pct = 100 * done / total if total else 100.0
        extra = f", {detail}" if detail else ""
        console.print(f"{self.what}: {done}/{total} ({pct:.0f}%){extra}, elapsed {_clock(elapsed)}, {eta}",
                      highlight=False, soft_wrap=True, markup=False)


class _BatteryProgress:
    """Turns run_battery's progress events into a rich bar (terminal) or ETA lines (no terminal).

    The bar lives from the battery's ``start`` event to its ``end`` event, so it never overlaps
    the training bars of a pipeline that trains, then evaluates. It remembers how many batches
    are finished (and saved), for the message of an interrupted evaluation.
    """

    def __init__(self, live: bool | None = None) -> None:
        self.live = console.is_terminal if live is None else live
        self.progress: Any = None
        self.task: Any = None
        self.lines = _LineProgress("attacking (batches)")
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
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("attacking", total=event.total, completed=event.completed)

    def close(self) -> None:
        """Stop the bar (at the end, or when a battery ended early)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _TrainLines(Callback):
    """The trainer's progress as ETA lines, for runs without a terminal."""

    def __init__(self) -> None:
        self.lines = _LineProgress("training (steps)")
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


def _train_progress() -> list[Callback]:
    from .train import RichProgress

    return [RichProgress()] if console.is_terminal else [_TrainLines()]


# ---------------------------------------------------------------------------------------------
# commands


@app.command()
def info() -> None:
    """Show versions, the device and every registry's names.

    Example: robustlab info
    """
    from .defenses import CONVERSIONS

    t = Table(title=f"robustlab {__version__}", show_header=False)
    t.add_row("python", platform.python_version())
    t.add_row("torch", torch.__version__)
    t.add_row("cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available")
    t.add_row("threads", str(torch.get_num_threads()))
    regs: list[tuple[str, Any]] = [
        ("datasets", DATASETS), ("models", MODELS), ("objectives", OBJECTIVES),
        ("optimizers", OPTIMIZERS), ("schedules", SCHEDULES), ("conversions", CONVERSIONS),
        ("batteries", BATTERIES),
    ]
    try:
        from .attacks import ATTACKS

        regs.append(("attacks", ATTACKS))
    except ImportError:  # attacks package not built yet in this tree
        pass
    for name, reg in regs:
        names = ", ".join(reg.names()) or "-"
        if name == "models":
            names += ", torchvision:<name>, timm:<name>"
        t.add_row(name, names)
    console.print(t)


def _schedule_options(schedule: str) -> set[str]:
    factory = SCHEDULES.get(schedule)
    return {p for p in inspect.signature(factory).parameters if p not in ("total_steps", "steps_per_epoch")}


def _schedules_taking(option: str) -> str:
    return ", ".join(s for s in SCHEDULES.names() if option in _schedule_options(s))


def _check_forward(net: torch.nn.Module, info_: DatasetInfo, model: str) -> None:
    """One forward pass on a blank image, so a model that cannot take the dataset's image size
    is refused before training starts (not with a torch traceback in the first step)."""
    x = torch.zeros(2, info_.in_channels, *info_.image_size)
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RobustlabError(f"--model {model} cannot take {info_.image_size[0]}x{info_.image_size[1]} "
                             f"{info_.name} images ({first}); pick a model for small images, e.g. "
                             "resnet-mini") from None
    finally:
        net.train(was)


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help=f"dataset: {DATASET_NAMES}")] = "fashion-mnist",
    model: Annotated[str, typer.Option(help=f"architecture: {MODEL_NAMES}")] = "resnet-mini",
    objective: Annotated[str, typer.Option(help=f"training objective: {_names(OBJECTIVES)}")] = "standard",
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 5,
    lr: Annotated[float, typer.Option(min=0, help="peak learning rate (> 0)")] = 0.1,
    optimizer: Annotated[str, typer.Option(help=f"optimizer: {_names(OPTIMIZERS)}")] = "sgd",
    weight_decay: Annotated[float, typer.Option(min=0, help="L2 weight decay (not on norms and biases)")] = 5e-4,
    schedule: Annotated[str, typer.Option(help=f"learning-rate schedule: {_names(SCHEDULES)}")] = "onecycle",
    milestones: Annotated[str | None, typer.Option(help="multistep: epochs where the rate drops 10x, e.g. 100,105")] = None,
    warmup_epochs: Annotated[float, typer.Option(min=0, help=f"linear warmup epochs ({_schedules_taking('warmup_epochs')})")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="images per step")] = 128,
    label_smoothing: Annotated[float, typer.Option(min=0, max=1, help="standard objective: label smoothing in [0, 1]")] = 0.0,
    ema: Annotated[float | None, typer.Option(min=0, max=1, help="EMA decay of the weights, e.g. 0.999")] = None,
    grad_clip: Annotated[float | None, typer.Option(min=0, help="clip the gradient norm to this value (0: no clipping)")] = None,
    seed: Annotated[int, typer.Option(min=0, help="seed of the weights, the data order and the subsets")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="train on a stratified subset of this many images")] = None,
    val_size: Annotated[float, typer.Option(min=0, help="hold out this many training images (>= 1) or this fraction (< 1) for validation")] = 0,
    root: Annotated[Path | None, typer.Option(help="dataset folder (default: $ROBUSTLAB_DATA or the dataset's own)")] = None,
    download: Annotated[bool, typer.Option("--download", help="fetch the dataset if it is missing, where it can be (CIFAR); needs network")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    out: Annotated[Path, typer.Option(help="run folder (checkpoints, metrics.jsonl)")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="continue from OUT/last.safetensors if present (--no-resume starts over)")] = True,
) -> None:
    """Train a model and write OUT/model.safetensors.

    Example: robustlab train --dataset fashion-mnist --model resnet-mini --epochs 5 --out runs/fm
    """
    from .data import get_info, load_dataset
    from .models import create_model
    from .train import TrainConfig, Trainer, create_objective
    from .train.trainer import STATE_FILE

    flags = _flags(train, ema_decay="--ema")
    try:
        dev = _device(device)
        _check_writable(out, "--out", folder=True)
        takes = _schedule_options(schedule)  # an unknown schedule lists the known ones
        if milestones and "milestones" not in takes:
            raise RobustlabError(f"--milestones applies to --schedule {_schedules_taking('milestones')}, "
                                 f"not {schedule}")
        if warmup_epochs and "warmup_epochs" not in takes:
            raise RobustlabError(f"--warmup-epochs applies to --schedule {_schedules_taking('warmup_epochs')}, "
                                 f"not {schedule}")
        obj_params = inspect.signature(OBJECTIVES.get(objective)).parameters
        if label_smoothing and "label_smoothing" not in obj_params:
            raise RobustlabError(f"--label-smoothing applies to --objective standard, not {objective}")
        OPTIMIZERS.get(optimizer)
        if val_size >= 1 and not float(val_size).is_integer():
            raise RobustlabError(f"--val-size takes a count of images (>= 1) or a fraction in (0, 1), got {val_size:g}")
        held_out: int | float = int(val_size) if val_size >= 1 else float(val_size)
        torch.manual_seed(seed)
        info_ = get_info(dataset, **({"root": root} if root else {}))
        kw: dict[str, Any] = {"root": root} if root else {}
        if download:
            kw["download"] = True
        train_set = load_dataset(dataset, "train", limit=limit, val_size=held_out, seed=seed, **kw)
        if limit is not None and len(train_set) < limit:
            after = " after the --val-size hold-out" if held_out else ""
            _note(f"--limit {limit} > {len(train_set)} training images{after}: training on all {len(train_set)}")
        val_set = load_dataset(dataset, "val", val_size=held_out, seed=seed, **kw) if held_out else None
        net = create_model(model, num_classes=info_.num_classes, in_channels=info_.in_channels,
                           mean=info_.mean, std=info_.std, seed=seed)
        _check_forward(net, info_, model)
        obj_kw: dict[str, Any] = {"label_smoothing": label_smoothing} if "label_smoothing" in obj_params else {}
        sched_kw: dict[str, Any] = {"warmup_epochs": warmup_epochs} if warmup_epochs else {}
        if milestones:
            try:
                sched_kw["milestones"] = [float(m) for m in milestones.split(",") if m.strip()]
            except ValueError:
                raise RobustlabError(f"--milestones takes comma-separated epochs such as 100,105, got {milestones!r}") from None
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                          weight_decay=weight_decay, schedule=schedule, schedule_options=sched_kw,
                          ema_decay=ema, grad_clip=grad_clip, seed=seed)
        trainer = Trainer(net, create_objective(objective, **obj_kw), cfg, callbacks=_train_progress(),
                          out_dir=out, device=dev, dataset_name=dataset)
        try:
            result = trainer.fit(train_set, val_set, resume=resume)
        except KeyboardInterrupt:
            saved = out / STATE_FILE
            what = (f"the last finished epoch is saved in {saved}; to resume, rerun: {_rerun()}"
                    if saved.exists() else "no epoch had finished, nothing was saved")
            _error_line(f"interrupted: {what}")
            raise typer.Exit(code=130) from None
    except RobustlabError as e:
        _fail(e, flags)
        return
    except OSError as e:
        _fail(_os_error(e), flags)
        return
    last = result.history[-1] if result.history else {}
    console.print(f"saved [bold]{result.checkpoint}[/]; last epoch: {json.dumps(last)}", soft_wrap=True)


def _load_for_dataset(checkpoint: Path, dev: torch.device, dataset: str | None, root: Path | None,
                      force_dataset: bool, norm: str | None, eps: str | None
                      ) -> tuple[torch.nn.Module, dict[str, Any], str, dict[str, Any], DatasetInfo, ThreatModel]:
    """Load a checkpoint and resolve the dataset it is evaluated on (``--dataset`` or the one its
    header names), that dataset's keyword arguments and the threat model (``--norm``, ``--eps``)."""
    from . import load
    from .data import get_info

    model = load(checkpoint, device=dev)
    header: dict[str, Any] = getattr(model, "robustlab_header", {})
    name = dataset or header.get("dataset")
    if not name:
        raise RobustlabError("the checkpoint names no dataset; pass --dataset")
    kw: dict[str, Any] = {"root": root} if root else {}
    info_ = get_info(name, **kw)
    _check_dataset(header, name, force_dataset, info_)
    return model, header, name, kw, info_, _threat(info_, norm, eps)


def _check_dataset(header: dict[str, Any], name: str, force: bool, info_: DatasetInfo) -> None:
    """Refuse to evaluate a checkpoint on another dataset than it records, unless forced; refuse
    even then when the images or classes cannot fit the network."""
    trained_on = header.get("dataset")
    if trained_on and trained_on != name and not force:
        raise RobustlabError(f"the checkpoint was trained on {trained_on}, not {name}; pass --force-dataset "
                             f"to evaluate it on {name} anyway (or drop --dataset)")
    recipe = header.get("recipe")
    kwargs = recipe.get("kwargs", {}) if isinstance(recipe, dict) else {}
    channels = kwargs.get("in_channels", kwargs.get("in_chans"))
    if isinstance(channels, int) and channels != info_.in_channels:
        raise RobustlabError(f"the model takes {channels}-channel images but {name} has {info_.in_channels}; "
                             "it cannot be evaluated there")
    classes = kwargs.get("num_classes")
    if isinstance(classes, int) and classes != info_.num_classes:
        raise RobustlabError(f"the model predicts {classes} classes but {name} has {info_.num_classes}; "
                             "it cannot be evaluated there")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="a model .safetensors file")],
    dataset: Annotated[str | None, typer.Option(help=f"dataset: {DATASET_NAMES} (default: the checkpoint's)")] = None,
    force_dataset: Annotated[bool, typer.Option("--force-dataset", help="evaluate on --dataset even if the checkpoint was trained on another")] = False,
    n: Annotated[int | None, typer.Option(min=1, help="evaluate on a stratified subset of n test images (default: all)")] = None,
    battery: Annotated[str, typer.Option(help=f"attack battery: {BATTERY_NAMES}, or none (clean accuracy only)")] = "quick",
    eps: Annotated[str | None, typer.Option(help="attack radius in [0, 1] pixels, e.g. 0.1 or 8/255 (default: the dataset's for the norm)")] = None,
    norm: Annotated[str | None, typer.Option(help="threat norm: linf or l2 (default: the dataset's, linf)")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="re-run the battery; report mean ± std")] = 1,
    ensemble: Annotated[int, typer.Option(min=1, help="one draw of a randomized model = the mean softmax over this many forwards")] = 1,
    draws: Annotated[int, typer.Option(min=1, help="randomized models: fresh draws per estimate (each comparison and the final figure)")] = VERDICT_DRAWS,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch (also the unit of saved progress)")] = 500,
    seed: Annotated[int, typer.Option(min=0, help="root of every random draw of the evaluation")] = 0,
    root: Annotated[Path | None, typer.Option(help="dataset folder (default: $ROBUSTLAB_DATA or the dataset's own)")] = None,
    download: Annotated[bool, typer.Option("--download", help="fetch the dataset if it is missing, where it can be (CIFAR); needs network")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    ledger: Annotated[Path, typer.Option(help="SQLite ledger the result row is added to")] = Path("runs/ledger.sqlite"),
    state_dir: Annotated[Path | None, typer.Option(help="save per-batch state here and resume from it (default: eval-state/ beside the ledger)")] = None,
    no_state: Annotated[bool, typer.Option("--no-state", help="save no state: an interrupted evaluation starts over")] = False,
    surrogate: Annotated[Path | None, typer.Option(help="checkpoint of a surrogate model: the full battery adds a transfer attack from it, the sparse battery its PW-T attacks (the unsupervised-decoder twin)")] = None,
    bpda: Annotated[str | None, typer.Option(help="BPDA for every gradient attack of the battery: identity or smooth (for non-differentiable layers), bypass (through autoencoding front ends as the identity)")] = None,
) -> None:
    """Evaluate a checkpoint: clean accuracy and worst-case robust accuracy under an attack battery.

    Progress is saved per batch (under eval-state/ beside the ledger unless --state-dir or
    --no-state says otherwise): an interrupted evaluation resumes when the same command is rerun.

    Example: robustlab evaluate runs/fm/model.safetensors --n 1000 --battery standard --eps 0.1
    """
    from . import load
    from .core.metrics import accuracy
    from .data import load_dataset, make_loader
    from .evaluate import Ledger, run_battery
    from .evaluate.result import robust_measure

    flags = _flags(evaluate, limit="--n")
    bar = _BatteryProgress()
    state: Path | None = None
    try:
        dev = _device(device)
        if bpda is not None and bpda not in ("identity", "smooth", "bypass"):
            raise RobustlabError(f"unknown --bpda {bpda!r}; use identity, smooth or bypass")
        _norm(norm)
        battery_name = battery.strip().lower()
        if battery_name != "none":
            BATTERIES.get(battery_name)  # an unknown battery lists the known ones, before any work
        if surrogate is not None and battery_name not in ("full", "sparse"):
            raise RobustlabError("--surrogate is used by the full and sparse batteries only; add --battery full")
        if no_state and state_dir is not None:
            raise RobustlabError("--no-state and --state-dir contradict each other; pass one of them")
        if eps is not None:
            _eps(eps, norm or "l2")  # the form of the number; its range is checked once the norm is known
        if dataset is not None:
            DATASETS.get(dataset)
        if battery_name != "none":
            _check_writable(ledger, "--ledger", folder=False)
            state = None if no_state else (state_dir if state_dir is not None else ledger.parent / "eval-state")
            if state is not None:
                _check_writable(state, "--state-dir", folder=True)
        model, header, name, kw, info_, threat = _load_for_dataset(checkpoint, dev, dataset, root, force_dataset,
                                                                   norm, eps)
        if download:
            kw["download"] = True
        test = load_dataset(name, "test", limit=n, seed=seed, **kw)
        if n is not None and len(test) < n:
            _note(f"--n {n} > {len(test)} test images: evaluating all {len(test)}")
        if battery_name == "none":
            acc = accuracy(model, make_loader(test, batch_size), dev)
            t = Table(title=f"{checkpoint}")
            for c in ("dataset", "images", "clean accuracy (%)"):
                t.add_column(c)
            t.add_row(name, str(len(test)), f"{100 * acc:.2f}")
            console.print(t)
            return
        options: dict[str, Any] = {}
        if surrogate is not None:
            options["surrogate"] = load(surrogate, device=dev)
        try:
            result = run_battery(model, test, battery_name, threat=threat, batch_size=batch_size,
                                 battery_options=options,
                                 repeats=repeats, ensemble=ensemble, draws=draws, seed=seed, device=dev,
                                 state_dir=state, progress=bar, bpda=bpda,  # type: ignore[arg-type]
                                 name=checkpoint.stem if checkpoint.stem != "model" else None)
        finally:
            bar.close()
        row = Ledger(ledger).add(result, extra={"checkpoint": str(checkpoint)})
    except KeyboardInterrupt:
        bar.close()
        _error_line(_interrupted(bar, state))
        raise typer.Exit(code=130) from None
    except RobustlabError as e:
        _fail(e, flags)
        return
    except OSError as e:
        _fail(_os_error(e), flags)
        return
    t = Table(title=f"{checkpoint}: {result.battery} on {name} ({threat.norm} eps={threat.eps:.4g})")
    rows = result.table_rows()
    for c in rows[0]:
        t.add_column(c, justify="left" if c == "stage" else "right")
    for r in rows:
        t.add_row(*r.values())
    console.print(t)
    pm = " ± " if result.repeats > 1 else ""
    clean = f"{100 * result.clean_acc:.2f}" + (f"{pm}{100 * result.clean_std:.2f}" if pm else "")
    robust = f"{100 * result.robust_acc:.2f}" + (f"{pm}{100 * result.robust_std:.2f}" if pm else "")
    console.print(f"clean accuracy {clean}%, {robust_measure(result.config)}: {robust}% on {result.n} "
                  f"{name} test images in {result.seconds:.1f} s; ledger row {row} in [bold]{ledger}[/]")
    if result.config.get("stochastic"):
        console.print(f"the model is randomized ({result.randomness}): per image, the probability that a "
                      f"draw classifies the worst point found correctly, on "
                      f"{result.config.get('verdict_draws', 1)} fresh draws")
    for w in result.warnings:
        console.print(f"[yellow]warning[/] {escape(str(w))}")


def _interrupted(bar: _BatteryProgress, state: Path | None) -> str:
    """What an interrupted evaluation saved, and how to resume it."""
    if bar.completed is None:
        return "interrupted before the first batch; nothing to resume"
    done = f"{bar.completed} of {bar.total} batches finished"
    if state is None:
        return f"interrupted: {done}, none saved (--no-state); rerun without --no-state to make it resumable"
    if bar.partial is not None:
        done += f" (and {bar.partial})"
    elif bar.completed == 0:
        return f"interrupted before the first batch finished; nothing saved yet in {state}"
    return f"interrupted: {done} and saved under {state}; to resume, rerun: {_rerun()}"


@app.command()
def leaderboard(
    ledger: Annotated[Path, typer.Option(help="the SQLite ledger to read")] = Path("runs/ledger.sqlite"),
    dataset: Annotated[str | None, typer.Option(help=f"only rows of this dataset: {DATASET_NAMES}")] = None,
    battery: Annotated[str | None, typer.Option(help=f"only rows of this battery: {BATTERY_NAMES}")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="also export the rows to this CSV file")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also export the rows to this JSON file")] = None,
) -> None:
    """Show the ledger's evaluations, ranked within each dataset, threat model and battery.

    Example: robustlab leaderboard --dataset fashion-mnist --csv runs/leaderboard.csv
    """
    from .evaluate import Ledger
    from .evaluate.ledger import leaderboard_groups

    flags = _flags(leaderboard, csv_out="--csv", json_out="--json")
    try:
        if not ledger.exists():
            raise RobustlabError(f"no ledger at {ledger}; `robustlab evaluate` writes one, or pass --ledger")
        for flag, path in (("--csv", csv_out), ("--json", json_out)):
            if path is not None:
                _check_writable(path, flag, folder=False)
        led = Ledger(ledger)
        rows = sorted(led.rows(dataset=dataset, battery=battery), key=lambda r: (-r.robust_acc, r.id))
        if csv_out is not None:
            led.to_csv(csv_out, rows)
        if json_out is not None:
            led.to_json(json_out, rows=rows)
    except RobustlabError as e:
        _fail(e, flags)
        return
    except OSError as e:
        _fail(_os_error(e), flags)
        return
    from rich import box

    # ranked within groups of one dataset, threat and battery only: a single attack's robust
    # accuracy never shares a ranking (or a "worst case" heading) with a battery's
    if not rows:
        console.print(f"0 rows{' match the filters' if dataset or battery else ''} in {ledger}", highlight=False,
                      soft_wrap=True)
    for group in leaderboard_groups(rows):
        t = Table(title=f"{group.title} ({len(group.rows)} rows)", box=box.SIMPLE_HEAD, collapse_padding=True)
        columns = ("id", "model", "n", "samples", "seed", "clean (%)", f"{group.measure} (%)", "randomness",
                   "warnings", "time (s)")
        for c in columns:
            numeric = c in ("id", "n", "seed", "clean (%)", f"{group.measure} (%)", "time (s)")
            t.add_column(c, justify="right" if numeric else "left", no_wrap=True)
        for r in group.rows:
            summary = r.summary()
            pm = r.repeats > 1
            t.add_row(str(r.id), f"{r.model_name} {r.model_hash[:6]}", str(r.n), summary["samples"], str(r.seed),
                      f"{100 * r.clean_acc:.2f}" + (f" ± {100 * r.clean_std:.2f}" if pm else ""),
                      f"{100 * r.robust_acc:.2f}" + (f" ± {100 * r.robust_std:.2f}" if pm else ""),
                      summary["randomness"], summary["warnings"] or "-", f"{r.seconds:.1f}")
        console.print(t)
    for what, path in (("CSV", csv_out), ("JSON", json_out)):
        if path is not None:
            console.print(f"wrote {what} to [bold]{path}[/]")


SD = ("sd", "sd+addnoise")
CONVERT_OPTIONS: dict[str, tuple[str, ...]] = {
    "spp": SD, "jitter": SD, "normal_std": SD, "reduction": SD, "per_sample": SD, "deterministic": SD,
    "std": ("addnoise", "sd+addnoise"), "distribution": ("addnoise", "sd+addnoise"),
    "p": ("dropout-avgpool",), "filter_size": ("blurpool",), "placement": ("blurpool", "flc", "asap"),
}
"""Which methods of ``convert`` take each method option (checked against the library in tests)."""


def _for(option: str) -> str:
    return ", ".join(CONVERT_OPTIONS[option]) + ": "


@app.command()
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="a model .safetensors file")],
    out: Annotated[Path, typer.Option(help="where the converted model is written (.safetensors)")],
    method: Annotated[str, typer.Option(help=f"downsampling method: {', '.join(METHODS)}")] = "sd",
    spp: Annotated[int | None, typer.Option(min=1, help=_for("spp") + "samples per output pixel (paper: 2)")] = None,
    jitter: Annotated[str | None, typer.Option(help=_for("jitter") + "uniform or normal")] = None,
    normal_std: Annotated[float | None, typer.Option(min=0, help=_for("normal_std") + "std of the normal jitter, output pixels")] = None,
    std: Annotated[float | None, typer.Option(min=0, help=_for("std") + "noise std")] = None,
    distribution: Annotated[str | None, typer.Option(help=_for("distribution") + "noise distribution: normal or uniform")] = None,
    reduction: Annotated[str | None, typer.Option(help=_for("reduction") + "mean, sum, min or max over the samples")] = None,
    per_sample: Annotated[bool, typer.Option("--per-sample", help=_for("per_sample") + "one jitter draw per image instead of per batch")] = False,
    p: Annotated[float | None, typer.Option(min=0, max=1, help=_for("p") + "dropout probability")] = None,
    filter_size: Annotated[int | None, typer.Option(min=1, help=_for("filter_size") + "binomial filter size")] = None,
    placement: Annotated[str | None, typer.Option(help="flc, asap: after (default) or before (official code); blurpool: after (default) or after-activation (Zhang: conv, BN, ReLU, blur)")] = None,
    shortcut_jitter: Annotated[str, typer.Option(help="sd, sd+addnoise: independent (default) or shared (1x1 shortcuts reuse their block's main-path jitter)")] = "independent",
    deterministic: Annotated[bool, typer.Option("--deterministic", help=_for("deterministic") + "sample pixel centres (the deterministic twin)")] = False,
    include_pooling: Annotated[bool, typer.Option("--include-pooling", help="all methods: also convert strided max/avg pooling")] = False,
) -> None:
    """Rewrite every strided convolution as stride 1 + a downsampler (stochastic downsampling and baselines).

    Example: robustlab convert runs/fm/model.safetensors --out runs/fm/sd.safetensors --method sd --spp 2
    """
    from . import load, save
    from .defenses import convert_downsampling

    flags = _flags(convert)
    given = {"spp": spp, "jitter": jitter, "normal_std": normal_std, "std": std, "distribution": distribution,
             "reduction": reduction, "p": p, "filter_size": filter_size, "placement": placement}
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if deterministic:
        options["deterministic"] = True
    if per_sample:
        options["per_sample"] = True
    try:
        if method not in METHODS:
            raise RobustlabError(f"unknown downsampling method {method!r}; --method takes {', '.join(METHODS)}")
        if shortcut_jitter not in ("independent", "shared"):
            raise RobustlabError(f"--shortcut-jitter must be independent or shared, got {shortcut_jitter!r}")
        if shortcut_jitter == "shared" and method not in SD:
            raise RobustlabError(f"--shortcut-jitter shared applies to --method {', '.join(SD)}, not {method}")
        for name in options:
            if method not in CONVERT_OPTIONS[name]:
                takes = [flags[k] for k, methods in CONVERT_OPTIONS.items() if method in methods]
                raise RobustlabError(f"{flags[name]} does not apply to --method {method}; it takes "
                                     f"{', '.join(takes) if takes else 'no method option'}")
        if out.suffix != ".safetensors":
            raise RobustlabError(f"--out must end in .safetensors, got {str(out)!r}")
        _check_writable(out, "--out", folder=False)
        model = load(checkpoint)
        header: dict[str, Any] = getattr(model, "robustlab_header", {})
        converted = convert_downsampling(model, method, include_pooling=include_pooling,
                                         shortcut_jitter=shortcut_jitter, **options)
        path = save(converted, out, dataset=header.get("dataset"), train_config=header.get("train_config"),
                    extra={"converted_from": str(checkpoint)})
    except RobustlabError as e:
        _fail(e, flags)
        return
    except OSError as e:
        _fail(_os_error(e), flags)
        return
    count = sum(type(m).__name__ == "Downsampled" for m in converted.modules())
    console.print(f"converted {count} strided layers with [bold]{method}[/] {escape(str(options or ''))}; "
                  f"wrote [bold]{path}[/] (finetune it through the Python Trainer)")


@app.command()
def run(
    recipe: Annotated[str | None, typer.Argument(help="the study to run (robustlab run --list names them)")] = None,
    list_studies: Annotated[bool, typer.Option("--list", help="name the studies, their profiles and expected time")] = False,
    profile: Annotated[str, typer.Option(help="quick (minutes), cpu (every table and column, hours on 2 cores) or full (the paper's scale, a GPU)")] = "quick",
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<recipe>-<profile>)")] = None,
    baseline: Annotated[Path | None, typer.Option(help="start from this trained model instead of training one")] = None,
    model: Annotated[str | None, typer.Option(help=f"architecture: {MODEL_NAMES} (default: resnet-mini; resnet18 with the full profile on a GPU)")] = None,
    eps: Annotated[str | None, typer.Option(help="L-inf radius in [0, 1] pixels, e.g. 4/255 or 0.1 (default: the study's)")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="number of seeds (default: the profile's)")] = None,
    eval_n: Annotated[int | None, typer.Option(min=1, help="test images attacked (default: the profile's)")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="compute nothing; write the report from what OUT holds")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Run a study that reproduces a paper's tables; writes OUT/report.md and resumes when rerun.

    Example: robustlab run sd-study --profile quick --out runs/sd-quick
    """
    from .experiments import STUDIES, run_study, study_config

    flags = _flags(run, list_studies="--list")
    if list_studies:
        table = Table("study", "profile", "expected time", "covers", title="studies (robustlab run NAME --profile P)")
        for name in STUDIES.names():
            for p, prof in STUDIES.get(name).profiles.items():
                table.add_row(name, p, prof.time, prof.about)
        console.print(table)
        return
    try:
        if recipe is None:
            raise RobustlabError(f"name a study to run: {', '.join(STUDIES.names())} (robustlab run --list)")
        if recipe not in STUDIES.names():
            raise RobustlabError(f"unknown recipe {recipe!r}; known recipes: {', '.join(STUDIES.names())}")
        dev = _device(device)
        if model is None and profile == "full" and dev.type == "cuda":
            model = "resnet18"  # the GPU model; resnet-mini is the CPU default
        if model is not None and not model.startswith(("torchvision:", "timm:")):
            MODELS.get(model)
        cfg = study_config(recipe, profile, model=model, eps=None if eps is None else _eps(eps, "linf"),
                           seeds=None if seeds is None else tuple(range(seeds)), eval_n=eval_n)
        folder = out or Path("runs") / f"{recipe}-{profile}"
        _check_writable(folder, "--out", folder=True)
        torch.manual_seed(0)
        try:
            r = run_study(recipe, folder, cfg, device=dev, baseline=None if baseline is None else str(baseline),
                          log=lambda line: console.print(line, highlight=False, markup=False),
                          callbacks=_train_progress(), report_only=report_only)
        except KeyboardInterrupt:
            _error_line(f"interrupted: what finished is kept in {folder}; to resume, rerun: {_rerun()}")
            raise typer.Exit(code=130) from None
    except RobustlabError as e:
        _fail(e, flags)
        return
    except OSError as e:
        _fail(_os_error(e), flags)
        return
    report = folder / "report.md"
    if report_only:
        state = "partial: some cells are not computed yet" if r.partial else "complete"
        console.print(f"{recipe} ({profile}) report written from {folder} ({state}): [bold]{report}[/]",
                      soft_wrap=True)
    else:
        console.print(f"{recipe} ({profile}) finished in {r.seconds:.0f} s; report: [bold]{report}[/]",
                      soft_wrap=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1, help="epochs of the standard model")] = 3,
    at_epochs: Annotated[int, typer.Option(min=1, help="epochs of the PGD-AT model")] = 3,
    train_limit: Annotated[int, typer.Option(min=1, help="training images of the standard model (a stratified subset; 60000: all of Fashion-MNIST)")] = 30_000,
    at_train_limit: Annotated[int, typer.Option(min=1, help="training images of the PGD-AT model")] = 8_000,
    test_limit: Annotated[int | None, typer.Option(min=1, help="test on a subset (default: all 10,000)")] = None,
    eval_n: Annotated[int, typer.Option(min=1, help="test images the attack battery runs on")] = 100,
    battery: Annotated[str, typer.Option(help=f"attack battery: {BATTERY_NAMES}")] = "standard",
    sd_study: Annotated[str, typer.Option(help="sd-study profile to include: quick, cpu, full or none")] = "quick",
    strides_study: Annotated[str, typer.Option(help="strides-study profile to include: quick, cpu, full or none")] = "quick",
    sparse_study: Annotated[str, typer.Option(help="sparse-study profile to include: quick, cpu, full or none")] = "quick",
    dcs_study: Annotated[str, typer.Option(help="dcs-study profile to include: quick, cpu, full or none")] = "quick",
    gradnorm_study: Annotated[str, typer.Option(help="gradnorm-study profile to include: quick, cpu, full or none")] = "quick",
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="ignore earlier progress in OUT and start over")] = False,
) -> None:
    """The main job: standard and PGD-AT resnet-mini on Fashion-MNIST, attacked; writes OUT/report.md.

    Example: robustlab demo --out runs/demo --epochs 3 --sd-study none --gradnorm-study none
    """
    import shutil

    from .experiments import DemoConfig, run_demo, study_config
    from .experiments.demo import STUDY_KEYS, study_name

    flags = _flags(demo)
    profiles = dict(zip(STUDY_KEYS, (sd_study, strides_study, sparse_study, dcs_study, gradnorm_study), strict=True))
    try:
        dev = _device(device)
        BATTERIES.get(battery)
        _check_writable(out, "--out", folder=True)
        cfg = DemoConfig(epochs=epochs, at_epochs=at_epochs, train_limit=train_limit,
                         at_train_limit=at_train_limit, test_limit=test_limit, eval_n=eval_n,
                         battery=battery, **cast(dict[str, Any], {k: None if v == "none" else v for k, v in profiles.items()}))
        for key, chosen in profiles.items():
            if chosen != "none":
                study_config(study_name(key), chosen)  # an unknown profile fails before any training
        if fresh and out.exists():
            shutil.rmtree(out)
        torch.manual_seed(cfg.seed)
        bar = _BatteryProgress()
        try:
            r = run_demo(out, cfg, device=dev, callbacks=_train_progress(), progress=bar,
                         log=lambda line: console.print(line, highlight=False, markup=False))
        except KeyboardInterrupt:
            bar.close()
            _error_line(f"interrupted: what finished is kept in {out}; to resume, rerun it without --fresh: "
                        f"{_rerun()}")
            raise typer.Exit(code=130) from None
        finally:
            bar.close()
    except RobustlabError as e:
        _fail(e, flags)
        return
    except OSError as e:
        _fail(_os_error(e), flags)
        return
    for m in r["models"]:
        console.print(f"{m['name']:>9}: clean {100 * m['clean_accuracy']:.2f}% on {r['test_images']} test images; "
                      f"worst-case robust {100 * m['robust_accuracy']:.2f}% on {r['eval_n']} "
                      f"({battery} battery, {r['threat']['norm']} eps {r['threat']['eps']:g})")
    for key in STUDY_KEYS:
        folder = study_name(key)
        if r.get(key) is not None:
            console.print(f"{folder} ({r[key]['profile']}): {out / folder / 'report.md'}")
    console.print(f"demo finished in {r['total_seconds']:.0f} s; report: [bold]{out / 'report.md'}[/]")


analyze_app = typer.Typer(
    help="Analyses: a trained model's input gradients (figures and a JSON of numbers), the DCS bounds on n.\n\n"
    "Example: robustlab analyze gradients runs/fm/model.safetensors --out runs/fm/gradients",
    no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("dcs-bounds")
def analyze_dcs_bounds(
    eps_c: Annotated[float, typer.Option("--eps-c", min=0.0, help="Lemma 1: the bound on the expected gradient cosine similarity between two paths")],
    eps_l: Annotated[float, typer.Option("--eps-l", min=0.0, help="Lemma 2: the bound on the expected normalized L1 distance between two paths' outputs")],
    size: Annotated[float, typer.Option(min=0.0, help="N of Lemma 2: the input feature map's size, padding included (e.g. 32 for 28x28 maps with padding 2)")],
    k: Annotated[int, typer.Option(min=1, help="the DCS kernel's window size k (paper: 5)")] = 5,
    stride: Annotated[int, typer.Option(min=1, help="the layer's stride S")] = 1,
) -> None:
    """The data-independent range of the DCS kernel size n (Lemmas 1-2, Eq. 8, 11, 12; App. A, Eq. 19).

    Example: robustlab analyze dcs-bounds --k 5 --stride 2 --eps-c 0.75 --eps-l 0.9 --size 20
    """
    from .analysis.dcs import lemma1_upper_bound_tight, n_bounds

    flags = _flags(analyze_dcs_bounds)
    try:
        bounds = n_bounds(k, stride, eps_c, eps_l, size)
        tight = lemma1_upper_bound_tight(k, stride, eps_c) if k >= stride else None
    except RobustlabError as e:
        _fail(e, flags)
        return
    t = Table(title=f"DCS bounds on n: k={k}, S={stride}, eps_c={eps_c:g}, eps_l={eps_l:g}, N={size:g}")
    for c in ("bound", "value"):
        t.add_column(c)
    t.add_row("Lemma 2 lower bound (Eq. 11)", f"{bounds.lower:.4g}")
    t.add_row("Lemma 1 upper bound (Eq. 8)", f"{bounds.upper:.4g}")
    t.add_row("Lemma 1 before loosening (Eq. 19, C^g = 1)", "n/a (k < S)" if tight is None else f"{tight:.4g}")
    t.add_row(f"feasible n in 1..{k * k} (Eq. 12)", ", ".join(map(str, bounds.feasible)) or "none")
    console.print(t)


@analyze_app.command("gradients")
def analyze_gradients(
    checkpoint: Annotated[Path, typer.Argument(help="a model .safetensors file")],
    out: Annotated[Path, typer.Option(help="folder for gradients.json and the figures")] = Path("runs/gradients"),
    dataset: Annotated[str | None, typer.Option(help=f"dataset: {DATASET_NAMES} (default: the checkpoint's)")] = None,
    force_dataset: Annotated[bool, typer.Option("--force-dataset", help="analyze on --dataset even if the checkpoint was trained on another")] = False,
    n: Annotated[int, typer.Option(min=1, help="test images analyzed (a stratified subset)")] = 100,
    eps: Annotated[str | None, typer.Option(help="attack radius in [0, 1] pixels, e.g. 0.1 or 4/255 (default: the dataset's)")] = None,
    norm: Annotated[str | None, typer.Option(help="threat norm: linf or l2 (default: the dataset's, linf)")] = None,
    hessian_iters: Annotated[int, typer.Option(min=1, help="power iterations for the Hessian spectral norm")] = 10,
    curve_steps: Annotated[int, typer.Option(min=1, help="PGD steps of the robust accuracy vs eps curve (thesis: 100)")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 100,
    seed: Annotated[int, typer.Option(min=0, help="root of every random draw")] = 0,
    root: Annotated[Path | None, typer.Option(help="dataset folder (default: $ROBUSTLAB_DATA or the dataset's own)")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Input-gradient analyses of the gradient-norm thesis (Tables 4.1, 5.1, A.1; Figs. 1.1, 4.1, A.1, A.3).

    Example: robustlab analyze gradients runs/fm/model.safetensors --n 200 --out runs/fm/gradients
    """
    from .analysis.gradients import analyze_gradients as run_analysis
    from .data import load_dataset

    flags = _flags(analyze_gradients)
    try:
        dev = _device(device)
        _norm(norm)
        if eps is not None:
            _eps(eps, norm or "l2")
        if dataset is not None:
            DATASETS.get(dataset)
        _check_writable(out, "--out", folder=True)
        model, _, name, kw, info_, threat = _load_for_dataset(checkpoint, dev, dataset, root, force_dataset, norm, eps)
        model.eval()
        test = load_dataset(name, "test", limit=n, seed=seed, **kw)
        x = torch.stack([test[i][0] for i in range(len(test))]).to(dev)
        y = torch.as_tensor([int(test[i][1]) for i in range(len(test))], device=dev)
        generator = torch.Generator(device=dev).manual_seed(seed)
        result = run_analysis(model, x, y, out, threat=threat, hessian_iters=hessian_iters, curve_steps=curve_steps,
                              batch_size=batch_size, generator=generator, name=checkpoint.stem)
    except RobustlabError as e:
        _fail(e, flags)
        return
    except OSError as e:
        _fail(_os_error(e), flags)
        return
    g, geo = result["gradient_norm"], result["geometry"]
    t = Table(title=f"{checkpoint}: input gradients on {result['n']} {name} test images ({threat.norm} eps={threat.eps:.4g})")
    for c in ("quantity", "value"):
        t.add_column(c)
    for label, value in (("clean accuracy", g["clean_accuracy"]), ("PGD-10 accuracy", g["pgd_accuracy"]),
                         ("E[L1]", g["mean_l1"]), ("E[L1 | PGD fails]", g["mean_l1_attack_fails"]),
                         ("E[L1 | PGD succeeds]", g["mean_l1_attack_succeeds"]),
                         ("saliency/edge correlation", result["edge_correlation"]["saliency_mean"]),
                         ("E ||grad||_2", geo["grad_l2_mean"]), ("E ||Hessian||_2", geo["hessian_norm_mean"]),
                         ("E curvature", geo["curvature_mean"]),
                         ("local linearity error", result["local_linearity_error"]["mean"])):
        t.add_row(label, "n/a" if value is None else f"{value:.4g}")
    console.print(t)
    console.print(f"wrote [bold]{out / 'gradients.json'}[/] and {len(result['figures'])} figures in {out}")


def main() -> None:
    """Entry point for ``python -m robustlab``."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

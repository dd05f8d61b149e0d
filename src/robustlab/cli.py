"""The ``robustlab`` command line. It owns the console: rich tables and progress bars."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .core import RobustlabError

app = typer.Typer(
    help="robustlab: adversarial robustness research in PyTorch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RobustlabError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobustlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def _fail(e: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(code=2)


@app.command()
def info() -> None:
    """Show versions, the device and every registry's names."""
    from .data import DATASETS
    from .defenses import CONVERSIONS
    from .models import MODELS
    from .train import OBJECTIVES, OPTIMIZERS, SCHEDULES

    t = Table(title=f"robustlab {__version__}", show_header=False)
    t.add_row("python", platform.python_version())
    t.add_row("torch", torch.__version__)
    t.add_row("cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available")
    t.add_row("threads", str(torch.get_num_threads()))
    regs: list[tuple[str, Any]] = [
        ("datasets", DATASETS), ("models", MODELS), ("objectives", OBJECTIVES),
        ("optimizers", OPTIMIZERS), ("schedules", SCHEDULES), ("conversions", CONVERSIONS),
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


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="dataset name (see `robustlab info`)")] = "fashion-mnist",
    model: Annotated[str, typer.Option(help="model name, or torchvision:<name> / timm:<name>")] = "resnet-mini",
    objective: Annotated[str, typer.Option(help="training objective")] = "standard",
    epochs: Annotated[int, typer.Option(min=1)] = 5,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 0.1,
    optimizer: Annotated[str, typer.Option(help="sgd or adamw")] = "sgd",
    weight_decay: float = 5e-4,
    schedule: Annotated[str, typer.Option(help="onecycle, cosine, multistep, cyclic or constant")] = "onecycle",
    milestones: Annotated[str | None, typer.Option(help="multistep: epochs where the rate drops 10x, e.g. 100,105")] = None,
    warmup_epochs: Annotated[float, typer.Option(help="cosine, multistep, constant: linear warmup epochs")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    label_smoothing: float = 0.0,
    ema: Annotated[float | None, typer.Option(help="EMA decay of the weights, e.g. 0.999")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="clip the gradient norm")] = None,
    seed: int = 0,
    limit: Annotated[int | None, typer.Option(help="train on a stratified subset of this size")] = None,
    val_size: Annotated[float, typer.Option(help="hold out this many (or this fraction of) training images")] = 0,
    root: Annotated[Path | None, typer.Option(help="dataset folder")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "auto",
    out: Annotated[Path, typer.Option(help="run folder (checkpoints, metrics.jsonl)")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="continue from OUT/last.safetensors if present")] = True,
) -> None:
    """Train a model and write OUT/model.safetensors."""
    from .data import get_info, load_dataset
    from .models import create_model
    from .train import RichProgress, TrainConfig, Trainer, create_objective

    try:
        dev = _device(device)
        torch.manual_seed(seed)
        info_ = get_info(dataset)
        kw: dict[str, Any] = {"root": root} if root else {}
        train_set = load_dataset(dataset, "train", limit=limit, val_size=val_size, seed=seed, **kw)
        val_set = load_dataset(dataset, "val", val_size=val_size, seed=seed, **kw) if val_size else None
        net = create_model(model, num_classes=info_.num_classes, in_channels=info_.in_channels,
                           mean=info_.mean, std=info_.std, seed=seed)
        obj_kw: dict[str, Any] = {"label_smoothing": label_smoothing} if objective == "standard" else {}
        sched_kw: dict[str, Any] = {"warmup_epochs": warmup_epochs} if warmup_epochs else {}
        if milestones:
            try:
                sched_kw["milestones"] = [float(m) for m in milestones.split(",") if m.strip()]
            except ValueError:
                raise RobustlabError(f"--milestones takes comma-separated epochs such as 100,105, got {milestones!r}") from None
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                          weight_decay=weight_decay, schedule=schedule, schedule_options=sched_kw,
                          ema_decay=ema, grad_clip=grad_clip, seed=seed)
        result = Trainer(net, create_objective(objective, **obj_kw), cfg, callbacks=[RichProgress()],
                         out_dir=out, device=dev, dataset_name=dataset).fit(train_set, val_set, resume=resume)
    except RobustlabError as e:
        _fail(e)
        return
    last = result.history[-1] if result.history else {}
    console.print(f"saved [bold]{result.checkpoint}[/]; last epoch: {json.dumps(last)}")


def _eps(text: str) -> float:
    """Parse an eps given as a number or a fraction such as ``8/255``."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise RobustlabError(f"--eps must be a number or a fraction such as 8/255, got {text!r}") from None


class _RichBattery:
    """Turns run_battery's progress events into a rich progress bar (the CLI owns the console).

    The bar lives from the battery's ``start`` event to its ``end`` event, so it never overlaps
    the training bars of a pipeline that trains, then evaluates.
    """

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, event: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        if event.kind == "start":
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("attacking", total=event.total, completed=event.completed)
        elif self.progress is None:
            return
        elif event.kind == "attack":
            self.progress.update(self.task, description=f"repeat {event.repeat + 1} batch "
                                 f"{event.batch + 1}: {event.attack} ({event.robust}/{event.size} robust)")
        elif event.kind == "batch":
            self.progress.update(self.task, completed=event.completed)
        elif event.kind == "end":
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        """Stop the bar if a battery ended early (an error)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="a model .safetensors file")],
    dataset: Annotated[str | None, typer.Option(help="defaults to the checkpoint's dataset")] = None,
    n: Annotated[int | None, typer.Option(help="evaluate on a stratified subset of n test images")] = None,
    battery: Annotated[str, typer.Option(help="quick, standard, rand, full, or none (clean accuracy only)")] = "quick",
    eps: Annotated[str | None, typer.Option(help="attack radius, e.g. 0.1 or 8/255 (default: the dataset's)")] = None,
    norm: Annotated[str | None, typer.Option(help="linf or l2 (default: the dataset's)")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="re-run the battery; report mean ± std")] = 1,
    ensemble: Annotated[int, typer.Option(min=1, help="predict by the mean softmax over this many draws")] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 500,
    seed: int = 0,
    root: Annotated[Path | None, typer.Option(help="dataset folder")] = None,
    device: str = "auto",
    ledger: Annotated[Path, typer.Option(help="SQLite ledger the result row is added to")] = Path("runs/ledger.sqlite"),
    state_dir: Annotated[Path | None, typer.Option(help="save per-batch state here and resume from it")] = None,
    surrogate: Annotated[Path | None, typer.Option(help="checkpoint of a surrogate model: the full battery adds a transfer attack from it")] = None,
    bpda: Annotated[str | None, typer.Option(help="BPDA for every gradient attack of the battery: identity or smooth (for non-differentiable layers)")] = None,
) -> None:
    """Evaluate a checkpoint: clean accuracy and worst-case robust accuracy under an attack battery."""

    from . import load
    from .core import ThreatModel
    from .core.metrics import accuracy
    from .data import get_info, load_dataset, make_loader
    from .evaluate import Ledger, run_battery

    try:
        dev = _device(device)
        if bpda is not None and bpda not in ("identity", "smooth"):
            raise RobustlabError(f"unknown --bpda {bpda!r}; use identity or smooth")
        model = load(checkpoint, device=dev)
        header: dict[str, Any] = getattr(model, "robustlab_header", {})
        name = dataset or header.get("dataset")
        if not name:
            raise RobustlabError("the checkpoint names no dataset; pass --dataset")
        kw: dict[str, Any] = {"root": root} if root else {}
        test = load_dataset(name, "test", limit=n, seed=seed, **kw)
        if battery.strip().lower() == "none":
            acc = accuracy(model, make_loader(test, batch_size), dev)
            t = Table(title=f"{checkpoint}")
            for c in ("dataset", "images", "clean accuracy (%)"):
                t.add_column(c)
            t.add_row(name, str(len(test)), f"{100 * acc:.2f}")
            console.print(t)
            return
        default = get_info(name, **kw).threat
        threat = ThreatModel(norm or default.norm, _eps(eps) if eps is not None else default.eps)  # type: ignore[arg-type]
        bar = _RichBattery()
        try:
            options: dict[str, Any] = {}
            if surrogate is not None:
                if battery.strip().lower() != "full":
                    raise RobustlabError("--surrogate is used by the full battery only; add --battery full")
                options["surrogate"] = load(surrogate, device=dev)
            result = run_battery(model, test, battery, threat=threat, batch_size=batch_size,
                                 battery_options=options,
                                 repeats=repeats, ensemble=ensemble, seed=seed, device=dev,
                                 state_dir=state_dir, progress=bar, bpda=bpda,  # type: ignore[arg-type]
                                 name=checkpoint.stem if checkpoint.stem != "model" else None)
        finally:
            bar.close()
        row = Ledger(ledger).add(result, extra={"checkpoint": str(checkpoint)})
    except RobustlabError as e:
        _fail(e)
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
    console.print(f"clean accuracy {clean}%, worst-case robust accuracy {robust}% on {result.n} "
                  f"{name} test images in {result.seconds:.1f} s; ledger row {row} in [bold]{ledger}[/]")
    if result.randomness != "none":
        console.print(f"the model is randomized ({result.randomness}): every verdict is a fresh prediction")
    for w in result.warnings:
        console.print(f"[yellow]warning[/] {w}")


@app.command()
def leaderboard(
    ledger: Annotated[Path, typer.Option(help="the SQLite ledger to read")] = Path("runs/ledger.sqlite"),
    dataset: Annotated[str | None, typer.Option(help="only rows of this dataset")] = None,
    battery: Annotated[str | None, typer.Option(help="only rows of this battery")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="also export the rows to this CSV file")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also export the rows to this JSON file")] = None,
) -> None:
    """Show the ledger's evaluations, best worst-case robust accuracy first."""
    from .evaluate import Ledger

    try:
        if not ledger.exists():
            raise RobustlabError(f"no ledger at {ledger}; `robustlab evaluate` writes one, or pass --ledger")
        led = Ledger(ledger)
        rows = sorted(led.rows(dataset=dataset, battery=battery), key=lambda r: (-r.robust_acc, r.id))
        if csv_out is not None:
            led.to_csv(csv_out, rows)
        if json_out is not None:
            led.to_json(json_out, rows=rows)
    except RobustlabError as e:
        _fail(e)
        return
    from rich import box

    t = Table(title=f"{ledger} ({len(rows)} rows)", box=box.SIMPLE_HEAD, collapse_padding=True)
    for c in ("id", "model", "dataset", "battery", "n", "clean (%)", "robust (%)", "time (s)"):
        numeric = c in ("id", "n", "clean (%)", "robust (%)", "time (s)")
        t.add_column(c, justify="right" if numeric else "left", no_wrap=True)
    for r in rows:
        pm = r.repeats > 1
        t.add_row(str(r.id), f"{r.model_name} {r.model_hash[:6]}", r.dataset, r.battery, str(r.n),
                  f"{100 * r.clean_acc:.2f}" + (f" ± {100 * r.clean_std:.2f}" if pm else ""),
                  f"{100 * r.robust_acc:.2f}" + (f" ± {100 * r.robust_std:.2f}" if pm else ""),
                  f"{r.seconds:.1f}")
    console.print(t)
    for what, path in (("CSV", csv_out), ("JSON", json_out)):
        if path is not None:
            console.print(f"wrote {what} to [bold]{path}[/]")


@app.command()
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="a model .safetensors file")],
    out: Annotated[Path, typer.Option(help="where the converted model is written")],
    method: Annotated[str, typer.Option(help="sd, sd+addnoise, addnoise, avgpool, dropout-avgpool, blurpool, flc or asap")] = "sd",
    spp: Annotated[int | None, typer.Option(min=1, help="sd: samples per output pixel (paper: 2)")] = None,
    jitter: Annotated[str | None, typer.Option(help="sd: uniform or normal")] = None,
    normal_std: Annotated[float | None, typer.Option(help="sd: std of the normal jitter, output pixels")] = None,
    std: Annotated[float | None, typer.Option(help="addnoise, sd+addnoise: noise std")] = None,
    distribution: Annotated[str | None, typer.Option(help="addnoise, sd+addnoise: normal or uniform")] = None,
    reduction: Annotated[str | None, typer.Option(help="sd: mean, sum, min or max over the samples")] = None,
    per_sample: Annotated[bool, typer.Option(help="sd: one jitter draw per image instead of per batch")] = False,
    p: Annotated[float | None, typer.Option(help="dropout-avgpool: dropout probability")] = None,
    filter_size: Annotated[int | None, typer.Option(help="blurpool: binomial filter size")] = None,
    placement: Annotated[str | None, typer.Option(help="flc, asap: after (default) or before (official code); blurpool: after (default) or after-activation (Zhang: conv, BN, ReLU, blur)")] = None,
    shortcut_jitter: Annotated[str, typer.Option(help="sd, sd+addnoise: independent (default) or shared (1x1 shortcuts reuse their block's main-path jitter)")] = "independent",
    deterministic: Annotated[bool, typer.Option(help="sd: sample pixel centres (the deterministic twin)")] = False,
    include_pooling: Annotated[bool, typer.Option(help="also convert strided max/avg pooling")] = False,
) -> None:
    """Rewrite every strided convolution as stride 1 + a downsampler (stochastic downsampling and baselines)."""
    from . import load, save
    from .defenses import convert_downsampling

    given = {"spp": spp, "jitter": jitter, "normal_std": normal_std, "std": std, "distribution": distribution,
             "reduction": reduction, "p": p, "filter_size": filter_size, "placement": placement}
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if deterministic:
        options["deterministic"] = True
    if per_sample:
        options["per_sample"] = True
    try:
        model = load(checkpoint)
        header: dict[str, Any] = getattr(model, "robustlab_header", {})
        converted = convert_downsampling(model, method, include_pooling=include_pooling,
                                         shortcut_jitter=shortcut_jitter, **options)
        path = save(converted, out, dataset=header.get("dataset"), train_config=header.get("train_config"),
                    extra={"converted_from": str(checkpoint)})
    except RobustlabError as e:
        _fail(e)
        return
    n = sum(type(m).__name__ == "Downsampled" for m in converted.modules())
    console.print(f"converted {n} strided layers with [bold]{method}[/] {options or ''}; wrote [bold]{path}[/] "
                  "(finetune it through the Python Trainer)")


RECIPES = ("sd-study",)


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="the recipe: sd-study")],
    profile: Annotated[str, typer.Option(help="quick (minutes), cpu (every table and column, hours on 2 cores) or full (the paper's scale, a GPU)")] = "quick",
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<recipe>-<profile>)")] = None,
    baseline: Annotated[Path | None, typer.Option(help="start from this trained model instead of training one")] = None,
    model: Annotated[str | None, typer.Option(help="architecture (default: resnet-mini; resnet18 with the full profile on a GPU)")] = None,
    eps: Annotated[str | None, typer.Option(help="L-inf radius, e.g. 4/255 (the paper's, default) or 0.1")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="number of seeds (default 3; quick: 1)")] = None,
    eval_n: Annotated[int | None, typer.Option(min=1, help="test images attacked")] = None,
    report_only: Annotated[bool, typer.Option(help="compute nothing; write the report from what OUT holds")] = False,
    device: str = "auto",
) -> None:
    """Run a recipe that reproduces a paper's tables; writes OUT/report.md and resumes when rerun."""
    from .experiments.sd_study import run_sd_study, study_config

    try:
        if recipe not in RECIPES:
            raise RobustlabError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
        dev = _device(device)
        if model is None and profile == "full" and dev.type == "cuda":
            model = "resnet18"  # the GPU model; resnet-mini is the CPU default
        cfg = study_config(profile, model=model, eps=None if eps is None else _eps(eps),
                           seeds=None if seeds is None else tuple(range(seeds)), eval_n=eval_n)
        folder = out or Path("runs") / f"{recipe}-{profile}"
        torch.manual_seed(0)
        r = run_sd_study(folder, cfg, device=dev, baseline=None if baseline is None else str(baseline),
                         log=lambda line: console.print(line, highlight=False), report_only=report_only)
    except RobustlabError as e:
        _fail(e)
        return
    console.print(f"{recipe} ({profile}) finished in {r['seconds']:.0f} s; report: [bold]{folder / 'report.md'}[/]")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1, help="epochs of the standard model")] = 3,
    at_epochs: Annotated[int, typer.Option(min=1, help="epochs of the PGD-AT model")] = 3,
    train_limit: Annotated[int | None, typer.Option(help="train on a subset (default: all 60,000)")] = None,
    at_train_limit: Annotated[int, typer.Option(min=1, help="training images of the PGD-AT model")] = 8_000,
    test_limit: Annotated[int | None, typer.Option(help="test on a subset (default: all 10,000)")] = None,
    eval_n: Annotated[int, typer.Option(min=1, help="test images the attack battery runs on")] = 100,
    battery: Annotated[str, typer.Option(help="quick, standard, rand or full")] = "standard",
    sd_study: Annotated[str, typer.Option(help="sd-study profile to include: quick, cpu, full or none")] = "quick",
    device: str = "auto",
    fresh: Annotated[bool, typer.Option(help="ignore earlier progress in OUT and start over")] = False,
) -> None:
    """The main job: standard and PGD-AT resnet-mini on Fashion-MNIST, attacked; writes OUT/report.md."""
    import shutil

    from .experiments import DemoConfig, run_demo
    from .train import RichProgress

    try:
        dev = _device(device)
        cfg = DemoConfig(epochs=epochs, at_epochs=at_epochs, train_limit=train_limit,
                         at_train_limit=at_train_limit, test_limit=test_limit, eval_n=eval_n,
                         battery=battery, sd_study=None if sd_study == "none" else sd_study)
        if sd_study != "none":
            from .experiments.sd_study import study_config

            study_config(sd_study)  # an unknown profile fails before any training
        if fresh and out.exists():
            shutil.rmtree(out)
        torch.manual_seed(cfg.seed)
        bar = _RichBattery()
        try:
            r = run_demo(out, cfg, device=dev, callbacks=[RichProgress()], progress=bar,
                         log=lambda line: console.print(line, highlight=False))
        finally:
            bar.close()
    except RobustlabError as e:
        _fail(e)
        return
    for m in r["models"]:
        console.print(f"{m['name']:>9}: clean {100 * m['clean_accuracy']:.2f}% on {r['test_images']} test images; "
                      f"worst-case robust {100 * m['robust_accuracy']:.2f}% on {r['eval_n']} "
                      f"({battery} battery, {r['threat']['norm']} eps {r['threat']['eps']:g})")
    if r["sd_study"] is not None:
        console.print(f"sd-study ({r['sd_study']['profile']}): {out / 'sd-study' / 'report.md'}")
    console.print(f"demo finished in {r['total_seconds']:.0f} s; report: [bold]{out / 'report.md'}[/]")


def main() -> None:
    """Entry point for ``python -m robustlab``."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

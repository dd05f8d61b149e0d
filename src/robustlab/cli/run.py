"""``robustlab run`` (a study that reproduces a paper's tables; ``--list`` and ``--describe`` tell
what there is) and ``robustlab demo`` (the main job: two models trained, attacked, reported)."""

from __future__ import annotations

import re
import textwrap
from contextlib import closing
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from ..core import RobustlabError
from ..evaluate import BATTERIES
from ..models import MODELS
from .console import console
from .errors import boundary, on_interrupt, rerun
from .options import BATTERY_NAMES, MODEL_NAMES, Device, check_writable, parse_device, parse_eps
from .progress import BatteryProgress, train_progress

if TYPE_CHECKING:
    from ..experiments import Study

LIST_WIDTH = 100
"""The longest line ``robustlab run --list`` prints."""

STUDY_FLAGS = ("--model", "--eps", "--seeds", "--eval-n")
"""The flags of ``robustlab run`` that replace the study settings of the same name (``--seeds N``:
seeds 0..N-1)."""


def _log(line: str) -> None:
    console.print(line, highlight=False, markup=False)


def _cut(line: str, width: int = LIST_WIDTH) -> str:
    return line if len(line) <= width else line[: width - 3].rstrip() + "..."


def list_lines(studies: list[Study]) -> list[str]:
    """One line per study and profile: its name, the profile and the expected time (without the
    time's remarks in parentheses, which ``--describe`` shows), none longer than :data:`LIST_WIDTH`."""
    rows = [(s.name, p, re.sub(r"\s*\([^()]*\)", "", prof.time)) for s in studies for p, prof in s.profiles.items()]
    name_w = max(len("study"), *(len(r[0]) for r in rows))
    prof_w = max(len("profile"), *(len(r[1]) for r in rows))
    lines = [f"{'study':<{name_w}}  {'profile':<{prof_w}}  expected time"]
    lines += [_cut(f"{name:<{name_w}}  {prof:<{prof_w}}  {time}") for name, prof, time in rows]
    lines.append(_cut("robustlab run NAME --profile P runs one; robustlab run NAME --describe says what it covers"))
    return lines


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple | list):
        return ", ".join(map(_shown, value)) if value else "none"
    return str(value)


def describe_lines(study: Study) -> list[str]:
    """A study's title, paper, profiles (time and what each covers), settings per profile and
    each profile's rows with their columns (what ``--row`` and ``--column`` name)."""
    width = min(console.width, LIST_WIDTH)
    lines = [f"{study.name}: {study.title}", f"paper: {study.paper}", "",
             f"profiles (robustlab run {study.name} --profile P):"]
    for name, prof in study.profiles.items():
        lines.append(f"  {name}: {prof.time}")
        lines += textwrap.wrap(prof.about, width, initial_indent="    ", subsequent_indent="    ")
    configs = {name: prof.config for name, prof in study.profiles.items()}
    first = next(iter(configs.values()))
    lines += ["", *textwrap.wrap(f"settings (one value when every profile agrees; "
                                 f"{', '.join(STUDY_FLAGS)} replace theirs):", width)]
    for f in fields(first):
        if f.name == "profile":
            continue
        values = {name: _shown(getattr(cfg, f.name)) for name, cfg in configs.items()}
        shown = (next(iter(values.values())) if len(set(values.values())) == 1
                 else "; ".join(f"{name} = {v}" for name, v in values.items()))
        lines += textwrap.wrap(f"{f.name}: {shown}", width, initial_indent="  ", subsequent_indent="      ")
    lines += ["", *textwrap.wrap("rows and their columns per profile (--row and --column compute only these; "
                                 "quote a label with spaces):", width)]
    for name, cfg in configs.items():
        lines.append(f"  {name}:")
        for label, cols in study.plan(cfg, None).jobs:
            lines += textwrap.wrap(f"{label}: {', '.join(cols)}", width, initial_indent="    ", subsequent_indent="        ",
                                   break_on_hyphens=False)
    return lines


@boundary(list_studies="--list")
def run(
    recipe: Annotated[str | None, typer.Argument(help="the study to run (robustlab run --list names them)")] = None,
    list_studies: Annotated[bool, typer.Option("--list", help="name the studies, their profiles and expected time")] = False,
    describe: Annotated[bool, typer.Option("--describe", help="say what the study covers: its paper, profiles and settings")] = False,
    profile: Annotated[str, typer.Option(help="quick (minutes), cpu (every table and column, hours on 2 cores) or full (the paper's scale, a GPU)")] = "quick",
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<recipe>-<profile>)")] = None,
    baseline: Annotated[Path | None, typer.Option(help="start from this trained model instead of training one")] = None,
    model: Annotated[str | None, typer.Option(help=f"architecture: {MODEL_NAMES} (default: resnet-mini; resnet18 with the full profile on a GPU)")] = None,
    eps: Annotated[str | None, typer.Option(help="L-inf radius in [0, 1] pixels, e.g. 4/255 or 0.1 (default: the study's)")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="number of seeds (default: the profile's); more seeds extend a folder run with fewer")] = None,
    eval_n: Annotated[int | None, typer.Option(min=1, help="test images attacked (default: the profile's)")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="compute nothing; write the report from what OUT holds")] = False,
    device: Device = "auto",
    executor: Annotated[str, typer.Option(help="where trainings and evaluations run: local (one after another, in this process), processes (a pool of --workers local processes) or ray (tasks on a Ray cluster, pip install \"robustlab\\[ray]\"; every node must see OUT on a shared filesystem); any of them resumes a run another began")] = "local",
    workers: Annotated[int | None, typer.Option(min=1, help="tasks run at a time by --executor processes or ray (default: the cores over --threads; with --address, the cluster's CPUs over --threads)")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads per worker of --executor processes or ray (default: the cores over --workers; 1 with --address)")] = None,
    address: Annotated[str | None, typer.Option(help="the Ray cluster of --executor ray (auto: the one this machine belongs to; default: start a local one)")] = None,
    row: Annotated[list[str] | None, typer.Option(help="compute only this row (a variant's label, as the report names it), and the models it reads; repeatable; a later run without it completes the study")] = None,
    column: Annotated[list[str] | None, typer.Option(help="compute only this column (its name, as --describe lists them); repeatable")] = None,
) -> None:
    """Run a study that reproduces a paper's tables; writes OUT/report.md and resumes when rerun.

    Trainings and evaluations run one after another in this process, or, with --executor
    processes or ray, as parallel tasks in dependency order (a converted model after its source,
    an evaluation after the models it reads); every executor writes the same files.

    Example: robustlab run sd-study --profile quick --out runs/sd-quick --executor processes --workers 4

    Example: robustlab run sparse-study --profile cpu --row Ours --row PGD-AT --column clean --column aa-rand
    """
    from ..experiments import STUDIES, run_study, study_config

    known = ", ".join(STUDIES.names())
    if list_studies:
        for line in list_lines([STUDIES.get(name) for name in STUDIES.names()]):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    if recipe is None:
        raise RobustlabError(f"name a study to {'describe' if describe else 'run'}: {known} (robustlab run --list)")
    if recipe not in STUDIES.names():
        raise RobustlabError(f"unknown recipe {recipe!r}; known recipes: {known}")
    if describe:
        for line in describe_lines(STUDIES.get(recipe)):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    dev = parse_device(device)
    if model is None and profile == "full" and dev.type == "cuda":
        model = "resnet18"  # the GPU model; resnet-mini is the CPU default
    if model is not None and not model.startswith(("torchvision:", "timm:")):
        MODELS.get(model)
    cfg = study_config(recipe, profile, model=model, eps=None if eps is None else parse_eps(eps, "linf"),
                       seeds=None if seeds is None else tuple(range(seeds)), eval_n=eval_n)
    folder = out or Path("runs") / f"{recipe}-{profile}"
    check_writable(folder, "--out", folder=True)
    torch.manual_seed(0)
    with on_interrupt(lambda: f"interrupted: what finished is kept in {folder}; to resume, rerun: {rerun()}"):
        r = run_study(recipe, folder, cfg, device=dev, baseline=None if baseline is None else str(baseline),
                      log=_log, callbacks=train_progress(), report_only=report_only, executor=executor,
                      workers=workers, threads=threads, address=address, rows=tuple(row or ()),
                      columns=tuple(column or ()))
    report = folder / "report.md"
    if report_only:
        state = "partial: some cells are not computed yet" if r.partial else "complete"
        console.print(f"{recipe} ({profile}) report written from {folder} ({state}): [bold]{report}[/]",
                      soft_wrap=True)
    else:
        console.print(f"{recipe} ({profile}) finished in {r.seconds:.0f} s; report: [bold]{report}[/]",
                      soft_wrap=True)



@boundary()
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(min=1, help="epochs of the standard model")] = 3,
    at_epochs: Annotated[int, typer.Option(min=1, help="epochs of the PGD-AT model")] = 3,
    train_limit: Annotated[int, typer.Option(min=1, help="training images of the standard model (a stratified subset; 60000: all of Fashion-MNIST)")] = 20_000,
    at_train_limit: Annotated[int, typer.Option(min=1, help="training images of the PGD-AT model")] = 6_000,
    test_limit: Annotated[int | None, typer.Option(min=1, help="test on a subset (default: all 10,000)")] = None,
    eval_n: Annotated[int, typer.Option(min=1, help="test images the attack battery runs on")] = 48,
    battery: Annotated[str, typer.Option(help=f"first-look battery on the two models (the arena runs AutoAttack on them): {BATTERY_NAMES}")] = "quick",
    study_choices: Annotated[list[str] | None, typer.Option(
        "--study", help="NAME=PROFILE: run this profile of a study in the demo, or NAME=none to leave it out; repeatable "
             "(default: each study's demo profile; robustlab run --list names them)")] = None,
    device: Device = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="ignore earlier progress in OUT and start over")] = False,
) -> None:
    """The main job: standard and PGD-AT resnet-mini on Fashion-MNIST, attacked; writes OUT/report.md.

    Example: robustlab demo --out runs/demo --epochs 3 --study sd-study=none --study gradnorm-study=none
    """
    import shutil

    from ..experiments import DemoConfig, run_demo, study_config
    from ..experiments.demo import demo_studies, study_key

    profiles = {part.name: part.demo.profile for part in demo_studies() if part.demo is not None}
    for choice in study_choices or []:
        name, sep, chosen = choice.partition("=")
        if not sep or not chosen:
            raise RobustlabError(f"--study takes NAME=PROFILE (e.g. sd-study=none), got {choice!r}")
        if name not in profiles:
            raise RobustlabError(f"--study: unknown demo study {name!r}; the demo's studies: {', '.join(profiles)}")
        profiles[name] = chosen
    dev = parse_device(device)
    BATTERIES.get(battery)
    check_writable(out, "--out", folder=True)
    for name, chosen in profiles.items():
        if chosen != "none":
            study_config(name, chosen)  # an unknown profile fails before any training
    cfg = DemoConfig(epochs=epochs, at_epochs=at_epochs, train_limit=train_limit,
                     at_train_limit=at_train_limit, test_limit=test_limit, eval_n=eval_n, battery=battery,
                     studies={name: None if chosen == "none" else chosen for name, chosen in profiles.items()})
    if fresh and out.exists():
        shutil.rmtree(out)
    torch.manual_seed(cfg.seed)
    bar = BatteryProgress()
    resume = f"interrupted: what finished is kept in {out}; to resume, rerun it without --fresh: "
    with on_interrupt(lambda: resume + rerun()), closing(bar):
        r = run_demo(out, cfg, device=dev, callbacks=train_progress(), progress=bar, log=_log)
    for m in r["models"]:
        console.print(f"{m['name']:>9}: clean {100 * m['clean_accuracy']:.2f}% on {r['test_images']} test images; "
                      f"worst-case robust {100 * m['robust_accuracy']:.2f}% on {r['eval_n']} "
                      f"({battery} battery, {r['threat']['norm']} eps {r['threat']['eps']:g})")
    for study in demo_studies():
        ran = r.get(study_key(study.name))
        if ran is not None:
            console.print(f"{study.name} ({ran['profile']}): {out / study.name / 'report.md'}")
    console.print(f"demo finished in {r['total_seconds']:.0f} s; report: [bold]{out / 'report.md'}[/]")

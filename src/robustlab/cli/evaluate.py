"""``robustlab evaluate`` (a checkpoint under an attack battery, resumable, sharded under
``torchrun``) and ``robustlab leaderboard`` (the ledger's rows, ranked)."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..attacks.verdict import VERDICT_DRAWS
from ..core import RobustlabError
from ..core.distributed import World
from ..evaluate import BATTERIES
from .console import console, note
from .errors import boundary, on_interrupt, rerun
from .options import (
    BATTERY_NAMES,
    DATASET_NAMES,
    Checkpoint,
    CheckpointDataset,
    Device,
    Download,
    Norm,
    Root,
    check_dataset_and_threat,
    check_writable,
    load_for_dataset,
    parse_device,
)
from .progress import BatteryProgress


def interrupted(bar: BatteryProgress, state: Path | None, world: World | None = None) -> str:
    """What an interrupted evaluation saved, and how to resume it (under torchrun, rank 0 says it
    for its own shard; every rank saved its own)."""
    if world is not None and world.distributed:
        if not world.main:
            return f"rank {world.rank} of {world.size} interrupted (rank 0 says what was saved)"
        if state is None:
            return "interrupted: none saved (--no-state); rerun without --no-state to make it resumable"
        return (f"interrupted: rank 0 finished {bar.completed or 0} of the {bar.total} batches of its shard, and "
                f"every rank saved its own shard under {state}; to resume, rerun the same torchrun command "
                f"(any number of processes), or `{rerun()}` in one")
    if bar.completed is None:
        return "interrupted before the first batch; nothing to resume"
    done = f"{bar.completed} of {bar.total} batches finished"
    if state is None:
        return f"interrupted: {done}, none saved (--no-state); rerun without --no-state to make it resumable"
    if bar.partial is not None:
        done += f" (and {bar.partial})"
    elif bar.completed == 0:
        return f"interrupted before the first batch finished; nothing saved yet in {state}"
    return f"interrupted: {done} and saved under {state}; to resume, rerun: {rerun()}"


@boundary(limit="--n", force="--force-dataset")
def evaluate(
    checkpoint: Checkpoint,
    dataset: CheckpointDataset = None,
    force_dataset: Annotated[bool, typer.Option("--force-dataset", help="evaluate on --dataset even if the checkpoint was trained on another")] = False,
    n: Annotated[int | None, typer.Option(min=1, help="evaluate on a stratified subset of n test images (default: all)")] = None,
    battery: Annotated[str, typer.Option(help=f"attack battery: {BATTERY_NAMES}, or none (clean accuracy only)")] = "quick",
    eps: Annotated[str | None, typer.Option(help="attack radius in [0, 1] pixels, e.g. 0.1 or 8/255 (default: the dataset's for the norm)")] = None,
    norm: Norm = None,
    repeats: Annotated[int, typer.Option(min=1, help="re-run the battery; report mean ± std")] = 1,
    ensemble: Annotated[int, typer.Option(min=1, help="one draw of a randomized model = the mean softmax over this many forwards")] = 1,
    draws: Annotated[int, typer.Option(min=1, help="randomized models: fresh draws per estimate (each comparison and the final figure)")] = VERDICT_DRAWS,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch (also the unit of saved progress)")] = 500,
    seed: Annotated[int, typer.Option(min=0, help="root of every random draw of the evaluation")] = 0,
    root: Root = None,
    download: Download = False,
    device: Device = "auto",
    ledger: Annotated[Path, typer.Option(help="SQLite ledger the result row is added to")] = Path("runs/ledger.sqlite"),
    state_dir: Annotated[Path | None, typer.Option(help="save per-batch state here and resume from it (default: eval-state/ beside the ledger)")] = None,
    no_state: Annotated[bool, typer.Option("--no-state", help="save no state: an interrupted evaluation starts over")] = False,
    surrogate: Annotated[Path | None, typer.Option(help="checkpoint of a surrogate model: the full battery adds a transfer attack from it, the sparse battery its PW-T attacks (the unsupervised-decoder twin)")] = None,
    bpda: Annotated[str | None, typer.Option(help="BPDA for every gradient attack of the battery: identity or smooth (for non-differentiable layers), bypass (through autoencoding front ends as the identity)")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="fast path: attack a channels_last copy of the model (same numbers up to float rounding; recorded in the row)")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="fast path: attack torch.compile of the model (compiles first, falls back with a warning if that fails; recorded in the row)")] = False,
) -> None:
    """Evaluate a checkpoint: clean accuracy and worst-case robust accuracy under an attack battery.

    Progress is saved per batch (under eval-state/ beside the ledger unless --state-dir or
    --no-state says otherwise): an interrupted evaluation resumes when the same command is rerun.

    On several GPUs or CPU processes, launch it with torchrun:
    torchrun --nproc_per_node 4 -m robustlab evaluate CHECKPOINT ... Each process attacks its
    share of the batches and the results are gathered: the numbers are identical to one process
    with the same --seed and --batch-size (the batch size, not the number of processes, is what
    they depend on). Rank 0 prints and writes the one ledger row; every rank saves its own state,
    and a rerun on any number of processes resumes from them. If a process dies, the others
    stop with an error (after ROBUSTLAB_DIST_TIMEOUT seconds at most) and no row is written.

    --channels-last and --compile are opt-in fast paths for the model under attack: checked on
    the first images against the plain model (logits within 1e-4 of a row's scale, else dropped
    with a warning), fp32 throughout, and recorded in the ledger row; a saved state of a run
    with other fast paths is kept apart, never mixed in.

    Example: robustlab evaluate runs/fm/model.safetensors --n 1000 --battery standard --eps 0.1
    """
    import torch
    import torch.distributed as dist

    from .. import load
    from ..core.distributed import current_world
    from ..core.metrics import accuracy
    from ..data import load_dataset, make_loader
    from ..evaluate import Ledger, run_battery
    from ..evaluate.result import robust_measure

    bar = BatteryProgress()
    state: Path | None = None
    world: World | None = None
    owned_group = not (dist.is_available() and dist.is_initialized())  # the group torchrun's env makes
    try:
        with on_interrupt(lambda: interrupted(bar, state, world)), closing(bar):
            dev = parse_device(device)
            if bpda is not None and bpda not in ("identity", "smooth", "bypass"):
                raise RobustlabError(f"unknown --bpda {bpda!r}; use identity, smooth or bypass")
            check_dataset_and_threat(dataset, norm, eps)
            battery_name = battery.strip().lower()
            if battery_name != "none":
                BATTERIES.get(battery_name)  # an unknown battery lists the known ones, before any work
            if surrogate is not None and battery_name not in ("full", "sparse"):
                raise RobustlabError("--surrogate is used by the full and sparse batteries only; add --battery full")
            if no_state and state_dir is not None:
                raise RobustlabError("--no-state and --state-dir contradict each other; pass one of them")
            if battery_name != "none":
                check_writable(ledger, "--ledger", folder=False)
                state = None if no_state else (state_dir if state_dir is not None else ledger.parent / "eval-state")
                if state is not None:
                    check_writable(state, "--state-dir", folder=True)
            # under torchrun: join its process group; rank 0 prints and writes, every rank attacks
            world = current_world()
            if world.distributed and dev.type == "cuda" and dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (LOCAL_RANK)
            model, kw, info, threat = load_for_dataset(checkpoint, dev, dataset, root, force_dataset, norm, eps)
            if download:
                kw["download"] = True
            test = load_dataset(info.name, "test", limit=n, seed=seed, **kw)
            if n is not None and len(test) < n and world.main:
                note(f"--n {n} > {len(test)} test images: evaluating all {len(test)}")
            if battery_name == "none":  # clean accuracy only: cheap, not sharded
                acc = accuracy(model, make_loader(test, batch_size), dev)
                if world.main:
                    t = Table(title=f"{checkpoint}")
                    for c in ("dataset", "images", "clean accuracy (%)"):
                        t.add_column(c)
                    t.add_row(info.name, str(len(test)), f"{100 * acc:.2f}")
                    console.print(t)
                return
            options: dict[str, Any] = {}
            if surrogate is not None:
                options["surrogate"] = load(surrogate, device=dev)
            result = run_battery(model, test, battery_name, threat=threat, batch_size=batch_size,
                                 battery_options=options, repeats=repeats, ensemble=ensemble, draws=draws,
                                 seed=seed, device=dev, state_dir=state, progress=bar if world.main else None,
                                 bpda=bpda,  # type: ignore[arg-type]
                                 name=checkpoint.stem if checkpoint.stem != "model" else None, world=world,
                                 fast=[p for p, on in (("channels_last", channels_last), ("compile", compile_model)) if on])
            # every rank holds the gathered result; one row, written by rank 0 while the others wait
            row = Ledger(ledger).add(result, extra={"checkpoint": str(checkpoint)}) if world.main else None
            world.barrier()
        if not world.main:
            return
    finally:
        if owned_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    t = Table(title=f"{checkpoint}: {result.battery} on {info.name} ({threat.norm} eps={threat.eps:.4g})")
    rows = result.table_rows()
    for c in rows[0]:
        t.add_column(c, justify="left" if c == "stage" else "right")
    for r in rows:
        t.add_row(*r.values())
    console.print(t)
    pm = " ± " if result.repeats > 1 else ""
    clean = f"{100 * result.clean_acc:.2f}" + (f"{pm}{100 * result.clean_std:.2f}" if pm else "")
    robust = f"{100 * result.robust_acc:.2f}" + (f"{pm}{100 * result.robust_std:.2f}" if pm else "")
    ranks = f" by {world.size} processes" if world.distributed else ""
    console.print(f"clean accuracy {clean}%, {robust_measure(result.config)}: {robust}% on {result.n} "
                  f"{info.name} test images in {result.seconds:.1f} s{ranks}; ledger row {row} in [bold]{ledger}[/]")
    if result.config.get("fast_check"):
        check = result.config["fast_check"]
        dropped = f" ({', '.join(check['fallbacks'])} dropped: see the warning)" if check["fallbacks"] else ""
        console.print(f"fast paths: {', '.join(check['applied']) or 'none'}{dropped}; on the first images the "
                      f"logits were within {check['logit_diff']:.2g} of the plain model's (relative to each "
                      f"row's scale)")
    if result.config.get("stochastic"):
        console.print(f"the model is randomized ({result.randomness}): per image, the probability that a "
                      f"draw classifies the worst point found correctly, on "
                      f"{result.config.get('verdict_draws', 1)} fresh draws")
    for w in result.warnings:
        console.print(f"[yellow]warning[/] {escape(str(w))}")


@boundary(csv_out="--csv", json_out="--json")
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
    from rich import box

    from ..evaluate import Ledger
    from ..evaluate.ledger import leaderboard_groups

    if not ledger.exists():
        raise RobustlabError(f"no ledger at {ledger}; `robustlab evaluate` writes one, or pass --ledger")
    for flag, path in (("--csv", csv_out), ("--json", json_out)):
        if path is not None:
            check_writable(path, flag, folder=False)
    led = Ledger(ledger)
    rows = sorted(led.rows(dataset=dataset, battery=battery), key=lambda r: (-r.robust_acc, r.id))
    if csv_out is not None:
        led.to_csv(csv_out, rows)
    if json_out is not None:
        led.to_json(json_out, rows=rows)

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

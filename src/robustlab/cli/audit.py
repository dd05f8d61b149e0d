"""``robustlab audit``: can the number an evaluation reports be trusted?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..attacks.verdict import VERDICT_DRAWS
from ..core import RobustlabError
from .console import console
from .errors import boundary
from .options import (
    BATTERY_NAMES,
    Checkpoint,
    CheckpointDataset,
    Device,
    Norm,
    Root,
    check_dataset_and_threat,
    check_writable,
    load_for_dataset,
    parse_device,
)


def _evaluation(name: str, threat: Any) -> Any:
    """A battery name as it is, a registered attack's name as that attack at ``threat``."""
    from ..attacks.registry import ATTACKS, create_attack
    from ..core.errors import UnknownNameError
    from ..evaluate import BATTERIES

    if name in BATTERIES.names():
        return name
    if name in ATTACKS.names():
        return create_attack(name, threat)
    raise UnknownNameError(f"unknown --battery {name!r}: not a battery ({BATTERY_NAMES}) nor a registered attack "
                           f"({', '.join(ATTACKS.names())})")


@boundary(limit="--n", force="--force-dataset")
def audit(
    checkpoint: Checkpoint,
    battery: Annotated[str, typer.Option(help=f"the evaluation under audit: a battery ({BATTERY_NAMES}) or a registered attack's name")] = "standard",
    n: Annotated[int, typer.Option(min=1, help="audit on a stratified subset of n test images")] = 32,
    eps: Annotated[str | None, typer.Option(help="attack radius in [0, 1] pixels, e.g. 0.1 or 8/255 (default: the dataset's for the norm)")] = None,
    norm: Norm = None,
    bpda: Annotated[str | None, typer.Option(help="BPDA for every gradient attack: identity, smooth or bypass (as the evaluation under audit uses it)")] = None,
    profile: Annotated[str, typer.Option(help="quick (the cheap checklist; binarization on 16 images, 49 inner points), demo (smaller still: the checklist on 12 images, binarization on 6) or full (the reference's 999 inner points on 100 images, the whole checklist; slow)")] = "quick",
    out: Annotated[Path | None, typer.Option(help="folder for audit.md, audit.json and the plots (default: runs/audit/<checkpoint name>)")] = None,
    surrogate: Annotated[Path | None, typer.Option(help="checkpoint of a surrogate model for the transfer check")] = None,
    draws: Annotated[int, typer.Option(min=1, help="randomized models: fresh draws per estimate")] = VERDICT_DRAWS,
    seed: Annotated[int, typer.Option(min=0, help="root of every random draw of the audit")] = 0,
    dataset: CheckpointDataset = None,
    force_dataset: Annotated[bool, typer.Option("--force-dataset", help="audit on --dataset even if the checkpoint was trained on another")] = False,
    root: Root = None,
    device: Device = "auto",
    ledger: Annotated[Path | None, typer.Option(help="SQLite ledger the audit's row is added to (default: ledger.sqlite in --out)")] = None,
) -> None:
    """Audit an evaluation of a checkpoint: the binarization test, the passive checklist, one verdict.

    Prints TRUSTWORTHY, SUSPECT (k flags) or BROKEN EVALUATION (binarization test failed) as its
    last line, and writes audit.md, audit.json and plots into --out.

    Example: robustlab audit runs/demo/pgd-at/model.safetensors --battery standard --n 32
    """
    from .. import load
    from ..audit import audit as run_audit
    from ..audit import audit_settings, write_audit
    from ..data import as_tensors, load_dataset
    from ..evaluate import Ledger

    dev = parse_device(device)
    if bpda is not None and bpda not in ("identity", "smooth", "bypass"):
        raise RobustlabError(f"unknown --bpda {bpda!r}; use identity, smooth or bypass")
    settings = audit_settings(profile)
    check_dataset_and_threat(dataset, norm, eps)
    folder = out if out is not None else Path("runs/audit") / (checkpoint.parent.name if checkpoint.stem == "model" else checkpoint.stem)
    check_writable(folder, "--out", folder=True)
    ledger_path = ledger if ledger is not None else folder / "ledger.sqlite"
    check_writable(ledger_path, "--ledger", folder=False)
    model, kw, info, threat = load_for_dataset(checkpoint, dev, dataset, root, force_dataset, norm, eps)
    evaluation = _evaluation(battery.strip().lower(), threat)
    test = load_dataset(info.name, "test", limit=n, seed=seed, **kw)
    x, y = as_tensors(test)
    x, y = x.to(dev), y.to(dev)
    sur = load(surrogate, device=dev) if surrogate is not None else None
    result = run_audit(model, x, y, threat=threat, evaluation=evaluation, settings=settings, seed=seed, draws=draws,
                       bpda=bpda, surrogate=sur,  # type: ignore[arg-type]
                       progress=lambda line: console.print(f"audit: {escape(line)}", highlight=False),
                       name=checkpoint.parent.name if checkpoint.stem == "model" else checkpoint.stem)
    paths = write_audit(result, folder, num_classes=info.num_classes)
    row = Ledger(ledger_path).add(result.worst_result(), extra={"checkpoint": str(checkpoint), "audit": result.summary})
    console.print(f"reported {100 * result.reported:.2f}%, audit worst case {100 * result.worst:.2f}% on {result.n} "
                  f"{info.name} test images in {result.seconds:.0f} s; {paths['md']}; ledger row {row} in {ledger_path}",
                  highlight=False, soft_wrap=True)
    for check in result.flags:
        console.print(f"[yellow]flag[/] {escape(check.code)}: {escape(check.evidence)}", soft_wrap=True)
    typer.echo(result.summary)

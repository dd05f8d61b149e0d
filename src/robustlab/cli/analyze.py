"""``robustlab analyze``: a trained model's input gradients (figures and a JSON of numbers) and the
data-independent bounds of the DCS kernel size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from ..data import as_tensors
from .console import console
from .errors import boundary
from .options import (
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

analyze_app = typer.Typer(
    help="Analyses: a trained model's input gradients (figures and a JSON of numbers), the DCS bounds on n.\n\n"
    "Example: robustlab analyze gradients runs/fm/model.safetensors --out runs/fm/gradients",
    no_args_is_help=True)


@analyze_app.command("dcs-bounds")
@boundary()
def dcs_bounds(
    eps_c: Annotated[float, typer.Option("--eps-c", min=0.0, help="Lemma 1: the bound on the expected gradient cosine similarity between two paths")],
    eps_l: Annotated[float, typer.Option("--eps-l", min=0.0, help="Lemma 2: the bound on the expected normalized L1 distance between two paths' outputs")],
    size: Annotated[float, typer.Option(min=0.0, help="N of Lemma 2: the input feature map's size, padding included (e.g. 32 for 28x28 maps with padding 2)")],
    k: Annotated[int, typer.Option(min=1, help="the DCS kernel's window size k (paper: 5)")] = 5,
    stride: Annotated[int, typer.Option(min=1, help="the layer's stride S")] = 1,
) -> None:
    """The data-independent range of the DCS kernel size n (Lemmas 1-2, Eq. 8, 11, 12; App. A, Eq. 19).

    Example: robustlab analyze dcs-bounds --k 5 --stride 2 --eps-c 0.75 --eps-l 0.9 --size 20
    """
    from ..analysis.dcs import lemma1_upper_bound_tight, n_bounds

    bounds = n_bounds(k, stride, eps_c, eps_l, size)
    tight = lemma1_upper_bound_tight(k, stride, eps_c) if k >= stride else None
    t = Table(title=f"DCS bounds on n: k={k}, S={stride}, eps_c={eps_c:g}, eps_l={eps_l:g}, N={size:g}")
    for c in ("bound", "value"):
        t.add_column(c)
    t.add_row("Lemma 2 lower bound (Eq. 11)", f"{bounds.lower:.4g}")
    t.add_row("Lemma 1 upper bound (Eq. 8)", f"{bounds.upper:.4g}")
    t.add_row("Lemma 1 before loosening (Eq. 19, C^g = 1)", "n/a (k < S)" if tight is None else f"{tight:.4g}")
    t.add_row(f"feasible n in 1..{k * k} (Eq. 12)", ", ".join(map(str, bounds.feasible)) or "none")
    console.print(t)


@analyze_app.command("gradients")
@boundary(force="--force-dataset")
def gradients(
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Option(help="folder for gradients.json and the figures")] = Path("runs/gradients"),
    dataset: CheckpointDataset = None,
    force_dataset: Annotated[bool, typer.Option("--force-dataset", help="analyze on --dataset even if the checkpoint was trained on another")] = False,
    n: Annotated[int, typer.Option(min=1, help="test images analyzed (a stratified subset)")] = 100,
    eps: Annotated[str | None, typer.Option(help="attack radius in [0, 1] pixels, e.g. 0.1 or 4/255 (default: the dataset's)")] = None,
    norm: Norm = None,
    hessian_iters: Annotated[int, typer.Option(min=1, help="power iterations for the Hessian spectral norm")] = 10,
    curve_steps: Annotated[int, typer.Option(min=1, help="PGD steps of the robust accuracy vs eps curve (thesis: 100)")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 100,
    seed: Annotated[int, typer.Option(min=0, help="root of every random draw")] = 0,
    root: Root = None,
    device: Device = "auto",
) -> None:
    """Input-gradient analyses of the gradient-norm thesis (Tables 4.1, 5.1, A.1; Figs. 1.1, 4.1, A.1, A.3).

    Example: robustlab analyze gradients runs/fm/model.safetensors --n 200 --out runs/fm/gradients
    """
    from ..analysis.gradients import analyze_gradients
    from ..data import load_dataset

    dev = parse_device(device)
    check_dataset_and_threat(dataset, norm, eps)
    check_writable(out, "--out", folder=True)
    model, kw, info, threat = load_for_dataset(checkpoint, dev, dataset, root, force_dataset, norm, eps)
    model.eval()
    test = load_dataset(info.name, "test", limit=n, seed=seed, **kw)
    x, y = (t.to(dev) for t in as_tensors(test))
    generator = torch.Generator(device=dev).manual_seed(seed)
    result = analyze_gradients(model, x, y, out, threat=threat, hessian_iters=hessian_iters, curve_steps=curve_steps,
                               batch_size=batch_size, generator=generator, name=checkpoint.stem)
    g, geo = result["gradient_norm"], result["geometry"]
    t = Table(title=f"{checkpoint}: input gradients on {result['n']} {info.name} test images "
                    f"({threat.norm} eps={threat.eps:.4g})")
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

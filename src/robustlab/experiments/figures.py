"""What a study's figures (its paper's analyses, :attr:`~.study.Plan.figures`) share: the context
they get, the attacked images, numbers computed once per run folder, and the formatting and plots
every analysis section uses. A recipe's figures function says only what its paper analyses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis import gradients
from ..core.checkpoint import write_text_atomic
from ..core.errors import InputError
from ..core.plots import write_figure
from ..data import as_tensors
from .columns import EvalContext
from .records import Lookup, RecordStore, WorstOf, slugify
from .report import epoch_seconds
from .stats import unpaired

__all__ = ["FigureContext", "curve_plot", "first_conv_weight", "gradient_numbers", "gradient_section", "input_width",
           "num", "pct", "record_accuracy", "spread", "spread_text", "table", "training_time", "unpaired_gain"]


@dataclass(frozen=True)
class FigureContext:
    """What a study's figures (:attr:`~.study.Plan.figures`) get: the run folder, the models and
    the evaluation context (test images, threat model, columns). Figures run once every record is
    in, and return the markdown that shows them."""

    out: Path
    model_of: Callable[[str, int], nn.Module]
    ctx: EvalContext
    get: Lookup | None = None
    """The run's records: ``(variant, seed, column) -> Record | None``."""
    worst_of: WorstOf | None = None
    """Per (variant, seed), the per-image worst case over every attack of the row."""
    seeds: tuple[int, ...] = ()

    @property
    def folder(self) -> Path:
        """``figures/`` of the run folder: the PNGs and cached numbers."""
        return self.out / "figures"

    def images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` attacked test images (fewer when the run attacked fewer) and their
        labels, on the study's device: the images every analysis of a run uses."""
        data, device = self.ctx.eval_set, self.ctx.device
        n = min(n, len(data))
        x, y = as_tensors(data, n)
        return x.to(device), y.to(device)

    def cached(self, file: str, compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """The numbers in ``figures/<file>``, computed once by ``compute(folder)`` (which may
        save its PNGs there) and read back by every later report of the run."""
        cache = self.folder / file
        if cache.exists():
            return dict(json.loads(cache.read_text()))
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = compute(self.folder)
        write_text_atomic(cache, json.dumps(numbers, indent=1, default=lambda v: None))
        return numbers


def spread(values: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation over images of a per-image number, NaNs left out (both NaN
    when nothing is left)."""
    v = values.detach().double().cpu()
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0}


def spread_text(s: Mapping[str, float]) -> str:
    """``0.512 ± 0.034`` for a :func:`spread`, ``nan`` when it has no mean."""
    return "nan" if s["mean"] != s["mean"] else f"{s['mean']:.3f} ± {s['std']:.3f}"


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal, ``—`` when missing."""
    return "—" if value is None else f"{100 * value:.1f}"


def num(value: Any, fmt: str = ".3f") -> str:
    """A number in ``fmt``, ``—`` when missing or not finite."""
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table of formatted cells (its header even without rows)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"


def record_accuracy(out: Path, variant: str, seed: int, column: str) -> float | None:
    """The accuracy of a (variant, seed, column) record of the run folder ``out`` (``None``
    when it is missing or does not apply)."""
    rec = RecordStore(out / "records").get(variant, seed, column)
    return None if rec is None or not rec.applies else rec.accuracy


def training_time(out: Path, pairs: Mapping[str, tuple[str, str]], some: str = "for some") -> tuple[str, str] | None:
    """Whether the first variant of each pair trains faster per epoch than the second (``yes``,
    ``no`` or ``some``), and per pair ``name a vs b s (ratio%)``, from the run folder's
    ``metrics.jsonl`` files (:func:`~.report.epoch_seconds`); ``None`` before any pair has both."""
    times = {}
    for name, (a, b) in pairs.items():
        s_a, s_b = (epoch_seconds(out / "models" / slugify(v)) for v in (a, b))
        if s_a is not None and s_b is not None and s_b > 0:
            times[name] = (s_a, s_b)
    if not times:
        return None
    faster = [s_a < s_b for s_a, s_b in times.values()]
    word = "yes" if all(faster) else "no" if not any(faster) else some
    return word, "; ".join(f"{name} {s_a:.1f} vs {s_b:.1f} s ({100 * s_a / s_b:.0f}%)" for name, (s_a, s_b) in times.items())


def unpaired_gain(a: Mapping[str, Any], b: Mapping[str, Any], key: str, n: int) -> tuple[str, str]:
    """Whether ``a[key + "_mean"]`` is above ``b``'s, judged from the two per-image spreads
    (``_std``) over ``n`` images (:func:`~.stats.unpaired`, 95%): ``yes``, ``no, it lowered it``,
    ``not distinguishable from no change`` or ``not judged`` without spreads; and the interval."""
    sd_a, sd_b = a.get(f"{key}_std"), b.get(f"{key}_std")
    if sd_a is None or sd_b is None:
        return "not judged (no per-image spread recorded)", ""
    gain = unpaired(a[f"{key}_mean"], float(sd_a), b[f"{key}_mean"], float(sd_b), max(1, n))
    word = {"higher": "yes", "lower": "no, it lowered it"}.get(gain.outcome, "not distinguishable from no change")
    return word, f" (±{gain.z * gain.se:.3f} at 95%, unpaired, over {gain.n} images)"


def curve_plot(curves: Mapping[str, list[dict[str, float]]], path: Path, xlabel: str,
               ylabel: str = "PGD robust accuracy (%)") -> None:
    """One line per model of accuracy (``{"eps", "accuracy"}`` points) against the radius."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        ax.plot([p["eps"] for p in curve], [100 * p["accuracy"] for p in curve], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    plt.close(fig)


def input_width(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> int:
    """The width of the feature map ``layer`` receives when ``model`` runs on ``x``."""
    seen: list[int] = []
    handle = layer.register_forward_pre_hook(lambda _m, inputs: seen.append(int(inputs[0].shape[-1])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def first_conv_weight(model: nn.Module) -> torch.Tensor:
    """The weight of ``model``'s first ``Conv2d`` (its first-layer filters), on the CPU.

    Raises:
        InputError: when the model has no ``Conv2d``.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError(f"{type(model).__name__} has no Conv2d layer for a figure of its first-layer filters")
    return convs[0].weight.detach().cpu()


def gradient_numbers(fc: FigureContext, file: str, labels: Sequence[str], seed: int, n: int, *, stats_steps: int,
                     curve_eps: Sequence[float], curve_steps: int, grid: Sequence[str]) -> dict[str, Any]:
    """The input-gradient analyses (:mod:`robustlab.analysis.gradients`; the gradient-norm thesis'
    Tables 4.1 and 5.1, Figs. 1.1 and 4.1) of the run's models ``labels`` of ``seed`` on the first
    ``n`` attacked images, cached in ``figures/<file>``: per model its gradient norm statistics
    (PGD-``stats_steps``), saliency-edge correlation and PGD-``curve_steps`` accuracy at each
    radius of ``curve_eps``; the PNGs ``gradients.png`` (the input gradients of ``grid``) and
    ``robust-accuracy.png``. Every attack draws from a generator seeded 0."""
    def compute(folder: Path) -> dict[str, Any]:
        x, y = fc.images(n)
        device, threat = fc.ctx.device, fc.ctx.threat
        models = {name: fc.model_of(name, seed) for name in labels}
        stats, edges, curves = {}, {}, {}
        for name, model in models.items():
            stats[name] = gradients.gradient_norm_stats(model, x, y, threat, steps=stats_steps,
                                                        generator=torch.Generator(device=device).manual_seed(0)).summary()
            edges[name] = gradients.saliency_edge_correlation(model, x, y).summary()
            curves[name] = gradients.robust_accuracy_curve(model, x, y, curve_eps, norm=threat.norm, steps=curve_steps,
                                                           generator=torch.Generator(device=device).manual_seed(0))
        k = min(6, len(x))
        gradients.plot_gradient_grid({name: models[name] for name in grid}, x[:k], y[:k], folder / "gradients.png")
        curve_plot(curves, folder / "robust-accuracy.png", f"{threat.norm} eps")
        return {"seed": seed, "images": len(x), "stats": stats, "edges": edges, "curves": curves, "grid": list(grid)}
    return fc.cached(file, compute)


def gradient_section(numbers: Mapping[str, Any], stats_steps: int, curve_steps: int, norm: str) -> str:
    """The report's section on :func:`gradient_numbers`: a table per analysis and the two PNGs."""
    stats = table(("model", "clean (%)", f"PGD-{stats_steps} (%)", "E[L1]", "E[L1, attack fails]",
                   "E[L1, attack succeeds]"),
                  ((name, pct(s["clean_accuracy"]), pct(s["pgd_accuracy"]), num(s["mean_l1"]),
                    num(s["mean_l1_attack_fails"]), num(s["mean_l1_attack_succeeds"]))
                   for name, s in numbers["stats"].items()))
    edges = table(("model", "log saliency vs log energy", "log loss gradient vs log energy"),
                  ((name, f"{num(e['saliency_mean'], '+.3f')} ± {num(e['saliency_std'], '.3f')}",
                    f"{num(e['loss_gradient_mean'], '+.3f')} ± {num(e['loss_gradient_std'], '.3f')}")
                   for name, e in numbers["edges"].items()))
    radii = [p["eps"] for p in next(iter(numbers["curves"].values()))] if numbers["curves"] else []
    curves = table(("model", *[f"eps {e:g}" for e in radii]),
                   ((name, *[pct(p["accuracy"]) for p in curve]) for name, curve in numbers["curves"].items()))
    return (
        f"\n## Analyses (seed {numbers['seed']}, {numbers['images']} attacked images)\n\n"
        f"**Table 4.1 analogue.** Clean and PGD-{stats_steps} accuracy and the L1 norm of the loss input gradient "
        "(in [0, 1] pixels): overall and where the attack fails / succeeds (the thesis: far smaller for robust "
        f"models, and smaller where the attack fails).\n\n{stats}\n"
        "**Table 5.1 analogue.** Pearson correlation, per image, of log saliency (max over channels of the label "
        "logit's input gradient) and of log |loss gradient| with log oriented energy (clamped at 1e-3); mean ± std "
        f"over images (the thesis: -0.45 vulnerable, +0.56 robust).\n\n{edges}\n"
        f"**Fig. 1.1 analogue.** Loss input gradients of {', '.join(numbers['grid'])} (robust models' gradients look "
        "like the image, vulnerable models' like noise).\n\n![input gradients](figures/gradients.png)\n\n"
        f"**Fig. 4.1 analogue.** PGD-{curve_steps} robust accuracy (%) vs {norm} eps.\n\n"
        f"{curves}\n![robust accuracy vs eps](figures/robust-accuracy.png)\n\n")

"""Input-gradient and loss-geometry analyses of the gradient-norm thesis
(``papers/gradient-norm-regularization``).

===================================== =============================================== ==========
function                              what                                            thesis
===================================== =============================================== ==========
:func:`gradient_norm_stats`           L1 norm of grad_x CE, overall and split by      Table 4.1
                                      PGD-10 failure / success
:func:`saliency_edge_correlation`     Pearson correlation of log saliency (and log    Table 5.1,
                                      abs loss gradient) with log oriented energy     Fig. 5.1
:func:`channel_gradient_distribution` share of the gradient's L1 mass per channel     (Fig. 1.1)
:func:`hessian_top_eigenvalue`        largest-magnitude eigenvalue of the input       Table A.1
                                      Hessian by power iteration on Hessian-vector
                                      products
:func:`geometry_stats`                ||grad||_2, ||Hessian||_2 and normalized        Table A.1,
                                      curvature (Srinivas et al.)                     Fig. A.1
:func:`local_linearity_error`         Eq. A.1 (Rocamora et al.)                       Table A.2
:func:`attack_direction_profile`      loss, L1 gradient norm and curvature along      Fig. A.3
                                      x + t (PGD-5(x) - x)
:func:`robust_accuracy_curve`         PGD robust accuracy vs eps                      Fig. 4.1
:func:`plot_gradient_grid`            PNG grid of input gradients of several models   Fig. 1.1
:func:`analyze_gradients`             all of the above for one model: JSON + figures  (CLI)
===================================== =============================================== ==========

The statistics of the input gradients live in :mod:`~robustlab.analysis.input_gradients`, the
loss geometry (Appendix A) in :mod:`~robustlab.analysis.loss_geometry`; this module holds the
robust-accuracy curve and :func:`analyze_gradients`, and re-exports the others' names (the
conventions are stated in :mod:`~robustlab.analysis.input_gradients`).

This module imports ``core`` and ``attacks`` only (the house plan).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import PGD
from ..core import ThreatModel
from .figures import plot_histogram, plot_lines
from .input_gradients import (
    ENERGY_FLOOR,
    EdgeCorrelation,
    GradientNormStats,
    Model,
    _check_batch,
    _mean,
    _std,
    channel_gradient_distribution,
    class_gradient,
    edge_map,
    gradient_image,
    gradient_norm_stats,
    input_gradient,
    pearson_per_row,
    plot_gradient_grid,
    saliency_edge_correlation,
)
from .loss_geometry import (
    CURVATURE_STABILITY,
    GeometryStats,
    attack_direction_profile,
    geometry_stats,
    hessian_top_eigenvalue,
    local_linearity_error,
)


# ------------------------------------------------------------------------------- Fig. 4.1
def robust_accuracy_curve(
    model: Model, x: torch.Tensor, y: torch.Tensor, eps_values: Sequence[float], *,
    norm: str = "linf", steps: int = 100, generator: torch.Generator | None = None,
) -> list[dict[str, float]]:
    """PGD robust accuracy for each radius (thesis Sec. 4.2, Fig. 4.1: PGD-100, eps 0 to 16/255);
    ``eps = 0`` is clean accuracy."""
    _check_batch(x, y)
    curve = []
    for eps in eps_values:
        if eps == 0:
            with torch.no_grad():
                acc = float((model(x).argmax(1) == y).double().mean())
        else:
            threat = ThreatModel(norm, float(eps))  # type: ignore[arg-type]
            result = PGD(threat, steps=steps).run(model, x, y, generator=generator)
            acc = float((~result.success.bool()).double().mean())
        curve.append({"eps": float(eps), "accuracy": acc})
    return curve


# ------------------------------------------------------------------------------- all at once
def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become ``None``, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def analyze_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, out_dir: str | Path, *, threat: ThreatModel,
    eps_values: Sequence[float] | None = None, pgd_steps: int = 10, curve_steps: int = 20,
    hessian_iters: int = 10, lle_samples: int = 4, profile_points: int = 5, grid_images: int = 6,
    batch_size: int = 100, generator: torch.Generator | None = None, name: str = "model",
) -> dict[str, Any]:
    """Every analysis of this module on one model: writes ``OUT/gradients.json`` (the numbers)
    and the figures ``gradient_grid.png`` (Fig. 1.1), ``robust_accuracy_vs_eps.png`` (Fig. 4.1),
    ``attack_direction.png`` (Fig. A.3) and ``curvature_hist.png`` (Fig. A.1).

    Per-sample statistics run in batches of ``batch_size``; the curve and the attack-direction
    profile on the first batch. ``eps_values`` default to ``[0, eps/2, eps, 2 eps, 4 eps]``.

    Returns:
        The JSON document (also written), with the figures' paths under ``"figures"``.
    """
    _check_batch(x, y)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eps = threat.eps
    eps_values = (
        list(eps_values) if eps_values is not None else [0.0, eps / 2, eps, 2 * eps, 4 * eps]
    )
    norms: list[GradientNormStats] = []
    edges: list[EdgeCorrelation] = []
    geometry: list[GeometryStats] = []
    lle: list[torch.Tensor] = []
    channel_shares: list[dict[str, Any]] = []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        norms.append(
            gradient_norm_stats(model, xb, yb, threat, steps=pgd_steps, generator=generator)
        )
        edges.append(saliency_edge_correlation(model, xb, yb))
        geometry.append(geometry_stats(model, xb, yb, iters=hessian_iters, generator=generator))
        lle.append(
            local_linearity_error(model, xb, yb, eps, samples=lle_samples, generator=generator)
        )
        channel_shares.append(channel_gradient_distribution(model, xb, yb))
    norm_all = GradientNormStats(
        *(torch.cat([getattr(s, k) for s in norms]) for k in ("l1", "clean_correct", "broken"))
    )
    edge_all = EdgeCorrelation(
        *(torch.cat([getattr(s, k) for s in edges]) for k in ("saliency", "loss_gradient"))
    )
    geo_all = GeometryStats(
        *(
            torch.cat([getattr(s, k) for s in geometry])
            for k in ("grad_l2", "hessian_norm", "curvature")
        )
    )
    lle_all = torch.cat(lle)
    first_x, first_y = x[:batch_size], y[:batch_size]
    curve = robust_accuracy_curve(
        model,
        first_x,
        first_y,
        eps_values,
        norm=threat.norm,
        steps=curve_steps,
        generator=generator,
    )
    profile = attack_direction_profile(
        model,
        first_x,
        first_y,
        threat,
        points=profile_points,
        hessian_iters=max(1, hessian_iters // 2),
        generator=generator,
    )
    weights = torch.tensor(
        [float(min(batch_size, x.shape[0] - s)) for s in range(0, x.shape[0], batch_size)]
    )
    share = (torch.tensor([c["share_mean"] for c in channel_shares]) * weights[:, None]).sum(
        0
    ) / weights.sum()
    figures = {
        "gradient_grid": str(
            plot_gradient_grid(
                {name: model}, x[:grid_images], y[:grid_images], out / "gradient_grid.png"
            )
        ),
        "robust_accuracy_vs_eps": str(
            plot_lines(
                out / "robust_accuracy_vs_eps.png",
                [c["eps"] for c in curve],
                {"robust accuracy": [c["accuracy"] for c in curve]},
                "eps",
                f"PGD-{curve_steps} ({threat.norm})",
            )
        ),
        "attack_direction": str(
            plot_lines(
                out / "attack_direction.png",
                profile["eps"],
                {
                    "loss": profile["loss"],
                    "L1 grad norm": profile["l1"],
                    "normalized curvature": profile["curvature"],
                },
                "eps along the PGD-5 direction",
                "Fig. A.3",
            )
        ),
        "curvature_hist": str(
            plot_histogram(
                out / "curvature_hist.png", geo_all.curvature, "normalized curvature", "Fig. A.1"
            )
        ),
    }
    document = _finite(
        {
            "model": name,
            "n": int(x.shape[0]),
            "threat": {"norm": threat.norm, "eps": eps},
            "gradient_norm": norm_all.summary(),
            "edge_correlation": edge_all.summary(),
            "channel_share": {
                "channels": channel_shares[0]["channels"],
                "share_mean": share.tolist(),
            },
            "geometry": geo_all.summary(),
            "local_linearity_error": {
                "mean": _mean(lle_all),
                "std": _std(lle_all),
                "log10_mean": _mean((lle_all + 1e-17).log10()),
                "log10_std": _std((lle_all + 1e-17).log10()),
            },
            "robust_accuracy_curve": curve,
            "attack_direction": profile,
            "figures": figures,
        }
    )
    (out / "gradients.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


__all__ = [
    "CURVATURE_STABILITY",
    "ENERGY_FLOOR",
    "EdgeCorrelation",
    "GeometryStats",
    "GradientNormStats",
    "analyze_gradients",
    "attack_direction_profile",
    "channel_gradient_distribution",
    "class_gradient",
    "edge_map",
    "geometry_stats",
    "gradient_image",
    "gradient_norm_stats",
    "hessian_top_eigenvalue",
    "input_gradient",
    "local_linearity_error",
    "pearson_per_row",
    "plot_gradient_grid",
    "robust_accuracy_curve",
    "saliency_edge_correlation",
]

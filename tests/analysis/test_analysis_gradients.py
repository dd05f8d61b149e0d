"""Input-gradient and geometry analyses of the gradient-norm thesis (Tables 4.1, 5.1, A.1;
Eq. A.1; Figs. 1.1, 4.1, A.3) and the ``robustlab analyze gradients`` command."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import Linear2
from typer.testing import CliRunner

from robustlab.analysis.gradients import (
    analyze_gradients,
    attack_direction_profile,
    channel_gradient_distribution,
    geometry_stats,
    gradient_norm_stats,
    hessian_top_eigenvalue,
    input_gradient,
    local_linearity_error,
    plot_gradient_grid,
    robust_accuracy_curve,
    saliency_edge_correlation,
)
from robustlab.cli import app
from robustlab.core import InputError, ThreatModel
from robustlab.core.filters import oriented_energy


class Smooth(nn.Module):
    """A tanh network on 1x2x2 images (float64): its input Hessian is a dense 4x4 matrix."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)
        with torch.no_grad():
            self.fc1.weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_iteration_matches_the_exact_hessian(seed: int) -> None:
    model = Smooth(seed).double().eval()
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.tensor([0, 1, 2])
    got = hessian_top_eigenvalue(model, x, y, iters=500, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        hessian = torch.autograd.functional.hessian(
            lambda z, i=i: F.cross_entropy(model(z.view(1, 1, 2, 2)), y[i : i + 1]), x[i].flatten()
        )
        eig = torch.linalg.eigvalsh(hessian)
        top = eig[eig.abs().argmax()]
        assert got[i].item() == pytest.approx(top.item(), rel=1e-6, abs=1e-12)
    geometry = geometry_stats(model, x, y, iters=500, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(geometry.hessian_norm, got.abs())
    grad_l2 = torch.stack(
        [
            torch.autograd.functional.jacobian(
                lambda z, i=i: F.cross_entropy(model(z.view(1, 1, 2, 2)), y[i : i + 1]),
                x[i].flatten(),
            ).norm()
            for i in range(3)
        ]
    )
    assert torch.allclose(geometry.grad_l2, grad_l2, rtol=1e-10)
    assert torch.allclose(geometry.curvature, got.abs() / (grad_l2 + 1e-12), rtol=1e-10)


# A two-class linear classifier on 2x2 images: z = w.x + b (one logit read as [0, z]); then
# grad_x CE = (sigmoid(z) - y) w exactly, and PGD under L-inf breaks exactly the samples with
# margin |z| < eps ||w||_1 (for points kept inside [0, 1]).
W = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=torch.float64)


def _linear2() -> Linear2:
    """``z = <W, x> - sum(W) / 2``: the margin of each image of :func:`_linear_batch` exactly."""
    return Linear2(W.view(1, 2, 2), -0.5 * float(W.sum()))


def _linear_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    margins = torch.tensor([0.05, -0.1, 0.2, -0.3, 0.6, -0.8, 0.9, -0.45], dtype=torch.float64)
    x = 0.5 + margins[:, None] * W[None, :] / float(W @ W)
    y = (margins > 0).long()
    return x.view(-1, 1, 2, 2), y, margins


def test_gradient_norm_stats_split_by_pgd() -> None:
    x, y, margins = _linear_batch()
    eps = 0.08  # eps ||w||_1 = 0.4: margins below 0.4 break
    stats = gradient_norm_stats(
        _linear2().eval(),
        x,
        y,
        ThreatModel("linf", eps),
        steps=10,
        generator=torch.Generator().manual_seed(0),
    )
    expected_l1 = (torch.sigmoid(margins) - y.double()).abs() * W.abs().sum()
    assert torch.allclose(stats.l1.double(), expected_l1, rtol=1e-6)
    breaks = margins.abs() < eps * W.abs().sum()
    assert torch.equal(stats.broken, breaks)
    summary = stats.summary()
    assert summary["mean_l1"] == pytest.approx(expected_l1.mean().item(), rel=1e-6)
    assert summary["mean_l1_attack_fails"] == pytest.approx(
        expected_l1[~breaks].mean().item(), rel=1e-6
    )
    assert summary["mean_l1_attack_succeeds"] == pytest.approx(
        expected_l1[breaks].mean().item(), rel=1e-6
    )
    assert summary["pgd_accuracy"] == pytest.approx((~breaks).double().mean().item())
    assert summary["clean_accuracy"] == 1.0


def test_robust_accuracy_curve_on_a_linear_model() -> None:
    x, y, margins = _linear_batch()
    l1 = W.abs().sum().item()
    eps_values = [0.0, 0.03, 0.07, 0.1, 0.15]
    curve = robust_accuracy_curve(
        _linear2().eval(), x, y, eps_values, steps=20, generator=torch.Generator().manual_seed(0)
    )
    for point, eps in zip(curve, eps_values, strict=True):
        assert point["eps"] == eps
        assert point["accuracy"] == pytest.approx(
            (margins.abs() >= eps * l1).double().mean().item()
        )


def test_input_gradient_is_per_sample() -> None:
    x, y, margins = _linear_batch()
    grad = input_gradient(_linear2(), x, y).flatten(1)
    expected = (torch.sigmoid(margins) - y.double())[:, None] * W[None, :]
    assert torch.allclose(grad, expected, rtol=1e-10)


class PixelWeights(nn.Module):
    """Logit 0 is sum(w * x) for a fixed map w; logit 1 is 0: the saliency is |w| everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.w).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_saliency_edge_correlation_signs() -> None:
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    energy = oriented_energy(x)
    y = torch.tensor([0])
    assert energy.min() > 0
    aligned = saliency_edge_correlation(PixelWeights(energy), x, y, floor=1e-300)
    opposed = saliency_edge_correlation(PixelWeights(1.0 / energy), x, y, floor=1e-300)
    assert aligned.saliency.item() == pytest.approx(1.0, abs=1e-9)
    assert opposed.saliency.item() == pytest.approx(-1.0, abs=1e-9)
    # the loss gradient is (p_0 - 1) w: the same map up to a positive factor
    assert aligned.loss_gradient.item() == pytest.approx(1.0, abs=1e-9)


def test_channel_distribution_shares() -> None:
    w = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    w[:, 0] = 1.0
    w[:, 2] = 3.0
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    out = channel_gradient_distribution(PixelWeights(w), x, torch.tensor([0, 1]))
    assert out["share_mean"] == pytest.approx([0.25, 0.0, 0.75])
    assert out["share_std"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_local_linearity_error() -> None:
    model = Smooth(0).double().eval()
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    at_zero = local_linearity_error(model, x, y, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(at_zero, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-28)
    a = local_linearity_error(
        model, x, y, 0.05, samples=16, generator=torch.Generator().manual_seed(0)
    )
    b = local_linearity_error(
        model, x, y, 0.05, samples=16, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(a, b) and (a > 0).all()
    # a loss that is linear along every segment has no error: one class, CE = 0 always
    const = nn.Sequential(nn.Flatten(), nn.Linear(4, 1)).double()
    zero = local_linearity_error(
        const, x, torch.zeros(4, dtype=torch.long), 0.1, generator=torch.Generator()
    )
    assert torch.equal(zero, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(InputError, match="samples must be an int >= 1"):
        local_linearity_error(model, x, y, 0.1, samples=0)


def test_attack_direction_profile_starts_at_the_clean_point() -> None:
    model = Smooth(1).double().eval()
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0])
    profile = attack_direction_profile(
        model,
        x,
        y,
        ThreatModel("linf", 0.1),
        points=3,
        hessian_iters=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert profile["eps"] == pytest.approx([0.0, 0.05, 0.1])
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
    assert profile["loss"][0] == pytest.approx(clean.item(), rel=1e-10)
    assert profile["loss"][-1] > profile["loss"][0]  # the attack raises the loss


def test_gradient_grid_png(tmp_path) -> None:
    x = torch.rand(3, 1, 6, 6)
    y = torch.tensor([0, 1, 0])
    path = plot_gradient_grid(
        {"a": _linear2().float(), "b": PixelWeights(torch.ones(1, 1, 2, 2))},
        x[:, :, :2, :2].contiguous(),
        y,
        tmp_path / "grid.png",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError):
        plot_gradient_grid({}, x, y, tmp_path / "none.png")


def test_analyze_gradients_writes_json_and_figures(tmp_path) -> None:
    model = Smooth(0).eval()
    x = torch.rand(6, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    doc = analyze_gradients(
        model,
        x,
        y,
        tmp_path,
        threat=ThreatModel("linf", 0.1),
        batch_size=4,
        hessian_iters=2,
        curve_steps=2,
        profile_points=3,
        generator=torch.Generator().manual_seed(0),
    )
    saved = json.loads((tmp_path / "gradients.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    assert saved["n"] == 6 and saved["gradient_norm"]["n"] == 6 and saved["geometry"]["n"] == 6
    for figure in saved["figures"].values():
        assert (tmp_path / figure.split("/")[-1]).exists()


def test_cli_analyze_gradients(digits_checkpoint, tmp_path) -> None:
    out = tmp_path / "grads"
    r = CliRunner().invoke(
        app,
        [
            "analyze",
            "gradients",
            str(digits_checkpoint),
            "--n",
            "10",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--hessian-iters",
            "2",
            "--curve-steps",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "gradients.json").read_text())
    assert doc["n"] == 10 and doc["threat"]["norm"] == "linf"
    assert {
        "gradient_norm",
        "edge_correlation",
        "geometry",
        "local_linearity_error",
        "robust_accuracy_curve",
        "attack_direction",
    } <= doc.keys()
    assert (out / "gradient_grid.png").exists() and (out / "robust_accuracy_vs_eps.png").exists()
    assert "E[L1]" in r.output
    r = CliRunner().invoke(
        app, ["analyze", "gradients", str(digits_checkpoint), "--out", str(out), "--norm", "l3"]
    )
    assert r.exit_code == 2 and "unknown --norm 'l3'; use linf or l2" in r.output

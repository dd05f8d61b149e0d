"""The anti-perturbation ratio (feature-map-strides paper, Sec. IV-B, Table II)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from toys import Linear2

from robustlab.analysis import AntiPerturbationResult, anti_perturbation_ratio
from robustlab.core.errors import InputError

# A two-class linear classifier on 2x2 one-channel images: logit z = w.x + b, class 1 iff z > 0
# (a single logit per sample is read as the two-class logits [0, z]).
W = torch.tensor([1.0, -2.0, 0.5, 1.5])
W_L1 = 5.0
MARGINS = [s * m for m in (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95) for s in (1, -1)]
# thresholds eps * ||w||_1 = 0, 0.1, 0.25, 0.55, 0.8: none equals a margin
EPS_GRID = [0.0, 0.02, 0.05, 0.11, 0.16]


def _linear2() -> Linear2:
    """``z = <W, x> - sum(W) / 2``: the margin of each image of :func:`_linear_batch` exactly."""
    return Linear2(W.view(1, 2, 2), -0.5 * float(W.sum())).requires_grad_(False)


def _linear_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose margin z equals MARGINS exactly (x = 0.5 + t w / ||w||_2^2), staying in
    [0.23, 0.77] so the [0, 1] box never binds within eps <= 0.16; the clean predictions."""
    t = torch.tensor(MARGINS)
    x = 0.5 + t[:, None] * W[None, :] / float(W @ W)
    pred = (t > 0).long()
    return x.view(-1, 1, 2, 2), t, pred


def _hand_unchanged(margins: torch.Tensor, attacked_is_pred: torch.Tensor) -> list[int]:
    """An L-inf attack that succeeds moves z by eps * ||w||_1 towards the boundary: a sample
    flips iff its margin is below that and the attack pushes towards the boundary (it does
    when it ascends the loss of the clean prediction)."""
    out = []
    for eps in EPS_GRID:
        flips = (margins.abs() < eps * W_L1) & attacked_is_pred
        out.append(len(MARGINS) - int(flips.sum()))
    return out


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> AntiPerturbationResult:
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return anti_perturbation_ratio(
        model, x, y, EPS_GRID, steps=6, step_size=lambda eps: eps / 2, **kw
    )


def test_linear_model_matches_hand_count_on_predictions() -> None:
    x, t, pred = _linear_batch()
    y = pred.clone()
    y[[0, 1, 8]] = 1 - y[[0, 1, 8]]  # three misclassified samples (margins 0.05, -0.05, 0.45)
    result = _run(_linear2().eval(), x, y)
    expected = _hand_unchanged(t, torch.ones(len(MARGINS), dtype=torch.bool))
    assert list(result.unchanged) == expected == [20, 18, 16, 10, 4]
    assert result.ratios == tuple(u / 20 for u in expected)
    assert result.total == 20 and result.clean_correct == 17
    assert result.labels == "predicted" and result.step_sizes == tuple(e / 2 for e in EPS_GRID)


def test_linear_model_attacking_true_labels_spares_misclassified_samples() -> None:
    """Attacking y pushes a misclassified sample deeper into its (wrong) class: it never flips."""
    x, t, pred = _linear_batch()
    y = pred.clone()
    wrong = torch.zeros(len(MARGINS), dtype=torch.bool)
    wrong[[0, 1, 8]] = True
    y[wrong] = 1 - y[wrong]
    result = _run(_linear2().eval(), x, y, labels="true")
    expected = _hand_unchanged(t, ~wrong)
    assert list(result.unchanged) == expected == [20, 20, 18, 13, 7]


def test_ratio_is_one_at_eps_zero_on_a_cnn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)
    result = anti_perturbation_ratio(
        model, x, y, [0.0, 0.5], steps=5, step_size=0.2, generator=torch.Generator().manual_seed(2)
    )
    assert result.ratios[0] == 1.0
    assert result.ratios[1] < 1.0  # eps = 0.5 on an untrained net changes some predictions


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] * 0 + torch.tensor([0.0, 2.0, 1.0])


def test_constant_model_never_changes() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(12, 1, 4, 4, generator=gen)
    y = torch.tensor([0, 1, 2] * 4)  # only a third are "correct": the ratio ignores correctness
    result = _run(Constant().eval(), x, y)
    assert result.ratios == (1.0,) * len(EPS_GRID)
    assert result.clean_correct == 4
    assert "zero-gradients" in {w.code for w in result.warnings}


def test_batches_and_seed_repeat_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(10, 1, 4, 4, generator=gen)
    y = torch.randint(0, 3, (10,), generator=gen)
    first = _run(model, x, y, batch_size=3)
    second = _run(model, x, y, batch_size=3)
    assert first == second
    assert first.to_dict()["ratios"] == list(first.ratios)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"eps_grid": []}, "eps_grid must be a non-empty sequence"),
        ({"eps_grid": [-0.1]}, "eps must be a finite number >= 0"),
        ({"labels": "gold"}, "labels must be 'predicted' or 'true'"),
        ({"norm": "l1"}, "unknown norm 'l1'"),
        ({"step_size": -1.0}, "step size must be a finite number >= 0"),
    ],
)
def test_bad_inputs(kw: dict[str, Any], message: str) -> None:
    x, _, pred = _linear_batch()
    args: dict[str, Any] = {"eps_grid": [0.1], "steps": 2, "step_size": 0.05, **kw}
    eps_grid = args.pop("eps_grid")
    with pytest.raises(InputError, match=message):
        anti_perturbation_ratio(_linear2().eval(), x, pred, eps_grid, **args)


def test_images_outside_unit_range_are_refused() -> None:
    x, _, pred = _linear_batch()
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        anti_perturbation_ratio(_linear2(), x * 3, pred, [0.1], steps=2, step_size=0.05)

"""FAB-T's targets batched (issue 31): the same samples succeed as with one target after
another, with fewer model calls.

On a linear classifier ``z = W x + b`` with inputs far from the box, the smallest L-inf
perturbation that puts target ``t`` above label ``y`` is ``(z_y - z_t) / ||w_t - w_y||_1``
(closed form), and FAB's first step lands on that boundary (5% past it): a sample succeeds
exactly when some target's distance is within eps, away from near-ties.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from attack_toys import CountCalls
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluate"))
from evaluate_toys import linear_model  # noqa: E402

from robustlab.attacks import FABT  # noqa: E402
from robustlab.core import ThreatModel  # noqa: E402

K, TARGETS, EPS = 10, 9, 0.05


def _closed_form(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the smallest L-inf distance to any runner-up target's boundary (no box)."""
    lin = net[1]
    with torch.no_grad():
        z = net(x).double()
    w = lin.weight.double()
    targets = z.topk(TARGETS + 1, dim=1).indices[:, 1:]  # the runner-up classes, as FAB-T takes them
    gap = z.gather(1, y.unsqueeze(1)) - z.gather(1, targets)  # (n, T), > 0 for correct samples
    norm = (w[targets] - w[y].unsqueeze(1)).abs().sum(dim=2)  # ||w_t - w_y||_1
    return (gap / norm).min(dim=1).values


@pytest.mark.parametrize("n", [3, 40])  # all targets in one batch; groups of targets
def test_batched_targets_break_the_same_samples_as_one_target_after_another(n: int) -> None:
    net = linear_model(num_classes=K, features=16, seed=4)
    x = 0.4 + 0.2 * torch.rand(400, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    dist = _closed_form(net, x, y)
    clear = (dist - EPS).abs() > 0.15 * EPS  # away from near-ties
    # a mix of samples that succeed and that do not, n of them
    take = torch.cat([(clear & (dist <= EPS)).nonzero()[: n // 2 + 1, 0], (clear & (dist > EPS)).nonzero()[: n, 0]])[:n]
    x, y, expected = x[take], y[take], dist[take] <= EPS
    assert 0 < int(expected.sum()) < n
    threat = ThreatModel("linf", EPS)
    out = {}
    for rows in (0, 256):
        model = CountCalls(net).eval()
        res = FABT(threat, 20, n_target_classes=TARGETS, batch_rows=rows).run(model, x, y)
        out[rows] = (res, model.calls)
    (seq, seq_calls), (bat, bat_calls) = out[0], out[256]
    assert torch.equal(seq.success, expected)
    assert torch.equal(bat.success, expected)
    # every returned point is inside the ball, whatever target it came from
    assert float((bat.x_adv - x).abs().amax()) <= EPS + 1e-7
    # one call per step for a group of targets instead of one per target
    assert bat_calls < 0.6 * seq_calls

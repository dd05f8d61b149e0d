"""evaluate_corruptions: the paper's mCE (plain mean error), determinism, normalized mCE."""

import pytest
import torch
from torch import nn

from robustlab.core import InputError
from robustlab.evaluate import CorruptionResult, evaluate_corruptions


class Constant(nn.Module):
    """Always predicts class ``k``."""

    def __init__(self, k: int, classes: int = 4) -> None:
        super().__init__()
        self.k, self.classes = k, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.classes)
        out[:, self.k] = 1.0
        return out


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_constant_model_error_is_the_label_frequency_everywhere():
    x, y = _data()
    res = evaluate_corruptions(Constant(2), (x, y), corruptions=["fog", "pixelate"], severities=[1, 5])
    frac = float((y == 2).float().mean())
    assert res.clean_acc == pytest.approx(frac)
    assert res.accuracy == {"fog": [pytest.approx(frac)] * 2, "pixelate": [pytest.approx(frac)] * 2}
    assert res.mce == pytest.approx(1 - frac)
    assert res.n == 40
    # per image: every corrupted version right (label 2) or every one wrong
    assert res.per_image == [1.0 if int(t) == 2 else 0.0 for t in y]


def test_mce_is_the_plain_mean_error_and_relative_mce_normalizes():
    a = CorruptionResult({"fog": [0.9, 0.5], "snow": [0.8, 0.8]}, 1.0, 10, 0.0)
    assert a.mce == pytest.approx(1 - (0.9 + 0.5 + 0.8 + 0.8) / 4)
    assert a.errors() == {"fog": pytest.approx(0.3), "snow": pytest.approx(0.2)}
    b = CorruptionResult({"fog": [0.8, 0.0], "snow": [0.6, 0.6]}, 1.0, 10, 0.0)
    # (0.6 / 1.2 + 0.4 / 0.8) / 2
    assert a.relative_mce(b) == pytest.approx(0.5)
    assert a.relative_mce(a) == pytest.approx(1.0)
    assert CorruptionResult.from_dict(a.to_dict()) == a
    with pytest.raises(InputError, match="no result for corruption 'snow'"):
        a.relative_mce(CorruptionResult({"fog": [0.5, 0.5]}, 1.0, 10, 0.0))


def test_same_seed_same_numbers_and_n_limits_the_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 4)).eval()
    x, y = _data()
    kw = {"corruptions": ["gaussian-noise", "zoom-blur"], "severities": [3], "n": 30, "batch_size": 7}
    r1 = evaluate_corruptions(model, (x, y), **kw)
    r2 = evaluate_corruptions(model, (x, y), **kw)
    assert r1.accuracy == r2.accuracy and r1.n == 30
    assert len(r1.per_image) == 30 and r1.per_image == r2.per_image
    # the per-image fractions average back to the overall corrupted accuracy (1 - mCE)
    assert sum(r1.per_image) / 30 == pytest.approx(1 - r1.mce)
    # a different corruption seed draws other noise; accuracies are multiples of 1/30
    r3 = evaluate_corruptions(model, (x, y), seed=1, **kw)
    assert all(round(a * 30) == pytest.approx(a * 30) for a in r3.accuracy["gaussian-noise"])

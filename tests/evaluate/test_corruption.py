"""evaluate_corruptions: the paper's mCE (plain mean error), determinism, normalized mCE, and
accuracies against a toy model whose answer under the reference noise levels is known."""

import math

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


class Recorder(nn.Module):
    """A linear classifier that keeps every batch it is shown."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 4)).eval()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.net(x)


def test_same_seed_same_images_other_seed_other_noise_and_n_limits_the_images():
    x, y = _data()
    kw = {"corruptions": ["gaussian-noise", "zoom-blur"], "severities": [3], "n": 30, "batch_size": 7}
    m1, m2, m3 = Recorder(), Recorder(), Recorder()
    r1 = evaluate_corruptions(m1, (x, y), **kw)
    r2 = evaluate_corruptions(m2, (x, y), **kw)
    whole = {**kw, "n": None}  # all 40: the subset does not depend on the seed
    m1b = Recorder()
    evaluate_corruptions(m1b, (x, y), **whole)
    evaluate_corruptions(m3, (x, y), seed=1, **whole)
    # clean pass + 2 corruptions, 30 images in batches of 7, 7, 7, 7, 2
    assert [len(b) for b in m1.seen] == [7, 7, 7, 7, 2] * 3
    from robustlab.data import select_subset

    chosen = select_subset(y, 30, 0)  # the library's one rule for "n samples", in order
    torch.testing.assert_close(torch.cat(m1.seen[:5]), x[chosen])
    assert all(torch.equal(a, b) for a, b in zip(m1.seen, m2.seen, strict=True))  # same seed: same -C images
    assert r1.accuracy == r2.accuracy and r1.per_image == r2.per_image and r1.n == 30
    noise1, noise3 = torch.cat(m1b.seen[6:12]), torch.cat(m3.seen[6:12])  # 40 images: 6 batches
    assert not torch.equal(noise1, noise3)  # another seed draws other noise ...
    assert torch.equal(torch.cat(m1b.seen[12:]), torch.cat(m3.seen[12:]))  # ... and zoom blur has none
    # per image: the fraction of its 2 corrupted versions classified right, averaging to 1 - mCE
    assert len(r1.per_image) == 30 and set(r1.per_image) <= {0.0, 0.5, 1.0}
    assert sum(r1.per_image) / 30 == pytest.approx(1 - r1.mce)


class PixelWithin(nn.Module):
    """Class 0 while the first pixel is within ``tol`` of 0.5, else class 1."""

    def __init__(self, tol: float) -> None:
        super().__init__()
        self.tol = tol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        near = ((x[:, 0, 0, 0] - 0.5).abs() <= self.tol).float()
        return torch.stack((near, 1 - near), dim=1)


def test_noise_accuracy_falls_with_severity_as_the_reference_sigmas_predict():
    # mid-gray images of class 0 and a model right while one pixel stays within 0.06 of 0.5:
    # under N(0, sigma) noise its accuracy is P(|Z| <= 0.06 / sigma) = erf(0.06 / (sigma sqrt 2)),
    # with CIFAR-10-C's sigma = 0.04, 0.06, 0.08, 0.09, 0.10 for severities 1-5
    n = 2000
    x, y = torch.full((n, 1, 2, 2), 0.5), torch.zeros(n, dtype=torch.long)
    res = evaluate_corruptions(PixelWithin(0.06), (x, y), corruptions=["gaussian-noise"], batch_size=500)
    accs = res.accuracy["gaussian-noise"]
    assert res.clean_acc == 1.0
    assert all(a > b for a, b in zip(accs, accs[1:], strict=False)), accs
    want = [math.erf(0.06 / (sigma * math.sqrt(2))) for sigma in (0.04, 0.06, 0.08, 0.09, 0.10)]
    # 8-bit rounding of the noisy pixel moves the threshold by < 1/255; 2000 images: se <= 0.011
    for got, ref in zip(accs, want, strict=True):
        assert got == pytest.approx(ref, abs=0.04), (accs, want)

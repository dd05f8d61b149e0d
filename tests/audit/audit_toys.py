"""Toy models whose true robust accuracy is known in closed form (test-only; not library code).

Every toy is a two-class classifier of 1x4x4 images in [0, 1] with Linear2-style logits
``[0, z]`` (class 1 when ``z > 0``) whose ``z`` depends on the image only through a linear score
``s = <w, x> + b``, possibly after a per-pixel monotone map (a quantizer). Under an L-inf ball of
radius ``eps`` intersected with the box [0, 1], the extremes of such a score are separable: each
pixel goes to its own end of ``[max(0, x - eps), min(1, x + eps)]`` (:func:`score_range`), so the
worst point of every image is known exactly. For the randomized toys the probability that one
draw classifies a point correctly is a function of the score alone, monotone in it, and known in
closed form (:meth:`NoisyLinear.p_correct`, :meth:`PhaseNoise.p_correct`), so the truth is that
function at the worst score.

The truth a test compares against (:func:`truth`): per image, the minimum over the ball of the
probability that a draw classifies the point correctly (0/1 for a deterministic toy); the robust
accuracy is its mean. Labels are each toy's own prediction at the clean image (its most probable
class), so every clean image starts correct.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.core.bpda import BPDALayer
from robustlab.core.randomness import Stochastic

SIDE = 4
EPS = 0.1
"""The L-inf radius the toys are built for."""

BLOCK = (5, 6, 9, 10)
"""The central 2x2 block of a 4x4 image: the pixels the sparse toys read."""


def toy_images(n: int, seed: int) -> torch.Tensor:
    """``n`` uniformly random 1x4x4 images from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, SIDE, SIDE, generator=g)


def near(x: torch.Tensor, pixel: int, center: float, spread: float, seed: int) -> torch.Tensor:
    """``x`` with the flat ``pixel`` redrawn uniformly in ``center +- spread`` (images whose
    decision hinges on that pixel, so that about ``eps / spread`` of them can be flipped)."""
    g = torch.Generator().manual_seed(seed)
    out = x.clone()
    out.view(x.shape[0], -1)[:, pixel] = center + spread * (2 * torch.rand(x.shape[0], generator=g) - 1)
    return out


def poised(x: torch.Tensor, offsets: tuple[float, ...], spread: float, seed: int) -> torch.Tensor:
    """``x`` with every pixel of :data:`BLOCK` at ``0.5 +- offset`` (one random sign and one
    ``offset`` of ``offsets`` per image) plus uniform noise of half-width ``spread``: images whose
    block score ``sum - 2`` sits about ``4 * offset`` from 0, on either side."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    side = torch.randint(0, 2, (n, 1), generator=g).double() * 2 - 1
    offset = torch.tensor(offsets, dtype=torch.float64)[torch.randint(0, len(offsets), (n, 1), generator=g)]
    jitter = spread * (2 * torch.rand(n, len(BLOCK), generator=g, dtype=torch.float64) - 1)
    out = x.clone()
    out.view(n, -1)[:, list(BLOCK)] = (0.5 + offset * side + jitter).to(x.dtype)
    return out


def block_weights(scale: float = 1.0, pixels: tuple[int, ...] = BLOCK) -> torch.Tensor:
    """``scale`` on ``pixels`` (default :data:`BLOCK`), 0 elsewhere (flat, 16 values)."""
    w = torch.zeros(SIDE * SIDE)
    w[list(pixels)] = scale
    return w


def _logits(z: torch.Tensor, classes: int = 2) -> torch.Tensor:
    """``[0, z]``, padded with ``classes - 2`` constant logits of -10 that never win (so that
    attacks needing more classes, like APGD-T's DLR loss, run; the decision stays ``z > 0``)."""
    pad = [torch.full_like(z, -10.0)] * (classes - 2)
    return torch.stack([torch.zeros_like(z), z, *pad], dim=1)


def _score(x: torch.Tensor, w: torch.Tensor, b: float) -> torch.Tensor:
    return (x.flatten(1) * w.to(x.dtype)).sum(dim=1) + b


def score_range(
    x: torch.Tensor, w: torch.Tensor, b: float, eps: float, pixel_map=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of ``<w, m(x')> + b`` over the L-inf ball of radius ``eps`` around each
    image, intersected with [0, 1]; ``m`` (default the identity) must be non-decreasing per pixel.
    Computed in float64, pixel by pixel (the problem is separable)."""
    flat = x.flatten(1).double()
    lo, hi = (flat - eps).clamp(0, 1), (flat + eps).clamp(0, 1)
    if pixel_map is not None:
        lo, hi = pixel_map(lo), pixel_map(hi)
    w = w.double().view(1, -1)
    low = (torch.where(w > 0, lo, hi) * w).sum(dim=1) + b
    high = (torch.where(w > 0, hi, lo) * w).sum(dim=1) + b
    return low, high


class StepScore(nn.Module):
    """``z = scale * sign(<w, x> + b)``: a defense whose gradient is zero almost everywhere (the
    sign's derivative is 0), while its decision is the linear score's."""

    def __init__(self, w: torch.Tensor, b: float, scale: float = 4.0) -> None:
        super().__init__()
        self.register_buffer("w", w.clone())
        self.b, self.scale = b, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.scale * torch.sign(_score(x, self.w, self.b)))

    def worst_correct(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        low, high = score_range(x, self.w, self.b, eps)
        return torch.where(y == 1, low > 0, high <= 0).double()


class RoundedInput(nn.Module):
    """A non-differentiable input quantizer without a BPDA surrogate: each pixel is rounded to
    ``levels`` values in [0, 1] (``round``'s gradient is 0), then ``z = <w, q(x)> + b``."""

    def __init__(self, w: torch.Tensor, b: float, levels: int = 5) -> None:
        super().__init__()
        self.register_buffer("w", w.clone())
        self.b, self.levels = b, levels

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        k = self.levels - 1
        return torch.round(x * k) / k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(_score(self.quantize(x), self.w, self.b))

    def worst_correct(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        low, high = score_range(x, self.w, self.b, eps, self.quantize)
        return torch.where(y == 1, low > 0, high <= 0).double()


class RoundLayer(BPDALayer):
    """Rounding to ``levels`` values in [0, 1] as a BPDA layer: exact forward ``round``, smooth
    surrogate the identity (so ``bpda="identity"`` and ``"smooth"`` both backpropagate through
    it as the identity)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        k = self.levels - 1
        return torch.round(x * k) / k

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return x


class RoundedBPDA(nn.Module):
    """:class:`RoundedInput` whose quantizer declares its BPDA surrogate (:class:`RoundLayer`)."""

    def __init__(self, w: torch.Tensor, b: float, levels: int = 5) -> None:
        super().__init__()
        self.quantizer = RoundLayer(levels)
        self.register_buffer("w", w.clone())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(_score(self.quantizer(x), self.w, self.b))

    def worst_correct(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        low, high = score_range(x, self.w, self.b, eps, self.quantizer.forward_exact)
        return torch.where(y == 1, low > 0, high <= 0).double()


class LinearScore(nn.Module):
    """``z = <w, x> + b``: the differentiable twin of :class:`StepScore` (same decisions)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w.clone())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(_score(x, self.w, self.b))


class SqrtAtZero(nn.Module):
    """``z = <w, x> + b + sqrt(x_0 - x_0)``: the value is the linear score, but the square root's
    gradient at 0 is infinite, so every input gradient holds NaN (``inf * 0``)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w.clone())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, 0]
        return _logits(_score(x, self.w, self.b) + torch.sqrt(first - first))


class GatedSawtooth(nn.Module):
    """``z = <w, x> + b + gate(x) * amp * (x_0 - floor(x_0 * teeth) / teeth)`` with ``gate = 1``
    where pixel 1 exceeds ``cut`` (else 0, with zero gradient): on the gated images the value
    moves by less than ``amp / teeth`` but the gradient along pixel 0 is ``amp``, so exactly those
    images' gradients explode (on a two-class model the cross-entropy's gradient divided by
    ``1 - p_y`` is the score's gradient, ``w`` elsewhere)."""

    def __init__(self, w: torch.Tensor, b: float, amp: float = 1e5, teeth: float = 1e8, cut: float = 0.9) -> None:
        super().__init__()
        self.register_buffer("w", w.clone())
        self.b, self.amp, self.teeth, self.cut = b, amp, teeth, cut

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1)[:, 1] > self.cut).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, 0]
        saw = first - torch.floor(first * self.teeth) / self.teeth
        return _logits(_score(x, self.w, self.b) + self.gate(x) * self.amp * saw)


class SoftmaxOutput(nn.Module):
    """A linear model that returns softmax probabilities instead of logits."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_logits(_score(x, self.w, self.b)), dim=1)

    def worst_correct(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        low, high = score_range(x, self.w.detach(), self.b, eps)
        return torch.where(y == 1, low > 0, high <= 0).double()


def _phi(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


class NoisyLinear(Stochastic):
    """Gaussian noise of standard deviation ``std`` on the input, then ``z = <w, x> + b``: a
    noise-injection defense. ``z`` is Gaussian with mean ``<w, x> + b`` and standard deviation
    ``std * ||w||_2``, so a draw is correct with probability ``Phi(+-(<w, x> + b) / (std ||w||))``.
    ``classes`` pads the logits with constant losing classes (:func:`_logits`)."""

    def __init__(self, w: torch.Tensor, b: float, std: float, classes: int = 2) -> None:
        super().__init__()
        self.register_buffer("w", w.clone())
        self.b, self.std, self.classes = b, std, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.draw(lambda g: torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype),
                          key=tuple(x.shape), device=x.device)
        return _logits(_score(x + self.std * noise, self.w, self.b), self.classes)

    def p_correct(self, score: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = score / (self.std * float(self.w.double().norm()))
        return torch.where(y == 1, _phi(t), _phi(-t))

    def worst_correct(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        low, high = score_range(x, self.w, self.b, eps)
        return torch.where(y == 1, self.p_correct(low, y), self.p_correct(high, y))


class PhaseNoise(Stochastic):
    """Heavy noise injection before a periodic unit: ``z = s + amp * sin(freq * s + phi)`` with
    ``s = <w, x> + b`` and a fresh uniform phase ``phi`` per image and draw (noise spanning a whole
    period of the unit).

    Whatever ``s``, ``sin(freq * s + phi)`` has the arcsine law of ``sin(phi)``, so a draw is
    correct with probability ``1/2 + arcsin(clip(+-s / amp)) / pi`` (:meth:`p_correct`): monotone
    in ``s``, worst at the score's extreme over the ball. One draw's gradient is
    ``w * (1 + amp * freq * cos(freq * s + phi))``: with ``amp * freq > 1`` its sign is random, and
    only an average over many draws (EOT) points the right way.
    """

    def __init__(self, w: torch.Tensor, b: float, amp: float, freq: float) -> None:
        super().__init__()
        self.register_buffer("w", w.clone())
        self.b, self.amp, self.freq = b, amp, freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        phase = self.draw(lambda g: 2 * math.pi * torch.rand(n, generator=g, device=x.device, dtype=x.dtype),
                          key=tuple(x.shape), device=x.device)
        s = _score(x, self.w, self.b)
        return _logits(s + self.amp * torch.sin(self.freq * s + phase))

    def p_correct(self, score: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = (score / self.amp).clamp(-1, 1)
        # class 1 iff sin(phi) > -s / amp, whose probability is 1/2 + arcsin(s / amp) / pi
        p1 = 0.5 + torch.asin(t) / math.pi
        return torch.where(y == 1, p1, 1 - p1)

    def worst_correct(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        low, high = score_range(x, self.w, self.b, eps)
        return torch.where(y == 1, self.p_correct(low, y), self.p_correct(high, y))


@torch.no_grad()
def clean_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each toy's most probable class at the clean images: its prediction for a deterministic
    toy, the sign of its score for a randomized one (a draw is right more often than not)."""
    if isinstance(model, Stochastic):
        return (_score(x.double(), model.w.double(), model.b) > 0).long()
    return model(x).argmax(dim=1)


def truth(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per image, the smallest probability over the ball that a draw classifies a point correctly."""
    return model.worst_correct(x, y, eps)  # type: ignore[operator]


class DigitsCNN(nn.Module):
    """A CNN for the 8x8 digits, small enough to adversarially train in a few seconds."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1))


def train_pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, epochs: int,
                 steps: int = 5) -> nn.Module:
    """PGD adversarial training (Madry et al., 2018): each batch replaced by PGD-``steps`` points
    (random start, step ``2.5 eps / steps``), eps ramped up linearly over the first third of the
    epochs. Deterministic under a seeded global RNG."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        radius = eps * min(1.0, (epoch + 1) / max(epochs / 3, 1))
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            xb, yb = x[perm[i: i + 64]], y[perm[i: i + 64]]
            delta = (torch.rand_like(xb) * 2 - 1) * radius
            for _ in range(steps):
                delta.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model((xb + delta).clamp(0, 1)), yb), delta)
                delta = (delta + 2.5 * radius / steps * g.sign()).clamp(-radius, radius).detach()
            loss = F.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()

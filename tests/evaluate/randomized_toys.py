"""Randomized toy models whose true robust accuracy is known (test-only; not library code).

Every toy classifies 1x4x4 images in [0, 1] whose true label is 0. A toy reads only a few
*pinned* pixels, which every clean image holds at exactly 0.5, through their offsets
``t = (pixel - 0.5) / EPS``: over the L-inf ball of radius ``EPS`` each offset ranges over
[-1, 1] (the box [0, 1] never clips it). The other pixels are random and ignored; they only make
the samples differ. A toy's logits are a deterministic function :meth:`logits` of the image and
one draw of noise; :meth:`forward` makes the draw, through the
:class:`~robustlab.core.randomness.Stochastic` protocol (``self.draw(..., key=tuple(x.shape))``)
except where the toy's point is randomness the library is not told about (``torch.randn`` /
``torch.rand`` from the global generator inside ``forward``).

The truth these tests compare against: per sample, the smallest probability, over the points of
the ball, that one fresh draw classifies the point correctly; robust accuracy is its mean over the
samples. For every toy but :class:`CoinRate` it is 0: a known point of the ball (:meth:`corner`)
is misclassified by every draw, which :func:`fooled_by_every_draw` checks by enumerating the
draws (a discrete draw: every outcome; bounded noise: the extremes, the margins being monotone
in the noise). :class:`CoinRate` has no attack power at all, so its truth is its expected clean
accuracy, in closed form.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.core.randomness import Stochastic

EPS = 0.1
"""The L-inf radius every toy is built for."""

REACH = EPS * (1 - 1e-4)
"""How far :meth:`corner` moves a pixel: just inside the ball, also after float rounding."""

SIDE = 4
FLAG_PIXEL = SIDE * SIDE - 1
"""The pixel :class:`Outlier` reads to find its outlier row (0 on every other image)."""


def toy_images(n: int, seed: int, pinned: tuple[int, ...]) -> torch.Tensor:
    """``n`` random 1x4x4 images with the ``pinned`` pixels (flat indices) at exactly 0.5."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIDE, SIDE, generator=g)
    x.view(n, -1)[:, list(pinned)] = 0.5
    return x


def labels(n: int) -> torch.Tensor:
    """The true labels: class 0 for every sample."""
    return torch.zeros(n, dtype=torch.long)


def offsets(x: torch.Tensor, pixels: tuple[int, ...]) -> torch.Tensor:
    """``(N, len(pixels))`` offsets ``(pixel - 0.5) / EPS`` of the given flat pixel indices."""
    return (x.flatten(1)[:, list(pixels)] - 0.5) / EPS


def moved(
    x: torch.Tensor, pixels: tuple[int, ...], direction: torch.Tensor | float
) -> torch.Tensor:
    """``x`` with ``pixels`` moved by ``REACH`` times ``direction`` (a sign, per sample or one)."""
    out = x.clone()
    d = torch.as_tensor(direction, dtype=x.dtype, device=x.device).reshape(-1, 1)
    out.view(x.shape[0], -1)[:, list(pixels)] += REACH * d
    return out


@torch.no_grad()
def fooled_by_every_draw(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample: whether ``x`` is misclassified for every draw of ``model``'s noise
    (every outcome :meth:`outcomes` lists)."""
    fooled = torch.ones(x.shape[0], dtype=torch.bool)
    for noise in model.outcomes(x.shape[0]):  # type: ignore[operator]
        fooled &= model.logits(x, noise).argmax(dim=1) != y  # type: ignore[operator]
    return fooled


def coin(layer: Stochastic, x: torch.Tensor, p: float) -> torch.Tensor:
    """One Bernoulli(``p``) draw per sample from ``layer``'s generator, as ``x``'s dtype."""
    n = x.shape[0]
    return layer.draw(
        lambda g: (torch.rand(n, generator=g, device=x.device) < p).to(x.dtype),
        key=tuple(x.shape),
        device=x.device,
    )


def _stack(*columns: torch.Tensor) -> torch.Tensor:
    return torch.stack(columns, dim=1)


class TargetTrap(Stochastic):
    """Path 1 (later targets overwrite earlier successes): only the first APGD-T target wins.

    Four classes. With ``t = offsets`` of pixels (1, 2, 3) and uniform noise ``u`` in
    [-0.2, 0.2]^4 per draw: ``z = (0, 2 t1 - 1, 0.2 t2 - 1.5, 0.2 t3 - 2) + u``.

    - Clean (t = 0) every draw ranks 0 > 1 > 2 > 3 (gaps of 0.5 exceed the noise's 0.4), so
      APGD-T's targets are classes 1, 2, 3, in this order.
    - Truth 0: at ``t1 = 1`` (:meth:`corner`) ``z1 - z0 >= 1 - 0.4 > 0`` for every draw.
    - Classes 2 and 3 cannot win anywhere (``z2 <= -1.1 < -0.2 <= z0``), and the runs toward
      them do not raise ``t1`` (no gradient, or a push down when class 1 sits among the DLR
      loss's lowest logits), so their points are classified correctly by most draws. If a later
      target's point replaces the first one's, the reported number is about the share of
      samples whose random start did not already sit beyond ``t1 = 0.5``.
    """

    pixels = (1, 2, 3)

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = offsets(x, self.pixels)
        zero = torch.zeros_like(t[:, 0])
        return _stack(zero, 2 * t[:, 0] - 1, 0.2 * t[:, 1] - 1.5, 0.2 * t[:, 2] - 2.0) + noise

    def outcomes(self, n: int) -> list[torch.Tensor]:
        signs = torch.tensor([[(k >> j) & 1 for j in range(4)] for k in range(16)]) * 2.0 - 1
        return [0.2 * s.expand(n, 4) for s in signs]

    def corner(self, x: torch.Tensor) -> torch.Tensor:
        return moved(x, (1,), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        noise = self.draw(
            lambda g: 0.4 * torch.rand(n, 4, generator=g, device=x.device) - 0.2,
            key=tuple(x.shape),
            device=x.device,
        )
        return self.logits(x, noise)


class RestartTrap(Stochastic):
    """Path 1 (later restarts overwrite earlier successes): a restart wins only from the right
    side of its start.

    Two classes. With ``t`` the offset of pixel 0 and uniform noise ``u`` in [-0.2, 0.2]:
    ``z1 - z0 = f(t) + u``, ``f(t) = 1.875 t^2 + 0.75 t - 1.625``: a parabola with its minimum
    at ``t = -0.2``, ``f(-1) = -0.5`` and ``f(1) = 1``.

    - Truth 0: at ``t = 1`` (:meth:`corner`) ``z1 - z0 >= 1 - 0.2 > 0`` for every draw.
    - Gradient ascent (the noise is additive, so every draw has the same gradient) climbs to
      ``t = 1`` from a start with ``t > -0.2`` and to ``t = -1``, where every draw is right,
      from one with ``t < -0.2``: a random start loses with probability about 0.4, and five
      restarts all lose on about ``0.4^5``, 1% of the samples. If the last restart's point
      replaces the earlier ones, about 40% are reported robust.
    """

    pixels = (0,)

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = offsets(x, self.pixels)[:, 0]
        f = 1.875 * t * t + 0.75 * t - 1.625
        return _stack(torch.zeros_like(f), f + noise)

    def outcomes(self, n: int) -> list[torch.Tensor]:
        return [torch.full((n,), -0.2), torch.full((n,), 0.2)]

    def corner(self, x: torch.Tensor) -> torch.Tensor:
        return moved(x, self.pixels, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        noise = self.draw(
            lambda g: 0.4 * torch.rand(n, generator=g, device=x.device) - 0.2,
            key=tuple(x.shape),
            device=x.device,
        )
        return self.logits(x, noise)


class Jackpot(Stochastic):
    """Path 2 (EOT keeps the point of highest mean loss): the mean loss peaks where most draws
    are right, after the attack has passed a point every draw gets wrong.

    Three classes. ``a`` is the mean offset of pixels 0-3, ``b`` the offset of pixel 4; each draw
    is a *jackpot* (``J = 1``) with probability 0.25. ``z = (0, z1, -2)`` with
    ``z1 = 1.1 a - 1 - 0.2 relu(b) + J [a > 0.9] 60 exp(8 (b - 1))`` (the gate ``[a > 0.9]``
    passes no gradient).

    - Truth 0: at ``a = 1, b = -1`` (:meth:`corner`) ``z1 >= 0.1 > 0 = z0`` for both kinds of
      draw (the jackpot term is never negative).
    - Clean (``a = b = 0``) ``z1 = -1``: right. APGD's first step takes ``a`` to 1 and ``b`` down
      (``relu``) or nowhere (the gate is shut), to a point every draw gets wrong. With the gate
      open, the jackpot draws' gradient then pulls ``b`` to 1, where a non-jackpot draw is right
      (``z1 = -0.1``) and a jackpot draw wrong by 60: the mean CE loss there (about 15) and the
      mean DLR loss (about 0.2) beat those of the point every draw gets wrong (about 0.8 and
      0.05). Returning the highest-mean-loss point leaves a sample robust with probability 0.75
      per stage.
    """

    a_pixels = (0, 1, 2, 3)
    b_pixel = (4,)
    pixels = (*a_pixels, *b_pixel)
    p_jackpot = 0.25

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = offsets(x, self.a_pixels).mean(dim=1)
        b = offsets(x, self.b_pixel)[:, 0]
        gate = (a.detach() > 0.9).to(x.dtype)
        z1 = 1.1 * a - 1.0 - 0.2 * torch.relu(b) + noise * gate * 60.0 * torch.exp(8 * (b - 1))
        return _stack(torch.zeros_like(z1), z1, torch.full_like(z1, -2.0))

    def outcomes(self, n: int) -> list[torch.Tensor]:
        return [torch.zeros(n), torch.ones(n)]

    def corner(self, x: torch.Tensor) -> torch.Tensor:
        return moved(moved(x, self.a_pixels, 1.0), self.b_pixel, -1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        jackpot = coin(self, x, self.p_jackpot)
        return self.logits(x, jackpot)


class FrozenSwitch(Stochastic):
    """Path 3 (frozen randomness): each draw is breakable, but only in its own direction.

    Three classes. Per sample a draw picks ``(k, s)`` uniformly: which class ``k`` in {1, 2} can
    be reached and in which direction ``s`` in {-1, +1}. ``z0 = 0``,
    ``z1 = -1 + [k = 1] 3 s t0``, ``z2 = -1.5 + [k = 2] 3 s t1`` (``t`` the offsets of pixels 0
    and 1). The noise tensor holds the code ``2 (k - 1) + (s + 1) / 2`` in {0, 1, 2, 3}.

    - Clean every draw is right and ranks 0 > 1 > 2: FAB-T's targets are class 1, then 2.
    - Truth 0 *inside* ``frozen(model)``: whichever draw is frozen, moving pixel ``k - 1`` to
      ``s`` (:meth:`corner`) makes ``z_k >= 1.5 > 0``. An attack that runs on one draw and is
      judged on another fools the judging draw only when it drew the same ``(k, s)``.
    - Unfrozen no point fools more than half the draws (it needs the right ``s``), so a
      correct evaluation of the unfrozen model gives 0.5: freezing is what makes it 0.
    """

    pixels = (0, 1)

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = offsets(x, self.pixels)
        second = (noise // 2).to(x.dtype)  # k = 2
        s = (noise % 2).to(x.dtype) * 2 - 1
        z1 = -1 + (1 - second) * 3 * s * t[:, 0]
        z2 = -1.5 + second * 3 * s * t[:, 1]
        return _stack(torch.zeros_like(z1), z1, z2)

    def outcomes(self, n: int) -> list[torch.Tensor]:
        return [torch.full((n,), code, dtype=torch.long) for code in range(4)]

    def corner(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The point that breaks draw ``noise``: pixel ``k - 1`` moved to ``s``."""
        second = noise // 2
        s = (noise % 2).to(x.dtype) * 2 - 1
        out = x.clone()
        flat = out.view(x.shape[0], -1)
        rows = torch.arange(x.shape[0])
        flat[rows, torch.as_tensor(self.pixels)[second]] += REACH * s
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        code = self.draw(
            lambda g: torch.randint(0, 4, (n,), generator=g, device=x.device),
            key=tuple(x.shape),
            device=x.device,
        )
        return self.logits(x, code)


class BoundaryNoise(nn.Module):
    """Path 4 (randomness only near the decision boundary): ``torch.randn`` where the margin is
    small, nowhere else; no :class:`Stochastic` layer.

    Two classes. With ``t`` the mean offset of pixels 0-3 and ``f = 3 t - 1``:
    ``z1 - z0 = f + [|f| < 0.9] 2 n``, ``n`` standard normal from the global generator.

    - Clean (``f = -1``) and confident: no noise, two forwards agree, the model looks
      deterministic.
    - Truth 0: at ``t = 1`` (:meth:`corner`) ``f ~ 2``: outside the noisy band, misclassified by
      every draw.
    - Treated as deterministic, PGD stops at the first step whose one forward is wrong: inside
      the band, where a fresh draw is right with probability ``Phi(-f / 2)``, about one half.
    """

    pixels = (0, 1, 2, 3)

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        f = 3 * offsets(x, self.pixels).mean(dim=1) - 1
        near = (f.detach().abs() < 0.9).to(x.dtype)
        return _stack(torch.zeros_like(f), f + near * 2.0 * noise)

    def outcomes(self, n: int) -> list[torch.Tensor]:
        # the noise is unbounded, but only counts inside the band: extremes stand for any draw
        return [torch.full((n,), -1e3), torch.full((n,), 1e3)]

    def corner(self, x: torch.Tensor) -> torch.Tensor:
        return moved(x, self.pixels, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x, torch.randn(x.shape[0], device=x.device, dtype=x.dtype))


class Outlier(nn.Module):
    """Path 5 (one outlier row hides a batch's noise): uniform noise from ``torch.rand`` on every
    forward; no :class:`Stochastic` layer; logits of 1e8 on a flagged image.

    Two classes. With ``t`` the mean offset of pixels 0-3 and ``u`` uniform in [-1, 1] per
    forward: ``z1 - z0 = 3 t - 1 + 0.9 u``; an image whose :data:`FLAG_PIXEL` exceeds 0.5 gets
    ``z1 - z0 = 1e8`` instead (no noise). Use :func:`outlier_images`: one flagged row, every
    other image with the flag pixel at 0 (no perturbation within ``EPS`` reaches 0.5).

    - Truth 0: the flagged image is misclassified clean, for every draw; every other sample at
      ``t = 1`` (:meth:`corner`) has ``z1 - z0 >= 2 - 0.9 > 0``.
    - Clean the others are right for every draw (``-1 + 0.9 < 0``), yet two forwards differ by
      up to 1.8: randomized, unless the detector's tolerance is scaled by the batch's largest
      logit (1e8 here). Treated as deterministic, PGD stops at the first step one draw gets
      wrong, a point a fresh draw often gets right.
    """

    pixels = (0, 1, 2, 3)

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        f = 3 * offsets(x, self.pixels).mean(dim=1) - 1 + 0.9 * noise
        flagged = x.flatten(1)[:, FLAG_PIXEL] > 0.5
        f = torch.where(flagged, torch.full_like(f, 1e8), f)
        return _stack(torch.zeros_like(f), f)

    def outcomes(self, n: int) -> list[torch.Tensor]:
        return [torch.full((n,), -1.0), torch.full((n,), 1.0)]

    def corner(self, x: torch.Tensor) -> torch.Tensor:
        return moved(x, self.pixels, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = 2 * torch.rand(x.shape[0], device=x.device, dtype=x.dtype) - 1
        return self.logits(x, u)


def outlier_images(n: int, seed: int) -> torch.Tensor:
    """Images for :class:`Outlier`: row 0 flagged (flag pixel 1), the others' flag pixel 0."""
    x = toy_images(n, seed, Outlier.pixels)
    x.view(n, -1)[:, FLAG_PIXEL] = 0.0
    x.view(n, -1)[0, FLAG_PIXEL] = 1.0
    return x


class NestedTrap(Stochastic):
    """Path 7 (AutoAttack-rand nested in a battery): APGD-CE leaves points a draw gets wrong by
    chance, APGD-DLR finds a point every draw gets wrong.

    Three classes. With ``b`` the mean offset of pixels 0-11 and a *coin* ``c`` per draw, 1 with
    probability 0.3: ``z = (-2000 c, -1000 (1 - c), 600 (b - 0.8))``.

    - A coin draw is wrong everywhere (``z1 = 0 > -2000``); a plain draw is wrong exactly where
      ``z2 > 0``, i.e. ``b > 0.8``.
    - Truth 0: at ``b = 1`` (:meth:`corner`) ``z2 = 120`` beats both other logits for both
      kinds of draw.
    - APGD-CE sees no gradient: below ``b ~ 0.62`` the softmax of class 2 underflows to exactly
      0 for both kinds of draw (the start's ``b`` is an average of 12 offsets, about
      ``+-0.17``), so it stays where it started, a point a fresh draw gets wrong only with
      probability 0.3. APGD-DLR's ratio ``z2 / 1000`` on plain draws climbs to ``b = 1``.
      AutoAttack judges the first point once; re-judging it on a fresh draw finds it right with
      probability 0.7.
    """

    pixels = tuple(range(12))
    p_coin = 0.3

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        b = offsets(x, self.pixels).mean(dim=1)
        return _stack(-2000.0 * noise, -1000.0 * (1 - noise), 600.0 * (b - 0.8))

    def outcomes(self, n: int) -> list[torch.Tensor]:
        return [torch.zeros(n), torch.ones(n)]

    def corner(self, x: torch.Tensor) -> torch.Tensor:
        return moved(x, self.pixels, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = coin(self, x, self.p_coin)
        return self.logits(x, heads)


class CoinRate(Stochastic):
    """Path 8 (noise alone lowers the number): every draw is right with a fixed probability that
    no perturbation within ``EPS`` can change.

    Three classes. Pixel 0 falls into one of four bins of width 0.25, with rates
    :attr:`RATES` = (0.7, 0.8, 0.9, 1.0); a draw predicts class 0 with that probability and
    class 1 otherwise (logits ``5 * one_hot``, a zero gradient). :func:`coin_images` put
    pixel 0 at a bin's centre, 0.125 from its edges, farther than ``EPS``.

    - No attack power: every point of a sample's ball is right with probability
      ``rate(x)``, so the truth is the expected accuracy ``mean(rate(x))``, 0.85 for
      :func:`coin_images` with ``n`` divisible by 4 (closed form, :meth:`rate`).
    - Judging a sample on ``k`` independent fresh draws and counting it robust only when all are
      right gives ``mean(rate^k)`` instead (0.646 for ``k = 3``).
    """

    RATES = (0.7, 0.8, 0.9, 1.0)

    def rate(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample, the probability that a draw classifies ``x`` correctly."""
        bins = (x.flatten(1)[:, 0] * len(self.RATES)).long().clamp(0, len(self.RATES) - 1)
        return torch.tensor(self.RATES, dtype=x.dtype, device=x.device)[bins]

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        right = noise < self.rate(x)
        cls = torch.where(right, 0, 1)
        onehot = nn.functional.one_hot(cls, 3).to(x.dtype)
        return 5.0 * onehot + 0 * x.flatten(1)[:, :1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        u = self.draw(
            lambda g: torch.rand(n, generator=g, device=x.device, dtype=x.dtype),
            key=tuple(x.shape),
            device=x.device,
        )
        return self.logits(x, u)


def coin_images(n: int, seed: int) -> torch.Tensor:
    """Images for :class:`CoinRate`: pixel 0 cycles through the four bin centres."""
    x = toy_images(n, seed, ())
    bins = len(CoinRate.RATES)
    x.view(n, -1)[:, 0] = (torch.arange(n) % bins + 0.5) / bins
    return x


class SquareTrap(Stochastic):
    """The Square-EOT suspicion: a rare draw that makes a point look much better than it is.

    Two classes. With ``t`` the mean offset of pixels 0-11 and an *outlier* ``o`` per draw, 1
    with probability 0.02: ``z1 - z0 = 3 t - 1 + 20 o``. Square's margin ``z0 - z1`` over
    ``eot`` draws is lowered by ``20 / eot`` for each outlier among them.

    - Truth 0: at ``t = 1`` (:meth:`corner`) ``z1 - z0 >= 2 > 0`` for both kinds of draw.
    - A plain draw is wrong wherever ``t > 1/3``. Square (one-pixel windows, ``p_init`` 0.1)
      improves ``t`` by ``1/6`` per pixel it flips to ``+EPS``. Comparing each candidate's fresh
      margin with the margin the current point had when it was accepted ratchets: a candidate
      whose draws held an outlier is accepted and its low margin kept, and later candidates
      with real improvements cannot beat it. Comparing with a fresh estimate of the current
      point drives ``t`` to about 0.85 instead.
    """

    pixels = tuple(range(12))
    p_outlier = 0.02

    def logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        f = 3 * offsets(x, self.pixels).mean(dim=1) - 1 + 20.0 * noise
        return _stack(torch.zeros_like(f), f)

    def outcomes(self, n: int) -> list[torch.Tensor]:
        return [torch.zeros(n), torch.ones(n)]

    def corner(self, x: torch.Tensor) -> torch.Tensor:
        return moved(x, self.pixels, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outlier = coin(self, x, self.p_outlier)
        return self.logits(x, outlier)

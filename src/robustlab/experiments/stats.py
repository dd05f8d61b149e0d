"""Statistics of a study, computed from per-image records.

The unit is the test image. Two models compared on the same images give one difference per
image (:func:`paired`): its mean, standard error over images and 95% interval; when only each side's
mean and spread over the images were kept, :func:`unpaired` compares them as if independent.
Every interval uses one quantile, :data:`Z95` (or a corrected one). Seeds are averaged
per image first (:func:`seed_average`), so an image seen by three seeds counts once, never three
times as if the seeds were independent images; the spread across seeds is reported beside the
mean (:func:`mean_std`). The per-sample worst case of a model is the AND over every attack it
met (:func:`worst_case`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from ..core.errors import InputError
from ..evaluate import mean_std, worst_case

__all__ = ["Z95", "Paired", "bonferroni_z", "mean_std", "multiple_claims_note", "paired", "seed_average",
           "unpaired", "worst_case"]

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...: the two-sided 95% normal quantile


@dataclass(frozen=True)
class Paired:
    """A paired comparison of ``a`` and ``b`` on the same images.

    Attributes:
        a: the mean outcome of the first.
        b: the mean outcome of the second.
        diff: the mean per-image difference ``a - b`` (equal to ``a - b`` of the means).
        se: its standard error over images (sample standard deviation / sqrt(n)).
        n: images.
        z: the normal quantile of the interval (:data:`Z95`, or a corrected one).
    """

    a: float
    b: float
    diff: float
    se: float
    n: int
    z: float = Z95

    @property
    def low(self) -> float:
        """Lower end of the interval ``diff - z se``."""
        return self.diff - self.z * self.se

    @property
    def high(self) -> float:
        """Upper end of the interval ``diff + z se``."""
        return self.diff + self.z * self.se

    @property
    def outcome(self) -> str:
        """``"higher"`` or ``"lower"`` when the interval excludes 0, else ``"no significant difference"``."""
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "no significant difference"

    def text(self, scale: float = 100.0, sign: float = 1.0) -> str:
        """``+1.23 pp, s.e. 0.45, 95% CI [+0.35, +2.11]`` (``sign=-1`` states the difference of errors)."""
        lo, hi = sorted((sign * self.low, sign * self.high))
        return (f"{scale * sign * self.diff:+.2f} pp, s.e. {scale * self.se:.2f}, 95% CI "
                f"[{scale * lo:+.2f}, {scale * hi:+.2f}]")


def paired(a: Sequence[float], b: Sequence[float], z: float = Z95) -> Paired:
    """Paired comparison of per-image outcomes ``a`` and ``b`` (each already averaged over seeds).

    Raises:
        InputError: when the two lists differ in length or are empty.
    """
    if len(a) != len(b) or not a:
        raise InputError(f"paired comparison needs two equal, non-empty lists, got {len(a)} and {len(b)}")
    n = len(a)
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / n
    var = sum((v - mean) ** 2 for v in d) / (n - 1) if n > 1 else 0.0
    return Paired(sum(a) / n, sum(b) / n, mean, math.sqrt(var / n), n, z)


def unpaired(a: float, a_std: float, b: float, b_std: float, n: int, z: float = Z95) -> Paired:
    """Compare two means over ``n`` images from their per-image spreads alone, as if independent:
    standard error ``sqrt((a_std^2 + b_std^2) / n)``. On the same images this is conservative
    when the two sides move together (a paired interval, from per-image values, is narrower).

    Raises:
        InputError: when ``n`` is below 1.
    """
    if n < 1:
        raise InputError(f"an unpaired comparison needs at least one image, got {n}")
    return Paired(a, b, a - b, math.sqrt((a_std ** 2 + b_std ** 2) / n), n, z)


def seed_average(per_seed: Sequence[Sequence[float]]) -> list[float]:
    """Per image, the mean outcome over seeds (each seed one list over the same images)."""
    if not per_seed or len({len(v) for v in per_seed}) != 1:
        raise InputError(f"seed averaging needs one equal-length list per seed, got lengths "
                         f"{[len(v) for v in per_seed]}")
    k = len(per_seed)
    return [sum(v[i] for v in per_seed) / k for i in range(len(per_seed[0]))]


def bonferroni_z(tests: int, level: float = 0.95) -> float:
    """The two-sided normal quantile that keeps the family-wise level over ``tests`` comparisons."""
    return NormalDist().inv_cdf(1 - (1 - level) / (2 * max(1, tests)))


def multiple_claims_note(outcomes: Sequence[tuple[str, Paired]]) -> str:
    """A note on testing many claims at once: how many differences chance alone would show at
    95% each, and which of the significant ones survive a Bonferroni correction. ``outcomes``
    pairs each tested claim's name with its comparison; empty text for fewer than two."""
    k = len(outcomes)
    if k < 2:
        return ""
    z = bonferroni_z(k)
    significant = [(name, p) for name, p in outcomes if p.outcome != "no significant difference"]
    # each named with the direction found, so a claim that failed significantly does not read as held
    keep = [f"{name} ({p.outcome})" for name, p in significant if abs(p.diff) > z * p.se]
    lose = [f"{name} ({p.outcome})" for name, p in significant if abs(p.diff) <= z * p.se]
    text = (f"{k} comparisons were tested at 95% each: with no true difference anywhere, about "
            f"{0.05 * k:.1f} of them would show one by chance. With a Bonferroni correction "
            f"(interval of ±{z:.2f} s.e., 95% over the {k} together), ")
    if not significant:
        return text + "the question does not arise: none was significant."
    if not lose:
        return text + "every significant difference still is."
    return (text + f"{len(keep)} of the {len(significant)} significant differences survive"
            + (f": {'; '.join(keep)}" if keep else "") + f". Not significant after it: {'; '.join(lose)}.")

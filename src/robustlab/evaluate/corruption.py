"""Common-corruption evaluation: accuracy on every corruption x severity and the mean error.

The stochastic-downsampling paper reports "mean Corruption Error (mCE), the mean error by the
method on all the corrupted samples" (Sec. 4.1, "Metrics"): the plain mean error over the 15
corruptions x 5 severities, *not* Hendrycks & Dietterich's AlexNet-normalized mCE. That is what
:attr:`CorruptionResult.mce` is; :meth:`CorruptionResult.relative_mce` gives the normalized form
against any baseline result.

The corrupted images are generated on the fly from the clean ones with
:func:`robustlab.data.corruptions.corrupt`, each (corruption, severity) from its own seed, so
every model of a study sees exactly the same corrupted set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.errors import InputError
from ..core.randomness import seed_stochastic
from ..data.corruptions import NAMES, SEVERITIES, corrupt, corruption_seed
from .runner import _model_device, ensemble_predict
from .samples import Samples

__all__ = ["CorruptionResult", "evaluate_corruptions"]


@dataclass(frozen=True)
class CorruptionResult:
    """Accuracy of one model on a ``-C`` set.

    Attributes:
        accuracy: ``{corruption: [acc at severity 1, ..., acc at severity 5]}``, fractions.
        clean_acc: accuracy on the same clean images.
        n: images per corruption and severity.
        seconds: wall time.
        config: seed, severities, ensemble draws.
        per_image: for each clean image, the fraction of its corrupted versions (every
            corruption and severity) classified correctly; empty when not recorded. Lets two
            models be compared image by image (paired tests).
    """

    accuracy: dict[str, list[float]]
    clean_acc: float
    n: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    per_image: list[float] = field(default_factory=list)

    @property
    def mce(self) -> float:
        """Mean error (fraction) over every corruption and severity (the paper's mCE)."""
        accs = [a for v in self.accuracy.values() for a in v]
        return 1.0 - sum(accs) / len(accs)

    def errors(self) -> dict[str, float]:
        """Mean error (fraction) of each corruption over its severities."""
        return {k: 1.0 - sum(v) / len(v) for k, v in self.accuracy.items()}

    def relative_mce(self, baseline: CorruptionResult) -> float:
        """Hendrycks & Dietterich's normalized mCE: the mean over corruptions of this model's
        summed error over severities divided by ``baseline``'s (1.0 = as good as the baseline)."""
        ratios = []
        for k, v in self.accuracy.items():
            if k not in baseline.accuracy:
                raise InputError(f"baseline has no result for corruption {k!r}")
            b = sum(1 - a for a in baseline.accuracy[k])
            ratios.append(sum(1 - a for a in v) / max(b, 1e-12))
        return sum(ratios) / len(ratios)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"accuracy": self.accuracy, "clean_acc": self.clean_acc, "n": self.n,
                "seconds": self.seconds, "config": self.config, "mce": self.mce,
                "per_image": [round(v, 6) for v in self.per_image]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CorruptionResult:
        """Inverse of :meth:`to_dict`."""
        return cls({str(k): [float(a) for a in v] for k, v in d["accuracy"].items()},
                   float(d["clean_acc"]), int(d["n"]), float(d["seconds"]), dict(d.get("config", {})),
                   [float(v) for v in d.get("per_image", [])])


@torch.no_grad()
def evaluate_corruptions(
    model: nn.Module,
    data: Any,
    *,
    n: int | None = None,
    corruptions: Sequence[str] = NAMES,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 500,
    seed: int = 0,
    ensemble: int = 1,
    device: torch.device | str | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> CorruptionResult:
    """Accuracy of ``model`` on ``n`` images of ``data`` under every corruption.

    Args:
        model: the classifier (its train/eval mode is left as it is).
        data: a dataset of ``(image, label)`` or an ``(x, y)`` pair of tensors, images in [0, 1].
        n: how many clean images (default all), chosen by the library's one rule for "n
            samples" (:func:`robustlab.data.select_subset` with ``seed``, as ``run_battery``);
            each is corrupted once per corruption and severity.
        corruptions: names from :data:`robustlab.data.corruptions.CORRUPTIONS`.
        severities: severities 1-5.
        batch_size: images per forward pass.
        seed: the corruption seed (same seed and ``batch_size``, same ``-C`` images) and the
            root of the model's own randomness, for randomized models.
        ensemble: predict by the mean softmax over this many draws (randomized models).
        device: where to run; default the model's device.
        progress: called as ``progress(corruption, severity)`` after each one.
    """
    samples = Samples(data, n, seed)
    total = samples.n
    if device is None:
        device = _model_device(model)
    seed_stochastic(model, seed)
    t0 = time.perf_counter()
    batches = [samples.batch(s, min(s + batch_size, total)) for s in range(0, total, batch_size)]

    hits = torch.zeros(total, dtype=torch.long)  # per image: corrupted versions classified right

    def acc(make: Callable[[torch.Tensor, int], torch.Tensor], count: bool = True) -> float:
        correct, start = 0, 0
        for i, (x, y) in enumerate(batches):
            xc = make(x, i).to(device)
            ok = (ensemble_predict(model, xc, ensemble) == y.to(device)).cpu()
            correct += int(ok.sum())
            if count:
                hits[start : start + ok.numel()] += ok.long()
            start += ok.numel()
        return correct / total

    clean = acc(lambda x, i: x, count=False)
    table: dict[str, list[float]] = {}
    for name in corruptions:
        row = []
        for sev in severities:
            g = torch.Generator().manual_seed(corruption_seed(name, sev, seed))

            # one generator per (corruption, severity), consumed batch after batch in order
            def make(x: torch.Tensor, i: int, name: str = name, sev: int = sev,
                     g: torch.Generator = g) -> torch.Tensor:
                return corrupt(x, name, sev, g)

            row.append(acc(make))
            if progress is not None:
                progress(name, sev)
        table[name] = row
    versions = len(table) * len(severities)
    return CorruptionResult(table, clean, total, time.perf_counter() - t0,
                            {"seed": seed, "severities": list(severities), "ensemble": ensemble},
                            (hits.double() / max(versions, 1)).tolist())

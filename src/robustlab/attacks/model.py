"""The model as attacks see it: outputs turned into logits, evaluations counted, randomness known.

Attacks call a model only through :class:`ModelFn`, so every pass is counted (search passes
apart from the verdict's) and every attack agrees on what the model returns
(:func:`logits_of`) and on whether it is randomized (:func:`model_fn`: the
:class:`core.randomness.Stochastic` protocol, frozen draws, or two forwards that differ, row by
row, on the clean inputs and on an attack's points).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..core.errors import InputError
from ..core.randomness import is_frozen, is_stochastic, rows_differ, stochastic_layers

__all__ = [
    "DETECTION_BATCH",
    "RANDOMNESS_KINDS",
    "LateRandomness",
    "ModelFn",
    "logits_of",
    "model_fn",
]


def logits_of(output: Any) -> torch.Tensor:
    """Turn whatever a model returns into a ``(N, K)`` logit tensor.

    Rules (documented so that every attack and evaluator agrees):

    - a tensor of shape ``(N, K)`` with ``K >= 2`` is returned as is;
    - a tuple or list gives its first element (models that also return features or aux heads);
    - a mapping gives its ``"logits"`` entry;
    - a single logit per sample, shape ``(N,)`` or ``(N, 1)``, is a binary classifier and becomes
      the two-class logits ``[0, z]`` (class 1 when ``z > 0``), so softmax equals the sigmoid.

    Raises:
        InputError: for any other output.
    """
    if isinstance(output, (tuple, list)):
        if not output:
            raise InputError("the model returned an empty tuple; expected logits first")
        output = output[0]
    elif isinstance(output, Mapping):
        if "logits" not in output:
            raise InputError(
                f"the model returned a dict without a 'logits' key (keys: {sorted(output)}); "
                "return logits under 'logits'"
            )
        output = output["logits"]
    if not isinstance(output, torch.Tensor):
        raise InputError(f"the model must return logits as a tensor, got {type(output).__name__}")
    if output.dim() == 1:
        output = output.unsqueeze(1)
    if output.dim() != 2:
        raise InputError(f"expected logits of shape (N, K), got {tuple(output.shape)}")
    if output.shape[1] == 1:
        output = torch.cat([torch.zeros_like(output), output], dim=1)
    return output


class LateRandomness(RuntimeError):
    """Raised when points an attack produced show randomness that the model's clean inputs did
    not (randomness that shows only near the decision boundary): the caller re-runs the
    evaluation under the randomized rule and says so."""


RANDOMNESS_KINDS = ("protocol", "frozen", "detected", "none")
"""How a model's randomness is known: an active :class:`core.randomness.Stochastic` layer
(``protocol``), such layers inside :func:`core.randomness.frozen` (``frozen``: one fixed
inference path, deterministic for the whole evaluation, see :class:`ModelFn`), two forwards
that differ (``detected``), or none."""

DETECTION_BATCH = 256
"""At most this many samples per chunk are forwarded twice by the randomness checks."""


class ModelFn:
    """A model seen through :func:`logits_of` that counts image evaluations.

    Attacks call the model only through this wrapper, so the counts in :class:`AttackResult` are
    complete. ``randomness`` is one of :data:`RANDOMNESS_KINDS`; ``stochastic`` is true for
    ``"protocol"`` and ``"detected"``. A ``"frozen"`` model is one fixed inference path for
    the whole evaluation, attacks and verdict alike: a frozen draw is tied to a batch shape
    (:func:`core.randomness.frozen`), so the wrapper forwards one image at a time and every
    image, in every attack and verdict, goes through the same single draw (slower: batch 1).
    Built without ``randomness``, only the protocol is consulted (use :func:`model_fn` to
    detect randomness on a batch).

    It also counts per-sample gradients that were all zero or non-finite (for
    :mod:`~robustlab.attacks.checks`) and, apart from the search, the passes of verdicts and
    checks (``verdict_passes``).
    """

    def __init__(
        self, model: nn.Module | Callable[[torch.Tensor], Any], randomness: str | None = None
    ) -> None:
        self.model = model
        self.forward_passes = 0
        self.backward_passes = 0
        self.verdict_passes = 0
        self.grad_evaluations = 0
        self.zero_grads = 0
        self.nonfinite_grads = 0
        if randomness is None:
            randomness = "none"
            if isinstance(model, nn.Module) and is_stochastic(model):
                randomness = "protocol"
            elif isinstance(model, nn.Module) and _frozen_random(model):
                randomness = "frozen"
        if randomness not in RANDOMNESS_KINDS:
            raise InputError(f"randomness must be one of {RANDOMNESS_KINDS}, got {randomness!r}")
        self.randomness = randomness
        self.stochastic = randomness in ("protocol", "detected")
        self.frozen = isinstance(model, nn.Module) and is_frozen(model)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.randomness == "frozen" and x.shape[0] > 1:  # one image a time: one draw for all
            return torch.cat([logits_of(self.model(x[i : i + 1])) for i in range(x.shape[0])])
        return logits_of(self.model(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_passes += x.shape[0]
        return self._forward(x)

    def grad(self, loss: torch.Tensor, x: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """Gradient of a scalar ``loss`` with respect to ``x`` (one backward per image of ``x``)."""
        self.backward_passes += x.shape[0]
        (g,) = torch.autograd.grad(loss, x, retain_graph=retain_graph)
        flat = g.detach().flatten(1)
        self.grad_evaluations += g.shape[0]
        finite = torch.isfinite(flat).all(dim=1)
        self.nonfinite_grads += int((~finite).sum())
        self.zero_grads += int((finite & (flat == 0).all(dim=1)).sum())
        return g

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits without building a graph (counted as a search pass)."""
        return self(x)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a verdict or a check: not counted as a search pass."""
        self.verdict_passes += x.shape[0]
        return self._forward(x)

    @torch.no_grad()
    def random_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per row of ``x``, whether two forwards differ beyond that row's own float noise
        (:func:`core.randomness.rows_differ`); verdict passes."""
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool, device=x.device)
        return torch.cat([rows_differ(self.evaluate(c), self.evaluate(c)) for c in x.split(DETECTION_BATCH)])

    def check_points(self, x: torch.Tensor) -> None:
        """On a model found deterministic, raise :class:`LateRandomness` when the points ``x``
        an attack returned show randomness: it can show only near the decision boundary, where
        the attack's points are and the clean inputs are not."""
        if self.randomness == "none" and bool(self.random_rows(x).any()):
            raise LateRandomness("the model's outputs at the attacks' points are random")


def _frozen_random(model: nn.Module) -> bool:
    return is_frozen(model) and any(m.stochastic_active for m in stochastic_layers(model))


def model_fn(
    model: nn.Module | Callable[[torch.Tensor], Any], x: torch.Tensor, randomness: str | None = None
) -> ModelFn:
    """The counting wrapper for a run on ``x``, with the model's randomness established.

    A model with an active :class:`core.randomness.Stochastic` layer is randomized by the
    protocol (``"frozen"`` when those layers are inside :func:`core.randomness.frozen`); any
    other model (plain callables included) is forwarded twice on up to
    :data:`DETECTION_BATCH` samples of ``x`` and treated as randomized when any row of the two
    outputs differs beyond that row's own float noise (the reference AutoAttack's check, made
    per row so that one row of huge logits cannot hide the noise of the others). Attacks'
    points are probed too (:meth:`ModelFn.check_points`). ``randomness`` skips the check (an
    evaluator that checked once for a whole run passes what it found).
    """
    if randomness is not None:
        return ModelFn(model, randomness)
    fm = ModelFn(model)
    if not fm.stochastic and x.shape[0]:
        probe = x[:DETECTION_BATCH]
        if bool(fm.random_rows(probe).any()):
            fm = ModelFn(model, "detected")
        fm.verdict_passes = 2 * probe.shape[0]
    return fm

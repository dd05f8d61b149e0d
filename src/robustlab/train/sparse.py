"""Training objectives of the sparse randomized defense's unsupervised mode (``sparse-randomized-encoder.txt``).

Sec. 5.1 trains the unsupervised twin in two steps: the decoder alone by regression to the input
("l2 distance-squared", 50 epochs in the paper), then the classifier on the decoder's output with
the decoder fixed. Each step is one objective here, run on a
:class:`~robustlab.defenses.SparseFrontEnd` (alone or inside a wrapper):

- ``decoder-regression``: the MSE between ``decoder(encoder(x))`` and ``x``; only the decoder
  receives gradients (the classifier takes no part, the encoder has no parameters);
- ``frozen-decoder``: cross-entropy of ``classifier(decoder(encoder(x)))`` with the autoencoder
  run without gradients, so only the classifier learns.

The nominal mode (decoder and classifier trained together on cross-entropy) is the ``standard``
objective on the front end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError
from ..defenses.sparse_model import SparseFrontEnd
from .objectives import OBJECTIVES, ObjectiveOutput

__all__ = ["DecoderRegression", "FrozenDecoder", "find_front_end"]


def find_front_end(model: nn.Module) -> SparseFrontEnd:
    """The one :class:`SparseFrontEnd` in ``model`` (``model`` itself included)."""
    found = [m for m in model.modules() if isinstance(m, SparseFrontEnd)]
    if len(found) != 1:
        raise InputError(
            f"this objective trains a sparse front end (robustlab.defenses.convert_sparse_front_end); "
            f"{type(model).__name__} holds {len(found)}"
        )
    return found[0]


@OBJECTIVES.register("decoder-regression", paper="Bakiskan et al., Sec. 5.1 (unsupervised decoder)")
@dataclass(frozen=True)
class DecoderRegression:
    """MSE between the autoencoded image and the input: trains the decoder of the unsupervised
    twin (Sec. 5.1); returns no logits (the training accuracy is not tracked)."""

    name: str = "decoder-regression"

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """``mean((decoder(encoder(x)) - x)^2)``."""
        return ObjectiveOutput(find_front_end(model).reconstruction_loss(x), None)

    def config(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"name": self.name}


@OBJECTIVES.register("frozen-decoder", paper="Bakiskan et al., Sec. 5.1 (classifier on the unsupervised decoder)")
@dataclass(frozen=True)
class FrozenDecoder:
    """Cross-entropy of the classifier on the fixed autoencoder's output (Sec. 5.1): the second
    step of the unsupervised mode; one fresh draw of the encoder per batch, as at test time."""

    name: str = "frozen-decoder"

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """``CE(classifier(autoencode(x)), y)`` with no gradient into the autoencoder."""
        front = find_front_end(model)
        with torch.no_grad():
            decoded = front.autoencode(x)
        logits = front.classifier(decoded)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits)

    def config(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"name": self.name}

"""Decoder, front end and ensemble of the sparse randomized defense (``sparse-randomized-encoder.txt``).

The defense is ``classifier(decoder(encoder(x)))`` on [0, 1] images (Fig. 1): the encoder
(:class:`~robustlab.defenses.sparse_encoder.SparseEncoder`, Sec. 2.2) turns an image into a
sparse ternary code, the decoder (:class:`SparseDecoder`, Sec. 2.3) restores the image size so
that a standard classifier can follow, and at test time :class:`Ensemble` averages the softmax
over ``E`` draws of the encoder's dropout (Sec. 2.4, App. 8.2, Eq. 8). Training uses the
triangular cyclic learning rate 0 -> 0.05 -> 0 (Sec. 5.1): the registered ``cyclic`` schedule
(:mod:`robustlab.train.schedules`) with base lr 0.05.

The encoder checks that its input is in [0, 1], so it sits *outside* any
:class:`~robustlab.models.Normalized` wrapper: the classifier may be a ``Normalized`` model (it
normalizes the decoder's [0, 1] output), the front end itself takes raw pixels.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError, check_images
from .sparse_encoder import SparseEncoder

__all__ = ["Ensemble", "FrontEndMode", "SparseDecoder", "SparseFrontEnd"]

FrontEndMode = Literal["nominal", "unsupervised"]
_MODES = ("nominal", "unsupervised")


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive int, got {value!r}")
    return value


class SparseDecoder(nn.Module):
    """The CNN decoder of Sec. 2.3: three transposed convolutions, cropped and clamped to the image.

    Maps a code ``(N, L, m, m)`` to an image ``(N, C, N_img, N_img)`` in [0, 1]. The paper says
    only "three transposed convolutional layers, each followed by ReLU activation function,
    clipped at the end to produce output with dimension N x N x 3"; the kernel sizes and widths
    are ours:

    1. ``ConvTranspose2d(L, hidden[0], kernel=n, stride=S)``: the transpose of the encoder's
       patch projection (``n x n`` patches, stride ``S``), so each code position paints back its
       own patch and overlapping patches add up; a ``m x m`` code becomes ``(m - 1) S + n`` per
       side: 13x13 -> 28x28 for Fashion-MNIST with
       :data:`~robustlab.defenses.dictionary.FASHION_MNIST_DICTIONARY` (4x4, stride 2, L = 160),
       15x15 -> 32x32 for the paper's CIFAR-10 setting; then ReLU.
    2. ``ConvTranspose2d(hidden[0], hidden[1], 3, padding=1)`` (size kept), ReLU.
    3. ``ConvTranspose2d(hidden[1], C, 3, padding=1)`` (size kept): C = 1 for Fashion-MNIST
       instead of the paper's 3 RGB channels.

    The output is cropped to the top-left ``image_size x image_size`` (a no-op when
    ``(m - 1) S + n`` already equals it, as in both settings above) and clamped to [0, 1]; the
    paper's ReLU after the third layer is subsumed by the clamp (``clamp(relu(y), 0, 1) ==
    clamp(y, 0, 1)``).

    Args:
        atoms: ``L``, the code's channels (the dictionary size).
        out_channels: ``C``, the image channels.
        image_size: side of the square output image.
        patch_size: ``n``, the encoder's patch side (kernel of the first layer).
        stride: ``S``, the encoder's patch stride (stride of the first layer).
        hidden: channel widths of the two hidden layers.
    """

    def __init__(
        self,
        atoms: int,
        out_channels: int,
        image_size: int,
        *,
        patch_size: int = 4,
        stride: int = 2,
        hidden: tuple[int, int] = (64, 32),
    ) -> None:
        super().__init__()
        self.atoms = _positive_int(atoms, "atoms")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.image_size = _positive_int(image_size, "image_size")
        self.patch_size = _positive_int(patch_size, "patch_size")
        self.stride = _positive_int(stride, "stride")
        if not isinstance(hidden, (tuple, list)) or len(hidden) != 2:
            raise InputError(f"hidden must be two channel widths, got {hidden!r}")
        first, second = (_positive_int(h, "hidden width") for h in hidden)
        self.hidden = (first, second)
        self.up = nn.ConvTranspose2d(self.atoms, first, kernel_size=self.patch_size, stride=self.stride)
        self.mid = nn.ConvTranspose2d(first, second, kernel_size=3, padding=1)
        self.out = nn.ConvTranspose2d(second, self.out_channels, kernel_size=3, padding=1)

    def extra_repr(self) -> str:
        return f"atoms={self.atoms}, out_channels={self.out_channels}, image_size={self.image_size}"

    def output_side(self, code_side: int) -> int:
        """Side of the decoded map before the crop: ``(m - 1) S + n``."""
        return (code_side - 1) * self.stride + self.patch_size

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        """Decode ``(N, L, m, m)`` into ``(N, C, image_size, image_size)`` images in [0, 1]."""
        if code.dim() != 4 or code.shape[1] != self.atoms:
            raise InputError(f"SparseDecoder expects a (N, {self.atoms}, m, m) code, got {tuple(code.shape)}")
        side_h, side_w = self.output_side(code.shape[2]), self.output_side(code.shape[3])
        if side_h < self.image_size or side_w < self.image_size:
            raise InputError(
                f"a {code.shape[2]}x{code.shape[3]} code decodes to {side_h}x{side_w}, smaller than the "
                f"{self.image_size}x{self.image_size} image; the code needs at least "
                f"{math.ceil((self.image_size - self.patch_size) / self.stride) + 1} positions per side"
            )
        y = F.relu(self.up(code))
        y = F.relu(self.mid(y))
        y = self.out(y)[..., : self.image_size, : self.image_size]
        return y.clamp(0.0, 1.0)


class SparseFrontEnd(nn.Module):
    """``classifier(decoder(encoder(x)))`` on [0, 1] images: the whole defense (Fig. 1).

    Random through the encoder's dropout (``is_stochastic`` is true unless ``dropout_p == 0``
    or inside ``frozen``) and non-differentiable through its quantizer (attack it inside
    ``bpda(front_end, ...)``); both protocols see the encoder as a submodule.

    The two training modes of Sec. 2 and Sec. 5.1 (the trainer reads :attr:`mode`):

    - ``"nominal"``: decoder and classifier trained together, supervised (cross-entropy on
      :meth:`forward`); the decoder does not try to reconstruct the input.
    - ``"unsupervised"``: the decoder is first trained alone by MSE regression to the input
      (:meth:`reconstruction_loss`, 50 epochs in the paper), then frozen while the classifier
      is trained on its output. This twin is also the source of the PW-T transfer attack (Sec. 4).

    The encoder's dictionary is a buffer and is never trained in either mode.

    Args:
        encoder: the sparse randomized encoder.
        decoder: maps the code back to images in [0, 1].
        classifier: takes [0, 1] images (e.g. a :class:`~robustlab.models.Normalized` model).
        mode: ``"nominal"`` or ``"unsupervised"``.
    """

    def __init__(
        self, encoder: SparseEncoder, decoder: nn.Module, classifier: nn.Module, mode: FrontEndMode = "nominal"
    ) -> None:
        super().__init__()
        if not isinstance(encoder, SparseEncoder):
            raise InputError(f"encoder must be a SparseEncoder, got {type(encoder).__name__}")
        if mode not in _MODES:
            raise InputError(f"unknown training mode {mode!r}; use one of {', '.join(_MODES)}")
        if isinstance(decoder, SparseDecoder) and decoder.atoms != encoder.num_atoms:
            raise InputError(
                f"the decoder takes {decoder.atoms} code channels but the encoder has {encoder.num_atoms} atoms"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier
        self.mode: FrontEndMode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def autoencode(self, x: torch.Tensor) -> torch.Tensor:
        """``decoder(encoder(x))``: what the classifier sees (one draw of the encoder)."""
        return self.decoder(self.encoder(x))

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error between ``autoencode(x)`` and ``x``: the unsupervised decoder's
        regression loss (Sec. 5.1, "l2 distance-squared")."""
        check_images(x.detach(), channels=self.encoder.in_channels)
        return F.mse_loss(self.autoencode(x), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of [0, 1] images (one draw of the encoder's randomness)."""
        return self.classifier(self.autoencode(x))


class Ensemble(nn.Module):
    """Eq. 8: the mean softmax over ``draws`` independent draws of ``model``'s randomness.

    The forward returns ``log h(x)`` with ``h_i(x) = 1/E sum_e softmax(g(f_e(x)))_i``, computed
    stably as ``logsumexp_e(log_softmax(g(f_e(x)))) - log E``. It returns the *log* of the mean
    probability, not the probability, because every attack, loss and verdict of the library
    takes logits: ``softmax`` of the output gives back ``h`` exactly, so cross-entropy on it is
    the ensemble's negative log-likelihood and its argmax is the ensemble's prediction.

    Draws run one after another, so the ensemble consumes each random layer's generator exactly
    as ``draws`` single forwards would. The wrapper owns no randomness: ``is_stochastic``,
    ``frozen``, ``resample`` and ``bpda`` reach the model's layers through it, so attacks apply
    EOT on top of the ensemble (as the paper attacks its E = 10 model). Inside ``frozen`` every
    draw reuses one path and the ensemble equals a single forward. It always runs ``draws``
    forwards: randomness outside the Stochastic protocol is invisible to ``is_stochastic``.

    Args:
        model: a (random) classifier returning logits.
        draws: ``E``, the number of draws (the paper: 10).
    """

    def __init__(self, model: nn.Module, draws: int) -> None:
        super().__init__()
        self.model = model
        self.draws = _positive_int(draws, "draws")

    def extra_repr(self) -> str:
        return f"draws={self.draws}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log mean softmax over the draws, ``(N, classes)``."""
        log_probs = torch.stack([F.log_softmax(self.model(x), dim=-1) for _ in range(self.draws)])
        return torch.logsumexp(log_probs, dim=0) - math.log(self.draws)

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

from ..core import InputError, check_images, check_positive_int
from ..core.bpda import BPDABlock
from . import CONVERSIONS, record_conversion
from .sparse_encoder import SparseEncoder

__all__ = ["Ensemble", "FrontEndMode", "SparseAutoencoder", "SparseDecoder", "SparseFrontEnd", "convert_ensemble", "convert_sparse_front_end"]

FrontEndMode = Literal["nominal", "unsupervised"]
_MODES = ("nominal", "unsupervised")


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

    The last layer's bias starts at 0.5, the middle of the clamp's range. The code is very
    sparse (about 1% of its entries survive top-T, dropout and the quantizer's dead zone), so at
    initialization the output is nearly the last bias plus what the hidden biases carry; with
    PyTorch's default uniform bias init that lands the whole image below 0 for some seeds, where
    the clamp passes no gradient and training never starts (seen on Fashion-MNIST: 2 of 4 seeds
    stayed at chance, fewer than 2% of output pixels inside (0, 1) at initialization).

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
        self.atoms = check_positive_int(atoms, "atoms")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.image_size = check_positive_int(image_size, "image_size")
        self.patch_size = check_positive_int(patch_size, "patch_size")
        self.stride = check_positive_int(stride, "stride")
        if not isinstance(hidden, (tuple, list)) or len(hidden) != 2:
            raise InputError(f"hidden must be two channel widths, got {hidden!r}")
        first, second = (check_positive_int(h, "hidden width") for h in hidden)
        self.hidden = (first, second)
        self.up = nn.ConvTranspose2d(self.atoms, first, kernel_size=self.patch_size, stride=self.stride)
        self.mid = nn.ConvTranspose2d(first, second, kernel_size=3, padding=1)
        self.out = nn.ConvTranspose2d(second, self.out_channels, kernel_size=3, padding=1)
        assert self.out.bias is not None
        nn.init.constant_(self.out.bias, 0.5)  # inside the clamp's range: gradients flow from the start

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


class SparseAutoencoder(BPDABlock):
    """``decoder(encoder(x))`` as a BPDA block: exact forward always; inside
    ``bpda(model, "bypass")`` the backward treats the whole autoencoder as the identity, the
    W-AIGA attack mode of Sec. 4 ("the entire autoencoder is treated as having identity
    gradient", App. Fig. 8). Inside ``"identity"``/``"smooth"`` it is differentiated like any
    module, reaching the quantizer's surrogate (W-NFGA, App. Fig. 7)."""

    def __init__(self, encoder: SparseEncoder, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """``decoder(encoder(x))``."""
        out: torch.Tensor = self.decoder(self.encoder(x))
        return out


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
        self.autoencoder = SparseAutoencoder(encoder, decoder)
        self.classifier = classifier
        self.mode: FrontEndMode = mode

    @property
    def encoder(self) -> SparseEncoder:
        """The sparse randomized encoder."""
        return self.autoencoder.encoder

    @property
    def decoder(self) -> nn.Module:
        """The decoder."""
        return self.autoencoder.decoder

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"

    def autoencode(self, x: torch.Tensor) -> torch.Tensor:
        """``decoder(encoder(x))``: what the classifier sees (one draw of the encoder); inside
        ``bpda(model, "bypass")`` its backward is the identity (W-AIGA)."""
        out: torch.Tensor = self.autoencoder(x)
        return out

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
        self.draws = check_positive_int(draws, "draws")

    def extra_repr(self) -> str:
        return f"draws={self.draws}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log mean softmax over the draws, ``(N, classes)``."""
        log_probs = torch.stack([F.log_softmax(self.model(x), dim=-1) for _ in range(self.draws)])
        return torch.logsumexp(log_probs, dim=0) - math.log(self.draws)


_MAX_ATOMS = 16_384
_MAX_SIDE = 4_096
_MAX_WIDTH = 8_192


def _bounded_int(value: object, what: str, high: int) -> int:
    n = check_positive_int(value, what)
    if n > high:
        raise InputError(f"{what} must be at most {high}, got {n}")
    return n


def convert_sparse_front_end(
    classifier: nn.Module,
    dictionary: torch.Tensor,
    *,
    eps: float,
    image_size: int,
    stride: int = 2,
    top_t: int = 50,
    dropout_p: float = 0.95,
    beta: float = 3.0,
    keep_sign: bool = True,
    sigma: float = 0.25,
    quantize: bool = True,
    mode: FrontEndMode = "nominal",
    hidden: tuple[int, int] | list[int] = (64, 32),
) -> SparseFrontEnd:
    """Put the sparse randomized encoder and a fresh decoder in front of ``classifier`` (Fig. 1).

    The surgery of the sparse-randomized-encoder paper: ``classifier(decoder(encoder(x)))``
    with the encoder built on ``dictionary`` (Sec. 2.2) and a :class:`SparseDecoder`
    (Sec. 2.3) sized to the dictionary's patches; decoder and classifier are then trained in
    ``mode`` (Sec. 5.1). Defaults are the paper's CIFAR-10 encoder (T = 50, p = 0.95,
    beta = 3, sigma = 0.25); the dictionary and ``eps`` (the budget the quantizer's dead zone is
    designed for, Eq. 3) come from the user.

    The result carries the classifier's recipe plus ``{"name": "sparse-front-end", "options":
    {...}}`` (the dictionary's shape, not its values: the atoms are a buffer saved with the
    weights), so :func:`robustlab.load` rebuilds it.

    Args:
        classifier: a classifier of [0, 1] images (copied, not changed).
        dictionary: atoms ``(L, C, n, n)`` (:func:`~robustlab.defenses.dictionary.learn_dictionary`).
        eps, stride, top_t, dropout_p, beta, keep_sign, sigma, quantize: see :class:`SparseEncoder`.
        image_size: side of the (square) images; the decoder crops to it.
        mode: ``"nominal"`` or ``"unsupervised"`` (see :class:`SparseFrontEnd`).
        hidden: the decoder's two hidden widths.
    """
    import copy

    if not isinstance(dictionary, torch.Tensor) or dictionary.dim() != 4:
        raise InputError("dictionary must be an (L, C, n, n) tensor of atoms (robustlab.defenses.learn_dictionary)")
    atoms, channels, patch = (int(v) for v in dictionary.shape[:3])
    widths = tuple(hidden)
    encoder = SparseEncoder(dictionary, stride, top_t, dropout_p, eps, beta, keep_sign, sigma=sigma, quantize=quantize)
    decoder = SparseDecoder(atoms, channels, _bounded_int(image_size, "image_size", _MAX_SIDE), patch_size=patch,
                            stride=stride, hidden=widths)  # type: ignore[arg-type]
    out = SparseFrontEnd(encoder, decoder, copy.deepcopy(classifier), mode=mode)
    recipe = getattr(classifier, "robustlab_recipe", None)
    if isinstance(recipe, dict):
        setattr(out, "robustlab_recipe", copy.deepcopy(recipe))  # noqa: B010  (plain attribute)
    options = {"atoms": atoms, "channels": channels, "patch_size": patch, "image_size": int(image_size),
               "stride": stride, "top_t": top_t, "dropout_p": float(dropout_p), "eps": float(eps), "beta": float(beta),
               "keep_sign": bool(keep_sign), "sigma": float(sigma), "quantize": bool(quantize), "mode": mode,
               "hidden": [int(w) for w in widths]}
    record_conversion(out, "sparse-front-end", options)
    return out


def _replay_front_end(
    model: nn.Module, *, atoms: int, channels: int, patch_size: int, image_size: int, stride: int, top_t: int,
    dropout_p: float, eps: float, beta: float, keep_sign: bool, sigma: float, quantize: bool, mode: FrontEndMode,
    hidden: list[int],
) -> nn.Module:
    """The checkpoint-replay form of :func:`convert_sparse_front_end`: placeholder atoms of the
    recorded shape (the checkpoint's weights fill them); every size is bounded, as a
    checkpoint header is untrusted input."""
    shape = (_bounded_int(atoms, "atoms", _MAX_ATOMS), _bounded_int(channels, "channels", 64),
             _bounded_int(patch_size, "patch_size", 256), 0)
    if not isinstance(hidden, list) or len(hidden) != 2:
        raise InputError(f"hidden must be two widths, got {hidden!r}")
    widths = (_bounded_int(hidden[0], "hidden width", _MAX_WIDTH), _bounded_int(hidden[1], "hidden width", _MAX_WIDTH))
    placeholder = torch.zeros(shape[0], shape[1], shape[2], shape[2])
    recipe = getattr(model, "robustlab_recipe", None)
    out = convert_sparse_front_end(model, placeholder, eps=eps, image_size=image_size, stride=stride, top_t=top_t,
                                   dropout_p=dropout_p, beta=beta, keep_sign=keep_sign, sigma=sigma,
                                   quantize=quantize, mode=mode, hidden=widths)
    if recipe is not None:
        setattr(out, "robustlab_recipe", recipe)  # noqa: B010  (plain attribute)
    return out


CONVERSIONS.register("sparse-front-end", _replay_front_end, paper="sparse-randomized-encoder, Sec. 2, Fig. 1",
                     convert=convert_sparse_front_end)


_MAX_DRAWS = 1000


def convert_ensemble(model: nn.Module, draws: int = 10) -> Ensemble:
    """Wrap ``model`` in :class:`Ensemble` (the mean softmax over ``draws`` draws of its
    randomness, Eq. 8 of the sparse-randomized-encoder paper; also the "ensemble" evaluation of
    randomized defenses in the DCS paper). The result carries ``model``'s recipe plus
    ``{"name": "ensemble", "options": {"draws": draws}}`` so :func:`robustlab.load` rebuilds it;
    ``model`` itself is shared, not copied."""
    out = Ensemble(model, _bounded_int(draws, "draws", _MAX_DRAWS))
    recipe = getattr(model, "robustlab_recipe", None)
    if isinstance(recipe, dict):
        setattr(out, "robustlab_recipe", recipe)  # noqa: B010  (plain attribute)
    record_conversion(out, "ensemble", {"draws": out.draws})
    return out


def _replay_ensemble(model: nn.Module, *, draws: int) -> nn.Module:
    """The checkpoint-replay form of :func:`convert_ensemble`."""
    recipe = getattr(model, "robustlab_recipe", None)
    out = convert_ensemble(model, draws)
    if recipe is not None:
        setattr(out, "robustlab_recipe", recipe)  # noqa: B010  (plain attribute)
    return out


CONVERSIONS.register("ensemble", _replay_ensemble, paper="sparse-randomized-encoder, Sec. 2.4, Eq. 8",
                     convert=convert_ensemble)

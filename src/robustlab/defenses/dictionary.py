"""Patch dictionaries for the sparse randomized encoder (``sparse-randomized-encoder.txt``, Sec. 2.1, Eq. 1).

An overcomplete dictionary ``D = [d_1, ..., d_L]`` of unit-L2 atoms is learnt from ``n x n``
patches (stride ``S``) of clean images by solving Eq. 1::

    min_{D, alpha}  sum_k sum_ij  1/2 ||R_ij X_k - D alpha_ij||_2^2 + lambda ||alpha_ij||_1

with scikit-learn's ``MiniBatchDictionaryLearning`` (Mairal et al., 2009), ``alpha = lambda``.
Patches are raw [0, 1] pixels, not centred, because the encoder projects raw patches onto the
atoms (Sec. 2.2). A patch is flattened channel-major (``C, n, n``), the layout of a conv weight,
so the learnt atoms are directly the ``(L, C, n, n)`` weight of the encoder's projection.

The dictionary is saved as a safetensors checkpoint (:mod:`robustlab.core.checkpoint`) whose
JSON header holds the :class:`DictionarySettings`; nothing is pickled. On load the header is
treated as untrusted: only known settings fields of the right types are accepted, and the stored
tensor's shape is checked against them before any tensor data is read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core import (
    CheckpointError,
    InputError,
    check_images,
    check_int,
    check_number,
    check_positive_int,
)
from ..core.checkpoint import open_checkpoint, write_checkpoint

__all__ = [
    "CIFAR10_DICTIONARY",
    "DICTIONARY_PRESETS",
    "FASHION_MNIST_DICTIONARY",
    "IMAGENETTE_DICTIONARY",
    "DictionarySettings",
    "extract_patches",
    "learn_dictionary",
    "load_dictionary",
    "save_dictionary",
]

_KIND = "sparse-dictionary"
_TENSOR = "atoms"

Progress = Callable[[int, int], None]
"""``progress(step, total)``: called as minibatch steps complete (``total`` is the step budget;
learning may stop earlier on convergence)."""


@dataclass(frozen=True)
class DictionarySettings:
    """How a patch dictionary is learnt (Sec. 2.1 and Sec. 5.1).

    Attributes:
        patch_size: side ``n`` of the square patches.
        stride: patch stride ``S``; ``m = floor((N - n) / S) + 1`` patches per side.
        atoms: number of atoms ``L`` (the paper: 5-10x the ambient dimension ``C n^2``).
        lam: the sparsity weight ``lambda`` of Eq. 1 (scikit-learn's ``alpha``).
        channels: image channels ``C``.
        max_iter: passes over the patches (scikit-learn >= 1.4's ``max_iter``; it stops earlier
            on convergence).
        batch_size: patches per minibatch.
        max_patches: learn on a random subset of at most this many patches (``None``: all).
        seed: seeds the patch subset and scikit-learn's ``random_state``.
    """

    patch_size: int
    stride: int
    atoms: int
    lam: float
    channels: int
    max_iter: int = 1000
    batch_size: int = 256
    max_patches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("patch_size", "stride", "atoms", "channels", "max_iter", "batch_size"):
            check_positive_int(getattr(self, name), f"DictionarySettings.{name}")
        if self.max_patches is not None:
            check_positive_int(self.max_patches, "DictionarySettings.max_patches")
        check_number(self.lam, "DictionarySettings.lam", 0, low_open=True)
        check_int(self.seed, "DictionarySettings.seed", 0)

    @property
    def dim(self) -> int:
        """The ambient dimension ``C n^2`` of a patch."""
        return self.channels * self.patch_size**2

    def patches_per_side(self, size: int) -> int:
        """``m = floor((N - n) / S) + 1`` for an image side ``N`` (Sec. 2.1)."""
        return (size - self.patch_size) // self.stride + 1


CIFAR10_DICTIONARY = DictionarySettings(patch_size=4, stride=2, atoms=500, lam=1.0, channels=3, max_iter=1000)
"""The paper's CIFAR-10 dictionary (Sec. 5.1): 4x4 RGB patches (ambient dimension 48), stride 2
(a 15x15x500 code), L = 500 (about 10x the ambient dimension), lambda = 1, 1000 iterations."""

IMAGENETTE_DICTIONARY = DictionarySettings(patch_size=8, stride=4, atoms=1000, lam=0.5, channels=3, max_iter=10000)
"""The paper's Imagenette dictionary (Sec. 5.1): 160x160 images, 8x8 RGB patches (ambient
dimension 192), stride 4, L = 1000 (about 5x), lambda = 0.5, 10000 iterations. Sec. 5.1 calls the
code 38x38x1000, but its own Sec. 2.1 formula ``floor((160 - 8) / 4) + 1`` (and a stride-4 conv)
gives 39x39; the paper does not say how it got 38."""

FASHION_MNIST_DICTIONARY = DictionarySettings(patch_size=4, stride=2, atoms=160, lam=0.5, channels=1, max_iter=100)
"""Our Fashion-MNIST dictionary (the paper has none): 4x4 grayscale patches, stride 2, L = 160,
lambda = 0.5, 100 passes.

Why: the paper picks n and S from feature size relative to image size (Sec. 5.1). A 28x28
Fashion-MNIST image is close to CIFAR-10's 32x32, with garments that fill the frame like CIFAR's
objects, so we keep CIFAR's 4x4 patches at stride 2 (overlapping patches, a 13x13 code). One
channel gives ambient dimension 16, and L = 160 keeps CIFAR's 10x overcompleteness. Lambda is
CIFAR's 1 scaled by the patch norm, which grows as the square root of the dimension:
sqrt(16 / 48) ~ 0.58, rounded down to 0.5 (the paper takes lambda "in the upper range of values
that converge"); on 4000 Fashion-MNIST patches it gives about 2.5 nonzero lasso coefficients per
patch with 159 of the 160 atoms in use (lambda = 0.1: about 6), so it is sparse without starving
atoms. With 16-dimensional patches one pass over the data is cheap, so 100 passes (convergence
stops it far earlier; 1000 learns the same dictionary) replace CIFAR's 1000. The encoder's T should shrink with L too
(the paper's T = 50 of L = 500 would be T ~ 16 here; Table 5 suggests keeping T(1 - p) similar).
"""

DICTIONARY_PRESETS: dict[str, DictionarySettings] = {
    "cifar10": CIFAR10_DICTIONARY,
    "imagenette": IMAGENETTE_DICTIONARY,
    "fashion-mnist": FASHION_MNIST_DICTIONARY,
}
"""Dictionary settings by dataset name."""


def extract_patches(images: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """All ``n x n`` patches of an NCHW batch at stride ``S``, as rows ``(N * m * m, C n^2)``.

    Rows are flattened channel-major (``C, n, n``), the layout of a conv weight, so
    ``patches @ atoms.flatten(1).T`` equals the encoder's convolution.
    """
    check_images(images)
    check_positive_int(patch_size, "patch_size")
    check_positive_int(stride, "stride")
    if images.shape[-1] < patch_size or images.shape[-2] < patch_size:
        raise InputError(
            f"patches of {patch_size}x{patch_size} do not fit images of shape {tuple(images.shape)}"
        )
    cols = F.unfold(images, kernel_size=patch_size, stride=stride)  # (N, C n^2, m*m)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def learn_dictionary(
    images: torch.Tensor,
    settings: DictionarySettings,
    *,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Learn ``settings.atoms`` unit-L2 atoms from the patches of ``images`` (Eq. 1).

    Args:
        images: clean training images, NCHW in [0, 1], ``settings.channels`` channels.
        settings: patch size, stride, L, lambda and the optimizer's budget.
        progress: optional ``progress(step, total)`` callback (library code never prints).

    Returns:
        The atoms as a float32 ``(L, C, n, n)`` tensor (a conv weight) on the CPU, each of
        unit L2 norm.
    """
    from sklearn.decomposition import MiniBatchDictionaryLearning

    check_images(images, channels=settings.channels)
    patches = extract_patches(images.detach().cpu().float(), settings.patch_size, settings.stride)
    if settings.max_patches is not None and patches.shape[0] > settings.max_patches:
        gen = torch.Generator().manual_seed(settings.seed)
        keep = torch.randperm(patches.shape[0], generator=gen)[: settings.max_patches]
        patches = patches[keep.sort().values]
    if patches.shape[0] < 2:
        raise InputError(f"dictionary learning needs at least 2 patches, got {patches.shape[0]}")

    callback = None
    if progress is not None:
        report = progress

        def callback(state: dict[str, Any]) -> None:
            report(int(state["i"]) + 1, int(state["n_steps"]))

    learner = MiniBatchDictionaryLearning(
        n_components=settings.atoms,
        alpha=settings.lam,
        max_iter=settings.max_iter,
        batch_size=settings.batch_size,
        random_state=settings.seed,
        callback=callback,
    )
    learner.fit(patches.numpy().astype(np.float64))
    atoms = torch.from_numpy(np.asarray(learner.components_, dtype=np.float64))
    norms = atoms.norm(dim=1, keepdim=True)
    # sklearn keeps atoms on the unit sphere; an atom it never used can be (near) zero:
    # give it a fixed unit direction so every atom satisfies ||d_l||_2 = 1 (Eq. 1's set C)
    dead = norms.squeeze(1) < 1e-12
    if bool(dead.any()):
        atoms[dead] = 1.0
        norms = atoms.norm(dim=1, keepdim=True)
    atoms = (atoms / norms).float()
    n = settings.patch_size
    return atoms.reshape(settings.atoms, settings.channels, n, n).contiguous()


def save_dictionary(path: str | os.PathLike[str], atoms: torch.Tensor, settings: DictionarySettings) -> Path:
    """Save ``atoms`` (``(L, C, n, n)``) with ``settings`` in the header, as safetensors."""
    expected = (settings.atoms, settings.channels, settings.patch_size, settings.patch_size)
    if tuple(atoms.shape) != expected:
        raise InputError(f"atoms must have shape {expected} for these settings, got {tuple(atoms.shape)}")
    header = {"kind": _KIND, "dictionary": dataclasses.asdict(settings)}
    return write_checkpoint(path, {_TENSOR: atoms.detach().float()}, header)


def _settings_from_header(path: Path, raw: Any) -> DictionarySettings:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} has no dictionary settings in its header")
    fields = {f.name for f in dataclasses.fields(DictionarySettings)}
    unknown = set(raw) - fields
    missing = {"patch_size", "stride", "atoms", "lam", "channels"} - set(raw)
    if unknown or missing:
        raise CheckpointError(
            f"{path} has malformed dictionary settings (unknown: {sorted(unknown)}, missing: "
            f"{sorted(missing)}); re-save it with save_dictionary"
        )
    try:
        return DictionarySettings(**raw)
    except (InputError, TypeError) as e:
        raise CheckpointError(f"{path} has invalid dictionary settings: {e}") from None


def load_dictionary(path: str | os.PathLike[str]) -> tuple[torch.Tensor, DictionarySettings]:
    """Load a dictionary saved by :func:`save_dictionary`: ``(atoms, settings)``.

    Raises:
        CheckpointError: not a dictionary file, malformed settings, a stored tensor whose
            shape disagrees with them, or any failure of the checkpoint's own checks.
    """
    path = Path(path)
    checkpoint = open_checkpoint(path)
    header = checkpoint.require_header()
    if header.get("kind") != _KIND:
        raise CheckpointError(f"{path} is not a sparse-encoder dictionary (kind {header.get('kind')!r})")
    settings = _settings_from_header(path, header.get("dictionary"))
    expected = (settings.atoms, settings.channels, settings.patch_size, settings.patch_size)
    specs = dict(checkpoint.specs)
    if set(specs) != {_TENSOR} or specs[_TENSOR] != ("F32", expected):
        raise CheckpointError(
            f"{path} should hold one F32 tensor {_TENSOR!r} of shape {expected}, got {specs}"
        )
    return checkpoint.read_tensors()[_TENSOR], settings

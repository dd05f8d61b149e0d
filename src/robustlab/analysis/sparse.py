"""Analyses of the sparse randomized encoder: Fig. 2, Fig. 4 and Fig. 9.

Bakiskan, Cekic, Sezer & Madhow, "A Neuro-Inspired Autoencoding Defense Against Adversarial
Perturbations" (``papers/sparse-randomized-encoder``):

- :func:`atom_filter_correlations` and :func:`plot_correlation_histogram`: the normalized
  correlations of image patches with the dictionary atoms (Eq. 6) against the normalized
  activations of a standard CNN's first-layer filters (Eq. 7) (Sec. 1, Fig. 2; App. 8.1, Fig. 5);
- :func:`corrupted_patch_fraction` and :func:`plot_corrupted_fraction_histogram`: per image,
  the expected fraction of patches whose sparse code an attack corrupts (Sec. 5.2, Fig. 4;
  App. 8.5);
- :func:`autoencoder_grid`: clean and adversarial images before and after the front end's
  encoder + decoder (App. 8.8, Fig. 9).

The encoder and front end are taken duck-typed (any ``nn.Module`` with the methods named in
each docstring, e.g. :class:`~robustlab.defenses.sparse_encoder.SparseEncoder` and
:class:`~robustlab.defenses.sparse_model.SparseFrontEnd`): this package imports ``core`` and
``attacks`` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import check_images, check_int, check_positive_int
from ..core.errors import InputError
from ..core.randomness import frozen, resample
from .figures import pyplot, save_figure

if TYPE_CHECKING:  # pragma: no cover - documentation only
    from ..defenses.sparse_encoder import SparseEncoder  # noqa: F401
    from ..defenses.sparse_model import SparseFrontEnd  # noqa: F401

__all__ = [
    "CORRUPTION_CRITERIA",
    "PatchCorrelations",
    "atom_filter_correlations",
    "autoencoder_grid",
    "corrupted_patch_fraction",
    "plot_correlation_histogram",
    "plot_corrupted_fraction_histogram",
]

Criterion = Literal["toppled", "code"]
CORRUPTION_CRITERIA: tuple[str, ...] = ("toppled", "code")
"""What makes a patch "corrupted" in :func:`corrupted_patch_fraction`."""


def _kernels(value: object, what: str, shape_name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 4 or not value.is_floating_point():
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"{what} must be a float {shape_name} tensor, got {got}")
    if value.shape[0] < 1 or value.shape[2] < 1 or value.shape[3] < 1:
        raise InputError(
            f"{what} must be a non-empty {shape_name} tensor, got {tuple(value.shape)}"
        )
    norms = value.detach().flatten(1).norm(dim=1)
    if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):
        bad = int(((norms == 0) | ~torch.isfinite(norms)).nonzero()[0, 0])
        raise InputError(
            f"{what} has a zero or non-finite kernel at index {bad}; "
            "the normalization by its squared norm (App. 8.1, Eq. 6-7) is undefined"
        )
    return value.detach()


@dataclass(frozen=True)
class PatchCorrelations:
    """Eq. 6 and Eq. 7 for a set of patches (App. 8.1).

    Attributes:
        atom_correlations: ``rho``, shape ``(P, L)``: ``<x_ij, d_l> / ||d_l||^2`` for each
            patch and atom (``= <x_ij, d_l>`` for the paper's unit-norm atoms).
        filter_activations: ``gamma``, shape ``(P, F)``: ``<x_ij, f_p> / ||f_p||^2`` for each
            patch and first-layer filter (no bias).
        positions: ``(P, 3)`` long: image index, row and column of the patch window's
            top-left pixel (the window is the larger of the atom and filter sizes).
    """

    atom_correlations: torch.Tensor
    filter_activations: torch.Tensor
    positions: torch.Tensor

    @property
    def rho(self) -> torch.Tensor:
        """All ``rho`` values, 1-D ``(P * L,)``: what Fig. 2 (left) histograms, over patches."""
        return self.atom_correlations.reshape(-1)

    @property
    def gamma(self) -> torch.Tensor:
        """All ``gamma`` values, 1-D ``(P * F,)``: what Fig. 2 (right) histograms."""
        return self.filter_activations.reshape(-1)

    @property
    def atom_peak(self) -> torch.Tensor:
        """Per patch, ``max_l |rho_l|``: ``(P,)``."""
        return self.atom_correlations.abs().amax(dim=1)

    @property
    def filter_peak(self) -> torch.Tensor:
        """Per patch, ``max_p |gamma_p|``: ``(P,)``."""
        return self.filter_activations.abs().amax(dim=1)

    def summary(self, large: float = 0.5) -> dict[str, float]:
        """Numbers behind Fig. 2's claim: few large atom correlations, filter activations near 0.

        Per patch, over its ``L`` correlations (``atom_*``) or ``F`` activations (``filter_*``),
        then averaged over the patches:

        - ``*_kurtosis``: excess kurtosis (heavy tails: a few large values); patches whose
          values are all equal (e.g. a black patch) are skipped (NaN if all are);
        - ``*_large_fraction``: fraction of values with ``|v| >= large * max |v|``;
        - ``*_peak_to_rms``: ``max |v| / sqrt(mean v^2)`` (0 for an all-zero patch);
        - ``*_mean_abs``: mean ``|v|``.

        Also ``patches``: ``P``.
        """
        if not (isinstance(large, (int, float)) and 0 < large <= 1):
            raise InputError(f"large must be a number in (0, 1], got {large!r}")
        out: dict[str, float] = {"patches": float(self.atom_correlations.shape[0])}
        for name, values in (("atom", self.atom_correlations), ("filter", self.filter_activations)):
            v = values.double()
            centered = v - v.mean(dim=1, keepdim=True)
            var = centered.pow(2).mean(dim=1)
            ok = var > 0
            kurt = centered.pow(4).mean(dim=1)[ok] / var[ok].pow(2) - 3.0
            out[f"{name}_kurtosis"] = float(kurt.mean()) if kurt.numel() else math.nan
            peak = v.abs().amax(dim=1, keepdim=True)
            frac = ((v.abs() >= large * peak) & (peak > 0)).double().mean(dim=1)
            out[f"{name}_large_fraction"] = float(frac.mean())
            rms = v.pow(2).mean(dim=1).sqrt()
            ratio = torch.where(
                rms > 0, peak.squeeze(1) / rms.clamp_min(1e-300), torch.zeros_like(rms)
            )
            out[f"{name}_peak_to_rms"] = float(ratio.mean())
            out[f"{name}_mean_abs"] = float(v.abs().mean())
        return out


def atom_filter_correlations(
    atoms: torch.Tensor,
    first_layer_weight: torch.Tensor,
    images: torch.Tensor,
    *,
    stride: int = 1,
    max_patches: int | None = None,
    generator: torch.Generator | None = None,
) -> PatchCorrelations:
    """Normalized atom correlations vs first-layer filter activations of patches (Fig. 2).

    App. 8.1: for a patch ``x_ij``, ``rho_l = <x_ij, d_l> / ||d_l||^2`` (Eq. 6; the paper's
    atoms have unit norm, so ``rho_l = <x_ij, d_l>``) for every atom ``d_l``, and
    ``gamma_p = <x_ij, f_p> / ||f_p||^2`` (Eq. 7) for every first-layer filter ``f_p`` of a
    standard CNN; Fig. 2 histograms ``{rho_l}`` and ``{gamma_p}`` for one "typical" patch,
    Fig. 5 for 10 more. Here every patch of a grid is computed (or ``max_patches`` of them at
    random); pick rows of the result for single-patch histograms, or histogram all of them.
    Patches are the raw pixels (no mean removal or normalization, as Eq. 6-7 are written) and
    the filters' bias is not added.

    Size mismatch (e.g. 4x4 atoms vs a 3x3 first convolution): each kernel is compared on a
    patch of its *own* size. Windows of the larger size (per dimension, ``max`` of the two)
    are placed on a grid of step ``stride``; inside each window the atom patch and the filter
    patch are both centred, at offset ``(window - own) // 2`` (so a 3x3 filter in a 4x4
    window sits at offset 0, its top-left 3x3). With equal sizes both see the same patch.

    Args:
        atoms: the dictionary, ``(L, C, n_h, n_w)`` (``SparseEncoder.atoms``); no zero atom.
        first_layer_weight: the CNN's first convolution weight, ``(F, C, k_h, k_w)``; no zero
            filter (``gamma`` would be undefined).
        images: ``(N, C, H, W)`` in [0, 1], at least a window in size.
        stride: step of the window grid.
        max_patches: if given, keep this many windows drawn at random (without replacement)
            from the grid with ``generator``; all of them when the grid is smaller.
        generator: for that draw (default: the global RNG).

    Returns:
        :class:`PatchCorrelations`: ``rho`` ``(P, L)``, ``gamma`` ``(P, F)`` and the window
        positions; ``.rho``/``.gamma`` are the flattened 1-D values and ``.summary()`` the
        summary numbers.

    Raises:
        InputError: on wrong shapes, mismatched channels, zero kernels, or too-small images.
    """
    d = _kernels(atoms, "atoms", "(L, C, n_h, n_w)")
    f = _kernels(first_layer_weight, "first_layer_weight", "(F, C, k_h, k_w)")
    check_images(images.detach() if isinstance(images, torch.Tensor) else images)
    x = images.detach()
    channels = x.shape[1]
    for what, k in (("atoms", d), ("first_layer_weight", f)):
        if k.shape[1] != channels:
            raise InputError(
                f"{what} have {k.shape[1]} input channel(s) but the images have {channels}; "
                f"shapes {tuple(k.shape)} and {tuple(x.shape)}"
            )
    stride = check_positive_int(stride, "stride")
    if max_patches is not None:
        max_patches = check_positive_int(max_patches, "max_patches")
    win_h, win_w = max(d.shape[2], f.shape[2]), max(d.shape[3], f.shape[3])
    if x.shape[2] < win_h or x.shape[3] < win_w:
        raise InputError(
            f"images of shape {tuple(x.shape)} are smaller than the {win_h}x{win_w} patch window"
        )
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype)
    n_img = x.shape[0]
    rows = torch.arange(0, x.shape[2] - win_h + 1, stride)
    cols = torch.arange(0, x.shape[3] - win_w + 1, stride)
    img_idx, r_idx, c_idx = torch.meshgrid(torch.arange(n_img), rows, cols, indexing="ij")
    positions = torch.stack([img_idx.reshape(-1), r_idx.reshape(-1), c_idx.reshape(-1)], dim=1)
    if max_patches is not None and max_patches < positions.shape[0]:
        pick = torch.randperm(positions.shape[0], generator=generator)[:max_patches]
        positions = positions[pick]

    # (N, C * win_h * win_w, R * Cc) windows, reordered as (N * R * Cc, C, win_h, win_w)
    windows = F.unfold(x, (win_h, win_w), stride=stride)
    windows = windows.transpose(1, 2).reshape(-1, channels, win_h, win_w)
    grid = rows.numel() * cols.numel()
    flat = (
        positions[:, 0] * grid
        + (positions[:, 1] // stride) * cols.numel()
        + positions[:, 2] // stride
    )
    windows = windows[flat.to(x.device)]

    def normalized(kernels: torch.Tensor) -> torch.Tensor:
        kh, kw = kernels.shape[2], kernels.shape[3]
        oh, ow = (win_h - kh) // 2, (win_w - kw) // 2
        patch = windows[:, :, oh : oh + kh, ow : ow + kw].reshape(windows.shape[0], -1)
        k = kernels.to(device=x.device, dtype=dtype).reshape(kernels.shape[0], -1)
        return (patch @ k.T) / k.pow(2).sum(dim=1)

    return PatchCorrelations(
        atom_correlations=normalized(d).cpu(),
        filter_activations=normalized(f).cpu(),
        positions=positions,
    )


def _figure_size(figsize: tuple[float, float], dpi: int) -> tuple[tuple[float, float], int]:
    if (
        not isinstance(figsize, (tuple, list))
        or len(figsize) != 2
        or not all(isinstance(s, (int, float)) and s > 0 for s in figsize)
    ):
        raise InputError(f"figsize must be two positive inches (width, height), got {figsize!r}")
    return (float(figsize[0]), float(figsize[1])), check_positive_int(dpi, "dpi")


def _values_1d(value: object, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.numel() == 0:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"{what} must be a non-empty 1-D tensor, got {got}")
    v = value.detach().double().cpu()
    if not bool(torch.isfinite(v).all()):
        raise InputError(f"{what} has non-finite values")
    return v


def plot_correlation_histogram(
    a: torch.Tensor,
    b: torch.Tensor,
    path: str | Path,
    *,
    bins: int = 50,
    labels: tuple[str, str] = ("dictionary atoms (rho, Eq. 6)", "layer 1 filters (gamma, Eq. 7)"),
    figsize: tuple[float, float] = (8.0, 3.0),
    dpi: int = 100,
) -> Path:
    """Fig. 2: side-by-side histograms of atom correlations ``a`` and filter activations ``b``.

    ``a`` and ``b`` are 1-D (e.g. ``PatchCorrelations.rho`` and ``.gamma``, or one row of
    ``atom_correlations`` / ``filter_activations`` for a single patch as in Fig. 2). The PNG
    is ``figsize * dpi`` pixels.

    Returns:
        The path written.

    Raises:
        InputError: when ``a`` or ``b`` is not a non-empty finite 1-D tensor, or on bad sizes.
    """
    va, vb = _values_1d(a, "a"), _values_1d(b, "b")
    bins = check_positive_int(bins, "bins")
    size, dpi = _figure_size(figsize, dpi)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=size, dpi=dpi)
    for ax, values, label in zip(axes, (va, vb), labels, strict=True):
        ax.hist(values.numpy(), bins=bins, color="tab:blue")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("normalized correlation / activation", fontsize=8)
        ax.set_ylabel("count", fontsize=8)
        ax.tick_params(labelsize=7)
    return save_figure(fig, path, dpi)


def _check_encoder(encoder: object, needs: tuple[str, ...]) -> None:
    if not isinstance(encoder, nn.Module):
        raise InputError(
            f"encoder must be an nn.Module (a SparseEncoder), got {type(encoder).__name__}"
        )
    missing = [name for name in needs if not hasattr(encoder, name)]
    if missing:
        raise InputError(
            f"encoder {type(encoder).__name__} lacks {missing}; pass a SparseEncoder "
            "(project, sparse_code, top_t, dropout_p)"
        )


def _top_mask(proj: torch.Tensor, top_t: int) -> torch.Tensor:
    idx = proj.abs().topk(top_t, dim=1).indices
    return torch.zeros_like(proj, dtype=torch.bool).scatter_(1, idx, True)


@torch.no_grad()
def corrupted_patch_fraction(
    encoder: nn.Module,
    x_clean: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    draws: int | None = None,
    criterion: Criterion = "toppled",
) -> torch.Tensor:
    """Per image, E[fraction of patches with corrupted coefficients] (Fig. 4, App. 8.5).

    App. 8.5: for image ``i`` let ``q_i(j)`` be the fraction of its patches in which the attack
    "topples" ``j`` of the clean top-T coefficients before dropout, i.e. ``j`` atoms are in the
    top T of the adversarial patch but not of the clean one. A patch is not corrupted when
    dropout (rate ``p``) drops all ``j`` newcomers, so ``zeta_i = sum_j q_i(j) p^j`` and the
    expected fraction of corrupted patches ("whose sparse code has at least one nonzero
    coefficient which would not have appeared in the clean image") is ``z_i = 1 - zeta_i``;
    Fig. 4 histograms ``z_i`` over images. Like the paper, this ignores the quantizer's dead
    zone (a kept newcomer counts even if Eq. 3 zeroes it).

    - ``criterion="toppled"``, ``draws=None`` (default): the closed form above, exact.
    - ``criterion="toppled"``, ``draws=k``: a Monte Carlo estimate of the same quantity with
      the encoder's own dropout: ``k`` draws, each shared by the clean and adversarial input
      (inside :func:`~robustlab.core.randomness.frozen`, :func:`resample` between draws); a
      patch is corrupted in a draw when an adversarial top-T newcomer survives dropout.
      Its mean over draws converges to the closed form.
    - ``criterion="code"`` (needs ``draws``): with the same shared draws, a patch is corrupted
      when its quantized code ``encoder(x)`` differs at all between clean and adversarial
      input (any coefficient changed: newcomers, toppled clean coefficients that were kept,
      or coefficients crossing the dead zone). Not the paper's definition; an upper bound on it
      per draw up to the dead zone.

    ``encoder`` is duck-typed: ``project(x)`` (the ``(N, L, m_h, m_w)`` projections),
    ``top_t``, ``dropout_p`` and, with ``draws``, ``sparse_code(x)`` / ``forward`` drawing
    dropout through the :class:`~robustlab.core.randomness.Stochastic` protocol, as
    :class:`~robustlab.defenses.sparse_encoder.SparseEncoder` does. The draws advance its
    generator (seed it with ``seed_stochastic`` to repeat a run).

    Args:
        encoder: the sparse randomized encoder.
        x_clean: clean images ``(N, C, H, W)`` in [0, 1].
        x_adv: their adversarial versions, same shape.
        draws: Monte Carlo draws of the dropout; ``None`` for the closed form.
        criterion: ``"toppled"`` (the paper's) or ``"code"``.

    Returns:
        ``(N,)``: the expected fraction of corrupted patches per image, in [0, 1].

    Raises:
        InputError: on mismatched or wrong shapes, a non-encoder, bad ``draws``/``criterion``.
    """
    if criterion not in CORRUPTION_CRITERIA:
        raise InputError(f"unknown criterion {criterion!r}; use one of {list(CORRUPTION_CRITERIA)}")
    if draws is not None:
        draws = check_positive_int(draws, "draws")
    elif criterion == "code":
        raise InputError("criterion='code' has no closed form; pass draws (e.g. draws=32)")
    _check_encoder(encoder, ("project", "top_t", "dropout_p") + (("sparse_code",) if draws else ()))
    channels = getattr(encoder, "in_channels", None)
    check_images(
        x_clean.detach() if isinstance(x_clean, torch.Tensor) else x_clean, "x_clean", channels
    )
    check_images(x_adv.detach() if isinstance(x_adv, torch.Tensor) else x_adv, "x_adv", channels)
    if x_clean.shape != x_adv.shape:
        raise InputError(
            f"x_clean and x_adv must have the same shape, got {tuple(x_clean.shape)} and "
            f"{tuple(x_adv.shape)}"
        )
    top_t = int(encoder.top_t)  # type: ignore[arg-type]
    p = float(encoder.dropout_p)  # type: ignore[arg-type]
    proj_clean = encoder.project(x_clean)  # type: ignore[operator]
    if not isinstance(proj_clean, torch.Tensor) or proj_clean.dim() != 4:
        got = (
            tuple(proj_clean.shape)
            if isinstance(proj_clean, torch.Tensor)
            else type(proj_clean).__name__
        )
        raise InputError(f"encoder.project must return (N, L, m_h, m_w) projections, got {got}")
    clean_top = _top_mask(proj_clean, top_t)

    if criterion == "toppled" and draws is None:
        newcomers = _top_mask(encoder.project(x_adv), top_t) & ~clean_top  # type: ignore[operator]
        toppled = newcomers.sum(dim=1).double()  # j per patch, (N, m_h, m_w)
        zeta = torch.full_like(toppled, p).pow(toppled).flatten(1).mean(dim=1)
        return (1.0 - zeta).to(proj_clean.dtype)

    assert draws is not None
    total = torch.zeros(x_clean.shape[0], dtype=torch.float64, device=proj_clean.device)
    with frozen(encoder):
        for _ in range(draws):
            resample(encoder)
            if criterion == "toppled":
                kept_adv = encoder.sparse_code(x_adv) != 0  # type: ignore[operator]
                corrupted = (kept_adv & ~clean_top).any(dim=1)
            else:
                changed = encoder(x_clean) != encoder(x_adv)
                corrupted = changed.any(dim=1)
            total += corrupted.double().flatten(1).mean(dim=1)
    return (total / draws).to(proj_clean.dtype)


def plot_corrupted_fraction_histogram(
    series: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    bins: int = 20,
    figsize: tuple[float, float] = (5.0, 3.5),
    dpi: int = 100,
) -> Path:
    """Fig. 4: overlaid histograms of per-image corrupted-patch fractions, one per attack.

    ``series`` maps a name (e.g. ``"W-NFGA"``, ``"PW-T"``) to the ``(N,)`` output of
    :func:`corrupted_patch_fraction`; the x axis is [0, 1]. The PNG is ``figsize * dpi`` pixels.

    Returns:
        The path written.

    Raises:
        InputError: when ``series`` is empty or a series is not a non-empty 1-D tensor in [0, 1].
    """
    if not isinstance(series, Mapping) or not series:
        raise InputError("series must be a non-empty mapping name -> (N,) tensor of fractions")
    values = {}
    for name, v in series.items():
        vv = _values_1d(v, f"series[{name!r}]")
        if float(vv.min()) < 0 or float(vv.max()) > 1:
            raise InputError(f"series[{name!r}] must hold fractions in [0, 1]")
        values[str(name)] = vv
    bins = check_positive_int(bins, "bins")
    size, dpi = _figure_size(figsize, dpi)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    for name, vv in values.items():
        ax.hist(vv.numpy(), bins=bins, range=(0.0, 1.0), alpha=0.5, label=name)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("E[fraction of patches with corrupted coefficients]", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi)


@torch.no_grad()
def autoencoder_grid(
    front_end: nn.Module,
    images: torch.Tensor,
    path: str | Path,
    *,
    adversarial: torch.Tensor | None = None,
    pad: int = 2,
    scale: int = 1,
) -> Path:
    """Fig. 9: a PNG grid of images before and after ``front_end.autoencode`` (App. 8.8).

    Rows, top to bottom: the images, their autoencoded versions and, with ``adversarial``,
    the adversarial images and theirs; one column per image. One draw of the encoder's
    randomness, shared by all rows (inside :func:`~robustlab.core.randomness.frozen`), so
    clean and adversarial reconstructions differ only through the input. Grayscale (C = 1)
    images are written as gray RGB, RGB (C = 3) as is; cells are separated by ``pad`` white
    pixels and enlarged ``scale`` times (nearest neighbour). The PNG is exactly
    ``rows * (H * scale + pad) + pad`` by ``N * (W * scale + pad) + pad`` pixels.

    ``front_end`` is duck-typed: an ``nn.Module`` with ``autoencode(x)`` returning images of
    ``x``'s shape in [0, 1] (e.g. :class:`~robustlab.defenses.sparse_model.SparseFrontEnd`;
    the paper uses its unsupervised-decoder twin).

    Returns:
        The path written.

    Raises:
        InputError: on images that are not ``(N, 1 or 3, H, W)`` in [0, 1], an ``adversarial``
            batch of another shape, a front end without ``autoencode`` or whose output has
            another shape, or bad ``pad``/``scale``.
    """
    if not isinstance(front_end, nn.Module) or not callable(getattr(front_end, "autoencode", None)):
        raise InputError(
            f"front_end must be an nn.Module with autoencode(x) (a SparseFrontEnd), got {type(front_end).__name__}"
        )
    check_images(images.detach() if isinstance(images, torch.Tensor) else images)
    if images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise InputError(
            f"images must be a non-empty (N, 1 or 3, H, W) batch to be drawn, got {tuple(images.shape)}"
        )
    if adversarial is not None:
        check_images(
            adversarial.detach() if isinstance(adversarial, torch.Tensor) else adversarial,
            "adversarial",
        )
        if adversarial.shape != images.shape:
            raise InputError(
                f"adversarial must have the images' shape {tuple(images.shape)}, got {tuple(adversarial.shape)}"
            )
    check_int(pad, "pad", 0)
    scale = check_positive_int(scale, "scale")
    with frozen(front_end):
        batches = [images] if adversarial is None else [images, adversarial]
        rows = []
        for batch in batches:
            out = front_end.autoencode(batch)  # type: ignore[operator]
            if not isinstance(out, torch.Tensor) or out.shape != batch.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise InputError(
                    f"front_end.autoencode must return images of the input's shape {tuple(batch.shape)}, got {got}"
                )
            rows += [batch.detach(), out.detach()]
    n, c, h, w = images.shape
    ch, cw = h * scale, w * scale
    grid = torch.ones(3, len(rows) * (ch + pad) + pad, n * (cw + pad) + pad, dtype=torch.float32)
    for r, batch in enumerate(rows):
        cells = batch.float().cpu().clamp(0.0, 1.0)
        if scale > 1:
            cells = cells.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        if c == 1:
            cells = cells.expand(n, 3, ch, cw)
        for i in range(n):
            top, left = pad + r * (ch + pad), pad + i * (cw + pad)
            grid[:, top : top + ch, left : left + cw] = cells[i]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    out_path = Path(path)
    mpimg.imsave(out_path, grid.permute(1, 2, 0).numpy(), format="png")
    return out_path

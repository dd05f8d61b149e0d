"""Image filters shared by training and analysis: the oriented energy of an image.

Gradient-norm thesis (``papers/gradient-norm-regularization``), Sec. 5, Eq. 5.1 and the captions
of Fig. 5.1 and Table 5.1: the *oriented energy* of an image is

    edge(x) = |g_u * x|^2 + |g_v * x|^2

where ``*`` is 2-D convolution and ``g_u``, ``g_v`` are Gaussian horizontal and vertical
derivative filters. It is the teacher of the ``edge-align`` objective
(:mod:`robustlab.train.gradnorm`) and the reference of the saliency/edge correlation
(:mod:`robustlab.analysis.gradients`), so it lives in ``core`` where both may import it.

Choices the thesis leaves open, stated here: the filters are sampled Gaussian derivatives of
standard deviation ``sigma`` (default 1 pixel) on ``[-ceil(3 sigma), ceil(3 sigma)]``; the
smoothing part sums to 1 and the derivative part is scaled so that a unit ramp has unit response;
each channel is filtered on its own (depthwise), so the energy has the image's shape; borders are
replicate-padded, so a constant image has zero energy everywhere (zero padding would draw a false
edge around the frame).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import check_number
from .errors import InputError


def gaussian_derivative_kernels(
    sigma: float = 1.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-D filters ``(g_u, g_v)``: derivative of a Gaussian along the width (``u``) and along
    the height (``v``), each a ``(K, K)`` tensor with ``K = 2 ceil(3 sigma) + 1`` (thesis Eq. 5.1).

    ``g_u[i, j] = G(i) D(j)`` with ``G`` the normalized Gaussian and ``D(t) = -t G(t) / sum_t t^2 G(t)``,
    so a unit ramp along the width (``x[., j] = j``) has response ``-1`` under cross-correlation
    (what :func:`torch.nn.functional.conv2d` computes); the sign does not matter since the energy
    squares it. ``g_v`` is ``g_u`` transposed.

    Raises:
        InputError: for a ``sigma`` that is not finite and positive.
    """
    check_number(sigma, "the Gaussian derivative filters' sigma", 0, low_open=True)
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    gauss = torch.exp(-(t**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    deriv = -t * gauss
    deriv = deriv / (t * t * gauss).sum()  # a unit ramp t -> t has response -1 (cross-correlation)
    g_u = torch.outer(gauss, deriv)
    g_v = g_u.t().contiguous()
    return g_u.to(device=device, dtype=dtype), g_v.to(device=device, dtype=dtype)


def oriented_energy(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """The oriented energy ``|g_u * x|^2 + |g_v * x|^2`` of each channel of a batch (thesis
    Sec. 5, Eq. 5.1; Fig. 5.1 and Table 5.1 captions).

    Args:
        x: NCHW images (any range; robustlab passes [0, 1] pixels).
        sigma: standard deviation of the Gaussian, in pixels.

    Returns:
        A non-negative tensor of ``x``'s shape, dtype and device: zero on a constant image,
        large across edges. Differentiable in ``x``.

    Raises:
        InputError: for a non-4-D or non-float input, or a bad ``sigma``.
    """
    if x.dim() != 4:
        raise InputError(f"oriented_energy takes NCHW batches, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"oriented_energy takes float images, got dtype {x.dtype}")
    g_u, g_v = gaussian_derivative_kernels(sigma, dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    radius = g_u.shape[-1] // 2
    weight = torch.stack([g_u, g_v]).unsqueeze(1).repeat(channels, 1, 1, 1)  # (2C, 1, K, K)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    responses = F.conv2d(padded, weight, groups=channels)  # (N, 2C, H, W): u, v per channel
    responses = responses.view(x.shape[0], channels, 2, x.shape[2], x.shape[3])
    return responses.pow(2).sum(dim=2)


__all__ = ["gaussian_derivative_kernels", "oriented_energy"]

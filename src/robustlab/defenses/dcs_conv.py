"""The DCS convolution kernels (``deformable-conv-stochasticity.txt``, Sec. 3.1, Definition 1,
Eq. 5): a ``k x k`` convolution restricted to a set of window positions, computed two ways.

:func:`gather_conv` gathers the ``m`` sampled taps of the padded input and applies one ``1 x 1``
convolution (``m`` taps per output); :func:`masked_dense_conv` is the reference, the dense
convolution with the masked kernel ``K = M * \\mathcal{K}``. Both take positions ``(1, m)``
shared by the batch or ``(N, m)``, one set per sample. The layer that draws the positions is
:class:`robustlab.defenses.dcs.RandomKernelConv2d`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..core import InputError

__all__ = ["gather_conv", "masked_dense_conv", "position_mask"]

Pair = tuple[int, int]
"""A (height, width) setting of a convolution: stride, padding or dilation."""


def _check_per_sample(positions: torch.Tensor, n_batch: int) -> None:
    if positions.shape[0] != n_batch:
        raise InputError(
            f"per-sample positions for {positions.shape[0]} samples, the batch has {n_batch}"
        )


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _out_size(
    x: torch.Tensor,
    k: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (k - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (k - 1) - 1) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise InputError(
            f"input {tuple(x.shape[2:])} is too small for a {k}x{k} kernel with padding {padding}"
        )
    return ho, wo


def _strided_view(
    t: torch.Tensor, start: tuple[int, int], stride: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    top, left = start
    return t[
        :,
        :,
        top : top + (size[0] - 1) * stride[0] + 1 : stride[0],
        left : left + (size[1] - 1) * stride[1] + 1 : stride[1],
    ]


class _GatherTaps(torch.autograd.Function):
    """Stack the strided views of the zero-padded input at ``m`` window offsets:
    ``(N, C, m, H_out, W_out)``. The backward adds each tap's gradient into one padded buffer
    (autograd on the plain views would allocate one input-sized zero tensor per tap); it is made
    of differentiable operations, so double backward works."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        starts: list[tuple[int, int]],
        padding: tuple[int, int],
        stride: tuple[int, int],
        size: tuple[int, int],
    ) -> torch.Tensor:
        xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if max(padding) else x
        ctx.starts, ctx.padding, ctx.stride, ctx.size = starts, padding, stride, size
        ctx.padded_shape = tuple(xp.shape)
        return torch.stack([_strided_view(xp, s, stride, size) for s in starts], dim=2)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        buffer = grad.new_zeros(ctx.padded_shape)
        for j, start in enumerate(ctx.starts):
            view = _strided_view(buffer, start, ctx.stride, ctx.size)
            view += grad[:, :, j]
        ph, pw = ctx.padding
        h, w = ctx.padded_shape[2] - 2 * ph, ctx.padded_shape[3] - 2 * pw
        return buffer[:, :, ph : ph + h, pw : pw + w], None, None, None, None


def gather_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, positions: torch.Tensor,
    stride: Pair = (1, 1), padding: Pair = (0, 0), dilation: Pair = (1, 1), groups: int = 1,
) -> torch.Tensor:
    """Convolution of ``x`` with ``weight`` restricted to the window ``positions`` (DCS, Eq. 5),
    computed from the ``m`` taps only.

    Shared positions ``(1, m)`` (read on the host, so they should live on the CPU): the padded
    input's strided views at the ``m`` offsets are stacked into ``(N, C_in * m, H_out, W_out)``
    and multiplied by the ``m`` weight taps with one ``1 x 1`` convolution (one GEMM; the stack,
    ``m`` output-sized copies of the input, is what the backward pass keeps; the input gradient
    is accumulated tap by tap in one buffer). Per-sample positions ``(N, m)``: a
    per-sample gather of the taps into ``(N, m, H_out, W_out, C_in)`` and one ``einsum``.
    """
    k = weight.shape[-1]
    ho, wo = _out_size(x, k, stride, padding, dilation)
    n_batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    if positions.shape[0] == 1:
        taps_at = [
            divmod(int(pos), k) for pos in positions[0].tolist()
        ]  # CPU positions: no device sync
        starts = [(r * dilation[0], c * dilation[1]) for r, c in taps_at]
        stacked = _GatherTaps.apply(x, starts, padding, stride, (ho, wo))  # (N, C_in, m, ho, wo)
        stacked = stacked.reshape(n_batch, c_in * len(starts), ho, wo)
        flat = [r * k + c for r, c in taps_at]
        w = weight.flatten(2)[:, :, flat].reshape(c_out, (c_in // groups) * len(starts), 1, 1)
        return F.conv2d(stacked, w, bias, groups=groups)
    _check_per_sample(positions, n_batch)
    positions = positions.to(x.device)
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if max(padding) else x
    m = positions.shape[1]
    r = torch.div(positions, k, rounding_mode="floor")
    c = positions - r * k
    # (N, m, ho) and (N, m, wo)
    rows = r.unsqueeze(-1) * dilation[0] + torch.arange(ho, device=x.device) * stride[0]
    cols = c.unsqueeze(-1) * dilation[1] + torch.arange(wo, device=x.device) * stride[1]
    xt = xp.permute(0, 2, 3, 1)  # (N, Hp, Wp, C_in)
    b = torch.arange(n_batch, device=x.device).view(n_batch, 1, 1, 1)
    taps = xt[b, rows[:, :, :, None], cols[:, :, None, :]]  # (N, m, ho, wo, C_in)
    taps = taps.reshape(n_batch, m, ho, wo, groups, c_in // groups)
    w = weight.flatten(2)[:, :, positions]  # (C_out, C_in/g, N, m)
    w = w.reshape(groups, c_out // groups, c_in // groups, n_batch, m)
    out = torch.einsum("nmhwgc,gocnm->ngohw", taps, w).reshape(n_batch, c_out, ho, wo)
    return _add_bias(out, bias)


def position_mask(positions: torch.Tensor, k: int) -> torch.Tensor:
    """The ``(M, k, k)`` 0/1 float mask ``M`` of Sec. 3.1 that passes ``positions`` ``(M, m)``."""
    mask = torch.zeros(positions.shape[0], k * k, device=positions.device)
    mask.scatter_(1, positions, 1.0)
    return mask.view(-1, k, k)


def masked_dense_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, positions: torch.Tensor,
    stride: Pair = (1, 1), padding: Pair = (0, 0), dilation: Pair = (1, 1), groups: int = 1,
) -> torch.Tensor:
    """The reference DCS convolution: the dense ``k x k`` convolution with the masked kernel
    ``K = M * \\mathcal{K}`` (Sec. 3.1). Per-sample positions run as one grouped convolution
    over the batch."""
    k = weight.shape[-1]
    mask = position_mask(positions.to(weight.device), k).to(weight.dtype)  # (M, k, k)
    if positions.shape[0] == 1:
        return F.conv2d(x, weight * mask[0], bias, stride, padding, dilation, groups)
    n_batch, c_in, h, w = x.shape
    _check_per_sample(positions, n_batch)
    # one masked kernel per sample: (N * C_out, C_in / groups, k, k)
    kernels = (weight.unsqueeze(0) * mask[:, None, None]).reshape(-1, *weight.shape[1:])
    out = F.conv2d(
        x.reshape(1, n_batch * c_in, h, w),
        kernels,
        None,
        stride,
        padding,
        dilation,
        groups * n_batch,
    )
    out = out.view(n_batch, weight.shape[0], *out.shape[2:])
    return _add_bias(out, bias)


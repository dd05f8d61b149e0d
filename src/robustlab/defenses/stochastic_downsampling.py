"""Stochastic Downsampling (``stochastic-downsampling.txt``, Sec. 3, Eq. 3; Appendix C).

A strided convolution becomes the same convolution at stride 1 followed by a Monte-Carlo
estimate of each output pixel's footprint integral: ``spp`` bilinear samples at random
positions inside the footprint, averaged (Eq. 3)::

    F_down[u, v] = 1/n * sum_i F(alpha * x_i, alpha * y_i),  x_i ~ U[u, u+1],  y_i ~ U[v, v+1]

``F(., .)`` is bilinear interpolation with pixel ``k`` covering ``[k, k + 1)`` (its centre at
``k + 1/2``, ``grid_sample``'s ``align_corners=False`` convention) and border padding. Under this
convention the centre sample of a 2x2 footprint is exactly the 2x2 box average, which is what
``deterministic=True`` computes.

Where the paper is silent this follows the public layer (Appendix C): one jitter tensor per
forward, shared by the whole batch and all channels, redrawn every forward (``per_sample=True``
draws one per sample instead); ``normal`` jitter is ``0.5 + normal_std * N(0, 1)`` output pixels,
not clipped. It departs from the public layer where that layer is wrong or wasteful:

- sample positions are built from integer pixel indices (the public layer's
  ``arange(-1, 1, 2 / res)`` yields ``res + 1`` points for some sizes and then crashes);
- the output size is ``ceil(H / factor)``, which is exactly the output size of the strided
  convolution the layer replaces (``floor((H' - 1) / s) + 1`` for the stride-1 map ``H'``), or
  a fixed ``size``;
- the input is never copied ``spp`` times: the samples are taken in turn from the one input and
  reduced as they come, and (for ``mean``/``sum``) the backward pass accumulates the input
  gradient sample by sample in one buffer, so the extra memory does not grow with ``spp``
  (the tiled version holds ``spp`` input copies and ``spp`` input-sized gradients). That backward is first-order
  only; ``memory_efficient=False`` gives the plain autograd loop, which supports double
  backward (gradient-norm regularizers) at the cost of one input-sized gradient per sample.

The default ``spp=2`` is the paper's (Sec. 3 and its SPP ablation, Table 5); the public layer
defaults to 16.

Two layers can share one jitter draw through a :class:`SharedJitter` link (``jitter_link``):
``convert_downsampling(..., shortcut_jitter="shared")`` links the SD layer of a residual block's
1x1 projection shortcut to the one of its main path, so both sample the same offsets inside
their (equal-sized) output pixels. The paper and the public layer do not say; by default every
layer draws its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..core import InputError, check_number, check_positive_int
from ..core.randomness import Stochastic

Jitter = Literal["uniform", "normal"]
Reduction = Literal["mean", "sum", "min", "max"]

_REDUCTIONS = ("mean", "sum", "min", "max")
_JITTERS = ("uniform", "normal")


def _pair(value: int | float | tuple[int, int] | list[int] | None, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InputError(f"{what} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value  # type: ignore[assignment]
    if int(a) != a or int(b) != b or int(a) < 1 or int(b) < 1:
        raise InputError(f"{what} must be positive integers, got {value!r}")
    return int(a), int(b)


def _sample(x: torch.Tensor, grid: torch.Tensor, i: int) -> torch.Tensor:
    n, _, oh, ow, _ = grid.shape
    g = grid[:, i].expand(x.shape[0], oh, ow, 2)
    return F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False)


class _MonteCarloBilinear(torch.autograd.Function):
    """``scale * sum_i grid_sample(x, grid[:, i])`` with a backward that accumulates in place.

    Autograd on the plain loop creates one input-sized gradient per sample before they are
    summed; this backward adds each sample's gradient into a single buffer as it comes, so its
    extra memory is that buffer, one sample's gradient and one output-sized map, whatever
    ``spp`` is.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        out = _sample(x, grid, 0)
        for i in range(1, grid.shape[1]):
            out.add_(_sample(x, grid, i))
        if scale != 1.0:
            out.mul_(scale)
        ctx.save_for_backward(x, grid)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        x, grid = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        n = x.shape[0]
        m, k, oh, ow, _ = grid.shape  # m is 1 (shared jitter) or n (per-sample jitter)
        go = (grad_out * ctx.scale).contiguous()
        grad_x = torch.zeros_like(x, memory_format=torch.contiguous_format)
        # grid_sampler_2d_backward returns a fresh input-sized gradient per call; slicing the
        # batch into _CHUNKS parts shrinks that temporary to 1/_CHUNKS of the input
        step = max(1, -(-n // _CHUNKS))
        for a in range(0, n, step):
            b = min(n, a + step)
            xs = x[a:b]
            for i in range(k):
                g = (grid[:, i] if m == 1 else grid[a:b, i]).expand(b - a, oh, ow, 2).contiguous()
                gi, _ = torch.ops.aten.grid_sampler_2d_backward(go[a:b], xs, g, 0, 1, False, [True, False])
                grad_x[a:b].add_(gi)  # modes 0, 1: bilinear, border
                del gi
        return grad_x, None, None


# One slice: on 2 CPU cores, 8 slices made the backward 2.9x slower (the kernel's cost per call
# dominates), for a temporary of 2 MiB instead of 16 MiB on a (32, 128, 32, 32) input.
_CHUNKS = 1


class SharedJitter:
    """One jitter draw per forward shared by two :class:`StochasticDownsample` layers.

    Whichever linked layer runs first in a forward draws from its own generator and leaves the
    draw pending; the other layer takes it (the draw is then spent), so the two use the same
    offsets in every forward that runs both, whatever order the block's code calls them in. A
    layer never takes its own pending draw: called twice in a row, it draws twice. Inside
    :func:`~robustlab.core.randomness.frozen` each layer caches what it took, so the pair stays
    on one shared path until :func:`~robustlab.core.randomness.resample` (which clears the link).
    """

    def __init__(self) -> None:
        self._pending: tuple[int, Hashable, torch.Tensor] | None = None

    def take(self, layer: object, key: Hashable, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The partner's pending draw for ``key``, or a new ``draw()`` left pending for it."""
        pending = self._pending
        if pending is not None and pending[0] != id(layer) and pending[1] == key:
            self._pending = None
            return pending[2]
        value = draw()
        self._pending = (id(layer), key, value)
        return value

    def clear(self) -> None:
        """Drop a pending draw (a new inference path starts)."""
        self._pending = None

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedJitter:
        return SharedJitter()  # a copied model's pair gets one fresh link (deepcopy memoizes it)


class StochasticDownsample(Stochastic):
    """Downsample a feature map by Monte-Carlo bilinear sampling of each output pixel's footprint.

    Args:
        factor: downsampling factor (int or ``(fy, fx)``; default 2); the output is
            ``ceil(H / fy)`` by ``ceil(W / fx)``.
        size: a fixed output size ``(H_out, W_out)`` instead.
        spp: samples per output pixel (the paper uses 2; Table 5 ablates 1-16).
        jitter: ``"uniform"`` (``U[0, 1)`` of an output pixel, Eq. 3) or ``"normal"``.
        normal_std: std of the ``normal`` jitter, in output pixels (public layer: 1).
        reduction: how the samples combine: ``mean`` (Eq. 3), ``sum``, ``min`` or ``max``.
        per_sample: draw a separate jitter tensor for every sample of the batch.
        deterministic: sample only the pixel centres (one sample; the deterministic twin used
            for transfer attacks). For a factor of 2 on an even-sized map this is the 2x2 box
            average; on odd sizes the footprint is ``H / H_out`` input pixels (e.g. 7 -> 4:
            1.75), so it is a bilinear blend, not a box average.
        memory_efficient: for ``mean``/``sum``, a first-order backward that accumulates the
            input gradient in one buffer; ``False`` for double backward.
    """

    def __init__(
        self,
        factor: int | tuple[int, int] | None = None,
        *,
        size: tuple[int, int] | None = None,
        spp: int = 2,
        jitter: Jitter = "uniform",
        normal_std: float = 1.0,
        reduction: Reduction = "mean",
        per_sample: bool = False,
        deterministic: bool = False,
        memory_efficient: bool = True,
    ) -> None:
        super().__init__()
        if factor is not None and size is not None:
            raise InputError("StochasticDownsample takes factor= or size=, not both")
        if factor is None and size is None:
            factor = 2
        self.factor = _pair(factor, "factor")
        self.size = _pair(size, "size")
        check_positive_int(spp, "spp")
        if jitter not in _JITTERS:
            raise InputError(f"unknown jitter {jitter!r}; use one of {', '.join(_JITTERS)}")
        if reduction not in _REDUCTIONS:
            raise InputError(f"unknown reduction {reduction!r}; use one of {', '.join(_REDUCTIONS)}")
        check_number(normal_std, "normal_std", 0)
        self.spp = spp
        self.jitter = jitter
        self.normal_std = float(normal_std)
        self.reduction = reduction
        self.per_sample = bool(per_sample)
        self.deterministic = bool(deterministic)
        self.memory_efficient = bool(memory_efficient)
        self.jitter_link: SharedJitter | None = None

    @property
    def stochastic_active(self) -> bool:
        """Random unless ``deterministic`` (centre sampling)."""
        return not self.deterministic

    @property
    def rowwise(self) -> bool:
        """With ``per_sample``: the jitter is drawn with one i.i.d. slice per row
        (``_draw_jitter(n, ...)``; a linked partner takes the same per-row draw, still
        independent across rows). The default shares one jitter tensor by the whole batch: not
        row-wise."""
        return self.per_sample and not self.deterministic

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """The output size for an ``h`` x ``w`` input."""
        if self.size is not None:
            return self.size
        assert self.factor is not None
        return math.ceil(h / self.factor[0]), math.ceil(w / self.factor[1])

    def extra_repr(self) -> str:
        where = f"factor={self.factor}" if self.factor is not None else f"size={self.size}"
        if self.deterministic:
            return f"{where}, deterministic=True"
        return (f"{where}, spp={self.spp}, jitter={self.jitter!r}, reduction={self.reduction!r}"
                + (f", normal_std={self.normal_std}" if self.jitter == "normal" else "")
                + (", per_sample=True" if self.per_sample else "")
                + (", shared_jitter=True" if self.jitter_link is not None else ""))

    def clear_draws(self) -> None:
        """Forget cached draws, and a draw pending on the shared-jitter link."""
        super().clear_draws()
        if self.jitter_link is not None:
            self.jitter_link.clear()

    def _draw_jitter(self, n: int, oh: int, ow: int, device: torch.device) -> torch.Tensor:
        shape = (n, self.spp, oh, ow, 2)
        key = (n, self.spp, oh, ow)

        def sample(g: torch.Generator) -> torch.Tensor:
            if self.jitter == "uniform":
                return torch.rand(shape, generator=g, device=device)
            return 0.5 + self.normal_std * torch.randn(shape, generator=g, device=device)

        link = self.jitter_link
        if link is None:
            return self.draw(sample, key=key, device=device)
        return self.draw(lambda g: link.take(self, key, lambda: sample(g)), key=key, device=device)

    def forward(self, x: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        """Downsample ``x`` (N, C, H, W).

        Args:
            x: the feature map.
            jitter: optional fixed offsets inside each output pixel, in output pixels, last axis
                ``(x, y)``: shape ``(spp, H_out, W_out, 2)`` (shared by the batch) or
                ``(N, spp, H_out, W_out, 2)``. Default: drawn from the layer's generator.
        """
        if x.dim() != 4:
            raise InputError(f"StochasticDownsample expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        oh, ow = self.output_size(h, w)
        if jitter is None:
            if self.deterministic:
                jitter = torch.full((1, 1, oh, ow, 2), 0.5, device=x.device)
            else:
                jitter = self._draw_jitter(n if self.per_sample else 1, oh, ow, x.device)
        else:
            if jitter.dim() == 4:
                jitter = jitter.unsqueeze(0)
            if jitter.dim() != 5 or jitter.shape[0] not in (1, n) or tuple(jitter.shape[2:]) != (oh, ow, 2):
                raise InputError(
                    f"jitter must have shape (spp, {oh}, {ow}, 2) or ({n}, spp, {oh}, {ow}, 2), "
                    f"got {tuple(jitter.shape)}"
                )
            jitter = jitter.to(x.device)
        jitter = jitter.to(x.dtype)
        # Normalized grid_sample coordinates of output pixel u's left edge: -1 + 2 u / out.
        gy = torch.arange(oh, device=x.device, dtype=x.dtype).view(1, 1, oh, 1)
        gx = torch.arange(ow, device=x.device, dtype=x.dtype).view(1, 1, 1, ow)
        px = (gx + jitter[..., 0]) * (2.0 / ow) - 1.0
        py = (gy + jitter[..., 1]) * (2.0 / oh) - 1.0
        grid = torch.stack((px, py), dim=-1)  # (n or 1, spp, oh, ow, 2)
        k = grid.shape[1]
        if self.reduction in ("mean", "sum") and self.memory_efficient and k > 1:
            return _MonteCarloBilinear.apply(x, grid, 1.0 / k if self.reduction == "mean" else 1.0)
        out: torch.Tensor | None = None
        for i in range(k):
            s = _sample(x, grid, i)
            if out is None:
                out = s
            elif self.reduction in ("mean", "sum"):
                out = out + s
            elif self.reduction == "min":
                out = torch.minimum(out, s)
            else:
                out = torch.maximum(out, s)
        assert out is not None
        if self.reduction == "mean" and grid.shape[1] > 1:
            out = out / grid.shape[1]
        return out


__all__ = ["SharedJitter", "StochasticDownsample"]

"""Analyses of DCS (``deformable-conv-stochasticity.txt``, Sec. 4.2-4.3, Sec. 5.3.3, Appendix A).

- :func:`gradient_cosine`: the gradient cosine similarity between two inference paths (Eq. 6),
  per sample, on the input feature map of a chosen layer (or on the image);
- :func:`position_classes`: the partition of a ``k x k`` window into ``X^s`` (positions the first
  path's kernel uses), ``X^g`` (positions other output locations' kernels of the first path reach)
  and ``X^u`` (the rest) of Sec. 4.2 and Fig. 2;
- :func:`split_gradient_similarity`: Fig. 4b: the cosine between a first path and second paths
  whose kernel lies entirely in ``X^s``, ``X^g`` or ``X^u``;
- :func:`lemma1_upper_bound`, :func:`lemma1_upper_bound_tight`, :func:`lemma2_lower_bound` and
  :func:`n_bounds`: the bounds on the number ``n`` of kernel positions (Eq. 8, 11, 12; Appendix
  A, Eq. 19-21).

The package imports ``core`` and ``attacks`` only: a DCS layer is met through core's randomness
protocol (``frozen``, ``resample``) and, for the designed kernel pairs of Fig. 4b, through the
small duck-typed interface :class:`KernelPathLayer` (which
:class:`robustlab.defenses.RandomKernelConv2d` provides).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import logits_of
from ..core import InputError, check_number
from ..core.randomness import frozen, resample

__all__ = [
    "POSITION_CLASSES",
    "KernelPathLayer",
    "NBounds",
    "gradient_cosine",
    "lemma1_upper_bound",
    "lemma1_upper_bound_tight",
    "lemma2_lower_bound",
    "n_bounds",
    "position_classes",
    "split_gradient_similarity",
]

POSITION_CLASSES = ("s", "g", "u")
"""Labels of :func:`position_classes`: 0 = ``X^s``, 1 = ``X^g``, 2 = ``X^u``."""


@runtime_checkable
class KernelPathLayer(Protocol):
    """What :func:`split_gradient_similarity` needs of a random-kernel layer: its window size,
    stride, ``n``, and a context that fixes its positions (flat window indices)."""

    kernel_size: int
    n: int
    stride: tuple[int, int]

    def use_positions(self, positions: torch.Tensor) -> contextlib.AbstractContextManager[object]:
        """Use ``positions`` instead of drawing inside the context."""
        ...


# ------------------------------------------------------------------------------ similarities
def _input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: nn.Module | None
) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. ``layer``'s input (or ``x``), one forward."""
    x = x.detach().requires_grad_(True)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if not captured:
            captured.append(inputs[0])

    handle = layer.register_forward_pre_hook(hook) if layer is not None else None
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(logits_of(model(x)), y, reduction="sum")
            if layer is not None and not captured:
                raise InputError(
                    f"the layer {type(layer).__name__} was not run by the model's forward"
                )
            target = captured[0] if layer is not None else x
            (grad,) = torch.autograd.grad(loss, target)
    finally:
        if handle is not None:
            handle.remove()
    return grad.detach()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1, eps=1e-30).to(
        a.dtype
    )


def gradient_cosine(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, layer: nn.Module | None = None
) -> torch.Tensor:
    """Per-sample gradient cosine similarity between two random inference paths (Eq. 6):
    ``cos(grad_X, grad'_X)``, the gradient of the cross-entropy on the attacked path and on the
    inference path, taken w.r.t. ``layer``'s input feature map ``X`` (Sec. 4.2) or w.r.t. the
    image when ``layer`` is ``None``.

    Each path is one draw of every random layer (:func:`~robustlab.core.randomness.frozen`,
    then :func:`~robustlab.core.randomness.resample` for the second). Call ``model.eval()``
    first, so batch norm does not mix samples.
    """
    with frozen(model):
        resample(model)
        first = _input_gradient(model, x, y, layer)
        resample(model)
        second = _input_gradient(model, x, y, layer)
    return _cosine(first, second)


def position_classes(
    first: torch.Tensor | list[int], kernel_size: int, stride: int | tuple[int, int] = 1
) -> torch.Tensor:
    """The ``X^s`` / ``X^g`` / ``X^u`` label (0, 1, 2) of every position of a ``k x k`` window
    (Sec. 4.2, Fig. 2), as a ``(k, k)`` long tensor.

    ``first`` are the flat positions (``r * k + c``) the first path's kernel uses at output
    location ``i``: ``X^s``. The same kernel at the neighbouring output locations ``i + z``
    (``z != 0``) reaches window offset ``p + S z`` for each ``p`` in ``X^s``, so a position ``o``
    not in ``X^s`` is in ``X^g`` when ``o - p`` is a multiple of the stride (per axis) for some
    ``p`` in ``X^s``; every other position is in ``X^u``. With stride 1 ``X^u`` is empty.
    """
    k = int(kernel_size)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    flat = torch.as_tensor(first, dtype=torch.long).flatten()
    if flat.numel() == 0 or int(flat.min()) < 0 or int(flat.max()) >= k * k:
        raise InputError(
            f"first positions must be non-empty flat indices in [0, {k * k}), got {flat.tolist()}"
        )
    labels = torch.full((k, k), 2, dtype=torch.long)
    rows = torch.arange(k).view(k, 1)
    cols = torch.arange(k).view(1, k)
    for p in flat.tolist():
        pr, pc = divmod(p, k)
        reach = ((rows - pr) % sh == 0) & ((cols - pc) % sw == 0)
        labels[reach] = 1
    for p in flat.tolist():
        labels[p // k, p % k] = 0
    return labels


def split_gradient_similarity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: nn.Module,
    first: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Fig. 4b: per-sample cosine (Eq. 6, on ``layer``'s input) between the path whose kernel
    uses ``first`` and second paths whose kernel takes its points only from ``X^s``, ``X^g`` or
    ``X^u`` (:func:`position_classes`), the designed kernel pairs of Sec. 5.3.3 / Appendix B.2.

    The second kernel takes ``min(n, |class|)`` positions of the class, drawn from
    ``generator``; a class with no position gives NaN. Every other random layer of the model
    keeps one draw for all paths (:func:`~robustlab.core.randomness.frozen`).

    Args:
        model: the network (eval mode).
        x, y: the batch.
        layer: the random-kernel layer (a :class:`KernelPathLayer`).
        first: the first kernel's flat positions; default ``n`` positions drawn from ``generator``.
        generator: source of the drawn positions (CPU).

    Returns:
        ``{"s": ..., "g": ..., "u": ...}``, each a ``(N,)`` tensor.
    """
    if not isinstance(layer, KernelPathLayer):
        raise InputError(
            f"{type(layer).__name__} has no kernel_size / n / stride / use_positions: "
            "pass the model's random-kernel (DCS) layer"
        )
    k, n = int(layer.kernel_size), int(layer.n)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if first is None:
        first = torch.randperm(k * k, generator=gen)[:n].sort().values
    first = torch.as_tensor(first, dtype=torch.long).flatten()
    labels = position_classes(first, k, layer.stride).flatten()
    out: dict[str, torch.Tensor] = {}
    with frozen(model):
        with layer.use_positions(first.to(x.device)):
            reference = _input_gradient(model, x, y, layer)
        for index, name in enumerate(POSITION_CLASSES):
            members = (labels == index).nonzero().flatten()
            if members.numel() == 0:
                out[name] = torch.full((x.shape[0],), float("nan"), dtype=x.dtype, device=x.device)
                continue
            pick = (
                members[torch.randperm(members.numel(), generator=gen)[: min(n, members.numel())]]
                .sort()
                .values
            )
            with layer.use_positions(pick.to(x.device)):
                out[name] = _cosine(reference, _input_gradient(model, x, y, layer))
    return out


# ------------------------------------------------------------------------------------ bounds
def _check(what: str, value: float, minimum: float = 0.0, strict: bool = False) -> float:
    return check_number(value, what, minimum, low_open=strict)


def lemma1_upper_bound(stride: int, eps_c: float) -> float:
    """Lemma 1 (Eq. 8; Appendix A.1, Eq. 21): to keep the expected gradient cosine similarity
    between paths below ``eps_c``, ``n <= S^2 * eps_c``."""
    s = _check("stride", stride, 1)
    return s * s * _check("eps_c", eps_c)


def lemma1_upper_bound_tight(
    kernel_size: int, stride: int, eps_c: float, c_g: float = 1.0
) -> float:
    """The bound of Lemma 1 before loosening (Appendix A.1, Eq. 19)::

        n <= (k^2 eps_c + (S^2 floor(k/S)^2 - k^2) C^g) / (1 + (floor(k/S)^2 - 1) C^g)

    ``C^g`` is the cosine similarity at ``X^g`` points; its worst case ``C^g = 1`` (the default)
    gives Eq. 20, ``n <= k^2 (eps_c - 1) / floor(k/S)^2 + S^2``.
    """
    k = _check("kernel_size", kernel_size, 1)
    s = _check("stride", stride, 1)
    eps = _check("eps_c", eps_c)
    cg = _check("c_g", c_g)
    a2 = math.floor(k / s) ** 2
    if a2 == 0:
        raise InputError(
            f"the bound needs k >= S (floor(k/S) >= 1), got k={kernel_size}, S={stride}"
        )
    return (k * k * eps + (s * s * a2 - k * k) * cg) / (1 + (a2 - 1) * cg)


def lemma2_lower_bound(kernel_size: int, stride: int, eps_l: float, size: float) -> float:
    """Lemma 2 (Eq. 11; Appendix A.2, Eq. 27): to keep the expected normalized L1 distance
    between two paths' output feature maps below ``eps_l``::

        n >= (S^2 - 2 k S + k^2 + k^4 (1 - eps_l S^2 / N)) / (4 k S)

    Args:
        kernel_size: ``k``.
        stride: ``S``.
        eps_l: the bound on the inconsistency.
        size: ``N``, the size of the input feature map including padding (Appendix A.2, note 1).
    """
    k = _check("kernel_size", kernel_size, 1)
    s = _check("stride", stride, 1)
    eps = _check("eps_l", eps_l)
    big_n = _check("size N", size, 0, strict=True)
    return (s * s - 2 * k * s + k * k + k**4 * (1 - eps * s * s / big_n)) / (4 * k * s)


@dataclass(frozen=True)
class NBounds:
    """The data-independent range of ``n`` (Eq. 12).

    Attributes:
        lower: Lemma 2's lower bound (Eq. 11).
        upper: Lemma 1's upper bound (Eq. 8).
        feasible: the integers ``1 <= n <= k^2`` inside ``[lower, upper]`` (may be empty).
    """

    lower: float
    upper: float
    feasible: tuple[int, ...]


def n_bounds(kernel_size: int, stride: int, eps_c: float, eps_l: float, size: float) -> NBounds:
    """Eq. 12: ``lemma2_lower_bound <= n <= lemma1_upper_bound`` and the integers between."""
    lower = lemma2_lower_bound(kernel_size, stride, eps_l, size)
    upper = lemma1_upper_bound(stride, eps_c)
    start = max(1, math.ceil(lower))
    stop = min(int(kernel_size) ** 2, math.floor(upper))
    return NBounds(lower, upper, tuple(range(start, stop + 1)))

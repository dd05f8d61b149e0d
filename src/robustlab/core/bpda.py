"""The BPDA protocol: exact forward, surrogate backward.

Backward Pass Differentiable Approximation (Athalye et al., 2018, "Obfuscated Gradients Give a
False Sense of Security", Sec. 4.1) attacks a layer whose forward is non-differentiable or
shattering (quantization, top-T selection, hard thresholds) by running its exact forward while
backpropagating through a differentiable approximation. A layer declares itself by subclassing
:class:`BPDALayer` and writing :meth:`~BPDALayer.forward_exact` (and, for ``mode="smooth"``,
:meth:`~BPDALayer.surrogate`). Attacks stay unaware of which layers these are: an evaluator (or
an attack built with ``bpda=...``) runs them inside ``with bpda(model, mode):``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar, Literal

import torch
from torch import nn

from .errors import InputError

__all__ = ["BPDA_MODES", "BPDABlock", "BPDALayer", "BPDAMode", "BPDAScope", "bpda", "bpda_layers", "straight_through"]

BPDAMode = Literal["identity", "smooth", "bypass"]
_MODES = ("identity", "smooth", "bypass")
BPDA_MODES: tuple[str, ...] = _MODES
"""Every mode :func:`bpda` accepts."""

BPDAScope = Literal["layer", "block"]


def straight_through(exact: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Value of ``exact`` with the gradient of ``surrogate``: ``exact.detach() + s - s.detach()``.

    ``s - s.detach()`` is exactly zero in floating point, so the forward value is bit-identical
    to ``exact``.
    """
    if exact.shape != surrogate.shape:
        raise InputError(
            f"BPDA needs the exact output and the surrogate to have one shape, got "
            f"{tuple(exact.shape)} and {tuple(surrogate.shape)}"
        )
    return exact.detach() + (surrogate - surrogate.detach())


class BPDALayer(nn.Module):
    """Base class of layers with a non-differentiable forward and a declared backward surrogate.

    Subclasses implement :meth:`forward_exact` and, if a smooth approximation exists,
    :meth:`surrogate`; they do not override ``forward``. Outside :func:`bpda` the layer is its
    exact forward with its own autograd gradient (often zero or undefined). Inside
    ``bpda(model, "identity")`` the backward is the identity (straight-through; the output must
    have the input's shape); inside ``bpda(model, "smooth")`` it is the surrogate's gradient.

    :attr:`bpda_scope` says which modes reach the layer: ``"layer"`` (a single non-differentiable
    operation such as a quantizer: ``identity`` and ``smooth``) or ``"block"`` (a whole
    sub-network that approximates the identity, such as an autoencoding front end, see
    :class:`BPDABlock`: only ``bypass``, which backpropagates through it as the identity).
    """

    bpda_scope: ClassVar[BPDAScope] = "layer"

    def __init__(self) -> None:
        super().__init__()
        self._rl_bpda_mode: BPDAMode | None = None

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's real (non-differentiable) computation."""
        raise NotImplementedError

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable approximation of :meth:`forward_exact` (for ``mode="smooth"``)."""
        raise NotImplementedError(
            f"{type(self).__name__} declares no smooth surrogate; use bpda(model, 'identity')"
        )

    @property
    def bpda_mode(self) -> BPDAMode | None:
        """The active BPDA mode, or ``None`` outside a :func:`bpda` context."""
        return getattr(self, "_rl_bpda_mode", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.bpda_mode
        if mode is None or not torch.is_grad_enabled():
            return self.forward_exact(x)
        with torch.no_grad():
            exact = self.forward_exact(x)
        if mode in ("identity", "bypass"):
            return straight_through(exact, x)
        return straight_through(exact, self.surrogate(x))


class BPDABlock(BPDALayer):
    """A sub-network whose backward the ``"bypass"`` mode replaces by the identity.

    Athalye et al. (2018, Sec. 4.1) attack input-purifying front ends ``g`` with ``g(x) ~ x`` by
    backpropagating through them as if they were the identity. Wrapping such a front end (its
    output has the input's shape) in a block lets every attack do that with ``bpda="bypass"``:
    the forward is the exact ``block(x)``, the backward skips it, while ``"identity"`` and
    ``"smooth"`` leave the block differentiable and reach the layer-scope BPDA layers inside it
    (the sparse randomized encoder's W-AIGA vs W-NFGA attack modes, Bakiskan et al., Sec. 4).

    Args:
        inner: the sub-network; its output must have its input's shape. A subclass may leave
            it out and write :meth:`forward_exact` itself.
    """

    bpda_scope: ClassVar[BPDAScope] = "block"

    def __init__(self, inner: nn.Module | None = None) -> None:
        super().__init__()
        if inner is not None:
            self.inner = inner

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        """``inner(x)``."""
        inner = getattr(self, "inner", None)
        if inner is None:
            raise NotImplementedError(f"{type(self).__name__} has no inner module; write forward_exact")
        out: torch.Tensor = inner(x)
        return out


def bpda_layers(model: nn.Module) -> list[BPDALayer]:
    """Every :class:`BPDALayer` submodule of ``model`` (``model`` itself included)."""
    return [m for m in model.modules() if isinstance(m, BPDALayer)]


@contextlib.contextmanager
def bpda(model: nn.Module, mode: BPDAMode = "identity") -> Iterator[nn.Module]:
    """Run every BPDA layer of ``model`` with its exact forward and a surrogate backward.

    Args:
        model: any module; layers that are not :class:`BPDALayer` are untouched.
        mode: ``"identity"`` backpropagates straight through (Athalye et al., 2018, Sec. 4.1,
            the identity approximation); ``"smooth"`` through each layer's :meth:`surrogate`;
            ``"bypass"`` backpropagates through every :class:`BPDABlock` as the identity (the
            layers inside it then need no surrogate). ``identity`` and ``smooth`` reach only
            layer-scope BPDA layers, ``bypass`` only blocks.

    Nested contexts restore the outer mode on exit.
    """
    if mode not in _MODES:
        raise InputError(f"unknown BPDA mode {mode!r}; use one of {', '.join(_MODES)}")
    scope = "block" if mode == "bypass" else "layer"
    layers = [m for m in bpda_layers(model) if m.bpda_scope == scope]
    previous = [m.bpda_mode for m in layers]
    for m in layers:
        m._rl_bpda_mode = mode
    try:
        yield model
    finally:
        for m, p in zip(layers, previous, strict=True):
            m._rl_bpda_mode = p

"""Inference cost of a configuration: FLOPs, activation memory and parameters (Fig. 7).

Xu & Yang, "Understanding Adversarial Robustness from Feature Maps of Convolutional Layers"
(``papers/feature-map-strides``), Sec. IV-B ("Computational efficiency", Fig. 7) compares the
FLOPs and the total memory of one inference on a 32x32 image for upsampled inputs and shrunk
strides. The paper does not name its counter; here the quantities are defined as follows.

- ``flops``: what :class:`torch.utils.flop_counter.FlopCounterMode` counts for one forward, i.e.
  two FLOPs per multiply-add of the matrix products and convolutions (a ``Conv2d`` costs
  ``2 * N * C_in / groups * C_out * k_h * k_w * H_out * W_out``, a ``Linear``
  ``2 * N * in * out``); biases, activations, normalization and pooling are not counted.
- ``activation_bytes``: the bytes of the outputs of every leaf module (one without children)
  during one forward, each tensor storage counted once: a view (``Flatten``, ``view``) or an
  in-place op (``ReLU(inplace=True)``) returns a storage already counted and adds nothing, and
  the input itself is not counted. This is the memory a forward keeps alive for a backward
  pass when nothing is freed early (torchsummary's "forward pass size", without its doubling
  and with views removed). Outputs of functional calls inside a module's ``forward`` that are
  not leaf-module outputs (``x + shortcut``, ``F.relu``) are not seen by the hooks.
- ``params``: the number of parameters (shared ones once).

The forward runs under ``torch.no_grad`` with every submodule in eval mode (so batch-norm
statistics are not touched); each module's mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..core.errors import InputError

__all__ = ["Cost", "cost"]


@dataclass(frozen=True)
class Cost:
    """The cost of one forward at a given input shape (see the module docstring).

    Attributes:
        flops: floating-point operations (a multiply-add counts 2).
        activation_bytes: bytes of the distinct leaf-module output storages.
        params: number of parameters.
    """

    flops: int
    activation_bytes: int
    params: int

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready dict."""
        return asdict(self)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) module output."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _reference(model: nn.Module) -> torch.Tensor | None:
    """A parameter or buffer of ``model`` (for its device and dtype), if any."""
    for parameter in model.parameters():
        return parameter
    for buffer in model.buffers():
        if buffer.is_floating_point():
            return buffer
    return None


def cost(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    """FLOPs, activation bytes and parameters of one forward of ``model`` (Fig. 7).

    Args:
        model: the network; it runs on a zero input on its own device and dtype (float32 on the
            CPU when it has no parameters).
        input_shape: the full input shape, batch included, e.g. ``(1, 3, 32, 32)``.

    Raises:
        InputError: for an empty or non-positive ``input_shape``.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise InputError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
    reference = _reference(model)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    x = torch.zeros(shape, device=device, dtype=dtype)

    seen: set[tuple[str, int]] = {(str(device), x.untyped_storage().data_ptr())}
    kept: list[torch.Tensor] = []  # holds outputs alive so a freed storage's address is not reused
    activation_bytes = 0

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal activation_bytes
        for tensor in _tensors(output):
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            if key in seen:
                continue
            seen.add(key)
            kept.append(tensor)
            activation_bytes += storage.nbytes()

    modes = {module: module.training for module in model.modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    params = sum(p.numel() for p in model.parameters())
    return Cost(flops=int(counter.get_total_flops()), activation_bytes=activation_bytes, params=params)

"""Build a network's skeleton without its memory: every new tensor lands on the ``meta`` device.

``robustlab.load`` builds the architecture a checkpoint header describes this way first and
compares its tensor shapes with the file's before allocating anything real (house plan,
"Training": a header is untrusted input). A header can otherwise ask for a network of any size:
``wrn-34-10`` with ``widen_factor=300`` is 41.5G parameters (166 GB) from a 320 KB file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.overrides import TorchFunctionMode

from ..core import CheckpointError

T = TypeVar("T")

_ALLOCATORS = frozenset(
    {
        torch.empty,
        torch.empty_strided,
        torch.empty_permuted,
        torch.zeros,
        torch.ones,
        torch.full,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.eye,
    }
)
"""The factories parameters and buffers come from. ``torch.arange``, ``torch.linspace`` and
``torch.tensor`` are left on the CPU: constructors compute sizes with them (RegNet's widths,
timm's drop-path rates) and read the values back, which a meta tensor cannot do."""


_VALUE_FILLS = frozenset(
    {
        *(
            getattr(torch.nn.init, name)
            for name in (
                "uniform_",
                "normal_",
                "trunc_normal_",
                "constant_",
                "ones_",
                "zeros_",
                "eye_",
                "dirac_",
                "xavier_uniform_",
                "xavier_normal_",
                "kaiming_uniform_",
                "kaiming_normal_",
                "orthogonal_",
                "sparse_",
            )
        ),
        torch.Tensor.normal_,
        torch.Tensor.uniform_,
        torch.Tensor.zero_,
        torch.Tensor.fill_,
        torch.Tensor.random_,
        torch.Tensor.bernoulli_,
        torch.Tensor.exponential_,
        torch.Tensor.log_normal_,
        torch.Tensor.cauchy_,
        torch.Tensor.geometric_,
    }
)
"""In-place initializers: they change values only, and a meta tensor has none, so on a meta
tensor they return it untouched (running them would also load PyTorch's Python meta kernels,
about 150 MB and two seconds, for nothing)."""


class TooManyTensors(CheckpointError):
    """A skeleton build allocated more tensors than its limit."""


class MetaAllocations(TorchFunctionMode):
    """Inside this mode, tensor factories called without a device allocate on ``meta``.

    Args:
        max_tensors: raise :class:`TooManyTensors` once more than this many tensors were
            allocated (None: no limit), so that a recipe asking for a network far deeper than
            the file it came from stops early instead of building millions of modules.
    """

    def __init__(self, max_tensors: int | None = None) -> None:
        super().__init__()
        self.max_tensors = max_tensors
        self.allocated = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in _VALUE_FILLS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        if func in _ALLOCATORS and kwargs.get("device") is None:
            self.allocated += 1
            if self.max_tensors is not None and self.allocated > self.max_tensors:
                raise TooManyTensors(f"the recipe builds more than {self.max_tensors} tensors")
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], T], max_tensors: int | None = None) -> T:
    """Run ``build()`` with its parameters and buffers on the ``meta`` device (shapes and
    dtypes only, no memory) and return what it built.

    Raises:
        TooManyTensors: when ``build`` allocates more than ``max_tensors`` tensors.
    """
    with MetaAllocations(max_tensors):
        return build()

"""Deformable Convolution with Stochasticity (``deformable-conv-stochasticity.txt``, Sec. 4.1).

A DCS layer holds a dense ``k x k`` kernel ``\\mathcal{K}`` (the "initial kernel", Sec. 3.1) and,
in each forward propagation, samples a mask ``M`` that passes ``n`` of the ``k * k`` window
positions; the deformed kernel is ``K = M * \\mathcal{K}`` (Sec. 3.1), applied as a
convolution with the original stride (Definition 1, Eq. 5)::

    y_l = sum_{K_i in K} w(K_i) * X_{i + l}

Choices where the paper is silent, and how they are made here:

- the ``n`` positions are drawn uniformly without replacement from the ``k * k`` window and are
  the same for every input and output channel and every output location (the official
  implementation samples one mask per layer; ``per_sample=True`` draws one set per sample of
  the batch instead);
- they are redrawn at every forward ("in each forward propagation", Sec. 4.1) from the layer's
  own generator (:class:`~robustlab.core.randomness.Stochastic`); ``redraw="batch"`` keeps one
  draw until :func:`~robustlab.core.randomness.resample` (call it once per training batch;
  :class:`robustlab.train.gsat.ResampleEachBatch` does so for the :class:`~robustlab.train.Trainer`);
- :meth:`RandomKernelConv2d.excluding` makes the layer draw from the complement of a given
  position set: the training path of GSAT (Algorithm 1, step 11: "Set points in X^s as 0 and
  re-sample") never meets the positions the attack used;
- the padding keeps the replaced convolution's output size: ``p + d (k - k0) / 2`` for a
  replaced ``k0 x k0`` kernel with padding ``p`` (Sec. 4.1: "varying padding to fit the demand of
  output dimension").

Efficiency (the two kernels live in :mod:`robustlab.defenses.dcs_conv`): a dense masked
``k x k`` convolution costs ``k^2`` taps per output; the default implementation gathers the ``n`` sampled taps of the padded input into an
``(N, C * n, H_out, W_out)`` tensor and applies one ``1 x 1`` convolution (``n`` taps per output).
``implementation="dense"`` is the masked dense convolution (the reference; also what ``auto``
picks when ``n > k^2 / 8``). ``benchmarks/dcs_layer.py`` measures the two: on a 2-core CPU at
the paper's layer (64 channels, 32x32, ``k = 5``, batch 32, forward + backward) the gather took
0.71x / 0.78x the dense time for ``n = 1 / 2`` but 1.1x-2.5x for ``n = 4 ... 13``, and its peak
extra memory is higher (1.2x / 1.9x for ``n = 1 / 2``: the stacked taps are kept for the
backward pass, where the dense convolution keeps only its input).

:func:`convert_dcs` installs DCS in place of chosen convolutions, initializing the kernel from
the replaced convolution (centre-padded), and records itself as conversion ``"dcs"`` so
:func:`robustlab.load` rebuilds the model.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..core import InputError, check_int, check_positive_int, is_int
from ..core.randomness import Stochastic
from . import CONVERSIONS, record_conversion
from .dcs_conv import gather_conv, masked_dense_conv, position_mask

Redraw = Literal["forward", "batch"]
Implementation = Literal["auto", "gather", "dense"]

REDRAWS = ("forward", "batch")
IMPLEMENTATIONS = ("auto", "gather", "dense")
MAX_KERNEL_SIZE = 31
"""Largest ``k`` a DCS layer accepts (a bound: a checkpoint's recipe can name any value; the
paper's grid search, Appendix B.3, stops at 9)."""

DEFAULT_LAYERS: tuple[int, ...] = (2,)
"""The convolutions :func:`convert_dcs` replaces by default: the second ``nn.Conv2d`` of the
model in module order (1-based, the paper's counting). The paper says "unless specifically
labeled, DCS replaces the second convolutional layer" (Sec. 5.1) and chooses the second layer in
its position ablation (Appendix B.4, Fig. 7); its CIFAR paragraph of Sec. 5.1 says "the third".
For our CIFAR ResNet-18 / WRN-34-10 and torchvision's ResNets the second convolution is the
first 3x3 convolution of the first residual block (``layer1.0.conv1``), a stride-1 layer."""


def _int_pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        if isinstance(value, bool):
            raise InputError(f"{what} must be an int or a pair of ints, got {value!r}")
        return value, value
    values = tuple(value)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise InputError(f"{what} must be an int or a pair of ints, got {value!r}")
    return int(values[0]), int(values[1])


class RandomKernelConv2d(Stochastic):
    """A ``k x k`` convolution whose effective kernel keeps ``n`` randomly sampled positions
    (DCS, Sec. 4.1, Definition 1 / Eq. 5).

    The dense weight ``(C_out, C_in / groups, k, k)`` is the paper's initial kernel; a forward
    uses only the taps at the sampled positions (flat indices ``r * k + c`` into the window),
    shared by all channels. With ``n = k * k`` every position is kept and the layer is the dense
    convolution (no randomness: :attr:`stochastic_active` is ``False``).

    Draws come from the layer's own CPU generator (:class:`~robustlab.core.randomness.Stochastic`;
    positions are a few integers the gather reads on the host). Inside
    :func:`~robustlab.core.randomness.frozen` the shared positions are one path for every batch
    size (the draw's key is not the input shape); per-sample positions get one draw per batch
    size, as the protocol describes.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: the window size ``k`` (the paper's CIFAR setting is 5, Sec. 5.1).
        n: positions kept per draw (the paper's "receptive field", 2 in Sec. 5.1).
        stride, dilation, groups, bias: as :class:`torch.nn.Conv2d`.
        padding: zero padding; default ``dilation * (k - 1) // 2`` (size-preserving at stride 1).
        redraw: ``"forward"`` (a new draw at every forward, the paper's inference) or
            ``"batch"`` (one draw held until :func:`~robustlab.core.randomness.resample`).
        per_sample: a different set of positions for every sample of the batch.
        implementation: ``"gather"`` (the ``n`` taps, one 1x1 convolution), ``"dense"`` (the
            masked dense convolution) or ``"auto"`` (gather when ``n <= k * k / 8`` or per-sample:
            where ``benchmarks/dcs_layer.py`` found it faster on a CPU).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        n: int = 2,
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        redraw: Redraw = "forward",
        per_sample: bool = False,
        implementation: Implementation = "auto",
    ) -> None:
        super().__init__()
        for value, what in (
            (in_channels, "in_channels"),
            (out_channels, "out_channels"),
            (groups, "groups"),
        ):
            check_positive_int(value, f"RandomKernelConv2d {what}")
        if in_channels % groups or out_channels % groups:
            raise InputError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        check_int(kernel_size, "kernel_size", 1, MAX_KERNEL_SIZE)
        if not is_int(n, 1, kernel_size**2):
            raise InputError(f"n must be an int in [1, k * k = {kernel_size**2}], got {n!r}")
        if redraw not in REDRAWS:
            raise InputError(f"unknown redraw {redraw!r}; use one of {', '.join(REDRAWS)}")
        if implementation not in IMPLEMENTATIONS:
            raise InputError(
                f"unknown implementation {implementation!r}; use one of {', '.join(IMPLEMENTATIONS)}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.n = n
        self.stride = _int_pair(stride, "stride")
        self.dilation = _int_pair(dilation, "dilation")
        if padding is None:
            padding = (
                self.dilation[0] * (kernel_size - 1) // 2,
                self.dilation[1] * (kernel_size - 1) // 2,
            )
        self.padding = _int_pair(padding, "padding")
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise InputError(
                f"stride and dilation must be >= 1 and padding >= 0, got stride={self.stride}, "
                f"dilation={self.dilation}, padding={self.padding}"
            )
        self.groups = groups
        self.redraw: Redraw = redraw
        self.per_sample = bool(per_sample)
        self.implementation: Implementation = implementation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size)
        )
        self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        self.last_positions: torch.Tensor | None = None
        """The positions the latest forward used, ``(1 or N, m)`` flat window indices (CPU)."""
        self._held: dict[Hashable, torch.Tensor] = {}
        self._exclude: torch.Tensor | None = None
        self._fixed: torch.Tensor | None = None

    def reset_parameters(self) -> None:
        """:class:`torch.nn.Conv2d`'s initialization (Kaiming-uniform with ``a = sqrt(5)``)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size**2
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def stochastic_active(self) -> bool:
        """Random unless every window position is kept (``n = k * k``) and none is excluded."""
        return self.n < self.kernel_size**2 or self._exclude is not None

    @property
    def rowwise(self) -> bool:
        """With ``per_sample`` and ``redraw="forward"``: every forward draws one i.i.d. set of
        positions per row (:meth:`sample_positions` with ``m = N``). Not row-wise when the
        positions are shared by the batch, held across forwards (``redraw="batch"``), fixed
        (:meth:`use_positions`) or excluded per sample (:meth:`excluding` with ``N`` sets,
        which ties the draw to one batch size)."""
        return (
            self.per_sample
            and self.redraw == "forward"
            and self._fixed is None
            and (self._exclude is None or self._exclude.shape[0] == 1)
        )

    def extra_repr(self) -> str:
        out = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, n={self.n}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            out += f", dilation={self.dilation}"
        if self.groups != 1:
            out += f", groups={self.groups}"
        if self.bias is None:
            out += ", bias=False"
        if self.redraw != "forward":
            out += f", redraw={self.redraw!r}"
        if self.per_sample:
            out += ", per_sample=True"
        if self.implementation != "auto":
            out += f", implementation={self.implementation!r}"
        return out

    def clear_draws(self) -> None:
        """Forget cached draws, and the draw held by ``redraw="batch"``."""
        super().clear_draws()
        self._held.clear()

    # ------------------------------------------------------------------------------ positions
    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """The output size for an ``h`` x ``w`` input."""
        k = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (k - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (k - 1) - 1) // self.stride[1] + 1
        return ho, wo

    def _check_positions(self, positions: torch.Tensor, what: str) -> torch.Tensor:
        if positions.dim() == 1:
            positions = positions.unsqueeze(0)
        if (
            positions.dim() != 2
            or positions.shape[1] < 1
            or positions.dtype not in (torch.int64, torch.int32)
        ):
            raise InputError(
                f"{what} must be an integer tensor of shape (m,) or (1 or N, m), "
                f"got {positions.dtype} {tuple(positions.shape)}"
            )
        if positions.numel() and (
            int(positions.min()) < 0 or int(positions.max()) >= self.kernel_size**2
        ):
            raise InputError(
                f"{what} are flat window indices in [0, {self.kernel_size**2}), got "
                f"min {int(positions.min())}, max {int(positions.max())}"
            )
        return positions.long()

    def sample_positions(
        self, m: int, device: torch.device | str, generator: torch.Generator
    ) -> torch.Tensor:
        """``m`` sets of ``n`` distinct positions, sorted, uniform over the allowed ones (all
        ``k * k``, or those not excluded by :meth:`excluding`): shape ``(m, n)``."""
        k2 = self.kernel_size**2
        keys = torch.rand((m, k2), generator=generator, device=generator.device).to(device)
        if self._exclude is not None:
            excluded = self._exclude_mask(m, keys.device)
            # excluded positions sort after every allowed one
            keys = keys.masked_fill(excluded, 2.0)
        return keys.argsort(dim=1)[:, : self.n].sort(dim=1).values

    def _exclude_mask(self, m: int, device: torch.device) -> torch.Tensor:
        assert self._exclude is not None
        ex = self._exclude.to(device)
        if ex.shape[0] not in (1, m):
            raise InputError(
                f"the excluded positions are given for {ex.shape[0]} samples, the draw is for {m}"
            )
        mask = torch.zeros(ex.shape[0], self.kernel_size**2, dtype=torch.bool, device=device)
        mask.scatter_(1, ex, True)
        return mask.expand(m, -1)

    def _draw_positions(self, batch: int) -> torch.Tensor:
        """This forward's positions, drawn on the CPU from the layer's CPU generator: they are a
        few integers, read on the host by the gather, so no device synchronizes."""
        cpu = torch.device("cpu")
        m = batch if self.per_sample else 1
        token: Hashable = None if self._exclude is None else tuple(self._exclude.flatten().tolist())
        key = ("positions", m, token)

        def sample(g: torch.Generator) -> torch.Tensor:
            return self.sample_positions(m, cpu, g)

        if self.redraw == "batch" and not self.is_frozen:
            held = self._held.get(key)
            if held is None:
                held = self.draw(sample, key=key, device=cpu)
                self._held[key] = held
            return held
        return self.draw(sample, key=key, device=cpu)

    @contextlib.contextmanager
    def excluding(self, positions: torch.Tensor) -> Iterator[RandomKernelConv2d]:
        """Draw positions only from the complement of ``positions`` inside the context (GSAT,
        Algorithm 1, step 11; Sec. 4.4, Eq. 13: train on paths ``h != h_1``).

        Args:
            positions: flat window indices, ``(m,)`` or ``(1 or N, m)`` (one set per sample).
                At least ``n`` positions must stay allowed.
        """
        positions = self._check_positions(positions.detach(), "excluded positions")
        allowed = self.kernel_size**2 - int(
            torch.zeros(
                positions.shape[0], self.kernel_size**2, dtype=torch.bool, device=positions.device
            )
            .scatter_(1, positions, True)
            .sum(dim=1)
            .max()
        )
        if allowed < self.n:
            raise InputError(
                f"excluding these positions leaves {allowed} of the {self.kernel_size**2} window "
                f"positions, fewer than n = {self.n}"
            )
        previous = self._exclude
        self._exclude = positions.cpu()
        try:
            yield self
        finally:
            self._exclude = previous

    @contextlib.contextmanager
    def use_positions(self, positions: torch.Tensor) -> Iterator[RandomKernelConv2d]:
        """Use the given positions (any count ``m >= 1``) instead of drawing, inside the context:
        designed kernel pairs for the gradient-similarity analysis (Sec. 5.3.3, Fig. 4b)."""
        previous = self._fixed
        self._fixed = self._check_positions(positions.detach(), "positions")
        try:
            yield self
        finally:
            self._fixed = previous

    # -------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (N, C_in, H, W) with the kernel restricted to this forward's positions."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"RandomKernelConv2d expects an (N, {self.in_channels}, H, W) tensor, "
                f"got shape {tuple(x.shape)}"
            )
        if self._fixed is not None:
            positions = self._fixed.cpu()
            if positions.shape[0] not in (1, x.shape[0]):
                raise InputError(
                    f"fixed positions are given for {positions.shape[0]} samples, the batch has "
                    f"{x.shape[0]}"
                )
        elif self.n == self.kernel_size**2 and self._exclude is None:
            positions = torch.arange(self.n).unsqueeze(0)
        else:
            positions = self._draw_positions(x.shape[0])
        self.last_positions = positions
        return self.convolve(x, positions)

    def convolve(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The convolution with the kernel restricted to ``positions`` ``(1 or N, m)``, by the
        layer's implementation (see the class docstring)."""
        impl = self.implementation
        if impl == "auto":
            impl = (
                "gather"
                if positions.shape[0] > 1 or 8 * positions.shape[1] <= self.kernel_size**2
                else "dense"
            )
        conv = masked_dense_conv if impl == "dense" else gather_conv
        return conv(x, self.weight, self.bias, positions, self.stride, self.padding, self.dilation, self.groups)


def dcs_layers(model: nn.Module) -> list[RandomKernelConv2d]:
    """Every :class:`RandomKernelConv2d` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, RandomKernelConv2d)]


@contextlib.contextmanager
def excluding_paths(
    model: nn.Module, paths: dict[int, torch.Tensor] | Sequence[torch.Tensor]
) -> Iterator[None]:
    """Make every DCS layer of ``model`` draw from the complement of its entry in ``paths``
    (in :func:`dcs_layers` order, or keyed by ``id(layer)``) inside the context (GSAT,
    Algorithm 1, step 11)."""
    layers = dcs_layers(model)
    with contextlib.ExitStack() as stack:
        for i, layer in enumerate(layers):
            entry = (
                paths.get(id(layer))
                if isinstance(paths, dict)
                else (paths[i] if i < len(paths) else None)
            )
            if entry is not None:
                stack.enter_context(layer.excluding(entry))
        yield


# ---------------------------------------------------------------------------------- surgery
def _conv_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _resolve_layers(model: nn.Module, layers: Sequence[int | str] | int | str) -> list[str]:
    if isinstance(layers, (int, str)):
        layers = [layers]
    names = _conv_names(model)
    modules = dict(model.named_modules())
    out: list[str] = []
    for entry in layers:
        if isinstance(entry, bool) or not isinstance(entry, (int, str)):
            raise InputError(
                f"layers are 1-based convolution indices or module names, got {entry!r}"
            )
        if isinstance(entry, int):
            if not 1 <= entry <= len(names):
                raise InputError(
                    f"{type(model).__name__} has {len(names)} convolutions; layer index {entry} is "
                    "out of range (indices are 1-based, in module order)"
                )
            name = names[entry - 1]
        else:
            module = modules.get(entry)
            if isinstance(module, RandomKernelConv2d):
                raise InputError(f"layer {entry!r} is already a DCS layer")
            if not isinstance(module, nn.Conv2d):
                raise InputError(
                    f"{entry!r} is not an nn.Conv2d of {type(model).__name__} "
                    f"(convolutions: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''})"
                )
            name = entry
        if name not in out:
            out.append(name)
    if not out:
        raise InputError("convert_dcs needs at least one layer to replace")
    return out


def _numeric_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding_mode != "zeros":
        raise InputError(f"DCS pads with zeros; {conv} uses padding_mode={conv.padding_mode!r}")
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0, 0
        kh, kw = conv.kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise InputError(
                f"cannot convert {conv}: 'same' padding with an even kernel is asymmetric"
            )
        return conv.dilation[0] * (kh - 1) // 2, conv.dilation[1] * (kw - 1) // 2
    return int(conv.padding[0]), int(conv.padding[1])


def dcs_from_conv(conv: nn.Conv2d, k: int = 5, n: int = 2, **options: Any) -> RandomKernelConv2d:
    """A :class:`RandomKernelConv2d` replacing ``conv``: same channels, stride, dilation, groups
    and bias, padding grown by ``d (k - k0) / 2`` so the output size is ``conv``'s, and the
    ``k x k`` kernel initialized with ``conv``'s weights in its centre and zeros around (so with
    ``n = k * k`` the layer computes exactly ``conv``).

    Raises:
        InputError: when ``conv``'s kernel is larger than ``k`` or ``k - k0`` is odd (no centre).
    """
    k0h, k0w = conv.kernel_size
    if k0h > k or k0w > k or (k - k0h) % 2 or (k - k0w) % 2:
        raise InputError(
            f"cannot centre a {k0h}x{k0w} kernel in a {k}x{k} DCS window ({conv}); "
            "choose k >= the kernel size with k - k0 even"
        )
    ph, pw = _numeric_padding(conv)
    dh, dw = conv.dilation
    layer = RandomKernelConv2d(
        conv.in_channels,
        conv.out_channels,
        k,
        n,
        stride=conv.stride,
        padding=(ph + dh * (k - k0h) // 2, pw + dw * (k - k0w) // 2),
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        **options,
    )
    layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
    top, left = (k - k0h) // 2, (k - k0w) // 2
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, :, top : top + k0h, left : left + k0w] = conv.weight
        if conv.bias is not None and layer.bias is not None:
            layer.bias.copy_(conv.bias)
    return layer


def convert_dcs(
    model: nn.Module,
    layers: Sequence[int | str] | int | str = DEFAULT_LAYERS,
    *,
    k: int = 5,
    n: int = 2,
    redraw: Redraw = "forward",
    per_sample: bool = False,
    implementation: Implementation = "auto",
    inplace: bool = False,
) -> nn.Module:
    """Replace convolutions of ``model`` by DCS layers (Sec. 4.1; Algorithm 1, step 2).

    Works on any ``nn.Module`` holding ``nn.Conv2d`` s: robustlab's ResNets and WRN, torchvision
    ResNets, ...; every output shape stays the original's.

    Args:
        model: the network.
        layers: which convolutions: 1-based indices among the ``nn.Conv2d`` modules in module
            order (the paper's counting: "the second convolutional layer") and/or qualified
            module names. Default :data:`DEFAULT_LAYERS`, the second convolution (Sec. 5.1 and
            Appendix B.4; see there).
        k: window size (5, Sec. 5.1 and the grid search of Appendix B.3).
        n: positions kept per draw (2, the same sections).
        redraw, per_sample, implementation: see :class:`RandomKernelConv2d`.
        inplace: rewrite ``model`` itself; by default a converted deep copy is returned.

    Returns:
        The converted model; a robustlab model records the conversion (with the resolved module
        names) in its recipe, so ``robustlab.save`` / ``robustlab.load`` rebuild it.

    Raises:
        InputError: for an unknown layer, a layer that is not a convolution, a kernel larger
            than ``k``, or bad options.
    """
    # validate the options before copying the model
    RandomKernelConv2d(
        1, 1, k, n, redraw=redraw, per_sample=per_sample, implementation=implementation
    )
    out = model if inplace else copy.deepcopy(model)
    names = _resolve_layers(out, layers)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        conv = getattr(parent, attr)
        setattr(
            parent,
            attr,
            dcs_from_conv(
                conv, k, n, redraw=redraw, per_sample=per_sample, implementation=implementation
            ),
        )
    options: dict[str, Any] = {"layers": names, "k": k, "n": n}
    if redraw != "forward":
        options["redraw"] = redraw
    if per_sample:
        options["per_sample"] = True
    if implementation != "auto":
        options["implementation"] = implementation
    return record_conversion(out, "dcs", options)


def _replay(
    model: nn.Module,
    *,
    layers: Sequence[str],
    k: int,
    n: int,
    redraw: Redraw = "forward",
    per_sample: bool = False,
    implementation: Implementation = "auto",
) -> nn.Module:
    """The checkpoint-replay form of :func:`convert_dcs`: only module names (a checkpoint
    header is untrusted input and may not set ``inplace``), in place, recipe untouched."""
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
        raise InputError(
            f"a recorded dcs conversion names its layers as a list of module names, got {layers!r}"
        )
    recipe = getattr(model, "robustlab_recipe", None)
    out = convert_dcs(model, list(layers), k=k, n=n, redraw=redraw, per_sample=per_sample,
                      implementation=implementation, inplace=True)
    if recipe is not None:
        setattr(out, "robustlab_recipe", recipe)  # noqa: B010  (plain attribute)
    return out


CONVERSIONS.register(
    "dcs", _replay, paper="deformable-conv-stochasticity, Sec. 4.1", convert=convert_dcs
)

__all__ = [
    "DEFAULT_LAYERS",
    "IMPLEMENTATIONS",
    "MAX_KERNEL_SIZE",
    "REDRAWS",
    "RandomKernelConv2d",
    "convert_dcs",
    "dcs_from_conv",
    "dcs_layers",
    "excluding_paths",
    "gather_conv",
    "masked_dense_conv",
    "position_mask",
]

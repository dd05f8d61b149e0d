"""The downsampling baselines of the stochastic-downsampling paper and the model surgery.

``convert_downsampling(model, method)`` rewrites every strided convolution of any ``nn.Module``
(and, with ``include_pooling=True``, every strided max/avg pooling) into the same operation at
stride 1, with the same weights, followed by a downsampler; every output shape stays the
original's. Methods (paper Sec. 3 "To perform ablation studies" and Table 1):

- ``sd``: :class:`~robustlab.defenses.stochastic_downsampling.StochasticDownsample`;
- ``sd+addnoise``: SD, then Gaussian noise;
- ``addnoise``: the strided convolution is kept (Eq. 4) and noise is added after it;
- ``avgpool``: 2x2 (stride x stride) average pooling;
- ``dropout-avgpool``: Dropout(0.5) after the stride-1 convolution, then average pooling;
- ``blurpool``: Zhang (2019), "Making Convolutional Networks Shift-Invariant Again": a
  normalized binomial blur (3x3 by default) with reflect padding, subsampled by the stride
  (placements below);
- ``flc``: FrequencyLowCut pooling (Grabinski et al., 2022): keep the central (low-frequency)
  ``ceil(H / s)`` x ``ceil(W / s)`` block of the centred 2-D spectrum;
- ``asap``: ASAP (Grabinski et al., 2023): FLC after a 2-D Hamming window
  (``sqrt(outer(hamming(H), hamming(W)))``) on the full spectrum, against sinc artifacts.

FLC and ASAP here use the ``norm="forward"`` FFT pair and keep the real part, so a constant map
stays constant; the official FLC layer returns the modulus of an unnormalized inverse transform
(a rectified signal, four times larger). Their official placement also puts the pooling *before*
a stride-1 convolution (``placement="before"``), the reverse of SD's convolution-then-downsample;
the default ``placement="after"`` is SD's order, used for every method so that all methods of
the study differ only in the downsampler. ``"before"`` needs a convolution whose stride-1 form
keeps the map size (odd kernel, "same" padding), so the output shapes stay the original's.

BlurPool's ``placement="after-activation"`` is Zhang's own (his paper's "ReLU . Conv_s becomes
Subsample_s . Blur . ReLU . Conv_1", as his ``antialiased-cnns`` ResNets do it): a strided
convolution whose output feeds only a BatchNorm whose output feeds only a ReLU becomes stride-1
conv, BN, ReLU, then the blur-downsample. The surgery finds these triples in the traced forward graph
(``torch.fx``), moves the BN into the converted conv's slot (``Downsampled(op=Sequential(conv,
bn, ReLU), down=BlurPool)``) and leaves an ``nn.Identity`` where the BN was; the ReLU the model
applies next is then a no-op, since a blur of non-negative values is non-negative. Every other
strided conv (not followed by BN + ReLU: the 1x1 projection shortcuts, whose BN output is added
to the residual; convs followed by LayerNorm or a leaky ReLU) gets the default ``"after"``
placement. For a 1x1 shortcut that is Zhang's own shortcut (blur, then the 1x1 conv) up to
float rounding: a 1x1 conv mixes channels only, so it commutes with the per-channel blur.
Departures from Zhang's ImageNet ResNets: his stem 7x7 conv stays strided and only the max-pool
is blurred (``pool_only=True``); here the stem is converted like every strided conv (and the
max-pool, with ``include_pooling=True``, keeps its 3x3 kernel at stride 1 before the blur where
Zhang uses a 2x2 max at stride 1). The default stays ``"after"`` so that every method of the study
downsamples at the same place and differs only in the downsampler.

What the surgery does to stems and shortcuts: every strided ``nn.Conv2d`` is converted, whatever
its role: a strided stem (torchvision's 7x7/2, ConvNeXt's 4x4/4 patchify) and the 1x1 strided
convolution of a projection shortcut (``downsample.0`` / ``shortcut.0``) each become their
stride-1 form followed by their own downsampler, with the same weights. Stride-1 stems (the CIFAR
ResNets) and parameter-free shortcuts (Madry's average-pooling "option A") are left alone.
With SD every converted layer draws its own jitter; ``shortcut_jitter="shared"`` instead links
each 1x1 shortcut's SD layer to the SD layer of its block's main path (the first strided non-1x1
conv of the smallest module holding both), so both sample the same offsets in each forward
(:class:`~robustlab.defenses.stochastic_downsampling.SharedJitter`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..core import InputError, Registry, check_number, is_int
from ..core.randomness import Stochastic
from . import CONVERSIONS, record_conversion
from .stochastic_downsampling import SharedJitter, StochasticDownsample


def _out_size(h: int, w: int, stride: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(h / stride[0]), math.ceil(w / stride[1])


class AddNoise(Stochastic):
    """Add random noise to a feature map, in training and at test time (paper: "AddNoise").

    Args:
        std: Gaussian standard deviation, or the half-width of the uniform noise.
        distribution: ``"normal"`` (``std * N(0, 1)``) or ``"uniform"`` (``U[-std, std]``).
    """

    def __init__(self, std: float = 0.15, distribution: str = "normal") -> None:
        super().__init__()
        check_number(std, "AddNoise std", 0)
        if distribution not in ("normal", "uniform"):
            raise InputError(f"unknown noise distribution {distribution!r}; use normal or uniform")
        self.std = float(std)
        self.distribution = distribution

    @property
    def stochastic_active(self) -> bool:
        """No randomness when ``std`` is 0."""
        return self.std > 0

    @property
    def rowwise(self) -> bool:
        """Always: the noise is i.i.d. per entry of the input's shape (``forward``), so each
        row gets its own independent draw."""
        return True

    def extra_repr(self) -> str:
        return f"std={self.std}, distribution={self.distribution!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return x

        def sample(g: torch.Generator) -> torch.Tensor:
            if self.distribution == "normal":
                return torch.randn(x.shape, generator=g, device=x.device)
            return 2 * torch.rand(x.shape, generator=g, device=x.device) - 1

        noise = self.draw(sample, key=tuple(x.shape), device=x.device)
        return x + self.std * noise.to(x.dtype)


MAX_FILTER_SIZE = 16
"""Largest binomial filter BlurPool builds (Zhang, 2019, tries 2 to 7); a bound, since a
checkpoint's recipe can name any value."""


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang, 2019): binomial blur with reflect padding, then stride.

    ``convert_downsampling(model, "blurpool", placement=...)`` installs it after the stride-1
    conv (``"after"``, the default, the study's common placement) or after the conv's BN and
    ReLU (``"after-activation"``, Zhang's); see the module docstring.

    Args:
        stride: the subsampling factor (int or pair).
        filter_size: 1-D binomial filter length (Zhang's default 3: ``[1, 2, 1]``).
    """

    def __init__(self, stride: int | tuple[int, int] = 2, filter_size: int = 3) -> None:
        super().__init__()
        self.stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        if not is_int(filter_size, 1, MAX_FILTER_SIZE):
            raise InputError(
                f"filter_size must be an int in [1, {MAX_FILTER_SIZE}] (Zhang uses 1 to 7), got {filter_size!r}")
        row = torch.tensor([math.comb(filter_size - 1, k) for k in range(filter_size)], dtype=torch.float32)
        kernel = torch.outer(row, row)
        self.kernel: torch.Tensor
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)
        self.filter_size = filter_size

    def extra_repr(self) -> str:
        return f"stride={self.stride}, filter_size={self.filter_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        k = self.filter_size
        lo, hi = (k - 1) // 2, k // 2
        mode = "reflect" if min(x.shape[-2:]) > max(lo, hi) else "replicate"
        x = F.pad(x, (lo, hi, lo, hi), mode=mode)
        weight = self.kernel.to(x.dtype).expand(c, 1, k, k)
        return F.conv2d(x, weight, stride=self.stride, groups=c)


class FLCPool(nn.Module):
    """Frequency low-cut pooling; with ``window=True`` it is ASAP (see the module docstring).

    Args:
        stride: the downsampling factor; the output is ``ceil(H / s)`` x ``ceil(W / s)``.
        window: apply the 2-D Hamming window to the spectrum first (ASAP).
    """

    def __init__(self, stride: int | tuple[int, int] = 2, window: bool = False) -> None:
        super().__init__()
        self.stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        self.window = window

    def extra_repr(self) -> str:
        return f"stride={self.stride}, window={self.window}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        oh, ow = _out_size(h, w, self.stride)  # type: ignore[arg-type]
        dtype = x.dtype
        spec = torch.fft.fftshift(torch.fft.fft2(x.float(), norm="forward"), dim=(-2, -1))
        if self.window:
            wh = torch.hamming_window(h, periodic=False, device=x.device)
            ww = torch.hamming_window(w, periodic=False, device=x.device)
            spec = spec * torch.sqrt(torch.outer(wh, ww))
        top, left = h // 2 - oh // 2, w // 2 - ow // 2  # keeps the DC term at the crop's centre
        spec = spec[..., top : top + oh, left : left + ow]
        out = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm="forward").real
        return out.to(dtype)


class Downsampled(nn.Module):
    """A strided operation rewritten as the same operation at stride 1 plus a downsampler.

    ``stride`` reports the original stride (the stage strides of a network stay readable);
    ``op`` holds the stride-1 operation with the original weights, ``down`` the downsampler.
    """

    def __init__(self, op: nn.Module, down: nn.Module, stride: tuple[int, int], before: bool = False) -> None:
        super().__init__()
        self.op = op
        self.down = down
        self.stride = stride
        self.before = before

    def extra_repr(self) -> str:
        return f"stride={self.stride}, order={'down, op' if self.before else 'op, down'}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.before:  # the official FLC / ASAP placement: downsample, then the stride-1 op
            return self.op(self.down(x))
        return self.down(self.op(x))


DownsamplerFactory = Callable[..., nn.Module]
DOWNSAMPLERS: Registry[DownsamplerFactory] = Registry("downsampling method")
"""The downsamplers, each registered with ``options``: the keyword options its factory takes
(:func:`method_options` answers for every method of :data:`METHODS`, ``addnoise`` included)."""

SD_OPTIONS = ("spp", "jitter", "normal_std", "reduction", "per_sample", "deterministic")
NOISE_OPTIONS = ("std", "distribution")


def _sd(stride: tuple[int, int], *, spp: int = 2, jitter: str = "uniform", normal_std: float = 1.0,
        reduction: str = "mean", per_sample: bool = False, deterministic: bool = False) -> nn.Module:
    return StochasticDownsample(stride, spp=spp, jitter=jitter, normal_std=normal_std,  # type: ignore[arg-type]
                                reduction=reduction, per_sample=per_sample, deterministic=deterministic)  # type: ignore[arg-type]


def _sd_addnoise(stride: tuple[int, int], *, std: float = 0.15, distribution: str = "normal", **sd: Any) -> nn.Module:
    return nn.Sequential(_sd(stride, **sd), AddNoise(std, distribution))


def _avgpool(stride: tuple[int, int]) -> nn.Module:
    return nn.AvgPool2d(stride, stride, ceil_mode=True)


def _dropout_avgpool(stride: tuple[int, int], *, p: float = 0.5) -> nn.Module:
    return nn.Sequential(nn.Dropout(p), _avgpool(stride))


BLURPOOL_PLACEMENTS = ("after", "after-activation")


def _blurpool(stride: tuple[int, int], *, filter_size: int = 3, placement: str = "after") -> nn.Module:
    if placement not in BLURPOOL_PLACEMENTS:
        raise InputError(f"blurpool placement must be 'after' (stride-1 conv, then blur; the default) or "
                         f"'after-activation' (stride-1 conv, BN, ReLU, then blur: Zhang 2019), got {placement!r}")
    return BlurPool(stride, filter_size)


PLACEMENTS = ("after", "before")


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise InputError(f"placement must be 'after' (stride-1 conv, then pooling; the default) or "
                         f"'before' (pooling, then the stride-1 conv: the official FLC/ASAP code), got {placement!r}")


def _flc(stride: tuple[int, int], *, placement: str = "after") -> nn.Module:
    _check_placement(placement)
    return FLCPool(stride, window=False)


def _asap(stride: tuple[int, int], *, placement: str = "after") -> nn.Module:
    _check_placement(placement)
    return FLCPool(stride, window=True)


DOWNSAMPLERS.register("sd", _sd, paper="stochastic-downsampling, Sec. 3, Eq. 3", options=SD_OPTIONS)
DOWNSAMPLERS.register("sd+addnoise", _sd_addnoise, paper="stochastic-downsampling, Table 1",
                      options=SD_OPTIONS + NOISE_OPTIONS)
DOWNSAMPLERS.register("avgpool", _avgpool, paper="stochastic-downsampling, Sec. 3", options=())
DOWNSAMPLERS.register("dropout-avgpool", _dropout_avgpool, paper="stochastic-downsampling, Sec. 3", options=("p",))
DOWNSAMPLERS.register("blurpool", _blurpool, paper="Zhang 2019", options=("filter_size", "placement"))
DOWNSAMPLERS.register("flc", _flc, paper="Grabinski et al. 2022", options=("placement",))
DOWNSAMPLERS.register("asap", _asap, paper="Grabinski et al. 2023", options=("placement",))
METHODS = ("sd", "sd+addnoise", "addnoise", "avgpool", "dropout-avgpool", "blurpool", "flc", "asap")
SHARED_JITTER_METHODS = ("sd", "sd+addnoise")
"""The methods whose layers can share a jitter draw (``shortcut_jitter="shared"``)."""


def method_options(method: str) -> tuple[str, ...]:
    """The options ``convert_downsampling(model, method, **options)`` takes, as registered
    (``addnoise`` keeps the strided convolution, so it is no downsampler: :data:`NOISE_OPTIONS`).

    Raises:
        UnknownNameError: for an unknown method, listing the registered ones.
    """
    if method == "addnoise":
        return NOISE_OPTIONS
    return tuple(DOWNSAMPLERS.meta(method)["options"])


def _stride(module: nn.Module) -> tuple[int, int]:
    s = module.stride  # type: ignore[union-attr]
    if isinstance(s, int):
        return (s, s)
    return (int(s[0]), int(s[1]))  # type: ignore[index]


def _targets(model: nn.Module, include_pooling: bool) -> list[tuple[nn.Module, str, nn.Module]]:
    found = []
    for parent in model.modules():
        if isinstance(parent, Downsampled):
            continue  # already converted
        for name, child in parent.named_children():
            kinds: tuple[type, ...] = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d) if include_pooling else (nn.Conv2d,)
            if isinstance(child, kinds) and max(_stride(child)) > 1:
                found.append((parent, name, child))
    return found


class _Tracer(fx.Tracer):
    """Traces through containers and blocks; keeps converted and random layers opaque."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Downsampled | Stochastic | BlurPool | FLCPool) or super().is_leaf_module(
            m, module_qualified_name)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _bn_relu_after(model: nn.Module) -> dict[int, tuple[nn.Module, str, nn.Module]]:
    """For each conv whose output goes only to a BatchNorm whose output goes only to a ReLU:
    ``id(conv) -> (the BN's parent, the BN's attribute name, the BN)``, from the traced graph."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001  (fx raises many types; the message says which)
        raise InputError(
            f"placement='after-activation' finds the BN and ReLU after each strided conv by tracing the "
            f"forward with torch.fx, which fails on {type(model).__name__} ({type(e).__name__}: {e}); "
            "use placement='after'") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    found: dict[int, tuple[nn.Module, str, nn.Module]] = {}
    for node in graph.nodes:
        conv = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or calls[str(node.target)] != 1 or len(node.users) != 1:
            continue
        (bn_node,) = node.users
        bn = modules.get(str(bn_node.target)) if bn_node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d | nn.SyncBatchNorm) or calls[str(bn_node.target)] != 1:
            continue
        if len(bn_node.users) == 1 and _is_relu(next(iter(bn_node.users)), modules):
            parent, _, name = str(bn_node.target).rpartition(".")
            found[id(conv)] = (model.get_submodule(parent), name, bn)
    return found


def _stride_one(child: nn.Module) -> nn.Module:
    op = copy.copy(child)  # shares the parameters; only the stride changes
    op.stride = (1, 1) if isinstance(child, nn.Conv2d) else 1  # type: ignore[assignment]
    if isinstance(op, nn.MaxPool2d | nn.AvgPool2d):
        op.ceil_mode = False
    return op


def _downsampled(child: nn.Module, method: str, options: dict[str, Any]) -> nn.Module:
    stride = _stride(child)
    if method == "addnoise":
        noise = {k: options[k] for k in ("std", "distribution") if k in options}
        return Downsampled(child, AddNoise(**noise), stride)
    op = _stride_one(child)
    before = options.get("placement", "after") == "before"
    if before and not _keeps_size(child):
        raise InputError(
            f"placement='before' needs convolutions whose stride-1 form keeps the map size (odd kernel, "
            f"'same' padding); {child} does not: use placement='after'")
    return Downsampled(op, DOWNSAMPLERS.get(method)(stride, **options), stride, before=before)


def _keeps_size(m: nn.Module) -> bool:
    """Whether ``m`` at stride 1 maps an HxW input to HxW (so pooling can come first)."""
    if not isinstance(m, nn.Conv2d) or isinstance(m.padding, str):
        return isinstance(m, nn.Conv2d) and m.padding == "same"
    k, d, pad = m.kernel_size, m.dilation, m.padding
    return all(ki % 2 == 1 and pi == di * (ki - 1) // 2 for ki, di, pi in zip(k, d, pad, strict=True))


SHORTCUT_JITTER = ("independent", "shared")


def _shortcut_partners(model: nn.Module, convs: list[nn.Module]) -> list[tuple[nn.Module, nn.Module]]:
    """``(shortcut conv, main-path conv)`` pairs: each strided 1x1 conv with the first strided
    non-1x1 conv of the smallest module that holds it and another strided conv."""
    names = {id(m): name for name, m in model.named_modules()}
    order = [(names[id(c)], c) for c in convs]
    pairs: list[tuple[nn.Module, nn.Module]] = []
    for name, conv in order:
        if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)):
            continue
        prefix = name
        while prefix:
            prefix = prefix.rpartition(".")[0]
            inside = [(n, c) for n, c in order if c is not conv and (not prefix or n.startswith(prefix + "."))]
            if inside:
                main = [c for _, c in inside if not (isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1))]
                if main:
                    pairs.append((conv, main[0]))
                break
    return pairs


def _sd_layer(module: nn.Module) -> StochasticDownsample | None:
    return next((m for m in module.modules() if isinstance(m, StochasticDownsample)), None)


def convert_downsampling(
    model: nn.Module,
    method: str = "sd",
    *,
    include_pooling: bool = False,
    inplace: bool = False,
    shortcut_jitter: str = "independent",
    **options: Any,
) -> nn.Module:
    """Replace every strided convolution of ``model`` by a stride-1 convolution + a downsampler.

    Stems and shortcuts: every strided ``nn.Conv2d`` is converted, whatever its role. A strided
    stem (torchvision's 7x7/2 conv, ConvNeXt's 4x4/4 patchify conv) and the strided 1x1 conv of
    a projection shortcut (torchvision's ``downsample.0``, our ``shortcut.0``) each become their
    stride-1 form followed by a downsampler of their own, with the original weights; stride-1
    stems and parameter-free shortcuts (average pooling) are untouched, and strided pooling is
    converted only with ``include_pooling=True``.

    Args:
        model: any ``nn.Module`` (robustlab models, torchvision and timm networks).
        method: one of :data:`METHODS` (see the module docstring).
        include_pooling: also convert strided max/avg pooling layers.
        inplace: rewrite ``model`` itself; by default a converted deep copy is returned.
        shortcut_jitter: for ``sd`` and ``sd+addnoise``: ``"independent"`` (the default, the
            behaviour before this option existed: every SD layer, shortcut ones included, draws its
            own jitter) or ``"shared"``: the SD layer of each 1x1 shortcut takes the same jitter
            draw as the SD layer of its block's main path (the first strided non-1x1 conv of the
            smallest module holding both), so the two branches sample the same offsets.
        **options: options of the method: for ``sd`` ``spp``, ``jitter``, ``normal_std``,
            ``reduction``, ``per_sample``, ``deterministic``; for ``addnoise`` and
            ``sd+addnoise`` ``std`` and ``distribution`` (plus the ``sd`` ones for the latter);
            ``p`` for ``dropout-avgpool``; ``filter_size`` and ``placement`` (``"after"``, the
            default, or ``"after-activation"``, Zhang's conv-BN-ReLU-blur) for ``blurpool``;
            ``placement`` (``"after"``, the default, or ``"before"``, the official code's
            order) for ``flc`` and ``asap``.

    Returns:
        The converted model. A robustlab model records the conversion in its recipe, so
        ``robustlab.save`` / ``robustlab.load`` rebuild it.

    Raises:
        UnknownNameError: for an unknown method (the message lists the known ones).
        InputError: for options the method does not take, a model without strided layers, or
            (``placement="after-activation"``) a model ``torch.fx`` cannot trace.
    """
    if method not in METHODS:
        DOWNSAMPLERS.get(method)  # raises UnknownNameError listing the registered names
    if method != "addnoise":
        try:
            DOWNSAMPLERS.get(method)((2, 2), **options)
        except TypeError as e:
            raise InputError(f"bad option for downsampling method {method!r}: {e}") from None
    else:
        unknown = set(options) - set(NOISE_OPTIONS)
        if unknown:
            raise InputError(f"addnoise takes std= and distribution=, not {sorted(unknown)}")
    if shortcut_jitter not in SHORTCUT_JITTER:
        raise InputError(f"shortcut_jitter must be 'independent' (the default) or 'shared', got {shortcut_jitter!r}")
    if shortcut_jitter == "shared" and method not in SHARED_JITTER_METHODS:
        raise InputError(f"shortcut_jitter='shared' applies to sd and sd+addnoise, not {method!r}")
    out = model if inplace else copy.deepcopy(model)
    targets = _targets(out, include_pooling)
    if not targets:
        raise InputError(
            f"{type(model).__name__} has no strided convolution"
            + ("" if include_pooling else " (pass include_pooling=True to convert strided pooling)")
        )
    activated = _bn_relu_after(out) if method == "blurpool" and options.get("placement") == "after-activation" else {}
    pairs = _shortcut_partners(out, [c for _, _, c in targets]) if shortcut_jitter == "shared" else []
    converted: dict[int, nn.Module] = {}
    for parent, name, child in targets:
        new: nn.Module
        if id(child) in activated:  # Zhang's order: stride-1 conv, BN, ReLU, blur; the BN's slot idles
            bn_parent, bn_name, bn = activated[id(child)]
            stride = _stride(child)
            new = Downsampled(nn.Sequential(_stride_one(child), bn, nn.ReLU()), _blurpool(stride, **options), stride)
            setattr(bn_parent, bn_name, nn.Identity())
        else:
            new = _downsampled(child, method, options)
        converted[id(child)] = new
        setattr(parent, name, new)
    for shortcut, main in pairs:
        link = SharedJitter()
        for conv in (shortcut, main):
            layer = _sd_layer(converted[id(conv)])
            assert layer is not None  # sd and sd+addnoise always hold one
            layer.jitter_link = link
    if shortcut_jitter == "shared" and not pairs:
        warnings.warn(f"shortcut_jitter='shared': {type(model).__name__} has no strided 1x1 shortcut conv "
                      "beside a strided main-path conv, so every SD layer keeps its own jitter", stacklevel=2)
    recorded = {"method": method, "include_pooling": include_pooling, **options}
    if shortcut_jitter != "independent":
        recorded["shortcut_jitter"] = shortcut_jitter
    return record_conversion(out, "downsampling", recorded)


def deterministic_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every downsampler's randomness switched off.

    :class:`StochasticDownsample` layers sample their pixel centres (``deterministic=True``, for a
    factor of 2 on even-sized maps the 2x2 box average) and :class:`AddNoise` layers add nothing; the weights are
    the same. Adversarial examples crafted on the twin and transferred to the randomized model
    test whether the randomness, rather than the weights, is what resists gradient attacks
    (Athalye et al., 2018, Sec. 4.3; the stochastic-downsampling paper's Sec. 5.3 transfers from
    the baseline instead). The copy keeps the original's recipe for reports, but it is not the
    recipe's model: do not save it as one.
    """
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, StochasticDownsample):
            m.deterministic = True
        elif isinstance(m, AddNoise):
            m.std = 0.0
    return twin


def _replay(model: nn.Module, **options: Any) -> nn.Module:
    """The checkpoint-replay form of :func:`convert_downsampling` (in place, recipe untouched)."""
    recipe = getattr(model, "robustlab_recipe", None)
    out = convert_downsampling(model, inplace=True, **options)
    if recipe is not None:
        setattr(out, "robustlab_recipe", recipe)  # noqa: B010
    return out


# ``convert``: the public surgery (a new model, the conversion added to its recipe) that studies call
CONVERSIONS.register("downsampling", _replay, paper="stochastic-downsampling, Sec. 3", convert=convert_downsampling)

__all__ = [
    "BLURPOOL_PLACEMENTS",
    "DOWNSAMPLERS",
    "METHODS",
    "NOISE_OPTIONS",
    "PLACEMENTS",
    "SD_OPTIONS",
    "SHARED_JITTER_METHODS",
    "SHORTCUT_JITTER",
    "AddNoise",
    "BlurPool",
    "Downsampled",
    "FLCPool",
    "convert_downsampling",
    "deterministic_twin",
    "method_options",
]

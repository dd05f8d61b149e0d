"""The toy experiment of Fig. 2 and Fig. 8: output disturbance of a random CNN vs feature size.

Xu & Yang, "Understanding Adversarial Robustness from Feature Maps of Convolutional Layers"
(``papers/feature-map-strides``), Sec. III-B (Proposition 1, Fig. 2) and Appendix A (Fig. 8).
Proposition 1 bounds the pooled disturbance ``|P(g(x + delta)) - P(g(x))|`` of a convolutional
feature ``g`` of size ``H x W``: after average pooling a larger ``HW`` allows a smaller
disturbance (III.6, Hoeffding), after max pooling a larger ``HW`` allows a larger one (III.7).
The paper checks this on "a randomly initialized CNN, which has 4 convolutional layers (with 3,
16, 32 and 64 channels, respectively) followed by average pooling or max pooling", with 1000
input perturbations ``delta ~ U[-0.1, 0.1]``, plotting the l-inf disturbance of the pooled
features on different layers; Fig. 8 repeats it for four weight initializations (Normal,
Uniform, Xavier Normal, Xavier Uniform) without and with ReLU.

What the paper leaves open, and what is chosen here (each is an argument):

- channels: the four layers have 3, 16, 32 and 64 *output* channels (the sentence read
  literally) on a 3-channel input; 3x3 kernels, padding 1, stride 1 (``strides`` changes it);
- the clean input: ``x ~ U[0, 1]`` (one image per input size, ``base="uniform"``), or
  ``base="zeros"``; ``x + delta`` is not clipped to [0, 1] (the paper does not clip);
- feature size: varied through the input side (``sizes``); with stride 1 every layer's map is
  as large as the input, with ``strides`` the layers' maps shrink and each record states its own;
- the disturbance of one draw is ``max_c |P(g_l(x + delta))_c - P(g_l(x))_c|`` (the l-inf
  norm over the pooled channels of layer ``l``, the paper's definition of Sec. III-B applied to
  the network as it computes, not to ``P(d)`` as in the proof); a record keeps its mean, standard
  deviation and maximum over the draws;
- the initializations are PyTorch's ``nn.init`` functions with their default arguments
  (``normal_``: N(0, 1); ``uniform_``: U[0, 1]; ``xavier_*``: gain 1), biases zero; ``"default"``
  is PyTorch's own ``Conv2d`` initialization (Fig. 2 states none). ``nn.init.normal_`` and
  ``uniform_`` are not scaled to the fan-in, so their disturbances are orders of magnitude larger:
  compare trends within one initialization.

Measured here (40 seeds, default and Xavier-uniform inits, layer 4, 64 draws): with the default
``base="uniform"``, going from a 4x4 to a 32x32 map the average-pooled disturbance shrank (to at
most 0.74 of it) and the max-pooled one grew (by at least 1.24x) in every run, without and with
ReLU, as in Fig. 2; between neighbouring sizes the max-pooled curve is not always monotone.
With ``base="zeros"`` and ReLU the average-pooled one grows instead: rectification around zero
breaks Proposition 1's zero-mean assumption (Remark 2).

Every random draw (weights, clean input, perturbations) comes from the ``generator`` passed in,
so a seeded run repeats exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.checks import check_int, check_number
from ..core.errors import InputError
from .figures import pyplot, save_figure

__all__ = [
    "ACTIVATIONS",
    "BASES",
    "FIG8_INITS",
    "INITS",
    "POOLINGS",
    "TOY_WIDTHS",
    "ToyRecord",
    "plot_toy_disturbance",
    "toy_cnn",
    "toy_disturbance",
]

TOY_WIDTHS: tuple[int, ...] = (3, 16, 32, 64)
"""Output channels of the four convolutional layers (Sec. III-B)."""

INITS: tuple[str, ...] = ("default", "normal", "uniform", "xavier_normal", "xavier_uniform")
"""Known weight initializations: PyTorch's default plus the four of Fig. 8."""

FIG8_INITS: tuple[str, ...] = ("normal", "uniform", "xavier_normal", "xavier_uniform")
"""The four initializations of Appendix A, Fig. 8."""

POOLINGS: tuple[str, ...] = ("avg", "max")
"""Global pooling after the convolutional part (Fig. 2a, 2b)."""

ACTIVATIONS: tuple[str, ...] = ("none", "relu")
"""Activation after each convolution (Fig. 8 top, bottom)."""

BASES: tuple[str, ...] = ("uniform", "zeros")
"""Clean inputs the perturbations are added to."""


@dataclass(frozen=True)
class ToyRecord:
    """The disturbance of one pooled layer of one toy network at one input size.

    Attributes:
        pooling: ``"avg"`` or ``"max"`` (global pooling over the feature map).
        init: the weight initialization (:data:`INITS`).
        activation: ``"none"`` or ``"relu"``.
        layer: 1-based index of the convolutional layer whose output is pooled.
        channels: output channels of that layer.
        input_size: side of the square input.
        feature_height: height of that layer's feature map.
        feature_width: width of that layer's feature map.
        samples: number of perturbation draws.
        mean: mean over the draws of the l-inf disturbance of the pooled feature.
        std: its standard deviation over the draws.
        max: its maximum over the draws.
    """

    pooling: str
    init: str
    activation: str
    layer: int
    channels: int
    input_size: int
    feature_height: int
    feature_width: int
    samples: int
    mean: float
    std: float
    max: float

    @property
    def feature_size(self) -> int:
        """``H * W`` of the pooled feature map (the paper's ``HW``)."""
        return self.feature_height * self.feature_width

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (``feature_size`` included)."""
        return {**asdict(self), "feature_size": self.feature_size}


def _check_choice(name: str, values: Sequence[str], known: Sequence[str]) -> None:
    if isinstance(values, str) or not values:
        raise InputError(f"{name} must be a non-empty sequence of names from {list(known)}, got {values!r}")
    unknown = [v for v in values if v not in known]
    if unknown:
        raise InputError(f"unknown {name} {unknown}; known: {list(known)}")


def _init_conv(conv: nn.Conv2d, init: str, generator: torch.Generator) -> None:
    """Initialize ``conv`` in place with ``init``, drawing from ``generator``."""
    weight, bias = conv.weight, conv.bias
    with torch.no_grad():
        if init == "default":  # nn.Conv2d.reset_parameters, with the generator
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            if bias is not None:
                fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(bias, -bound, bound, generator=generator)
            return
        if init == "normal":
            nn.init.normal_(weight, generator=generator)
        elif init == "uniform":
            nn.init.uniform_(weight, generator=generator)
        elif init == "xavier_normal":
            nn.init.xavier_normal_(weight, generator=generator)
        elif init == "xavier_uniform":
            nn.init.xavier_uniform_(weight, generator=generator)
        else:
            raise InputError(f"unknown init {init!r}; known: {list(INITS)}")
        if bias is not None:
            bias.zero_()


def toy_cnn(
    init: str = "default",
    activation: str = "none",
    *,
    widths: Sequence[int] = TOY_WIDTHS,
    strides: Sequence[int] | None = None,
    in_channels: int = 3,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """The randomly initialized toy CNN of Sec. III-B: one block per convolutional layer.

    Block ``l`` is ``Conv2d(3x3, padding 1, stride strides[l])`` followed by ReLU when
    ``activation="relu"``; index the returned ``Sequential`` to read each layer's feature map.

    Args:
        init: weight initialization, one of :data:`INITS` (see the module docstring).
        activation: ``"none"`` (a linear network) or ``"relu"``.
        widths: output channels of each layer (the paper: 3, 16, 32, 64).
        strides: stride of each layer (all 1 when omitted: every map is as large as the input).
        in_channels: channels of the input.
        generator: source of the weights (a fresh default-seeded one when ``None``).

    Raises:
        InputError: for an unknown ``init`` or ``activation`` or mismatched ``strides``.
    """
    _check_choice("init", [init], INITS)
    _check_choice("activation", [activation], ACTIVATIONS)
    widths = [int(w) for w in widths]
    strides = [1] * len(widths) if strides is None else [int(s) for s in strides]
    if len(strides) != len(widths) or not widths or min(widths) < 1 or min(strides) < 1:
        raise InputError(
            f"widths and strides must be equally long lists of positive ints, got "
            f"widths={widths} and strides={strides}"
        )
    generator = torch.Generator() if generator is None else generator
    blocks: list[nn.Module] = []
    channels = in_channels
    for width, stride in zip(widths, strides, strict=True):
        conv = nn.Conv2d(channels, width, kernel_size=3, stride=stride, padding=1)
        _init_conv(conv, init, generator)
        blocks.append(nn.Sequential(conv, nn.ReLU()) if activation == "relu" else nn.Sequential(conv))
        channels = width
    return nn.Sequential(*blocks).eval()


def _pool(feature: torch.Tensor, pooling: str) -> torch.Tensor:
    """Global pooling ``(N, C, H, W) -> (N, C)``."""
    flat = feature.flatten(2)
    return flat.mean(dim=2) if pooling == "avg" else flat.amax(dim=2)


@torch.no_grad()
def _layer_disturbances(
    net: nn.Sequential,
    x: torch.Tensor,
    samples: int,
    noise: float,
    poolings: Sequence[str],
    batch_size: int,
    generator: torch.Generator,
) -> tuple[dict[tuple[str, int], torch.Tensor], list[tuple[int, int, int]]]:
    """Per pooling and layer, the ``(samples,)`` l-inf disturbances, and each layer's
    ``(channels, H, W)``.

    The clean image rides in row 0 of every batch, so clean and perturbed features come out of
    the same kernel calls (a convolution's rounding can depend on the batch size).
    """
    found: dict[tuple[str, int], list[torch.Tensor]] = {}
    shapes: list[tuple[int, int, int]] = []
    done = 0
    while done < samples:
        count = min(batch_size, samples - done)
        delta = torch.rand((count, *x.shape[1:]), generator=generator, dtype=x.dtype)
        feature = torch.cat([x, x + (2 * delta - 1) * noise])
        shapes = []
        for i, block in enumerate(net):
            feature = block(feature)
            shapes.append((feature.shape[1], feature.shape[2], feature.shape[3]))
            for pooling in poolings:
                pooled = _pool(feature, pooling)
                change = pooled[1:] - pooled[:1]
                found.setdefault((pooling, i), []).append(change.abs().amax(dim=1))
        done += count
    return {key: torch.cat(parts) for key, parts in found.items()}, shapes


def toy_disturbance(
    *,
    sizes: Sequence[int] = (8, 16, 32),
    poolings: Sequence[str] = POOLINGS,
    inits: Sequence[str] = ("default",),
    activations: Sequence[str] = ACTIVATIONS,
    samples: int = 1000,
    noise: float = 0.1,
    widths: Sequence[int] = TOY_WIDTHS,
    strides: Sequence[int] | None = None,
    base: str = "uniform",
    batch_size: int = 100,
    generator: torch.Generator | None = None,
) -> list[ToyRecord]:
    """Run the toy experiment of Fig. 2 / Fig. 8 (Sec. III-B, Appendix A).

    For each initialization and activation one random network is drawn; it is reused for every
    input size and both poolings, so the records of one network differ only in feature size
    and pooling. For each input size ``s`` a clean image ``x`` of shape ``(1, 3, s, s)`` is drawn
    (see ``base``), then ``samples`` perturbations ``delta ~ U[-noise, noise]``; each layer's
    feature map of ``x + delta`` and of ``x`` is globally pooled and the l-inf norm of the
    difference over channels is one draw's disturbance. Runs on the CPU in float32.

    Args:
        sizes: input sides (the feature size of every layer at stride 1).
        poolings: any of :data:`POOLINGS`.
        inits: any of :data:`INITS`; Fig. 8 uses :data:`FIG8_INITS`.
        activations: any of :data:`ACTIVATIONS`.
        samples: perturbation draws per input size (the paper: 1000).
        noise: half-width of the uniform perturbation (the paper: 0.1).
        widths: output channels of the layers.
        strides: per-layer strides (default all 1).
        base: the clean input, ``"uniform"`` (``x ~ U[0, 1]``) or ``"zeros"``.
        batch_size: perturbations forwarded at once (for memory; results depend on it only
            through float rounding).
        generator: the only source of randomness (a fresh default-seeded one when ``None``).

    Returns:
        One :class:`ToyRecord` per (init, activation, size, pooling, layer), in that loop order.

    Raises:
        InputError: for unknown names, empty lists or non-positive sizes and counts.
    """
    _check_choice("poolings", poolings, POOLINGS)
    _check_choice("inits", inits, INITS)
    _check_choice("activations", activations, ACTIVATIONS)
    _check_choice("base", [base], BASES)
    if isinstance(sizes, int) or not sizes or min(int(s) for s in sizes) < 1:
        raise InputError(f"sizes must be a non-empty sequence of positive ints, got {sizes!r}")
    check_int(samples, "samples", 1)
    check_int(batch_size, "batch_size", 1)
    check_number(noise, "noise", 0)
    generator = torch.Generator() if generator is None else generator
    if generator.device.type != "cpu":
        raise InputError(f"the toy experiment runs on the CPU; pass a CPU generator, got {generator.device}")
    records: list[ToyRecord] = []
    for init in inits:
        for activation in activations:
            net = toy_cnn(init, activation, widths=widths, strides=strides, generator=generator)
            for size in sizes:
                shape = (1, 3, int(size), int(size))
                x = torch.rand(shape, generator=generator) if base == "uniform" else torch.zeros(shape)
                found, layer_shapes = _layer_disturbances(
                    net, x, samples, noise, poolings, batch_size, generator
                )
                for pooling in poolings:
                    for i, (channels, height, width) in enumerate(layer_shapes):
                        values = found[(pooling, i)].double()
                        records.append(
                            ToyRecord(
                                pooling=pooling,
                                init=init,
                                activation=activation,
                                layer=i + 1,
                                channels=channels,
                                input_size=int(size),
                                feature_height=height,
                                feature_width=width,
                                samples=samples,
                                mean=float(values.mean()),
                                std=float(values.std()) if samples > 1 else 0.0,
                                max=float(values.max()),
                            )
                        )
    return records


def plot_toy_disturbance(records: Sequence[ToyRecord], path: str | Path) -> Path:
    """Plot toy-experiment records as Fig. 2 / Fig. 8 do, into a PNG at ``path``.

    One panel per (activation, pooling, init): a line per layer, mean l-inf disturbance over
    the draws against the side of that layer's feature map (log-log axes). Rows are
    activations, so Fig. 8's top (none) and bottom (relu) rows come out as rows.

    Returns:
        The path written.

    Raises:
        InputError: when ``records`` is empty.
    """
    if not records:
        raise InputError("no toy records to plot; run toy_disturbance first")
    plt = pyplot()
    activations = [a for a in ACTIVATIONS if any(r.activation == a for r in records)]
    columns = [
        (p, i)
        for p in POOLINGS
        for i in INITS
        if any(r.pooling == p and r.init == i for r in records)
    ]
    fig, axes = plt.subplots(
        len(activations), len(columns), figsize=(3.2 * len(columns), 2.8 * len(activations)),
        squeeze=False,
    )
    layers = sorted({r.layer for r in records})
    for row, activation in enumerate(activations):
        for col, (pooling, init) in enumerate(columns):
            ax = axes[row][col]
            for layer in layers:
                points = sorted(
                    (r.feature_height, r.mean)
                    for r in records
                    if (r.activation, r.pooling, r.init, r.layer) == (activation, pooling, init, layer)
                )
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"layer {layer}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{pooling} pooling, {init}, {activation}", fontsize=8)
            ax.set_xlabel("feature map side", fontsize=8)
            ax.set_ylabel("mean l-inf disturbance", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path, 110)

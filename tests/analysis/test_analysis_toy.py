"""The toy experiment of Fig. 2 / Fig. 8 (feature-map-strides paper, Sec. III-B, Appendix A)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from robustlab.analysis import FIG8_INITS, ToyRecord, plot_toy_disturbance, toy_cnn, toy_disturbance
from robustlab.core.errors import InputError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _find(records: list[ToyRecord], **key: object) -> ToyRecord:
    (found,) = [r for r in records if all(getattr(r, k) == v for k, v in key.items())]
    return found


def test_seeded_runs_repeat_exactly_and_seeds_differ() -> None:
    kw: dict[str, Any] = {"sizes": (4, 8), "samples": 8, "inits": ("normal",)}
    first = toy_disturbance(generator=_gen(0), **kw)
    assert first == toy_disturbance(generator=_gen(0), **kw)
    assert [r.mean for r in first] != [r.mean for r in toy_disturbance(generator=_gen(1), **kw)]


def test_batch_size_changes_results_only_by_rounding() -> None:
    kw: dict[str, Any] = {"sizes": (6,), "samples": 10, "activations": ("relu",)}
    split = toy_disturbance(batch_size=3, generator=_gen(0), **kw)
    whole = toy_disturbance(batch_size=10, generator=_gen(0), **kw)
    assert [r.mean for r in split] == pytest.approx([r.mean for r in whole], rel=1e-4)
    assert [r.max for r in split] == pytest.approx([r.max for r in whole], rel=1e-4)


def test_record_structure_and_feature_sizes() -> None:
    records = toy_disturbance(
        sizes=(8, 16), inits=FIG8_INITS, samples=4, strides=(2, 2, 1, 1), generator=_gen(0)
    )
    assert len(records) == 4 * 2 * 2 * 2 * 4  # inits x activations x sizes x poolings x layers
    rec = _find(records, init="xavier_normal", activation="relu", pooling="max", input_size=16, layer=2)
    assert (rec.channels, rec.feature_height, rec.feature_width, rec.feature_size) == (16, 4, 4, 16)
    assert [_find(records, init="normal", activation="none", pooling="avg", input_size=8, layer=i).channels
            for i in (1, 2, 3, 4)] == [3, 16, 32, 64]
    assert all(0 <= r.mean <= r.max and r.std >= 0 and r.samples == 4 for r in records)
    assert records[0].to_dict()["feature_size"] == records[0].feature_size


def test_zero_noise_gives_zero_disturbance() -> None:
    records = toy_disturbance(sizes=(5,), samples=3, noise=0.0, inits=FIG8_INITS, generator=_gen(0))
    assert all(r.max == 0.0 for r in records)


def test_linear_network_with_average_pooling_scales_linearly_with_the_noise() -> None:
    """Without activation, avg-pooled g(x + delta) - g(x) is linear in delta: the same draws
    at twice the noise give twice the disturbance (max pooling is not linear)."""
    kw: dict[str, Any] = {"sizes": (6,), "samples": 8, "activations": ("none",), "poolings": ("avg",)}
    small = toy_disturbance(noise=0.05, generator=_gen(2), **kw)
    large = toy_disturbance(noise=0.1, generator=_gen(2), **kw)
    for a, b in zip(small, large, strict=True):
        assert b.mean == pytest.approx(2 * a.mean, rel=1e-3)
        assert b.max == pytest.approx(2 * a.max, rel=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_direction_on_the_linear_network(seed: int) -> None:
    """Fig. 2 / Proposition 1: from a 4x4 to a 32x32 feature map the output disturbance shrinks
    after average pooling and grows after max pooling. Measured over 40 seeds at layer 4 with
    64 draws: avg ratio at most 0.36, max ratio at least 1.35 (default init, no activation)."""
    records = toy_disturbance(
        sizes=(4, 32), samples=64, activations=("none",), generator=_gen(seed)
    )
    avg = [_find(records, pooling="avg", layer=4, input_size=s).mean for s in (4, 32)]
    top = [_find(records, pooling="max", layer=4, input_size=s).mean for s in (4, 32)]
    assert avg[1] < 0.5 * avg[0]
    assert top[1] > 1.1 * top[0]


def test_toy_cnn_blocks() -> None:
    net = toy_cnn("xavier_uniform", "relu", generator=_gen(0))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(net) == 4 and sum(isinstance(m, nn.ReLU) for m in net.modules()) == 4
    assert all(c.bias is not None and float(c.bias.detach().abs().max()) == 0.0 for c in convs)
    assert [c.out_channels for c in convs] == [3, 16, 32, 64]
    again = [m for m in toy_cnn("xavier_uniform", "relu", generator=_gen(0)).modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(convs, again, strict=True))


def test_plot_writes_a_png(tmp_path: Path) -> None:
    records = toy_disturbance(sizes=(4, 8), samples=2, activations=("relu",), generator=_gen(0))
    out = plot_toy_disturbance(records, tmp_path / "toy.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"inits": ("he",)}, r"unknown inits \['he'\]; known: \['default', 'normal'"),
        ({"poolings": "avg"}, "poolings must be a non-empty sequence"),
        ({"activations": ("tanh",)}, r"unknown activations \['tanh'\]"),
        ({"sizes": (0,)}, "sizes must be a non-empty sequence of positive ints"),
        ({"samples": 0}, "samples must be an int >= 1"),
        ({"noise": -0.1}, "noise must be a finite number >= 0"),
        ({"base": "gauss"}, r"unknown base \['gauss'\]"),
        ({"strides": (1, 2)}, "widths and strides must be equally long"),
    ],
)
def test_bad_inputs(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        toy_disturbance(generator=_gen(0), **kw)


def test_plot_refuses_no_records(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no toy records to plot"):
        plot_toy_disturbance([], tmp_path / "x.png")

"""Stage strides: construction-time ``strides=`` and in-place ``set_stage_strides``
(the stride-shrinking defense of the feature-map-strides paper, Sec. IV-B, Table IV)."""

from __future__ import annotations

import pytest
import torch

from robustlab.core import InputError
from robustlab.models import count_parameters, create_model

# Narrow variants keep this cheap; the stride logic is the same as in the default widths.
# name, input (C, H), extra kwargs, default strides, default pre-pool size,
# shrunk strides, shrunk pre-pool size
CASES = [
    ("resnet-mini", (1, 28), {}, (1, 2, 2), 7, (1, 1, 2), 14),
    ("resnet18", (3, 32), {"widths": (8, 16, 32, 64)}, (1, 2, 2, 2), 4, (1, 1, 2, 2), 8),
    ("preact-resnet18", (3, 32), {"widths": (8, 16, 32, 64)}, (1, 2, 2, 2), 4, (1, 1, 2, 2), 8),
    ("resnet32", (3, 32), {"blocks": (1, 1, 1)}, (1, 2, 2), 8, (1, 1, 2), 16),
    ("wrn-34-10", (3, 32), {"depth": 10, "widen_factor": 1}, (1, 2, 2), 8, (1, 1, 2), 16),
    ("vgg16", (3, 32), {}, (2, 2, 2, 2, 2), 1, (1, 1, 2, 2, 2), 4),
    ("alexnet", (3, 32), {}, (2, 2, 2, 2), 2, (1, 1, 2, 2), 8),
]


@pytest.mark.parametrize(("name", "cin", "kw", "s0", "size0", "s1", "size1"), CASES)
def test_strides_set_pre_pool_size(name, cin, kw, s0, size0, s1, size1) -> None:
    c, hw = cin
    x = torch.rand(1, c, hw, hw)
    base = create_model(name, in_channels=c, **kw).eval()
    shrunk = create_model(name, in_channels=c, strides=s1, **kw).eval()
    assert base.model.stage_strides == s0
    assert shrunk.model.stage_strides == s1
    with torch.no_grad():
        assert base.model.forward_features(base.normalize(x)).shape[-2:] == (size0, size0)
        assert shrunk.model.forward_features(shrunk.normalize(x)).shape[-2:] == (size1, size1)
        assert shrunk(x).shape == base(x).shape  # the head is size-independent
    # the classifier input does not depend on the strides
    assert count_parameters(base) == count_parameters(shrunk)


@pytest.mark.parametrize(("name", "cin", "kw", "s0", "size0", "s1", "size1"), CASES)
def test_set_stage_strides_in_place_equals_rebuilt(name, cin, kw, s0, size0, s1, size1) -> None:
    c, hw = cin
    x = torch.rand(2, c, hw, hw)
    converted = create_model(name, in_channels=c, seed=1, **kw).eval()
    rebuilt = create_model(name, in_channels=c, strides=s1, **kw).eval()
    rebuilt.load_state_dict(converted.state_dict())
    converted.model.set_stage_strides(s1)
    assert converted.model.stage_strides == s1
    with torch.no_grad():
        torch.testing.assert_close(converted(x), rebuilt(x))


def test_resnet18_default_shrunk_strides_double_the_pre_pool_map() -> None:
    # feature-map-strides paper, Table IV: ResNet-18 1-2-2-2 -> 1-1-2-2 on 32x32 CIFAR
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for strides, size in (((1, 2, 2, 2), 4), ((1, 1, 2, 2), 8)):
            net = create_model("resnet18", strides=strides).model.eval()
            assert net.forward_features(x).shape == (1, 512, size, size)


def test_set_stage_strides_refuses_identity_shortcut_and_rolls_back() -> None:
    # stage 3 is 8 -> 8 at stride 1, an identity shortcut that cannot start downsampling in
    # place; stage 2 (set before the failure) must be rolled back
    net = create_model("resnet-mini", widths=(8, 8, 8), strides=(1, 2, 1)).model
    with pytest.raises(
        InputError,
        match=r"cannot set stride 2 in place on a block without a projection shortcut",
    ):
        net.set_stage_strides((1, 1, 2))
    assert net.stage_strides == (1, 2, 1)


def test_wrong_number_of_strides() -> None:
    with pytest.raises(
        InputError,
        match=r"resnet18 has 4 stages, so strides must be 4 positive ints, got \[1, 2, 2\]",
    ):
        create_model("resnet18", strides=(1, 2, 2))
    with pytest.raises(InputError, match="vgg16 has 5 stages"):
        create_model("vgg16").model.set_stage_strides((1, 1, 2, 2))


def test_valid_pooling_trims_a_pixel_like_the_released_code() -> None:
    # 32 -> conv s1 32 -> pool s1 31 -> pool s1 30 -> pool s2 15
    net = create_model("alexnet", strides=(1, 1, 1, 2), stride1_pool="valid").model.eval()
    with torch.no_grad():
        assert net.forward_features(torch.rand(1, 3, 32, 32)).shape[-1] == 15


def test_madry_resnet_handles_odd_sizes() -> None:
    # 15 -> 15 -> 8 -> 4: the average-pool shortcut must match the strided conv (ceil)
    model = create_model("resnet32", in_channels=1, blocks=(1, 1, 1)).eval()
    with torch.no_grad():
        assert model.model.forward_features(torch.rand(1, 1, 15, 15)).shape[-1] == 4
        assert model(torch.rand(2, 1, 15, 15)).shape == (2, 10)

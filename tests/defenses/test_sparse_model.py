"""SparseDecoder, SparseFrontEnd and Ensemble (Eq. 8) against hand-derived values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.core import InputError
from robustlab.core.bpda import bpda
from robustlab.core.randomness import Stochastic, frozen, is_stochastic, seed_stochastic
from robustlab.defenses.sparse_encoder import SparseEncoder
from robustlab.defenses.sparse_model import Ensemble, SparseDecoder, SparseFrontEnd
from robustlab.models import Normalized

ATOMS, SIDE, CODE = 160, 28, 13  # the Fashion-MNIST preset: 4x4 patches, stride 2 -> 13x13x160


def unit_atoms(atoms: int = ATOMS, channels: int = 1, n: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(atoms, channels * n * n, generator=gen, dtype=torch.float64)
    return (d / d.norm(dim=1, keepdim=True)).reshape(atoms, channels, n, n).float()


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def front_end(dropout_p: float = 0.5, top_t: int = 20, seed: int = 0) -> SparseFrontEnd:
    torch.manual_seed(seed)  # weights of decoder and classifier (test-only global seeding)
    encoder = SparseEncoder(unit_atoms(), stride=2, top_t=top_t, dropout_p=dropout_p, eps=0.05, beta=3.0,
                            generator=torch.Generator().manual_seed(seed))
    decoder = SparseDecoder(ATOMS, 1, SIDE)
    classifier = Normalized(nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 10)), mean=[0.5], std=[0.25])
    return SparseFrontEnd(encoder, decoder, classifier)


# --- decoder ---------------------------------------------------------------------------------

def test_decoder_shape_and_range() -> None:
    torch.manual_seed(0)
    decoder = SparseDecoder(ATOMS, 1, SIDE)
    code = 3.0 * torch.randn(4, ATOMS, CODE, CODE)
    out = decoder(code)
    assert out.shape == (4, 1, SIDE, SIDE)
    assert out.min() >= 0 and out.max() <= 1
    assert decoder.output_side(CODE) == 28  # (13 - 1) * 2 + 4, no crop needed


def test_decoder_starts_inside_the_clamp_so_gradients_flow() -> None:
    """A freshly built decoder fed a code as sparse as the encoder's (about 1% nonzero) must put
    most output pixels strictly inside (0, 1): outside, the clamp passes no gradient and the
    nominal training stays at chance (seen with PyTorch's default bias init on 2 of 4 seeds)."""
    for seed in range(8):
        torch.manual_seed(seed)
        decoder = SparseDecoder(ATOMS, 1, SIDE)
        gen = torch.Generator().manual_seed(100 + seed)
        code = torch.randn(16, ATOMS, CODE, CODE, generator=gen)
        code = code * (torch.rand(code.shape, generator=gen) < 0.01)
        out = decoder(code)
        inside = ((out > 0) & (out < 1)).float().mean().item()
        assert inside > 0.5, (seed, inside)
        out.sum().backward()
        assert decoder.up.weight.grad is not None and decoder.up.weight.grad.abs().sum() > 0


def test_decoder_crops_larger_maps() -> None:
    decoder = SparseDecoder(8, 1, SIDE, hidden=(4, 4))
    assert decoder(torch.randn(1, 8, 14, 14)).shape == (1, 1, SIDE, SIDE)  # 30x30 cropped to 28x28


def test_decoder_first_layer_paints_patches_back() -> None:
    """A one-hot code at (l, i, j) puts the first layer's l-th kernel at pixels (2i.., 2j..)."""
    decoder = SparseDecoder(3, 1, SIDE, hidden=(1, 1))
    pattern = torch.arange(16.0).reshape(4, 4)
    with torch.no_grad():
        decoder.up.weight.zero_()
        decoder.up.bias.zero_()
        decoder.up.weight[1, 0] = pattern
    code = torch.zeros(1, 3, CODE, CODE)
    code[0, 1, 5, 7] = 1.0
    painted = decoder.up(code)[0, 0]
    expected = torch.zeros(SIDE, SIDE)
    expected[10:14, 14:18] = pattern
    torch.testing.assert_close(painted, expected)


def test_decoder_bad_inputs() -> None:
    decoder = SparseDecoder(ATOMS, 1, SIDE)
    with pytest.raises(InputError, match=r"expects a \(N, 160, m, m\) code, got \(1, 10, 13, 13\)"):
        decoder(torch.zeros(1, 10, CODE, CODE))
    with pytest.raises(InputError, match="decodes to 26x26, smaller than the 28x28 image"):
        decoder(torch.zeros(1, ATOMS, 12, 12))
    with pytest.raises(InputError, match="atoms must be a positive int"):
        SparseDecoder(0, 1, SIDE)


# --- front end -------------------------------------------------------------------------------

def test_front_end_forward_shape_and_randomness() -> None:
    model = front_end()
    assert model(images(3)).shape == (3, 10)
    assert is_stochastic(model)  # through the encoder's dropout
    assert not is_stochastic(front_end(dropout_p=0.0))
    with pytest.raises(InputError, match="unknown training mode 'joint'"):
        SparseFrontEnd(model.encoder, model.decoder, model.classifier, mode="joint")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="decoder takes 8 code channels but the encoder has 160 atoms"):
        SparseFrontEnd(model.encoder, SparseDecoder(8, 1, SIDE), model.classifier)


def test_front_end_gradient_only_under_bpda() -> None:
    """Quantization outputs sign(x) * ||d_l||_1 or 0: piecewise constant, so its autograd derivative
    is zero almost everywhere and no gradient reaches the input; BPDA identity routes it through the
    surviving coefficients. p = 0 makes the forward deterministic and keeps all top-T survivors."""
    model = front_end(dropout_p=0.0)
    labels = torch.tensor([0, 1])

    x = images().requires_grad_(True)
    F.cross_entropy(model(x), labels).backward()
    assert x.grad is None or torch.count_nonzero(x.grad) == 0

    x = images().requires_grad_(True)
    with bpda(model, mode="identity"):
        F.cross_entropy(model(x), labels).backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0


def test_reconstruction_loss_zero_for_an_exact_identity_autoencoder() -> None:
    """1x1 patches, one unit atom [[1]], T = 1, p = 0, eps = 0: the code is sign(x) * 1, which is
    x itself on binary images; with an identity decoder the autoencoder is the identity map."""
    encoder = SparseEncoder(torch.ones(1, 1, 1, 1), stride=1, top_t=1, dropout_p=0.0, eps=0.0, beta=3.0)
    model = SparseFrontEnd(encoder, nn.Identity(), nn.Flatten(), mode="unsupervised")
    binary = (images() > 0.5).float()
    assert model.reconstruction_loss(binary).item() == 0.0
    # on a grey image of 0.5 the code is sign(0.5) = 1: squared error (1 - 0.5)^2 = 0.25
    assert model.reconstruction_loss(torch.full((2, 1, 5, 5), 0.5)).item() == pytest.approx(0.25)


def test_reconstruction_loss_is_mse_of_the_autoencoder() -> None:
    model = front_end(dropout_p=0.0)
    x = images()
    expected = ((model.decoder(model.encoder(x)) - x) ** 2).mean()
    torch.testing.assert_close(model.reconstruction_loss(x), expected)


# --- ensemble --------------------------------------------------------------------------------

class Scripted(Stochastic):
    """A 'random' model that returns preset logits, one per draw, in order."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = logits
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.tensor([self.logits[self.calls % len(self.logits)]]).expand(x.shape[0], -1)
        self.calls += 1
        return out


def test_ensemble_hand_values() -> None:
    # softmax([0, 0]) = (1/2, 1/2); softmax([log 3, 0]) = (3/4, 1/4); mean (5/8, 3/8)
    ens = Ensemble(Scripted([[0.0, 0.0], [math.log(3.0), 0.0]]), draws=2)
    probs = ens(torch.zeros(1, 1, 2, 2)).exp()
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375]]))


def test_ensemble_equals_mean_of_single_draws() -> None:
    model = front_end()
    x, draws = images(3), 5
    ens = Ensemble(model, draws)
    assert is_stochastic(ens)
    with torch.no_grad():
        seed_stochastic(model, 7)
        ensemble_probs = ens(x).exp()
        seed_stochastic(model, 7)
        singles = [F.softmax(model(x), dim=-1) for _ in range(draws)]
    assert any(not torch.allclose(singles[0], s) for s in singles[1:])  # the draws really differ
    torch.testing.assert_close(ensemble_probs, torch.stack(singles).mean(0))


def test_ensemble_of_one_draw_is_a_single_forward() -> None:
    model = front_end()
    x = images(3)
    with torch.no_grad():
        seed_stochastic(model, 11)
        one = Ensemble(model, 1)(x)
        seed_stochastic(model, 11)
        single = model(x)
    torch.testing.assert_close(one, F.log_softmax(single, dim=-1))
    torch.testing.assert_close(one.softmax(-1), single.softmax(-1))


def test_ensemble_inside_frozen_is_one_path() -> None:
    model = front_end()
    x = images(2)
    with torch.no_grad(), frozen(model):
        torch.testing.assert_close(Ensemble(model, 4)(x), F.log_softmax(model(x), dim=-1))


def test_ensemble_bad_draws() -> None:
    with pytest.raises(InputError, match="draws must be a positive int, got 0"):
        Ensemble(nn.Identity(), 0)


# --- W-AIGA: the autoencoder as the identity in the backward pass ------------------------------


def test_bypass_gradient_is_the_classifiers_gradient_at_the_decoded_image() -> None:
    """W-AIGA (Sec. 4, App. Fig. 8): the gradient w.r.t. x is the classifier's gradient at the
    autoencoder's output, computed here by hand on that output."""
    fe = front_end(dropout_p=0.0).double()
    x = images(3).double()
    with torch.no_grad():
        decoded = fe.autoencode(x)
    z = decoded.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(fe.classifier(z)[:, 2].sum(), z)
    xx = x.clone().requires_grad_(True)
    with bpda(fe, "bypass"):
        (got,) = torch.autograd.grad(fe(xx)[:, 2].sum(), xx)
    assert torch.allclose(got, expected) and expected.abs().sum() > 0
    # "smooth" (W-NFGA) differentiates the decoder instead: a different gradient
    xx = x.clone().requires_grad_(True)
    with bpda(fe, "smooth"):
        (nfga,) = torch.autograd.grad(fe(xx)[:, 2].sum(), xx)
    assert not torch.allclose(nfga, expected)


# --- the conversion and its replay by robustlab.load -------------------------------------------


def test_convert_sparse_front_end_round_trips_through_load(tmp_path) -> None:
    from robustlab.checkpoints import load, save
    from robustlab.defenses import convert_sparse_front_end
    from robustlab.models import create_model

    torch.manual_seed(0)
    net = create_model("resnet-mini", num_classes=10, in_channels=1, mean=(0.3,), std=(0.3,))
    atoms = unit_atoms()
    fe = convert_sparse_front_end(net, atoms, eps=0.1, image_size=SIDE, top_t=16, dropout_p=0.85, quantize=False)
    assert isinstance(fe, SparseFrontEnd) and fe.encoder.top_t == 16 and not fe.encoder.quantize
    assert torch.equal(fe.encoder.atoms, atoms)
    entry = fe.robustlab_recipe["conversions"][-1]
    assert entry["name"] == "sparse-front-end" and entry["options"]["atoms"] == ATOMS
    assert "conversions" not in net.robustlab_recipe or not net.robustlab_recipe["conversions"]  # input untouched
    save(fe.eval(), tmp_path / "m.safetensors")
    back = load(tmp_path / "m.safetensors")
    assert isinstance(back, SparseFrontEnd) and torch.equal(back.encoder.atoms, atoms)
    x = images(4)
    fe.encoder.seed(3)
    back.encoder.seed(3)
    with torch.no_grad():
        assert torch.allclose(fe(x), back(x), atol=1e-6)


@pytest.mark.parametrize("bad", [{"atoms": 10**9}, {"hidden": [64]}, {"patch_size": 0}, {"mode": "both"}])
def test_replay_refuses_hostile_recipes(bad) -> None:
    from robustlab.defenses import CONVERSIONS
    from robustlab.models import create_model

    options = {"atoms": 8, "channels": 1, "patch_size": 4, "image_size": SIDE, "stride": 2, "top_t": 2,
               "dropout_p": 0.5, "eps": 0.1, "beta": 3.0, "keep_sign": True, "sigma": 0.25, "quantize": True,
               "mode": "nominal", "hidden": [4, 4], **bad}
    with pytest.raises(InputError):
        CONVERSIONS.get("sparse-front-end")(create_model("resnet-mini", in_channels=1), **options)


def test_ensemble_conversion_round_trips_through_load(tmp_path) -> None:
    from robustlab.checkpoints import load, save
    from robustlab.defenses import convert_ensemble, convert_sparse_front_end
    from robustlab.models import create_model

    torch.manual_seed(0)
    net = create_model("resnet-mini", num_classes=10, in_channels=1)
    fe = convert_sparse_front_end(net, unit_atoms(), eps=0.1, image_size=SIDE, top_t=16, dropout_p=0.85)
    ens = convert_ensemble(fe, draws=3)
    assert [c["name"] for c in ens.robustlab_recipe["conversions"]] == ["sparse-front-end", "ensemble"]
    save(ens.eval(), tmp_path / "e.safetensors")
    back = load(tmp_path / "e.safetensors")
    assert isinstance(back, Ensemble) and back.draws == 3 and isinstance(back.model, SparseFrontEnd)
    x = images(2)
    seed_stochastic(ens, 5)
    seed_stochastic(back, 5)
    with torch.no_grad():  # the same 3 draws: the mean softmax of 3 single forwards, on both
        assert torch.allclose(ens(x), back(x), atol=1e-6)

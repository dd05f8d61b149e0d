"""Behaviour fingerprints (issue #26, path 6): what a resumed evaluation must be keyed by.

Each test first establishes, independently of the fingerprint code, that the two objects
compared really differ (or really are the same) in behaviour, and that the old key (the
state-dict hash, ``describe_attack``) could not tell them apart where that is the point.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustlab.attacks import PGD, AutoAttack, Transfer, ce_loss
from robustlab.core import ThreatModel
from robustlab.core.randomness import frozen, seed_stochastic, seeded
from robustlab.defenses import convert_dcs, convert_downsampling
from robustlab.defenses.dcs import RandomKernelConv2d
from robustlab.defenses.downsampling import BlurPool
from robustlab.defenses.sparse_encoder import SparseEncoder
from robustlab.defenses.stochastic_downsampling import StochasticDownsample
from robustlab.evaluate import Battery, describe_attack, model_hash
from robustlab.evaluate.fingerprint import (
    attack_fingerprint,
    battery_fingerprint,
    behaviour_key,
    key_mismatch,
    module_fingerprint,
    output_fingerprint,
    probe_logits,
)

T = ThreatModel("linf", 0.1)


def tiny(seed: int = 0, bn: bool = False) -> nn.Sequential:
    """A strided conv, a stride-1 3x3 conv (DCS's default target: the second conv), a head."""
    with seeded(seed):
        layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, stride=2, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(4))
        layers += [nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]
        return nn.Sequential(*layers).eval()


def probe(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(123))


def sd(spp: int) -> nn.Module:
    return convert_downsampling(tiny(), "sd", spp=spp).eval()


def layers_of(model: nn.Module, cls: type) -> list:
    return [m for m in model.modules() if isinstance(m, cls)]


# ---------------------------------------------------------------------------------- modules
def test_sd_models_differing_only_in_spp_get_different_fingerprints():
    a, b, b2 = sd(1), sd(2), sd(2)
    assert [m.spp for m in layers_of(a, StochasticDownsample)] == [1]
    assert [m.spp for m in layers_of(b, StochasticDownsample)] == [2]
    assert model_hash(a) == model_hash(b)  # the old key: spp is no tensor
    assert module_fingerprint(a) != module_fingerprint(b)
    assert module_fingerprint(b) == module_fingerprint(b2)


def test_dcs_models_differing_only_in_n_get_different_fingerprints():
    a = convert_dcs(tiny(), k=3, n=1).eval()
    b = convert_dcs(tiny(), k=3, n=2).eval()
    b2 = convert_dcs(tiny(), k=3, n=2).eval()
    assert [m.n for m in layers_of(a, RandomKernelConv2d)] == [1]
    assert [m.n for m in layers_of(b, RandomKernelConv2d)] == [2]
    assert model_hash(a) == model_hash(b)
    assert module_fingerprint(a) != module_fingerprint(b)
    assert module_fingerprint(b) == module_fingerprint(b2)


@pytest.mark.parametrize("option", ["dropout_p", "beta"])
def test_sparse_encoder_options_change_the_fingerprint(option):
    atoms = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    options = {"stride": 1, "top_t": 4, "dropout_p": 0.5, "eps": 0.1, "beta": 3.0}
    a = SparseEncoder(atoms, **options)
    b = SparseEncoder(atoms, **{**options, option: {"dropout_p": 0.9, "beta": 2.0}[option]})
    assert model_hash(a) == model_hash(b)
    assert module_fingerprint(a) != module_fingerprint(b)
    assert module_fingerprint(a) == module_fingerprint(SparseEncoder(atoms, **options))


class _Private(nn.Module):
    """Config kept in a private attribute, with no extra_repr: only vars() shows it."""

    def __init__(self, spp: int) -> None:
        super().__init__()
        self._spp = spp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._spp


def test_private_plain_attribute_changes_the_fingerprint():
    assert _Private(1).extra_repr() == _Private(2).extra_repr() == ""
    assert module_fingerprint(_Private(1)) != module_fingerprint(_Private(2))
    assert module_fingerprint(_Private(2)) == module_fingerprint(_Private(2))


class _Scaled(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor([scale]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_non_persistent_buffers_change_the_fingerprint():
    assert "scale" not in _Scaled(1.0).state_dict()
    assert model_hash(_Scaled(1.0)) == model_hash(_Scaled(2.0))
    assert module_fingerprint(_Scaled(1.0)) != module_fingerprint(_Scaled(2.0))
    # BlurPool's binomial kernel is a non-persistent buffer
    a = convert_downsampling(tiny(), "blurpool").eval()
    b = copy.deepcopy(a)
    blur = layers_of(b, BlurPool)
    assert len(blur) == 1 and not any(k.endswith("kernel") for k in b.state_dict())
    with torch.no_grad():
        blur[0].kernel.mul_(0.5)
    assert model_hash(a) == model_hash(b)
    assert module_fingerprint(a) != module_fingerprint(b)


def test_train_and_eval_mode_change_the_fingerprint():
    net = tiny()
    evaluated = module_fingerprint(net.eval())
    assert module_fingerprint(net.train()) != evaluated
    assert module_fingerprint(net.eval()) == evaluated
    net[0].train()  # one layer in training mode is enough
    assert module_fingerprint(net) != evaluated


def test_hooks_change_the_fingerprint():
    net = tiny()
    before = module_fingerprint(net)
    handle = net[0].register_forward_hook(lambda m, i, o: o * 2)
    assert module_fingerprint(net) != before
    handle.remove()
    assert module_fingerprint(net) == before


def test_randomness_state_and_draw_records_do_not_change_the_fingerprint():
    x = probe()
    model = sd(2)
    layer = layers_of(model, StochasticDownsample)[0]
    before = module_fingerprint(model)
    assert layer._rl_generator is None
    with torch.no_grad():
        first, second = model(x), model(x)
    assert layer._rl_generator is not None and not torch.equal(first, second)  # it advanced
    assert module_fingerprint(model) == before
    seed_stochastic(model, 7)
    assert layer._rl_seed is not None
    assert module_fingerprint(model) == before
    with frozen(model), torch.no_grad():
        model(x)
        assert layer._rl_frozen_depth == 1 and layer._rl_cache
        assert module_fingerprint(model) == before
    # DCS records the positions it used, and redraw="batch" holds a draw: no configuration
    dcs = convert_dcs(tiny(), k=3, n=2, redraw="batch").eval()
    conv = layers_of(dcs, RandomKernelConv2d)[0]
    before = module_fingerprint(dcs)
    with torch.no_grad():
        dcs(x)
    assert conv.last_positions is not None and conv._held
    assert module_fingerprint(dcs) == before


# ---------------------------------------------------------------------------------- outputs
def test_output_fingerprint_repeats_and_leaves_the_global_rng_alone():
    x = probe()
    a, b = tiny(0), tiny(1)
    assert not torch.equal(a(x), b(x))
    state = torch.get_rng_state()
    fa = output_fingerprint(a, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert output_fingerprint(a, x) == fa
    assert output_fingerprint(b, x) != fa


def test_output_fingerprint_fixes_a_stochastic_models_randomness():
    x = probe()
    model = sd(2)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # really random
    state = torch.get_rng_state()
    f = output_fingerprint(model, x, seed=0)
    assert output_fingerprint(model, x, seed=0) == f
    assert torch.equal(torch.get_rng_state(), state)
    assert output_fingerprint(model, x, seed=1) != f
    assert output_fingerprint(sd(1), x, seed=0) != f
    # the logits it hashes are one seeded forward's: the same as a seeded forward here
    reference = copy.deepcopy(model)
    with seeded(0), torch.no_grad():
        seed_stochastic(reference, 0)
        expected = reference(x)
    assert torch.equal(probe_logits(model, x, seed=0), expected)


def test_output_fingerprint_leaves_the_random_layers_streams_and_buffers_alone():
    x = probe()
    model = sd(2)
    seed_stochastic(model, 5)
    twin = copy.deepcopy(model)
    output_fingerprint(model, x, seed=0)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))  # the layer continues its own stream
    # batch-norm statistics of a model in training mode are restored
    net = tiny(bn=True).train()
    bn = layers_of(net, nn.BatchNorm2d)[0]
    mean, count = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    output_fingerprint(net, x)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.num_batches_tracked, count)
    moved = copy.deepcopy(net)
    with torch.no_grad():
        moved(x)
    assert not torch.equal(layers_of(moved, nn.BatchNorm2d)[0].running_mean, mean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_output_fingerprint_on_cuda_repeats_and_leaves_the_cuda_rng_alone():
    x = probe().cuda()
    model = sd(2).cuda()
    state = torch.cuda.get_rng_state()
    cpu_state = torch.get_rng_state()
    f = output_fingerprint(model, x)
    assert output_fingerprint(model, x) == f
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert output_fingerprint(sd(1).cuda(), x) != f


# ---------------------------------------------------------------------------------- attacks
def test_a_closure_loss_is_a_problem_and_a_registered_loss_is_not():
    weight = 3.0

    def weighted(logits, y, targets=None):
        return weight * ce_loss(logits, y, targets)

    config, problems = attack_fingerprint(PGD(T, steps=3, loss=weighted))
    assert len(problems) == 1
    assert "custom loss" in problems[0] and "weighted" in problems[0] and "pgd" in problems[0]
    assert attack_fingerprint(PGD(T, steps=3, loss="ce"))[1] == []
    assert attack_fingerprint(PGD(T, steps=3, loss=ce_loss))[1] == []  # the registered function
    assert attack_fingerprint(PGD(T, steps=3, loss=lambda z, y, t=None: -z.sum(1)))[1]


def test_a_custom_loss_named_like_a_registered_one_is_still_a_problem():
    def ce(logits, y, targets=None):  # same name as the registered loss, other objective
        return -ce_loss(logits, y, targets)

    custom, registered = PGD(T, steps=3, loss=ce), PGD(T, steps=3, loss="ce")
    assert describe_attack(custom) == describe_attack(registered)  # the old key's collision
    config, problems = attack_fingerprint(custom)
    assert problems and "custom loss" in problems[0]
    assert config != attack_fingerprint(registered)[0]


def test_transfer_surrogates_differing_in_a_plain_attribute_get_different_configs():
    t1 = Transfer(sd(1), PGD(T, steps=3))
    t2 = Transfer(sd(2), PGD(T, steps=3))
    assert describe_attack(t1) == describe_attack(t2)  # the old key could not tell them apart
    c1, p1 = attack_fingerprint(t1)
    c2, p2 = attack_fingerprint(t2)
    assert p1 == p2 == []
    assert c1 != c2
    assert c1["surrogate"]["fingerprint"] == module_fingerprint(t1.surrogate)
    assert c1 == attack_fingerprint(Transfer(sd(1), PGD(T, steps=3)))[0]


def test_transfer_problems_name_the_surrogate_and_the_nested_attack():
    def surrogate(x):
        return x.flatten(1)[:, :3]

    _, problems = attack_fingerprint(Transfer(surrogate, PGD(T, steps=3)))
    assert len(problems) == 1 and "surrogate" in problems[0] and "plain callable" in problems[0]
    inner = PGD(T, steps=3, loss=lambda z, y, t=None: z.sum(1))
    _, problems = attack_fingerprint(Transfer(sd(1), inner))
    assert len(problems) == 1 and problems[0].startswith("transfer.attack:")


def test_nested_attacks_are_described_in_full():
    config, problems = attack_fingerprint(AutoAttack(T, steps=10))
    assert problems == []
    # AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein, 2020, Sec. 5)
    assert [a["name"] for a in config["attacks"]] == ["apgd", "apgd-t", "fab-t", "square"]
    assert config["attacks"][0]["loss"] == "ce" and config["attacks"][0]["steps"] == 10
    assert attack_fingerprint(AutoAttack(T, steps=20))[0] != config


def test_battery_fingerprint_labels_attacks_and_their_problems():
    battery = Battery([PGD(T, steps=3), PGD(T, steps=3, loss=lambda z, y, t=None: z.sum(1))])
    config, problems = battery_fingerprint(battery)
    assert [a["label"] for a in config["attacks"]] == ["pgd", "pgd#2"]
    assert len(problems) == 1 and problems[0].startswith("pgd#2:")
    assert battery_fingerprint(Battery([PGD(T, steps=3)]))[1] == []


# ---------------------------------------------------------------------------------- the key
def test_behaviour_key_and_the_reasons_for_a_mismatch():
    x = probe()
    battery = Battery([PGD(T, steps=3)])
    key, problems = behaviour_key(sd(2), battery, x, seed=0)
    assert set(key) == {"module", "outputs", "battery"} and problems == []
    assert behaviour_key(sd(2), battery, x, seed=0)[0] == key
    assert key_mismatch(key, key) == []
    other, _ = behaviour_key(sd(1), battery, x, seed=0)
    reasons = key_mismatch(key, other)
    assert len(reasons) == 2
    assert any("configuration or weights" in r for r in reasons)
    assert any("outputs" in r for r in reasons)
    longer, _ = behaviour_key(sd(2), Battery([PGD(T, steps=5)]), x, seed=0)
    (reason,) = key_mismatch(key, longer)
    assert "battery" in reason and "attacks[0].steps: 3 -> 5" in reason


def test_stochastic_layers_are_seeded_for_the_probe():
    # a layer whose generator has advanced and one that has none yet give the same probe
    x = probe()
    a, b = sd(2), sd(2)
    with torch.no_grad():
        a(x)  # a's generator now exists and has advanced; b's does not exist yet
    assert output_fingerprint(a, x) == output_fingerprint(b, x)

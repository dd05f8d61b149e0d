"""The robust objectives of issue 15: degenerate cases with known answers, hand-computed losses,
the attacks' defining properties, batch-norm hygiene and config round trips."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import Linear2

from robustlab.attacks import random_point
from robustlab.core import InputError, ThreatModel
from robustlab.data import load_dataset
from robustlab.train import (
    ALP,
    AWP,
    FAT,
    MART,
    MARTRCM,
    PGDAT,
    TRADES,
    FastAT,
    Standard,
    TrainConfig,
    Trainer,
    create_objective,
    fat_perturb,
    fgsm_rs_perturb,
    pgd_perturb,
)

LN2, LN3, LN5 = math.log(2.0), math.log(3.0), math.log(5.0)


class TinyNet(nn.Module):
    """conv -> batch norm -> relu -> global average -> linear: one BN layer to watch."""

    def __init__(self, seed: int = 0, classes: int = 3) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def _batch(n: int = 8, size: int = 6, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ degenerate cases (the issue)
def test_trades_with_beta_zero_is_cross_entropy_training():
    model = TinyNet().train()
    x, y = _batch()
    expected = Standard()(model, x, y).loss
    assert torch.equal(TRADES(beta=0.0, steps=2)(model, x, y, _gen()).loss, expected)
    assert not torch.allclose(TRADES(beta=6.0, steps=2)(model, x, y, _gen()).loss, expected)


def test_pgd_at_with_eps_zero_is_standard_training():
    model = TinyNet().train()
    x, y = _batch()
    expected = Standard()(model, x, y).loss
    assert torch.equal(PGDAT(eps=0.0, steps=3)(model, x, y, _gen()).loss, expected)
    assert not torch.allclose(PGDAT(eps=0.1, steps=3)(model, x, y, _gen()).loss, expected)


# 3 classes, two samples with the same logits (logits = log of the probabilities, so the softmax
# gives them back): p_nat = (1/2, 1/4, 1/4), p_adv = (1/8, 1/2, 3/8); labels y = (0, 1); lam = 6.
P_NAT, P_ADV, Y = [0.5, 0.25, 0.25], [0.125, 0.5, 0.375], torch.tensor([0, 1])
#
# mart (the paper's form), per sample
#   CE(adv) - log(1 - max_{k != y} p_adv,k) + lam * (1 - p_nat,y) * KL(p_nat || p_adv),
#   KL(p_nat || p_adv) = 1/2 ln(4) + 1/4 ln(1/2) + 1/4 ln(2/3) = ln2 - 1/4 ln3  (both samples)
# sample 1 (y=0): 3 ln2 + ln2 (max other 1/2) + 6 * 1/2 * (ln2 - 1/4 ln3) = 7 ln2 - 3/4 ln3
# sample 2 (y=1): ln2 + ln(8/5) (max other 3/8) + 6 * 3/4 * (ln2 - 1/4 ln3)
#               = 8.5 ln2 - ln5 - 9/8 ln3
# mean = (15.5 ln2 - ln5 - 15/8 ln3) / 2 = 3.537222...
MART_EXPECTED = (15.5 * LN2 - LN5 - 15 / 8 * LN3) / 2
#
# mart-rcm: CE(adv) - (1 - max_{k != y} p_adv,k) + lam * (1 - p_nat,y) * KL(p_adv || p_nat),
#   KL(p_adv || p_nat) = 1/8 ln(1/4) + 1/2 ln(2) + 3/8 ln(3/2) = -1/8 ln2 + 3/8 ln3
# sample 1: 3 ln2 - 1/2 + 6 * 1/2 * (-1/8 ln2 + 3/8 ln3) = 21/8 ln2 + 9/8 ln3 - 1/2
# sample 2: ln2 - 5/8 + 6 * 3/4 * (-1/8 ln2 + 3/8 ln3) = 7/16 ln2 + 27/16 ln3 - 5/8
# mean = 49/32 ln2 + 45/32 ln3 - 9/16 = 2.043805...
MART_RCM_EXPECTED = 49 / 32 * LN2 + 45 / 32 * LN3 - 9 / 16


def _hand_logits() -> tuple[torch.Tensor, torch.Tensor]:
    nat = torch.tensor([P_NAT, P_NAT], dtype=torch.float64).log()
    adv = torch.tensor([P_ADV, P_ADV], dtype=torch.float64).log()
    return nat, adv


def test_mart_loss_on_a_hand_computed_three_class_example():
    nat, adv = _hand_logits()
    assert float(MART(lam=6.0).loss_from_logits(nat, adv, Y)) == pytest.approx(MART_EXPECTED, abs=1e-9)
    assert abs(MART_EXPECTED - 3.537222) < 1e-6  # the numbers in the comment
    assert MART().lam == 6.0  # the default


def test_mart_rcm_drops_the_log_and_swaps_the_kl_on_the_same_example():
    nat, adv = _hand_logits()
    rcm = float(MARTRCM(lam=6.0).loss_from_logits(nat, adv, Y))
    assert rcm == pytest.approx(MART_RCM_EXPECTED, abs=1e-9)
    assert abs(MART_RCM_EXPECTED - 2.043805) < 1e-6 and abs(rcm - MART_EXPECTED) > 1.0
    assert MARTRCM().lam == 5.0 and MARTRCM().name == "mart-rcm"


def test_mart_objective_is_the_papers_loss_on_a_noise_started_pgd_written_out():
    model = TinyNet().eval()  # eval: forwards do not depend on the batch, so they can be repeated
    x, y = _batch()
    eps, steps, lam = 0.1, 2, 6.0
    # the attack, written out: x + 0.001 N(0, I) from the generator, then `steps` signed
    # cross-entropy ascent steps of 2.5 eps / steps, each projected onto the ball and [0, 1]
    g = _gen()

    def project(z: torch.Tensor) -> torch.Tensor:
        return (x + (z - x).clamp(-eps, eps)).clamp(0.0, 1.0)

    x_adv = project(x + 0.001 * torch.randn(x.shape, generator=g))
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = project(x_adv.detach() + 2.5 * eps / steps * grad.sign())
    # MART (Wang et al. 2020, Sec. 3), written out per sample and averaged
    with torch.no_grad():
        p_nat, p_adv = model(x).softmax(1), model(x_adv).softmax(1)
    top_wrong = p_adv.scatter(1, y.unsqueeze(1), 0.0).amax(1)
    kl = (p_nat * (p_nat.log() - p_adv.log())).sum(1)
    p_true = p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    p_adv_true = p_adv.gather(1, y.unsqueeze(1)).squeeze(1)
    expected = (-p_adv_true.log() - (1 - top_wrong).log() + lam * kl * (1 - p_true)).mean()
    got = MART(eps=eps, steps=steps, lam=lam, craft_in_eval=True)(model, x, y, _gen()).loss
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)


def test_fast_at_steps_one_and_a_quarter_eps_from_a_uniform_start_and_stays_in_the_ball():
    eps = 0.1
    sign = torch.tensor([1.0, -1.0]).repeat(8).view(1, 1, 4, 4)
    model = Linear2(sign)
    g = torch.Generator().manual_seed(5)
    x = 0.3 + 0.4 * torch.rand(16, 1, 4, 4, generator=g)  # far from 0 and 1: no box clipping
    y = torch.zeros(16, dtype=torch.long)
    obj = FastAT(eps=eps)
    assert obj.alpha == pytest.approx(1.25 * eps)
    x_adv = obj.craft(model, x, y, _gen(7))
    start = random_point(x, "linf", eps, _gen(7)) - x  # the documented start, the same draws
    expected = (start + 1.25 * eps * sign).clamp(-eps, eps)
    assert torch.allclose(x_adv - x, expected, atol=1e-6)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    inside = (start * sign < -0.25 * eps - 1e-4).expand_as(x)  # where the step ends inside the ball
    assert int(inside.sum()) > 20
    assert torch.allclose((x_adv - x)[inside], (start + 1.25 * eps * sign).expand_as(x)[inside], atol=1e-6)
    other = fgsm_rs_perturb(model, x, y, ThreatModel("linf", eps), 1.0 * eps, _gen(7))
    assert not torch.allclose(other, x_adv)  # a step of eps lands elsewhere


def test_fat_stops_a_sample_misclassified_at_the_start_after_tau_steps():
    w = torch.tensor([1.0, -1.0]).repeat(8).view(1, 1, 4, 4)
    model = Linear2(w, b=20.0)  # |<w, x>| <= 16, so class 1 is predicted everywhere in [0, 1]
    x = torch.rand(2, 1, 4, 4, generator=_gen(3))
    y = torch.tensor([0, 1])  # sample 0 is misclassified from the start, sample 1 never
    threat = ThreatModel("linf", 0.1)
    for tau in (0, 1, 3):
        x_adv, taken = fat_perturb(model, x, y, threat, 10, 0.025, tau, _gen(4), omega=0.001)
        assert taken.tolist() == [tau, 10]
        assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    x_adv, _ = fat_perturb(model, x, y, threat, 10, 0.025, 0, _gen(4))
    start = (random_point(x, "linf", 0.1, _gen(4)) - x).clamp(-0.1, 0.1) + x
    assert torch.allclose(x_adv[0], start[0].clamp(0, 1))  # stopped where it started
    plain = pgd_perturb(model, x, y, threat, 10, 0.025, _gen(4))
    assert torch.allclose(x_adv[1], plain[1])  # a sample never misclassified runs the full PGD


def test_fat_tau_grows_with_the_epoch_and_the_objective_uses_it():
    obj = FAT(steps=10, tau=0, tau_milestones=(1, 3), omega=0.0)
    assert [obj.tau_at(e) for e in range(5)] == [0, 1, 1, 2, 2]
    assert FAT().tau_at(49) == 0 and FAT().tau_at(50) == 1 and FAT().tau_at(90) == 2  # official
    model = Linear2(torch.ones(1, 1, 4, 4), b=20.0)
    x, y = torch.rand(3, 1, 4, 4, generator=_gen(0)), torch.zeros(3, dtype=torch.long)
    obj.set_epoch(3)
    assert obj.current_tau == 2
    expected, taken = fat_perturb(model, x, y, obj.threat, 10, obj.alpha, 2, _gen(2))
    assert taken.tolist() == [2, 2, 2]
    assert torch.equal(obj.craft(model, x, y, _gen(2)), expected)


def test_alp_loss_is_both_cross_entropies_plus_the_weighted_pairing():
    model = TinyNet().train()
    x, y = _batch()
    threat = ThreatModel("linf", 0.1)
    model.eval()  # the documented attack: eval-mode PGD from a uniform start, same draws
    x_adv = pgd_perturb(model, x, y, threat, 3, 0.05, _gen())
    model.train()
    out = ALP(eps=0.1, steps=3, step_size=0.05, lam=0.7)(model, x, y, _gen())
    z_nat, z_adv = model(x), model(x_adv)
    pairing = ((z_nat - z_adv) ** 2).sum() / z_nat.numel()
    expected = F.cross_entropy(z_nat, y) + F.cross_entropy(z_adv, y) + 0.7 * pairing
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.logits, z_nat)  # the clean logits
    assert float(pairing.detach()) > 1e-6  # the pairing term matters here


def test_trades_loss_and_attack_match_a_direct_implementation():
    model = TinyNet().train()
    x, y = _batch()
    eps, alpha, steps, beta = 0.1, 0.03, 3, 2.0
    model.eval()  # the official attack: eval mode, start x + 0.001 N(0, I), ascend the summed KL
    p_fixed = F.softmax(model(x), dim=1).detach()
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=_gen())).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_fixed, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    out = TRADES(eps=eps, steps=steps, step_size=alpha, beta=beta)(model, x, y, _gen())
    z_nat, z_adv = model(x), model(x_adv)
    p_nat = F.softmax(z_nat, dim=1)
    kl_mean = (p_nat * (p_nat.log() - F.log_softmax(z_adv, dim=1))).sum() / x.shape[0]  # batchmean
    assert torch.allclose(out.loss, F.cross_entropy(z_nat, y) + beta * kl_mean, atol=1e-5)
    assert float(kl_mean.detach()) > 1e-4


# ------------------------------------------------------------------------------ AWP (the issue)
def _trained(objective, seed: int = 0) -> dict[str, torch.Tensor]:
    data = load_dataset("synthetic", "train", num_classes=3, in_channels=1, image_size=(6, 6), train_size=32)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.1, schedule="constant", augment=False, seed=seed)
    return Trainer(TinyNet(seed), objective, cfg).fit(data).model.state_dict()


@pytest.mark.parametrize("base", [PGDAT(steps=2), TRADES(steps=2)], ids=["pgd-at", "trades"])
def test_awp_with_gamma_zero_gives_exactly_its_base_objectives_update(base):
    reference = _trained(base)
    same = _trained(AWP(base=base.name, gamma=0.0, warmup=0, steps=2))
    assert reference.keys() == same.keys()
    for k in reference:
        assert torch.equal(reference[k], same[k]), k
    moved = _trained(AWP(base=base.name, gamma=0.05, warmup=0, steps=2))
    assert any(not torch.equal(reference[k], moved[k]) for k in reference)
    # during warmup (epoch 0 < 1 here) AWP is its base, whatever gamma
    warm = _trained(AWP(base=base.name, gamma=0.05, warmup=1, steps=2))
    for k in reference:
        assert torch.equal(reference[k], warm[k]), k


def test_awp_perturbation_is_relative_ascending_and_leaves_the_model_alone():
    model = TinyNet().eval()
    x, y = _batch()
    obj = AWP(gamma=1e-3, warmup=0, steps=2)
    x_adv = obj.inner.craft(model, x, y, _gen())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    v = obj.perturbation(model, x, x_adv, y)
    assert set(v) == {"conv.weight", "fc.weight"}  # the parameters with more than one dimension
    for name, w in model.named_parameters():
        assert torch.equal(w, before[name]) and w.grad is None
        if name in v:
            assert float(v[name].norm()) == pytest.approx(float(w.detach().norm()), rel=1e-5)
    params = {n: p + 1e-3 * v[n] for n, p in model.named_parameters() if n in v}
    perturbed = torch.func.functional_call(model, params, (x_adv,))
    assert F.cross_entropy(perturbed, y) > F.cross_entropy(model(x_adv), y)


def test_awp_defaults_follow_the_official_code_per_base():
    assert (AWP().gamma, AWP().warmup) == (0.01, 0)
    assert (AWP(base="trades").gamma, AWP(base="trades").warmup, AWP(base="trades").beta) == (0.005, 10, 6.0)


# ---------------------------------------------------------------------- batch norm and configs
OBJECTIVES = [  # (name, options, training forwards per call)
    ("pgd-at", {"steps": 2}, 1),
    ("alp", {"steps": 2}, 2),
    ("trades", {"steps": 2}, 2),
    ("mart", {"steps": 2}, 2),
    ("mart-rcm", {"steps": 2}, 2),
    ("fat", {"steps": 2}, 1),
    ("fast-at", {}, 1),
    ("fast-at", {"craft_in_eval": True}, 1),
    ("awp", {"steps": 2, "warmup": 0}, 1),
    ("awp", {"base": "trades", "steps": 2, "warmup": 0}, 2),
]


@pytest.mark.parametrize(("name", "options", "forwards"), OBJECTIVES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(OBJECTIVES)])
def test_attack_passes_do_not_update_batch_norm_statistics(name, options, forwards):
    model = TinyNet().train()
    seen: list[torch.Tensor] = []
    model.bn.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()) if m.training else None)
    mean, var = model.bn.running_mean.clone(), model.bn.running_var.clone()
    tracked = int(model.bn.num_batches_tracked)
    x, y = _batch()
    create_objective(name, **options)(model, x, y, _gen())
    assert model.training
    assert int(model.bn.num_batches_tracked) - tracked == forwards
    for batch in seen[-forwards:]:  # replay only the training forwards
        mean = 0.9 * mean + 0.1 * batch.mean(dim=(0, 2, 3))
        var = 0.9 * var + 0.1 * batch.var(dim=(0, 2, 3), unbiased=True)
    assert torch.allclose(model.bn.running_mean, mean, atol=1e-6)
    assert torch.allclose(model.bn.running_var, var, atol=1e-6)


ROUND_TRIP = [
    ("pgd-at", {}), ("pgd-at", {"eps": 8 / 255, "norm": "l2", "steps": 3, "step_size": 0.01}),
    ("alp", {}), ("alp", {"lam": 1.0, "craft_in_eval": False}),
    ("trades", {}), ("trades", {"beta": 1.0}),
    ("mart", {}), ("mart", {"lam": 5.0}), ("mart-rcm", {}),
    ("fat", {}), ("fat", {"tau": 1, "tau_milestones": (2, 4, 6), "omega": 0.0}),
    ("fast-at", {}), ("fast-at", {"step_factor": 1.0, "craft_in_eval": True}),
    ("awp", {}), ("awp", {"base": "trades", "gamma": 0.01, "warmup": 2, "beta": 3.0}),
]


@pytest.mark.parametrize(("name", "options"), ROUND_TRIP, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ROUND_TRIP)])
def test_config_round_trips_through_create_objective(name, options):
    obj = create_objective(name, **options)
    config = json.loads(json.dumps(obj.config()))  # as stored in a checkpoint header
    assert config["name"] == name
    rebuilt = create_objective(config.pop("name"), **config)
    assert rebuilt == obj and rebuilt.config() == obj.config()
    for key, value in options.items():
        assert obj.config()[key] == (list(value) if isinstance(value, tuple) else value)


def test_trainer_tells_epoch_dependent_objectives_the_epoch():
    class Recorder(Standard):
        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "epochs", [])

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    obj = Recorder()
    data = load_dataset("synthetic", "train", num_classes=3, in_channels=1, image_size=(6, 6), train_size=16)
    Trainer(TinyNet(), obj, TrainConfig(epochs=3, batch_size=16, schedule="constant")).fit(data)
    assert obj.epochs == [0, 1, 2]


def test_bad_settings_name_the_problem():
    with pytest.raises(InputError, match="trades beta must be a finite number >= 0, got -1"):
        TRADES(beta=-1.0)
    with pytest.raises(InputError, match="mart steps must be an int >= 1, got 0"):
        MART(steps=0)
    with pytest.raises(InputError, match="fat tau milestone must be an int >= 0, got -2"):
        FAT(tau_milestones=(-2,))
    with pytest.raises(InputError, match="awp's base must be one of pgd-at, trades, got 'mart'"):
        AWP(base="mart")
    with pytest.raises(InputError, match="beta applies to awp's base 'trades' only"):
        AWP(beta=6.0)
    with pytest.raises(InputError, match="awp gamma must be a finite number >= 0"):
        AWP(gamma=-0.1)
    with pytest.raises(InputError, match="eps must be a finite number"):
        FastAT(eps=float("nan"))

"""The attack base class: input rules, the output adapter, counting, estimators, losses."""

from __future__ import annotations

import pytest
import torch
from attack_toys import NoiseInjection, Quantize
from torch import nn
from toys import Linear2

from robustlab.attacks import (
    EOT,
    FGSM,
    LOSSES,
    PGD,
    AttackResult,
    Gradient,
    ModelFn,
    create_attack,
    cw_loss,
    dlr_loss,
    logits_of,
    project_hyperplane_box,
)
from robustlab.core import InputError, ThreatModel, UnknownNameError
from robustlab.core.randomness import seed_stochastic

LINF = ThreatModel("linf", 0.1)


def _toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5)).eval()


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=g), torch.randint(0, 5, (n,), generator=g)


# --- the model-output adapter -----------------------------------------------------------------
def test_logits_of_adapts_tuples_dicts_and_single_logits() -> None:
    z = torch.randn(4, 3)
    assert logits_of(z) is z
    assert logits_of((z, "features")) is z
    assert logits_of({"logits": z, "aux": 1}) is z
    single = torch.tensor([-1.0, 2.0])
    two = logits_of(single)
    assert two.shape == (2, 2)
    assert two.argmax(1).tolist() == [0, 1]
    torch.testing.assert_close(two.softmax(1)[:, 1], torch.sigmoid(single))
    assert torch.equal(logits_of(single.unsqueeze(1)), two)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"out": torch.zeros(2, 3)}, "without a 'logits' key"),
        ((), "empty tuple"),
        ("logits", "as a tensor, got str"),
        (torch.zeros(2, 3, 4), r"shape \(N, K\), got \(2, 3, 4\)"),
    ],
)
def test_logits_of_rejects_other_outputs(output: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        logits_of(output)


def test_attacks_accept_models_returning_dicts_and_binary_logits() -> None:
    x, _ = _data()
    lin = nn.Sequential(nn.Flatten(), nn.Linear(48, 1))
    y = (lin(x).squeeze(1) > 0).long()
    res = PGD(LINF, steps=3).run(lambda v: {"logits": lin(v)}, x, y)
    assert res.logits.shape == (8, 2)


# --- input rules ------------------------------------------------------------------------------
def test_images_outside_unit_range_raise() -> None:
    x, y = _data()
    with pytest.raises(InputError, match=r"x must lie in \[0, 1\], got values in"):
        PGD(LINF).run(_toy(), x * 3, y)


def test_wrong_image_shape_raises() -> None:
    x, y = _data()
    with pytest.raises(InputError, match=r"x must be a 4-D NCHW batch, got shape \(3, 4, 4\)"):
        PGD(LINF).run(_toy(), x[0], y[:1])


def test_label_count_mismatch_raises() -> None:
    x, y = _data()
    with pytest.raises(InputError, match="got 7 labels for 8 images"):
        PGD(LINF).run(_toy(), x, y[:7])


def test_unknown_attack_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown attack 'pgdd'; known attacks: .*pgd"):
        create_attack("pgdd", LINF)


def test_threat_norm_and_targets_are_checked() -> None:
    with pytest.raises(InputError, match="cw-l2 supports the l2 threat model"):
        create_attack("cw-l2", LINF)
    with pytest.raises(InputError, match="threat must be a core.ThreatModel"):
        PGD(0.1)  # type: ignore[arg-type]
    x, y = _data()
    with pytest.raises(InputError, match="apgd-t is untargeted; it takes no targets"):
        create_attack("apgd-t", LINF).run(_toy(), x, y, targets=y)
    with pytest.raises(InputError, match="unknown BPDA mode"):
        PGD(LINF, bpda="straight")  # type: ignore[arg-type]


def test_attacks_are_immutable_after_construction() -> None:
    attack = PGD(LINF, steps=5)
    with pytest.raises(AttributeError, match="configured once at construction"):
        attack.steps = 50


def test_model_mode_is_left_alone() -> None:
    model = _toy().train()
    x, y = _data()
    with pytest.warns(UserWarning, match="training mode"):
        res = PGD(LINF, steps=2).run(model, x, y)
    assert model.training and [w.code for w in res.warnings] == ["train-mode"]
    res = PGD(LINF, steps=2).run(model, x, y, train_mode_ok=True)  # on purpose: no warning
    assert model.training and res.warnings == ()
    model.eval()
    PGD(LINF, steps=2).run(model, x, y)
    assert not model.training


# --- results and counting ---------------------------------------------------------------------
def test_result_fields_and_pass_counts() -> None:
    x, y = _data()
    model = _toy()
    res = PGD(LINF, steps=4, early_stop=False).run(model, x, y)
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == x.shape and not res.x_adv.requires_grad
    assert res.success.dtype == torch.bool and res.success.shape == (8,)
    # 4 gradient steps on 8 images, plus one forward at the last iterate.
    assert res.backward_passes == 4 * 8
    assert res.forward_passes == 5 * 8
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)


def test_robust_accuracy_is_the_closed_form_worst_case_of_a_linear_model() -> None:
    # Linear2 (logits [0, z], z = <w, x> + b): the cross-entropy's input gradient has the sign of
    # -w (label 1) or +w (label 0) everywhere, so 4 steps of 2.5 eps / 4 (2.5 eps of travel from
    # any start in the ball) end at the ball's worst corner, clipped to [0, 1]. A sample stays
    # robust iff its margin there keeps its sign (class 1 iff z > 0).
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 4, 4, generator=g)
    x = torch.rand(200, 3, 4, 4, generator=g)
    model = Linear2(w, b=-float(w.sum()) / 2).eval()
    with torch.no_grad():
        y = (model(x)[:, 1] > 0).long()
    threat = ThreatModel("linf", 0.03)
    res = PGD(threat, steps=4, early_stop=False).run(model, x, y, generator=g)
    label_side = (2 * y - 1).view(-1, 1, 1, 1).float() * w.sign()  # moving along it helps label y
    worst = (x - threat.eps * label_side).clamp(0, 1)
    z_worst = (worst * w).flatten(1).sum(1) + model.b
    robust = torch.where(y == 1, z_worst > 0, z_worst <= 0)
    assert 0.2 < robust.double().mean() < 0.8  # the toy is not degenerate
    assert torch.equal(res.success, ~robust)
    assert res.robust_accuracy == pytest.approx(robust.double().mean().item())


def test_targeted_success_means_hitting_the_target() -> None:
    x, y = _data()
    model = _toy()
    targets = (y + 1) % 5
    res = PGD(ThreatModel("linf", 1.0), steps=10).run(model, x, y, targets=targets)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) == targets)
    assert bool(res.success.all())


def test_the_default_generator_makes_runs_repeat() -> None:
    x, y = _data()
    model = _toy()
    a = PGD(LINF, steps=3).run(model, x, y)
    b = PGD(LINF, steps=3).run(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    c = PGD(LINF, steps=3).run(model, x, y, generator=g1)
    d = PGD(LINF, steps=3).run(model, x, y, generator=g2)
    assert not torch.equal(c.x_adv, d.x_adv)


# --- gradient estimators ----------------------------------------------------------------------
def _objective(y: torch.Tensor):  # type: ignore[no-untyped-def]
    return lambda z: torch.nn.functional.cross_entropy(z, y, reduction="none")


def test_eot_on_a_deterministic_model_equals_the_plain_gradient() -> None:
    x, y = _data()
    model = _toy()
    plain = Gradient()(ModelFn(model), x, _objective(y))
    eot = EOT(10)(ModelFn(model), x, _objective(y))
    assert torch.equal(eot.grad, plain.grad)  # exact: one pass suffices when nothing is random
    forced_fm = ModelFn(model)
    forced = EOT(10, skip_deterministic=False)(forced_fm, x, _objective(y))
    torch.testing.assert_close(forced.grad, plain.grad, rtol=1e-6, atol=1e-9)
    assert forced_fm.backward_passes == 10 * 8


def test_eot_averages_fresh_draws_of_a_stochastic_model() -> None:
    x, y = _data(4)
    model = nn.Sequential(NoiseInjection(0.5), _toy())
    fm = ModelFn(model)
    assert fm.stochastic
    seed_stochastic(model, 7)
    est = EOT(8)(fm, x, _objective(y))
    assert fm.forward_passes == fm.backward_passes == 8 * 4
    # the peer: the same 8 draws (the noise layer seeded alike), one plain gradient each
    seed_stochastic(model, 7)
    singles = [Gradient()(ModelFn(model), x, _objective(y)) for _ in range(8)]
    assert not torch.equal(singles[0].grad, singles[1].grad)  # the draws differ
    torch.testing.assert_close(est.grad, torch.stack([s.grad for s in singles]).mean(0))
    torch.testing.assert_close(est.loss, torch.stack([s.loss for s in singles]).mean(0))


def test_normalized_eot_averages_unit_gradients() -> None:
    x, y = _data()
    model = _toy()
    est = EOT(4, normalize=True)(ModelFn(model), x, _objective(y))
    torch.testing.assert_close(est.grad.flatten(1).norm(dim=1), torch.ones(8))
    plain = Gradient()(ModelFn(model), x, _objective(y)).grad
    torch.testing.assert_close(
        est.grad, plain / plain.flatten(1).norm(dim=1).view(-1, 1, 1, 1), rtol=1e-5, atol=1e-7
    )


def test_eot_needs_positive_n() -> None:
    with pytest.raises(InputError, match=r"EOT n \(draws\) must be an int >= 1"):
        EOT(0)


def test_attack_level_bpda_on_an_identity_quantizer_changes_nothing() -> None:
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(Quantize(enabled=False), _toy()).eval()
    plain = PGD(LINF, steps=5).run(model, x, y)
    through = PGD(LINF, steps=5, bpda="identity").run(model, x, y)
    assert torch.equal(plain.x_adv, through.x_adv)


def test_attack_level_bpda_breaks_a_quantized_model() -> None:
    x, y = _data(32)
    torch.manual_seed(0)
    model = nn.Sequential(Quantize(4.0), _toy()).eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # all clean-correct
    plain = FGSM(ThreatModel("linf", 0.3)).run(model, x, y)
    through = FGSM(ThreatModel("linf", 0.3), bpda="identity").run(model, x, y)
    assert plain.success.sum() == 0  # zero gradient: FGSM cannot move
    assert through.success.sum() > 0


# --- losses -----------------------------------------------------------------------------------
def test_losses_on_hand_made_logits() -> None:
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(cw_loss(z, y), torch.tensor([-2.0, 3.0]))
    t = torch.tensor([1, 2])
    torch.testing.assert_close(cw_loss(z, y, t), torch.tensor([-2.0, 3.0]))
    # untargeted DLR: -(z_y - max_other) / (z_pi1 - z_pi3)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-2.0 / 3.0, 3.0 / 4.0]))
    # targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    torch.testing.assert_close(dlr_loss(z, y, t), torch.tensor([-2.0 / 3.5, 3.0 / 4.5]))
    assert set(LOSSES.names()) == {"ce", "cw", "dlr"}


def test_dlr_is_shift_and_scale_invariant() -> None:
    z = torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    t = (y + 3) % 10
    torch.testing.assert_close(dlr_loss(3 * z + 7, y), dlr_loss(z, y))
    torch.testing.assert_close(dlr_loss(3 * z + 7, y, t), dlr_loss(z, y, t))


# --- FAB's projection -------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hyperplane_box_projection_is_feasible_and_minimal(norm: str) -> None:
    scipy_optimize = pytest.importorskip("scipy.optimize")
    g = torch.Generator().manual_seed(0)
    d = 6
    x = torch.rand(20, d, generator=g, dtype=torch.float64)
    w = torch.randn(20, d, generator=g, dtype=torch.float64)
    b = (w * torch.rand(20, d, generator=g, dtype=torch.float64)).sum(1)  # a reachable plane
    step = project_hyperplane_box(x, w, b, norm)
    torch.testing.assert_close((w * (x + step)).sum(1), b)
    assert bool(((x + step) >= -1e-12).all() and ((x + step) <= 1 + 1e-12).all())
    for i in range(20):
        xi, wi, bi = x[i].numpy(), w[i].numpy(), float(b[i])
        if norm == "linf":  # LP: min t s.t. |d_j| <= t, <w, d> = c, box
            c = bi - wi @ xi
            res = scipy_optimize.linprog(
                c=[0] * d + [1],
                A_ub=[[1 if k == j else 0 for k in range(d)] + [-1] for j in range(d)]
                + [[-1 if k == j else 0 for k in range(d)] + [-1] for j in range(d)],
                b_ub=[0] * (2 * d),
                A_eq=[list(wi) + [0]],
                b_eq=[c],
                bounds=[(-xi[j], 1 - xi[j]) for j in range(d)] + [(0, None)],
            )
            assert step[i].abs().max().item() == pytest.approx(res.fun, abs=1e-7)
        else:
            res = scipy_optimize.minimize(
                lambda v: float((v**2).sum()),
                x0=step[i].numpy() * 0,
                constraints=[
                    {"type": "eq", "fun": lambda v, wi=wi, xi=xi, bi=bi: wi @ (xi + v) - bi}
                ],
                bounds=[(-xi[j], 1 - xi[j]) for j in range(d)],
                method="SLSQP",
                options={"ftol": 1e-12, "maxiter": 500},
            )
            assert step[i].norm().item() == pytest.approx(float(res.fun) ** 0.5, rel=1e-4, abs=1e-6)


def test_hyperplane_box_projection_goes_to_the_corner_when_unreachable() -> None:
    x = torch.full((1, 3), 0.5)
    w = torch.ones(1, 3)
    b = torch.tensor([10.0])  # <w, z> <= 3 in the box
    step = project_hyperplane_box(x, w, b, "linf")
    torch.testing.assert_close(x + step, torch.ones(1, 3))


def test_every_registered_attack_is_sealed() -> None:
    from robustlab.attacks import ATTACKS

    options = {"transfer": {"surrogate": _toy()}}
    names = ATTACKS.names()
    assert len(names) >= 14  # the registry is not empty by accident
    for name in names:
        threat = LINF if "linf" in ATTACKS.meta(name)["norms"] else ThreatModel("l2", 0.5)
        attack = create_attack(name, threat, **options.get(name, {}))
        with pytest.raises(AttributeError, match="configured once"):
            attack.foo = 1  # type: ignore[attr-defined]
        with pytest.raises(AttributeError, match="configured once"):
            attack.threat = threat

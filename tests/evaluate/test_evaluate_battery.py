import hashlib
import json

import pytest
import torch
from evaluate_toys import BinaryLinear, Spy, linear_model, toy_data, worst_case_margin

from robustlab.attacks import EOT, FGSM, PGD
from robustlab.core import InputError, ThreatModel, UnknownNameError
from robustlab.evaluate import (
    BATTERIES,
    Battery,
    EvalResult,
    create_battery,
    describe_attack,
    run_battery,
)

T = ThreatModel("linf", 0.15)


def test_worst_case_matches_the_closed_form_of_a_linear_model():
    # A binary linear model's worst case over the L-inf ball (within [0, 1]) is known in closed
    # form; FGSM from the clean point and PGD with a step budget past eps both reach it exactly.
    net = BinaryLinear(seed=4)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(200, 1, 4, 4, generator=g)
    with torch.no_grad():
        z = net(x)
    y = (z > 0).long()
    y[:20] = 1 - y[:20]  # 20 samples misclassified clean
    small, large = ThreatModel("linf", 0.02), ThreatModel("linf", 0.06)
    battery = Battery([FGSM(small), PGD(large, steps=20), PGD(large, steps=5)])
    assert battery.labels == ("fgsm", "pgd", "pgd#2")
    r = run_battery(net, (x, y), battery, batch_size=64)
    assert r.clean_acc == pytest.approx(180 / 200)
    exact_small = worst_case_margin(net.w, float(net.b), x, y, 0.02) > 0
    exact_large = worst_case_margin(net.w, float(net.b), x, y, 0.06) > 0
    assert 0 < int(exact_large.sum()) < int(exact_small.sum()) < 180  # the toy is not degenerate
    assert torch.equal(r.clean_correct[0], y == (z > 0).long())
    assert torch.equal(r.seen["fgsm"][0], r.clean_correct[0])
    assert torch.equal(r.clean_correct[0] & ~r.success["fgsm"][0], exact_small)
    assert torch.equal(r.seen["pgd"][0], exact_small)  # only what FGSM left robust
    assert torch.equal(r.robust[0], exact_large)
    assert r.per_attack["fgsm"].robust_acc == pytest.approx(exact_small.double().mean().item())
    assert r.robust_acc == pytest.approx(exact_large.double().mean().item())
    assert r.per_attack["pgd#2"].seen == int(exact_large.sum()) and r.per_attack["pgd#2"].broken == 0


def test_a_broken_sample_is_not_passed_to_the_next_attack():
    net = linear_model()
    x, y = toy_data(net, n=64)
    log: list = []
    r = run_battery(net, (x, y), Battery([PGD(T, steps=10), Spy(T, log)]), batch_size=64)
    (call,) = log
    survivors = r.clean_correct[0] & ~r.success["pgd"][0]
    assert 0 < call["x"].shape[0] == int(survivors.sum()) < int(r.clean_correct.sum())
    assert torch.equal(call["x"], x[survivors]) and torch.equal(call["y"], y[survivors])
    assert r.per_attack["spy"].seen == int(survivors.sum())
    assert r.per_attack["spy"].forward_passes == int(survivors.sum())  # it was charged for those only


def test_no_attack_runs_when_every_sample_is_already_broken():
    net = linear_model()
    x, y = toy_data(net, n=8)
    y = (y + 1) % 3  # every sample misclassified clean
    log: list = []
    r = run_battery(net, (x, y), Battery([Spy(T, log)]))
    assert log == [] and r.clean_acc == 0 and r.robust_acc == 0 and r.per_attack["spy"].seen == 0


def test_eps_zero_gives_clean_accuracy():
    net = linear_model()
    x, y = toy_data(net, n=48)
    zero = ThreatModel("linf", 0.0)
    r = run_battery(net, (x, y), Battery([PGD(zero, steps=5), FGSM(zero)]), batch_size=20)
    assert r.robust_acc == r.clean_acc == pytest.approx(42 / 48)
    assert torch.equal(r.robust, r.clean_correct)


def test_pgd_steps_move_as_far_as_their_budget_allows():
    # From the clean point (no random start), s steps of 0.01 along a linear model's constant
    # gradient sign reach distance min(s * 0.01, eps): the robust set is the closed form's there.
    net = BinaryLinear(seed=1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(300, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = (net(x) > 0).long()
    eps = 0.08
    for s in (1, 3, 20):
        attack = PGD(ThreatModel("linf", eps), steps=s, step_size=0.01, random_start=False)
        r = run_battery(net, (x, y), Battery([attack]))
        exact = worst_case_margin(net.w, float(net.b), x, y, min(s * 0.01, eps)) > 0
        assert torch.equal(r.robust[0], exact), s


def test_a_run_repeats_bit_for_bit_and_the_seed_matters():
    net = linear_model(hidden=16, seed=1)
    x, y = toy_data(net, n=64, seed=1)
    b = Battery([PGD(ThreatModel("linf", 0.05), steps=3)])
    a1 = run_battery(net, (x, y), b, seed=3, batch_size=16)
    a2 = run_battery(net, (x, y), b, seed=3, batch_size=16)
    assert a1.to_dict()["masks"] == a2.to_dict()["masks"] and a1.robust_acc == a2.robust_acc
    assert a1.config == a2.config
    # another seed draws other PGD random starts: near the boundary some samples change verdict
    # (measured: 1 of 64 with seed 4, 2 with seed 5); the images and the battery are the same
    others = [run_battery(net, (x, y), b, seed=s, batch_size=16) for s in (4, 5)]
    assert all(o.indices == a1.indices and o.clean_acc == a1.clean_acc for o in others)
    assert any(not torch.equal(o.robust, a1.robust) for o in others)


def test_result_is_json_ready_and_round_trips():
    net = linear_model()
    x, y = toy_data(net, n=20)
    r = run_battery(net, (x, y), Battery([FGSM(T)]), repeats=2)
    d = json.loads(json.dumps(r.to_dict()))
    back = EvalResult.from_dict(d)
    assert back.to_dict() == r.to_dict()
    assert torch.equal(back.robust, r.robust) and back.robust.shape == (2, 20)
    md = r.markdown()
    assert "| clean |" in md and "after fgsm" in md and "worst case" in md and "±" in md


def test_n_selects_the_images_load_dataset_limit_keeps_balanced_over_classes():
    from robustlab.data import load_dataset

    full = load_dataset("synthetic", "test", num_classes=3, image_size=4, test_size=60)
    limited = load_dataset("synthetic", "test", num_classes=3, image_size=4, test_size=60, limit=12, seed=5)
    net = linear_model()
    r = run_battery(net, full, "quick", n=12, batch_size=5, seed=5)
    # the documented rule: the CLI's load_dataset(..., limit=n, seed) subset, not the first n
    assert r.n == 12 and r.indices == limited.indices.tolist() and r.dataset == "synthetic"
    assert r.indices != list(range(12)) and r.indices == sorted(r.indices)
    assert torch.bincount(full.targets[r.indices], minlength=3).tolist() == [4, 4, 4]
    assert r.per_attack["pgd"].config["threat"] == {"norm": "linf", "eps": 0.1}
    assert r.per_attack["pgd"].config["steps"] == 20
    # the same images through the CLI's path (the subset, all of it) and as raw tensors
    via_limit = run_battery(net, limited, "quick", batch_size=5, seed=5)
    assert via_limit.indices == r.indices and via_limit.config["indices_sha256"] == r.config["indices_sha256"]
    assert torch.equal(via_limit.robust, r.robust) and torch.equal(via_limit.clean_correct, r.clean_correct)
    x = torch.stack([full[i][0] for i in range(60)])
    y = torch.tensor([full[i][1] for i in range(60)])
    same = run_battery(net, (x, y), "quick", threat=ThreatModel("linf", 0.1), n=12, batch_size=5, seed=5)
    assert same.indices == r.indices
    assert torch.equal(same.robust, r.robust) and torch.equal(same.clean_correct, r.clean_correct)
    # another seed picks other images, and the recorded hash says so
    other = run_battery(net, full, "quick", n=12, batch_size=5, seed=6)
    assert other.indices != r.indices and other.config["indices_sha256"] != r.config["indices_sha256"]
    assert r.config["indices_sha256"] == hashlib.sha256(json.dumps(r.indices).replace(" ", "").encode()).hexdigest()


def test_describe_attack_holds_threat_steps_loss_and_eot():
    d = describe_attack(PGD(ThreatModel("l2", 0.5), steps=7, loss="cw", grad=EOT(n=5)))
    assert d["name"] == "pgd" and d["class"] == "PGD" and d["steps"] == 7 and d["loss"] == "cw"
    assert d["threat"] == {"norm": "l2", "eps": 0.5}
    assert d["grad"]["type"] == "EOT" and d["grad"]["n"] == 5
    json.dumps(d)


def test_named_batteries():
    assert {"quick", "standard", "rand", "full"} <= set(BATTERIES.names())
    quick = create_battery("quick", T)
    assert quick.name == "quick" and isinstance(quick.attacks[0], PGD) and quick.attacks[0].steps == 20
    standard = create_battery("standard", T).config()["attacks"]
    assert [a["label"] for a in standard] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert standard[1]["n_target_classes"] == 9 and standard[3]["n_queries"] == 5000
    rand = create_battery("rand", T).config()["attacks"]
    assert [(a["label"], a["loss"], a["grad"]["n"]) for a in rand] == [
        ("apgd-ce-eot", "ce", 20), ("apgd-dlr-eot", "dlr", 20)]
    surrogate = linear_model(seed=3)
    full = create_battery("full", T, surrogate=surrogate)
    assert full.labels == ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-ce-eot", "apgd-dlr-eot",
                           "transfer")
    assert full.config()["attacks"][-1]["surrogate"]["parameters"] == 51
    assert create_battery("full", T).labels[-1] == "apgd-dlr-eot"
    # Square: the reference's single draw in standard, the expected margin over the EOT draws in full
    assert standard[3]["eot"] == 1
    assert create_battery("full", T, eot=7).config()["attacks"][3]["eot"] == 7


def test_unknown_battery_lists_the_known_ones():
    net = linear_model()
    x, y = toy_data(net, n=4)
    with pytest.raises(UnknownNameError, match="unknown battery 'strong'.*quick.*standard"):
        run_battery(net, (x, y), "strong", threat=T)
    with pytest.raises(UnknownNameError, match="quick"):
        create_battery("nope", T)


def test_bad_inputs_are_clear_errors():
    net = linear_model()
    x, y = toy_data(net, n=10)
    b = Battery([FGSM(T)])
    with pytest.raises(InputError, match=r"n=11 samples were asked for.*only 10"):
        run_battery(net, (x, y), b, n=11)
    with pytest.raises(InputError, match="n must be an int >= 1"):
        run_battery(net, (x, y), b, n=0)
    with pytest.raises(InputError, match="batch_size must be an int >= 1"):
        run_battery(net, (x, y), b, batch_size=0)
    with pytest.raises(InputError, match="needs a threat model"):
        run_battery(net, (x, y), "quick")
    with pytest.raises(InputError, match="at least one attack"):
        Battery([])
    with pytest.raises(InputError, match="Attack objects"):
        Battery([net])  # type: ignore[list-item]
    with pytest.raises(InputError, match="must lie in"):
        run_battery(net, (x * 3, y), b)


def test_training_mode_is_refused_unless_asked_for():
    net = linear_model().train()
    x, y = toy_data(net, n=4)
    with pytest.raises(InputError, match=r"training mode.*model.eval\(\).*train_mode_ok=True"):
        run_battery(net, (x, y), Battery([FGSM(T)]))
    r = run_battery(net, (x, y), Battery([FGSM(T)]), train_mode_ok=True)
    assert [w.code for w in r.warnings] == ["train-mode"]
    assert net.training  # the mode is left as it was


def _linear_worst_case_robust(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact L-inf robustness of a multi-class linear model within [0, 1]: robust iff for every
    other class j the smallest margin z_y - z_j over the box-ball stays positive."""
    lin = net[1]
    w, b = lin.weight.double(), lin.bias.double()
    flat = x.flatten(1).double()
    robust = torch.ones(x.shape[0], dtype=torch.bool)
    for j in range(w.shape[0]):
        c = w[y] - w[j]  # (n, d): gradient of z_y - z_j
        d = torch.where(c > 0, -flat.clamp(max=eps), (1 - flat).clamp(max=eps))
        margin = ((flat + d) * c).sum(1) + b[y] - b[j]
        robust &= (margin > 0) | (y == j)
    return robust


def test_standard_battery_finds_the_exact_worst_case_of_a_linear_model():
    net = linear_model(num_classes=5, seed=2)
    x, y = toy_data(net, n=30, wrong=3, seed=2)
    eps = 0.05
    r = run_battery(net, (x, y), "standard", threat=ThreatModel("linf", eps), batch_size=30)
    assert list(r.per_attack) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    exact = _linear_worst_case_robust(net, x, y, eps)
    assert 0 < int(exact.sum()) < 27  # neither all nor none robust
    assert torch.equal(r.robust[0], exact)
    cfg = r.per_attack["apgd-ce"].config
    assert cfg["steps"] == 100 and cfg["loss"] == "ce"
    square = r.per_attack["square"].config  # AutoAttack's own Square
    assert (square["n_queries"], square["p_init"], square["rescale_schedule"]) == (5000, 0.8, False)


def test_inputs_follow_the_model_device_and_a_mismatch_is_an_error():
    net = linear_model()
    x, y = toy_data(net, n=8)
    with pytest.raises(InputError, match="the model is on cpu but device=cuda"):
        run_battery(net, (x, y), Battery([FGSM(T)]), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_matches_cpu():
    net = linear_model()
    x, y = toy_data(net, n=64)
    b = Battery([FGSM(T)])
    cpu = run_battery(net, (x, y), b, batch_size=16)
    gpu = run_battery(net.cuda(), (x, y), b, batch_size=16)
    assert torch.equal(cpu.clean_correct, gpu.clean_correct)
    assert abs(cpu.robust_acc - gpu.robust_acc) <= 1 / 64


def test_a_plain_dataset_gets_the_same_selection_rule():
    from robustlab.data import load_dataset

    full = load_dataset("synthetic", "test", num_classes=3, image_size=4, test_size=60)
    limited = load_dataset("synthetic", "test", num_classes=3, image_size=4, test_size=60, limit=12, seed=5)

    class Plain:  # no targets, no subset: labels are read item by item
        indices = torch.arange(100, 160)  # an attribute of its own, not positions

        def __len__(self):
            return 60

        def __getitem__(self, i):
            return full[i]

    net = linear_model()
    r = run_battery(net, Plain(), Battery([FGSM(T)]), n=12, seed=5)
    assert r.indices == [100 + i for i in limited.indices.tolist()]
    reference = run_battery(net, limited, Battery([FGSM(T)]), seed=5)
    assert torch.equal(r.clean_correct, reference.clean_correct) and torch.equal(r.robust, reference.robust)

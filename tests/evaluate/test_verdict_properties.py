"""Properties of the one verdict rule over randomized toy models (issue #26).

(a) a battery agrees with the per-sample worst case of its entries run one by one (exactly on a
deterministic model, within the sampling interval on a randomized one); (b) adding an entry
never raises robust accuracy, and adding one with no attack power does not lower it beyond
the interval; (c) AutoAttack-rand run directly and nested in a battery agree within the
interval; (d) resuming from any stage gives the uninterrupted run's result.
"""

from __future__ import annotations

import math

import pytest
import torch
from evaluate_toys import linear_model, noisy_model, toy_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustlab.attacks import EOT, FGSM, PGD, AutoAttack, DeepFool, Verdict
from robustlab.core import ThreatModel
from robustlab.evaluate import Battery, ProgressEvent, run_battery

T = ThreatModel("linf", 0.1)
N = 48
PROPS = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _interval(n: int, draws: int) -> float:
    """Three standard errors of a mean over ``n`` images of per-image estimates from ``draws``
    draws each (p(1-p) <= 1/4), plus the spread of the images' own outcomes between two runs."""
    return 3 * math.sqrt(0.25 / (n * draws)) + 3 * math.sqrt(0.25 / n)


@PROPS
@given(seed=st.integers(0, 10_000), hidden=st.sampled_from([0, 8]))
def test_a_battery_is_the_and_of_its_entries_on_a_deterministic_model(seed: int, hidden: int) -> None:
    model = linear_model(num_classes=4, hidden=hidden, seed=seed % 7)
    x, y = toy_data(model, n=N, seed=seed)
    entries = [FGSM(T), PGD(T, 5, random_start=False), DeepFool(T, 5)]
    battery = run_battery(model, (x, y), Battery(entries), n=N, seed=seed)
    alone = torch.stack([~a.run(model, x, y).success for a in entries]).all(dim=0)
    assert torch.equal(battery.p_robust[0] > 0.5, alone)
    assert set(battery.p_robust[0].tolist()) <= {0.0, 1.0}  # a deterministic verdict is 0/1


@PROPS
@given(seed=st.integers(0, 10_000), std=st.sampled_from([0.2, 0.4]))
def test_a_battery_agrees_with_its_entries_worst_case_on_a_randomized_model(seed: int, std: float) -> None:
    model = noisy_model(std=std, num_classes=4, seed=seed % 5)
    x, y = toy_data(model[1:], n=N, seed=seed)
    entries = [PGD(T, 5, grad=EOT(4)), FGSM(T)]
    battery = run_battery(model, (x, y), Battery(entries), n=N, seed=seed)
    per_entry = torch.stack([a.run(model, x, y, generator=torch.Generator().manual_seed(seed)).p_robust
                             for a in entries])
    worst = per_entry.min(dim=0).values.double()  # the entries' worst case, sample by sample
    # the min of independent estimates is biased low, the battery's re-estimate is not: the
    # battery may sit above it, by at most the interval; never below it by more
    gap = battery.robust_acc - float(worst.mean())
    assert -_interval(N, 16) <= gap <= _interval(N, 16) + 0.1


@PROPS
@given(seed=st.integers(0, 10_000))
def test_adding_an_entry_never_raises_and_a_powerless_one_never_lowers(seed: int) -> None:
    model = noisy_model(std=0.3, num_classes=4, seed=seed % 5)
    x, y = toy_data(model[1:], n=N, seed=seed)
    first = PGD(T, 5, grad=EOT(4))
    alone = run_battery(model, (x, y), Battery([first]), n=N, seed=seed)
    stronger = run_battery(model, (x, y), Battery([first, PGD(T, 10, grad=EOT(4), restarts=2)]), n=N, seed=seed)
    powerless = run_battery(model, (x, y), Battery([first, PGD(ThreatModel("linf", 1e-4), 5, grad=EOT(4))]),
                            n=N, seed=seed)
    tol = 3 * math.sqrt(0.25 / (N * 16))  # the final estimate's own noise
    assert stronger.robust_acc <= alone.robust_acc + tol
    assert powerless.robust_acc >= alone.robust_acc - tol
    # the first entry ran with the same seeds in all three: its stage is identical
    assert stronger.per_attack["pgd"].seen == alone.per_attack["pgd"].seen


@PROPS
@given(seed=st.integers(0, 10_000), std=st.sampled_from([0.2, 0.4]))
def test_autoattack_rand_direct_and_nested_agree(seed: int, std: float) -> None:
    model = noisy_model(std=std, num_classes=4, seed=seed % 5)
    x, y = toy_data(model[1:], n=N, seed=seed)
    aa = AutoAttack(T, "rand", steps=5, eot=4)
    direct = aa.run(model, x, y, generator=torch.Generator().manual_seed(seed))
    nested = run_battery(model, (x, y), Battery([aa]), n=N, seed=seed)
    assert abs(direct.robust_accuracy - nested.robust_acc) <= _interval(N, 16)


class _Stop(Exception):
    pass


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), stop=st.integers(0, 5))
def test_resuming_from_any_stage_gives_the_uninterrupted_result(tmp_path_factory, seed: int, stop: int) -> None:
    model = noisy_model(std=0.3, num_classes=4, seed=seed % 5)
    x, y = toy_data(model[1:], n=40, seed=seed)
    battery = Battery([FGSM(T), PGD(T, 4, grad=EOT(3)), PGD(T, 4, grad=EOT(3), loss="dlr")])
    kw = {"n": 40, "seed": seed, "batch_size": 16}
    whole = run_battery(model, (x, y), battery, **kw)
    folder = tmp_path_factory.mktemp("state")
    seen: list[ProgressEvent] = []

    def progress(event: ProgressEvent) -> None:
        seen.append(event)
        if event.kind == "attack" and sum(e.kind == "attack" for e in seen) == stop + 1:
            raise _Stop

    with pytest.raises(_Stop):
        run_battery(model, (x, y), battery, state_dir=folder, save_interval=0, progress=progress, **kw)
    resumed = run_battery(model, (x, y), battery, state_dir=folder, **kw)
    assert torch.equal(resumed.p_robust, whole.p_robust)
    assert torch.equal(resumed.p_clean, whole.p_clean)
    assert resumed.robust_acc == whole.robust_acc


def test_the_verdict_reports_a_probability_not_a_product_of_draws() -> None:
    # a closed form: each draw of this model is right with probability 0.75 at every point
    class Coin(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            right = torch.rand(x.shape[0]) < 0.75
            return torch.stack([right.float(), (~right).float()], dim=1) * 5 + 0 * x.flatten(1)[:, :2]

    model = Coin().eval()
    x, y = torch.rand(400, 1, 2, 2), torch.zeros(400, dtype=torch.long)
    res = run_battery(model, (x, y), Battery([FGSM(T), FGSM(ThreatModel("linf", 0.05))]), n=400, seed=0)
    assert res.config["randomness"] == "detected"
    # one-draw verdicts ANDed over clean and two attacks would give 0.75**3 = 0.42
    assert abs(res.clean_acc - 0.75) < 3 * math.sqrt(0.75 * 0.25 / (400 * 16))
    assert abs(res.robust_acc - 0.75) < 3 * math.sqrt(0.75 * 0.25 / (400 * 16)) + 0.01
    assert Verdict().draws == 16

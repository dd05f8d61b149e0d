"""FixedPathPGD (the DCS paper's Algorithm 2) and the ``dcs-paper`` battery."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import robustlab.attacks.fixed_path as fixed_path_module
from robustlab.attacks import ATTACKS, EOT, PGD, FixedPathPGD, Verdict, create_attack
from robustlab.core import InputError, ThreatModel
from robustlab.core.randomness import Stochastic, seed_stochastic
from robustlab.evaluate import BATTERIES, create_battery


class RandomSigns(Stochastic):
    """Per-sample, per-pixel random signs ``s``, drawn afresh each forward (one path = one draw)."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def sample(g: torch.Generator) -> torch.Tensor:
            return torch.randint(0, 2, x.shape, generator=g, device=x.device).to(x.dtype) * 2 - 1

        signs = self.draw(sample, key=tuple(x.shape), device=x.device)
        self.draws.append(signs)
        return signs


class SharedGradientToy(nn.Module):
    """Two classes, margin ``f(x) = sum_i (1 + a s_i)(x_i - 1/2)`` with random signs ``s``.

    The deterministic part (all-ones) is the gradient every path shares; the random part ``a s``
    (``a = 3``) dominates the gradient's sign on any single path. The expected margin is the
    deterministic one. PGD on one frozen path follows that path's signs, which a fresh path
    redraws (so the attack overfits one path); EOT averages the signs out and follows the shared
    part, which transfers to every path.
    """

    def __init__(self, a: float = 3.0) -> None:
        super().__init__()
        self.a = a
        self.signs = RandomSigns()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = (x - 0.5).flatten(1)
        margin = ((1 + self.a * self.signs(centred)) * centred).sum(dim=1)
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def _toy_batch(n: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``1/2 + t y_sign`` with ``t = 0.6 eps``: every clean margin is ``0.6 eps d``."""
    y = torch.arange(n) % 2
    sign = (2 * y - 1).float().view(-1, 1, 1, 1)
    return 0.5 + 0.6 * eps * sign * torch.ones(n, 3, 4, 4), y


EPS = 0.05
THREAT = ThreatModel("linf", EPS)


def _seeded_toy(n: int, seed: int) -> tuple[SharedGradientToy, torch.Tensor, torch.Tensor]:
    """The toy, its random layer seeded with ``seed``, and ``n`` images at radius ``EPS``."""
    x, y = _toy_batch(n, EPS)
    model = SharedGradientToy().eval()
    seed_stochastic(model, seed)
    return model, x, y


def test_the_papers_protocol_reports_more_robustness_than_eot_pgd_on_shared_gradient_paths():
    threat = THREAT
    model, x, y = _seeded_toy(200, 0)
    verdict = Verdict(draws=1)
    paper = FixedPathPGD(threat, steps=20).run(
        model, x, y, generator=torch.Generator().manual_seed(0), verdict=verdict
    )
    eot = PGD(threat, steps=10, grad=EOT(10)).run(
        model, x, y, generator=torch.Generator().manual_seed(0), verdict=verdict
    )
    # measured: 0.855 under the paper's protocol, 0.09 under EOT-10 PGD-10 (seeded)
    assert paper.robust_accuracy > 0.65
    assert eot.robust_accuracy < 0.5
    assert paper.robust_accuracy > eot.robust_accuracy + 0.25
    assert any(w.code == "randomized-without-eot" for w in paper.warnings)


def test_the_attack_runs_on_one_path_and_is_judged_on_a_fresh_one():
    model, x, y = _seeded_toy(6, 1)
    result = FixedPathPGD(THREAT, steps=5).run(model, x, y)
    draws = model.signs.draws
    # 5 PGD steps and the check of the last iterate on one path, then the verdict's fresh draws
    # (the clean estimate, the comparison's two and the final estimate: k = 16 draws each)
    attack_draws, verdict_draws = draws[:6], draws[6:]
    assert all(torch.equal(d, attack_draws[0]) for d in attack_draws)
    assert len(verdict_draws) == 4 * 16
    assert sum(not torch.equal(d, attack_draws[0]) for d in verdict_draws) > 50
    assert result.backward_passes == 5 * x.shape[0]


def test_registered_and_the_dcs_paper_battery():
    assert "fixed-path-pgd" in ATTACKS
    threat = ThreatModel("linf", 8 / 255)
    attack = create_attack("fixed-path-pgd", threat)
    assert (
        isinstance(attack, FixedPathPGD)
        and attack.steps == 20
        and attack.step_size == pytest.approx(2 / 255)
    )
    assert "dcs-paper" in BATTERIES
    battery = create_battery("dcs-paper", threat)
    assert battery.labels == ("fixed-path-pgd",)
    (only,) = battery.attacks
    assert (
        isinstance(only, FixedPathPGD)
        and only.steps == 20
        and only.step_size == pytest.approx(2 / 255)
    )
    with pytest.raises(InputError, match="steps must be an int >= 1"):
        FixedPathPGD(threat, steps=0)


def test_it_needs_a_module_and_never_imports_defenses():
    threat = ThreatModel("linf", 0.05)
    x, y = _toy_batch(2, 0.05)
    with pytest.raises(InputError, match="needs an nn.Module"):
        FixedPathPGD(threat, steps=1).run(lambda t: SharedGradientToy()(t), x, y)
    tree = ast.parse(Path(fixed_path_module.__file__).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert not any("defenses" in name for name in imported)


def test_dcs_paper_battery_through_the_runner_reports_more_than_an_eot_battery():
    from robustlab.evaluate import Battery, run_battery

    threat = THREAT
    model, x, y = _seeded_toy(40, 3)
    paper = run_battery(model, (x, y), create_battery("dcs-paper", threat), batch_size=500)
    eot = Battery([PGD(threat, steps=10, grad=EOT(10))], name="eot-pgd")  # DLR needs 3 classes
    rand = run_battery(model, (x, y), eot, batch_size=500)
    assert paper.robust_acc > rand.robust_acc + 0.25
    assert any(w["code"] == "randomized-without-eot" for w in paper.config["warnings"])

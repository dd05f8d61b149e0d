"""The arena (``arena_study``): budgets matched in passes, the AutoAttack version picked per model,
the per-row paper cell, and a toy arena whose ranking is known by construction."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from robustlab import save
from robustlab.core.bpda import BPDALayer
from robustlab.core.errors import InputError
from robustlab.core.randomness import Stochastic
from robustlab.core.types import ThreatModel
from robustlab.data import api as data_api
from robustlab.data.base import DatasetInfo, TensorImageDataset
from robustlab.experiments import arena_study, run_study, study_config
from robustlab.experiments.arena import epochs_for, passes_per_epoch
from robustlab.experiments.columns import autoattack_version
from robustlab.experiments.report import Cell
from robustlab.experiments.variants import Train
from robustlab.models import _registry as model_registry
from robustlab.models import create_model


def test_a_budget_buys_epochs_by_passes_per_image():
    """Hand-worked: 12 passes per image buy 12 plain epochs, 3 of PGD-AT with 3 steps (4 passes),
    2 of TRADES with 3 steps (5 passes: 2.4 rounds to 2), 6 of fast-AT or of an input-gradient
    penalty (2 passes), and never fewer than one."""
    assert passes_per_epoch("pgd-at", {"steps": 3}) == 4 and passes_per_epoch("trades", {"steps": 3}) == 5
    assert [epochs_for(12, o, {"steps": 3}) for o in ("standard", "pgd-at", "trades", "fast-at", "gradnorm", "gsat")] == [
        12, 3, 2, 6, 6, 3]
    assert epochs_for(1, "pgd-at", {"steps": 10}) == 1
    with pytest.raises(InputError, match="no pass count for objective 'mart'"):
        passes_per_epoch("mart", {})


def test_the_cpu_profile_trains_every_row_within_half_an_epoch_of_the_budget():
    cfg = study_config("arena", "cpu")
    plan = arena_study.plan(cfg)
    trained = {v.label: v.make.train for v in plan.variants if isinstance(v.make, Train)}
    assert set(trained) == set(cfg.rows) - {arena_study.SD, arena_study.ADDNOISE, arena_study.SPARSE_ENS,
                                            arena_study.DCS_ENS}
    for label, spec in trained.items():
        per_epoch = passes_per_epoch(spec.objective, dict(spec.objective_options))
        assert abs(spec.epochs * per_epoch - cfg.budget) <= per_epoch / 2, label
        assert plan.passes[label] == spec.epochs * per_epoch
    # SD finetunes the standard row's model: its budget and 5 epochs on 2000 of the 5000 images on top
    assert plan.passes[arena_study.SD] == pytest.approx(plan.passes[arena_study.STANDARD] + 5 * 2000 / 5000)


class _Noise(Stochastic):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * self.draw(lambda g: torch.randn(x.shape, generator=g), key=tuple(x.shape), device=x.device)


class _Round(BPDALayer):
    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def test_autoattack_auto_runs_rand_on_randomized_models_and_bpda_only_through_declared_layers():
    auto = {"version": "auto", "eot": 5, "bpda": "smooth"}
    head = [nn.Flatten(), nn.Linear(4, 2)]
    assert autoattack_version(nn.Sequential(*head), auto) == ("standard", None)
    assert autoattack_version(nn.Sequential(_Noise(), *head), auto) == ("rand", None)
    assert autoattack_version(nn.Sequential(_Noise(), _Round(), *head), auto) == ("rand", "smooth")
    assert autoattack_version(nn.Sequential(_Noise(), *head), {"version": "standard", "eot": 1}) == ("standard", None)


def test_a_cell_takes_each_rows_number_from_its_own_column():
    cell = Cell("paper", "Paper's protocol", per_row=(("SD", "paper-pgd"), ("PGD-AT", "")))
    assert [cell.column_for(r) for r in ("SD", "PGD-AT", "other")] == ["paper-pgd", "", "paper"]


# The toy arena: four classes of constant images (every pixel 0.2, 0.4, 0.6 or 0.8), L-inf eps 0.05.
# Both models read the mean pixel m with class boundaries at 0.3, 0.5 and 0.7, 0.1 from every class:
# no perturbation within eps moves m by more than 0.05, so the "robust" model is 100% robust. The
# "fragile" one adds 50 * <c, x> to class 1's logit for a zero-sum checkerboard c: 0 on every clean
# image (100% clean), but eps * sign(c) moves it by 50 * 0.05 * 16 = 40, far past any margin (the
# logits differ by at most 10), so every image has an adversarial example: its true robust
# accuracy is 0%.
LEVELS = (0.2, 0.4, 0.6, 0.8)
CHECKER = torch.tensor([[1.0, -1.0] * 2, [-1.0, 1.0] * 2] * 2).flatten()


def _toy_info(root=None, **_options) -> DatasetInfo:
    return DatasetInfo("toy-levels", ("0.2", "0.4", "0.6", "0.8"), 1, (4, 4), (0.0,), (1.0,), ThreatModel("linf", 0.05))


def _toy_load(split: str, root=None, download: bool = False) -> TensorImageDataset:
    y = torch.arange(60) % 4
    x = torch.tensor(LEVELS)[y].view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    return TensorImageDataset(x, y, _toy_info(), split)


def _linear(num_classes: int, in_channels: int, **_kwargs) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16 * in_channels, num_classes))


@pytest.fixture
def toy_world(monkeypatch):
    monkeypatch.setitem(data_api.DATASETS._items, "toy-levels", data_api.DatasetBuilder(_toy_info, _toy_load, "toy"))
    monkeypatch.setitem(data_api.DATASETS._meta, "toy-levels", {})
    monkeypatch.setitem(model_registry.MODELS._items, "toy-linear", _linear)
    monkeypatch.setitem(model_registry.MODELS._meta, "toy-linear", {"description": "toy", "input_size": (1, 4, 4)})


def _toy_model(path, fragile: bool):
    model = create_model("toy-linear", num_classes=4, in_channels=1, mean=(0.0,), std=(1.0,), seed=0)
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():  # logits of the mean pixel m = <1/16, x>: 10 k m + b_k, equal pairwise at 0.3, 0.5, 0.7
        linear.weight.copy_(torch.stack([10 * k * torch.ones(16) / 16 for k in range(4)]))
        linear.bias.copy_(torch.tensor([0.0, -3.0, -8.0, -15.0]))
        if fragile:
            linear.weight[1] += 50 * CHECKER
    return save(model, path, dataset="toy-levels")


def test_a_toy_arena_ranks_the_robust_model_above_the_fragile_one(tmp_path, toy_world):
    fragile, robust = _toy_model(tmp_path / "fragile.safetensors", True), _toy_model(tmp_path / "robust.safetensors", False)
    cfg = dataclasses.replace(
        study_config("arena", "quick"), dataset="toy-levels", model="toy-linear", eps=0.05, audit=None, eval_n=30, clean_n=60,
        eval_batch_size=30, rows=(arena_study.STANDARD, arena_study.PGD_AT),
        reuse=((arena_study.STANDARD, str(fragile)), (arena_study.PGD_AT, str(robust))))
    r = run_study("arena", tmp_path / "arena", cfg)
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in r.answer.splitlines()[2:]}
    assert rows["Standard"][1:] == ["100.0", "n/a", "0.0", "—", "below PGD-AT"]
    assert rows["PGD-AT"][1:] == ["100.0", "n/a", "100.0", "—", "the reference (adversarial training)"]
    assert r.report.index("| defense |") < r.report.index("## Every defense under one battery")
    assert (tmp_path / "arena" / "report.html").exists() and not r.partial
    # the same folder read as a two-seed run (seed 1 not computed): each row says it stands on 1 of 2
    two = run_study("arena", tmp_path / "arena", dataclasses.replace(cfg, seeds=(0, 1)), report_only=True)
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in two.answer.splitlines()[2:]}
    assert two.partial and rows["Standard"][1:] == ["100.0", "n/a", "0.0", "—", "below PGD-AT", "1/2"]
    assert rows["PGD-AT"][-1] == "1/2"


def test_a_partial_rows_numbers_share_the_seeds_of_its_worst_case(tmp_path):
    """Hand-built records, two seeds planned: "D" has seed 0 complete (clean 80%, its paper's
    protocol 50%, an attack 40%) and seed 1 without its attack (clean 60%, protocol 90%). The row
    must read 80.0 / 50.0 / 40.0 on 1 of 2 seeds; mixing the seeds would read clean 70.0 and a
    protocol of 70.0 against a worst case of 40.0. "R", the reference, is complete on both."""
    from robustlab.experiments.arena import answer_table
    from robustlab.experiments.figures import FigureContext
    from robustlab.experiments.records import Record

    def bits(k: int, n: int = 10) -> list[float]:
        return [1.0] * k + [0.0] * (n - k)

    recs = {}
    for variant, seed, column, kind, k in [("D", 0, "clean", "clean", 8), ("D", 0, "paper-d", "attack", 5),
                                           ("D", 0, "aa", "attack", 4), ("D", 1, "clean", "clean", 6),
                                           ("D", 1, "paper-d", "attack", 9), ("R", 0, "clean", "clean", 7),
                                           ("R", 0, "aa", "attack", 6), ("R", 1, "clean", "clean", 7),
                                           ("R", 1, "aa", "attack", 6)]:
        recs[variant, seed, column] = Record.of_outcomes(variant, seed, column, kind, bits(k))
    attacks = {"D": ("paper-d", "aa"), "R": ("aa",)}

    def worst_of(variant: str, seed: int) -> list[float] | None:
        masks = [recs.get((variant, seed, c)) for c in attacks[variant]]
        if any(m is None for m in masks):
            return None
        return [min(values) for values in zip(*(m.per_image for m in masks), strict=True)]

    fc = FigureContext(tmp_path, lambda label, seed: None, None, lambda v, s, c: recs.get((v, s, c)), worst_of, (0, 1))
    paper = Cell("paper", "Paper's protocol", per_row=(("D", "paper-d"), ("R", "")))
    table = answer_table(fc, ("R", "D"), paper, "R", "audit-aa")
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in table.splitlines()[2:]}
    assert rows["D"][1:4] == ["80.0", "50.0", "40.0"] and rows["D"][-1] == "1/2"
    assert rows["R"][1:4] == ["70.0", "n/a", "60.0"] and rows["R"][-1] == "2/2"
    assert rows["D"][5] == "level with R; paper's protocol overstates it"  # 50 - 40 >= 5 points, same seed

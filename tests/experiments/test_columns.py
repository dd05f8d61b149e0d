"""Study columns: each registered kind writes the record a hand-known model must get.

The model is constant: it answers class 0 whatever the image (a bias, and the image times zero
so gradients flow). On any test images its clean outcome is ``label == 0``; no attack and no
corruption can change it, so every robust or corrupted outcome equals the clean one, computed
here from the labels alone.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab.core import UnknownNameError
from robustlab.core.types import ThreatModel
from robustlab.data import load_dataset, select_subset
from robustlab.experiments.columns import COLUMN_KINDS, Column, EvalContext, evaluate_column

PGD = {"steps": 2, "step_size": 0.01, "random_start": True, "restarts": 1, "early_stop": True, "eot": 0}


class AlwaysZero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0] + [0.0] * 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 10) + 0 * x.flatten(1).sum(1, keepdim=True)


def context(tmp_path: Path, columns: tuple[Column, ...]) -> EvalContext:
    return EvalContext("digits", ThreatModel("linf", 0.05), 12, 30, 12, torch.device("cpu"), tmp_path,
                       {c.name: c for c in columns}, lambda label, seed: AlwaysZero().eval())


def zero_labels(split_limit: int) -> list[float]:
    data = load_dataset("digits", "test", limit=split_limit, seed=0)
    return [float(int(y) == 0) for y in data.targets]


@pytest.mark.parametrize("column", [
    Column("pgd", "pgd", "PGD", PGD),
    Column("sq", "square", "Square", {"queries": 5, "p_init": 0.8}),
    Column("fgsm", "fgsm", "FGSM", {"eps": "the threat's"}),
    Column("df", "deepfool", "DeepFool", {"steps": 3, "overshoot": 0.02, "candidates": 10}),
    Column("quick", "battery", "quick battery", {"battery": "quick"}),
    Column("tr", "transfer", "transfer", {"source": "other", "attack": "pgd"}),
], ids=lambda c: c.kind)
def test_attack_columns_on_a_constant_model_leave_exactly_its_correct_images(tmp_path, column):
    cols = (Column("pgd", "pgd", "PGD", PGD), column)
    rec = evaluate_column(context(tmp_path, cols), AlwaysZero().eval(), column, "const", 0, False, lambda name: None)
    truth = zero_labels(12)
    assert rec.kind == "attack" and rec.per_image == tuple(truth) and rec.clean_per_image == tuple(truth)
    assert rec.accuracy == pytest.approx(sum(truth) / 12) and rec.error is None
    assert rec.images == 12 and len(rec.indices_sha256) == 64
    assert all(rec.settings[k] == v for k, v in column.settings.items())  # the record keeps what ran


def test_clean_and_corruption_columns(tmp_path):
    cols = (Column("clean", "clean", "clean"), Column("mce", "corruptions", "mCE", {"n": 10}))
    ctx = context(tmp_path, cols)
    clean = evaluate_column(ctx, AlwaysZero().eval(), cols[0], "const", 0, False, lambda name: None)
    assert clean.per_image == tuple(zero_labels(30)) and clean.kind == "clean"
    mce = evaluate_column(ctx, AlwaysZero().eval(), cols[1], "const", 0, False, lambda name: None)
    # every corrupted version of an image gets class 0: right on all of them or on none; the
    # images are the 10 that limit=10 keeps of the 30 (the library's one rule), whatever the seed
    ten = load_dataset("digits", "test", limit=30, seed=0).subset(select_subset(
        load_dataset("digits", "test", limit=30, seed=0).targets, 10, seed=0))
    truth = tuple(float(int(y) == 0) for y in ten.targets)
    assert mce.kind == "corruption" and mce.accuracy is None and mce.per_image == truth
    assert mce.error == pytest.approx(1 - sum(truth) / 10)
    other_seed = evaluate_column(ctx, AlwaysZero().eval(), cols[1], "const", 1, False, lambda name: None)
    assert other_seed.per_image == truth


def test_a_deterministic_model_repeats_or_skips_what_does_not_apply(tmp_path):
    pgd = Column("pgd", "pgd", "PGD", PGD)
    eot = Column("pgd-eot4", "pgd", "PGD + EOT-4", {**PGD, "eot": 4}, deterministic="pgd")
    twin = Column("twin", "transfer", "twin", {"source": "twin", "attack": "pgd"}, deterministic="skip")
    ctx = context(tmp_path, (pgd, eot, twin))
    model = AlwaysZero().eval()
    done = evaluate_column(ctx, model, pgd, "const", 0, False, lambda name: None)
    same = evaluate_column(ctx, model, eot, "const", 0, False, lambda name: done if name == "pgd" else None)
    assert same.same_as == "pgd" and same.column == "pgd-eot4" and same.per_image == done.per_image
    skipped = evaluate_column(ctx, model, twin, "const", 0, False, lambda name: None)
    assert not skipped.applies and skipped.not_applicable == "deterministic model" and skipped.kind == "attack"


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown column kind 'pgdd'; known column kinds: audit, autoattack, battery"):
        Column("x", "pgdd", "x").attack  # noqa: B018
    assert Column("x", "corruptions", "x").attack is False and Column("x", "transfer", "x").attack is True
    assert COLUMN_KINDS.get("clean").record_kind == "clean"


def test_unchanged_column_counts_predictions_an_attack_cannot_move(tmp_path):
    # the constant model's prediction never moves, right or wrong: agreement 1 on every image,
    # where its accuracy is only the share of class-0 images
    col = Column("unchanged", "unchanged", "unchanged", {"eps": 0.1, "steps": 2, "step_size": 0.05})
    rec = evaluate_column(context(tmp_path, (col,)), AlwaysZero().eval(), col, "const", 0, False, lambda n: None)
    assert rec.kind == "agreement" and rec.per_image == (1.0,) * 12 and rec.agreement == 1.0
    assert rec.accuracy is None and rec.error is None and not col.attack


def test_unchanged_column_sees_a_prediction_move(tmp_path):
    # a model reading one pixel: class 1 when pixel (0, 0, 4, 4) > 0.5, else class 0; images whose
    # pixel lies within eps = 0.3 of 0.5 (and so can cross it) change prediction, the others cannot
    class OnePixel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x[:, 0, 4, 4]
            return torch.stack([0.5 - v, v - 0.5], dim=1) * 10

    col = Column("unchanged", "unchanged", "unchanged", {"eps": 0.3, "steps": 5, "step_size": 0.1})
    rec = evaluate_column(context(tmp_path, (col,)), OnePixel().eval(), col, "pix", 0, False, lambda n: None)
    data = load_dataset("digits", "test", limit=12, seed=0)
    pixel = [float(data[i][0][0, 4, 4]) for i in range(12)]
    expected = tuple(0.0 if abs(p - 0.5) < 0.3 else 1.0 for p in pixel)
    assert 0 < sum(expected) < 12  # these images hold both cases, so the check below tells them apart
    assert rec.per_image == expected


class HardGate(nn.Module):
    """Class 1 wins when the mean pixel, rounded to a grid of 1/2 (a BPDA layer whose own
    gradient is zero), exceeds the image's rounded mean minus nothing: logits ``[0, 8 * (q(m) - m0)]``
    with ``m0`` the clean mean. Plain gradients are zero; BPDA identity sees the slope 8."""

    def __init__(self) -> None:
        super().__init__()
        from robustlab.core.bpda import BPDALayer

        class Round(BPDALayer):
            def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
                return torch.round(x * 2) / 2

        self.q = Round()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        z = self.q(m + 0.3)  # m + 0.3 rounds up to the next half only when pushed (digits' mean < 0.2)
        return torch.cat([torch.full_like(z, 0.5), 8 * (z - 0.5)], dim=1)


def test_a_pgd_column_with_bpda_breaks_what_plain_gradients_cannot(tmp_path):
    """Images of class 0 are right (the gate says 0) until the mean pixel moves by +eps = 0.25;
    only a BPDA gradient finds that direction."""
    threat = ThreatModel("linf", 0.25)
    plain = Column("pgd", "pgd", "PGD", {**PGD, "step_size": 0.1, "random_start": False, "steps": 5})
    through = Column("pgd-bpda", "pgd", "PGD + BPDA", {**plain.settings, "bpda": "identity"})
    ctx = EvalContext("digits", threat, 12, 30, 12, torch.device("cpu"), tmp_path, {c.name: c for c in (plain, through)},
                      lambda label, seed: HardGate())
    data = load_dataset("digits", "test", limit=12, seed=0)
    means = torch.stack([data[i][0] for i in range(12)]).flatten(1).mean(1)
    assert bool((means + 0.3 < 0.75).all()) and bool((means + 0.3 + 0.25 >= 0.75).all())  # the toy's premise
    zero = tuple(float(int(y) == 0) for y in data.targets)
    a = evaluate_column(ctx, HardGate().eval(), plain, "gate", 0, False, lambda name: None)
    b = evaluate_column(ctx, HardGate().eval(), through, "gate", 0, False, lambda name: None)
    assert a.per_image == zero  # zero gradient: nothing moves
    assert b.per_image == (0.0,) * 12 and sum(zero) > 0  # BPDA pushes every mean over the step


def test_a_transfer_column_with_several_attacks_keeps_the_per_sample_worst(tmp_path):
    col = Column("tr2", "transfer", "two transfers", {"source": "other", "attack": ["pgd", "fgsm"]})
    cols = (Column("pgd", "pgd", "PGD", PGD), Column("fgsm", "fgsm", "FGSM"), col)
    rec = evaluate_column(context(tmp_path, cols), AlwaysZero().eval(), col, "const", 0, False, lambda name: None)
    assert rec.per_image == tuple(zero_labels(12)) and set(rec.per_attack) == {"transfer pgd", "transfer fgsm"}

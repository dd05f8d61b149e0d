"""The verdict rule's pieces on hand-worked examples (robustlab.attacks.verdict)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import Badness, Incumbent, ModelFn, Verdict, badness_of
from robustlab.core.randomness import rows_differ
from robustlab.experiments.stats import worst_case


def test_badness_counts_the_draws_that_misclassify_and_averages_their_margin() -> None:
    # 2 samples, 4 draws, 3 classes; labels 0 and 2
    samples = torch.tensor([
        [[3.0, 1.0, 0.0], [0.0, 1.0, 5.0]],  # right (margin 2), right (4)
        [[0.0, 2.0, 1.0], [0.0, 3.0, 1.0]],  # wrong (-2), wrong (-2)
        [[1.0, 0.5, 0.0], [2.0, 0.0, 1.0]],  # right (0.5), wrong (-1)
        [[0.0, 0.0, 4.0], [0.0, 0.0, 2.0]],  # wrong (-4), right (2)
    ])
    b = badness_of(samples, torch.tensor([0, 2]))
    assert b.wrong.tolist() == [0.5, 0.5]
    assert b.margin.tolist() == pytest.approx([(2 - 2 + 0.5 - 4) / 4, (4 - 2 - 1 + 2) / 4])
    assert b.draws == 4
    targeted = badness_of(samples, torch.tensor([0, 2]), targets=torch.tensor([1, 1]))
    assert targeted.wrong.tolist() == [0.25, 0.25]  # draws whose top class is the target (1)


def test_at_least_as_bad_orders_by_fraction_then_margin() -> None:
    a = Badness(torch.tensor([0.5, 0.5, 0.25, 0.75]), torch.tensor([0.0, 1.0, -9.0, 3.0]), 4)
    b = Badness(torch.tensor([0.5, 0.5, 0.5, 0.5]), torch.tensor([0.0, 0.5, 0.0, 0.0]), 4)
    assert a.at_least_as_bad(b).tolist() == [True, False, False, True]


class _Shift(nn.Module):
    """A deterministic 2-class linear model on 1-pixel images: z = [0, 10 (x - 0.5)]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 10 * (x.flatten(1)[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def test_an_incumbent_never_gets_better_for_the_model() -> None:
    fm = ModelFn(_Shift().eval())
    x = torch.tensor([0.1, 0.4, 0.45]).view(3, 1, 1, 1)
    y = torch.zeros(3, dtype=torch.long)
    inc = Incumbent(x, y)
    verdict = Verdict()
    ids = torch.arange(3)
    # proposals: sample 0 moves toward the boundary (worse), 1 away (better), 2 across (broken)
    replaced = inc.propose(fm, verdict, ids, torch.tensor([0.3, 0.2, 0.6]).view(3, 1, 1, 1))
    assert replaced.tolist() == [True, False, True]
    assert inc.x.flatten().tolist() == pytest.approx([0.3, 0.4, 0.6])
    assert inc.settled().tolist() == [False, False, True]
    # a later, less bad proposal leaves the broken sample's point where it is
    inc.propose(fm, verdict, torch.tensor([2]), torch.tensor([0.49]).view(1, 1, 1, 1))
    assert inc.x.flatten().tolist()[2] == pytest.approx(0.6)


def test_rows_differ_judges_each_row_on_its_own_scale() -> None:
    first = torch.tensor([[1e8, -1e8], [0.5, 0.2], [1.0, 2.0]])
    second = first.clone()
    second[1, 0] += 1e-3  # real noise on a row of small logits
    second[0, 0] += 1.0  # last-bit noise on a row of huge ones (1e-8 relative)
    assert rows_differ(first, second).tolist() == [False, True, False]


def test_the_worst_case_picks_by_selection_and_reports_the_fresh_value() -> None:
    fresh = [[0.9, 0.2, 1.0], [0.8, 0.6, 0.0]]
    select = [[0.7, 0.3, 1.0], [0.75, 0.1, 0.0]]
    # image 0: attack 0 selected (0.7 < 0.75): its fresh 0.9; image 1: attack 1: 0.6; image 2: 0.0
    assert worst_case(fresh, select) == [0.9, 0.6, 0.0]
    assert worst_case([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]) == [1.0, 0.0, 0.0]  # 0/1: the AND

"""What every study's figures share (:mod:`robustlab.experiments.figures`): the attacked images,
numbers computed once per run folder, tables, spreads, the unpaired gain and the training-time
comparison, against values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from robustlab.core.types import ThreatModel
from robustlab.data import as_tensors, load_dataset
from robustlab.experiments.columns import EvalContext
from robustlab.experiments.figures import (
    FigureContext,
    spread,
    spread_text,
    table,
    training_time,
    unpaired_gain,
)


def _context(tmp_path, eval_n: int = 6) -> FigureContext:
    ctx = EvalContext("digits", ThreatModel("linf", 0.1), eval_n, 12, 6, torch.device("cpu"), tmp_path, {},
                      lambda label, seed: nn.Identity())
    return FigureContext(tmp_path, lambda label, seed: nn.Identity(), ctx)


def test_the_images_are_the_first_attacked_ones_and_never_more(tmp_path):
    fc = _context(tmp_path)
    x, y = fc.images(4)
    expected = as_tensors(load_dataset("digits", "test", limit=6, seed=0))
    assert torch.equal(x, expected[0][:4]) and torch.equal(y, expected[1][:4]) and y.dtype == torch.int64
    assert len(fc.images(100)[0]) == 6  # figure_n above the attacked images: all of them


def test_numbers_are_computed_once_per_run_folder(tmp_path):
    fc, calls = _context(tmp_path), []

    def compute(folder):
        calls.append(folder)
        (folder / "plot.png").write_bytes(b"png")
        return {"a": 1.5, "nan": float("nan")}
    assert fc.cached("n.json", compute)["a"] == 1.5
    again = fc.cached("n.json", compute)
    assert calls == [tmp_path / "figures"] and (tmp_path / "figures" / "plot.png").exists()
    assert again["a"] == 1.5 and math.isnan(again["nan"])  # read back from figures/n.json
    assert json.loads((tmp_path / "figures" / "n.json").read_text())["a"] == 1.5


def test_table_and_spreads():
    assert table(("model", "x"), [("A", "1"), ("B", "2")]) == "| model | x |\n|---|---|\n| A | 1 |\n| B | 2 |\n"
    assert table(("model", "x"), []) == "| model | x |\n|---|---|\n"
    # mean of 1, 2, 3 is 2, sample std 1; the NaN is left out
    s = spread(torch.tensor([1.0, float("nan"), 2.0, 3.0]))
    assert s == {"mean": 2.0, "std": 1.0} and spread_text(s) == "2.000 ± 1.000"
    assert spread(torch.tensor([4.0])) == {"mean": 4.0, "std": 0.0}
    assert spread_text(spread(torch.tensor([float("nan")]))) == "nan"


@pytest.mark.parametrize(("a", "word"), [
    (0.40, "yes"),  # gain 0.30 > 1.959964 * 0.1 = 0.196
    (0.20, "not distinguishable from no change"),  # gain 0.10 inside +-0.196
    (-0.20, "no, it lowered it"),  # gain -0.30
])
def test_an_unpaired_gain_is_judged_against_both_spreads(a, word):
    # stds 0.3 and 0.4 over 25 images: s.e. sqrt((0.09 + 0.16) / 25) = 0.1
    got = unpaired_gain({"x_mean": a, "x_std": 0.3}, {"x_mean": 0.1, "x_std": 0.4}, "x", 25)
    assert got == (word, " (±0.196 at 95%, unpaired, over 25 images)")
    assert unpaired_gain({"x_mean": a}, {"x_mean": 0.1, "x_std": 0.4}, "x", 25)[0].startswith("not judged")


def test_training_time_compares_seconds_per_epoch_from_the_metrics_files(tmp_path):
    def epochs(slug: str, *seconds: float) -> None:
        folder = tmp_path / "models" / slug / "seed0"
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"seconds": s}) + "\n" for s in seconds))
    epochs("fast-a", 1.0, 3.0)  # 2.0 s per epoch
    epochs("slow-a", 4.0)
    epochs("fast-b", 6.0)
    epochs("slow-b", 5.0)
    both = {"A": ("fast a", "slow a"), "B": ("fast b", "slow b")}
    assert training_time(tmp_path, both, "for some pairs") == (
        "for some pairs", "A 2.0 vs 4.0 s (50%); B 6.0 vs 5.0 s (120%)")
    assert training_time(tmp_path, {"A": both["A"]}) == ("yes", "A 2.0 vs 4.0 s (50%)")
    assert training_time(tmp_path, {"B": both["B"], "C": ("fast c", "slow c")})[0] == "no"  # C has no files
    assert training_time(tmp_path, {"C": ("fast c", "slow c")}) is None

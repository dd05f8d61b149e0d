"""Best-robust checkpointing (Rice et al. 2020) and the "decay at 100 and 105" schedule."""

import json

import pytest
import torch
from toys import Crash, CrashAfter

from robustlab import create_model, load
from robustlab.attacks import PGD
from robustlab.core import InputError, ThreatModel
from robustlab.core.checkpoint import read_checkpoint
from robustlab.data import load_dataset
from robustlab.train import (
    BEST_ROBUST_FILE,
    METRICS_FILE,
    BestRobust,
    Callback,
    TrainConfig,
    Trainer,
    create_schedule,
)


class Snapshots(Callback):
    """Records the weights at the end of every epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer, epoch, metrics):
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def _data():
    train = load_dataset("synthetic", "train", num_classes=3, in_channels=1, image_size=(12, 12), train_size=32)
    held = load_dataset("synthetic", "train", num_classes=3, in_channels=1, image_size=(12, 12), train_size=48)
    x = torch.stack([held[i][0] for i in range(32, 48)])
    y = held.targets[32:48].clone()
    return train, (x, y)


def _model(seed: int = 0):
    return create_model("resnet-mini", num_classes=3, in_channels=1, seed=seed, widths=(4, 8, 16))


CFG = TrainConfig(epochs=3, batch_size=16, lr=0.05, schedule="constant", augment=False, seed=1)


def _fake(callback: BestRobust, values: list[float]) -> list[float]:
    """Make ``callback`` report ``values`` in turn; returns the list of values handed out."""
    handed: list[float] = []

    def fake(model):
        handed.append(values[len(handed)])
        return handed[-1]

    callback.robust_accuracy = fake  # type: ignore[method-assign]
    return handed


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keeps_the_weights_of_the_epoch_with_the_best_robust_accuracy(tmp_path):
    train, held = _data()
    snaps, best = Snapshots(), BestRobust(held)
    _fake(best, [0.2, 0.5, 0.3])
    result = Trainer(_model(), "standard", CFG, callbacks=[snaps, best], out_dir=tmp_path).fit(train)
    assert best.best_epoch == 2 and best.best_value == 0.5
    assert _equal(best.best_state, snaps.states[1]) and not _equal(best.best_state, snaps.states[2])
    assert [h["robust_acc"] for h in result.history] == [0.2, 0.5, 0.3]
    assert [h["best_robust_epoch"] for h in result.history] == [1, 2, 2]
    assert [h["best_robust_acc"] for h in result.history] == [0.2, 0.5, 0.5]
    # the checkpoint on disk holds epoch 2's weights and says so; metrics.jsonl has every epoch's values
    saved = load(tmp_path / BEST_ROBUST_FILE)
    assert _equal(saved.state_dict(), snaps.states[1])
    assert saved.robustlab_header["metrics"]["best_robust_epoch"] == 2
    assert saved.robustlab_header["metrics"]["epoch"] == 2
    lines = [json.loads(s) for s in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [m["robust_acc"] for m in lines] == [0.2, 0.5, 0.3]
    fresh = _model(seed=7)
    best.load_best(fresh)
    assert _equal(fresh.state_dict(), snaps.states[1])


def test_evaluates_every_k_epochs_and_after_the_last():
    train, held = _data()
    best = BestRobust(held, every=2)
    handed = _fake(best, [0.4, 0.1])
    result = Trainer(_model(), "standard", CFG, callbacks=[best]).fit(train)
    assert handed == [0.4, 0.1]
    assert [h["robust_acc"] for h in result.history] == [None, 0.4, 0.1]
    assert [h["best_robust_epoch"] for h in result.history] == [None, 2, 2]
    assert best.best_state is not None  # kept in memory without an out_dir


def test_reports_pgd10_accuracy_of_the_best_weights():
    train, held = _data()
    snaps, best = Snapshots(), BestRobust(held, eps=0.1, seed=3)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, schedule="constant", augment=False, seed=1)
    Trainer(_model(), "standard", cfg, callbacks=[snaps, best]).fit(train)
    assert best.best_epoch in (1, 2) and 0.0 <= best.best_value <= 1.0
    model = _model()
    model.load_state_dict(snaps.states[best.best_epoch - 1])
    model.eval()
    x, y = held  # an independent evaluation: the library's PGD-10, same seed, one batch
    result = PGD(ThreatModel("linf", 0.1), steps=10).run(model, x, y, generator=torch.Generator().manual_seed(3))
    assert best.best_value == pytest.approx(float((~result.success).float().mean()))
    assert result.x_adv.shape == x.shape


def test_a_resumed_run_remembers_its_best(tmp_path):
    train, held = _data()
    first = BestRobust(held)
    _fake(first, [0.2, 0.5])
    with pytest.raises(Crash):
        Trainer(_model(), "standard", CFG, callbacks=[first, CrashAfter(2)], out_dir=tmp_path).fit(train)
    on_disk, _ = read_checkpoint(tmp_path / BEST_ROBUST_FILE)
    second = BestRobust(held)
    _fake(second, [0.3])
    result = Trainer(_model(seed=9), "standard", CFG, callbacks=[second], out_dir=tmp_path).fit(train, resume=True)
    assert second.best_epoch == 2 and second.best_value == 0.5
    assert _equal(second.best_state, on_disk)
    assert result.history[-1]["robust_acc"] == 0.3 and result.history[-1]["best_robust_epoch"] == 2


def test_bad_held_out_splits():
    with pytest.raises(InputError, match="held-out images and labels differ in number: 3 and 2"):
        BestRobust((torch.rand(3, 1, 4, 4), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(InputError, match="empty"):
        BestRobust((torch.rand(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(InputError, match="every must be an int >= 1"):
        BestRobust((torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)), every=0)


def test_pang_schedule_divides_by_ten_at_epoch_100_and_105():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = create_schedule("pang-100-105", opt, total_steps=110 * 2, steps_per_epoch=2)
    lrs = []
    for _ in range(110 * 2):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    by_epoch = lrs[::2]
    assert by_epoch[99] == pytest.approx(0.1) and by_epoch[100] == pytest.approx(0.01)
    assert by_epoch[104] == pytest.approx(0.01) and by_epoch[105] == pytest.approx(0.001)
    assert lrs[199] == pytest.approx(0.1) and lrs[200] == pytest.approx(0.01)  # at the epoch's first step

import json

import pytest
import torch
import torch.nn.functional as F

from robustlab import create_model, load
from robustlab.core import RobustlabError
from robustlab.data import load_dataset
from robustlab.train import (
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    Callback,
    Standard,
    TrainConfig,
    Trainer,
)


class _Crash(Exception):
    pass


class CrashAfter(Callback):
    """Simulates a killed run: dies right after epoch ``n``'s checkpoint is on disk."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch + 1 == self.n:
            raise _Crash


def _setup(seed=0):
    data = load_dataset("synthetic", "train", num_classes=4, in_channels=1, image_size=(12, 12), train_size=96)
    model = create_model("resnet-mini", num_classes=4, in_channels=1, seed=seed)
    return data, model


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="cosine", ema_decay=0.9, seed=3, augment="flip")


def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path):
    data, model = _setup()
    full = Trainer(model, "standard", CFG, out_dir=tmp_path / "a").fit(data)

    data, model = _setup()
    with pytest.raises(_Crash):
        Trainer(model, "standard", CFG, out_dir=tmp_path / "b", callbacks=[CrashAfter(1)]).fit(data)
    assert len((tmp_path / "b" / METRICS_FILE).read_text().splitlines()) == 1
    assert not (tmp_path / "b" / MODEL_FILE).exists()
    _, fresh = _setup(seed=99)  # different init: everything must come from the checkpoint
    resumed = Trainer(fresh, "standard", CFG, out_dir=tmp_path / "b").fit(data, resume=True)

    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (tmp_path / "b" / METRICS_FILE).read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3]
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


def test_resume_refuses_a_different_config(tmp_path):
    data, model = _setup()
    Trainer(model, "standard", TrainConfig(epochs=1, batch_size=32, seed=0), out_dir=tmp_path).fit(data)
    with pytest.raises(RobustlabError, match="different training config"):
        Trainer(model, "standard", TrainConfig(epochs=1, batch_size=32, seed=1), out_dir=tmp_path).fit(
            data, resume=True
        )


def test_resume_refuses_another_training_set_or_model(tmp_path):
    data, model = _setup()
    cfg = TrainConfig(epochs=1, batch_size=32, seed=0)
    Trainer(model, "standard", cfg, out_dir=tmp_path).fit(data)
    smaller = data.subset(range(64))  # same dataset, another limit
    with pytest.raises(RobustlabError, match="another training set"):
        Trainer(model, "standard", cfg, out_dir=tmp_path).fit(smaller, resume=True)
    other = create_model("resnet-mini", num_classes=4, in_channels=1, seed=0, widths=(8, 16, 32))
    with pytest.raises(RobustlabError, match="another model recipe"):
        Trainer(other, "standard", cfg, out_dir=tmp_path).fit(data, resume=True)
    # the refused runs left the first run's files as they were
    assert Trainer(model, "standard", cfg, out_dir=tmp_path).fit(data, resume=True).history[0]["epoch"] == 1


def test_final_checkpoint_loads_to_the_same_model(tmp_path):
    data, model = _setup()
    result = Trainer(model, "standard", TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path,
                     dataset_name="synthetic").fit(data, data)
    assert (tmp_path / STATE_FILE).exists() and result.checkpoint == tmp_path / MODEL_FILE
    loaded = load(result.checkpoint)
    x = torch.rand(5, 1, 12, 12)
    assert torch.equal(loaded(x), result.model.eval()(x))
    header = loaded.robustlab_header
    assert header["dataset"] == "synthetic" and header["recipe"]["arch"] == "resnet-mini"
    assert header["train_config"]["objective"] == {"name": "standard", "label_smoothing": 0.0}
    assert 0.0 <= header["metrics"]["val_acc"] <= 1.0
    # without dataset_name the training set's own name is recorded
    result = Trainer(model, "standard", TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path / "b").fit(data)
    assert load(result.checkpoint).robustlab_header["dataset"] == "synthetic"


def test_standard_objective_is_cross_entropy_and_smoothing_changes_it():
    _, model = _setup()
    x, y = torch.rand(6, 1, 12, 12), torch.tensor([0, 1, 2, 3, 0, 1])
    out = Standard()(model, x, y)
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y))
    assert not torch.allclose(Standard(label_smoothing=0.2)(model, x, y).loss, out.loss)


def test_training_reduces_loss_and_supports_adamw_and_clipping():
    data, model = _setup()
    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, optimizer="adamw", schedule="constant", grad_clip=1.0)
    hist = Trainer(model, "standard", cfg).fit(data).history
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]

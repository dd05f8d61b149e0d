import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from toys import Crash, CrashAfter

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


def _setup(seed=0):
    data = load_dataset("synthetic", "train", num_classes=4, in_channels=1, image_size=(12, 12), train_size=96)
    model = create_model("resnet-mini", num_classes=4, in_channels=1, seed=seed)
    return data, model


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="cosine", ema_decay=0.9, seed=3, augment="flip")


def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path):
    data, model = _setup()
    full = Trainer(model, "standard", CFG, out_dir=tmp_path / "a").fit(data)

    data, model = _setup()
    with pytest.raises(Crash):
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


# ---------------------------------------------------------------- the data a run saw (issue 13.5)
def _write_fashion(root, pixel_offset: int) -> None:
    import gzip
    import struct

    import numpy as np

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        images = (rng.integers(0, 200, (n, 28, 28)) + pixel_offset).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, arr in ((f"{prefix}-images-idx3-ubyte.gz", images), (f"{prefix}-labels-idx1-ubyte.gz", labels)):
            header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (root / name).write_bytes(gzip.compress(header + arr.tobytes()))


def test_fingerprint_tells_apart_image_size_and_pixels_with_the_same_labels(tmp_path):
    from robustlab.train import data_fingerprint

    big = load_dataset("synthetic", "train", num_classes=4, image_size=28, train_size=64)
    small = load_dataset("synthetic", "train", num_classes=4, image_size=16, train_size=64)
    assert torch.equal(big.targets, small.targets) and torch.equal(big.indices, small.indices)
    fb, fs = data_fingerprint(big), data_fingerprint(small)
    # what the fingerprint held before: equal, so only pixels and options tell the two apart
    assert {k: fb[k] for k in ("name", "split", "n", "sha256")} == {k: fs[k] for k in ("name", "split", "n", "sha256")}
    assert fb["pixels"] != fs["pixels"]
    assert fb["options"]["image_size"] == 28 and fs["options"]["image_size"] == 16
    # the pixel hash is the SHA-256 of the stored array, computed once and cached
    import hashlib

    expected = hashlib.sha256(f"{big.images.dtype}{tuple(big.images.shape)}".encode())
    expected.update(big.images.contiguous().numpy().tobytes())
    assert fb["pixels"] == expected.hexdigest()
    big.images = big.images.flip(0)  # a cached hash is not recomputed on the same object
    assert data_fingerprint(big)["pixels"] == fb["pixels"]

    cfg = TrainConfig(epochs=1, batch_size=32, seed=0, schedule="constant")
    model = create_model("resnet-mini", num_classes=4, in_channels=1, seed=0)
    Trainer(model, "standard", cfg, out_dir=tmp_path / "run").fit(small)
    with pytest.raises(RobustlabError, match=r"another training set \(data.options.image_size was 16, now 28; data.pixels was"):
        Trainer(model, "standard", cfg, out_dir=tmp_path / "run").fit(
            load_dataset("synthetic", "train", num_classes=4, image_size=28, train_size=64), resume=True)


def test_fingerprint_tells_apart_fashion_mnist_from_another_folder(tmp_path):
    from robustlab.train import data_fingerprint

    _write_fashion(tmp_path / "a", 0)
    _write_fashion(tmp_path / "b", 50)  # same labels, other pixels
    _write_fashion(tmp_path / "c", 0)  # the very same files as a, elsewhere
    a, b, c = (load_dataset("fashion-mnist", "train", root=tmp_path / k) for k in "abc")
    assert torch.equal(a.targets, b.targets)
    fa, fb, fc = data_fingerprint(a), data_fingerprint(b), data_fingerprint(c)
    assert fa["sha256"] == fb["sha256"] and fa["pixels"] != fb["pixels"]
    assert fa["pixels"] == fc["pixels"] and fa["options"]["root"] == str((tmp_path / "a").resolve())
    assert fa["options"]["root"] != fc["options"]["root"]

    cfg = TrainConfig(epochs=1, batch_size=20, seed=0, schedule="constant", augment=False)
    model = create_model("resnet-mini", num_classes=10, in_channels=1, seed=0)
    Trainer(model, "standard", cfg, out_dir=tmp_path / "run").fit(a)
    with pytest.raises(RobustlabError, match=r"data.options.root was .*/a', now .*/b'; data.pixels was"):
        Trainer(model, "standard", cfg, out_dir=tmp_path / "run").fit(b, resume=True)


# ------------------------------------------------------------------------- RNG (issue 13.8)
class _DropoutNet(torch.nn.Module):
    """A tiny classifier whose dropout draws from the global RNG; with ``record``, its first
    training forward also records a draw of the global RNG."""

    def __init__(self, record: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = torch.nn.Linear(144, 16)
        self.fc2 = torch.nn.Linear(16, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.record = record
        self.first_draw: torch.Tensor | None = None

    def forward(self, x):
        if self.record and self.first_draw is None and self.training:
            self.first_draw = torch.rand(3)
        return self.fc2(F.dropout(torch.relu(self.fc1(x.flatten(1))), 0.5, self.training))


def test_fit_seeds_a_fork_of_the_global_rng_from_its_config(tmp_path):
    data, _ = _setup()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="constant", seed=11, augment=False)
    runs = []
    for outer in (1, 2):
        torch.manual_seed(outer)
        net = _DropoutNet(record=True)  # its default init draws from the global RNG; its weights are then set
        before = torch.get_rng_state()
        result = Trainer(net, "standard", cfg).fit(data)
        assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
        runs.append((net.first_draw, result.model.state_dict()))
    # the first global draw inside fit is the first draw of a generator seeded with config.seed,
    # as after the CLI's torch.manual_seed(seed)
    assert torch.equal(runs[0][0], torch.rand(3, generator=torch.Generator().manual_seed(11)))
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k  # independent of the caller's RNG


def test_resume_restores_the_global_rng_dropout_draws(tmp_path):
    data, _ = _setup()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="constant", seed=5, augment=False)
    full = Trainer(_DropoutNet(), "standard", cfg, out_dir=tmp_path / "a").fit(data)
    with pytest.raises(Crash):
        Trainer(_DropoutNet(), "standard", cfg, out_dir=tmp_path / "b", callbacks=[CrashAfter(2)]).fit(data)
    torch.manual_seed(1234)  # whatever the caller's RNG holds, the state comes from the checkpoint
    resumed = Trainer(_DropoutNet(), "standard", cfg, out_dir=tmp_path / "b").fit(data, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _FakeCuda:
    """Stands in for two CUDA devices' RNGs on a CPU-only machine (monkeypatched into torch.cuda)."""

    def __init__(self) -> None:
        self.states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([0], dtype=torch.uint8)}
        self.restored: list[tuple[int, torch.Tensor]] = []

    def get_rng_state(self, device=0):
        return self.states[int(device)].clone()

    def set_rng_state(self, state, device=0):
        self.restored.append((int(device), state.clone()))
        self.states[int(device)] = state.clone()

    def manual_seed_all(self, seed):
        for d in self.states:
            self.states[d] = torch.tensor([seed % 256, d], dtype=torch.uint8)


def test_cuda_rng_states_are_saved_and_restored(tmp_path, monkeypatch):
    import robustlab.train.trainer as trainer_module
    from robustlab.core.checkpoint import read_checkpoint

    fake = _FakeCuda()
    monkeypatch.setattr(trainer_module, "_cuda_devices", lambda: [0, 1])
    for name in ("get_rng_state", "set_rng_state", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    data, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=32, seed=7, schedule="constant")

    class Advance(Callback):  # a GPU run's draws move the device states on
        def on_epoch_end(self, trainer, epoch, metrics):
            pass

        def on_batch_end(self, trainer, step, loss):
            for d in fake.states:
                fake.states[d] = torch.tensor([step + 100, d], dtype=torch.uint8)

    with pytest.raises(Crash):
        Trainer(model, "standard", cfg, out_dir=tmp_path, callbacks=[Advance(), CrashAfter(1)]).fit(data)
    tensors, _ = read_checkpoint(tmp_path / STATE_FILE)
    last_step = 96 // 32 - 1
    assert torch.equal(tensors["rng.cuda.0"], torch.tensor([last_step + 100, 0], dtype=torch.uint8))
    assert torch.equal(tensors["rng.cuda.1"], torch.tensor([last_step + 100, 1], dtype=torch.uint8))
    assert torch.equal(fake.states[0], torch.tensor([0], dtype=torch.uint8))  # the fork restored the caller's

    fake.restored.clear()
    seen: list[torch.Tensor] = []

    class Look(Callback):
        def on_fit_start(self, trainer):
            seen.extend(fake.states[d].clone() for d in (0, 1))

    Trainer(model, "standard", cfg, out_dir=tmp_path, callbacks=[Look()]).fit(data, resume=True)
    assert torch.equal(seen[0], tensors["rng.cuda.0"]) and torch.equal(seen[1], tensors["rng.cuda.1"])

    monkeypatch.setattr(trainer_module, "_cuda_devices", lambda: [0])  # fewer devices: said so
    with pytest.warns(UserWarning, match="2 CUDA device.*this machine has 1; 1 restored"):
        Trainer(model, "standard", cfg, out_dir=tmp_path).fit(data, resume=True)


# ------------------------------------------------------------- refusals and extension (13.14)
def test_a_refused_resume_names_every_setting_that_differs(tmp_path):
    data, model = _setup()
    Trainer(model, "standard", TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=0), out_dir=tmp_path).fit(data)
    with pytest.raises(RobustlabError, match=r"different training config \(lr was 0.1, now 0.05; seed was 0, now 2\)"):
        Trainer(model, "standard", TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=2), out_dir=tmp_path).fit(
            data, resume=True)
    with pytest.raises(RobustlabError, match=r"another objective \(objective.label_smoothing was 0.0, now 0.1\)"):
        Trainer(model, Standard(label_smoothing=0.1), TrainConfig(epochs=1, batch_size=32, seed=0),
                out_dir=tmp_path).fit(data, resume=True)
    other = create_model("resnet-mini", num_classes=4, in_channels=1, seed=0, widths=(8, 16, 32))
    with pytest.raises(RobustlabError, match=r"another model recipe \(recipe\.\S*widths\S* was"):
        Trainer(other, "standard", TrainConfig(epochs=1, batch_size=32, seed=0), out_dir=tmp_path).fit(
            data, resume=True)


@pytest.mark.parametrize("schedule,options", [("constant", {"warmup_epochs": 1.0}), ("multistep", {"milestones": (1,)})])
def test_a_finished_run_extends_to_what_an_uninterrupted_run_gives(tmp_path, caplog, schedule, options):
    data, _ = _setup()
    short = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule=schedule, schedule_options=options, seed=1)
    long = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule=schedule, schedule_options=options, seed=1)
    _, model = _setup()
    reference = Trainer(model, "standard", long, out_dir=tmp_path / "ref").fit(data)

    _, model = _setup()
    Trainer(model, "standard", short, out_dir=tmp_path / "run").fit(data)
    _, fresh = _setup(seed=5)
    with caplog.at_level("INFO", logger="robustlab.train.trainer"):
        trainer = Trainer(fresh, "standard", long, out_dir=tmp_path / "run")
        extended = trainer.fit(data, resume=True)
    assert trainer.start_epoch == 2
    assert "2 of 3 epochs done, starting at epoch 3 of 3" in caplog.text
    assert [h["epoch"] for h in extended.history] == [1, 2, 3]
    a, b = reference.model.state_dict(), extended.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (tmp_path / "run" / METRICS_FILE).read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3]
    assert load(tmp_path / "run" / MODEL_FILE).robustlab_header["train_config"]["epochs"] == 3


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "cyclic"])
def test_extending_a_horizon_dependent_schedule_is_refused_with_the_reason(tmp_path, schedule):
    data, model = _setup()
    Trainer(model, "standard", TrainConfig(epochs=1, batch_size=32, schedule=schedule), out_dir=tmp_path).fit(data)
    with pytest.raises(RobustlabError, match=rf"epochs 2 \(it was started with 1\): the '{schedule}' schedule "
                                             r"spreads .* only the constant and multistep schedules"):
        Trainer(model, "standard", TrainConfig(epochs=2, batch_size=32, schedule=schedule), out_dir=tmp_path).fit(
            data, resume=True)


def test_fewer_epochs_than_done_is_refused(tmp_path):
    data, model = _setup()
    Trainer(model, "standard", TrainConfig(epochs=2, batch_size=32, schedule="constant"), out_dir=tmp_path).fit(data)
    with pytest.raises(RobustlabError, match="already trained 2 epochs; pass epochs >= 2"):
        Trainer(model, "standard", TrainConfig(epochs=1, batch_size=32, schedule="constant"), out_dir=tmp_path).fit(
            data, resume=True)


# ------------------------------------------------------------------ metrics.jsonl (issue 13.4)
def test_metrics_file_is_replaced_atomically_with_the_umask(tmp_path, monkeypatch):
    import os
    import stat

    from robustlab.core.checkpoint import write_text_atomic

    target = tmp_path / METRICS_FILE
    old = os.umask(0o027)
    try:
        write_text_atomic(target, "first\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0o666 & ~umask, not mkstemp's 0o600

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "second\n")
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]  # no temporary left


def test_resume_rewrites_metrics_to_agree_with_the_state(tmp_path):
    data, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=32, schedule="constant")
    with pytest.raises(Crash):
        Trainer(model, "standard", cfg, out_dir=tmp_path, callbacks=[CrashAfter(1)]).fit(data)
    (tmp_path / METRICS_FILE).write_text('{"epoch": 1, "train_lo')  # a crash's leftovers
    at_start: list[list[int]] = []

    class Check(Callback):
        def on_fit_start(self, trainer):
            lines = (tmp_path / METRICS_FILE).read_text().splitlines()
            at_start.append([json.loads(s)["epoch"] for s in lines])

    Trainer(model, "standard", cfg, out_dir=tmp_path, callbacks=[Check()]).fit(data, resume=True)
    assert at_start == [[1]]  # read once, before training resumed: the leftovers are gone
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]


def test_a_state_from_before_pixel_fingerprints_resumes_with_a_warning(tmp_path, monkeypatch):
    import robustlab.train.trainer as trainer_module

    data, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=32, schedule="constant")
    real = trainer_module.data_fingerprint

    def old_style(ds):  # what the fingerprint held before issue 13.5
        return {k: v for k, v in real(ds).items() if k in ("name", "split", "n", "sha256")}

    monkeypatch.setattr(trainer_module, "data_fingerprint", old_style)
    with pytest.raises(Crash):
        Trainer(model, "standard", cfg, out_dir=tmp_path, callbacks=[CrashAfter(1)]).fit(data)
    monkeypatch.setattr(trainer_module, "data_fingerprint", real)
    # what the old state recorded is still compared
    with pytest.raises(RobustlabError, match=r"another training set \(data.n was 96, now 64; data.sha256 was"), \
            pytest.warns(UserWarning, match="older robustlab"):
        Trainer(model, "standard", cfg, out_dir=tmp_path).fit(data.subset(range(64)), resume=True)
    with pytest.warns(UserWarning, match=r"older robustlab that did not record data.options, data.pixels"):
        result = Trainer(model, "standard", cfg, out_dir=tmp_path).fit(data, resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_channels_last_training_returns_the_usual_layout_and_resumes_either_way(tmp_path):
    """Trained in channels-last on the CPU, the model (with its EMA) comes back contiguous and
    computes what a contiguous copy of the same weights computes; a run started contiguous resumes
    in channels-last (a layout, not the arithmetic) and ends where the uninterrupted run does up
    to float rounding."""
    data, model = _setup()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="cosine", ema_decay=0.9, seed=3, channels_last=True)
    trained = Trainer(model, "standard", cfg).fit(data).model
    convs = [m.weight for m in trained.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous() for w in convs)
    x = torch.rand(5, 1, 12, 12)
    copy = create_model("resnet-mini", num_classes=4, in_channels=1, seed=0)
    copy.load_state_dict({k: v.clone().contiguous() for k, v in trained.state_dict().items()})
    assert torch.allclose(trained.eval()(x), copy.eval()(x), atol=1e-6)

    plain = dataclasses.replace(cfg, channels_last=False)
    data, model = _setup()
    whole = Trainer(model, "standard", plain).fit(data).model
    data, model = _setup()
    with pytest.raises(Crash):
        Trainer(model, "standard", plain, out_dir=tmp_path, callbacks=[CrashAfter(1)]).fit(data)
    _, fresh = _setup(seed=99)
    resumed = Trainer(fresh, "standard", cfg, out_dir=tmp_path).fit(data, resume=True).model
    assert torch.allclose(whole.eval()(x), resumed.eval()(x), atol=1e-3)

"""What ``torchrun --nproc_per_node 2`` runs in tests/train/test_distributed_train.py (not a test
module itself: pytest collects ``test_*.py`` only).

``python dist_train_worker.py checks OUT``: several trainings on 2 gloo ranks, each rank writing
its final weights to ``OUT/<case>_rank<r>.safetensors`` (rank 1 writes only here, for the test to
compare), the files the trainer wrote per rank to ``OUT/writes_rank<r>.json``, and the refusal of
an indivisible batch to ``OUT/refusal_rank<r>.txt``; a 2-epoch run and the same run stopped
after epoch 1 and resumed (``OUT/uninterrupted_rank<r>``, ``OUT/resumed_rank<r>``); then
``robustlab train`` (the CLI, in this process) on 2 ranks into ``OUT/cli``.
``python dist_train_worker.py die OUT``: rank 1 raises in the third step of the first epoch.
``python dist_train_worker.py hang OUT``: rank 1 sleeps in the third step; rank 0 must time out.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import robustlab.train.trainer as trainer_module
from robustlab import create_model
from robustlab.core.distributed import current_world
from robustlab.data import load_dataset
from robustlab.train import Callback, TrainConfig, Trainer, create_objective

SEED = 5
CONFIG = TrainConfig(epochs=1, batch_size=32, lr=0.05, schedule="cosine", augment=False, seed=SEED,
                     weight_decay=5e-4)


def digits(n: int = 192):
    return load_dataset("digits", "train", limit=n, seed=0)


def held_out():
    """51 images: the shares of the validation batch are 26 and 25."""
    return load_dataset("digits", "test", limit=51, seed=0)


def plain_net(seed: int) -> nn.Module:
    """No batch norm: conv, SiLU (smooth, for GradNorm's double backward), linear."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 10))


def bn_net(seed: int) -> nn.Module:
    return create_model("resnet-mini", num_classes=10, in_channels=1, seed=seed, widths=(8, 16, 16))


def gradnorm():
    return create_objective("gradnorm", warmup_epochs=0)


def pgd_at():
    return create_objective("pgd-at", eps=0.1, steps=2)


class Fail(Callback):
    """Rank ``rank`` raises (or sleeps) after step ``step`` of the first epoch."""

    def __init__(self, rank: int, step: int, hang: bool) -> None:
        self.rank, self.step, self.hang = rank, step, hang

    def on_batch_end(self, trainer, step, loss):  # type: ignore[no-untyped-def]
        if trainer.world.rank == self.rank and step == self.step:
            if self.hang:
                time.sleep(300)
            raise RuntimeError(f"rank {self.rank} dies on purpose at step {step}")


class Stop(Exception):
    """What :class:`StopAfterFirstEpoch` raises."""


class StopAfterFirstEpoch(Callback):
    """Every rank stops right after the first epoch's files are written (a killed job)."""

    def on_epoch_end(self, trainer, epoch, metrics):  # type: ignore[no-untyped-def]
        raise Stop


def record_writes(writes: list[list[str]]) -> None:
    """Wrap the trainer's writers so every file a rank writes is listed."""
    for name in ("write_checkpoint", "write_text_atomic", "save"):
        real = getattr(trainer_module, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            path = next(a for a in args if isinstance(a, (str, Path)))
            writes.append([_name, Path(path).name])
            return _real(*args, **kwargs)

        setattr(trainer_module, name, wrapper)


def checks(out: Path) -> None:
    world = current_world()
    assert world.size == 2, world
    rank = world.rank
    writes: list[list[str]] = []
    record_writes(writes)
    data = digits()
    # every rank builds its model with its own seed: the trainer must start them all from rank 0's
    cases = {
        "plain_standard": (plain_net(rank), "standard", CONFIG, None),
        "plain_gradnorm": (plain_net(rank), gradnorm(), CONFIG, None),
        "bn_sync": (bn_net(rank), "standard", TrainConfig(**{**CONFIG.to_dict(), "sync_bn": True}), None),
        "bn_local": (bn_net(rank), "standard", CONFIG, None),
        "pgd_at": (bn_net(rank), pgd_at(), TrainConfig(**{**CONFIG.to_dict(), "schedule": "constant"}),
                   out / "pgd_at"),
    }
    for case, (model, objective, config, out_dir) in cases.items():
        result = Trainer(model, objective, config, out_dir=out_dir).fit(data, held_out())
        state = {k: v.detach().clone().contiguous() for k, v in result.model.state_dict().items()}
        kinds = sorted({type(m).__name__ for m in result.model.modules() if "Norm" in type(m).__name__})
        save_file(state, str(out / f"{case}_rank{rank}.safetensors"),
                  metadata={"history": json.dumps(result.history), "norms": ",".join(kinds)})
    (out / f"writes_rank{rank}.json").write_text(json.dumps(writes))
    # a run stopped after epoch 1 and resumed on 2 ranks continues every rank's random streams
    # (attack starts, flips): it ends with the uninterrupted run's weights, bit for bit
    config = TrainConfig(**{**CONFIG.to_dict(), "epochs": 2, "augment": "flip", "ema_decay": 0.9})
    data = digits(128)
    full = Trainer(bn_net(0), pgd_at(), config, out_dir=out / "full").fit(data).model
    with contextlib.suppress(Stop):
        Trainer(bn_net(0), pgd_at(), config, out_dir=out / "stopped", callbacks=[StopAfterFirstEpoch()]).fit(data)
    resumed = Trainer(bn_net(9), pgd_at(), config, out_dir=out / "stopped").fit(data, resume=True).model
    for case, model in (("uninterrupted", full), ("resumed", resumed)):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(out / f"{case}_rank{rank}.safetensors"))
    try:
        Trainer(plain_net(0), "standard", TrainConfig(batch_size=33)).fit(data)
    except Exception as e:  # noqa: BLE001 - the message is what the test checks
        (out / f"refusal_rank{rank}.txt").write_text(f"{type(e).__name__}: {e}")
    from robustlab.cli import app

    code = app(["train", "--dataset", "digits", "--limit", "96", "--model", "resnet-mini", "--epochs", "1",
                "--batch-size", "32", "--schedule", "constant", "--lr", "0.05", "--sync-bn", "--device", "cpu",
                "--out", str(out / "cli")], standalone_mode=False)
    assert code in (0, None), code


def fail(out: Path, hang: bool) -> None:
    world = current_world()
    Trainer(bn_net(0), "standard", TrainConfig(**{**CONFIG.to_dict(), "epochs": 2}), out_dir=out / "run",
            callbacks=[Fail(rank=1, step=2, hang=hang)]).fit(digits())
    print(f"rank {world.rank} finished training, which it should not have", flush=True)


if __name__ == "__main__":
    what, folder = sys.argv[1], Path(sys.argv[2])
    if what == "checks":
        checks(folder)
    else:
        fail(folder, hang=what == "hang")

"""GSAT (Algorithm 1): the attack runs on one path, the update on a path avoiding its positions."""

import pytest
import torch
from torch import nn

from robustlab.core import InputError
from robustlab.defenses import RandomKernelConv2d, convert_dcs
from robustlab.train import GSAT, OBJECTIVES, ResampleEachBatch, create_objective


class DCSNet(nn.Module):
    """A tiny network with one DCS layer and no bias (so the kernel's gradient shows the path)."""

    def __init__(self, per_sample: bool = False) -> None:
        super().__init__()
        self.dcs = RandomKernelConv2d(1, 4, 3, 2, bias=False, per_sample=per_sample)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.dcs(x)).mean(dim=(2, 3)))


def _record(
    layer: RandomKernelConv2d,
) -> tuple[list[tuple[bool, torch.Tensor]], torch.utils.hooks.RemovableHandle]:
    calls: list[tuple[bool, torch.Tensor]] = []

    def hook(module: nn.Module, _inputs: object, _output: object) -> None:
        assert isinstance(module, RandomKernelConv2d) and module.last_positions is not None
        calls.append((module.training, module.last_positions.clone()))

    return calls, layer.register_forward_hook(hook)


@pytest.mark.parametrize("per_sample", [False, True])
def test_the_training_path_never_contains_an_attacked_position(per_sample):
    torch.manual_seed(0)
    objective = GSAT(eps=0.1, steps=3)
    for trial in range(8):
        model = DCSNet(per_sample).train()
        calls, handle = _record(model.dcs)
        x = torch.rand(4, 1, 8, 8)
        y = torch.randint(0, 3, (4,))
        out = objective(model, x, y, torch.Generator().manual_seed(trial))
        out.loss.backward()
        handle.remove()
        attack = [pos for training, pos in calls if not training]
        train = [pos for training, pos in calls if training]
        assert len(attack) == 3 and len(train) == 1
        assert all(torch.equal(a, attack[0]) for a in attack)  # the attack follows one path
        for b in range(attack[0].shape[0]):
            assert not set(attack[0][b].tolist()) & set(train[0][b].tolist())
        # independent evidence: the kernel's gradient comes only from the training forward
        # (the attack differentiates w.r.t. the input only), so it is nonzero only on that path
        assert model.dcs.weight.grad is not None
        used = (
            (model.dcs.weight.grad.abs().sum(dim=(0, 1)) != 0)
            .flatten()
            .nonzero()
            .flatten()
            .tolist()
        )
        assert set(used) == set(train[0].flatten().tolist())
        if not per_sample:
            assert not set(used) & set(attack[0].flatten().tolist())


def test_gsat_is_registered_and_configurable():
    assert OBJECTIVES.get("gsat") is GSAT
    objective = create_objective("gsat", eps=8 / 255, steps=7, step_size=2 / 255)
    assert objective.config() == {
        "name": "gsat",
        "eps": 8 / 255,
        "norm": "linf",
        "steps": 7,
        "step_size": 2 / 255,
        "craft_in_eval": True,
    }
    with pytest.raises(InputError, match="gsat steps must be an int >= 1"):
        GSAT(steps=0)


def test_gsat_refuses_a_model_without_dcs():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(2, 1, 6, 6)
    model(x)
    with pytest.raises(InputError, match="gsat trains DCS models"):
        GSAT(steps=1)(model, x, torch.tensor([0, 1]))


def test_gsat_trains_a_converted_resnet_and_the_callback_resamples():
    torch.manual_seed(1)
    from robustlab import create_model

    model = convert_dcs(
        create_model("resnet-mini", num_classes=10, in_channels=1), redraw="batch"
    ).train()
    x = torch.rand(4, 1, 28, 28)
    y = torch.randint(0, 10, (4,))
    out = GSAT(eps=0.1, steps=2)(model, x, y)
    assert out.logits is not None and out.logits.shape == (4, 10) and torch.isfinite(out.loss)
    out.loss.backward()
    layer = next(m for m in model.modules() if isinstance(m, RandomKernelConv2d))
    with torch.no_grad():
        held = model.eval()(x)
        assert torch.equal(model(x), held)  # redraw="batch" holds its draw ...

        class _Trainer:
            pass

        trainer = _Trainer()
        trainer.model = model  # type: ignore[attr-defined]
        ResampleEachBatch().on_batch_end(trainer, 0, 0.0)  # ... until the batch ends
        assert not torch.equal(model(x), held)
    assert layer.redraw == "batch"


def test_plain_adversarial_training_of_a_dcs_model_is_pgd_at():
    # the paper's "Normal AT" ablation (Table 3): pgd-at on the converted model
    torch.manual_seed(2)
    from robustlab import create_model

    model = convert_dcs(create_model("resnet-mini", num_classes=10, in_channels=1)).train()
    out = create_objective("pgd-at", eps=0.1, steps=2)(
        model, torch.rand(4, 1, 28, 28), torch.arange(4)
    )
    out.loss.backward()
    layer = next(m for m in model.modules() if isinstance(m, RandomKernelConv2d))
    assert layer.weight.grad is not None and torch.isfinite(out.loss)


def test_the_trainer_fits_a_dcs_model_with_gsat_and_saves_the_recipe(tmp_path):
    import robustlab
    from robustlab.data import load_dataset
    from robustlab.train import TrainConfig, Trainer

    data = load_dataset(
        "synthetic", "train", num_classes=4, in_channels=1, image_size=(8, 8), train_size=32
    )
    model = convert_dcs(robustlab.create_model("resnet-mini", num_classes=4, in_channels=1, seed=0))
    before = (
        next(m for m in model.modules() if isinstance(m, RandomKernelConv2d))
        .weight.detach()
        .clone()
    )
    config = TrainConfig(epochs=1, batch_size=16, lr=0.01, amp=False, augment=False)
    result = Trainer(model, GSAT(eps=0.1, steps=2), config).fit(data)
    layer = next(m for m in result.model.modules() if isinstance(m, RandomKernelConv2d))
    assert not torch.equal(layer.weight.detach(), before)  # trained
    robustlab.save(result.model, tmp_path / "gsat.safetensors")
    again = robustlab.load(tmp_path / "gsat.safetensors")
    assert torch.equal(
        next(m for m in again.modules() if isinstance(m, RandomKernelConv2d)).weight, layer.weight
    )

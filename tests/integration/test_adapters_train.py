"""timm and torchvision models train through the same Trainer as ours."""

import pytest
import torch

from robustlab import create_model
from robustlab.data import load_dataset
from robustlab.train import TrainConfig, Trainer


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet50"])
def test_adapter_models_train(name, tmp_path):
    data = load_dataset("synthetic", "train", num_classes=10, in_channels=1, image_size=(32, 32), train_size=32)
    model = create_model(name, num_classes=10, in_channels=1, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.01, schedule="constant", augment=False)
    result = Trainer(model, "standard", cfg, out_dir=tmp_path).fit(data)
    assert result.history[0]["train_loss"] > 0
    changed = [k for k, v in result.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "no weight changed"
    from robustlab import load

    again = load(result.checkpoint)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(again(x), result.model.eval()(x))

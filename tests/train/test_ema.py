import torch
from torch import nn

from robustlab.train.ema import EMA


def test_ema_averages_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    ema = EMA(model, decay=0.75)
    old_w = ema.shadow[0].weight.clone()
    old_rm = ema.shadow[1].running_mean.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.rand(8, 1, 6, 6))  # moves the live running statistics
    ema.update(model)
    torch.testing.assert_close(ema.shadow[0].weight, 0.75 * old_w + 0.25 * model[0].weight)
    torch.testing.assert_close(ema.shadow[1].running_mean, 0.75 * old_rm + 0.25 * model[1].running_mean)
    assert not torch.equal(ema.shadow[1].running_mean, model[1].running_mean)
    assert int(ema.shadow[1].num_batches_tracked) == int(model[1].num_batches_tracked)

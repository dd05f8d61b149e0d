import pytest
import torch
import torch.nn.functional as F

from robustlab import create_model
from robustlab.attacks import lp_norm
from robustlab.core import InputError, ThreatModel
from robustlab.train import PGDAT, create_objective, pgd_perturb


def _model():
    return create_model("resnet-mini", num_classes=3, in_channels=1, seed=0).eval()


def test_eps_zero_equals_standard_cross_entropy():
    model = _model()
    x, y = torch.rand(4, 1, 10, 10), torch.tensor([0, 1, 2, 0])
    out = PGDAT(eps=0.0, steps=3)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturbation_stays_in_ball_and_raises_the_loss(norm):
    model = _model()
    x, y = torch.rand(8, 1, 10, 10), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    threat = ThreatModel(norm, 0.1 if norm == "linf" else 1.0)
    x_adv = pgd_perturb(model, x, y, threat, steps=5, step_size=threat.eps / 2, generator=torch.Generator().manual_seed(0))
    assert float(lp_norm(x_adv - x, norm).max()) <= threat.eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_same_generator_same_examples_and_mode_is_restored():
    model = _model().train()
    x, y = torch.rand(4, 1, 10, 10), torch.tensor([0, 1, 2, 0])
    obj = create_objective("pgd-at", eps=0.1, steps=2)
    a = obj(model, x, y, generator=torch.Generator().manual_seed(1)).loss
    model.load_state_dict(_model().state_dict())  # reset BN stats touched by the forward
    b = obj(model, x, y, generator=torch.Generator().manual_seed(1)).loss
    assert torch.equal(a, b) and model.training
    assert obj.config()["name"] == "pgd-at"


def test_bad_settings():
    with pytest.raises(InputError, match="steps must be an int >= 1"):
        PGDAT(steps=0)
    with pytest.raises(InputError, match="eps must be a finite number"):
        PGDAT(eps=-0.1)

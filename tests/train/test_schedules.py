import pytest
import torch

from robustlab.core import InputError, UnknownNameError
from robustlab.train import SCHEDULES, create_schedule


def _lrs(name, total=20, per_epoch=5, lr=1.0, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = create_schedule(name, opt, total, per_epoch, **kw)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cyclic_is_triangular_zero_max_zero():
    lrs = _lrs("cyclic", total=10)
    # the triangle sampled at mid-step: 0.1, 0.3, ..., 0.9, 0.9, ..., 0.1
    assert lrs == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9, 0.9, 0.7, 0.5, 0.3, 0.1])


def test_cosine_with_warmup():
    lrs = _lrs("cosine", total=20, per_epoch=5, warmup_epochs=1)
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))
    assert lrs[-1] < 0.02


def test_multistep_decays_at_milestone_epochs():
    lrs = _lrs("multistep", total=20, per_epoch=5, milestones=(2, 3), gamma=0.1)
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.01)


def test_onecycle_rises_then_falls():
    lrs = _lrs("onecycle", total=20, pct_start=0.25)
    peak = max(range(20), key=lambda i: lrs[i])
    assert peak == 5 and lrs[peak] == pytest.approx(1.0)
    assert lrs[0] == pytest.approx(1 / 25) and lrs[-1] < 0.03


def test_bad_schedule_inputs():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(UnknownNameError, match="known schedules: constant, cosine, cyclic, multistep, onecycle"):
        create_schedule("triangle", opt, 10, 5)
    with pytest.raises(InputError, match="positive step counts"):
        create_schedule("cosine", opt, 0, 5)
    assert "cyclic" in SCHEDULES
    with pytest.raises(InputError, match="multistep schedule needs milestones"):
        create_schedule("multistep", opt, 10, 5)
    with pytest.raises(InputError, match="schedule 'cosine' takes no option milestones; its options: warmup_epochs, min_factor"):
        create_schedule("cosine", opt, 10, 5, milestones=(1,))

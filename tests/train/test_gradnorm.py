"""GradNorm (thesis Eq. 4.1) and EdgeAlign (Eq. 5.1-5.2) objectives, and the trainer's bn_eval."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab
from robustlab.core import InputError
from robustlab.core.filters import oriented_energy
from robustlab.data import load_dataset
from robustlab.models import Normalized
from robustlab.train import OBJECTIVES, EdgeAlign, GradNorm, TrainConfig, Trainer, create_objective
from robustlab.train.gradnorm import batch_mse_alignment, cosine_alignment, sample_classes

MEAN = [0.4, 0.6]
STD = [0.5, 0.25]


class Tiny(nn.Module):
    """A smooth two-layer network on 2x2x2 inputs (tanh: double backprop has a real signal)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def _tiny(seed: int = 0) -> Normalized:
    torch.manual_seed(seed)
    return Normalized(Tiny(), MEAN, STD).double()


def _linear(seed: int = 0, bias: list[float] | None = None) -> tuple[Normalized, nn.Linear]:
    torch.manual_seed(seed)
    fc = nn.Linear(8, 3).double()
    if bias is not None:
        with torch.no_grad():
            fc.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return Normalized(nn.Sequential(nn.Flatten(), fc), MEAN, STD).double(), fc


def _batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _params_grad_fd(
    model: nn.Module, loss_fn, h: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """(autograd gradient, central finite differences) of ``loss_fn()`` w.r.t. every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn()
    auto = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    fd = []
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + h
                up = loss_fn().item()
                flat[i] = old - h
                down = loss_fn().item()
                flat[i] = old
                fd.append((up - down) / (2 * h))
    return auto, torch.tensor(fd, dtype=torch.float64)


# ----------------------------------------------------------------------------------- GradNorm
def test_gradnorm_parameter_gradient_matches_finite_differences() -> None:
    model = _tiny()
    x, y = _batch()
    objective = GradNorm(eps=0.1, warmup_epochs=0)
    auto, fd = _params_grad_fd(model, lambda: objective(model, x, y).loss)
    assert auto.abs().max() > 1e-3
    assert torch.allclose(auto, fd, rtol=1e-6, atol=1e-8), (auto - fd).abs().max()
    # the penalty's own parameter gradient (not only the cross-entropy's) is checked too
    ce_only = GradNorm(eps=0.1, lambda_gn=0.0, warmup_epochs=0)
    auto_ce, _ = _params_grad_fd(model, lambda: ce_only(model, x, y).loss)
    assert (auto - auto_ce).abs().max() > 1e-3


def _stats(model: Normalized) -> tuple[torch.Tensor, torch.Tensor]:
    """The wrapper's mean and std (float32 values of MEAN and STD, held in float64)."""
    return model.mean.detach(), model.std.detach()


def _linear_input_gradient(
    model: Normalized, fc: nn.Linear, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Closed form for f(x) = W (x - m) / s + b: grad_x CE_i = (W^T (p_i - e_{y_i})) / s."""
    mean, std = _stats(model)
    with torch.no_grad():
        z = ((x - mean) / std).flatten(1) @ fc.weight.t() + fc.bias
        p = torch.softmax(z, dim=1) - F.one_hot(y, 3).double()
        return (p @ fc.weight).view_as(x) / std


def test_gradnorm_value_is_eq_4_1_in_pixel_units() -> None:
    model, fc = _linear()
    x, y = _batch()
    eps = 0.1
    grad = _linear_input_gradient(model, fc, x, y)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
    penalty = (
        eps * grad.abs().flatten(1).sum(1).mean()
    )  # (eps / sigma) ||grad_{x_n}||_1 = eps ||grad_x||_1
    loss = GradNorm(eps=eps, warmup_epochs=0)(model, x, y).loss
    assert loss.item() == pytest.approx((0.8 * ce + 1.2 * penalty).item(), rel=1e-12)
    # a single sigma (the official 0.225): (eps / 0.225) ||std * grad_x||_1
    _, std = _stats(model)
    official = eps / 0.225 * (grad * std).abs().flatten(1).sum(1).mean()
    loss = GradNorm(eps=eps, warmup_epochs=0, sigma=0.225)(model, x, y).loss
    assert loss.item() == pytest.approx((0.8 * ce + 1.2 * official).item(), rel=1e-12)


def test_gradnorm_without_a_wrapper_uses_sigma_one() -> None:
    _, fc = _linear()
    bare = nn.Sequential(nn.Flatten(), fc)
    x, y = _batch()
    with torch.no_grad():
        p = torch.softmax(bare(x), 1) - F.one_hot(y, 3).double()
        grad = p @ fc.weight
        ce = F.cross_entropy(bare(x), y)
    loss = GradNorm(eps=0.2, lambda_ce=1.0, lambda_gn=1.0, warmup_epochs=0)(bare, x, y).loss
    assert loss.item() == pytest.approx((ce + 0.2 * grad.abs().sum(1).mean()).item(), rel=1e-12)


def test_gradnorm_penalty_does_not_shrink_with_batch_size() -> None:
    model = _tiny()
    x, y = _batch(1)
    objective = GradNorm(lambda_ce=0.0, lambda_gn=1.0, warmup_epochs=0)
    single = objective(model, x, y).loss
    many = objective(model, x.repeat(16, 1, 1, 1), y.repeat(16)).loss
    assert single.item() > 0
    assert many.item() == pytest.approx(single.item(), rel=1e-12)


def test_gradnorm_warmup_follows_set_epoch() -> None:
    objective = GradNorm()
    assert objective.current_lambda_gn == pytest.approx(1.2 / 5)
    for epoch, factor in [(1, 2 / 5), (4, 1.0), (9, 1.0)]:
        objective.set_epoch(epoch)
        assert objective.current_lambda_gn == pytest.approx(1.2 * factor)
    model, fc = _linear()
    x, y = _batch()
    objective.set_epoch(0)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
    penalty = 0.1 * _linear_input_gradient(model, fc, x, y).abs().flatten(1).sum(1).mean()
    assert objective(model, x, y).loss.item() == pytest.approx(
        (0.8 * ce + 0.24 * penalty).item(), rel=1e-12
    )


def test_trainer_moves_the_gradnorm_warmup() -> None:
    data = load_dataset(
        "synthetic", "train", num_classes=4, in_channels=1, image_size=(8, 8), train_size=32
    )
    model = robustlab.create_model("resnet-mini", num_classes=4, in_channels=1, seed=0)
    objective = GradNorm(warmup_epochs=4)
    Trainer(
        model, objective, TrainConfig(epochs=2, batch_size=16, lr=0.01, amp=False, augment=False)
    ).fit(data)
    assert objective.current_lambda_gn == pytest.approx(1.2 * 2 / 4)


# ---------------------------------------------------------------------------------- EdgeAlign
def test_sampled_classes_follow_the_tempered_softmax() -> None:
    # softmax(z / 0.5) with z = [0, 0.5 ln 3, -inf-ish] is [1/4, 3/4, 0]
    logits = torch.tensor([[0.0, 0.5 * math.log(3.0), -60.0]]).repeat(4000, 1)
    draws = sample_classes(logits, 0.5, torch.Generator().manual_seed(0))
    share = (draws == 1).double().mean().item()
    assert abs(share - 0.75) < 0.03
    assert (draws == 2).sum() == 0
    again = sample_classes(logits, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_alignment_losses_by_hand() -> None:
    grad = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    teacher = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    assert cosine_alignment(grad, teacher).item() == pytest.approx((1 - 1 / math.sqrt(2) + 0) / 2)
    # batch RMS: grad rms = sqrt(5 / 4), teacher rms = sqrt(3 / 4)
    g = grad / math.sqrt(5 / 4)
    t = teacher / math.sqrt(3 / 4)
    assert batch_mse_alignment(grad, teacher).item() == pytest.approx(((g - t) ** 2).mean().item())
    # the stated difference: rescaling ONE sample changes the batch-level loss, not the cosine
    scaled = grad * torch.tensor([[1.0], [10.0]], dtype=torch.float64)
    assert cosine_alignment(scaled, teacher).item() == pytest.approx(
        cosine_alignment(grad, teacher).item()
    )
    assert batch_mse_alignment(scaled, teacher).item() != pytest.approx(
        batch_mse_alignment(grad, teacher).item()
    )
    # rescaling the whole batch changes neither
    assert batch_mse_alignment(3 * grad, teacher).item() == pytest.approx(
        batch_mse_alignment(grad, teacher).item()
    )


@pytest.mark.parametrize("alignment", ["cosine", "batch-mse"])
def test_edge_align_value_on_a_linear_model(alignment: str) -> None:
    # class 0's bias dominates, so the drawn class is 0 and its logit gradient is W_0 / s
    model, fc = _linear(bias=[80.0, 0.0, 0.0])
    x, y = _batch()
    _, std = _stats(model)
    grad = (fc.weight[0].detach().view(1, 2, 2, 2) / std).expand_as(x)
    teacher = oriented_energy(x)
    if alignment == "cosine":
        cos = (grad * teacher).flatten(1).sum(1) / (
            grad.flatten(1).norm(dim=1) * teacher.flatten(1).norm(dim=1)
        )
        align = (1 - cos).mean()
    else:
        align = (
            (grad / grad.pow(2).mean().sqrt() - teacher / teacher.pow(2).mean().sqrt()) ** 2
        ).mean()
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
    objective = EdgeAlign(lambda_ce=0.5, lambda_edge=2.0, alignment=alignment)
    out = objective(model, x, y, generator=torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx((0.5 * ce + 2.0 * align).item(), rel=1e-10)


@pytest.mark.parametrize("alignment", ["cosine", "batch-mse"])
def test_edge_align_parameter_gradient_matches_finite_differences(alignment: str) -> None:
    model = _tiny()
    with torch.no_grad():
        model.model.fc2.bias.copy_(torch.tensor([60.0, 0.0, 0.0]))  # the draw is class 0 throughout
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    model.model.fc1 = nn.Linear(32, 5).double()
    y = torch.tensor([0, 1, 2])
    objective = EdgeAlign(alignment=alignment)
    auto, fd = _params_grad_fd(
        model, lambda: objective(model, x, y, torch.Generator().manual_seed(0)).loss
    )
    assert torch.allclose(auto, fd, rtol=1e-5, atol=1e-7), (auto - fd).abs().max()


# ------------------------------------------------------------------------- registry and zoo
def test_registered_and_config_round_trips() -> None:
    assert {"gradnorm", "edge-align"} <= set(OBJECTIVES.names())
    for objective in (
        GradNorm(eps=8 / 255, sigma=0.225, warmup_epochs=3),
        EdgeAlign(alignment="batch-mse"),
    ):
        config = objective.config()
        assert create_objective(**config).config() == config


def test_bad_settings() -> None:
    with pytest.raises(InputError, match="alignment must be one of cosine, batch-mse, got 'l2'"):
        EdgeAlign(alignment="l2")
    with pytest.raises(InputError, match="gradnorm eps must be a finite number >= 0, got -1"):
        GradNorm(eps=-1)
    with pytest.raises(InputError, match="warmup_epochs must be an int >= 0"):
        GradNorm(warmup_epochs=-2)
    with pytest.raises(InputError, match="sigma must be a finite number > 0"):
        GradNorm(sigma=0.0)


ZOO = [
    ("resnet-mini", {}),
    ("resnet18", {}),
    ("preact-resnet18", {}),
    ("resnet32", {}),
    ("wrn-34-10", {"depth": 10, "widen_factor": 1}),
    ("vgg16", {}),
    ("alexnet", {}),
    ("torchvision:resnet18", {}),
    ("timm:resnet18", {}),
]


def test_zoo_list_covers_every_registered_model() -> None:
    from robustlab.models import MODELS

    assert set(MODELS.names()) <= {name for name, _ in ZOO}


@pytest.mark.parametrize(("name", "options"), ZOO, ids=[n for n, _ in ZOO])
def test_objectives_train_every_model_of_the_zoo(name: str, options: dict) -> None:
    model = robustlab.create_model(name, num_classes=4, in_channels=3, seed=0, **options)
    model.train()
    g = torch.Generator().manual_seed(0)
    size = 16 if ":" in name else 32  # the ImageNet ResNets are costly on a CPU; 16x16 still runs
    x = torch.rand(2, 3, size, size, generator=g)
    y = torch.tensor([0, 3])
    for objective in (GradNorm(warmup_epochs=0), EdgeAlign()):
        model.zero_grad(set_to_none=True)
        out = objective(model, x, y, generator=g)
        assert torch.isfinite(out.loss) and out.logits is not None and out.logits.shape == (2, 4)
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)


# ------------------------------------------------------------------------------------ bn_eval
def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


@pytest.mark.parametrize("objective", ["standard", "pgd-at", "gradnorm"])
def test_bn_eval_keeps_running_statistics(objective: str) -> None:
    data = load_dataset(
        "synthetic", "train", num_classes=4, in_channels=1, image_size=(8, 8), train_size=32
    )
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, amp=False, augment=False, bn_eval=True)
    model = robustlab.create_model("resnet-mini", num_classes=4, in_channels=1, seed=0)
    before = _bn_state(model)
    weights = model.model.conv1.weight.detach().clone()
    obj = create_objective("pgd-at", steps=2) if objective == "pgd-at" else objective
    Trainer(model, obj, cfg).fit(data)
    after = _bn_state(model)
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(weights, model.model.conv1.weight)  # it did train
    assert not any(m._forward_pre_hooks for m in model.modules())  # the hooks are gone afterwards
    # the control: without bn_eval the same run moves the statistics
    control = robustlab.create_model("resnet-mini", num_classes=4, in_channels=1, seed=0)
    Trainer(
        control, obj, TrainConfig(epochs=1, batch_size=16, lr=0.05, amp=False, augment=False)
    ).fit(data)
    moved = _bn_state(control)
    assert any(not torch.equal(before[k], moved[k]) for k in before)


def test_bn_eval_is_recorded_only_when_set() -> None:
    assert "bn_eval" not in TrainConfig().to_dict()
    assert TrainConfig(bn_eval=True).to_dict()["bn_eval"] is True

"""The opt-in fast paths of an evaluation (``channels_last``, ``torch.compile``) and its fp32
numerics: each fast result is compared with the plain path's on the same images and seeds."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import robustlab
from robustlab.attacks import EOT, PGD
from robustlab.cli import app
from robustlab.core import InputError, ThreatModel
from robustlab.core.bpda import BPDALayer
from robustlab.core.randomness import Stochastic, seed_stochastic, seeded, stochastic_layers
from robustlab.evaluate import Battery, Ledger, ProgressEvent, run_battery
from robustlab.evaluate import fast as fast_module
from robustlab.evaluate.fast import FAST_RTOL, ChannelsLast, check_fast, prepare_fast

T = ThreatModel("linf", 0.1)


class Noise(Stochastic):
    """Gaussian input noise drawn through the randomness protocol (a toy randomized defense)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.draw(lambda g: torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype),
                          key=tuple(x.shape), device=x.device)
        return x + self.std * noise


def small_cnn(seed: int = 0, noise: float = 0.0) -> nn.Sequential:
    """Conv-BN-ReLU-Conv-ReLU-Linear on 1x8x8 images, 3 classes, eval mode (BN with non-trivial
    running statistics, so the channels_last copy's batch norm is exercised too)."""
    with seeded(seed):
        layers: list[nn.Module] = [Noise(noise)] if noise else []
        layers += [nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                   nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)]
        net = nn.Sequential(*layers)
        bn = net[2 if noise else 1]
        bn.running_mean.copy_(torch.randn(6) * 0.1)
        bn.running_var.copy_(torch.rand(6) + 0.5)
    return net.eval()


def cnn_data(net: nn.Module, n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random images labelled by the model (a deterministic forward), 4 labels shifted."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = net[1:](x).argmax(1) if isinstance(net[0], Stochastic) else net(x).argmax(1)
    y[:4] = (y[:4] + 1) % 3
    return x, y


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- names and records
def test_fast_path_names_are_checked_and_put_in_order():
    assert check_fast(None) == check_fast(()) == ()
    assert check_fast("compile") == ("compile",)
    assert check_fast(["compile", "channels_last", "compile"]) == ("channels_last", "compile")
    with pytest.raises(InputError, match=r"unknown fast path 'bf16'; known: channels_last, compile"):
        check_fast(("bf16",))
    net = small_cnn()
    with pytest.raises(InputError, match="unknown fast path 'fp16'"):
        run_battery(net, cnn_data(net), Battery([PGD(T, steps=2)]), fast=("fp16",))


# --------------------------------------------------------------------------- channels_last
def test_channels_last_computes_the_plain_logits_and_gradients_within_float_rounding():
    net = small_cnn()
    x, _ = cnn_data(net)
    before = snapshot(net)
    strides = {k: v.stride() for k, v in net.state_dict().items()}
    fm = prepare_fast(net, ("channels_last",), x[:16])
    assert fm.applied == ("channels_last",) and not fm.fallbacks and isinstance(fm.model, ChannelsLast)
    assert not any(m.training for m in fm.model.modules())  # the wrapper too: the model is in eval mode
    rgb = torch.rand(2, 3, 4, 4)
    assert ChannelsLast(nn.Identity())(rgb).is_contiguous(memory_format=torch.channels_last)
    assert not rgb.is_contiguous(memory_format=torch.channels_last)
    # the inner copy really runs in channels_last: its second convolution (6 channels in) sees
    # NHWC inputs and holds NHWC weights (a 1-channel tensor is both layouts at once)
    seen: list[bool] = []
    inner = fm.model.model[3]
    inner.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    assert inner.weight.is_contiguous(memory_format=torch.channels_last) and not inner.weight.is_contiguous()
    probe = x[16:].clone().requires_grad_(True)  # images the check did not see
    fast_logits = fm.model(probe)
    (fast_grad,) = torch.autograd.grad(fast_logits.logsumexp(1).sum(), probe)
    plain_logits = net(probe)
    (plain_grad,) = torch.autograd.grad(plain_logits.logsumexp(1).sum(), probe)
    assert seen == [True]
    assert fast_logits.dtype == torch.float32
    scale = plain_logits.abs().amax(1, keepdim=True).clamp_min(1)
    assert ((fast_logits - plain_logits).abs() / scale).max() <= FAST_RTOL
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-4, atol=1e-6)
    assert fm.logit_diff <= FAST_RTOL and fm.record()["applied"] == ["channels_last"]
    # the caller's model: same weights, usual layout, no gradients stored
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert {k: v.stride() for k, v in net.state_dict().items()} == strides
    assert net[3].weight.is_contiguous() and all(p.grad is None for p in net.parameters())


def test_channels_last_battery_gives_the_plain_per_sample_results_and_says_so():
    net = small_cnn()
    x, y = cnn_data(net)
    battery = Battery([PGD(T, steps=5)])
    before = snapshot(net)
    plain = run_battery(net, (x, y), battery, batch_size=20)
    fast = run_battery(net, (x, y), battery, batch_size=20, fast=("channels_last",))
    assert 0 < plain.robust_acc < plain.clean_acc  # the toy is not degenerate: PGD breaks some
    # no near-ties on this toy: every per-sample result is the plain path's
    assert torch.equal(fast.clean_correct, plain.clean_correct)
    assert torch.equal(fast.success["pgd"], plain.success["pgd"])
    assert torch.equal(fast.robust, plain.robust)
    assert "fast" not in plain.config and "fast_check" not in plain.config
    assert fast.config["fast"] == ["channels_last"]
    assert fast.config["fast_check"]["requested"] == ["channels_last"]
    assert 0 <= fast.config["fast_check"]["logit_diff"] <= FAST_RTOL
    # the fingerprint and hash are the caller's model's, and the model is untouched
    assert fast.model_hash == plain.model_hash and fast.config["behaviour"] == plain.config["behaviour"]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert net[3].weight.is_contiguous() and not net[3].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_randomized_model_under_channels_last_keeps_its_randomized_treatment():
    net = small_cnn(noise=0.2)
    x, y = cnn_data(net, n=12)
    battery = Battery([PGD(T, steps=2, grad=EOT(n=2))])
    plain = run_battery(net, (x, y), battery, batch_size=12, draws=4)
    fast = run_battery(net, (x, y), battery, batch_size=12, draws=4, fast=("channels_last",))
    assert fast.config["fast"] == ["channels_last"]
    assert fast.randomness == plain.randomness == "protocol" and fast.config["stochastic"]
    assert fast.config["verdict_draws"] == 4
    # the copy's random layer got the plain run's seeds: the same draws, hence the same estimates
    assert 0 < float(plain.p_robust.mean()) < 1 and float(plain.p_robust.std()) > 0
    torch.testing.assert_close(fast.p_robust, plain.p_robust, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.p_clean, plain.p_clean, rtol=0, atol=1e-12)


class DetachedQuantizer(BPDALayer):
    """A quantizer computed off the graph: no input gradient at all without BPDA."""

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        return (x.detach() * 4).round() / 4


def test_a_model_without_input_gradient_is_checked_on_its_forward_and_attacked_through_bpda():
    net = small_cnn()
    quantized = nn.Sequential(DetachedQuantizer(), *net).eval()
    x, y = cnn_data(net)
    fm = prepare_fast(quantized, "channels_last", x[:16])  # the plain backward fails: forward only
    assert fm.applied == ("channels_last",) and fm.grad_diff is None
    fm = prepare_fast(quantized, "channels_last", x[:16], bpda="identity")  # the attacks' backward
    assert fm.applied == ("channels_last",) and fm.grad_diff is not None and fm.grad_diff < 1e-4
    battery = Battery([PGD(T, steps=3)])
    plain = run_battery(quantized, (x, y), battery, batch_size=20, bpda="identity")
    fast = run_battery(quantized, (x, y), battery, batch_size=20, bpda="identity", fast=("channels_last",))
    assert int(plain.success["pgd"].sum()) > 0  # BPDA lets PGD through the quantizer
    assert torch.equal(fast.success["pgd"], plain.success["pgd"]) and fast.config["fast"] == ["channels_last"]


# --------------------------------------------------------------------------- compile
class _FailsAtFirstCall(nn.Module):
    """What a compile whose backend cannot build code looks like: fine until the first call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("C++ compile error: cannot find a compiler")


def test_a_compile_failure_warns_and_gives_the_plain_result(monkeypatch):
    net = small_cnn()
    x, y = cnn_data(net)
    battery = Battery([PGD(T, steps=3)])
    plain = run_battery(net, (x, y), battery, batch_size=20)
    monkeypatch.setattr(fast_module.torch, "compile", lambda model, backend: _FailsAtFirstCall(model))
    with pytest.warns(UserWarning, match=r"fast path 'compile' not used \(RuntimeError: C\+\+ compile error: "
                                         r"cannot find a compiler\); evaluating without it"):
        fallen = run_battery(net, (x, y), battery, batch_size=20, fast=("compile",))
    assert "fast" not in fallen.config  # what ran is the plain path: the key says so
    assert fallen.config["fast_check"]["fallbacks"] == {"compile": "RuntimeError: C++ compile error: cannot find a compiler"}
    assert torch.equal(fallen.robust, plain.robust) and torch.equal(fallen.success["pgd"], plain.success["pgd"])


def test_an_unknown_backend_falls_back_at_once_and_channels_last_is_kept():
    net = small_cnn()
    x, _ = cnn_data(net, n=8)
    with pytest.warns(UserWarning, match=r"'compile' not used .*evaluating without it \(the plain model with channels_last\)"):
        fm = prepare_fast(net, ("compile", "channels_last"), x, compile_backend="no-such-backend")
    assert fm.applied == ("channels_last",) and set(fm.fallbacks) == {"compile"}
    assert isinstance(fm.model, ChannelsLast)


def test_a_compiled_random_layer_that_ignores_its_seed_is_dropped(monkeypatch):
    # a "compiled" model whose draws are frozen into the graph: right at seed 0, wrong at any
    # other seed; the check at two seeds catches it (one seed would not)
    class BakedDraws(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seed_stochastic(self.inner, 0)
            return self.inner(x)

    net = small_cnn(noise=0.2)
    x, _ = cnn_data(net, n=8)
    monkeypatch.setattr(fast_module.torch, "compile", lambda model, backend: BakedDraws(model))
    with pytest.warns(UserWarning, match=r"'compile' not used \(its logits differ from the plain model's by"):
        fm = prepare_fast(net, ("compile",), x)
    assert fm.applied == () and fm.model is net


def test_a_fast_path_off_by_more_than_the_tolerance_is_dropped(monkeypatch):
    class Shifted(nn.Module):
        def __init__(self, model: nn.Module, shift: float) -> None:
            super().__init__()
            self.inner, self.shift = model, shift

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out + self.shift * out.abs().amax(1, keepdim=True).clamp_min(1) * torch.tensor([1.0, 0, 0])

    net = small_cnn()
    x, _ = cnn_data(net, n=8)
    monkeypatch.setattr(fast_module.torch, "compile", lambda model, backend: Shifted(model, 0.5 * FAST_RTOL))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prepare_fast(net, "compile", x).applied == ("compile",)  # within the tolerance: kept
    monkeypatch.setattr(fast_module.torch, "compile", lambda model, backend: Shifted(model, 3 * FAST_RTOL))
    with pytest.warns(UserWarning, match=r"differ .* by 0\.0003 of a row's scale .* above the tolerance 0\.0001"):
        assert prepare_fast(net, "compile", x).applied == ()


def test_a_real_compile_keeps_the_random_layers_reachable_and_seeded():
    # the eager backend traces with dynamo (graph breaks included) without generating code
    net = small_cnn(noise=0.2)
    x, _ = cnn_data(net, n=6)
    before = snapshot(net)
    fm = prepare_fast(net, ("compile",), x, compile_backend="eager")
    assert fm.applied == ("compile",), fm.fallbacks
    assert isinstance(fm.model, torch._dynamo.eval_frame.OptimizedModule)
    assert stochastic_layers(fm.model) == stochastic_layers(net) == [net[0]]  # the very layer
    outs = {}
    for name, model in (("plain", net), ("compiled", fm.model)):
        for seed in (3, 4):
            seed_stochastic(model, seed)
            with torch.no_grad():
                outs[name, seed] = model(x)
    assert torch.equal(outs["compiled", 3], outs["plain", 3]) and torch.equal(outs["compiled", 4], outs["plain", 4])
    assert not torch.equal(outs["plain", 3], outs["plain", 4])  # the seed decides the draw
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


# --------------------------------------------------------------------------- the resumable state
def test_results_with_and_without_a_fast_path_are_kept_apart_in_the_state(tmp_path):
    net = small_cnn()
    x, y = cnn_data(net, n=20)
    battery = Battery([PGD(T, steps=2)])

    def run(fast: tuple[str, ...]) -> tuple[int, int]:
        events: list[ProgressEvent] = []
        run_battery(net, (x, y), battery, batch_size=10, state_dir=tmp_path, progress=events.append, fast=fast)
        return events[0].completed, events[0].total

    assert run(()) == (0, 2)
    assert run(("channels_last",)) == (0, 2)  # the plain state is not taken for a fast one
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2  # side by side, neither replaced
    assert run(()) == (2, 2)  # each resumes its own
    assert run(("channels_last",)) == (2, 2)


# --------------------------------------------------------------------------- fp32 numerics
class PrecisionSpy(nn.Module):
    """A CNN that records, at every forward, its output's dtype and the TF32 flags (in a class
    attribute: the channels_last path attacks a deep copy of the spy)."""

    seen: list[tuple[torch.dtype, str, str]] = []

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        b = torch.backends
        self.seen.append((out.dtype, b.mkldnn.matmul.fp32_precision, b.cudnn.conv.fp32_precision))
        return out


@pytest.mark.parametrize("fast", [(), ("channels_last",)])
def test_attacks_run_in_fp32_inside_a_bf16_autocast_and_the_flags_are_restored(fast):
    spy = PrecisionSpy().eval()
    x, y = cnn_data(spy.net)
    spy.seen.clear()
    battery = Battery([PGD(T, steps=3)])
    reference = run_battery(spy, (x, y), battery, batch_size=20, fast=fast)
    b = torch.backends
    old = (b.mkldnn.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
    try:
        b.mkldnn.matmul.fp32_precision, b.cudnn.conv.fp32_precision = "bf16", "tf32"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert spy.net(x).dtype == torch.bfloat16  # the caller's autocast is in force out here
            spy.seen.clear()
            r = run_battery(spy, (x, y), battery, batch_size=20, fast=fast)
            assert spy.net(x).dtype == torch.bfloat16  # and again after the run
        assert (b.mkldnn.matmul.fp32_precision, b.cudnn.conv.fp32_precision) == ("bf16", "tf32")
    finally:
        b.mkldnn.matmul.fp32_precision, b.cudnn.conv.fp32_precision = old
    assert len(spy.seen) > 10 and set(spy.seen) == {(torch.float32, "ieee", "ieee")}
    assert torch.equal(r.robust, reference.robust) and torch.equal(r.p_robust, reference.p_robust)
    assert torch.equal(r.success["pgd"], reference.success["pgd"])


# --------------------------------------------------------------------------- the command line
def test_the_cli_records_the_fast_path_in_the_ledger_row(tmp_path):
    path = tmp_path / "tiny.safetensors"
    robustlab.save(robustlab.create_model("resnet-mini", num_classes=10, in_channels=1, seed=0), path,
                   dataset="digits")
    ledger = tmp_path / "ledger.sqlite"
    r = CliRunner().invoke(app, ["evaluate", str(path), "--n", "6", "--device", "cpu", "--ledger", str(ledger),
                                 "--battery", "quick", "--eps", "8/255", "--no-state", "--channels-last"])
    assert r.exit_code == 0, r.output
    assert "fast paths: channels_last;" in r.output and "dropped" not in r.output
    (row,) = Ledger(ledger).rows()
    assert row.config["fast"] == ["channels_last"] and row.config["fast_check"]["fallbacks"] == {}

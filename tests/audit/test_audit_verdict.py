"""The one audit verdict (robustlab.audit.audit), its files and the ``robustlab audit`` command.

Truths come from the toys of :mod:`audit_toys` (closed-form worst cases of linear scores over the
box-clipped L-inf ball), never from the audit's own output read back.
"""

from __future__ import annotations

import json

import pytest
import torch
from audit_toys import EPS, block_weights, poised, score_range, toy_images
from torch import nn
from typer.testing import CliRunner

import robustlab
from robustlab.attacks import PGD, create_attack
from robustlab.audit import audit, audit_settings, write_audit
from robustlab.cli import app
from robustlab.core import InputError, ThreatModel

THREAT = ThreatModel("linf", EPS)
runner = CliRunner()


class LinearHead(nn.Module):
    """Logits ``head(m(x))`` with a two-class ``nn.Linear`` head whose margin ``z1 - z0`` is the
    score ``<w, m(x)> + b`` of :mod:`audit_toys` (``m``: the identity, or rounding each pixel to
    ``levels`` levels, a quantizer with a zero gradient almost everywhere)."""

    def __init__(self, w: torch.Tensor, b: float, levels: int | None = None) -> None:
        super().__init__()
        self.levels = levels
        self.head = nn.Linear(w.numel(), 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.stack([torch.zeros_like(w), w]))
            self.head.bias.copy_(torch.tensor([0.0, b]))

    def pixel_map(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.levels is None else torch.round(v * (self.levels - 1)) / (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pixel_map(x.flatten(1)))


def _images(seed: int, n: int = 24) -> torch.Tensor:
    return poised(toy_images(n, seed), (0.05, 0.08, 0.12, 0.15), 0.005, seed)


def _truth(model: LinearHead, x: torch.Tensor, y: torch.Tensor) -> float:
    """The exact robust accuracy: an image is robust when the worst score over the ball keeps its class."""
    w, b = model.head.weight[1].detach(), float(model.head.bias[1].detach())
    low, high = score_range(x, w, b, EPS, model.pixel_map)
    robust = torch.where(y == 1, low > 0, high <= 0)
    return float(robust.double().mean())


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_strong_evaluation_of_a_linear_model_is_trustworthy_and_exact(seed):
    model = LinearHead(block_weights(), -2.0).eval()
    x = _images(seed)
    y = _labels(model, x)
    truth = _truth(model, x, y)
    assert 0.1 < truth < 0.9  # some images break, some cannot: the toy tests something
    res = audit(model, x, y, threat=THREAT, evaluation=create_attack("apgd-ce", THREAT),
                settings=audit_settings("quick"), seed=seed)
    assert res.summary == "TRUSTWORTHY", [c.to_dict() for c in res.flags]
    assert res.binarization is not None and res.binarization.verdict == "pass"
    # a deterministic model: the worst case is exact, and never above what the evaluation reported
    assert res.worst == pytest.approx(truth, abs=1e-9)
    assert res.worst <= res.reported + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_crippled_attack_is_a_broken_evaluation_and_the_audit_finds_the_truth(seed):
    model = LinearHead(block_weights(), -2.0).eval()
    x = _images(seed)
    y = _labels(model, x)
    truth = _truth(model, x, y)
    weak = PGD(THREAT, steps=1, step_size=EPS / 100, random_start=False)
    res = audit(model, x, y, threat=THREAT, evaluation=weak, settings=audit_settings("quick"), seed=seed)
    assert res.summary == "BROKEN EVALUATION (binarization test failed)"
    assert res.reported > truth + 0.1  # the crippled attack overstates robustness ...
    assert res.worst == pytest.approx(truth, abs=1e-9)  # ... and the audit's own attacks recover the truth


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_quantized_input_is_flagged_and_its_worst_case_is_near_the_truth(seed):
    model = LinearHead(block_weights(), -2.0, levels=64).eval()
    x = _images(seed)
    y = _labels(model, x)
    truth = _truth(model, x, y)
    res = audit(model, x, y, threat=THREAT, evaluation=create_attack("apgd-ce", THREAT),
                settings=audit_settings("quick"), seed=seed)
    assert res.summary != "TRUSTWORTHY"
    codes = {c.code for c in res.flags}
    assert "gradient-health" in codes or res.broken, codes
    assert abs(res.worst - truth) <= 0.1 and res.worst >= truth - 1e-9


def test_the_files_and_the_ledger_row(tmp_path):
    model = LinearHead(block_weights(), -2.0).eval()
    x = _images(0)
    y = _labels(model, x)
    res = audit(model, x, y, threat=THREAT, evaluation=create_attack("apgd-ce", THREAT),
                settings=audit_settings("quick"), seed=0)
    paths = write_audit(res, tmp_path / "a", num_classes=2)
    d = json.loads(paths["json"].read_text())
    assert d["summary"] == res.summary and d["worst"] == pytest.approx(_truth(model, x, y))
    assert len(d["worst_per_sample"]) == len(x) and set(d["worst_source"]) <= set(d["evaluations"])
    text = paths["md"].read_text()
    assert f"**{res.summary}**" in text and "## The binarization test" in text
    assert paths["eps"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = res.worst_result()
    assert row.robust_acc == pytest.approx(res.worst) and row.config["audit"]["summary"] == res.summary
    led = robustlab.evaluate.Ledger(tmp_path / "ledger.sqlite")
    led.add(row)
    assert len(led) == 1 and led.get(1).robust_acc == pytest.approx(res.worst)


def test_bad_inputs_are_refused_with_the_fix():
    model = LinearHead(block_weights(), -2.0).eval()
    x = _images(0)
    y = _labels(model, x)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        audit(model, x + 2, y, threat=THREAT)
    with pytest.raises(InputError, match="unknown audit profile .fast.; use one of demo, quick, full"):
        audit_settings("fast")

    class Raises(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(InputError, match="the model raised RuntimeError on a forward of 2 images: boom"):
        audit(Raises(), x, y, threat=THREAT)


# --- the command --------------------------------------------------------------------------------


def _one_error_line(r) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_the_command_refuses_hostile_inputs_in_one_line(tmp_path, digits_checkpoint, monkeypatch):
    out = tmp_path / "out"
    base = ["audit", "--n", "4", "--device", "cpu", "--out", str(out)]
    line = _one_error_line(runner.invoke(app, [*base[:1], str(tmp_path / "missing.safetensors"), *base[1:]]))
    assert "missing.safetensors" in line
    line = _one_error_line(runner.invoke(app, [*base[:1], str(digits_checkpoint), *base[1:], "--eps", "8"]))
    assert "did you mean 8/255?" in line
    line = _one_error_line(runner.invoke(app, [*base[:1], str(digits_checkpoint), *base[1:], "--battery", "nope"]))
    assert "nope" in line and "standard" in line and "apgd-ce" in line
    line = _one_error_line(runner.invoke(app, [*base[:1], str(digits_checkpoint), *base[1:], "--profile", "fast"]))
    assert "demo, quick, full" in line

    class Raises(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    class NoHead(nn.Module):
        """Logits from global pooling of a convolution: no nn.Linear at all."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 3, padding=1)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    real_load = robustlab.load
    for fake, words in ((Raises(), "the model raised RuntimeError"), (NoHead(), "no penultimate layer found")):
        def load(path, device=None, fake=fake, **kw):
            model = real_load(path, device=device, **kw)
            fake.robustlab_header = model.robustlab_header
            return fake.eval()

        monkeypatch.setattr(robustlab, "load", load)
        line = _one_error_line(runner.invoke(app, [*base[:1], str(digits_checkpoint), *base[1:],
                                                   "--battery", "apgd-ce"]))
        assert words in line
    assert not (out / "audit.json").exists() and not (out / "ledger.sqlite").exists()


def test_the_command_prints_the_verdict_last_and_writes_its_files(tmp_path, digits_checkpoint):
    out = tmp_path / "out"
    r = runner.invoke(app, ["audit", str(digits_checkpoint), "--n", "8", "--battery", "apgd-ce", "--device", "cpu",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    d = json.loads((out / "audit.json").read_text())
    assert last == d["summary"]
    assert last == "TRUSTWORTHY" or last.startswith(("SUSPECT (", "BROKEN EVALUATION"))
    assert (out / "audit.md").exists() and robustlab.evaluate.Ledger(out / "ledger.sqlite").get(1).n == 8


# --- the checklist's toys, through the whole audit ------------------------------------------------


@pytest.mark.parametrize("name", ["step", "rounded", "softmax", "phase-noise", "noise-without-eot"])
def test_the_audit_flags_each_toy_and_its_worst_case_reaches_the_truth(name):
    """The toys of test_audit_checks (no nn.Linear head, so no binarization test: binarization_n=0)
    audited whole: the verdict is SUSPECT with the toy's flags, and the audit's worst case (the
    evaluation under audit and every checklist attack) is within a few points of the closed form."""
    from dataclasses import replace

    from audit_toys import truth
    from test_audit_checks import RANDOM_TOL, TOYS, WORST_TOL

    case = TOYS[name](0)
    model = case.model.eval()
    res = audit(model, case.x, case.y, threat=THREAT, evaluation=case.battery or create_attack("apgd-ce", THREAT),
                settings=replace(audit_settings("quick"), binarization_n=0), seed=0, **case.kwargs)
    assert res.summary.startswith("SUSPECT (") and res.binarization is None
    assert case.must_flag <= {c.code for c in res.flags}
    true = float(truth(model, case.x, case.y).mean())
    if case.random:
        assert abs(res.worst - true) <= RANDOM_TOL, (res.worst, true)
    else:
        assert true - 1e-9 <= res.worst <= true + WORST_TOL, (res.worst, true)

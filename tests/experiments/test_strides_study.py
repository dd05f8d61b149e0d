"""The strides-study recipe: its plan against the paper's protocol, and a tiny run end to end."""

import json

import pytest
import torch

from robustlab.analysis import cost
from robustlab.checkpoints import load
from robustlab.core import InputError
from robustlab.experiments import RecordStore, run_study, study_config
from robustlab.experiments.strides_study import PROFILES, plan
from robustlab.models import create_model

CPU = PROFILES["cpu"].config


def test_columns_follow_table_one():
    cols = {c.name: c for c in plan(CPU).columns}
    # Table I: PGD-20 at relative step 0.25, PGD-50 at 0.033333, DeepFool 50 steps, overshoot 0.02
    assert cols["pgd20"].settings["steps"] == 20 and cols["pgd20"].settings["step_size"] == pytest.approx(0.025)
    assert cols["pgd50"].settings["steps"] == 50 and cols["pgd50"].settings["step_size"] == pytest.approx(0.1 / 30)
    assert dict(cols["deepfool"].settings) == {"steps": 50, "overshoot": 0.02, "candidates": 10}
    assert cols["aa"].settings["version"] == "standard" and cols["fgsm"].kind == "fgsm"
    # Table II's grid: 1/4 .. 5/4 of the budget, as 2/255 .. 10/255 around the paper's 8/255
    assert [c.settings["eps"] for c in plan(CPU).columns if c.kind == "unchanged"] == [0.025, 0.05, 0.075, 0.1, 0.125]


def test_variants_train_every_objective_with_both_stride_patterns():
    p = plan(CPU)
    makes = {v.label: v.make for v in p.variants}
    # Table V: 7 objectives x 2 patterns; Table II: 2 more patterns and 4 upsamplings; Table III: 2 max-pool
    assert len(p.variants) == 14 + 2 + 4 + 2
    assert makes["TRADES 1-2-2"].conversions == () and makes["TRADES 1-1-2"].conversions == (
        ("strides", (("strides", "1-1-2"),)),)
    assert makes["TRADES 1-2-2 nearest x3"].conversions == (("upsample-input", (("scale", 3), ("mode", "nearest"))),)
    assert makes["TRADES 1-1-2 max-pool"].conversions == (("strides", (("strides", "1-1-2"),)),
                                                          ("global-pooling", (("kind", "max"),)))
    assert makes["AT-AWP 1-1-2"].train.objective == "awp" and ("base", "pgd-at") in makes["AT-AWP 1-1-2"].train.objective_options
    assert all(("eps", 0.1) in m.train.objective_options for m in makes.values())
    with pytest.raises(InputError, match="unknown strides-study objective 'XYZ'"):
        plan(study_config("strides-study", "quick", objectives=("XYZ",)))


def test_quick_profile_has_no_autoattack_claim_it_cannot_back():
    quick = plan(PROFILES["quick"].config)
    jobs = dict(quick.jobs)
    assert "aa" not in jobs["TRADES 1-2-2"] and "pgd50" in jobs["TRADES 1-1-2"]
    assert [v.label for v in quick.variants] == ["TRADES 1-2-2", "TRADES 1-1-2"]


@pytest.mark.slow
def test_a_tiny_strides_study_runs_and_its_models_rebuild(tmp_path):
    cfg = study_config("strides-study", "quick", dataset="digits", eval_n=12, clean_n=60, eval_batch_size=12,
                       epochs=1, train_limit=128, train_steps=1, ratio_eps=(0.1,), deepfool_steps=2)
    r = run_study("strides-study", tmp_path, cfg)
    assert not r.partial
    store = RecordStore(tmp_path / "records")
    for label in ("TRADES 1-2-2", "TRADES 1-1-2"):
        assert {rec.column for rec in store if rec.variant == label} == {
            "clean", "fgsm", "pgd20", "pgd50", "deepfool", "unchanged-0.1"}
    # the shrunk model is rebuilt from its checkpoint with the 1-1-2 strides, and its cost is that
    # of a resnet-mini built with those strides directly: about 2.8x the FLOPs of 1-2-2 on 8x8 digits
    model = load(tmp_path / "models" / "trades-1-1-2" / "seed0" / "model.safetensors")
    direct = create_model("resnet-mini", num_classes=10, in_channels=1, strides=(1, 1, 2))
    recorded = json.loads((tmp_path / "models" / "trades-1-1-2" / "seed0" / "cost.json").read_text())
    assert recorded == cost(direct, (1, 1, 8, 8)).to_dict()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    base = json.loads((tmp_path / "models" / "trades-1-2-2" / "seed0" / "cost.json").read_text())
    assert recorded["flops"] > base["flops"] and recorded["params"] == base["params"]
    assert "## Cost" in r.report and "| TRADES 1-1-2 |" in r.report.split("## Cost")[1]
    rows = [c for c in r.claims if c.claim.claim.startswith("TRADES: shrunk strides raise natural")]
    assert len(rows) == 1 and rows[0].comparison is not None and rows[0].comparison.n == 60


def test_full_profile_runs_resnet18_and_table_four_with_appendix_b_patterns():
    full = plan(PROFILES["full"].config)
    makes = {v.label: v.make for v in full.variants}
    assert makes["TRADES 1-2-2-2"].model == "resnet18" and makes["TRADES 1-1-2-2"].conversions == (
        ("strides", (("strides", "1-1-2-2"),)),)
    # Appendix B: AlexNet 2-2-2-2 -> 1-1-2-2, VGG16 2-2-2-2-2 -> 1-1-2-2-2, each on its own network
    assert makes["vgg16 1-1-2-2-2"].model == "vgg16" and makes["vgg16 2-2-2-2-2"].conversions == ()
    assert makes["alexnet 1-1-2-2"].conversions == (("strides", (("strides", "1-1-2-2"),)),)
    assert [t.key for t in full.tables] == ["table5", "table2", "table4", "table3"]
    with pytest.raises(InputError, match="resnet18 has 4 stages but the profile's stride patterns"):
        plan(study_config("strides-study", "cpu", model="resnet18"))

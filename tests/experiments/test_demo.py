"""The demo pipeline end to end on tiny data (the real run is ``make demo``)."""

import json

from robustlab.evaluate import Ledger
from robustlab.experiments import DemoConfig, run_demo, study_config

TINY_SD = study_config(
    "sd-study", "quick", dataset="digits", finetune_limit=128, finetune_epochs=1, batch_size=64, eval_n=20, clean_n=100,
    eval_batch_size=20, pgd_steps=2, square_queries=5, eot_draws=(2,), corruption_n=10, table1=("Baseline", "SD"),
    noise_sweep=(), spp_sweep=(2,), transfer_from_baseline=("Baseline", "SD"), eps=0.05,
)
TINY_STRIDES = study_config(
    "strides-study", "quick", dataset="digits", eval_n=12, clean_n=60, eval_batch_size=12, epochs=1, train_limit=128,
    train_steps=1, ratio_eps=(0.1,), deepfool_steps=2,
)
TINY_SPARSE = study_config(
    "sparse-study", "quick", dataset="digits", eval_n=8, clean_n=40, eval_batch_size=8, atoms=24, dict_images=60,
    dict_patches=400, dict_iter=3, top_t=4, dropout_p=0.5, epochs=1, decoder_epochs=1, train_limit=96, hidden=(4, 4),
    attack_steps=2, eot=2, aa_eot=1, square_queries=4, square_eot=1, figure_n=4,
)
TINY_DCS = study_config(
    "dcs-study", "quick", dataset="digits", eval_n=8, clean_n=40, eval_batch_size=8, epochs=1, train_limit=96,
    at_steps=1, attack_steps=2, eot=2, aa_eot=1, square_queries=4, square_eot=1, ensemble_draws=2, figure_n=0,
)
TINY_GRADNORM = study_config(
    "gradnorm-study", "quick", dataset="digits", eval_n=8, clean_n=40, eval_batch_size=8, activations=("gelu",),
    natural=False, edge_align=False, epochs=1, train_limit=64, batch_size=32, pgd_steps=2, at_steps=1, figure_n=0,
)
TINY = DemoConfig(
    dataset="digits", epochs=1, at_epochs=1, batch_size=64, train_limit=512, at_train_limit=256,
    test_limit=200, eval_n=60, battery="quick", eval_batch_size=30, at_steps=2, sd_study=TINY_SD, strides_study=TINY_STRIDES,
    sparse_study=TINY_SPARSE, dcs_study=TINY_DCS, gradnorm_study=TINY_GRADNORM,
)


def test_demo_trains_both_models_attacks_them_and_reports(tmp_path):
    r = run_demo(tmp_path, TINY)
    names = [m["name"] for m in r["models"]]
    assert names == ["standard", "pgd-at"]
    for m in r["models"]:
        assert 0.0 <= m["robust_accuracy"] <= m["clean_accuracy_eval_n"] <= 1.0
        assert list(m["per_attack"]) == ["pgd"]
    assert r["models"][1]["train_images"] == 256 and r["eval_n"] == 60
    report = (tmp_path / "report.md").read_text()
    assert "resnet-mini (pgd-at)" in report and "worst case (%)" in report and "60 attacked" in report
    assert json.loads((tmp_path / "results.json").read_text())["eval_n"] == 60
    assert len(Ledger(tmp_path / "ledger.sqlite").rows()) == 2
    # the study's quick profile ran on the demo's standard model and its Table 1 is in the report
    table1 = report.split("Stochastic Downsampling study (quick profile)")[1]
    rows = [line.split(" | ")[0] for line in table1.split("\n\n| claim |")[0].splitlines() if line.startswith("| ")]
    assert rows == ["| method", "| Baseline", "| SD"]
    assert "Stochastic Downsampling study (quick profile)" in report and "sd-study/report.md" in report
    assert "worst case, all attacks (%)" in report
    # the quick battery lacks AutoAttack rand: the verdict points to the cpu profile, claims no gain
    assert "not conclusive about adaptive robustness" in report and "runs/sd-study-cpu/report.md" in report
    assert "survives adaptive attacks" not in report
    assert (tmp_path / "sd-study" / "report.md").exists()
    # the strides study's quick profile ran too, and its Table V and claims are in the report
    assert "Feature-map strides study (quick profile)" in report and "strides-study/report.md" in report
    assert "| TRADES 1-1-2 |" in report and "TRADES: shrunk strides raise natural accuracy" in report
    assert (tmp_path / "strides-study" / "report.md").exists()
    saved = json.loads((tmp_path / "sd-study" / "config.json").read_text())
    assert saved["baseline"] == str(tmp_path / "standard" / "model.safetensors")
    # the sparse-encoder study ran with the demo's PGD-AT model as its baseline (not retrained)
    assert "Sparse randomized encoder study (quick profile)" in report and "sparse-study/report.md" in report
    assert "| Ours |" in report and "The defense's worst case over every attack" in report
    sparse_cfg = json.loads((tmp_path / "sparse-study" / "config.json").read_text())
    assert sparse_cfg["baseline"] == str(tmp_path / "pgd-at" / "model.safetensors")
    assert not (tmp_path / "sparse-study" / "models" / "pgd-at" / "seed0").exists()
    assert (tmp_path / "sparse-study" / "figures" / "autoencoder.png").exists()
    # the DCS study: the demo's PGD-AT model is its baseline and transfer source, both protocols in the report
    assert "Deformable convolution with stochasticity study (quick profile)" in report
    assert "| DCS + GSAT |" in report and "The paper's protocol reports higher robust accuracy than EOT-PGD" in report
    dcs_cfg = json.loads((tmp_path / "dcs-study" / "config.json").read_text())
    assert dcs_cfg["baseline"] == str(tmp_path / "pgd-at" / "model.safetensors")
    # the gradient-norm study trains its own models (no shared baseline: its rows differ by activation)
    assert "Gradient-norm regularization study (quick profile)" in report and "| GradNorm GELU |" in report
    assert (tmp_path / "gradnorm-study" / "report.md").exists()
    timing = report.split("## Time")[1]
    assert "dcs-study (quick)" in timing and "gradnorm-study (quick)" in timing

    # A second run resumes everything (training and battery state) and gives the same numbers.
    again = run_demo(tmp_path, TINY)
    for a, b in zip(r["models"], again["models"], strict=True):
        assert a["clean_accuracy"] == b["clean_accuracy"]
        assert a["robust_accuracy"] == b["robust_accuracy"]
    assert len(Ledger(tmp_path / "ledger.sqlite").rows()) == 4

"""The demo pipeline: which studies it runs and how, read from their recipes, the report's text,
and the whole demo end to end on tiny data (the real run is ``make demo``)."""

import json

import pytest

from robustlab.core import Registry
from robustlab.core.errors import UnknownNameError
from robustlab.evaluate import Ledger
from robustlab.experiments import STUDIES, DemoConfig, DemoPart, Study, run_demo, study_config
from robustlab.experiments import demo as demo_module
from robustlab.experiments.demo import _write_report, demo_studies, study_key

# what the demo report said of each study before its recipe declared it (the quick profiles, on
# the demo's dataset and model): the sentences must not change
BEFORE = {
    "sd-study": ("Stochastic Downsampling study",
                 "The standard model above is the baseline; every method replaces its strided convolutions and is "
                 "finetuned 5 epochs. The paper's protocol: L-inf eps = 0.01569 (4/255), PGD as in its Sec. 4.1, plus "
                 "the adaptive attacks it lacks (EOT, transfer from the deterministic twin)."),
    "strides-study": ("Feature-map strides study",
                      "TRADES-trained models with the original strides and the shrunk ones (feature maps twice as "
                      "large before the average pooling), L-inf eps = 0.1."),
    "sparse-study": ("Sparse randomized encoder study",
                     "The sparse randomized encoder (dictionary learnt on training patches, top-T, test-time dropout, "
                     "ternary quantization) with a decoder in front of the classifier, under the paper's attack modes "
                     "(W-NFGA, W-AIGA, PW-T, B-T) and the library's own (AA rand with BPDA, Square on the expected "
                     "margin), L-inf eps = 0.1; the PGD-AT model above is its adversarial-training baseline."),
    "dcs-study": ("Deformable convolution with stochasticity study",
                  "resnet-mini's second convolution becomes a DCS layer (k = 5, n = 2 positions per forward), trained "
                  "with GSAT and with plain PGD-AT; the same checkpoints under the paper's protocol (attack one sampled "
                  "path, resample, infer) and under the honest one (EOT over the kernel distribution, AutoAttack "
                  "`rand`, Square on the expected margin, transfer from the PGD-AT model above, its baseline), L-inf "
                  "eps = 0.1."),
    "gradnorm-study": ("Gradient-norm regularization study",
                       "resnet-mini with its activations swapped (ReLU, GELU), trained from scratch with GradNorm (Eq. "
                       "4.1, double backprop) and with PGD-3 AT, plus a natural and an EdgeAlign GELU model, all with "
                       "the thesis' AdamW recipe; L-inf eps = 0.1."),
    "arena": ("The arena", "Every defense the studies below trained, side by side under one adaptive battery (L-inf "
                           "eps = 0.1, 32 images): the answer first, the details after."),
}


def test_the_demo_runs_the_studies_its_recipes_declare_in_their_order():
    studies = demo_studies()
    assert [s.name for s in studies] == list(BEFORE)
    parts = {s.name: s.demo for s in studies}
    assert {n: p.baseline for n, p in parts.items()} == {"sd-study": "standard", "strides-study": None,
                                                         "sparse-study": "pgd-at", "dcs-study": "pgd-at",
                                                         "gradnorm-study": None, "arena": None}
    # the arena loads the models the demo and the studies made, and audits them (the studies do not, in the demo)
    assert {n for n, p in parts.items() if p.reuse is not None} == {n for n, p in parts.items() if p.audits} == {"arena"}
    assert {n: p.inherits for n, p in parts.items() if p.inherits != ("dataset", "model")} == {
        "strides-study": ("dataset",)}  # its stride patterns are resnet-mini's
    assert all(p.profile == "quick" for p in parts.values())
    for name, (heading, sentence) in BEFORE.items():
        study = STUDIES.get(name)
        cfg = study_config(study, "quick", dataset="fashion-mnist", **(
            {"model": "resnet-mini"} if "model" in study.demo.inherits else {}))
        assert (study.demo.heading or study.title, study.demo.about(cfg)) == (heading, sentence)


def test_the_demo_reports_each_study_it_ran_in_order(tmp_path):
    models = [{"name": n, "objective": n, "train_images": 10, "epochs": 1, "train_seconds": 1.0, "clean_accuracy": 0.9,
               "clean_accuracy_eval_n": 0.9, "robust_accuracy": 0.5, "per_attack": {"pgd": 0.5}, "eval_seconds": 2.0,
               "history": [{"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "seconds": 3.0}],
               "battery_markdown": f"battery of {n}\n"} for n in ("standard", "pgd-at")]
    results = {"config": {"dataset": "fashion-mnist", "model": "resnet-mini", "battery": "quick"}, "train_images": 10,
               "test_images": 20, "eval_n": 5, "threat": {"norm": "linf", "eps": 0.1}, "models": models,
               "total_seconds": 9.0, "device": "cpu", "torch": "x", "python": "y", "threads": 1,
               **{study_key(n): {"profile": "quick", "seconds": 7.0, "summary_markdown": f"summary of {n}\n"}
                  for n in BEFORE}, "dcs_study": None}
    sections = {study_key(n): (heading, sentence, n) for n, (heading, sentence) in BEFORE.items() if n != "dcs-study"}
    _write_report(tmp_path, results, sections)
    report = (tmp_path / "report.md").read_text()
    for name, (heading, sentence) in BEFORE.items():
        section = (f"## {heading} (quick profile)\n\n{sentence} Every table, setting and figure: "
                   f"[{name}/report.md]({name}/report.md).\n\nsummary of {name}\n")
        assert (section in report) == (name != "dcs-study")  # a study skipped has no section
    starts = [report.index(f"## {BEFORE[n][0]}") for n in BEFORE if n != "dcs-study"]
    assert starts == sorted(starts)
    timing = report.split("## Time")[1]
    assert "| sd-study (quick), training and evaluation | - | 7.0 |" in timing and "dcs-study" not in timing


def test_a_recipe_with_a_demo_part_joins_the_demo_and_an_unknown_study_is_refused(tmp_path, monkeypatch):
    registry: Registry[Study] = Registry("study", plural="studies")
    for name in STUDIES.names():
        registry.register(name, STUDIES.get(name))
    extra = Study("new-study", "New study", "new.txt", STUDIES.get("strides-study").profiles,
                  STUDIES.get("strides-study").plan, STUDIES.get("strides-study").intro,
                  DemoPart(3, lambda cfg: "new", baseline="standard"))
    registry.register(extra.name, extra)
    registry.register("no-demo", Study("no-demo", "Not in the demo", "x.txt", {}, extra.plan, extra.intro))
    monkeypatch.setattr(demo_module, "STUDIES", registry)
    assert [s.name for s in demo_studies()] == ["sd-study", "strides-study", "new-study", "sparse-study",
                                                "dcs-study", "gradnorm-study", "arena"]  # order 3 ties: by name
    with pytest.raises(UnknownNameError, match="unknown study 'nope'"):
        run_demo(tmp_path, DemoConfig(studies={"nope": "quick"}))
    assert not any(tmp_path.iterdir())  # refused before any training



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
TINY_ARENA = study_config(
    "arena", "quick", dataset="digits", eval_n=8, clean_n=40, eval_batch_size=8, aa_eot=1, square_queries=4,
    square_eot=1, paper_steps=2, paper_eot=1,
)
TINY = DemoConfig(
    dataset="digits", epochs=1, at_epochs=1, batch_size=64, train_limit=512, at_train_limit=256,
    test_limit=200, eval_n=60, battery="quick", eval_batch_size=30, at_steps=2,
    studies={"sd-study": TINY_SD, "strides-study": TINY_STRIDES, "sparse-study": TINY_SPARSE, "dcs-study": TINY_DCS,
             "gradnorm-study": TINY_GRADNORM, "arena": TINY_ARENA},
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
    rows = Ledger(tmp_path / "ledger.sqlite").rows()
    assert len(rows) == 2  # the first look at both models; AutoAttack and the audits are the arena's
    # the report opens with the arena's answer, one row per model the demo and the studies made
    assert report.index("## The arena: the answer (quick profile)") < report.index("## Clean and robust accuracy")
    answer = report.split("## The arena: the answer (quick profile)")[1].split("\n## ")[0]
    arena_rows = ["Standard", "PGD-AT", "SD", "Sparse encoder", "Shrunk strides + TRADES", "GradNorm GELU", "DCS + GSAT"]
    assert [line.split(" | ")[0].lstrip("| ") for line in answer.splitlines() if line.startswith("| ")][1:] == arena_rows
    arena_cfg = json.loads((tmp_path / "arena" / "config.json").read_text())["config"]
    assert dict(arena_cfg["reuse"])["PGD-AT"] == str(tmp_path / "pgd-at" / "model.safetensors")
    assert not (tmp_path / "arena" / "models" / "pgd-at" / "shared" / "model.safetensors").exists()  # loaded, not trained
    # one audit table: every arena row's adaptive evaluation, audited once (the studies ran without theirs)
    audits = report.split("## Audits\n\n")[1].split("\n## ")[0]
    models = [line.split(" | ")[0].lstrip("| ") for line in audits.splitlines() if line.startswith("| ")][1:]
    assert models == sorted(arena_rows), audits
    assert not list((tmp_path / "sd-study").glob("audits/*"))
    audit_row = json.loads((tmp_path / "arena" / "audits" / "pgd-at" / "seed0" / "audit-aa" / "audit.json").read_text())
    assert audit_row["summary"] in audits and (tmp_path / "report.html").exists()
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
    # each resumed evaluation adds its row again; the finished audits are read back, not re-run
    assert len(Ledger(tmp_path / "ledger.sqlite").rows()) == 4
    assert again["audits"] == r["audits"]

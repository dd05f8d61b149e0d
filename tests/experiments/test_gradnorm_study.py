"""The gradient-norm study recipe: its settings against the thesis, its claims, and a tiny run end to end."""

from __future__ import annotations

import json
from statistics import NormalDist

import pytest
import torch
from torch import nn

from robustlab.checkpoints import load
from robustlab.core.checkpoint import read_header
from robustlab.core.errors import InputError
from robustlab.data import as_tensors, get_info, load_dataset
from robustlab.defenses import swap_activations
from robustlab.experiments import gradnorm_study
from robustlab.experiments.claims import WORST
from robustlab.experiments.gradnorm_study import PROFILES, columns, plan
from robustlab.experiments.records import RecordStore
from robustlab.experiments.study import STUDIES, run_study, study_config
from robustlab.experiments.variants import Train
from robustlab.models import create_model


def _makes(profile: str) -> dict[str, Train]:
    out = {}
    for v in plan(PROFILES[profile].config).variants:
        assert isinstance(v.make, Train)
        out[v.label] = v.make
    return out


def test_the_study_is_registered_on_import():
    assert STUDIES.get("gradnorm-study").plan is gradnorm_study.plan
    assert set(STUDIES.get("gradnorm-study").profiles) == {"quick", "cpu", "full"}


def test_table_4_4_grid_trains_each_activation_with_gradnorm_and_pgd3_at():
    """Table 4.4: {ReLU, GeLU, SiLU} x {GradNorm, PGD-3 AT}; the activation set by the
    ``activations`` conversion on the fresh network, the same model for every row."""
    makes = _makes("cpu")
    expected = {f"{m} {a}" for m in ("GradNorm", "PGD-3 AT") for a in ("ReLU", "GELU", "SiLU")}
    assert expected | {"Natural GELU", "EdgeAlign GELU"} == set(makes)
    for name, make in makes.items():
        kind = {"ReLU": "relu", "GELU": "gelu", "SiLU": "silu"}[name.rsplit(" ", 1)[1]]
        assert make.model == "resnet-mini"
        assert make.conversions == (("activations", (("kind", kind),)),)
        assert make.train.epochs == 10 and make.train.limit == 10_000
    gn = dict(makes["GradNorm GELU"].train.objective_options)
    assert makes["GradNorm GELU"].train.objective == "gradnorm"
    # Eq. 4.1 text: lambda_CE 0.8, lambda_GN 1.2; warm-up 5 of 50 epochs -> 1 of 10
    assert (gn["lambda_ce"], gn["lambda_gn"], gn["eps"], gn["warmup_epochs"]) == (0.8, 1.2, 0.1, 1)
    at = dict(makes["PGD-3 AT SiLU"].train.objective_options)
    assert makes["PGD-3 AT SiLU"].train.objective == "pgd-at"
    # App. B.2: attack_it 3, attack_step 8/255/3 at eps 4/255 = 2/3 of eps
    assert at["steps"] == 3 and at["eps"] == 0.1 and abs(at["step_size"] - 0.1 * (8 / 255 / 3) / (4 / 255)) < 1e-12
    assert makes["Natural GELU"].train.objective == "standard"
    edge = makes["EdgeAlign GELU"].train
    assert edge.objective == "edge-align" and dict(edge.objective_options)["temperature"] == 0.5  # Eq. 5.2
    # the thesis halves GradNorm's learning rate (App. B.3.2)
    assert makes["GradNorm ReLU"].train.lr == makes["PGD-3 AT ReLU"].train.lr / 2


def test_full_profile_keeps_the_thesis_length_and_warmup():
    makes = _makes("full")
    spec = makes["GradNorm SiLU"].train
    assert spec.epochs == 50 and spec.limit is None  # Table 4.4: 50 epochs
    assert dict(spec.objective_options)["warmup_epochs"] == 5  # App. B.2.1: 5 epochs
    assert PROFILES["full"].config.seeds == (0, 1, 2)


def test_quick_profile_is_relu_and_gelu_only():
    makes = _makes("quick")
    assert set(makes) == {"GradNorm ReLU", "GradNorm GELU", "PGD-3 AT ReLU", "PGD-3 AT GELU", "Natural GELU",
                          "EdgeAlign GELU"}
    assert all(m.train.epochs == 3 for m in makes.values())
    assert dict(makes["GradNorm GELU"].train.objective_options)["warmup_epochs"] == 1


def test_columns_spell_out_autoattack_and_pgd10():
    cols = {c.name: c for c in columns(PROFILES["cpu"].config)}
    assert cols["aa"].kind == "autoattack" and dict(cols["aa"].settings) == {"version": "standard", "eot": 1}
    assert cols["pgd"].kind == "pgd" and cols["pgd"].settings["steps"] == 10
    assert set(cols["pgd"].settings) == {"steps", "step_size", "random_start", "restarts", "early_stop", "eot"}
    assert cols["clean"].kind == "clean"
    quick = {c.name: c for c in columns(PROFILES["quick"].config)}
    assert quick["aa"].settings["version"] == "rand"


@pytest.mark.parametrize("profile", ["quick", "cpu", "full"])
def test_claims_and_tables_refer_to_planned_variants_and_columns(profile):
    p = plan(PROFILES[profile].config)
    labels = {v.label for v in p.variants}
    cols = {c.name for c in p.columns}
    planned = {(label, c) for label, cs in p.jobs for c in cs}
    assert p.cost and p.figures is not None
    assert p.claims
    for claim in p.claims:
        for side in (claim.a, claim.b):
            assert side.variant in labels
            assert side.column == WORST or (side.variant, side.column) in planned
    for t in p.tables:
        assert set(t.rows) <= labels and {c.column for c in t.cells} <= cols
    headline = [c for c in p.claims if c.rule == "no-worse-than"]
    assert len(headline) == 1
    (h,) = headline
    assert (h.a.variant, h.b.variant, h.a.column, h.threshold) == ("GradNorm GELU", "PGD-3 AT GELU", "aa", 0.05)
    assert "30.00" in h.paper and "32.64" in h.paper  # Table 4.4's GELU row
    smooth = [c for c in p.claims if c.claim.startswith("A smooth activation")]
    assert smooth and all(c.rule == "describe" for c in smooth)


def test_plan_rejects_unknown_activation_and_a_baseline():
    with pytest.raises(InputError):
        plan(study_config("gradnorm-study", "quick", activations=("tanh",)))
    with pytest.raises(InputError):
        plan(PROFILES["quick"].config, "some.safetensors")


def _epoch_seconds(folder):
    """Mean seconds per epoch from a model folder's ``metrics.jsonl`` files, read here directly."""
    epochs = [json.loads(line)["seconds"] for p in sorted(folder.glob("*/metrics.jsonl"))
              for line in p.read_text().splitlines() if line.strip()]
    return sum(epochs) / len(epochs)


def test_a_tiny_gradnorm_study_runs_and_its_models_rebuild(tmp_path):
    # GELU only (the ReLU rows are the plan's, tested above): four models keep it small. The weight
    # decay and the cosine's floor differ from the profile's, so a default that ignored the config
    # could not pass for it.
    cfg = study_config("gradnorm-study", "quick", dataset="digits", eval_n=8, clean_n=40, eval_batch_size=8,
                       activations=("gelu",), epochs=1, train_limit=64, batch_size=32, edge_align=True, pgd_steps=2,
                       at_steps=1, figure_n=4, stats_steps=2, curve_eps=(0.0, 0.1), curve_steps=2,
                       weight_decay=0.02, min_lr=2.5e-4)
    r = run_study("gradnorm-study", tmp_path, cfg)
    assert not r.partial
    store = RecordStore(tmp_path / "records")
    labels = {"GradNorm GELU", "PGD-3 AT GELU", "Natural GELU", "EdgeAlign GELU"}
    assert {rec.variant for rec in store} == labels
    assert {rec.column for rec in store} == {"clean", "pgd", "aa"}
    folder = tmp_path / "models" / "gradnorm-gelu" / "seed0"
    model = load(folder / "model.safetensors").eval()

    # the swap, by what the network computes: the checkpoint's weights in a freshly built resnet-mini
    # give the checkpoint's logits once its activations are GELU, and other logits with its ReLUs
    info = get_info("digits")
    clean_x, clean_y = as_tensors(load_dataset("digits", "test", limit=40, seed=0))

    def rebuilt(kind: str) -> nn.Module:
        net = create_model("resnet-mini", num_classes=info.num_classes, in_channels=info.in_channels,
                           mean=info.mean, std=info.std)
        net = net if kind == "relu" else swap_activations(net, kind)
        net.load_state_dict(model.state_dict())
        return net.eval()
    with torch.no_grad():
        logits = model(clean_x)
        assert torch.allclose(rebuilt("gelu")(clean_x), logits, atol=1e-5)
        assert not torch.allclose(rebuilt("relu")(clean_x), logits, atol=1e-3)
        # the clean record holds this checkpoint's own predictions on the clean images
        right = (logits.argmax(1) == clean_y).float().tolist()
    assert list(store.get("GradNorm GELU", 0, "clean").per_image) == right

    # the TrainSpec's train_options reached the Trainer: AdamW with this config's weight decay, the
    # cosine's floor at min_lr / GradNorm's peak rate, a warm-up of ceil(1 epoch x 0.1) = 1 epoch
    trained = read_header(folder / "model.safetensors")["train_config"]
    assert trained["optimizer"] == "adamw" and trained["weight_decay"] == 0.02
    assert trained["schedule"] == "cosine" and trained["lr"] == cfg.gn_lr
    assert trained["schedule_options"]["min_factor"] == pytest.approx(2.5e-4 / 0.625e-3)
    assert trained["schedule_options"]["warmup_epochs"] == 1
    recipe = json.loads((folder / "variant.json").read_text())
    assert recipe["conversions"] == [["activations", [["kind", "gelu"]]]] and recipe["train"]["objective"] == "gradnorm"

    # the analyses: their clean accuracy is the checkpoint's on the first figure_n attacked images
    assert "Table 4.4 analogue" in r.report and "## Cost" in r.report
    assert "Table 4.1 analogue" in r.report and "Table 5.1 analogue" in r.report
    assert (tmp_path / "figures" / "gradients.png").exists() and (tmp_path / "figures" / "robust-accuracy.png").exists()
    numbers = json.loads((tmp_path / "figures" / "gradnorm.json").read_text())
    eval_x, eval_y = as_tensors(load_dataset("digits", "test", limit=8, seed=0), 4)
    with torch.no_grad():
        expected = (model(eval_x).argmax(1) == eval_y).float().mean().item()
    assert numbers["images"] == 4 and numbers["stats"]["GradNorm GELU"]["clean_accuracy"] == pytest.approx(expected)
    assert set(numbers["edges"]) == labels and numbers["grid"] == [
        "Natural GELU", "PGD-3 AT GELU", "GradNorm GELU", "EdgeAlign GELU"]

    # the findings state what the files hold, recomputed here from them
    lines = {line.split("**")[1]: line for line in r.report.splitlines() if line.startswith("- **")}
    gn, at = (_epoch_seconds(tmp_path / "models" / slug) for slug in ("gradnorm-gelu", "pgd-3-at-gelu"))
    faster = lines["GradNorm trains faster than PGD-3 AT"]
    assert f"**: {'yes' if gn < at else 'no'} here" in faster and f"GELU {gn:.1f} vs {at:.1f} s" in faster
    edge, nat = numbers["edges"]["EdgeAlign GELU"], numbers["edges"]["Natural GELU"]
    gain = edge["saliency_mean"] - nat["saliency_mean"]
    half = NormalDist().inv_cdf(0.975) * ((edge["saliency_std"] ** 2 + nat["saliency_std"] ** 2) / 4) ** 0.5
    word = "yes" if gain > half else "no, it lowered it" if gain < -half else "not distinguishable from no change"
    assert f"**: {word} here, " in lines["EdgeAlign raises the saliency-edge correlation"]
    assert f"a gain of {gain:+.3f} (±{half:.3f} at 95%, unpaired, over 4 images)" in lines[
        "EdgeAlign raises the saliency-edge correlation"]
    assert any(c.claim.claim.startswith("With GELU, GradNorm reaches") for c in r.claims)


def test_every_model_trains_with_the_thesis_adamw_and_cosine_warmup():
    """App. B: AdamW, weight decay 0.05, peak lr 1.25e-3 (0.625e-3 for GradNorm), cosine to 1e-5
    after a warm-up of 5 of 50 epochs."""
    from robustlab.experiments.gradnorm_study import PROFILES as P
    from robustlab.experiments.gradnorm_study import plan as make_plan

    cfg = P["full"].config
    for v in make_plan(cfg).variants:
        spec = v.make.train
        opts = dict(spec.train_options)
        assert spec.schedule == "cosine" and opts["optimizer"] == "adamw" and opts["weight_decay"] == 0.05
        sched = dict(opts["schedule_options"])
        assert sched["warmup_epochs"] == 5 and abs(sched["min_factor"] * spec.lr - 1e-5) < 1e-12
        assert spec.lr == (0.625e-3 if v.label.startswith(("GradNorm", "EdgeAlign")) else 1.25e-3)


@pytest.mark.parametrize(("edge", "word"), [
    (0.10, "yes here"),  # gain 0.13 > z95 * 0.03 = 1.95996 * 0.03 = 0.0588
    (-0.015, "not distinguishable from no change here"),  # gain 0.019, inside +-0.0588
    (-0.20, "no, it lowered it here"),  # gain -0.17
])
def test_edge_align_gain_is_judged_against_its_spread(tmp_path, edge, word):
    # both per-image spreads 0.12 over 32 images: se = sqrt(2 * 0.12^2 / 32) = 0.03 (worked by hand)
    from robustlab.experiments.study import FigureContext

    cfg = study_config("gradnorm-study", "quick", activations=("gelu",))
    spread = {"saliency_std": 0.12, "loss_gradient_mean": 0.0, "loss_gradient_std": 0.1}
    numbers = {"seed": 0, "images": 32, "stats": {}, "curves": {}, "grid": [],
               "edges": {"EdgeAlign GELU": {"saliency_mean": edge, **spread},
                         "Natural GELU": {"saliency_mean": -0.03, **spread}}}
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / gradnorm_study.FIGURES_FILE).write_text(json.dumps(numbers))
    text = gradnorm_study.figures(cfg, FigureContext(tmp_path, lambda name, seed: nn.Identity(), None))  # type: ignore[arg-type]
    line = next(ln for ln in text.splitlines() if "EdgeAlign raises" in ln)
    assert f"**: {word}," in line and "(±0.059 at 95%, unpaired, over 32 images)" in line

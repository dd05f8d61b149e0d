import pytest
from typer.testing import CliRunner

from robustlab.cli import app

runner = CliRunner()


def test_info_lists_registries():
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0, r.output
    for word in ("fashion-mnist", "resnet-mini", "standard", "cyclic", "timm:<name>"):
        assert word in r.output


def test_train_then_evaluate(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--dataset", "digits", "--model", "resnet-mini", "--epochs", "1",
                            "--batch-size", "64", "--limit", "256", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").exists() and (out / "metrics.jsonl").exists()
    r = runner.invoke(app, ["evaluate", str(out / "model.safetensors"), "--n", "100", "--device", "cpu",
                            "--ledger", str(tmp_path / "ledger.sqlite")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ledger.sqlite").exists()
    assert "clean accuracy" in r.output and "digits" in r.output


def test_unknown_dataset_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["train", "--dataset", "mnist-xl", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "unknown dataset 'mnist-xl'" in r.output and "fashion-mnist" in r.output


def test_evaluate_refuses_a_pickle(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04N.")
    r = runner.invoke(app, ["evaluate", str(bad), "--device", "cpu"])
    assert r.exit_code == 2 and "never unpickles" in r.output


def test_convert_writes_a_loadable_converted_model(tmp_path):
    from torch import nn

    import robustlab
    from robustlab.defenses import Downsampled, StochasticDownsample

    src = tmp_path / "base.safetensors"
    robustlab.save(robustlab.create_model("resnet-mini", num_classes=10, in_channels=1, seed=0), src,
                   dataset="fashion-mnist")
    out = tmp_path / "sd.safetensors"
    r = runner.invoke(app, ["convert", str(src), "--out", str(out), "--method", "sd", "--spp", "4"])
    assert r.exit_code == 0, r.output
    model = robustlab.load(out)
    layers = [m for m in model.modules() if isinstance(m, StochasticDownsample)]
    assert layers and all(m.spp == 4 for m in layers)
    assert sum(isinstance(m, Downsampled) for m in model.modules()) == len(layers)
    r = runner.invoke(app, ["convert", str(src), "--out", str(tmp_path / "x.safetensors"), "--method", "maxblur"])
    assert r.exit_code == 2 and "unknown downsampling method 'maxblur'; --method takes sd, sd+addnoise, addnoise" in r.output
    assert not (tmp_path / "x.safetensors").exists()
    zhang = tmp_path / "zhang.safetensors"
    r = runner.invoke(app, ["convert", str(src), "--out", str(zhang), "--method", "blurpool",
                            "--placement", "after-activation"])
    assert r.exit_code == 0, r.output
    block = robustlab.load(zhang).model.layer2[0]
    assert isinstance(block.conv1.op, nn.Sequential) and isinstance(block.bn1, nn.Identity)
    shared = tmp_path / "shared.safetensors"
    r = runner.invoke(app, ["convert", str(src), "--out", str(shared), "--shortcut-jitter", "shared"])
    assert r.exit_code == 0, r.output
    block = robustlab.load(shared).model.layer2[0]
    assert block.conv1.down.jitter_link is block.shortcut[0].down.jitter_link is not None
    r = runner.invoke(app, ["convert", str(src), "--out", str(tmp_path / "y.safetensors"), "--shortcut-jitter", "x"])
    assert r.exit_code == 2 and "--shortcut-jitter must be independent or shared, got 'x'" in r.output
    r = runner.invoke(app, ["convert", str(src), "--out", str(tmp_path / "z.safetensors"), "--method", "avgpool",
                            "--shortcut-jitter", "shared"])
    assert r.exit_code == 2 and "--shortcut-jitter shared applies to --method sd, sd+addnoise, not avgpool" in r.output


def test_train_refuses_an_ema_decay_of_one_in_one_line(tmp_path):
    # typer's range is [0, 1]; a decay of 1 would freeze the average, 0 would be no average
    for value in ("1", "0"):
        r = runner.invoke(app, ["train", "--dataset", "digits", "--epochs", "1", "--ema", value,
                                "--out", str(tmp_path / value)])
        assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == (
            f"error: --ema must lie strictly between 0 and 1 (e.g. 0.999), got {float(value)}"), r.output
        assert not (tmp_path / value).exists()


def test_run_list_names_every_study_with_its_profiles_and_time():
    r = runner.invoke(app, ["run", "--list"], terminal_width=200)
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if "sd-study" in line]
    assert [next(p for p in ("quick", "cpu", "full") if f" {p} " in line) for line in rows] == ["quick", "cpu", "full"]
    assert "about 2.5 min on 2 CPU" in r.output and "hours on one GPU" in r.output
    r = runner.invoke(app, ["run"])
    assert r.exit_code == 2 and r.output.strip() == (
        "error: name a study to run: arena, dcs-study, gradnorm-study, sd-study, sparse-study, strides-study "
        "(robustlab run --list)")


def test_run_rejects_unknown_recipe_and_profile(tmp_path):
    r = runner.invoke(app, ["run", "sd-studdy", "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and "unknown recipe 'sd-studdy'; known recipes: arena, dcs-study, gradnorm-study, sd-study," in r.output
    r = runner.invoke(app, ["run", "sd-study", "--profile", "huge", "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "known profiles: quick, cpu, full" in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_takes_schedule_options_and_rejects_bad_ones(tmp_path):
    base = ["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--limit", "128",
            "--device", "cpu"]
    r = runner.invoke(app, [*base, "--schedule", "multistep", "--milestones", "1", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    import json

    lrs = [json.loads(line)["lr"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 2 and all(abs(lr - 0.01) < 1e-9 for lr in lrs)  # 0.1, dropped 10x at epoch 1
    r = runner.invoke(app, [*base, "--schedule", "multistep", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "multistep schedule needs milestones" in r.output
    r = runner.invoke(app, [*base, "--schedule", "multistep", "--milestones", "x", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--milestones takes comma-separated epochs" in r.output
    assert not (tmp_path / "b" / "model.safetensors").exists()


def test_unknown_model_and_corrupted_checkpoint_are_clear_errors(tmp_path):
    r = runner.invoke(app, ["train", "--dataset", "digits", "--model", "resnet-huge", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown model 'resnet-huge'" in r.output and "resnet-mini" in r.output
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    r = runner.invoke(app, ["evaluate", str(bad), "--device", "cpu"])
    assert r.exit_code == 2 and str(bad.name) in r.output


def test_run_list_fits_a_terminal_one_line_per_study_and_profile():
    from robustlab.experiments import STUDIES

    r = runner.invoke(app, ["run", "--list"], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    for name in STUDIES.names():
        for profile in STUDIES.get(name).profiles:
            assert sum(line.split()[:2] == [name, profile] for line in lines) == 1, (name, profile)
    assert "--describe" in lines[-1]


def test_run_list_cuts_a_long_time_to_the_width():
    from types import SimpleNamespace

    from robustlab.cli.run import list_lines

    long = SimpleNamespace(time="about " + "very " * 40 + "long (measured on 2 cores)", about="")
    lines = list_lines([SimpleNamespace(name="x-study", profiles={"quick": long})])
    assert all(len(line) <= 100 for line in lines) and lines[1].endswith("...")
    assert "measured" not in lines[1]  # the remark in parentheses is for --describe


def test_run_describe_tells_the_paper_profiles_and_settings():
    from dataclasses import fields

    from robustlab.experiments import STUDIES

    study = STUDIES.get("sd-study")
    r = runner.invoke(app, ["run", "sd-study", "--describe"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert text.startswith(f"sd-study: {study.title} paper: {study.paper}")
    for profile in study.profiles.values():
        assert profile.time in text and " ".join(profile.about.split()) in text
    config = study.profiles["quick"].config
    for field in fields(config):
        if field.name != "profile":
            assert f" {field.name}: " in text, field.name
    assert "seeds: quick = 0; cpu = 0, 1, 2" in text and "dataset: fashion-mnist " in text


def test_run_describe_refuses_an_unknown_study_in_one_line():
    r = runner.invoke(app, ["run", "sd-studdy", "--describe"])
    assert r.exit_code == 2 and r.output.strip() == (
        "error: unknown recipe 'sd-studdy'; known recipes: arena, dcs-study, gradnorm-study, sd-study, sparse-study, "
        "strides-study")
    r = runner.invoke(app, ["run", "--describe"])
    assert r.exit_code == 2 and r.output.strip() == (
        "error: name a study to describe: arena, dcs-study, gradnorm-study, sd-study, sparse-study, strides-study "
        "(robustlab run --list)")


def test_convert_has_a_flag_for_every_option_a_method_declares():
    import typer

    from robustlab.defenses.downsampling import METHODS, method_options

    params = {p.name for p in typer.main.get_command(app).commands["convert"].params}
    assert {option for method in METHODS for option in method_options(method)} <= params


@pytest.mark.parametrize("choice, message", [
    ("sd-study", "--study takes NAME=PROFILE (e.g. sd-study=none), got 'sd-study'"),
    ("nope=none", "--study: unknown demo study 'nope'; the demo's studies: sd-study, strides-study, sparse-study, "
                  "dcs-study, gradnorm-study, arena"),
    ("sd-study=huge", "unknown sd-study profile 'huge'; known profiles: quick, cpu, full"),
])
def test_demo_study_choices_come_from_the_registry_and_fail_before_training(tmp_path, choice, message):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--study", choice])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == f"error: {message}", r.output
    assert not (out / "standard").exists()

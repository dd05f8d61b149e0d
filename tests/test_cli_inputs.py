"""The CLI's answers to inputs it must refuse or adjust: each is one line in the CLI's own words."""

import pytest
import typer
from typer.testing import CliRunner

import robustlab
from robustlab.cli import app
from robustlab.cli.convert import convert
from robustlab.cli.errors import cli_words, flags_of
from robustlab.cli.options import parse_threat
from robustlab.cli.train import train
from robustlab.core import ThreatModel
from robustlab.data import DATASETS, get_info, l2_default, load_dataset
from robustlab.defenses.downsampling import METHODS
from robustlab.evaluate import BATTERIES, Ledger
from robustlab.models import MODELS
from robustlab.train import OBJECTIVES, OPTIMIZERS, SCHEDULES

runner = CliRunner()


def one_error_line(r) -> str:
    """The output of a refused command: exit code 2 and a single ``error:`` line, no traceback."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


# --- item 7: the checkpoint's dataset ----------------------------------------------------------


def test_evaluate_refuses_another_dataset_than_the_checkpoint_records(fashion_checkpoint):
    base = ["evaluate", str(fashion_checkpoint), "--battery", "none", "--n", "10", "--device", "cpu"]
    line = one_error_line(runner.invoke(app, [*base, "--dataset", "digits"]))
    assert "fashion-mnist" in line and "digits" in line and "--force-dataset" in line
    r = runner.invoke(app, [*base, "--dataset", "digits", "--force-dataset"])
    assert r.exit_code == 0, r.output
    assert "digits" in r.output and "clean accuracy" in r.output
    # forced or not, a network for 1-channel images cannot take CIFAR's 3 channels
    line = one_error_line(runner.invoke(app, [*base, "--dataset", "cifar10", "--force-dataset"]))
    assert "1-channel" in line and "cifar10 has 3" in line


# --- item 10: eps and norm ---------------------------------------------------------------------


def test_a_linf_eps_above_one_is_refused_with_the_likely_fraction(digits_checkpoint, tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    line = one_error_line(runner.invoke(app, ["evaluate", str(digits_checkpoint), "--eps", "8", "--n", "4",
                                              "--device", "cpu", "--ledger", str(ledger)]))
    assert "did you mean 8/255?" in line and "linf" in line
    assert not ledger.exists() and not (tmp_path / "eval-state").exists()
    line = one_error_line(runner.invoke(app, ["run", "sd-study", "--eps", "4", "--out", str(tmp_path / "study")]))
    assert "did you mean 4/255?" in line
    assert not (tmp_path / "study").exists()
    # the same number is a fine L2 radius
    assert parse_threat(get_info("digits"), "l2", "8") == ThreatModel("l2", 8.0)
    line = one_error_line(runner.invoke(app, ["evaluate", str(digits_checkpoint), "--norm", "l3",
                                              "--device", "cpu", "--ledger", str(ledger)]))
    assert "--norm 'l3'" in line and "linf or l2" in line


def test_norm_l2_without_eps_gets_the_datasets_l2_default(digits_checkpoint, tmp_path):
    assert parse_threat(get_info("fashion-mnist"), "l2", None) == ThreatModel("l2", 1.5)
    assert parse_threat(get_info("cifar10"), "l2", None) == ThreatModel("l2", 0.5)
    assert parse_threat(get_info("fashion-mnist"), None, None) == ThreatModel("linf", 0.1)
    assert parse_threat(get_info("fashion-mnist"), "linf", "8/255") == ThreatModel("linf", 8 / 255)
    # no published radius for 8x8 digits: Fashion-MNIST's per-pixel size, 1.5 / 28 * 8
    assert l2_default(get_info("digits")) == pytest.approx(1.5 / 28 * 8, abs=1e-3)
    ledger = tmp_path / "ledger.sqlite"
    r = runner.invoke(app, ["evaluate", str(digits_checkpoint), "--norm", "l2", "--n", "4", "--device", "cpu",
                            "--ledger", str(ledger)])
    assert r.exit_code == 0, r.output
    (row,) = Ledger(ledger).rows()
    assert row.attacks[0]["threat"] == {"norm": "l2", "eps": l2_default(get_info("digits"))}


# --- item 12: paths and words ------------------------------------------------------------------


def test_outputs_that_cannot_be_written_are_one_line(digits_checkpoint, tmp_path, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    ckpt = str(digits_checkpoint)
    line = one_error_line(runner.invoke(app, ["train", "--dataset", "digits", "--out", str(a_file)]))
    assert f"--out {a_file} is a file, not a folder" in line
    line = one_error_line(runner.invoke(app, ["train", "--dataset", "digits", "--out", str(a_file / "run")]))
    assert f"{a_file} is a file, not a folder" in line
    line = one_error_line(runner.invoke(app, ["evaluate", ckpt, "--device", "cpu", "--ledger",
                                              str(a_file / "ledger.sqlite")]))
    assert line.startswith("error: --ledger")
    line = one_error_line(runner.invoke(app, ["evaluate", ckpt, "--device", "cpu", "--ledger",
                                              str(tmp_path / "l.sqlite"), "--state-dir", str(a_file)]))
    assert line.startswith("error: --state-dir")
    line = one_error_line(runner.invoke(app, ["convert", ckpt, "--out", str(tmp_path)]))
    assert "--out must end in .safetensors" in line
    line = one_error_line(runner.invoke(app, ["convert", ckpt, "--out", str(a_file / "m.safetensors")]))
    assert line.startswith("error: --out")
    # a folder without write permission (faked: the tests may run as root, who writes anywhere)
    monkeypatch.setattr("robustlab.cli.options.os.access", lambda *a, **k: False)
    line = one_error_line(runner.invoke(app, ["train", "--dataset", "digits", "--out", str(tmp_path / "new")]))
    assert "no write permission" in line and str(tmp_path) in line
    assert not (tmp_path / "new").exists()


def test_errors_speak_in_flags_not_python_keywords(fashion_checkpoint, tmp_path):
    base = ["train", "--dataset", "digits", "--epochs", "1", "--limit", "32", "--device", "cpu"]
    line = one_error_line(runner.invoke(app, [*base, "--schedule", "multistep", "--out", str(tmp_path / "a")]))
    assert "--milestones" in line and "milestones=" not in line
    line = one_error_line(runner.invoke(app, [*base, "--milestones", "1", "--out", str(tmp_path / "b")]))
    assert line == "error: --milestones applies to --schedule multistep, not onecycle"
    line = one_error_line(runner.invoke(app, [*base, "--warmup-epochs", "1", "--out", str(tmp_path / "b")]))
    assert "--warmup-epochs applies to --schedule" in line and "warmup_epochs" not in line
    line = one_error_line(runner.invoke(app, [*base, "--objective", "pgd-at", "--label-smoothing", "0.1",
                                              "--out", str(tmp_path / "b")]))
    assert "--label-smoothing applies to --objective standard" in line
    line = one_error_line(runner.invoke(app, ["convert", str(fashion_checkpoint), "--out",
                                              str(tmp_path / "x.safetensors"), "--p", "0.3"]))
    assert line.startswith("error: --p does not apply to --method sd; it takes --spp")
    assert "unexpected keyword" not in line and "_sd()" not in line
    flat = tmp_path / "flat.safetensors"
    robustlab.save(robustlab.create_model("resnet-mini", num_classes=10, in_channels=1, strides=(1, 1, 1),
                                          seed=0), flat, dataset="digits")
    line = one_error_line(runner.invoke(app, ["convert", str(flat), "--out", str(tmp_path / "y.safetensors")]))
    assert "--include-pooling" in line and "include_pooling" not in line
    line = one_error_line(runner.invoke(app, ["evaluate", str(fashion_checkpoint), "--battery", "nope"]))
    assert "known batteries: " in line and "batterys" not in line


@pytest.mark.parametrize(("message", "command", "expected"), [
    ("the multistep schedule needs milestones (epochs), e.g. milestones=(100, 105)", train,
     "the multistep schedule needs milestones (epochs), e.g. --milestones 100,105"),
    ("X has no strided convolution (pass include_pooling=True to convert strided pooling)", convert,
     "X has no strided convolution (pass --include-pooling to convert strided pooling)"),
    ("cifar10 not found: pass root= (or set ROBUSTLAB_DATA), or pass download=True to fetch it", train,
     "cifar10 not found: pass --root (or set ROBUSTLAB_DATA), or pass --download to fetch it"),
    ("bad option for downsampling method 'sd': _sd() got an unexpected keyword argument 'p'", convert,
     "bad option for downsampling method 'sd': does not take --p"),
    ("cannot resume: another training set; use another output folder (or resume=False) to start afresh", train,
     "cannot resume: another training set; use another output folder (or --no-resume) to start afresh"),
    ("limit must be None or an int >= 1, got 0", train, "--limit must be an int >= 1, got 0"),
    ("loss became nan; lower the learning rate or enable gradient clipping (grad_clip)", train,
     "loss became nan; lower the learning rate or enable gradient clipping (--grad-clip)"),
    ("unknown battery 'x'; known batterys: full, quick", train, "unknown battery 'x'; known batteries: full, quick"),
])
def test_library_keywords_are_translated_into_flags(message, command, expected):
    assert cli_words(message, flags_of(command)) == expected


def test_a_model_that_cannot_take_the_image_size_is_refused_before_training(tmp_path):
    line = one_error_line(runner.invoke(app, ["train", "--dataset", "digits", "--model", "vgg16", "--epochs", "1",
                                              "--device", "cpu", "--out", str(tmp_path / "vgg")]))
    assert "--model vgg16 cannot take 8x8 digits images" in line
    assert not (tmp_path / "vgg" / "model.safetensors").exists()


def test_usage_errors_are_one_line_too(digits_checkpoint):
    line = one_error_line(runner.invoke(app, ["evaluate", str(digits_checkpoint), "--n", "0"]))
    assert "'--n'" in line and "--help" in line
    line = one_error_line(runner.invoke(app, ["evaluate", str(digits_checkpoint), "--frobnicate"]))
    assert "--frobnicate" in line
    line = one_error_line(runner.invoke(app, ["evaluate", str(digits_checkpoint), "--dataset", "[/x]"]))
    assert "unknown dataset '[/x]'" in line  # printed as text, not read as rich markup


# --- item 15: inputs larger than the data ------------------------------------------------------


def test_n_and_limit_above_the_data_say_what_they_did(digits_checkpoint, tmp_path):
    tests, trains = len(load_dataset("digits", "test")), len(load_dataset("digits", "train"))
    r = runner.invoke(app, ["evaluate", str(digits_checkpoint), "--n", "20000", "--battery", "none",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"--n 20000 > {tests} test images: evaluating all {tests}" in r.output
    assert f"│ {tests} " in r.output
    r = runner.invoke(app, ["train", "--dataset", "digits", "--limit", "5000", "--epochs", "1", "--batch-size",
                            "1024", "--device", "cpu", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    assert f"--limit 5000 > {trains} training images: training on all {trains}" in r.output


# --- item 16: help ------------------------------------------------------------------------------


CHOICES = {
    "dataset": DATASETS.names(), "model": MODELS.names(), "objective": OBJECTIVES.names(),
    "optimizer": OPTIMIZERS.names(), "schedule": SCHEDULES.names(), "battery": BATTERIES.names(),
    "method": METHODS, "norm": ("linf", "l2"), "device": ("cpu", "cuda", "auto"),
}


def test_every_help_has_an_example_and_every_option_a_description_with_its_choices():
    group = typer.main.get_command(app)
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "Example: robustlab" in r.output
    assert set(group.commands) == {"info", "train", "evaluate", "leaderboard", "audit", "convert", "run", "demo",
                                   "analyze"}
    commands = [((name,), command) for name, command in group.commands.items()]
    for path, command in commands:
        if hasattr(command, "commands"):  # a command group: its subcommands are checked too
            commands += [((*path, sub), subcommand) for sub, subcommand in command.commands.items()]
    assert ("analyze", "gradients") in [path for path, _ in commands]
    for path, command in commands:
        name = " ".join(path)
        r = runner.invoke(app, [*path, "--help"])
        assert r.exit_code == 0, r.output
        assert f"Example: robustlab {name}" in " ".join(r.output.split()), name
        for param in command.params:
            if param.name == "help":
                continue
            text = getattr(param, "help", None)
            assert text, f"{name} {param.name} has no description"
            for choice in CHOICES.get(param.name or "", ()):
                assert choice in text, f"{name} --{param.name} does not list {choice!r}"

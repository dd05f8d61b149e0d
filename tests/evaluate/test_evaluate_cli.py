import csv
import json

import pytest
from typer.testing import CliRunner

import robustlab
from robustlab.cli import app
from robustlab.evaluate import Ledger

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1, seed=0)
    robustlab.save(model, path, dataset="digits")
    return path


def test_evaluate_writes_the_ledger_and_leaderboard_reads_it(tmp_path, checkpoint):
    ledger = tmp_path / "ledger.sqlite"
    args = ["evaluate", str(checkpoint), "--n", "12", "--device", "cpu", "--ledger", str(ledger),
            "--battery", "quick", "--eps", "8/255", "--repeats", "2", "--batch-size", "8",
            "--state-dir", str(tmp_path / "state")]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "clean accuracy" in r.output and "worst case" in r.output and "after pgd" in r.output
    assert "±" in r.output and "ledger row 1" in r.output
    (row,) = Ledger(ledger).rows()
    assert row.model_name == "tiny" and row.dataset == "digits" and row.n == 12
    assert row.battery == "quick" and row.repeats == 2 and row.extra["checkpoint"] == str(checkpoint)
    assert row.attacks[0]["threat"] == {"norm": "linf", "eps": 8 / 255}
    assert any((tmp_path / "state").iterdir())

    r = runner.invoke(app, ["evaluate", str(checkpoint), "--n", "12", "--device", "cpu", "--ledger",
                            str(ledger), "--battery", "quick", "--norm", "l2", "--eps", "0.5"])
    assert r.exit_code == 0, r.output
    assert Ledger(ledger).rows()[1].attacks[0]["threat"] == {"norm": "l2", "eps": 0.5}

    csv_path, json_path = tmp_path / "lb.csv", tmp_path / "lb.json"
    r = runner.invoke(app, ["leaderboard", "--ledger", str(ledger), "--csv", str(csv_path),
                            "--json", str(json_path)])
    assert r.exit_code == 0, r.output
    assert "tiny" in r.output and "digits" in r.output and "quick" in r.output
    with open(csv_path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert len(json.loads(json_path.read_text())) == 2

    r = runner.invoke(app, ["leaderboard", "--ledger", str(ledger), "--dataset", "cifar10"])
    assert r.exit_code == 0 and "0 rows" in r.output


def test_battery_none_keeps_the_clean_only_evaluation(tmp_path, checkpoint):
    ledger = tmp_path / "ledger.sqlite"
    r = runner.invoke(app, ["evaluate", str(checkpoint), "--n", "10", "--device", "cpu",
                            "--battery", "none", "--ledger", str(ledger)])
    assert r.exit_code == 0, r.output
    assert "clean accuracy (%)" in r.output and "digits" in r.output
    assert not ledger.exists()


def test_cli_errors_are_clear(tmp_path, checkpoint):
    r = runner.invoke(app, ["evaluate", str(checkpoint), "--n", "4", "--device", "cpu",
                            "--battery", "strongest", "--ledger", str(tmp_path / "l.sqlite")])
    assert r.exit_code == 2 and "unknown battery 'strongest'" in r.output and "standard" in r.output
    r = runner.invoke(app, ["evaluate", str(checkpoint), "--n", "4", "--device", "cpu",
                            "--eps", "eight", "--ledger", str(tmp_path / "l.sqlite")])
    assert r.exit_code == 2 and "--eps must be a number" in r.output
    r = runner.invoke(app, ["leaderboard", "--ledger", str(tmp_path / "missing.sqlite")])
    assert r.exit_code == 2 and "no ledger at" in r.output


def test_full_battery_with_a_surrogate_adds_a_transfer_attack(tmp_path, checkpoint):
    ledger = tmp_path / "ledger.sqlite"
    r = runner.invoke(app, ["evaluate", str(checkpoint), "--n", "12", "--device", "cpu",
                            "--battery", "full", "--surrogate", str(checkpoint),
                            "--ledger", str(ledger)])
    assert r.exit_code == 0, r.output
    (row,) = Ledger(ledger).rows()
    assert any("transfer" in a["name"] for a in row.attacks), [a["name"] for a in row.attacks]
    r = runner.invoke(app, ["evaluate", str(checkpoint), "--n", "12", "--device", "cpu",
                            "--battery", "quick", "--surrogate", str(checkpoint),
                            "--ledger", str(ledger)])
    assert r.exit_code == 2 and "--battery full" in r.output

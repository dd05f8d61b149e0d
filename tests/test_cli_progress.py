"""Long work from the CLI: progress without a terminal, Ctrl-C with a way back, study reports."""

import json

import pytest
from typer.testing import CliRunner

import robustlab
import robustlab.evaluate
from robustlab.cli import app
from robustlab.cli.progress import LineProgress
from robustlab.evaluate import Ledger

runner = CliRunner()  # its output is not a terminal: the CLI logs lines instead of live bars


def test_without_a_terminal_training_logs_progress_lines_with_an_eta(tmp_path):
    r = runner.invoke(app, ["train", "--dataset", "digits", "--limit", "96", "--batch-size", "32", "--epochs", "2",
                            "--device", "cpu", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "training (steps): 1/6 (17%), epoch 1/2, loss " in r.output
    assert "training (steps): 3/6 (50%), epoch 1/2 done: loss " in r.output
    assert "training (steps): 6/6 (100%), epoch 2/2 done" in r.output
    assert r.output.count("ETA") >= 3 and "━" not in r.output  # lines, no live bar


def test_without_a_terminal_the_battery_logs_progress_lines_with_an_eta(digits_checkpoint, tmp_path):
    r = runner.invoke(app, ["evaluate", str(digits_checkpoint), "--n", "12", "--batch-size", "4",
                            "--device", "cpu", "--ledger", str(tmp_path / "ledger.sqlite")])
    assert r.exit_code == 0, r.output
    assert "attacking (batches): 1/3 (33%)" in r.output and "attacking (batches): 3/3 (100%)" in r.output
    progress = [line for line in r.output.splitlines() if "attacking" in line]
    assert all("ETA" in line and "━" not in line for line in progress)  # lines, no live bar


def test_line_progress_is_throttled(capsys):
    lines = LineProgress("work")
    lines.interval = 3600.0
    lines.begin(0)
    for done in range(1, 11):
        lines.update(done, 10)
    out = capsys.readouterr().out
    assert out.count("work: ") == 2 and "work: 1/10 (10%)" in out and "work: 10/10 (100%)" in out


def _interrupt_after(batches: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make run_battery raise KeyboardInterrupt (Ctrl-C) once ``batches`` batches are saved."""
    real = robustlab.evaluate.run_battery

    def run_battery(*args, progress=None, **kwargs):
        def interrupting(event):
            progress(event)
            if event.kind == "batch" and event.completed == batches:
                raise KeyboardInterrupt

        return real(*args, progress=interrupting, **kwargs)

    monkeypatch.setattr(robustlab.evaluate, "run_battery", run_battery)


def test_ctrl_c_during_evaluate_says_what_was_saved_and_how_to_resume(
    digits_checkpoint, tmp_path, monkeypatch
):
    ledger = tmp_path / "ledger.sqlite"
    args = ["evaluate", str(digits_checkpoint), "--n", "16", "--batch-size", "4", "--device", "cpu",
            "--ledger", str(ledger)]
    with monkeypatch.context() as m:
        _interrupt_after(2, m)
        r = runner.invoke(app, args)
    assert r.exit_code == 130, r.output
    last = r.output.strip().splitlines()[-1]
    state = tmp_path / "eval-state"  # kept by default beside the ledger
    assert last == (f"error: interrupted: 2 of 4 batches finished and saved under {state}; to resume, "
                    f"rerun: robustlab {' '.join(args)}")
    assert any(state.iterdir()) and not ledger.exists()

    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "resuming: 2 of 4 batches were saved by an earlier run" in r.output
    assert "attacking (batches): 3/4" in r.output and "attacking (batches): 1/4" not in r.output
    assert len(Ledger(ledger).rows()) == 1


def test_ctrl_c_without_state_says_nothing_was_saved(digits_checkpoint, tmp_path, monkeypatch):
    _interrupt_after(1, monkeypatch)
    r = runner.invoke(app, ["evaluate", str(digits_checkpoint), "--n", "8", "--batch-size", "4",
                            "--device", "cpu", "--ledger", str(tmp_path / "ledger.sqlite"), "--no-state"])
    assert r.exit_code == 130, r.output
    assert "1 of 2 batches finished, none saved (--no-state)" in r.output
    assert not (tmp_path / "eval-state").exists()


def test_ctrl_c_during_training_names_the_saved_epoch_and_the_command(tmp_path, monkeypatch):
    from robustlab.train import Trainer

    real_fit = Trainer.fit

    def fit(self, *args, **kwargs):
        self.config = type(self.config)(**{**self.config.to_dict(), "epochs": 1})
        real_fit(self, *args, **kwargs)  # one epoch finished and saved, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", fit)
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--limit", "32", "--batch-size", "32", "--epochs", "3",
            "--device", "cpu", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines()[-1] == (
        f"error: interrupted: the last finished epoch is saved in {out / 'last.safetensors'}; to resume, "
        f"rerun: robustlab {' '.join(args)}")


# --- run --report-only --------------------------------------------------------------------------


@pytest.mark.slow
def test_report_only_on_a_finished_study_is_not_partial_and_keeps_config_json(tmp_path, monkeypatch):
    import robustlab.experiments as experiments

    tiny = experiments.study_config(
        "sd-study", "quick", dataset="digits", baseline_epochs=1, baseline_limit=64, finetune_limit=32,
        finetune_epochs=1, batch_size=32, eval_n=8, clean_n=16, eval_batch_size=8, pgd_steps=1, square_queries=2,
        eot_draws=(2,), corruption_n=4, table1=("Baseline",), noise_sweep=(), spp_sweep=(),
        transfer_from_baseline=(), seeds=(0,), eps=0.05)
    monkeypatch.setattr(experiments, "study_config", lambda name, profile, **overrides: tiny)
    out = tmp_path / "study"
    r = runner.invoke(app, ["run", "sd-study", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    config = out / "config.json"
    before = (config.read_bytes(), config.stat().st_mtime_ns)

    r = runner.invoke(app, ["run", "sd-study", "--out", str(out), "--device", "cpu", "--report-only"])
    assert r.exit_code == 0, r.output
    assert f"report written from {out} (complete)" in " ".join(r.output.split())
    assert "Partial report" not in (out / "report.md").read_text()
    assert json.loads((out / "results.json").read_text())["facts"]["partial"] is False
    assert (config.read_bytes(), config.stat().st_mtime_ns) == before

    # take one finished record away: now the report is partial, and says so
    (out / "records" / "baseline" / "seed0" / "square.json").unlink()
    r = runner.invoke(app, ["run", "sd-study", "--out", str(out), "--device", "cpu", "--report-only"])
    assert r.exit_code == 0, r.output
    assert "(partial: some cells are not computed yet)" in " ".join(r.output.split())
    assert "Partial report" in (out / "report.md").read_text()
    assert (config.read_bytes(), config.stat().st_mtime_ns) == before


def test_train_lines_count_each_fit_of_a_reused_callback_from_its_own_start(monkeypatch):
    # a study passes one callback to every Trainer it runs: the second fit (4 epochs x 5 steps)
    # must count 1/20, 2/20, ... of its own steps, not the first fit's total and clock
    import io
    import types

    from rich.console import Console

    import robustlab.cli.progress as progress

    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=200))
    lines = progress.TrainLines()
    first = types.SimpleNamespace(config=types.SimpleNamespace(epochs=2), steps_per_epoch=100,
                                  resumed_from=None, start_epoch=0)
    lines.on_fit_start(first)
    lines.on_epoch_start(first, 0)
    lines.on_batch_end(first, 0, 1.0)
    second = types.SimpleNamespace(config=types.SimpleNamespace(epochs=4), steps_per_epoch=5,
                                   resumed_from=None, start_epoch=0)
    lines.on_fit_start(second)
    lines.on_epoch_start(second, 0)
    lines.on_batch_end(second, 0, 0.5)
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("training (steps): 1/200 (0%), epoch 1/2")
    assert printed[1].startswith("training (steps): 1/20 (5%), epoch 1/4"), printed

"""The study machinery end to end, on a toy study defined here.

Two variants of ``resnet-mini`` on the ``synthetic`` dataset (10 classes of 28x28 prototypes
plus noise): ``trained`` (2 epochs, which reaches ~99% clean accuracy) and ``untrained`` (one
step at lr 1e-6 on 32 images, so it stays at chance, 10%), with a clean and a PGD column. The
claim "trained is more accurate than untrained" must hold and its reverse must not, on 100
clean images a gap of ~90 pp against a standard error of ~3 pp. The toy study runs uninterrupted,
is killed and resumed, is extended by more seeds, and is refused on a folder holding another configuration.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from robustlab.core import InputError
from robustlab.experiments import study as study_module
from robustlab.experiments.claims import Claim, Side
from robustlab.experiments.columns import Column
from robustlab.experiments.records import Record, RecordStore
from robustlab.experiments.report import Cell, Table
from robustlab.experiments.study import (
    Plan,
    Profile,
    Study,
    StudyConfig,
    StudyResult,
    run_study,
)
from robustlab.experiments.variants import Load, Train, TrainSpec, Variant, Workshop

# --- the toy study, complete (config, profile, plan, study): 36 lines up to the end marker ---


@dataclass(frozen=True)
class ToyConfig(StudyConfig):
    epochs: int = 2
    lr: float = 0.05


TOY = ToyConfig(profile="toy", dataset="synthetic", model="resnet-mini", eps=0.03, seeds=(0,), eval_n=50,
                clean_n=100, eval_batch_size=50)
PGD = {"steps": 5, "step_size": 0.01, "random_start": True, "restarts": 1, "early_stop": True, "eot": 0}
TRUE_CLAIM, FALSE_CLAIM = "Training beats no training", "No training beats training"


def toy_plan(cfg: ToyConfig, baseline: str | None) -> Plan:
    trained = Train(cfg.model, TrainSpec(cfg.epochs, cfg.lr, batch_size=16))
    untrained = Train(cfg.model, TrainSpec(1, 1e-6, batch_size=32, limit=32))  # one step: chance level
    columns = (Column("clean", "clean", "clean"), Column("pgd", "pgd", "PGD", PGD))
    both = ("clean", "pgd")
    return Plan(
        variants=(Variant("trained", trained), Variant("untrained", untrained)),
        columns=columns,
        jobs=(("trained", both), ("untrained", both)),
        tables=(Table("main", "Clean and PGD accuracy", "", ("trained", "untrained"),
                      (Cell("clean", "clean"), Cell("pgd", "PGD"))),),
        claims=(Claim(TRUE_CLAIM, "toy", Side("trained", "clean"), Side("untrained", "clean")),
                Claim(FALSE_CLAIM, "toy", Side("untrained", "clean"), Side("trained", "clean"))))


TOY_STUDY = Study(
    name="toy-study-test", title="Toy study", paper="none",
    profiles={"toy": Profile(TOY, "about 20 s on 2 CPU cores", "two variants, two columns, two claims")},
    plan=toy_plan,
    intro=lambda cfg, facts: f"{cfg.model} on {cfg.dataset}, {facts['clean_images']} clean images.",
)

# --- end of the toy study ----------------------------------------------------------------------

HELD, FAILED = "**held**", "**did not hold**"
JOBS = [(v, 0, c) for v in ("trained", "untrained") for c in ("clean", "pgd")]  # in run order


class Killed(Exception):
    """Stands for the process being killed as an evaluation starts."""


def records(out: Path) -> dict[tuple[str, int, str], Record]:
    return {(r.variant, r.seed, r.column): r for r in RecordStore(out / "records")}


def verdicts(result: StudyResult) -> dict[str, str]:
    return {r.claim.claim: r.verdict for r in result.claims}


def verdict_row(report: str, claim: str) -> str:
    rows = [line for line in report.splitlines() if line.startswith(f"| {claim} |")]
    assert len(rows) == 1, report
    return rows[0]


def count_evaluations(monkeypatch: pytest.MonkeyPatch, kill_at: int | None = None) -> list[tuple[str, int, str]]:
    """Record every (variant, seed, column) the study evaluates; raise :class:`Killed` as the
    ``kill_at``-th evaluation (1-based) starts, before anything of it is computed or written."""
    calls: list[tuple[str, int, str]] = []
    real = study_module.evaluate_column

    def counted(ctx: Any, model: Any, column: Column, variant: str, seed: int, *args: Any) -> Record:
        calls.append((variant, seed, column.name))
        if len(calls) == kill_at:
            raise Killed(f"killed while evaluating {variant} {column.name}")
        return real(ctx, model, column, variant, seed, *args)

    monkeypatch.setattr(study_module, "evaluate_column", counted)
    return calls


def mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StudyResult]:
    """The toy study run once, uninterrupted, its profile given by name."""
    out = tmp_path_factory.mktemp("toy-clean")
    return out, run_study(TOY_STUDY, out, "toy")  # a profile by name


@pytest.mark.slow
def test_toy_study_runs_end_to_end_with_a_known_verdict(clean_run):
    out, result = clean_run
    assert not result.partial
    assert verdicts(result) == {TRUE_CLAIM: "held", FALSE_CLAIM: "did not hold"}
    recs = records(out)
    assert sorted(recs) == sorted(JOBS)
    assert recs["trained", 0, "clean"].accuracy >= 0.9  # the sizes chosen leave no doubt
    assert recs["untrained", 0, "clean"].accuracy <= 0.2
    assert recs["trained", 0, "clean"].images == 100 and recs["trained", 0, "pgd"].images == 50

    report = (out / "report.md").read_text()
    assert report == result.report
    assert "## Clean and PGD accuracy" in report and "| method | clean (%) | PGD (%) |" in report
    for label in ("trained", "untrained"):
        clean, pgd = recs[label, 0, "clean"].accuracy, recs[label, 0, "pgd"].accuracy
        assert f"| {label} | {100 * clean:.2f} (1/1) | {100 * pgd:.2f} (1/1) |" in report
    assert "## Verdict" in report and "Partial report" not in report and "—" not in report.split("## Verdict")[0]
    assert verdict_row(report, TRUE_CLAIM).endswith(f"| {HELD} |")
    assert verdict_row(report, FALSE_CLAIM).endswith(f"| {FAILED} |")

    saved = json.loads((out / "results.json").read_text())
    assert saved["study"] == TOY_STUDY.name and saved["config"] == TOY.to_dict()
    assert {c["claim"]: c["verdict"] for c in saved["claims"]} == verdicts(result)
    assert all(c["n"] == 100 for c in saved["claims"])
    assert json.loads((out / "config.json").read_text())["config"] == TOY.to_dict()
    for label in ("trained", "untrained"):
        assert (out / "models" / label / "seed0" / "model.safetensors").is_file()


@pytest.mark.slow
def test_toy_study_resumes_after_a_kill(clean_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:  # killed as the 4th evaluation (untrained, pgd) starts
        calls = count_evaluations(m, kill_at=4)
        with pytest.raises(Killed):
            run_study(TOY_STUDY, out, TOY)
    assert calls == JOBS
    before = records(out)
    assert sorted(before) == sorted(JOBS[:3])  # the whole records written before the kill
    assert not (out / "report.md").exists()
    done = [out / "records" / v / f"seed{s}" / f"{c}.json" for v, s, c in JOBS[:3]]
    models = [out / "models" / v / "seed0" / "model.safetensors" for v in ("trained", "untrained")]
    stamps = mtimes(done + models)

    partial = run_study(TOY_STUDY, out, TOY, report_only=True)  # computes nothing
    assert partial.partial and "**Partial report**" in partial.report
    assert f"| untrained | {100 * before['untrained', 0, 'clean'].accuracy:.2f} (1/1) | — |" in partial.report
    assert verdicts(partial) == {TRUE_CLAIM: "held", FALSE_CLAIM: "did not hold"}  # both sides are done
    assert (out / "report.md").read_text() == partial.report
    assert json.loads((out / "results.json").read_text())["facts"]["partial"] is True
    assert records(out) == before and mtimes(done + models) == stamps

    calls = count_evaluations(monkeypatch)
    resumed = run_study(TOY_STUDY, out, TOY)
    assert calls == [JOBS[3]]  # only the missing record was computed
    assert mtimes(done + models) == stamps  # neither records nor models were rewritten
    assert not resumed.partial and "Partial report" not in resumed.report

    clean_out, clean_result = clean_run
    assert verdicts(resumed) == verdicts(clean_result)
    assert [r.comparison for r in resumed.claims] == [r.comparison for r in clean_result.claims]
    got, want = records(out), records(clean_out)
    assert sorted(got) == sorted(want) == sorted(JOBS)
    for key in JOBS:  # seeded runs repeat bit for bit on CPU, resumed or not
        assert got[key].per_image == want[key].per_image, key
        assert got[key].clean_per_image == want[key].clean_per_image, key


@pytest.mark.slow
def test_a_folder_holding_another_configuration_is_refused(clean_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(clean_run[0], out)
    saved = (out / "config.json").read_text()
    calls = count_evaluations(monkeypatch)
    for other in (replace(TOY, eval_n=40), replace(TOY, epochs=3)):
        for report_only in (False, True):
            with pytest.raises(InputError, match="another configuration"):
                run_study(TOY_STUDY, out, other, report_only=report_only)
    assert calls == [] and (out / "config.json").read_text() == saved
    assert records(out) == records(clean_run[0])
    assert not run_study(TOY_STUDY, out, TOY).partial and calls == []  # its own config: all done


@pytest.mark.slow
def test_more_seeds_extend_a_folder_and_compute_only_the_new_seeds(clean_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(clean_run[0], out)
    seed0 = [out / "records" / v / "seed0" / f"{c}.json" for v, _, c in JOBS]
    seed0 += [out / "models" / v / "seed0" / "model.safetensors" for v in ("trained", "untrained")]
    stamps = mtimes(seed0)
    calls = count_evaluations(monkeypatch)
    extended = run_study(TOY_STUDY, out, replace(TOY, seeds=(0, 1)))
    assert calls == [(v, 1, c) for v, _, c in JOBS]  # seed 1 only, in job order
    assert mtimes(seed0) == stamps
    assert json.loads((out / "config.json").read_text())["config"]["seeds"] == [0, 1]
    calls.clear()
    again = run_study(TOY_STUDY, out, replace(TOY, seeds=(1,)))  # fewer seeds: nothing to do, none forgotten
    assert calls == [] and not again.partial
    assert json.loads((out / "config.json").read_text())["config"]["seeds"] == [0, 1]
    assert not extended.partial and all(r.seeds == 2 for r in extended.claims)
    alone = tmp_path / "seed1"  # seed 1 on its own folder: the same records bit for bit
    run_study(TOY_STUDY, alone, replace(TOY, seeds=(1,)))
    got, want = records(out), records(alone)
    for v, _, c in JOBS:
        assert got[v, 1, c].per_image == want[v, 1, c].per_image, (v, c)
    assert {k: r.per_image for k, r in got.items() if k[1] == 0} == {k: r.per_image for k, r in records(clean_run[0]).items()}


@pytest.mark.slow
def test_a_folder_without_its_weights_retrains_only_the_models_a_missing_cell_reads(clean_run, tmp_path, monkeypatch):
    # a published run folder (results/) keeps records, not weights: resuming it retrains, from its
    # recipe and seed, only the model a missing cell reads, and the cell comes out bit for bit
    out = tmp_path / "run"
    shutil.copytree(clean_run[0], out)
    for weights in out.rglob("*.safetensors"):
        weights.unlink()
    (out / "records" / "trained" / "seed0" / "pgd.json").unlink()
    calls = count_evaluations(monkeypatch)
    run_study(TOY_STUDY, out, TOY)
    assert calls == [("trained", 0, "pgd")]
    assert (out / "models" / "trained" / "seed0" / "model.safetensors").is_file()
    assert not (out / "models" / "untrained" / "seed0" / "model.safetensors").exists()
    want = records(clean_run[0])["trained", 0, "pgd"]
    assert 0 < sum(want.per_image) < len(want.per_image)  # some images robust, some not: a real comparison
    assert records(out)["trained", 0, "pgd"].per_image == want.per_image


class Noisy(torch.nn.Module):
    """Randomness outside the Stochastic protocol: Gaussian noise on the logits, drawn in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) + torch.randn(x.shape[0], 10)


def test_randomness_outside_the_protocol_still_gets_its_eot_column(tmp_path, monkeypatch):
    # on a deterministic model an EOT column repeats plain PGD; a model whose forward draws
    # torch.randn is random though no layer declares it, so its EOT column must run for real
    eot = Column("pgd-eot2", "pgd", "PGD + EOT-2", {**PGD, "eot": 2}, deterministic="pgd")
    plan = Plan((Variant("noisy", Load("unused.safetensors")),), (Column("pgd", "pgd", "PGD", PGD), eot),
                (("noisy", ("pgd", "pgd-eot2")),), ())
    study = Study("noisy-test", "Noisy", "none", {"toy": Profile(TOY, "seconds", "one model")},
                  lambda cfg, baseline: plan, lambda cfg, facts: "")
    monkeypatch.setattr(Workshop, "model", lambda self, label, seed: Noisy().eval())
    run_study(study, tmp_path, TOY)
    rec = records(tmp_path)["noisy", 0, "pgd-eot2"]
    assert rec.same_as is None and rec.stochastic and rec.applies


def test_the_worst_case_breaks_ties_in_job_order(tmp_path):
    # a randomized model's two attacks chose their points with equal estimates (0.5 each) but
    # their re-estimated outcomes differ; the worst case takes the attack listed first in the job
    # ("b", though "a" sorts first), never an order that follows the process's string hash
    plan = Plan((Variant("m", Load("unused.safetensors")),),
                (Column("a", "pgd", "A", PGD), Column("b", "pgd", "B", PGD)), (("m", ("b", "a")),),
                (Table("t", "T", "", ("m",), (Cell("a", "A"),), worst=True),))
    study = Study("tie-test", "Ties", "none", {"toy": Profile(TOY, "seconds", "one model")},
                  lambda cfg, baseline: plan, lambda cfg, facts: "")
    store = RecordStore(tmp_path / "records")
    store.put(Record.of_outcomes("m", 0, "b", "attack", [1.0, 1.0, 0.0, 1.0], per_image_select=(0.5,) * 4))
    store.put(Record.of_outcomes("m", 0, "a", "attack", [0.0, 0.0, 0.0, 0.0], per_image_select=(0.5,) * 4))
    report = run_study(study, tmp_path, TOY, report_only=True).report
    assert "| m | 0.00 (1/1) | 75.00 (1/1) |" in report  # `a` 0 of 4; worst case: `b`'s 3 of 4

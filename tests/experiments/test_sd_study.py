"""The sd-study recipe on the study machinery.

Its plan (columns, settings, jobs) is checked against the paper's protocol; its report and verdict
against synthetic records whose right numbers are worked out by hand; one slow test runs the recipe
on tiny data, kills it, resumes it and compares it with an uninterrupted run.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from robustlab.checkpoints import load
from robustlab.core import InputError
from robustlab.core.metrics import predict
from robustlab.data import load_dataset
from robustlab.evaluate import Ledger
from robustlab.experiments import Record, RecordStore, run_study, study_config
from robustlab.experiments.sd_study import PROFILES, plan

QUICK, CPU = PROFILES["quick"].config, PROFILES["cpu"].config
N, N_CLEAN, N_CORRUPTED = 100, 200, 50


def ones(k: int, n: int = N) -> list[float]:
    """The first ``k`` of ``n`` images right (or robust), the rest not."""
    return [1.0] * k + [0.0] * (n - k)


# ---------------------------------------------------------------------------------------------
# the plan


def test_quick_profile_runs_no_autoattack_and_cpu_runs_every_column():
    # the demo's budget: without AutoAttack the quick profile's verdict must not conclude
    quick, cpu = plan(QUICK), plan(CPU)
    t1 = {t.key: [c.column for c in t.cells] for t in quick.tables}["table1"]
    assert t1 == ["clean", "pgd", "square", "mce", "pgd-eot20", "twin"]
    t1 = {t.key: [c.column for c in t.cells] for t in cpu.tables}["table1"]
    assert t1 == ["clean", "pgd", "aa", "square", "mce", "pgd-eot20", "pgd-eot64", "aa-rand", "twin"]
    assert [t.rows for t in cpu.tables if t.key == "table5"] == [("SD (spp=1)", "SD", "SD (spp=4)", "SD (spp=8)",
                                                                  "SD (spp=16)")]


def test_cpu_plan_runs_what_the_worst_case_verdict_needs_before_the_other_rows():
    # the headline claim compares SD's and the baseline's per-sample worst case, which waits for
    # every column of the row, Table 4's transferred AutoAttack included: a run stopped after the
    # verdict's rows must be able to report it, so those transfers come before Table 1's other rows
    jobs = plan(CPU).jobs
    first_other = next(i for i, (row, _) in enumerate(jobs) if row == "ASAP")
    done_before = {(row, c) for row, cs in jobs[:first_other] for c in cs}
    for row in ("Baseline", "SD", "AddNoise (std=0.75)"):
        assert {(row, "tb-pgd"), (row, "tb-aa"), (row, "aa-rand") if row != "Baseline" else (row, "aa")} <= done_before
    # and nothing is dropped: every transfer row still gets both transfers, the AutoAttack one once
    pairs = [(row, c) for row, cs in jobs for c in cs if c.startswith("tb-")]
    assert set(pairs) == {(r, c) for r in CPU.transfer_from_baseline for c in ("tb-pgd", "tb-aa")}
    assert sorted(r for r, c in pairs if c == "tb-aa") == sorted(CPU.transfer_from_baseline)


def test_columns_spell_out_the_papers_attack_settings():
    cols = {c.name: c for c in plan(QUICK).columns}
    # Sec. 4.1: L-inf, alpha = 0.01; the quick profile's 10 steps and 200 Square queries
    assert dict(cols["pgd"].settings) == {"steps": 10, "step_size": 0.01, "random_start": True, "restarts": 1,
                                          "early_stop": True, "eot": 0}
    assert cols["pgd-eot20"].settings["eot"] == 20 and cols["pgd-eot20"].kind == "pgd"
    assert dict(cols["square"].settings) == {"queries": 200, "p_init": 0.8}
    assert dict(cols["aa-rand"].settings) == {"version": "rand", "eot": 20}
    # on a deterministic model EOT repeats plain PGD; AutoAttack rand and the twin do not apply
    assert (cols["pgd-eot20"].deterministic, cols["aa-rand"].deterministic, cols["twin"].deterministic) == (
        "pgd", "skip", "skip")
    assert QUICK.eps == pytest.approx(4 / 255)


def test_every_finetuned_variant_converts_the_shared_baseline():
    p = plan(CPU)
    base = p.variants[0]
    assert base.label == "Baseline" and not base.per_seed
    opts = {v.label: dict(v.make.options) for v in p.variants[1:]}
    assert opts["SD"] == {"method": "sd"} and opts["SD (spp=16)"] == {"method": "sd", "spp": 16}
    assert opts["AddNoise (std=0.75)"] == {"method": "addnoise", "std": 0.75}
    assert opts["AddNoise (uniform)"] == {"method": "addnoise", "distribution": "uniform", "std": 0.5}
    assert all(v.make.source == "Baseline" and v.make.finetune.epochs == 5 for v in p.variants[1:])
    assert plan(CPU, "given.safetensors").variants[0].make.path == "given.safetensors"


def test_unknown_profile_and_row_are_named():
    with pytest.raises(InputError, match="unknown sd-study profile 'fast'; known profiles: quick, cpu, full"):
        study_config("sd-study", "fast")
    with pytest.raises(InputError, match=r"unknown sd-study row 'SD\+'"):
        plan(study_config("sd-study", "quick", table1=("Baseline", "SD+")))
    with pytest.raises(InputError, match="sd-study has no setting colour"):
        study_config("sd-study", "quick", colour="red")


# ---------------------------------------------------------------------------------------------
# the report and verdict, from records


def _records(store: RecordStore) -> None:
    # three seeds of the (deterministic) baseline; SD finished seeds 0 and 1 (robust on 60 and 40
    # images under every attack), seed 2 only its clean and PGD columns, seed 0 alone its Table 4
    # transfer
    def attack(variant: str, seed: int, column: str, k: int, **kw) -> None:
        store.put(Record.of_outcomes(variant, seed, column, "attack", ones(k), clean_per_image=tuple(ones(95)), **kw))

    for s in range(3):
        store.put(Record.of_outcomes("Baseline", s, "clean", "clean", ones(180, N_CLEAN)))
        store.put(Record.of_outcomes("Baseline", s, "mce", "corruption", [0.8] * N_CORRUPTED))
        for col, k in (("pgd", 20), ("square", 30), ("tb-pgd", 20)):
            attack("Baseline", s, col, k)
        attack("Baseline", s, "pgd-eot20", 20, same_as="pgd")
        store.put(Record("Baseline", s, "twin", "attack", not_applicable="deterministic model"))
    for s, k in ((0, 60), (1, 40)):
        store.put(Record.of_outcomes("SD", s, "mce", "corruption", [0.8] * N_CORRUPTED))
        for col in ("pgd", "square", "pgd-eot20", "twin"):
            attack("SD", s, col, k)
    attack("SD", 0, "tb-pgd", 60)
    attack("SD", 2, "pgd", 50)
    for s in range(3):
        store.put(Record.of_outcomes("SD", s, "clean", "clean", ones(176, N_CLEAN)))


def test_report_and_verdict_from_records(tmp_path):
    cfg = replace(study_config("sd-study", "quick", dataset="digits", eval_n=N, clean_n=N_CLEAN, seeds=(0, 1, 2),
                               table1=("Baseline", "SD"), transfer_from_baseline=("Baseline", "SD"), spp_sweep=(1, 2)),
                  audit=None)  # the tables only: no audit column
    _records(RecordStore(tmp_path / "records"))
    r = run_study("sd-study", tmp_path, cfg, report_only=True)
    assert r.partial and not (tmp_path / "models").exists() and not (tmp_path / "config.json").exists()
    report = (tmp_path / "report.md").read_text()
    assert "**Partial report**" in report
    # i.i.d., PGD, Square, mCE, EOT-20, twin, worst case. Mean ± sample std over seeds, (done/3):
    # SD's PGD 60, 40, 50 -> 50 ± 10; two seeds 60, 40 -> 50 ± 14.14; SD's worst case needs every
    # planned attack (Table 4's transfer included): only seed 0 has them all
    assert ("| Baseline | 90.00 ± 0.00 (3/3) | 20.00 ± 0.00 (3/3) | 30.00 ± 0.00 (3/3) | 20.00 ± 0.00 (3/3) | "
            "20.00 ± 0.00 (3/3) | n/a | 20.00 ± 0.00 (3/3) |") in report
    two = "50.00 ± 14.14 (2/3)"
    assert (f"| SD | 88.00 ± 0.00 (3/3) | 50.00 ± 10.00 (3/3) | {two} | 20.00 ± 0.00 (2/3) | {two} | {two} | "
            "60.00 (1/3) |") in report
    assert "| SD | 60.00 (1/3) |" in report  # Table 4
    assert "| SD (spp=1) | — | — | — |" in report  # Table 5
    rows = {line.split(" | ")[0][2:]: line for line in report.split("## Verdict")[1].splitlines()
            if line.startswith("| ")}
    # 176 vs 180 of 200 (nested): d = -1 on 4 images; sample var (4 x 0.98^2 + 196 x 0.02^2) / 199
    # = 0.019698, s.e. sqrt(0.019698 / 200) = 0.99 pp; 95% CI -2.00 ± 1.96 x 0.9924 = [-3.95, -0.05]
    assert ("SD 88.00% vs baseline 90.00% (-2.00 pp, s.e. 0.99, 95% CI [-3.95, -0.05]; 3 seeds, 200 images) "
            "| **held** |") in rows["Marginal drop in i.i.d. accuracy"]
    # PGD over three seeds: SD's per-image mean is 1 (images 0-39), 2/3 (40-49), 1/3 (50-59), the
    # baseline's 1 (0-19); the difference has mean 0.3 and squared deviations 20 x 0.09 + 20 x 0.49
    # + 10 x (11/30)^2 + 10 x (1/30)^2 + 40 x 0.09 = 16.556, s.e. sqrt(16.556 / 99 / 100) = 4.09 pp
    assert "SD 50.00% vs baseline 20.00% (+30.00 pp, s.e. 4.09, " in rows["Robust to PGD (the paper's protocol, no EOT)"]
    assert rows["Robust to PGD (the paper's protocol, no EOT)"].endswith("| **held** |")
    # Square keeps SD at its own clean accuracy on the attacked images? 50 of 95 -> a 45 pp drop
    assert "SD 50.00% vs SD clean 95.00% (-45.00 pp" in rows["Almost unaffected under Square"]
    assert rows["Almost unaffected under Square"].endswith("| **did not hold** |")
    # the worst case on seed 0 only (the one complete seed): 60 vs 20 of 100 nested, s.e.
    # sqrt(0.4 x 0.6 x 100 / 99 / 100) = 4.92 pp; the quick profile cannot conclude
    worst = rows["Does not provide a false sense of security"]
    assert "SD 60.00% vs baseline 20.00% (+40.00 pp, s.e. 4.92, " in worst and "1 seed, 100 images" in worst
    assert "**not conclusive about adaptive robustness" in worst and "runs no aa or aa-rand" in worst
    assert "AutoAttack" not in rows  # no AutoAttack claim where the profile runs none
    assert "`randomized-without-eot`" not in report  # no warnings in these records


def test_report_only_on_an_empty_folder_trains_nothing(tmp_path):
    cfg = study_config("sd-study", "quick", dataset="digits", eval_n=8, clean_n=16)
    r = run_study("sd-study", tmp_path, cfg, report_only=True)
    assert r.partial and not (tmp_path / "models").exists()
    report = (tmp_path / "report.md").read_text()
    assert "| SD | — | — |" in report and "Partial report" in report and "no records yet" in report


# ---------------------------------------------------------------------------------------------
# end to end on tiny data

TINY = study_config(
    "sd-study", "quick", dataset="digits", baseline_epochs=2, baseline_limit=600, finetune_limit=200,
    finetune_epochs=1, batch_size=64, eval_n=24, clean_n=120, eval_batch_size=24, pgd_steps=3, square_queries=10,
    eot_draws=(2,), corruption_n=16, table1=("Baseline", "SD"), noise_sweep=(), spp_sweep=(1, 2),
    transfer_from_baseline=("Baseline", "SD"), seeds=(0, 1), eps=0.05,
)


class _Killed(Exception):
    pass


def _die_at_seed_1(line: str) -> None:
    if "(seed 1)" in line:
        raise _Killed(line)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _outcomes(out: Path) -> dict[tuple[str, int, str], tuple[float, ...]]:
    return {(r.variant, r.seed, r.column): r.per_image for r in RecordStore(out / "records")}


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_work_and_matches_an_uninterrupted_run(tmp_path):
    whole = run_study("sd-study", tmp_path / "whole", TINY)

    run = tmp_path / "killed"
    with pytest.raises(_Killed):  # when seed 1 starts, after every table of seed 0
        run_study("sd-study", run, TINY, log=_die_at_seed_1)
    done = sorted((run / "records").glob("*/seed*/*.json"))
    assert {p.parent.name for p in done} == {"seed0"} and {p.parent.parent.name for p in done} == {
        "baseline", "sd", "sd-spp-1"}
    models = sorted((run / "models").glob("*/*/model.safetensors"))
    assert sorted(p.parent.parent.name + "/" + p.parent.name for p in models) == [
        "baseline/shared", "sd-spp-1/seed0", "sd/seed0"]
    stamps = {p: _stamp(p) for p in [*done, *models]}

    resumed = run_study("sd-study", run, TINY)
    assert {p: _stamp(p) for p in stamps} == stamps  # nothing of seed 0 retrained or re-evaluated
    assert _outcomes(run) == _outcomes(tmp_path / "whole")
    assert [c.verdict for c in resumed.claims] == [c.verdict for c in whole.claims]

    # the recorded clean outcomes are the baseline checkpoint's own predictions
    model = load(run / "models" / "baseline" / "shared" / "model.safetensors").eval()
    test = load_dataset("digits", "test", limit=120, seed=0)
    images = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        ok = (predict(model, images) == test.targets).float().tolist()
    store = RecordStore(run / "records")
    assert list(store.get("Baseline", 0, "clean").per_image) == ok
    base, sd = store.get("Baseline", 0, "pgd-eot2"), store.get("SD", 0, "pgd-eot2")
    assert not base.stochastic and base.same_as == "pgd" and not store.get("Baseline", 0, "twin").applies
    assert sd.stochastic and sd.same_as is None and store.get("SD", 0, "twin").applies
    assert len(store.get("SD", 0, "mce").per_image) == 16 and store.get("SD", 0, "mce").error is not None
    rows = Ledger(run / "ledger.sqlite").rows()
    assert rows and all(row.n == 24 and row.dataset == "digits" for row in rows)

    with pytest.raises(InputError, match="another configuration"):
        run_study("sd-study", run, study_config("sd-study", "quick"))

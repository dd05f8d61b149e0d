"""The sd-study recipe end to end on tiny data (the real runs are the quick/cpu/full profiles)."""

import json

import pytest

from robustlab.core import InputError
from robustlab.evaluate import Ledger
from robustlab.experiments.sd_study import (
    ADV_COLUMNS,
    BASELINE,
    SD,
    _worst_value,
    addnoise,
    paired,
    run_sd_study,
    study_config,
)

TINY = study_config(
    "quick", dataset="digits", baseline_epochs=2, baseline_limit=600, finetune_limit=200, finetune_epochs=1,
    batch_size=64, eval_n=24, clean_n=120, eval_batch_size=24, pgd_steps=3, square_queries=10,
    eot_draws=(2, 3), corruption_n=16, table1=(BASELINE, SD, addnoise(0.5)), noise_sweep=(0.2,),
    spp_sweep=(1, 2), transfer_from_baseline=(BASELINE, SD), seeds=(0, 1), eps=0.05,
)


class _Killed(Exception):
    pass


def _die_at_seed_1(line: str) -> None:
    if "(seed 1)" in line:
        raise _Killed(line)


def test_sd_study_runs_every_table_resumes_and_reports(tmp_path):
    # killed when the second seed starts: seed-major order has finished every table on seed 0
    with pytest.raises(_Killed):
        run_sd_study(tmp_path, TINY, log=_die_at_seed_1)
    part = run_sd_study(tmp_path, TINY, report_only=True)
    for key, rows in part["tables"].items():
        for label, (e0, e1) in rows.items():
            assert e0 and not e1, (key, label)
            assert {c for c in e0 if isinstance(e0[c], dict)} >= {"clean"}
    assert "(1 of 2 seeds)" in (tmp_path / "report.md").read_text()
    assert "Marginal drop in i.i.d. accuracy" in (tmp_path / "report.md").read_text()  # seed 0 pairs

    r = run_sd_study(tmp_path, TINY)  # resumes with seed 1
    t = r["tables"]
    assert list(t["table1"]) == ["Baseline", "SD", "AddNoise (std=0.5)"]
    assert set(t["table3"]) == {"Baseline", "AddNoise (std=0.5)", "AddNoise (std=0.2)",
                                "SD + AddNoise (std=0.2)", "SD"}
    assert list(t["table5"]) == ["SD (spp=1)", "SD"]
    for rows in t.values():
        for evals in rows.values():
            assert len(evals) == 2  # two seeds
            for e in evals:
                for col, v in e.items():
                    if isinstance(v, dict) and v.get("acc") is not None:
                        assert 0.0 <= v["acc"] <= 1.0, col
                worst = _worst_value(e)
                for col in ADV_COLUMNS:
                    if col in e and e[col].get("acc") is not None and worst is not None:
                        assert worst <= e[col]["acc"] + 1e-9  # the worst case is per sample
    base, sd = t["table1"]["Baseline"][0], t["table1"]["SD"][0]
    assert base["stochastic"] is False and sd["stochastic"] is True
    assert base["pgd-eot3"]["same_as"] == "pgd" and base["twin"]["acc"] is None
    assert "same_as" not in sd["pgd-eot3"] and sd["twin"]["acc"] is not None
    assert 0.0 <= sd["mce"]["acc"] <= 1.0 and len(sd["mce"]["accuracy"]) == 15
    report = (tmp_path / "report.md").read_text()
    for heading in ("Table 1 analogue", "Table 3 analogue", "Table 4 analogue", "Table 5 analogue", "Verdict"):
        assert heading in report
    assert "PGD + EOT-3 (%)" in report and "transfer from twin (%)" in report
    verdict = report.split("## Verdict")[1]
    assert "Each comparison is paired" in verdict and "Marginal drop in i.i.d. accuracy" in verdict
    assert "false sense of security" in verdict and "s.e." in verdict
    assert len(sd["clean"]["correct"]) == 120 and len(sd["mce"]["per_image"]) == 16
    assert (tmp_path / "clean_vs_robust.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["eval_images"] == 24
    rows = Ledger(tmp_path / "ledger.sqlite").rows()
    assert len(rows) >= 20 and all(row.n == 24 and row.dataset == "digits" for row in rows)

    # a second run finds every model and evaluation on disk and gives the same tables
    ckpt = tmp_path / "models" / "sd" / "seed0" / "model.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    again = run_sd_study(tmp_path, TINY)
    assert ckpt.stat().st_mtime_ns == mtime
    assert again["tables"] == r["tables"]

    with pytest.raises(InputError, match="another configuration"):
        run_sd_study(tmp_path, study_config("quick"))

    # --report-only writes the same tables from disk, marked partial, computing nothing
    only = run_sd_study(tmp_path, TINY, report_only=True)
    assert only["tables"] == r["tables"] and only["partial"] is True
    assert "Partial report" in (tmp_path / "report.md").read_text()


def test_report_only_on_an_empty_folder_trains_nothing(tmp_path):
    r = run_sd_study(tmp_path, TINY, report_only=True)
    assert r["tables"]["table1"]["SD"] == [{}, {}]
    assert not (tmp_path / "models").exists() and not (tmp_path / "baseline").exists()
    report = (tmp_path / "report.md").read_text()
    assert "| SD | — | — |" in report and "Partial report" in report


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(InputError, match="quick, cpu, full"):
        study_config("fast")
    with pytest.raises(InputError, match="quick, cpu, full"):
        run_sd_study("/nonexistent-never-created", "fast")


def test_paired_comparison_counts_each_image_once():
    a = [1.0, 1.0, 1.0, 0.0] * 25
    b = [1.0, 0.0, 1.0, 0.0] * 25
    p = paired(a, b)
    assert p.n == 100 and p.a == 0.75 and p.b == 0.5 and p.diff == pytest.approx(0.25)
    # d is 0.25 on average with sample variance 0.25 * 0.75 * 100 / 99
    assert p.se == pytest.approx((0.25 * 0.75 * 100 / 99 / 100) ** 0.5)
    assert p.outcome == "higher" and paired(b, a).outcome == "lower"
    assert paired(a, a).outcome == "no significant difference" and paired(a, a).se == 0.0
    # a 3-image difference among 100 is within noise
    c = [1.0] * 3 + [0.0] * 97
    assert paired(c, [0.0] * 100).outcome == "no significant difference"
    with pytest.raises(InputError, match="two equal, non-empty lists"):
        paired(a, b[:10])


def test_worst_case_waits_for_the_tables_own_columns():
    from robustlab.experiments.sd_study import _table

    transfer_only = {"tb-pgd": {"acc": 0.75, "robust": "1110"}}
    done = {"clean": {"acc": 1.0, "correct": "1111"}, "pgd": {"acc": 0.5, "robust": "1100"}, **transfer_only}
    table = _table({"partial": [transfer_only], "done": [done]}, ["clean", "pgd"], worst=True)
    partial_row = next(line for line in table.splitlines() if line.startswith("| partial"))
    done_row = next(line for line in table.splitlines() if line.startswith("| done"))
    assert partial_row.rstrip().endswith("| — |")  # one transfer attack is no worst case
    assert done_row.rstrip().endswith("| 50.00 |")  # per sample over pgd and tb-pgd: 1100 & 1110

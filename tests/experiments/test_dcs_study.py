"""The DCS study recipe: its settings against the paper, its claims, and a tiny run end to end."""

from __future__ import annotations

import json

from robustlab.checkpoints import load
from robustlab.defenses.dcs import RandomKernelConv2d
from robustlab.experiments import dcs_study, run_study, study_config
from robustlab.experiments.claims import WORST
from robustlab.experiments.dcs_study import (
    BASELINE,
    DCS_AT,
    ENSEMBLE,
    GSAT,
    PROFILES,
    columns,
    plan,
)
from robustlab.experiments.records import RecordStore
from robustlab.experiments.study import STUDIES
from robustlab.experiments.variants import Convert, Load, Train


def test_the_study_is_registered_with_three_profiles():
    assert STUDIES.get("dcs-study").plan is dcs_study.plan
    assert set(PROFILES) == {"quick", "cpu", "full"}
    for profile in PROFILES.values():
        cfg = profile.config
        assert (cfg.dataset, cfg.model, cfg.norm, cfg.eps) == ("fashion-mnist", "resnet-mini", "linf", 0.1)
    # repeated evaluation: mean ± std needs more than one seed (quick: one, for time)
    assert len(PROFILES["cpu"].config.seeds) >= 2 and len(PROFILES["full"].config.seeds) >= 2


def test_columns_follow_the_papers_benchmark_settings_at_eps_0_1():
    """Sec. 5.1: PGD-20, step 2/255 at eps 8/255 (eps/4), random start; Algorithm 2 for the paper's
    protocol; the honest protocol takes expectations (EOT, AA rand, Square with eot)."""
    cfg = PROFILES["cpu"].config
    cols = {c.name: c for c in columns(cfg)}
    assert set(cols) == {"clean", "paper", "pgd", "eot", "aa-rand", "square-eot", "transfer-at", "audit-paper", "audit-eot"}
    # the cpu profile audits both protocols (robustlab.audit, the full audit)
    assert {c: cols[f"audit-{c}"].settings for c in ("paper", "eot")} == {
        c: {"column": c, "profile": "full"} for c in ("paper", "eot")}
    paper = cols["paper"]
    assert paper.kind == "battery" and paper.settings["battery"] == "dcs-paper"
    assert paper.settings["options"]["steps"] == 20 and abs(paper.settings["options"]["step_size"] - 0.025) < 1e-12
    for name, eot in (("pgd", 0), ("eot", 10)):
        s = cols[name].settings
        assert set(s) == {"steps", "step_size", "random_start", "restarts", "early_stop", "eot"}
        assert (s["steps"], s["random_start"], s["restarts"], s["early_stop"], s["eot"]) == (20, True, 1, False, eot)
        assert abs(s["step_size"] - 0.1 / 4) < 1e-12
    assert cols["eot"].deterministic == "pgd"
    assert cols["aa-rand"].settings == {"version": "rand", "eot": 20}
    assert cols["square-eot"].settings == {"queries": 1000, "p_init": 0.8, "eot": 10}
    assert cols["transfer-at"].settings == {"source": BASELINE, "attack": "pgd"}
    assert not any(c.kind == "transfer" and c.settings["source"] == "twin" for c in cols.values())


def test_plan_trains_dcs_with_gsat_and_plain_at_and_loads_a_given_baseline():
    cfg = PROFILES["quick"].config
    p = plan(cfg, baseline="some/pgd-at.safetensors")
    makes = {v.label: v.make for v in p.variants}
    assert makes[BASELINE] == Load("some/pgd-at.safetensors")
    gsat, dcs_at = makes[GSAT], makes[DCS_AT]
    assert isinstance(gsat, Train) and isinstance(dcs_at, Train)
    assert gsat.model == dcs_at.model == "resnet-mini"
    # Sec. 5.1: the second convolution, k = 5, n = 2
    for make in (gsat, dcs_at):
        assert make.conversions == (("dcs", (("layers", (2,)), ("k", 5), ("n", 2))),)
    assert gsat.train.objective == "gsat" and dcs_at.train.objective == "pgd-at"
    # Sec. 5.1: 7-step PGD of 2/255 at 8/255 inside training (quick: 3 steps), eps 0.1
    opts = dict(gsat.train.objective_options)
    assert opts["eps"] == 0.1 and abs(opts["step_size"] - 0.025) < 1e-12 and opts["steps"] == 3
    assert PROFILES["cpu"].config.at_steps == 7
    ensemble = makes[ENSEMBLE]
    assert isinstance(ensemble, Convert) and ensemble.source == GSAT and ensemble.conversion == "ensemble"
    assert dict(ensemble.options) == {"draws": cfg.ensemble_draws} and ensemble.finetune is None
    # no baseline given: PGD-AT is trained, once for every seed
    trained = {v.label: v for v in plan(cfg).variants}[BASELINE]
    assert isinstance(trained.make, Train) and trained.make.train.objective == "pgd-at" and not trained.per_seed
    assert trained.make.conversions == ()
    assert p.cost and p.figures is not None
    # both protocols on every main row; the full honest protocol on DCS + GSAT and the baseline
    jobs = dict(p.jobs)
    assert {"clean", "paper", "eot"} <= set(jobs[DCS_AT]) and {"clean", "paper", "eot"} <= set(jobs[ENSEMBLE])
    assert set(jobs[GSAT]) == {c.name for c in columns(cfg)}
    assert {"clean", "pgd", "square-eot"} <= set(jobs[BASELINE]) and "transfer-at" not in jobs[BASELINE]
    assert "aa-rand" in dict(plan(PROFILES["cpu"].config).jobs)[BASELINE]
    # the audits only on DCS + GSAT
    assert set(dict(plan(PROFILES["cpu"].config).jobs)[DCS_AT]) == {c.name for c in columns(cfg) if c.kind != "audit"}


def test_full_profile_has_every_ablation_of_tables_4_and_5():
    cfg = PROFILES["full"].config
    makes = {v.label: v.make for v in plan(cfg).variants}
    convs = {label: dict(m.conversions[0][1]) for label, m in makes.items()
             if isinstance(m, Train) and m.conversions}
    # Table 4: k in {3, 5, 7, 9} with n = 4, without GSAT
    table4 = {(o["k"], o["n"]) for label, o in convs.items() if makes[label].train.objective == "pgd-at"}
    assert {(3, 4), (5, 4), (7, 4), (9, 4)} <= table4
    # Table 5: n in {1, 2, 3, 4} with GSAT and k = 5 (n = 2 is the main row)
    gsat_rows = [o for label, o in convs.items() if makes[label].train.objective == "gsat"]
    assert {o["n"] for o in gsat_rows if o["layers"] == (2,) and o["k"] == 5} == {1, 2, 3, 4}
    # App. B.4: other positions, never a 1x1 shortcut (convs 6 and 9 of resnet-mini)
    positions = {o["layers"] for o in gsat_rows}
    assert (2,) in positions and len(positions) >= 4 and not positions & {(6,), (9,)}
    keys = {t.key for t in plan(cfg).tables}
    assert {"table1", "table3", "table4", "table5", "table6", "position"} <= keys
    assert not {t.key for t in plan(PROFILES["quick"].config).tables} & {"table4", "table5", "position"}


def test_claims_refer_to_variants_and_columns_of_the_plan():
    for name in ("quick", "cpu", "full"):
        p = plan(PROFILES[name].config)
        labels = {v.label for v in p.variants}
        cols = {c.name for c in p.columns} | {WORST}
        jobs = {label: set(cs) for label, cs in p.jobs}
        for c in p.claims:
            for side in (c.a, c.b):
                assert side.variant in labels and side.column in cols, c.claim
                assert side.column == WORST or side.column in jobs[side.variant], c.claim
    claims = {(c.a.variant, c.a.column, c.b.variant, c.b.column): c.rule for c in plan(PROFILES["quick"].config).claims}
    assert claims[(GSAT, "paper", GSAT, "eot")] == "higher"
    assert claims[(GSAT, WORST, BASELINE, WORST)] == "higher"
    assert claims[(GSAT, "paper", BASELINE, "pgd")] == "higher"
    ablation_rules = {c.rule for c in plan(PROFILES["full"].config).claims if c.a.variant.startswith("DCS k=")
                      or " n=" in c.a.variant or " at conv " in c.a.variant}
    assert ablation_rules == {"describe"}


def test_a_tiny_dcs_study_runs_and_its_dcs_model_rebuilds(tmp_path):
    cfg = study_config("dcs-study", "quick", dataset="digits", eval_n=8, clean_n=40, eval_batch_size=8, epochs=1,
                       train_limit=96, at_steps=1, attack_steps=2, eot=2, aa_eot=1, square_queries=4, square_eot=1,
                       ensemble_draws=2, figure_n=8, seeds=(0,))
    r = run_study("dcs-study", tmp_path, cfg)
    assert not r.partial
    store = RecordStore(tmp_path / "records")
    assert {rec.column for rec in store if rec.variant == GSAT} == {
        "clean", "paper", "pgd", "eot", "aa-rand", "square-eot", "transfer-at", "audit-eot"}  # quick: the adaptive audit
    assert {rec.column for rec in store if rec.variant == ENSEMBLE} == {"clean", "paper", "eot"}
    folder = tmp_path / "models" / "dcs-gsat" / "shared"
    model = load(folder / "model.safetensors")
    layers = [m for m in model.modules() if isinstance(m, RandomKernelConv2d)]
    assert len(layers) == 1 and (layers[0].kernel_size, layers[0].n) == (5, 2)
    recipe = json.loads((folder / "variant.json").read_text())
    assert recipe["train"]["objective"] == "gsat"
    # both protocols' columns in the report, and the analyses ran
    assert "Paper's protocol: fixed-path PGD-2" in r.report and "EOT-PGD-2 (2 draws)" in r.report
    assert "AA rand" in r.report and "Table 1 analogue" in r.report and "Fig. 4b analogue" in r.report
    assert any(c.claim.claim.startswith("The paper's protocol reports higher") and c.comparison is not None
               for c in r.claims)

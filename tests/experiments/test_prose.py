"""The report's sentences on what a run did are written from its config, columns and claims
(:mod:`robustlab.experiments.prose`): an overridden ``eps`` or dataset reaches every one of them,
and none still states the profile's default."""

from __future__ import annotations

import re

import pytest

from robustlab.experiments import STUDIES, Claim, Column, Side, run_study, study_config
from robustlab.experiments.prose import attack_budget, dataset_name, eps_text, verdict_opening
from robustlab.experiments.study import StudyConfig

# "eps 0.1", "eps = 0.05", "eps 4/255" (not "eps/8": a step as a fraction of the budget)
EPS_MENTION = re.compile(r"\beps\b ?=? ?([0-9][0-9./]*[0-9])")
# a figure of the paper's own, quoted as the paper's: not a statement about the run
PAPER_QUOTES = {"gradnorm-study": ("(ResNet-50, ImageNet, eps 4/255;",)}


@pytest.mark.parametrize(("eps", "text"), [
    (0.05, "0.05"), (0.1, "0.1"), (0.2, "0.2"),  # 0.2 * 255 = 51, still written as given
    (4 / 255, "4/255"), (8 / 255, "8/255"),  # --eps 4/255 arrives as 0.0156862...
    (0.123456, "0.1235"), (0.0, "0"),  # neither short nor a multiple of 1/255: 4 digits
])
def test_eps_is_written_as_a_user_gives_it(eps, text):
    assert eps_text(eps) == text


def test_dataset_names_in_prose():
    assert (dataset_name("fashion-mnist"), dataset_name("cifar10"), dataset_name("digits")) == (
        "Fashion-MNIST", "CIFAR-10", "digits")


def test_the_attack_budget_is_read_from_the_columns_settings():
    pgd = {"steps": 7, "step_size": 0.0125, "random_start": False, "restarts": 1, "early_stop": True, "eot": 0}
    cols = [Column("clean", "clean", "Clean"), Column("mce", "corruptions", "mCE", {"n": 5}),
            Column("p", "pgd", "x", pgd),
            Column("e", "pgd", "x", {**pgd, "eot": 3, "eot_normalize": True, "bpda": "smooth", "random_start": True}),
            Column("s", "square", "x", {"queries": 50, "p_init": 0.8, "eot": 2}),
            Column("a", "autoattack", "x", {"version": "standard", "eot": 1}),
            Column("t", "transfer", "x", {"source": "twin", "attack": ["p", "e"]}),
            Column("u", "unchanged", "x", {"eps": 0.05, **pgd})]
    assert attack_budget(cols) == (
        "`p` PGD-7 (step 0.0125); `e` PGD-7 with normalized EOT-3 (step 0.0125, random start, BPDA smooth); "
        "`s` Square, 50 queries, EOT-2 (expected margin); `a` AutoAttack standard; "
        "`t` `p` and `e` crafted on the deterministic twin; "
        "`u` PGD-7 (step 0.0125) at eps 0.05, predictions left unchanged")


def test_the_verdict_opening_states_the_run_and_how_its_claims_are_judged():
    cfg = StudyConfig(dataset="cifar10", model="resnet18", eps=8 / 255)
    cols = [Column("pgd", "pgd", "PGD", {"steps": 5, "step_size": 0.01, "random_start": True, "restarts": 1,
                                         "early_stop": True, "eot": 0}),
            Column("aa", "autoattack", "AutoAttack", {"version": "standard", "eot": 1})]
    claims = [Claim("A beats B", "1 vs 0", Side("A", "pgd"), Side("B", "pgd")),
              Claim("A loses little", "", Side("A", "pgd"), Side("B", "pgd"), "no-worse-than", 0.01),
              Claim("A is robust", "", Side("A", "aa"), Side("B", "aa"), needs=("aa",))]
    text = verdict_opening(cfg, cols, {"pgd"}, claims, paper="ImageNet at L-inf eps 4/255", note="Own note.")
    assert "95% interval (1.96 standard errors over images)" in text  # Z95, written to two decimals
    assert "here resnet18 on CIFAR-10 at L-inf eps 8/255" in text and "ImageNet at L-inf eps 4/255" in text
    assert "Attacks run: `pgd` PGD-5 (step 0.01, random start)." in text  # `aa` did not run
    assert '"A is robust" concludes only when the profile runs AutoAttack.' in text
    assert '"drop at most"' in text and text.endswith("Own note.\n")
    assert "drop at most" not in verdict_opening(cfg, cols, {"pgd"}, claims[:1])


@pytest.mark.parametrize("name", ["sd-study", "strides-study", "sparse-study", "dcs-study", "gradnorm-study"])
def test_an_overridden_eps_and_dataset_reach_every_sentence_of_the_report(tmp_path, name):
    # the quickest report: from an empty run folder (every cell `—`, every claim "no records yet");
    # strides' Table II eps grid is a setting of its own, set to the budget here too
    extra = {"ratio_eps": (0.05,)} if name == "strides-study" else {}
    cfg = study_config(name, "quick", eps=0.05, dataset="digits", eval_n=8, clean_n=16, pgd_steps=3
                       if name in ("sd-study", "gradnorm-study") else None, **extra)
    report = run_study(name, tmp_path, cfg, report_only=True).report
    study = STUDIES.get(name)
    plan = study.plan(cfg, None)
    assert plan.paper and plan.paper in report
    stated = report.replace(plan.paper, "")
    for quote in PAPER_QUOTES.get(name, ()):
        assert quote in stated
        stated = stated.replace(quote, "")
    demo_sentence = study.demo.about(cfg)
    assert set(EPS_MENTION.findall(stated)) == {"0.05"}
    assert set(EPS_MENTION.findall(demo_sentence)) == {"0.05"}
    default = study.profiles["quick"].config.eps  # 4/255 (sd-study) or 0.1: in no form, labelled or not
    assert f"eps {eps_text(default)}" not in stated and f"eps = {eps_text(default)}" not in stated
    if default == 4 / 255:
        assert "4/255" not in stated and f"{default:.4g}" not in stated
    assert "fashion" not in report.lower() and "fashion" not in demo_sentence.lower()
    verdict = report.split("## Verdict")[1]
    assert f"here {cfg.model} on digits at L-inf eps 0.05, so" in verdict
    if name in ("sd-study", "gradnorm-study"):  # the budget that ran, from the config
        assert "`pgd` PGD-3 (step " in verdict

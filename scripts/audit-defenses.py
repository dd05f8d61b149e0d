"""Audit both protocols of each randomized defense of a finished demo: the paper's and the adaptive one.

For SD, the sparse encoder and DCS + GSAT, each study's ``paper`` and ``adaptive`` audit columns
(the columns its recipe offers for audit), and for the PGD-AT model the ``standard`` battery, are
audited with one audit profile on the study's own attacked images and eps, with the models the
demo trained. Nothing in the demo folder is changed: each audit writes into ``--out``.

Usage::

    python scripts/audit-defenses.py runs/demo --out runs/demo-audits --profile quick

It prints one Markdown table (the audit table of the demo report, both protocols) and writes it
to ``OUT/audits.md``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

import robustlab
from robustlab.core.markdown import markdown_table
from robustlab.evaluate import run_battery
from robustlab.experiments import STUDIES, study_config
from robustlab.experiments.audits import audit_evaluation, audit_row, audit_summary
from robustlab.experiments.columns import EvalContext, battery_of

# study, variant label, model folder inside the study's run folder
DEFENSES = (("sd-study", "SD", "models/sd/seed0"), ("sparse-study", "Ours", "models/ours/seed0"),
            ("dcs-study", "DCS + GSAT", "models/dcs-gsat/shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, help="a finished demo folder (robustlab demo --out DIR)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profile", default="quick", help="audit profile: demo, quick or full")
    args = ap.parse_args()
    rows = []
    device = torch.device("cpu")
    pgd_at = robustlab.load(args.demo / "pgd-at" / "model.safetensors").eval()
    from robustlab.data import get_info, load_dataset

    info = get_info("fashion-mnist")
    test = load_dataset("fashion-mnist", "test")
    n = json.loads((args.demo / "results.json").read_text())["eval_n"]
    result = run_battery(pgd_at, test, "standard", threat=info.threat, n=n, seed=0, batch_size=100)
    res = audit_evaluation(pgd_at, test, result, "standard", threat=info.threat, profile=args.profile, seed=0,
                           folder=args.out / "pgd-at", name="pgd-at")
    rows.append(audit_row("resnet-mini (pgd-at)", audit_summary(res, "`standard` battery", "pgd-at/audit.md")))
    for name, variant, folder in DEFENSES:
        study = STUDIES.get(name)
        saved = json.loads((args.demo / name / "config.json").read_text())["config"]
        cfg = study_config(study, saved["profile"])
        ignore = ("audit", "audited")
        if {k: v for k, v in cfg.to_dict().items() if k not in ignore} != {k: v for k, v in saved.items() if k not in ignore}:
            raise SystemExit(f"{args.demo / name} did not run the {saved['profile']} profile as it is now; rerun the demo")
        cfg = replace(cfg, audit=args.profile, audited=None)
        plan = study.plan(cfg, None)
        columns = {c.name: c for c in plan.columns}
        model = robustlab.load(args.demo / name / folder / "model.safetensors").eval()
        ctx = EvalContext(cfg.dataset, robustlab.core.ThreatModel(cfg.norm, cfg.eps), cfg.eval_n, cfg.clean_n,
                          cfg.eval_batch_size, device, args.out, columns, lambda *_, m=model: m)
        for audit_col in (c for c in plan.columns if c.kind == "audit"):
            target = columns[audit_col.settings["column"]]
            battery = battery_of(ctx, model, target)
            evaluated = run_battery(model, ctx.eval_set, battery, threat=ctx.threat, n=len(ctx.eval_set),
                                    batch_size=cfg.eval_batch_size, seed=0)
            where = f"{name}/{target.name}"
            res = audit_evaluation(model, ctx.eval_set, evaluated, battery, threat=ctx.threat, profile=args.profile,
                                   seed=0, folder=args.out / where, name=variant, bpda=target.settings.get("bpda"))
            rows.append(audit_row(variant, audit_summary(res, target.header, f"{where}/audit.md")))
            print(rows[-1], flush=True)
    table = markdown_table(rows)
    (args.out / "audits.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

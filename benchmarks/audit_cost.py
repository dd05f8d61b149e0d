"""What an audit costs: ``robustlab.audit`` against the ``standard`` battery on the same images.

One process, one model, the same images, one after the other:

- the named baseline: the ``standard`` battery (AutoAttack standard: APGD-CE, APGD-T, FAB-T,
  Square 5000) evaluated by :func:`robustlab.evaluate.run_battery`;
- the audit of that evaluation (:func:`robustlab.audit.audit` with the evaluation's result handed
  in, so the battery is not run twice): the passive checklist and the binarization test at the
  chosen profile.

It prints seconds per image of each, the audit's parts (checklist, binarization test), and the
ratio audit / battery: the audit is a multiple of one evaluation, and this states the multiple.
Default model: the demo's PGD-AT ``resnet-mini`` (``runs/demo/pgd-at/model.safetensors``).

Usage::

    python benchmarks/audit_cost.py --checkpoint runs/demo/pgd-at/model.safetensors --n 32 --profile quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=here / "runs" / "demo" / "pgd-at" / "model.safetensors")
    ap.add_argument("--n", type=int, default=32, help="test images")
    ap.add_argument("--profile", default="quick", help="audit profile: demo, quick or full")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import robustlab
    from robustlab.audit import audit, audit_settings
    from robustlab.data import as_tensors, get_info, load_dataset
    from robustlab.evaluate import run_battery

    model = robustlab.load(args.checkpoint).eval()
    info = get_info("fashion-mnist")
    test = load_dataset("fashion-mnist", "test", limit=args.n, seed=0)
    x, y = as_tensors(test)
    t0 = time.perf_counter()
    battery = run_battery(model, (x, y), "standard", threat=info.threat, seed=0, batch_size=args.n)
    t_battery = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = audit(model, x, y, threat=info.threat, evaluation="standard", settings=audit_settings(args.profile),
                seed=0, evaluation_result=battery)
    t_audit = time.perf_counter() - t0
    binarization = res.binarization.seconds if res.binarization is not None else 0.0
    out = {
        "images": args.n, "profile": args.profile, "threads": args.threads, "checkpoint": str(args.checkpoint),
        "standard_battery_s_per_image": t_battery / args.n, "audit_s_per_image": t_audit / args.n,
        "checklist_s": res.checklist.seconds, "binarization_s": binarization,
        "binarization_images": None if res.binarization is None else res.binarization.testable + res.binarization.not_testable,
        "ratio_audit_over_standard": t_audit / t_battery, "verdict": res.summary,
    }
    print(json.dumps(out, indent=1))
    print(f"audit ({args.profile}) {t_audit / args.n:.2f} s/image vs standard battery {t_battery / args.n:.2f} s/image: "
          f"ratio {t_audit / t_battery:.2f} (audit on top of the evaluation; the whole is {1 + t_audit / t_battery:.2f}x)")


if __name__ == "__main__":
    main()

"""The cost of the randomized-model verdict rule: the ``rand`` battery before vs after.

One run, one model, the same images: the ``rand`` battery (APGD-CE and APGD-DLR, EOT-20,
100 steps) on a randomized model (default: the demo's stochastic-downsampling model,
``runs/demo/sd-study/models/sd/seed0/model.safetensors``), timed

- with this checkout (the verdict rule of issue #26: every proposal judged against the
  incumbent on ``k`` fresh draws, the final figure on ``k`` new draws), and
- with a named baseline: another checkout of robustlab given by ``--baseline-src`` (its
  ``src`` folder; e.g. a ``git worktree`` of the commit before the rule), run in a child
  interpreter with that ``src`` first on ``sys.path``.

It prints both times, their ratio (target: <= 1.3), both robust accuracies, and the verdict's
share of the forwards (``verdict_passes`` beside the search's). Both use one torch thread per
process unless ``--threads`` says otherwise, one after the other.

Usage::

    git worktree add /tmp/before <commit-before>
    python benchmarks/verdict_cost.py --baseline-src /tmp/before/src --n 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
import robustlab
from robustlab.data import load_dataset
from robustlab.evaluate import run_battery
model = robustlab.load(sys.argv[1]).eval()
test = load_dataset("fashion-mnist", "test")
t0 = time.perf_counter()
from robustlab.core import ThreatModel
res = run_battery(model, test, "rand", n=int(sys.argv[2]), seed=0, batch_size=100,
                  threat=ThreatModel("linf", float(sys.argv[4])))
seconds = time.perf_counter() - t0
fwd = sum(a.forward_passes for a in res.per_attack.values())
print(json.dumps({"seconds": seconds, "robust": res.robust_acc, "clean": res.clean_acc,
                  "search_forwards": fwd, "src": robustlab.__file__}))
"""


def _run(src: Path, checkpoint: Path, n: int, threads: int, eps: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint), str(n), str(threads), str(eps)],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/demo/sd-study/models/sd/seed0/model.safetensors"))
    ap.add_argument("--baseline-src", type=Path, required=True, help="the src folder of the baseline checkout")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eps", type=float, default=4 / 255, help="L-inf radius (the SD study's 4/255)")
    args = ap.parse_args()
    if not args.checkpoint.exists():
        sys.exit(f"no checkpoint at {args.checkpoint}: run `robustlab demo` first or pass --checkpoint")
    if not (args.baseline_src / "robustlab").is_dir():
        sys.exit(f"{args.baseline_src} holds no robustlab package: pass the baseline checkout's src folder")
    base = _run(args.baseline_src, args.checkpoint, args.n, args.threads, args.eps)
    ours = _run(here / "src", args.checkpoint, args.n, args.threads, args.eps)
    print(f"rand battery on {args.checkpoint} ({args.n} images, eps {args.eps:.4g}, {args.threads} thread(s))")
    for name, r in (("baseline", base), ("this checkout", ours)):
        print(f"  {name:14s} {r['seconds']:8.1f} s  clean {100 * r['clean']:.2f}%  robust {100 * r['robust']:.2f}%"
              f"  search forwards {int(r['search_forwards'])}  ({r['src']})")
    print(f"ratio this checkout / baseline: {ours['seconds'] / base['seconds']:.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()

"""AutoAttack ``standard`` under two source trees of robustlab, alternating on the same machine:
is the code slower than it was, and does it still find the same adversarial examples?

Each run is a fresh process with ``PYTHONPATH`` set to one tree's ``src`` (this checkout's, and the
``--before`` tree's, e.g. a ``git worktree`` of an older commit), the same frozen model, the same
``--n`` Fashion-MNIST test images (``load_dataset(..., limit=n)``), ``--threads`` torch threads,
``torch.Generator`` seed 0, and ``AutoAttack(ThreatModel("linf", eps), "standard")`` at the
reference settings (APGD-CE, APGD-T and FAB-T with 9 targets at 100 iterations, Square with 5,000
queries). The runs alternate ABBA (before, now, now, before for ``--repeats 2``) so that the
machine's drift, several percent over ten minutes on the 2-core host, falls on both trees alike.

Printed per run: wall time of ``attack.run``, robust accuracy, forward and backward image passes
and a SHA-256 digest of the per-image success mask; then the ratio of the two trees' mean times
and whether every run judged every image the same.

Usage::

    git worktree add /tmp/before 10060f6
    python benchmarks/aa_trees.py --checkpoint runs/demo/pgd-at/model.safetensors \\
        --before /tmp/before/src --n 150 --repeats 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
NOW = HERE.parents[1] / "src"
sys.path.insert(0, str(HERE.parent))

from _measure import Alternation  # noqa: E402  (the sibling module, found through the line above)


def worker(checkpoint: str, n: int, eps: float, threads: int) -> None:
    """One timed AutoAttack run under whichever tree ``PYTHONPATH`` names; prints one JSON line.
    Uses only API that every tree since the first AutoAttack has: load, load_dataset, ThreatModel,
    AutoAttack(...).run(model, x, y, generator=...) (the model and images as ``speed.py`` loads them)."""
    import torch
    from _measure import load_images, load_model

    import robustlab
    from robustlab.attacks import AutoAttack
    from robustlab.core import ThreatModel

    torch.set_num_threads(threads)
    model = load_model(checkpoint, torch.device("cpu"))
    x, y = load_images(n, torch.device("cpu"))
    attack = AutoAttack(ThreatModel("linf", eps), "standard")
    start = time.perf_counter()
    result = attack.run(model, x, y, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    success = "".join("1" if s else "0" for s in result.success.tolist())
    print(json.dumps({"tree": str(Path(robustlab.__file__).parents[1]), "seconds": round(seconds, 1),
                      "robust": 1 - success.count("1") / n, "success_digest": hashlib.sha256(success.encode()).hexdigest()[:16],
                      "forward": result.forward_passes, "backward": result.backward_passes}))


def run_tree(src: Path, a: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(a.threads)}
    cmd = [sys.executable, str(HERE), "--worker", "--checkpoint", str(a.checkpoint), "--n", str(a.n),
           "--eps", str(a.eps), "--threads", str(a.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the run under {src} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a robustlab checkpoint (.safetensors) of a deterministic model")
    p.add_argument("--before", type=Path, help="the older tree's src folder (required unless --worker)")
    p.add_argument("--n", type=int, default=150, help="test images attacked (default 150)")
    p.add_argument("--eps", type=float, default=0.1, help="L-inf radius (default 0.1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="ABBA pairs of runs per tree (default 2)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(str(a.checkpoint), a.n, a.eps, a.threads)
        return
    if a.before is None or not (a.before / "robustlab" / "__init__.py").is_file():
        raise SystemExit(f"--before must be a tree's src folder holding robustlab/ (got {a.before}); "
                         "make one with: git worktree add /tmp/before <commit>, then --before /tmp/before/src")
    if not a.checkpoint.is_file():
        raise SystemExit(f"no checkpoint at {a.checkpoint}: train one (make demo writes runs/demo/pgd-at/model.safetensors)")
    trees, alternation = {"before": a.before, "now": NOW}, Alternation()
    runs: dict[str, list[dict]] = {"before": [], "now": []}
    for name in [name for _ in range(a.repeats) for name in alternation.order(list(trees))]:
        row = run_tree(trees[name], a)
        runs[name].append(row)
        print(f"{name:6s} {row['seconds']:8.1f} s  robust {100 * row['robust']:.2f}%  forward {row['forward']:,}  "
              f"backward {row['backward']:,}  success {row['success_digest']}", flush=True)
    mean = {k: sum(r["seconds"] for r in v) / len(v) for k, v in runs.items()}
    digests = {r["success_digest"] for v in runs.values() for r in v}
    passes = {(r["forward"], r["backward"]) for v in runs.values() for r in v}
    print(f"\nnow / before: {mean['now'] / mean['before']:.2f}x the time (means {mean['now']:.1f} s / {mean['before']:.1f} s, "
          f"{a.repeats} runs each, ABBA); per-image success {'identical in every run' if len(digests) == 1 else 'DIFFERS between runs'}; "
          f"image passes {'identical' if len(passes) == 1 else 'differ: ' + str(sorted(passes))}")


if __name__ == "__main__":
    main()

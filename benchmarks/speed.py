"""Evaluation speed, side by side: robustlab vs the reference AutoAttack and vs torchattacks on
the same images, same threads, same frozen models (issue #31, item 4; the README's performance
table is this script's final markdown table).

What each row measures (wall time of the whole call, ``time.perf_counter``, CUDA synchronized;
robust accuracy computed the same way for every library from the points it returns):

- ``aa``: AutoAttack ``standard`` (APGD-CE, APGD-T and FAB-T with 9 targets at 100 iterations,
  Square with 5,000 queries) on the PGD-AT model: robustlab's ``AutoAttack(threat, "standard")``
  vs the reference implementation (``run_standard_evaluation`` with one batch of all images,
  seed 0) and vs torchattacks' attacks at the same settings in a ``MultiAttack``. Robust: the
  model classifies the returned point correctly. Also printed: robustlab's per-attack profile
  (samples seen and broken, forward and backward passes, seconds) and the images on which
  robustlab and the reference disagree.
- ``shard``: the same AutoAttack ``standard`` through ``robustlab.evaluate.run_battery`` in
  batches of ``ceil(n / T)`` images (T = ``--threads``): one process with T threads against T
  processes of one thread each under ``torchrun`` (each rank attacks its own batches; the
  per-image results equal one process's at that batch size, checked and printed), wall time of
  each whole command including start-up; compared with the reference's time from the ``aa``
  row. On this 2-core CPU a second intra-op thread adds little to one process, while a second
  process doubles the work done: the way to spend T threads on an evaluation.
- ``eot``: APGD-CE then APGD-DLR, 50 steps each, EOT over 20 draws, one restart, on the SD
  (stochastic downsampling) model and the first ``--eot-n`` images: robustlab's
  ``AutoAttack(threat, "rand", steps=50)`` (exactly these two attacks with ``grad=EOT(20)``,
  checked and printed at run time) vs torchattacks' ``APGD(eot_iter=20)`` pair in a
  ``MultiAttack``. Robust accuracy of a randomized model: per image the fraction of 16 fresh
  forwards (the same seeded draws for both libraries) that classify the returned point
  correctly, averaged; robustlab's own figure (its verdict's, also 16 fresh draws) beside it.
  robustlab's time includes its verdict (clean estimate, comparisons, final estimate);
  torchattacks' has none, and the 16-draw scoring is outside both timings.
- ``pgd``: PGD-20 (step 2.5 eps / 20, random start) on the PGD-AT model: robustlab with its
  default early stop and with ``early_stop=False`` (all 20 steps on every sample, as
  torchattacks does) vs ``torchattacks.PGD``.
- ``rand``: robustlab's ``rand`` battery (APGD-CE and APGD-DLR, 100 steps, EOT-20) on the SD model
  through ``robustlab.evaluate.run_battery`` on ``--rand-n`` images: time, clean and robust
  accuracy, the per-attack profile, and SHA-256 digests of the per-sample results (``p_robust``,
  ``p_clean``, ``p_select``, each attack's seen / broken masks; and the final points' bytes) so
  that runs under two source trees (``PYTHONPATH=/other/tree/src``) can be compared for
  identical per-sample results; ``--baseline`` reads such a run's ``--out`` file and prints the
  time ratio and whether the digests match.

Targets (issue #31): AutoAttack ``standard`` at <= 0.5x the reference's time with the robust
accuracy within 0.5 pp (ideally the same images); EOT-APGD at <= 0.8x torchattacks' time with
equal or lower robust accuracy; the ``rand`` battery faster than before with identical
per-sample results. Settings: PGD-AT resnet-mini, 300 Fashion-MNIST test images, eps 0.1,
2 CPU threads.

Fairness: every library gets the same images and threads, the model in eval mode with its
parameters frozen (``requires_grad_(False)``: nobody pays for weight gradients), fixed seeds
(robustlab: a seeded ``torch.Generator``; the peers: their ``seed=0`` and a seeded global RNG;
the SD model's random layers reseeded before every run), fp32 (TF32 off on a GPU), and a
warm-up forward and backward before any timing. With ``--repeats`` the libraries alternate
(ABBA: the first library of a repeat is the last of the next) and the median is reported;
consecutive comparisons also start with alternating libraries.

The images: the ``--n`` Fashion-MNIST test images ``load_dataset("fashion-mnist", "test",
limit=n)`` keeps (the library's class-balanced subset rule); the EOT and ``rand`` rows take the
first ``--eot-n`` / ``--rand-n`` of them.

Usage::

    python benchmarks/speed.py --checkpoint runs/demo/pgd-at/model.safetensors \\
        --sd-checkpoint runs/demo/sd-study/models/sd/seed0/model.safetensors \\
        --n 300 --eps 0.1 --threads 2 --reference /path/to/auto-attack --out speed.json
    python benchmarks/speed.py ... --only rand --out after.json --baseline before.json
    python benchmarks/speed.py ... --n 8 --eot-n 4 --rand-n 4 --quick   # smoke check only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _speed_peers as peers  # noqa: E402  (the sibling module, found through the line above)
from _measure import Alternation, load_images, load_model  # noqa: E402

import robustlab  # noqa: E402
from robustlab.attacks import APGD, EOT, PGD, AutoAttack  # noqa: E402
from robustlab.core import ThreatModel  # noqa: E402
from robustlab.core.randomness import is_stochastic, seed_stochastic, seeded  # noqa: E402
from robustlab.evaluate import Battery, describe_attack, run_battery  # noqa: E402

MODES = ("aa", "shard", "eot", "pgd", "rand")
SCORE_DRAWS = 16
"""Fresh forwards per image that score a randomized model's robust accuracy (the verdict's k)."""
SCORE_SEED = 9_999
"""Seed of the scoring draws: the same draws for every library's points."""


@dataclass(frozen=True)
class Budget:
    """Iterations and queries of every attack: the issue's, or cut for a smoke check."""

    aa_steps: int = 100
    square_queries: int = 5000
    eot_steps: int = 50
    eot_draws: int = 20
    pgd_steps: int = 20
    rand_steps: int = 100

    @classmethod
    def quick(cls) -> Budget:
        return cls(aa_steps=5, square_queries=100, eot_steps=5, eot_draws=2, pgd_steps=5, rand_steps=5)


@dataclass
class Outcome:
    """What one timed call returned: the points, and the library's own robust figure if any."""

    x_adv: torch.Tensor
    own: float | None = None
    detail: Any = None


@dataclass
class Measured:
    """One library's timed runs of one comparison and the per-image robustness of its points."""

    library: str
    seconds: list[float]
    robust: torch.Tensor
    own: float | None = None
    detail: Any = None

    @property
    def time(self) -> float:
        return statistics.median(self.seconds)

    @property
    def acc(self) -> float:
        return float(self.robust.float().mean())


@dataclass
class Row:
    """A line of the final table: robustlab against one peer (or alone)."""

    comparison: str
    model: str
    images: int
    ours: Measured
    peer: Measured | None = None
    peer_name: str = ""
    skipped: str = ""
    target: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.ours.time / self.peer.time if self.peer is not None else None


def clock(fn: Callable[[], Outcome], device: torch.device) -> tuple[float, Outcome]:
    """Seconds of one call of ``fn`` (CUDA synchronized around it) and what it returned."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


@torch.no_grad()
def p_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """Per image, the fraction of ``draws`` forwards that classify ``x`` as ``y``: the 0/1
    verdict of one forward on a deterministic model; on a randomized one fresh draws, seeded
    alike for every library's points (so differences come from the points, not the draws)."""
    seed_stochastic(model, SCORE_SEED)
    hits = torch.zeros(x.shape[0], device=x.device)
    with seeded(SCORE_SEED):
        for _ in range(draws):
            for lo in range(0, x.shape[0], 512):
                hits[lo : lo + 512] += (model(x[lo : lo + 512]).argmax(dim=1) == y[lo : lo + 512]).float()
    return (hits / draws).cpu()


def measure(
    runners: dict[str, Callable[[], Outcome]], score: Callable[[torch.Tensor], torch.Tensor],
    repeats: int, alternation: Alternation, device: torch.device,
) -> dict[str, Measured]:
    """Time every runner ``repeats`` times in alternating order; score the last run's points."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    last: dict[str, Outcome] = {}
    for _ in range(repeats):
        for name in alternation.order(list(runners)):
            seconds, last[name] = clock(runners[name], device)
            times[name].append(seconds)
            print(f"    {name:28s} {seconds:9.2f} s", flush=True)
    return {name: Measured(name, times[name], score(last[name].x_adv), last[name].own, last[name].detail)
            for name in runners}


@contextlib.contextmanager
def capture_sequences(module: ModuleType) -> Iterator[list[Any]]:
    """Record every :func:`robustlab.attacks.run_sequence` result that ``module`` obtains (its
    stages hold the per-attack profile; its points feed the digest). The call is passed through
    unchanged. A source tree whose ``module`` does not call ``run_sequence`` records nothing."""
    found: list[Any] = []
    original = getattr(module, "run_sequence", None)
    if original is None:
        yield found
        return

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        found.append(out)
        return out

    module.run_sequence = recording  # type: ignore[attr-defined]
    try:
        yield found
    finally:
        module.run_sequence = original  # type: ignore[attr-defined]


def print_stages(labels: list[str], sequence: Any, total: float) -> list[dict[str, Any]]:
    """The per-attack profile of a robustlab sequence (seen, broken, passes, seconds)."""
    rows = []
    print("    | attack | seen | broken | forwards | backwards | seconds | share |")
    print("    |---|---|---|---|---|---|---|")
    spent = 0.0
    for label, stage in zip(labels, sequence.stages, strict=True):
        row: dict[str, Any] = {
            "attack": label, "seen": int(stage.seen.sum()), "broken": int(stage.broken.sum()),
            "forwards": int(stage.forward_passes), "backwards": int(stage.backward_passes),
            "seconds": float(stage.seconds)}
        spent += row["seconds"]
        rows.append(row)
        print(f"    | {label} | {row['seen']} | {row['broken']} | {row['forwards']} | {row['backwards']} | "
              f"{row['seconds']:.2f} | {100 * row['seconds'] / total:.0f}% |")
    print(f"    | outside the attacks (clean estimate, final verdict, checks) | | | | | {total - spent:.2f} | "
          f"{100 * (total - spent) / total:.0f}% |")
    return rows


# --- the comparisons -------------------------------------------------------------------------------
def bench_aa(ctx: Context) -> list[Row]:
    model, x, y, b = ctx.model, ctx.x, ctx.y, ctx.budget
    n = x.shape[0]
    print(f"\n== AutoAttack standard, {n} images ({b.aa_steps} iterations, Square {b.square_queries} queries)")
    ours_attack = AutoAttack(ctx.threat, "standard", steps=b.aa_steps, n_queries=b.square_queries)
    from robustlab.attacks import ensemble

    def ours() -> Outcome:
        with capture_sequences(ensemble) as seqs:
            res = ours_attack.run(model, x, y, generator=ctx.generator(0))
        detail = {"sequence": seqs[-1] if seqs else None, "forwards": res.forward_passes,
                  "backwards": res.backward_passes, "verdict_passes": res.verdict_passes}
        return Outcome(res.x_adv, res.robust_accuracy, detail)

    def ta() -> Outcome:
        with seeded(0):
            adv = peers.torchattacks_autoattack(model, ctx.eps, steps=b.aa_steps, n_queries=b.square_queries)(x, y)
        return Outcome(adv)

    runners: dict[str, Callable[[], Outcome]] = {"robustlab": ours}
    if ctx.reference is not None:
        module = ctx.reference

        def ref() -> Outcome:
            with seeded(0):
                attack = peers.reference_autoattack(module, model, ctx.eps, str(ctx.device), steps=b.aa_steps,
                                                    n_queries=b.square_queries)
                return Outcome(attack.run_standard_evaluation(x, y, bs=n))

        runners["reference AutoAttack"] = ref
    else:
        print(f"    reference AutoAttack skipped: {ctx.reference_reason}")
    if ctx.aa_torchattacks:
        runners["torchattacks"] = ta
    else:
        print("    torchattacks' AutoAttack skipped (--no-aa-torchattacks)")
    got = measure(runners, lambda adv: p_correct(model, adv, y, 1), ctx.repeats, ctx.alternation, ctx.device)
    mine = got["robustlab"]
    ctx.measured.update({f"aa {name}": m for name, m in got.items()})
    detail = mine.detail or {}
    print(f"    robustlab passes: {detail.get('forwards')} forwards, {detail.get('backwards')} backwards "
          f"(search), {detail.get('verdict_passes')} verdict forwards")
    if detail.get("sequence") is not None:
        ctx.stages["aa"] = print_stages(["apgd-ce", "apgd-t", "fab-t", "square"], detail["sequence"], mine.time)
    if mine.own is not None and abs(mine.own - mine.acc) > 1e-9:
        print(f"    note: robustlab's own figure {mine.own:.4f} differs from the recount {mine.acc:.4f}")
    rows = []
    title = "AutoAttack standard"
    target = "<= 0.5x, acc within 0.5 pp"
    if "reference AutoAttack" in got:
        ref_m = got["reference AutoAttack"]
        differ = int((mine.robust != ref_m.robust).sum())
        row = Row(title, "PGD-AT", n, mine, ref_m, "reference AutoAttack", target=target,
                  notes=[f"{differ} of {n} images judged differently"])
        row.met = bool(row.ratio is not None and row.ratio <= 0.5 and abs(mine.acc - ref_m.acc) <= 0.005)
        rows.append(row)
    else:
        rows.append(Row(title, "PGD-AT", n, mine, None, "reference AutoAttack", skipped=ctx.reference_reason,
                        target=target))
    if "torchattacks" in got:
        rows.append(Row(title, "PGD-AT", n, mine, got["torchattacks"], "torchattacks (MultiAttack)"))
    return rows


def bench_shard(ctx: Context) -> list[Row]:
    """AutoAttack standard through ``run_battery`` in batches of ``ceil(n / K)`` images, K = the
    threads: one process with K threads against K processes of one thread each (``torchrun``,
    each rank attacking its own batches; per-image results equal one process's at this batch
    size). Wall time of each whole command, start-up and model loading included."""
    n, ranks = ctx.x.shape[0], ctx.threads
    if ranks < 2 or ctx.device.type != "cpu":
        print("\n== sharded AutoAttack skipped: it needs --threads >= 2 on the CPU (one process per thread)")
        return []
    bs = -(-n // ranks)
    print(f"\n== AutoAttack standard through run_battery, {n} images in batches of {bs}: 1 process x {ranks} "
          f"threads vs {ranks} processes x 1 thread (torchrun)")
    script = str(Path(__file__).with_name("_speed_shard.py"))
    out: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ctx.alternation.order(["1 process", f"{ranks} ranks"]):
            target = Path(tmp) / f"{name.replace(' ', '-')}.json"
            args = [script, "--checkpoint", ctx.checkpoint, "--images", str(n), "--eps", str(ctx.eps),
                    "--batch-size", str(bs), "--out", str(target)]
            if name == "1 process":
                cmd, threads = [sys.executable, *args], ranks
            else:
                cmd, threads = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                "--nproc_per_node", str(ranks), *args], 1
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
            wall = time.perf_counter() - start
            got = json.loads(target.read_text())
            print(f"    {name:28s} {wall:9.2f} s (run_battery {got['seconds']:.2f} s)  robust {got['robust_acc']:.4f}",
                  flush=True)
            out[name] = Measured(name, [wall], torch.tensor(got["p_robust"]) >= 0.5, got["robust_acc"])
    one, many = out["1 process"], out[f"{ranks} ranks"]
    same = bool(torch.equal(one.robust, many.robust))
    print(f"    per-image results identical: {same}")
    rows = [Row("AutoAttack standard, sharded", "PGD-AT", n, many, one, f"1 process x {ranks} threads",
                notes=[f"per-image results identical: {same}", f"batches of {bs}"])]
    ref = ctx.measured.get("aa reference AutoAttack")
    if ref is not None:
        row = Row("AutoAttack standard, sharded", "PGD-AT", n, many, ref, "reference AutoAttack",
                  target="<= 0.5x, acc within 0.5 pp",
                  notes=[f"{ranks} processes x 1 thread against the reference at {ranks} threads"])
        row.met = bool(row.ratio is not None and row.ratio <= 0.5 and abs(many.acc - ref.acc) <= 0.005)
        rows.append(row)
    return rows


def bench_eot(ctx: Context) -> list[Row]:
    model, b = ctx.sd_model, ctx.budget
    x, y = ctx.x[: ctx.eot_n], ctx.y[: ctx.eot_n]
    n = x.shape[0]
    print(f"\n== EOT-APGD (CE then DLR, {b.eot_steps} steps, EOT-{b.eot_draws}, 1 restart) on the SD model, "
          f"{n} images")
    ours_attack = AutoAttack(ctx.threat, "rand", steps=b.eot_steps, eot=b.eot_draws)
    # what robustlab runs, checked: APGD-CE and APGD-DLR with EOT over eot_draws draws, one restart
    configs = [describe_attack(a) for a in ours_attack.attacks]
    for c in configs:
        grad = c.get("grad", {})
        print(f"    robustlab runs {c['class']} loss={c.get('loss')} steps={c.get('steps')} "
              f"restarts={c.get('restarts')} grad={grad.get('type')}(n={grad.get('n')})")
    expected = [("ce", b.eot_steps), ("dlr", b.eot_steps)]
    actual = [(c.get("loss"), c.get("steps")) for c in configs]
    notes = []
    if actual != expected or any(c.get("grad", {}).get("n") != b.eot_draws or c.get("restarts") != 1
                                 for c in configs):
        notes.append(f"robustlab's 'rand' AutoAttack is not APGD-CE + APGD-DLR EOT-{b.eot_draws}: {actual}")
        print(f"    WARNING: {notes[-1]}")
    from robustlab.attacks import ensemble

    def ours() -> Outcome:
        seed_stochastic(model, 0)
        with seeded(0), capture_sequences(ensemble) as seqs:
            res = ours_attack.run(model, x, y, generator=ctx.generator(0))
        return Outcome(res.x_adv, res.robust_accuracy, {"sequence": seqs[-1] if seqs else None})

    def ta() -> Outcome:
        seed_stochastic(model, 0)
        with seeded(0):
            return Outcome(peers.torchattacks_eot_apgd(model, ctx.eps, steps=b.eot_steps, eot=b.eot_draws)(x, y))

    got = measure({"robustlab": ours, "torchattacks": ta}, lambda adv: p_correct(model, adv, y, SCORE_DRAWS),
                  ctx.repeats, ctx.alternation, ctx.device)
    mine, theirs = got["robustlab"], got["torchattacks"]
    if (mine.detail or {}).get("sequence") is not None:
        ctx.stages["eot"] = print_stages(["apgd-ce-eot", "apgd-dlr-eot"], mine.detail["sequence"], mine.time)
    notes.append(f"robustlab's own verdict figure {mine.own:.4f}")
    row = Row(f"EOT-{b.eot_draws} APGD-CE+DLR, {b.eot_steps} steps", "SD", n, mine, theirs, "torchattacks",
              target="<= 0.8x, acc <= peer's", notes=notes)
    row.met = bool(row.ratio is not None and row.ratio <= 0.8 and mine.acc <= theirs.acc)
    return [row]


def bench_pgd(ctx: Context) -> list[Row]:
    model, x, y, steps = ctx.model, ctx.x, ctx.y, ctx.budget.pgd_steps
    n = x.shape[0]
    print(f"\n== PGD-{steps} (step 2.5 eps / {steps}, random start), {n} images")
    step = 2.5 * ctx.eps / steps
    early = PGD(ctx.threat, steps=steps, step_size=step)
    full = PGD(ctx.threat, steps=steps, step_size=step, early_stop=False)

    def ours(attack: PGD) -> Callable[[], Outcome]:
        def run() -> Outcome:
            res = attack.run(model, x, y, generator=ctx.generator(0))
            return Outcome(res.x_adv, res.robust_accuracy)
        return run

    def ta() -> Outcome:
        with seeded(0):
            return Outcome(peers.torchattacks_pgd(model, ctx.eps, steps=steps)(x, y))

    got = measure({"robustlab": ours(early), "robustlab early_stop=False": ours(full), "torchattacks": ta},
                  lambda adv: p_correct(model, adv, y, 1), ctx.repeats, ctx.alternation, ctx.device)
    theirs = got["torchattacks"]
    rows = [Row(f"PGD-{steps} (early stop)", "PGD-AT", n, got["robustlab"], theirs, "torchattacks"),
            Row(f"PGD-{steps} (early_stop=False)", "PGD-AT", n, got["robustlab early_stop=False"], theirs,
                "torchattacks", target="<= 1.0")]
    rows[1].met = bool(rows[1].ratio is not None and rows[1].ratio <= 1.0)
    return rows


def digests(result: Any, points: torch.Tensor | None) -> dict[str, str]:
    """SHA-256 of a battery's per-sample results and, when captured, of its final points."""
    h = hashlib.sha256()
    for name in ("p_robust", "p_clean", "p_select"):
        h.update(getattr(result, name).double().contiguous().numpy().tobytes())
    for label in result.per_attack:
        h.update(label.encode())
        h.update(result.seen[label].to(torch.uint8).contiguous().numpy().tobytes())
        h.update(result.success[label].to(torch.uint8).contiguous().numpy().tobytes())
    out = {"per_sample": h.hexdigest()}
    if points is not None:
        out["points"] = hashlib.sha256(points.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()
    return out


def bench_rand(ctx: Context) -> dict[str, Any]:
    model, b = ctx.sd_model, ctx.budget
    x, y = ctx.x[: ctx.rand_n], ctx.y[: ctx.rand_n]
    n = x.shape[0]
    if b == Budget():
        battery: Battery | str = "rand"
        what = "the 'rand' battery"
    else:  # the rand battery's attacks with the smoke budget
        battery = Battery([APGD(ctx.threat, b.rand_steps, loss=loss, grad=EOT(b.eot_draws))
                           for loss in ("ce", "dlr")], name="rand-quick", labels=["apgd-ce-eot", "apgd-dlr-eot"])
        what = f"the 'rand' battery's attacks at {b.rand_steps} steps, EOT-{b.eot_draws} (--quick)"
    print(f"\n== robustlab {what} through run_battery on the SD model, {n} images")
    from robustlab.evaluate import job

    def run() -> Outcome:
        seed_stochastic(model, 0)
        with seeded(0):
            return Outcome(x, detail=run_battery(model, (x, y), battery, threat=ctx.threat, seed=0))

    seconds: list[float] = []
    found: list[dict[str, str]] = []
    for _ in range(ctx.repeats):
        with capture_sequences(job) as seqs:
            t, out = clock(run, ctx.device)
        result = out.detail
        points = torch.cat([s.x_adv for s in seqs[-_batches(n):]]) if seqs else None
        seconds.append(t)
        found.append(digests(result, points))
        print(f"    run {len(seconds)}: {t:9.2f} s  digest {found[-1]['per_sample'][:16]}", flush=True)
    same = all(d == found[0] for d in found)
    p_robust = result.p_robust[0].tolist()
    print(f"    clean {100 * result.clean_acc:.2f}%, robust {100 * result.robust_acc:.2f}%, "
          f"median {statistics.median(seconds):.2f} s over {len(seconds)} run(s)"
          + ("" if len(seconds) == 1 else f"; repeats identical: {same}"))
    print("    | attack | seen | broken | forwards | backwards | seconds |")
    print("    |---|---|---|---|---|---|")
    profile = []
    for label, s in result.per_attack.items():
        profile.append({"attack": label, "seen": s.seen, "broken": s.broken, "forwards": s.forward_passes,
                        "backwards": s.backward_passes, "seconds": s.seconds})
        print(f"    | {label} | {s.seen} | {s.broken} | {s.forward_passes} | {s.backward_passes} | {s.seconds:.2f} |")
    for key, value in found[-1].items():
        print(f"    digest {key}: {value}")
    if "points" not in found[-1]:
        print("    (the final points were not captured: this source tree's job module calls no run_sequence)")
    return {"images": n, "battery": what, "seconds": seconds, "clean_acc": result.clean_acc,
            "robust_acc": result.robust_acc, "p_robust": p_robust, "digests": found[-1],
            "repeats_identical": same, "profile": profile}


def _batches(n: int, batch_size: int = 256) -> int:
    return -(-n // batch_size)


# --- set-up and report -----------------------------------------------------------------------------
@dataclass
class Context:
    """Everything the comparisons share."""

    model: nn.Module
    sd_model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    threat: ThreatModel
    device: torch.device
    budget: Budget
    repeats: int
    eot_n: int
    rand_n: int
    reference: Any
    reference_reason: str
    alternation: Alternation = field(default_factory=Alternation)
    stages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    measured: dict[str, Measured] = field(default_factory=dict)
    checkpoint: str = ""
    threads: int = 1
    aa_torchattacks: bool = True

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


def fp32_only(device: torch.device) -> None:
    """TF32 off on a GPU, for every library alike (attacks need fp32 gradients)."""
    if device.type != "cuda":
        return
    backends: Any = torch.backends
    if hasattr(backends, "fp32_precision"):
        backends.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def warm_up(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """A forward and an input-gradient backward, so no library pays for first-call set-up."""
    for _ in range(2):
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xx), y), xx)


def fmt_ratio(row: Row) -> str:
    return f"{row.ratio:.2f}x" if row.ratio is not None else "—"


def report(rows: list[Row], rand: dict[str, Any] | None, baseline: dict[str, Any] | None, quick: bool) -> None:
    print("\n== Summary (seconds: median over repeats; robust accuracy computed alike for every library)")
    for row in rows:
        if row.skipped:
            print(f"  {row.comparison} vs {row.peer_name}: skipped ({row.skipped})")
            continue
        assert row.peer is not None
        met = "" if row.met is None else f"  target {row.target}: {'met' if row.met else 'NOT met'}"
        print(f"  {row.comparison} [{row.model}, {row.images} images] robustlab {row.ours.time:.2f} s "
              f"({100 * row.ours.acc:.2f}%) vs {row.peer_name} {row.peer.time:.2f} s ({100 * row.peer.acc:.2f}%): "
              f"ratio {fmt_ratio(row)}, gap {100 * (row.ours.acc - row.peer.acc):+.2f} pp{met}")
        for note in row.notes:
            print(f"      {note}")
    if quick:
        print("  (--quick: cut budgets, a smoke check; the targets apply to the full settings only)")
    print("\n| comparison | model | images | robustlab (s) | peer | peer (s) | robustlab / peer | "
          "robustlab robust acc | peer robust acc | target | met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row.skipped:
            print(f"| {row.comparison} | {row.model} | {row.images} | {row.ours.time:.1f} | {row.peer_name} | "
                  f"skipped | — | {100 * row.ours.acc:.2f}% | — | {row.target or '—'} | — |")
            continue
        assert row.peer is not None
        met = "—" if row.met is None else ("yes" if row.met else "no")
        print(f"| {row.comparison} | {row.model} | {row.images} | {row.ours.time:.1f} | {row.peer_name} | "
              f"{row.peer.time:.1f} | {fmt_ratio(row)} | {100 * row.ours.acc:.2f}% | {100 * row.peer.acc:.2f}% | "
              f"{row.target or '—'} | {met} |")
    if rand is not None:
        before = (baseline or {}).get("rand")
        t = statistics.median(rand["seconds"])
        if before:
            t0 = statistics.median(before["seconds"])
            same = before.get("digests") == rand["digests"]
            print(f"| rand battery (run_battery) | SD | {rand['images']} | {t:.1f} | robustlab before | {t0:.1f} | "
                  f"{t / t0:.2f}x | {100 * rand['robust_acc']:.2f}% | {100 * before['robust_acc']:.2f}% | "
                  f"faster, same per-sample results | {'yes' if same and t < t0 else 'no'} |")
            print(f"\nrand battery vs the baseline: {t / t0:.2f}x its time; per-sample digests "
                  + ("identical" if same else f"DIFFER: {before.get('digests')} vs {rand['digests']}"))
            settings = ("rand_n", "quick", "eps", "threads", "device", "n")
            changed = [k for k in settings if (baseline or {}).get("settings", {}).get(k) != rand["settings"].get(k)]
            if changed:
                print(f"warning: the baseline ran with other settings ({', '.join(changed)}): not comparable")
        else:
            print(f"| rand battery (run_battery) | SD | {rand['images']} | {t:.1f} | — | — | — | "
                  f"{100 * rand['robust_acc']:.2f}% | — | — | — |")


def to_json(m: Measured) -> dict[str, Any]:
    return {"library": m.library, "seconds": m.seconds, "median_seconds": m.time, "robust_acc": m.acc,
            "own_robust_acc": m.own, "robust": [float(v) for v in m.robust.tolist()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="robustlab checkpoint of the PGD-AT model")
    p.add_argument("--sd-checkpoint", help="robustlab checkpoint of the SD model (eot and rand rows)")
    p.add_argument("--n", type=int, default=300, help="images of the aa and pgd rows")
    p.add_argument("--eot-n", type=int, default=100, help="images of the eot row (the first of --n)")
    p.add_argument("--rand-n", type=int, default=32, help="images of the rand row (the first of --n)")
    p.add_argument("--eps", type=float, default=0.1, help="L-inf radius")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for every library")
    p.add_argument("--reference", help="root of a fra31/auto-attack snapshot (the folder holding autoattack/)")
    p.add_argument("--only", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=1, help="timed runs per library, alternating (ABBA)")
    p.add_argument("--quick", action="store_true",
                   help="smoke check: 5 iterations, 100 Square queries, EOT-2 (not the targets' settings)")
    p.add_argument("--out", type=Path, help="write settings, times, per-image results and digests here (JSON)")
    p.add_argument("--peers-first", action="store_true",
                   help="start the alternation with the peers (robustlab runs first otherwise)")
    p.add_argument("--no-aa-torchattacks", action="store_true",
                   help="leave torchattacks out of the aa row (its slowest run; the eot and pgd rows keep it)")
    p.add_argument("--baseline", type=Path, help="an earlier --out file: print the rand row's ratio to it")
    a = p.parse_args()

    modes = [m.strip() for m in a.only.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown --only entries {unknown}; use a comma-separated subset of {','.join(MODES)}")
    if {"eot", "rand"} & set(modes) and not a.sd_checkpoint:
        p.error("the eot and rand rows need --sd-checkpoint (or leave them out with --only aa,pgd)")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device; use --device cpu")
    if min(a.n, a.eot_n, a.rand_n, a.repeats, a.threads) < 1:
        p.error("--n, --eot-n, --rand-n, --repeats and --threads must be >= 1")
    if max(a.eot_n, a.rand_n) > a.n:  # they take the first images of --n
        print(f"note: --eot-n {a.eot_n} and --rand-n {a.rand_n} capped at --n {a.n}")
        a.eot_n, a.rand_n = min(a.eot_n, a.n), min(a.rand_n, a.n)
    baseline = json.loads(a.baseline.read_text()) if a.baseline else None

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    fp32_only(device)
    budget = Budget.quick() if a.quick else Budget()
    reference, reason = peers.load_reference(a.reference) if "aa" in modes else (None, "not run")
    model = load_model(a.checkpoint, device)
    sd_model = load_model(a.sd_checkpoint, device) if a.sd_checkpoint else model
    x, y = load_images(a.n, device)
    if a.sd_checkpoint and not is_stochastic(sd_model):
        print(f"note: {a.sd_checkpoint} has no active random layer; the EOT rows then measure a deterministic model")
    warm_up(model, x[:8], y[:8])
    warm_up(sd_model, x[:8], y[:8])
    import torchattacks

    print(f"robustlab {robustlab.__version__} from {Path(robustlab.__file__).parent}")
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, python {platform.python_version()}, "
          f"{a.device}, {torch.get_num_threads()} threads")
    print(f"reference AutoAttack: {reason if reference is None else 'from ' + reason}")
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"{a.n} Fashion-MNIST test images, L-inf eps {a.eps}; PGD-AT model clean accuracy {100 * clean:.2f}%"
          + (" (--quick budgets)" if a.quick else ""))
    ctx = Context(model, sd_model, x, y, a.eps, ThreatModel("linf", a.eps), device, budget, a.repeats,
                  a.eot_n, a.rand_n, reference, reason, checkpoint=str(a.checkpoint), threads=a.threads,
                  aa_torchattacks=not a.no_aa_torchattacks, alternation=Alternation(1 if a.peers_first else 0))
    rows: list[Row] = []
    if "aa" in modes:
        rows += bench_aa(ctx)
    if "shard" in modes:
        if a.quick:
            print("\n== sharded AutoAttack skipped under --quick (it runs the full standard battery)")
        else:
            rows += bench_shard(ctx)
    if "eot" in modes:
        rows += bench_eot(ctx)
    if "pgd" in modes:
        rows += bench_pgd(ctx)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    rand = bench_rand(ctx) if "rand" in modes else None
    if rand is not None:
        rand["settings"] = settings
    report(rows, rand, baseline, a.quick)

    if a.out:
        out = {
            "settings": settings,
            "budget": dataclasses.asdict(budget),
            "environment": {"robustlab": robustlab.__version__, "robustlab_path": str(Path(robustlab.__file__).parent),
                            "torch": torch.__version__, "torchattacks": torchattacks.__version__,
                            "python": platform.python_version(), "threads": torch.get_num_threads(),
                            "device": a.device, "reference": reason},
            "rows": [{"comparison": r.comparison, "model": r.model, "images": r.images, "peer_name": r.peer_name,
                      "robustlab": to_json(r.ours), "peer": to_json(r.peer) if r.peer is not None else None,
                      "ratio": r.ratio, "skipped": r.skipped, "target": r.target, "met": r.met, "notes": r.notes}
                     for r in rows],
            "stages": ctx.stages,
            "rand": rand,
        }
        a.out.write_text(json.dumps(out, indent=1))
        print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()

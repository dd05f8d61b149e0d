"""The script ``torchrun --nproc_per_node 2`` runs for tests/evaluate/test_sharded.py (gloo, CPU).

One launch does every multi-rank check, in order:

1. ``deterministic``: a tiny CNN under FGSM + PGD + PGD-CW, 52 images in 7 batches of 8 (shards
   of 4 and 3 batches, the last batch short);
2. ``detected``: the CNN behind Gaussian noise drawn from the global generator (randomness
   found by two forwards, not declared), 20 images in 3 batches; every rank's global generator
   is seeded differently first;
   ``frozen``: the stochastic-downsampling CNN inside ``frozen`` (one inference path);
   ``late``: a toy random only near its decision boundary, which makes every rank start over
   under the randomized rule;
   ``randomized``: the same CNN with stochastic downsampling under FGSM + EOT-PGD, 2 repeats,
   ensembles of 2, 28 images in 4 batches (the last of 4);
3. ``interrupted``: the randomized case with a state folder, every rank stopped by Ctrl-C
   (``KeyboardInterrupt``) right after the first attack of its second batch (saved mid-batch);
   rank 0 then copies the folder (the test resumes the copy in one process), and
4. ``resumed``: the same call again, on 2 ranks, resuming from the folder;
5. the ``robustlab evaluate`` command on the checkpoint the test saved (:data:`CLI_ARGS`).

In ``die`` mode rank 1 leaves right after joining the process group and rank 0 runs the command,
which must fail at its first collective with a clear error and write no ledger row.

Every rank writes what it returned under ``OUT/rank<r>/`` (masks and per-sample probabilities as
safetensors, numbers and progress events as JSON; never pickle). The models and batteries are
built here from fixed seeds, identically on every rank and in the test's own one-process run.

Usage: ``python -m torch.distributed.run --nproc_per_node 2 dist_eval_worker.py checks|die OUT CHECKPOINT``
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from robustlab.attacks import EOT, FGSM, PGD
from robustlab.core import ThreatModel
from robustlab.core.distributed import current_world
from robustlab.core.randomness import frozen, seeded
from robustlab.defenses import convert_downsampling
from robustlab.evaluate import Battery, EvalResult, ProgressEvent, run_battery

CLI_ARGS = ["--n", "24", "--batch-size", "8", "--eps", "0.03", "--seed", "1", "--device", "cpu"]
"""The options of the ``robustlab evaluate`` runs (3 batches: shards of 2 and 1)."""


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A strided conv, a 3x3 conv and a linear head on 1x8x8 images, 3 classes, from ``seed``."""
    with seeded(seed):
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64, 3),
        ).eval()


def toy_images(model: nn.Module, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random images labelled by ``model``'s clean prediction, every fifth label shifted."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 3
    return x, y


def deterministic_case() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], Battery, dict[str, Any]]:
    model = tiny_cnn(0)
    t = ThreatModel("linf", 0.05)
    battery = Battery([FGSM(t), PGD(t, steps=4), PGD(t, steps=3, loss="cw")])
    return model, toy_images(model, 52, seed=1), battery, {"batch_size": 8, "seed": 5}


def randomized_case() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], Battery, dict[str, Any]]:
    model = convert_downsampling(tiny_cnn(0), "sd", spp=2).eval()
    t = ThreatModel("linf", 0.15)
    battery = Battery([FGSM(t), PGD(t, steps=3, grad=EOT(n=2))])
    return model, toy_images(tiny_cnn(0), 28, seed=2), battery, {
        "batch_size": 8, "seed": 3, "repeats": 2, "ensemble": 2, "draws": 4}


class GlobalNoise(nn.Module):
    """Gaussian input noise drawn from the global generator (``torch.randn_like``), outside the
    randomness protocol: run_battery finds it by two forwards that differ (``"detected"``)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x)


def detected_case() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], Battery, dict[str, Any]]:
    model = nn.Sequential(GlobalNoise(0.2), tiny_cnn(0)).eval()
    t = ThreatModel("linf", 0.1)
    battery = Battery([FGSM(t), PGD(t, steps=3)])
    return model, toy_images(tiny_cnn(0), 20, seed=3), battery, {"batch_size": 8, "seed": 3, "draws": 4}


def frozen_case() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], Battery, dict[str, Any]]:
    """Stochastic downsampling evaluated as one fixed inference path (run inside ``frozen``)."""
    t = ThreatModel("linf", 0.1)
    return (convert_downsampling(tiny_cnn(0), "sd", spp=1).eval(), toy_images(tiny_cnn(0), 40, seed=4),
            Battery([FGSM(t), PGD(t, steps=3)]), {"batch_size": 8, "seed": 3})


def late_case() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], Battery, dict[str, Any]]:
    """A toy random only near its decision boundary (randomized_toys.BoundaryNoise): the clean
    probe finds it deterministic, PGD's points show the randomness, and the run starts over
    under the randomized rule (``late_randomness``)."""
    from randomized_toys import EPS, BoundaryNoise, labels
    from randomized_toys import toy_images as boundary_images

    x = boundary_images(24, 0, BoundaryNoise.pixels)
    return BoundaryNoise().eval(), (x, labels(24)), Battery([PGD(ThreatModel("linf", EPS), steps=5)]), {
        "batch_size": 8, "seed": 2, "draws": 4}


def write(folder: Path, name: str, result: EvalResult, events: list[ProgressEvent] | None = None) -> None:
    """``result`` as ``name.json`` (its JSON form, and the progress events) and
    ``name.safetensors`` (its masks and per-sample probabilities)."""
    tensors = {"clean_correct": result.clean_correct, "robust": result.robust, "p_clean": result.p_clean,
               "p_robust": result.p_robust, "p_select": result.p_select}
    for label in result.per_attack:
        tensors[f"success.{label}"] = result.success[label]
        tensors[f"seen.{label}"] = result.seen[label]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{name}.safetensors"))
    record = {"result": result.to_dict(),
              "events": [[e.kind, e.completed, e.total, e.repeat, e.batch, e.attack, e.ranks] for e in events or []]}
    (folder / f"{name}.json").write_text(json.dumps(record))


def interrupt_in_second_batch(events: list[ProgressEvent]) -> Any:
    """A progress callback that records events and presses Ctrl-C after the first attack of
    this rank's second batch (the state was saved just before: ``save_interval=0``)."""

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "attack" and sum(e.kind == "batch" for e in events) == 1:
            raise KeyboardInterrupt

    return progress


def main(out: Path, checkpoint: Path) -> None:
    world = current_world()
    assert world.size == 2, f"expected 2 ranks, got {world.size}"
    mine = out / f"rank{world.rank}"
    mine.mkdir(parents=True, exist_ok=True)

    model, data, battery, kw = deterministic_case()
    events: list[ProgressEvent] = []
    write(mine, "deterministic", run_battery(model, data, battery, progress=events.append, **kw), events)

    model, data, battery, kw = detected_case()
    torch.manual_seed(100 + world.rank)  # the ranks' global generators differ: the result must not
    write(mine, "detected", run_battery(model, data, battery, **kw))

    model, data, battery, kw = frozen_case()
    with frozen(model):
        write(mine, "frozen", run_battery(model, data, battery, **kw))

    model, data, battery, kw = late_case()
    events = []
    write(mine, "late", run_battery(model, data, battery, progress=events.append, **kw), events)

    model, data, battery, kw = randomized_case()
    events = []
    write(mine, "randomized", run_battery(model, data, battery, progress=events.append, **kw), events)

    state = out / "state"
    events = []
    try:
        run_battery(model, data, battery, state_dir=state, save_interval=0,
                    progress=interrupt_in_second_batch(events), **kw)
        raise AssertionError("the interrupt did not stop the run")
    except KeyboardInterrupt:
        pass
    (mine / "interrupted.json").write_text(json.dumps(
        [[e.kind, e.completed, e.total, e.repeat, e.batch, e.attack] for e in events]))
    world.barrier()  # every rank has saved its shard
    if world.main:
        shutil.copytree(state, out / "state-copy")
    world.barrier()
    events = []
    resumed = run_battery(model, data, battery, state_dir=state, progress=events.append, world=world, **kw)
    write(mine, "resumed", resumed, events)

    code = evaluate_command(out, checkpoint)
    assert code in (None, 0), f"robustlab evaluate returned {code}"
    (mine / "done").write_text("ok")


def evaluate_command(out: Path, checkpoint: Path) -> Any:
    """``robustlab evaluate CHECKPOINT`` with :data:`CLI_ARGS`, its ledger and state under ``out``."""
    from robustlab.cli import app

    return app(["evaluate", str(checkpoint), *CLI_ARGS, "--ledger", str(out / "ledger.sqlite"),
                "--state-dir", str(out / "cli-state")], standalone_mode=False)


def die(out: Path, checkpoint: Path) -> None:
    world = current_world()
    if world.rank == 1:
        os._exit(0)  # gone without a word (exit code 0, so torchrun does not stop rank 0 itself)
    code = evaluate_command(out, checkpoint)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    # run the builders under their module name, as the test imports them: a layer's class path
    # is part of the model's behaviour fingerprint (``__main__.GlobalNoise`` would differ)
    import dist_eval_worker

    {"checks": dist_eval_worker.main, "die": dist_eval_worker.die}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))

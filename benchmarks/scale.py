"""Scaling out on one machine: several processes against one, same work, same results.

``python benchmarks/scale.py [--study gradnorm-study] [--n 200] [--skip-study] [--skip-battery]
[--skip-train]`` measures three things, each against a named baseline in the same run, and checks
that the parallel result equals the serial one:

1. **a study** (``robustlab run STUDY --profile quick``, the CLI a user runs) serial with torch's
   threads at the machine's cores (the baseline: what ``robustlab run`` does by default), serial
   at 1 thread, and ``--executor processes`` with one worker per core at 1 thread each; prints
   the wall times, the speed-up over each serial run and its ratio to the ideal (cores x), and
   whether every record equals the 1-thread serial run's field by field (timings excluded: the
   executors promise bit-equal results at the same threads per process);
2. **a battery**: ``run_battery`` in one process at all cores (baseline) and at 1 thread, against
   ``torchrun --nproc_per_node <cores>`` at 1 thread per rank, on a small trained ``resnet-mini``
   (``quick`` battery) and on its stochastic-downsampling conversion (``rand`` battery, EOT);
   the sharded result must equal the one-process result exactly;
3. **training**: one epoch of cross-entropy ``Trainer.fit`` in one process against torchrun at the
   same global batch, with synchronized and with per-rank batch norm; the largest weight
   difference against one process at 1 thread is printed beside the difference that the thread
   count alone makes (float summation order, amplified by an epoch of SGD).

On a GPU machine pass ``--device cuda`` (the battery and training parts then use one GPU per
rank). Every number printed is measured in this run; nothing is read from earlier runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_threads(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def timed_run(cmd: list[str], threads: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env_threads(threads), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k and k not in ("versions", "time")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def records_of(folder: Path) -> dict[str, Any]:
    return {str(p.relative_to(folder)): without_timings(json.loads(p.read_text()))
            for p in sorted((folder / "records").rglob("*.json"))}


def speedup_line(name: str, base: float, new: float, ideal: int) -> str:
    s = base / new
    return f"  speed-up over {name}: {s:.2f}x (ideal {ideal}x; {s / ideal:.2f} of ideal)"


# --------------------------------------------------------------------------------------------
# 1. a study


def study_part(study: str, cores: int, work: Path, device: str) -> None:
    base = [sys.executable, "-m", "robustlab", "run", study, "--profile", "quick", "--device", device]
    runs = {
        f"serial, {cores} threads (baseline)": (base + ["--out", str(work / "serial-all")], cores),
        "serial, 1 thread": (base + ["--out", str(work / "serial-1")], 1),
        f"processes, {cores} workers x 1 thread": (
            base + ["--out", str(work / "processes"), "--executor", "processes", "--workers", str(cores),
                    "--threads", "1"], 1),
    }
    seconds = {}
    for name, (cmd, threads) in runs.items():
        seconds[name] = timed_run(cmd, threads)
        print(f"  {name}: {seconds[name]:.1f} s", flush=True)
    names = list(runs)
    print(speedup_line(names[0], seconds[names[0]], seconds[names[2]], cores))
    print(speedup_line(names[1], seconds[names[1]], seconds[names[2]], cores))
    serial, parallel = records_of(work / "serial-1"), records_of(work / "processes")
    same = serial == parallel and len(serial) > 0
    diff = sorted(k for k in set(serial) | set(parallel) if serial.get(k) != parallel.get(k))
    print(f"  records equal to the 1-thread serial run's: {same} ({len(serial)} records"
          + (f"; differ: {diff[:5]}" if diff else "") + ")")


# --------------------------------------------------------------------------------------------
# 2. a battery (and 3. training): this script is also the worker torchrun runs


def small_model(path: Path, images: int) -> None:
    """Train a resnet-mini one epoch on ``images`` Fashion-MNIST images and save it."""
    import robustlab
    from robustlab.data import get_info, load_dataset
    from robustlab.models import create_model
    from robustlab.train import TrainConfig, Trainer, create_objective

    info = get_info("fashion-mnist")
    model = create_model("resnet-mini", num_classes=info.num_classes, in_channels=info.in_channels,
                         mean=info.mean, std=info.std, seed=0)
    data = load_dataset("fashion-mnist", "train", limit=images, seed=0)
    Trainer(model, create_objective("standard"), TrainConfig(epochs=1, batch_size=128, lr=0.05, seed=0),
            device="cpu").fit(data)
    robustlab.save(model, path, dataset="fashion-mnist")


def battery_worker(checkpoint: Path, case: str, n: int, out: Path, device: str, eps: float) -> None:
    import robustlab
    from robustlab.core import ThreatModel
    from robustlab.core.distributed import current_world
    from robustlab.data import load_dataset
    from robustlab.defenses import convert_downsampling
    from robustlab.evaluate import run_battery

    world = current_world()
    model = robustlab.load(checkpoint).to(device).eval()
    battery = "quick"
    if case == "sd":
        model = convert_downsampling(model, "sd").eval()
        battery = "rand"
    data = load_dataset("fashion-mnist", "test")
    t0 = time.perf_counter()
    batch = max(1, -(-n // 8))  # 8 batches: 4 per rank on 2 ranks
    result = run_battery(model, data, battery, threat=ThreatModel("linf", eps), n=n, seed=0, batch_size=batch,
                         device=device, world=world)
    seconds = time.perf_counter() - t0
    if world.main:
        out.write_text(json.dumps({"seconds": seconds, "robust_acc": result.robust_acc,
                                   "result": without_timings(result.to_dict(masks=True))}))


def train_worker(out: Path, images: int, sync_bn: bool) -> None:
    from safetensors.torch import save_file

    from robustlab.core.distributed import current_world
    from robustlab.data import get_info, load_dataset
    from robustlab.models import create_model
    from robustlab.train import TrainConfig, Trainer, create_objective

    world = current_world()
    info = get_info("fashion-mnist")
    model = create_model("resnet-mini", num_classes=info.num_classes, in_channels=info.in_channels,
                         mean=info.mean, std=info.std, seed=0)
    data = load_dataset("fashion-mnist", "train", limit=images, seed=0)
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05, seed=0, augment=False, sync_bn=sync_bn and world.distributed)
    Trainer(model, create_objective("standard"), cfg, device="cpu", world=world).fit(data)
    seconds = time.perf_counter() - t0
    if world.main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out) + ".safetensors")
        out.write_text(json.dumps({"seconds": seconds}))


def launch(args: list[str], ranks: int, threads: int) -> None:
    if ranks == 1:
        cmd = [sys.executable, str(HERE), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
               "--master_port", str(free_port()), str(HERE), *args]
    timed_run(cmd, threads)


def battery_part(cores: int, work: Path, n: int, device: str, eps: float) -> None:
    ckpt = work / "model.safetensors"
    small_model(ckpt, 4000)
    for case, label, size in (("plain", "resnet-mini, quick battery", n), ("sd", "SD conversion, rand battery (EOT)", max(16, n // 4))):
        print(f"  {label}, {size} images:")
        outs = {}
        for name, ranks, threads in ((f"1 process, {cores} threads (baseline)", 1, cores), ("1 process, 1 thread", 1, 1),
                                     (f"torchrun, {cores} ranks x 1 thread", cores, 1)):
            out = work / f"battery-{case}-{ranks}-{threads}.json"
            launch(["--battery-worker", str(ckpt), case, str(size), str(out), device, str(eps)], ranks, threads)
            outs[name] = json.loads(out.read_text())
            print(f"    {name}: {outs[name]['seconds']:.1f} s, robust accuracy {100 * outs[name]['robust_acc']:.2f}%", flush=True)
        names = list(outs)
        print("  " + speedup_line(names[0], outs[names[0]]["seconds"], outs[names[2]]["seconds"], cores))
        print("  " + speedup_line(names[1], outs[names[1]]["seconds"], outs[names[2]]["seconds"], cores))
        print(f"    sharded result identical to the 1-thread one-process result: {outs[names[1]]['result'] == outs[names[2]]['result']}"
              f"; to the {cores}-thread one: {outs[names[0]]['result'] == outs[names[2]]['result']}")


def train_part(cores: int, work: Path, images: int) -> None:
    from safetensors.torch import load_file

    times, weights = {}, {}
    runs = ((f"1 process, {cores} threads (baseline)", 1, cores, False), ("1 process, 1 thread", 1, 1, False),
            (f"torchrun, {cores} ranks x 1 thread, sync BN", cores, 1, True),
            (f"torchrun, {cores} ranks x 1 thread, per-rank BN", cores, 1, False))
    for name, ranks, threads, sync in runs:
        out = work / f"train-{ranks}-{threads}-{int(sync)}.json"
        launch(["--train-worker", str(out), str(images), str(int(sync))], ranks, threads)
        times[name] = json.loads(out.read_text())["seconds"]
        weights[name] = load_file(str(out) + ".safetensors")
        print(f"  {name}: {times[name]:.1f} s", flush=True)
    names = list(times)

    def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())

    for name in names[2:]:
        print(f"  {name}: " + speedup_line(names[0], times[names[0]], times[name], cores).strip()
              + f"; over 1 thread: {times[names[1]] / times[name]:.2f}x")
    print("  largest weight difference after the epoch (same global batch 128), against 1 process at 1 thread:")
    for name in (names[0], *names[2:]):
        print(f"    {name}: {diff(weights[names[1]], weights[name]):.2e}")
    print("    (the first line is float summation order alone: the same run at another thread count)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="gradnorm-study")
    p.add_argument("--n", type=int, default=200, help="attacked images of the plain model (SD: n/4)")
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-study", action="store_true")
    p.add_argument("--skip-battery", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--eps", type=float, default=0.03, help="L-inf radius of the battery part")
    p.add_argument("--battery-worker", nargs=6, metavar=("CKPT", "CASE", "N", "OUT", "DEVICE", "EPS"), help=argparse.SUPPRESS)
    p.add_argument("--train-worker", nargs=3, metavar=("OUT", "IMAGES", "SYNC_BN"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.battery_worker:
        ckpt, case, n, out, device, eps = a.battery_worker
        battery_worker(Path(ckpt), case, int(n), Path(out), device, float(eps))
        return
    if a.train_worker:
        train_worker(Path(a.train_worker[0]), int(a.train_worker[1]), a.train_worker[2] == "1")
        return
    work = Path(tempfile.mkdtemp(prefix="robustlab-scale-"))
    print(f"robustlab scale benchmark: {a.cores} cores, torch {torch.__version__}, device {a.device}, work {work}")
    try:
        if not a.skip_study:
            print(f"1. study {a.study} (quick profile), wall time of `robustlab run`:")
            study_part(a.study, a.cores, work, a.device)
        if not a.skip_battery:
            print(f"2. battery (run_battery, L-inf eps {a.eps}), evaluation time on rank 0:")
            battery_part(a.cores, work, a.n, a.device, a.eps)
        if not a.skip_train:
            print(f"3. training, one epoch of cross-entropy on {a.train_images} images:")
            train_part(a.cores, work, a.train_images)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

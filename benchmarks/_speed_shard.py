"""One AutoAttack ``standard`` battery through :func:`robustlab.evaluate.run_battery`, in one
process or as one rank of ``torchrun`` (``benchmarks/speed.py``'s sharded row).

Run by ``speed.py``: ``python _speed_shard.py ARGS`` (one process) or ``python -m
torch.distributed.run --standalone --nproc_per_node K _speed_shard.py ARGS`` (K ranks, each
attacking whole batches of its own share; per-image results equal one process's at the same
batch size). Rank 0 writes ``--out``: seconds inside ``run_battery``, robust accuracy and the
per-image figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

import robustlab
from robustlab.core import ThreatModel
from robustlab.core.distributed import current_world
from robustlab.data import load_dataset
from robustlab.evaluate import run_battery


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", type=int, required=True)  # not --n: torchrun would take it for its --nnodes
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = robustlab.load(args.checkpoint).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    ds = load_dataset("fashion-mnist", "test", limit=args.images)  # the images speed.py attacks
    images = ds.images[: args.images]
    x = (images.float() / 255 if images.dtype == torch.uint8 else images.float()).contiguous()
    y = torch.as_tensor(ds.targets[: args.images]).long()
    world = current_world()
    start = time.perf_counter()
    result = run_battery(model, (x, y), "standard", threat=ThreatModel("linf", args.eps), batch_size=args.batch_size,
                         seed=0, world=world)
    seconds = time.perf_counter() - start
    if world.main:
        args.out.write_text(json.dumps({
            "seconds": seconds, "robust_acc": result.robust_acc, "ranks": world.size,
            "threads": torch.get_num_threads(), "p_robust": result.p_robust.flatten().tolist()}))
    if world.distributed:  # every rank leaves together (a rank exiting with the group alive aborts)
        world.barrier()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()

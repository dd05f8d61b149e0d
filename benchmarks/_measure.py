"""Measurement helpers shared by the benchmarks: the layer benchmarks (``sd_layer.py``,
``dcs_layer.py``) time and measure memory; ``speed.py`` and ``aa_trees.py`` load the frozen model
and the Fashion-MNIST test images the same way and alternate what they compare (ABBA).

Time: the median (or best) wall time of a forward + backward, with CUDA synchronized around it.
Memory: on CUDA the allocator's peak above what was allocated before the call; on CPU, where
tensors have no allocator statistics, the peak resident set size of a fresh interpreter per
measurement (Linux only): the child sets its input up, warms the kernels up on a one-image
batch, reads its resident set size, resets the kernel's peak counter (``/proc/self/clear_refs``),
runs once and prints the peak (``VmHWM``) above the set-up's.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def timed(fn: Callable[[], None], device: torch.device, repeats: int, *, best: bool = False) -> float:
    """Seconds of one call of ``fn`` after a warm-up: the median of ``repeats`` (``best``: the
    least disturbed run, for a machine that may be shared)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times) if best else statistics.median(times)


def cuda_peak_extra_bytes(fn: Callable[[], None]) -> int:
    """Peak memory above what was allocated before ``fn`` (CUDA allocator statistics)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def child_peak_extra_bytes(script: str, args: Sequence[str]) -> int:
    """Run ``python script --child ... args`` in a fresh interpreter and return the peak it prints
    (the child calls :func:`print_peak_extra_bytes`)."""
    # a fixed mmap threshold: every large block is mapped on allocation and unmapped on free,
    # so the resident set follows the live tensors (glibc otherwise recycles freed blocks)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True, env=env).stdout
    return int(out.strip().splitlines()[-1])


def print_peak_extra_bytes(run: Callable[[torch.Tensor], None], small: torch.Tensor, x: torch.Tensor) -> None:
    """In the child: warm ``run`` up on ``small``, then print the peak resident bytes ``run(x)``
    adds above the resident set before it."""
    run(small)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    run(x)
    print((_status_kib("VmHWM") - before) * 1024)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


class Alternation:
    """The order compared things run in: reversed at every call (ABBA across repeats and rows)."""

    def __init__(self, turn: int = 0) -> None:
        self.turn = turn

    def order(self, names: list[str]) -> list[str]:
        out = names if self.turn % 2 == 0 else names[::-1]
        self.turn += 1
        return out


def load_model(path: str, device: torch.device) -> torch.nn.Module:
    """A robustlab checkpoint in eval mode with frozen parameters, on ``device`` (robustlab from
    whichever tree is on the path: ``aa_trees.py`` runs it under an older one)."""
    import robustlab

    model = robustlab.load(path).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_images(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` Fashion-MNIST test images ``load_dataset(..., limit=n)`` keeps, in [0, 1]."""
    from robustlab.data import load_dataset

    ds = load_dataset("fashion-mnist", "test", limit=n)
    images = ds.images[:n]
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return x.contiguous().to(device), torch.as_tensor(ds.targets[:n]).long().to(device)

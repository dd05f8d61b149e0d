"""StochasticDownsample vs the straightforward tiled implementation: time and peak extra memory.

The tiled baseline is the public layer's approach (stochastic-downsampling paper, Appendix C):
repeat the input ``spp`` times along the batch, one ``grid_sample`` call, reduce. Ours samples
the one input ``spp`` times and reduces as it goes. Both get the same jitter, so their outputs
are compared too.

Measured at a ResNet-18 layer size (CIFAR ResNet-18's second stage input: 128 channels at 32x32,
downsampled to 16x16; batch ``--batch``), forward + backward, for spp 2 and 16. Peak extra
memory is the peak of allocated memory above what was allocated before the call: on CUDA from
``torch.cuda.max_memory_allocated``, on CPU from the profiler's allocation events.

Usage::

    python benchmarks/sd_layer.py              # CPU (or --device cuda)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustlab.defenses import StochasticDownsample


def tiled(x: torch.Tensor, jitter: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
    """The straightforward version: an spp-fold copy of the input, one grid_sample, a mean."""
    b = x.shape[0]
    spp = jitter.shape[0]
    gy = torch.arange(oh, device=x.device, dtype=x.dtype).view(1, oh, 1)
    gx = torch.arange(ow, device=x.device, dtype=x.dtype).view(1, 1, ow)
    grid = torch.stack(((gx + jitter[..., 0]) * (2 / ow) - 1, (gy + jitter[..., 1]) * (2 / oh) - 1), -1)
    grid = grid.repeat(b, 1, 1, 1)  # (b * spp, oh, ow, 2), sample-major like einops "(b spp)"
    x_tiled = x.repeat_interleave(spp, dim=0)
    out = F.grid_sample(x_tiled, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, spp, *out.shape[1:]).mean(1)


def peak_extra_bytes(fn: Callable[[], None], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.events() if e.name == "[memory]"]
    events.sort(key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.cpu_memory_usage
        peak = max(peak, cur)
    return peak


def timed(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
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
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dev = torch.device(args.device)
    oh = ow = args.size // 2
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=dev, requires_grad=True)
    mb = x.numel() * 4 / 2**20
    print(f"device {dev}, input {tuple(x.shape)} ({mb:.1f} MiB), output {oh}x{ow}, "
          f"forward + backward, median of {args.repeats}; torch threads {torch.get_num_threads()}")
    print(f"{'spp':>4} {'ours ms':>9} {'tiled ms':>9} {'time ratio':>11} {'ours MiB':>9} {'tiled MiB':>10} "
          f"{'mem ratio':>10} {'target':>8}")
    for spp in (2, 16):
        layer = StochasticDownsample(2, spp=spp)
        jitter = torch.rand(spp, oh, ow, 2, device=dev)
        with torch.no_grad():
            diff = (layer(x, jitter=jitter) - tiled(x, jitter, oh, ow)).abs().max().item()

        def ours(layer: StochasticDownsample = layer, jitter: torch.Tensor = jitter) -> None:
            layer(x, jitter=jitter).sum().backward()
            x.grad = None

        def theirs(jitter: torch.Tensor = jitter) -> None:
            tiled(x, jitter, oh, ow).sum().backward()
            x.grad = None

        t_ours, t_tiled = timed(ours, dev, args.repeats), timed(theirs, dev, args.repeats)
        m_ours, m_tiled = peak_extra_bytes(ours, dev), peak_extra_bytes(theirs, dev)
        print(f"{spp:>4} {1e3 * t_ours:9.1f} {1e3 * t_tiled:9.1f} {t_ours / t_tiled:11.3f} "
              f"{m_ours / 2**20:9.1f} {m_tiled / 2**20:10.1f} {m_ours / m_tiled:10.3f} {f'<= {1 / spp:.3f}':>8}"
              f"   (max |ours - tiled| = {diff:.2e})")
    print("targets: memory ratio <= 1/spp, time ratio <= 1.0")


if __name__ == "__main__":
    main()

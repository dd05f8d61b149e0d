"""StochasticDownsample vs the straightforward tiled implementation: time and peak extra memory.

The tiled baseline is the public layer's approach (stochastic-downsampling paper, Appendix C):
repeat the input ``spp`` times along the batch, one ``grid_sample`` call, reduce. Ours samples
the one input ``spp`` times and reduces as it goes. Both get the same jitter, so their outputs
are compared too.

Measured at a ResNet-18 layer size (CIFAR ResNet-18's second stage input: 128 channels at 32x32,
downsampled to 16x16; batch ``--batch``), forward + backward, for spp 2 and 16. Peak extra
memory is the peak of allocated memory above what was allocated before the call: on CUDA from
``torch.cuda.max_memory_allocated``, on CPU from the peak resident set size of a fresh process
per measurement (so the input gradient, which both need, counts for both).

Usage::

    python benchmarks/sd_layer.py              # CPU (or --device cuda)
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _measure import child_peak_extra_bytes, cuda_peak_extra_bytes, print_peak_extra_bytes, timed

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


def cpu_peak_extra_bytes(impl: str, spp: int, args: argparse.Namespace) -> int:
    """Peak resident memory above the set-up's, for one forward + backward in a fresh process
    (``--child``; see ``_measure.py``)."""
    return child_peak_extra_bytes(__file__, ["--child", impl, "--spp", str(spp), "--batch", str(args.batch),
                                             "--channels", str(args.channels), "--size", str(args.size)])


def _child(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    oh = ow = args.size // 2
    x = torch.randn(args.batch, args.channels, args.size, args.size, requires_grad=True)
    small = x[:1].detach().clone().requires_grad_(True)
    layer = StochasticDownsample(2, spp=args.spp)
    jitter = torch.rand(args.spp, oh, ow, 2)

    def run(inp: torch.Tensor) -> None:
        out = layer(inp, jitter=jitter) if args.child == "ours" else tiled(inp, jitter, oh, ow)
        out.sum().backward()
        inp.grad = None

    print_peak_extra_bytes(run, small, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=("ours", "tiled"), help=argparse.SUPPRESS)
    parser.add_argument("--spp", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    dev = torch.device(args.device)
    oh = ow = args.size // 2
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=dev, requires_grad=True)
    mb = x.numel() * 4 / 2**20
    print(f"device {dev}, input {tuple(x.shape)} ({mb:.1f} MiB), output {oh}x{ow}, "
          f"forward + backward, median of {args.repeats}; torch threads {torch.get_num_threads()}")
    print(f"{'spp':>4} {'ours ms':>9} {'tiled ms':>9} {'time ratio':>11} {'ours MiB':>9} {'tiled MiB':>10} "
          f"{'mem ratio':>10} {'ours +MiB':>10} {'tiled +MiB':>11} {'+ratio':>7} {'target':>8}")

    def measure(spp: int) -> tuple[float, float, int, int, float]:
        layer = StochasticDownsample(2, spp=spp)
        jitter = torch.rand(spp, oh, ow, 2, device=dev)
        with torch.no_grad():
            diff = (layer(x, jitter=jitter) - tiled(x, jitter, oh, ow)).abs().max().item()

        def ours() -> None:
            layer(x, jitter=jitter).sum().backward()
            x.grad = None

        def theirs() -> None:
            tiled(x, jitter, oh, ow).sum().backward()
            x.grad = None

        t_ours, t_tiled = timed(ours, dev, args.repeats), timed(theirs, dev, args.repeats)
        if dev.type == "cuda":
            m_ours, m_tiled = cuda_peak_extra_bytes(ours), cuda_peak_extra_bytes(theirs)
        else:
            m_ours, m_tiled = cpu_peak_extra_bytes("ours", spp, args), cpu_peak_extra_bytes("tiled", spp, args)
        return t_ours, t_tiled, m_ours, m_tiled, diff

    _, _, one_ours, one_tiled, _ = measure(1)
    mib = 2**20
    for spp in (2, 16):
        t_ours, t_tiled, m_ours, m_tiled, diff = measure(spp)
        add_ours, add_tiled = m_ours - one_ours, m_tiled - one_tiled
        print(f"{spp:>4} {1e3 * t_ours:9.1f} {1e3 * t_tiled:9.1f} {t_ours / t_tiled:11.3f} "
              f"{m_ours / mib:9.1f} {m_tiled / mib:10.1f} {m_ours / m_tiled:10.3f} {add_ours / mib:10.1f} "
              f"{add_tiled / mib:11.1f} {add_ours / max(add_tiled, 1):7.3f} {f'<= {1 / spp:.3f}':>8}"
              f"   (max |ours - tiled| = {diff:.2e})")
    print(f"MiB: peak above the memory held before the call (input gradient and output included); "
          f"+MiB: the same minus that implementation's spp=1 peak ({one_ours / mib:.1f} / {one_tiled / mib:.1f} MiB), "
          "i.e. the memory the Monte-Carlo samples add.")
    print("targets: memory ratio <= 1/spp, time ratio <= 1.0")


if __name__ == "__main__":
    main()

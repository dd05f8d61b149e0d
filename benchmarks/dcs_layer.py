"""DCS layer: the gathered-taps implementation vs the masked dense convolution (time, memory).

The baseline is the direct reading of the paper (Sec. 3.1): multiply the ``k x k`` kernel by the
0/1 mask of the sampled positions and run the dense convolution (``implementation="dense"``).
Ours gathers the ``n`` sampled taps of the padded input and applies one ``1 x 1`` convolution
(``implementation="gather"``). Both use the same positions, so their outputs are compared too.

Measured at the layer the paper replaces on CIFAR ResNet-18 (64 channels at 32x32, stride 1,
``k = 5``; batch ``--batch``), forward + backward (input and weight gradients), for several
``n`` (the paper's is 2). Peak extra memory is the peak of allocated memory above what was
allocated before the call: on CUDA from ``torch.cuda.max_memory_allocated``, on CPU from the
peak resident set size of a fresh process per measurement.

Usage::

    python benchmarks/dcs_layer.py              # CPU (or --device cuda)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _measure import child_peak_extra_bytes, cuda_peak_extra_bytes, print_peak_extra_bytes, timed

from robustlab.defenses import RandomKernelConv2d


def _layer(impl: str, n: int, args: argparse.Namespace, device: torch.device) -> RandomKernelConv2d:
    torch.manual_seed(0)
    layer = RandomKernelConv2d(args.channels, args.channels, args.k, n, implementation=impl)  # type: ignore[arg-type]
    layer = layer.to(device)
    layer.seed(0)  # the same positions for both implementations
    return layer


def cpu_peak_extra_bytes(impl: str, n: int, args: argparse.Namespace) -> int:
    """Peak resident memory above the set-up's for one forward + backward, in a fresh process
    (``--child``; see ``_measure.py``)."""
    return child_peak_extra_bytes(__file__, ["--child", impl, "--n", str(n), "--batch", str(args.batch),
                                             "--channels", str(args.channels), "--size", str(args.size),
                                             "--k", str(args.k)])


def _child(args: argparse.Namespace) -> None:
    x = torch.randn(args.batch, args.channels, args.size, args.size, requires_grad=True)
    small = x[:1].detach().clone().requires_grad_(True)
    layer = _layer(args.child, args.n, args, torch.device("cpu"))

    def run(inp: torch.Tensor) -> None:
        layer(inp).sum().backward()
        inp.grad = None
        layer.zero_grad(set_to_none=False)

    print_peak_extra_bytes(run, small, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--ns", default="1,2,4,8,13")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=("gather", "dense"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    dev = torch.device(args.device)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=dev, requires_grad=True)
    print(
        f"device {dev}, input {tuple(x.shape)}, k={args.k}, stride 1, forward + backward, "
        f"best of {args.repeats}; torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'n':>3} {'gather ms':>10} {'dense ms':>9} {'time ratio':>11} {'gather MiB':>11} {'dense MiB':>10} "
        f"{'mem ratio':>10} {'max |diff|':>11}"
    )
    mib = 2**20
    for n in (int(v) for v in args.ns.split(",")):
        gather, dense = _layer("gather", n, args, dev), _layer("dense", n, args, dev)
        with torch.no_grad():
            diff = (gather(x) - dense(x)).abs().max().item()

        def run(layer: RandomKernelConv2d) -> Callable[[], None]:
            def fn() -> None:
                layer(x).sum().backward()
                x.grad = None
                layer.zero_grad(set_to_none=False)

            return fn

        t_gather, t_dense = (
            timed(run(gather), dev, args.repeats, best=True),
            timed(run(dense), dev, args.repeats, best=True),
        )
        if dev.type == "cuda":
            m_gather, m_dense = cuda_peak_extra_bytes(run(gather)), cuda_peak_extra_bytes(run(dense))
        else:
            m_gather, m_dense = (
                cpu_peak_extra_bytes("gather", n, args),
                cpu_peak_extra_bytes("dense", n, args),
            )
        print(
            f"{n:>3} {1e3 * t_gather:10.1f} {1e3 * t_dense:9.1f} {t_gather / t_dense:11.3f} "
            f"{m_gather / mib:11.1f} {m_dense / mib:10.1f} {m_gather / max(m_dense, 1):10.3f} {diff:11.2e}"
        )
    print("ratios: gather / masked dense (below 1: the gathered taps are cheaper)")


if __name__ == "__main__":
    main()

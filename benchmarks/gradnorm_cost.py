"""GradNorm's training cost per batch against natural training and PGD-3 adversarial training.

Gradient-norm thesis, Sec. 4.2, Table 4.3: gradient norm regularization (Eq. 4.1) costs about 60%
of adversarial training with PGD-3, since it needs one forward, one backward that keeps its graph
and one backward through both (about 3 network passes), where PGD-3 needs three attack steps
before the training forward and backward (about 5; more if each attack step's forward and
backward are counted apart).

Each objective trains the same model (a copy of one initialization; ReLUs swapped for GELU as in
the thesis, Sec. 4.3) on the same random batches with SGD; a step is the objective's loss, the
backward and the optimizer step. Rounds interleave the three objectives so that load drifts on a
shared machine hit all of them alike; the per-batch time is the median over rounds. The pass
counts are measured: forwards by a hook on the model, gradient computations by counting calls of
``torch.autograd.grad`` (the input gradients of the attack and of GradNorm) plus the final
``loss.backward()``.

Usage::

    python benchmarks/gradnorm_cost.py                         # resnet-mini, 1x28x28, CPU
    python benchmarks/gradnorm_cost.py --model resnet18 --channels 3 --size 32 --batch 128 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import robustlab
from robustlab.defenses import swap_activations
from robustlab.train import GradNorm, Objective, create_objective


class Counter:
    """Forward calls of the model and calls of ``torch.autograd.grad``, while installed."""

    def __init__(self) -> None:
        self.forwards = 0
        self.grads = 0
        self._grad: Callable[..., Any] = torch.autograd.grad

    def install(self, model: torch.nn.Module) -> Any:
        original = self._grad

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.grads += 1
            return original(*args, **kwargs)

        torch.autograd.grad = counted  # type: ignore[assignment]

        def hook(*_: Any) -> None:
            self.forwards += 1

        return model.register_forward_hook(hook)

    def uninstall(self, handle: Any) -> None:
        torch.autograd.grad = self._grad  # type: ignore[assignment]
        handle.remove()


def step(
    model: torch.nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
) -> None:
    """One training step: loss, backward, optimizer step."""
    out = objective(model, x, y, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet-mini")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per objective")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per objective first")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument(
        "--activation", default="gelu", help="gelu, silu or relu (the model's as built)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = robustlab.create_model(
        args.model, num_classes=args.classes, in_channels=args.channels, seed=0
    )
    base = swap_activations(base, args.activation).to(device).train()
    objectives: dict[str, Objective] = {
        "natural": create_objective("standard"),
        "gradnorm": GradNorm(eps=args.eps, warmup_epochs=0),
        "pgd-3 AT": create_objective("pgd-at", eps=args.eps, steps=3),
    }
    models = {name: copy.deepcopy(base) for name in objectives}
    optimizers = {
        name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in models.items()
    }
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, args.channels, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    gen = torch.Generator(device=device).manual_seed(2)
    passes: dict[str, tuple[int, int]] = {}
    for name, objective in objectives.items():
        for _ in range(args.warmup):
            step(models[name], objective, optimizers[name], x, y, gen)
        counter = Counter()
        handle = counter.install(models[name])
        try:
            step(models[name], objective, optimizers[name], x, y, gen)
        finally:
            counter.uninstall(handle)
        passes[name] = (counter.forwards, counter.grads + 1)  # + the final loss.backward()
    times: dict[str, list[float]] = {name: [] for name in objectives}
    for _ in range(args.rounds):
        for name, objective in objectives.items():
            sync(device)
            t0 = time.perf_counter()
            step(models[name], objective, optimizers[name], x, y, gen)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{args.model} ({args.activation}), batch {args.batch} of {args.channels}x{args.size}x{args.size}, "
        f"{args.device}, median of {args.rounds} interleaved steps"
    )
    print(
        f"{'objective':<10} {'s/batch':>9} {'forwards':>9} {'backwards':>10} {'vs natural':>11} {'vs pgd-3':>9}"
    )
    for name in objectives:
        forwards, backwards = passes[name]
        print(
            f"{name:<10} {median[name]:>9.4f} {forwards:>9d} {backwards:>10d} "
            f"{median[name] / median['natural']:>10.2f}x {median[name] / median['pgd-3 AT']:>8.2f}x"
        )
    print(
        f"gradnorm / pgd-3 AT = {median['gradnorm'] / median['pgd-3 AT']:.2f} (thesis Table 4.3: about 0.6); "
        "gradnorm's second backward runs through the graph of the first (double backprop)"
    )


if __name__ == "__main__":
    main()

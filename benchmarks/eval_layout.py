"""Attacking in the channels-last layout (what every study evaluation now does) against the usual
contiguous one, same attack otherwise.

``python benchmarks/eval_layout.py [--images 64] [--repeats 2]``: per model of the demo's
studies (resnet-mini, its SD conversion, the GELU swap of the gradient-norm study, a DCS layer,
the sparse randomized encoder's front end), one fixed amount of attack work on Fashion-MNIST test
images: PGD-10 without early stop (every step on every image), with EOT over 4 draws on the
randomized models. The baseline is the model as trained (contiguous weights); the other is
``prepare_fast(model, ("channels_last",), probe).model``, the copy ``experiments.study`` attacks.
Prints the seconds of each (the best of ``repeats``, alternated ABBA to discount a shared
machine), the ratio channels-last / contiguous and the largest difference of the logits on the
images, relative to each row's scale (the layout changes only float rounding).

The models are untrained (seeded): the passes cost the same for any weights, and with early stop
off the work does not depend on how robust the model is.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from _measure import Alternation, load_images

from robustlab.attacks import PGD
from robustlab.attacks.estimators import EOT
from robustlab.core.randomness import is_stochastic, seed_stochastic
from robustlab.core.types import ThreatModel
from robustlab.data import get_info
from robustlab.defenses import CONVERSIONS
from robustlab.defenses.sparse_model import convert_sparse_front_end
from robustlab.evaluate.fast import prepare_fast
from robustlab.models import create_model


def models() -> dict[str, torch.nn.Module]:
    info = get_info("fashion-mnist")
    base = create_model("resnet-mini", num_classes=info.num_classes, in_channels=info.in_channels,
                        mean=info.mean, std=info.std, seed=0)

    def convert(name: str, **options: object) -> torch.nn.Module:
        return CONVERSIONS.meta(name)["convert"](copy.deepcopy(base), **options)

    # random unit-norm atoms (the study's shape, 160 of 4x4): the passes cost the same for any
    # atoms, and scikit-learn's dictionary learning would leave its OpenMP threads beside torch's
    atoms = torch.randn(160, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    atoms = atoms / atoms.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return {"resnet-mini": base,
            "SD (resnet-mini)": convert("downsampling", method="sd"),
            "GELU (resnet-mini)": convert("activations", kind="gelu"),
            "DCS layer 2 (resnet-mini)": convert("dcs", layers=(2,), k=5, n=2),
            "sparse front end (resnet-mini)": convert_sparse_front_end(base, atoms, eps=0.1, image_size=28, top_t=16,
                                                                       dropout_p=0.85)}


def attack_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    grad = EOT(4) if is_stochastic(model) else None
    attack = PGD(ThreatModel("linf", 0.1), 10, early_stop=False, grad=grad)
    seed_stochastic(model, 0)
    t = time.perf_counter()
    attack.run(model, x, y, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t


def logit_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        seed_stochastic(a, 1)
        la = a(x)
        seed_stochastic(b, 1)
        lb = b(x)
    return ((la - lb).abs().amax(1) / la.abs().amax(1).clamp_min(1.0)).max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    x, y = load_images(args.images, torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images, PGD-10 without "
          "early stop (EOT-4 on randomized models)")
    order = Alternation()
    for label, model in models().items():
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        fast = prepare_fast(model, ("channels_last",), x[:16])
        assert fast.applied == ("channels_last",), fast.fallbacks
        runs: dict[str, Callable[[], float]] = {"contiguous": lambda m=model: attack_time(m, x, y),
                                                "channels_last": lambda m=fast.model: attack_time(m, x, y)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for name in runs:  # warm-up
            runs[name]()
        for _ in range(args.repeats):
            for name in order.order(list(runs)):
                times[name].append(runs[name]())
        plain, last = min(times["contiguous"]), min(times["channels_last"])
        print(f"{label}: contiguous {plain:.2f} s, channels_last {last:.2f} s, ratio {last / plain:.2f} "
              f"(largest logit difference {logit_diff(model, fast.model, x):.1e} of a row's scale)", flush=True)


if __name__ == "__main__":
    main()

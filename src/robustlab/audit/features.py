"""Penultimate features of a classifier, and the classifier with its head swapped for a readout.

The decision-boundary binarization test (Zimmermann, Brendel, Tramèr & Carlini, "Increasing
Confidence in Adversarial Robustness Evaluations", NeurIPS 2022, Sec. 3) keeps a defended
model's whole feature extractor, randomness and non-differentiable layers included, and replaces
only its last linear layer by a two-class readout. This module finds that layer, reads its input
and builds the replaced model:

- :func:`find_head`: the classifier head, found by watching one forward (the last
  ``nn.Linear`` called whose output has the model output's shape), so it works through
  ``Normalized``, robustlab's staged networks, torchvision and timm models, converted models
  (stochastic downsampling, DCS, the sparse front end) and ``defenses.sparse_model.Ensemble``,
  which calls its network, and so its head, several times per forward;
- :func:`features`: the head's input, flattened, averaged over the head's calls inside one
  forward (an ensemble) and over ``draws`` forwards (a randomized model);
- :func:`binarized`: a deep copy of the model whose head is an ``nn.Linear(F, 2)`` holding a
  given readout; everything else (random layers, BPDA layers, train/eval mode) is the model's.

The reference implementation (``active_tests/decision_boundary_binarization.py``) asks each
model for a ``features_only`` forward flag; here no model needs to cooperate, hooks read the
head's input instead.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..core.checks import check_int
from ..core.errors import InputError
from ..core.randomness import is_frozen, stochastic_layers

__all__ = ["Readout", "binarized", "features", "features_and_outputs", "find_head", "frozen_path"]

_BATCH = 256


def _output_tensor(output: Any) -> torch.Tensor:
    """The tensor of logits inside what a model returns (the rules of ``attacks.logits_of``:
    first element of a tuple, ``"logits"`` of a mapping), without reshaping it."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    elif isinstance(output, Mapping) and "logits" in output:
        output = output["logits"]
    if not isinstance(output, torch.Tensor):
        raise InputError(
            f"the model must return logits as a tensor (or a tuple / dict holding them), got "
            f"{type(output).__name__}"
        )
    return output


def _check_batch(model: nn.Module, x: torch.Tensor) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"x must be a non-empty batch of inputs (N, ...), got {shape}")


def _names_hint(model: nn.Module, wanted: str | None = None) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.5) if wanted else []
    linear = [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear)]
    parts = ["list the module names with [name for name, _ in model.named_modules()]"]
    if close:
        parts.append(f"close matches: {', '.join(close)}")
    if linear:
        parts.append(f"its nn.Linear layers: {', '.join(linear[-5:])}")
    return "; ".join(parts)


def _module(model: nn.Module, head: str) -> nn.Module:
    if not isinstance(head, str):
        raise InputError(f"head must be a module name (str), got {type(head).__name__}")
    if head == "":
        raise InputError(
            "head='' names the model itself; the head must be a submodule (the classifier's last "
            "layer), e.g. head='fc' or head='model.linear'"
        )
    try:
        return model.get_submodule(head)
    except AttributeError:
        raise InputError(
            f"unknown head {head!r}: {type(model).__name__} has no submodule of that name; "
            + _names_hint(model, head)
        ) from None


@torch.no_grad()
def find_head(model: nn.Module, x: torch.Tensor) -> str:
    """The qualified name of ``model``'s classifier head.

    One forward of ``x`` with a hook on every ``nn.Linear``: the head is the last linear layer
    called whose output has the shape of the model's output ``(N, C)``. Modules called several
    times per forward (an ensemble's network) count by their last call.

    Raises:
        InputError: when no such layer exists (e.g. a network ending in convolutions and global
            pooling): pass ``head=`` naming the layer whose output is the logits.
    """
    _check_batch(model, x)
    calls: list[tuple[str, tuple[int, ...]]] = []

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                calls.append((name, tuple(output.shape)))

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    try:
        out = _output_tensor(model(x))
    finally:
        for h in handles:
            h.remove()
    shape = tuple(out.shape)
    for name, out_shape in reversed(calls):
        if out_shape == shape and name:
            return name
    seen = sorted({f"{n} -> {s}" for n, s in calls})
    called = f"the nn.Linear layers called gave {', '.join(seen)}" if seen else "no nn.Linear was called"
    raise InputError(
        f"no penultimate layer found: no nn.Linear of {type(model).__name__} produced the model's "
        f"output shape {shape} ({called}); pass head='<module name>' naming the layer whose "
        "output is the logits (" + _names_hint(model) + ")"
    )


@contextmanager
def _capture(module: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            raise InputError(f"the head {type(mod).__name__} was called without a tensor input")
        store.append(args[0].detach())
        store.append(_output_tensor(output).detach())

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def frozen_path(model: nn.Module) -> bool:
    """A frozen random model is one draw per batch shape: forward it one image at a time, as
    the attacks do (``attacks.model.ModelFn``), so the features see the attacks' path."""
    return is_frozen(model) and any(m.stochastic_active for m in stochastic_layers(model))


def _one_forward(model: nn.Module, module: nn.Module, head: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    store: list[torch.Tensor] = []
    with _capture(module, store):
        out = _output_tensor(model(x))
    if not store:
        raise InputError(
            f"the head {head!r} was not called in a forward of {type(model).__name__}; pass "
            "head= naming the layer whose output is the logits"
        )
    inputs, outputs = store[0::2], store[1::2]
    n = x.shape[0]
    for inp, o in zip(inputs, outputs, strict=True):
        if inp.shape[0] != n or tuple(o.shape) != tuple(out.shape):
            raise InputError(
                f"the head {head!r} does not produce the model's output: it was called on a batch "
                f"of {inp.shape[0]} giving {tuple(o.shape)}, the model returned {tuple(out.shape)} "
                f"for {n} inputs; the head must be the last layer, whose output is the logits"
            )
    feats = torch.stack([inp.flatten(1).float() for inp in inputs]).mean(dim=0)
    return feats, out.float()


@torch.no_grad()
def features_and_outputs(
    model: nn.Module,
    x: torch.Tensor,
    *,
    head: str | None = None,
    draws: int = 1,
    batch_size: int = _BATCH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`features` and the model's outputs (its logits, ``(N, C)``), both averaged over
    ``draws`` forwards. The binarization test's ``"adaptive"`` logit rescaling matches the
    readout's logit range to these outputs' (the reference implementation's
    ``features_and_logits`` pass)."""
    _check_batch(model, x)
    draws = check_int(draws, "draws", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    name = find_head(model, x[:1]) if head is None else head
    module = _module(model, name)
    chunk = 1 if frozen_path(model) else batch_size
    feats: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    for part in x.split(chunk):
        f_sum: torch.Tensor | None = None
        o_sum: torch.Tensor | None = None
        for _ in range(draws):
            f, o = _one_forward(model, module, name, part)
            f_sum = f if f_sum is None else f_sum + f
            o_sum = o if o_sum is None else o_sum + o
        assert f_sum is not None and o_sum is not None
        feats.append(f_sum / draws)
        outs.append(o_sum / draws)
    return torch.cat(feats), torch.cat(outs)


def features(
    model: nn.Module,
    x: torch.Tensor,
    *,
    head: str | None = None,
    draws: int = 1,
    batch_size: int = _BATCH,
) -> torch.Tensor:
    """The input of ``model``'s classifier head for ``x``, flattened: ``(N, F)`` floats.

    Averaged over the head's calls inside one forward (an ensemble calls it once per member)
    and over ``draws`` forwards (a randomized model: the mean feature, the expectation the
    readout of the binarization test is fitted to). No gradient is kept; the model's mode is
    not changed. A frozen random model is forwarded one image at a time, the way attacks see it.

    Args:
        model: the classifier.
        x: the inputs.
        head: the head's qualified module name; default :func:`find_head`.
        draws: forwards to average over.
        batch_size: inputs per forward.

    Raises:
        InputError: for an unknown ``head``, a head that is not called or whose output is not
            the model's output, or a model without a detectable head.
    """
    return features_and_outputs(model, x, head=head, draws=draws, batch_size=batch_size)[0]


class Readout(nn.Linear):
    """The binarized classifier's head: ``nn.Linear`` on the flattened input (class 0 = inner
    points, class 1 = boundary points)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (nn.Linear's name)
        return super().forward(input.flatten(1))


def binarized(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor, *, head: str) -> nn.Module:
    """A deep copy of ``model`` with its head replaced by the two-class readout ``weight``,
    ``bias``: the binarized classifier of the binarization test (class 0: inner points, class
    1: boundary points).

    The copy keeps every other module as it is: random layers (which still draw fresh
    randomness, so the defense stays randomized), BPDA layers, recipe and train/eval mode
    (the new head takes the old head's mode). ``model`` is not changed.

    Args:
        model: the classifier.
        weight: ``(2, F)``, ``F`` the head's input size (:func:`features`' width).
        bias: ``(2,)``.
        head: the head's qualified module name (:func:`find_head`).

    Raises:
        InputError: for an unknown ``head`` or readout tensors of the wrong shape.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    old = _module(model, head)
    for what, t, dims in (("weight", weight, 2), ("bias", bias, 1)):
        if not isinstance(t, torch.Tensor) or t.dim() != dims or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            expected = "(2, F)" if dims == 2 else "(2,)"
            raise InputError(f"{what} must be a float tensor of shape {expected}, got {shape}")
    if weight.shape[0] != 2 or bias.shape != (2,):
        raise InputError(
            f"the readout must have two classes: weight (2, F) and bias (2,), got "
            f"{tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise InputError("the readout's weight and bias must be finite")
    ref = next(iter(old.parameters()), None)
    device = ref.device if ref is not None else weight.device
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    # skip_init: no random initialization (it would draw from the global RNG), the values come next
    readout = nn.utils.skip_init(Readout, int(weight.shape[1]), 2, device=device, dtype=dtype)
    with torch.no_grad():
        readout.weight.copy_(weight.detach().to(device=device, dtype=dtype))
        readout.bias.copy_(bias.detach().to(device=device, dtype=dtype))
    readout.train(old.training)
    out = copy.deepcopy(model)
    parent_name, _, child = head.rpartition(".")
    parent = out.get_submodule(parent_name) if parent_name else out
    setattr(parent, child, readout)
    return out

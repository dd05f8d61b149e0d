"""Opt-in fast paths for the model under attack: ``channels_last`` and ``torch.compile``.

An evaluation spends nearly all its time in the forward and backward passes of the model under
attack, so :func:`run_battery` can run those passes faster, on request only (never by default;
the studies ask for ``channels_last`` on every model they attack, see
:meth:`robustlab.experiments.study._Run.attacked`):

- ``"channels_last"``: a copy of the model (``copy.deepcopy``: the caller's model keeps its
  memory format) in ``torch.channels_last``, behind a thin :class:`ChannelsLast` wrapper that
  converts every 4-D input to that layout. On resnet-mini (Fashion-MNIST, 2 CPU threads) a
  forward and backward pass takes about 0.8x the plain pass's CPU time (oneDNN convolutions
  prefer NHWC); the copy costs well under a second.
- ``"compile"``: ``torch.compile`` of the model (of the ``channels_last`` wrapper when both are
  asked for). Compilation errors surface lazily, at the first call, so a trial forward and
  backward runs on a probe batch at once; on any failure a warning names the error and the
  model runs uncompiled. On resnet-mini a pass then takes about 0.9x the plain CPU time (0.8x
  with ``channels_last`` too), but compiling costs 25-60 s the first time on a 2-core CPU (less
  when inductor's on-disk cache holds the graphs), plus a recompile when the attacks' batch
  sizes start to vary: worth it for long evaluations only.

Tolerance. Both paths compute the same function in another order of float operations, so the
logits change at float-rounding level only: on resnet-mini (Fashion-MNIST, fp32, CPU, 100 test
images) the largest difference is 1.9e-6 (``channels_last``) and 2.4e-6 (inductor) in logits of
magnitude up to 10.8, i.e. 2e-7 to 3e-7 of a row's scale, and input gradients differ by about
1e-6 of a row's largest component; no prediction changed. Every preparation measures this on the
probe (the first images of the evaluation; logits and input gradients, at two seeds of the
model's randomness) and drops a path, with a warning, when a row's logits differ by more than
:data:`FAST_RTOL` times the row's scale (a compiled random layer that ignored its seed, a
miscompilation). Per-sample results of a deterministic battery are then the plain path's except
at near-ties (a margin or a loss comparison within rounding of zero, where any reordering of
float sums may decide either way); the robust accuracy moves by such samples only. The numerics
stay fp32: :func:`run_battery` switches TF32 off and autocast off for the whole evaluation, fast
paths included, and bf16 is never used for attacks.

Randomized models keep their treatment: the wrapper and ``torch.compile``'s module hold the model
as a submodule, so :func:`~robustlab.core.randomness.stochastic_layers` (and with it
``is_stochastic``, ``frozen`` and ``seed_stochastic``) reaches its
:class:`~robustlab.core.randomness.Stochastic` layers, and the check at two seeds proves that
seeding still decides the draws.

Which path was used is part of the evaluation's record (``result.config["fast"]``, in the state
key: results with and without a fast path are never mixed in a resumed state) and of
``result.config["fast_check"]`` (what was asked for, any fallback and why, the differences
measured on the probe).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import logits_of
from ..core.bpda import BPDAMode
from ..core.bpda import bpda as bpda_context
from ..core.errors import InputError
from ..core.randomness import seed_stochastic
from .fingerprint import _restored

__all__ = [
    "FAST_PATHS",
    "FAST_RTOL",
    "ChannelsLast",
    "FastModel",
    "check_fast",
    "prepare_fast",
]

FAST_PATHS: tuple[str, ...] = ("channels_last", "compile")
"""The fast paths, in the order they are applied (``compile`` compiles the ``channels_last``
wrapper when both are asked for)."""

FAST_RTOL = 1e-4
"""The largest accepted difference of a fast path's logits from the plain model's on the probe,
per row, relative to that row's scale (its largest magnitude, at least 1). Float reordering stays
far below it (2e-7 to 5e-7 on resnet-mini); a larger difference is not rounding."""

_CHECK_SEEDS = (0, 1)
"""The seeds of the probe's randomness: two, so a compiled random layer that ignores its seed
(its draws frozen into the graph) differs from the plain model at one of them."""


class ChannelsLast(nn.Module):
    """``model`` (already in ``torch.channels_last``) with its 4-D inputs converted to that
    layout; other inputs pass as they are.

    The model is a submodule, so every layer stays visible to ``modules()``: the randomness and
    BPDA protocols reach its layers through the wrapper. The wrapper takes the model's
    train/eval flag (its own only: the model's layers keep theirs), so a check that no module is
    in training mode (batched EOT draws, :func:`robustlab.attacks.estimators.rowwise_draws`)
    sees the model's modes.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(self, x: torch.Tensor) -> Any:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


@dataclass(frozen=True)
class FastModel:
    """The model under attack with its fast paths, and what was done to get it.

    Attributes:
        model: what the attacks call (the caller's model itself when nothing was applied).
        requested: the fast paths asked for, in :data:`FAST_PATHS` order.
        applied: those in use (a path that failed or exceeded :data:`FAST_RTOL` is left out).
        fallbacks: for each path asked for but not applied, why (the error or the difference).
        logit_diff: the largest difference of the fast model's logits from the plain model's on
            the probe, per row relative to the row's scale (largest magnitude, at least 1);
            ``0.0`` when nothing was applied.
        grad_diff: the same for the input gradients of a cross-entropy loss, relative to each
            row's largest gradient magnitude (reported, not checked: a gradient component that
            is nearly zero may change sign under rounding, which is the near-tie case);
            ``None`` when the plain model has no input gradient to compare with.
    """

    model: nn.Module
    requested: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    logit_diff: float = 0.0
    grad_diff: float | None = 0.0

    def record(self) -> dict[str, Any]:
        """A JSON-ready record for an evaluation's config (``config["fast_check"]``)."""
        return {
            "requested": list(self.requested),
            "applied": list(self.applied),
            "fallbacks": dict(self.fallbacks),
            "logit_diff": self.logit_diff,
            "grad_diff": self.grad_diff,
            "rtol": FAST_RTOL,
        }


def check_fast(fast: str | Iterable[str] | None) -> tuple[str, ...]:
    """The fast paths asked for, checked, without duplicates, in :data:`FAST_PATHS` order.

    Args:
        fast: a name of :data:`FAST_PATHS`, an iterable of such names, or ``None``/``()`` (none).

    Raises:
        InputError: for an unknown name (listing the known ones) or a value that is not names.
    """
    if fast is None:
        return ()
    names = (fast,) if isinstance(fast, str) else fast
    try:
        names = tuple(names)
    except TypeError:
        raise InputError(f"fast must be a tuple of fast-path names {FAST_PATHS}, got {fast!r}") from None
    for name in names:
        if name not in FAST_PATHS:
            raise InputError(f"unknown fast path {name!r}; known: {', '.join(FAST_PATHS)} (or none: fast=())")
    return tuple(p for p in FAST_PATHS if p in names)


def _seeded_pass(model: nn.Module, probe: torch.Tensor, seed: int, backward: bool,
                 bpda: BPDAMode | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and (with ``backward``) the input gradient of a cross-entropy loss on ``probe``,
    with the global generator and every random layer seeded to ``seed`` and the model's BPDA
    layers in mode ``bpda`` (as the attacks run them); the model's state (generators, cached
    draws, buffers) is as it was afterwards, and no parameter gets a ``.grad``."""
    devices = []
    if probe.device.type == "cuda":
        devices = [probe.device.index if probe.device.index is not None else torch.cuda.current_device()]
    surrogate = bpda_context(model, bpda) if bpda is not None else contextlib.nullcontext()
    with _restored(model), surrogate, torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        seed_stochastic(model, seed)
        x = probe.detach().clone().requires_grad_(backward)
        logits = logits_of(model(x))
        grad = None
        if backward:
            # class 0 for every row: any fixed, differentiable loss serves to compare two backwards
            loss = F.cross_entropy(logits.float(), torch.zeros(len(x), dtype=torch.long, device=x.device),
                                   reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            grad = grad.detach().float()
    return logits.detach().float(), grad


def _row_diff(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    """The largest difference of two batches per row, relative to the row's largest magnitude
    (at least ``floor``); ``inf`` for different shapes or non-finite values in one only."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.flatten(1), b.flatten(1)
    if not bool((torch.isfinite(a) == torch.isfinite(b)).all()):
        return float("inf")
    a, b = a.nan_to_num(0.0, 0.0, 0.0), b.nan_to_num(0.0, 0.0, 0.0)
    scale = a.abs().amax(dim=1).clamp_min(floor)
    return float(((a - b).abs().amax(dim=1) / scale).max()) if a.numel() else 0.0


def _compare(
    plain: list[tuple[torch.Tensor, torch.Tensor | None]], model: nn.Module, probe: torch.Tensor,
    bpda: BPDAMode | None,
) -> tuple[float, float | None]:
    """The largest logit and gradient differences of ``model`` from the plain passes (with a
    backward when the plain passes have one: a fast path whose backward fails fails here)."""
    logit_diff, grad_diff = 0.0, 0.0
    for (plain_logits, plain_grad), seed in zip(plain, _CHECK_SEEDS, strict=True):
        logits, grad = _seeded_pass(model, probe, seed, plain_grad is not None, bpda)
        logit_diff = max(logit_diff, _row_diff(plain_logits, logits, 1.0))
        if plain_grad is not None and grad is not None:
            grad_diff = max(grad_diff, _row_diff(plain_grad, grad, 1e-30))
    return logit_diff, grad_diff if plain[0][1] is not None else None


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def prepare_fast(
    model: nn.Module,
    fast: str | Iterable[str] | None,
    probe: torch.Tensor,
    *,
    compile_backend: str = "inductor",
    bpda: BPDAMode | None = None,
) -> FastModel:
    """The model under attack with the fast paths ``fast``, checked against the plain model.

    Each path is tried in :data:`FAST_PATHS` order and kept only if it works and its logits on
    ``probe`` (at two seeds of the model's randomness, forward and backward) stay within
    :data:`FAST_RTOL` of the plain model's; otherwise a warning names the path, the reason and
    the fallback (the model without that path), and ``FastModel.fallbacks`` records it. Compile
    errors appear only at a compiled model's first call: the check's forward and backward are
    that first call. The caller's model is not modified: ``channels_last`` works on a deep copy,
    and ``torch.compile`` wraps the model without changing it (the trial backward asks for the
    input's gradient only, so no parameter gets a ``.grad``).

    Run it inside the evaluation's numerics (fp32, TF32 off: :func:`run_battery` does), so the
    compiled code is traced and checked under the precision the attacks use.

    Args:
        model: the model under attack, on ``probe``'s device.
        fast: the fast paths (:func:`check_fast`).
        probe: a few evaluation images (e.g. 16): the compiler's first inputs and the check's.
        compile_backend: the ``torch.compile`` backend (``"inductor"``; ``"eager"`` or
            ``"aot_eager"`` trace without generating code, for tests).
        bpda: the BPDA mode the attacks' backward passes use (``run_battery(bpda=...)``): the
            check's backward runs in it, so what the attacks compile is what was tried. A model
            with no input gradient (non-differentiable, and no ``bpda``) is checked on its
            forward only.

    Returns:
        A :class:`FastModel`; ``model`` unchanged and nothing applied when ``fast`` is empty.

    Raises:
        InputError: for an unknown fast path.
    """
    requested = check_fast(fast)
    if not requested:
        return FastModel(model)
    probe = probe.detach()
    try:
        plain = [_seeded_pass(model, probe, seed, True, bpda) for seed in _CHECK_SEEDS]
    except RuntimeError:  # no input gradient (a non-differentiable layer): compare forwards only
        plain = [_seeded_pass(model, probe, seed, False, bpda) for seed in _CHECK_SEEDS]
    current: nn.Module = model
    applied: list[str] = []
    fallbacks: dict[str, str] = {}
    logit_diff, grad_diff = 0.0, (0.0 if plain[0][1] is not None else None)
    for path in requested:
        try:
            if path == "channels_last":
                candidate: nn.Module = ChannelsLast(copy.deepcopy(current).to(memory_format=torch.channels_last))
            else:  # an OptimizedModule: an nn.Module holding ``current`` as ``_orig_mod``
                candidate = cast(nn.Module, torch.compile(current, backend=compile_backend))
            diffs = _compare(plain, candidate, probe, bpda)
        except Exception as e:  # any failure of a fast path falls back to the model without it
            fallbacks[path] = _error(e)
        else:
            if diffs[0] <= FAST_RTOL:
                current, (logit_diff, grad_diff) = candidate, diffs
                applied.append(path)
                continue
            fallbacks[path] = (f"its logits differ from the plain model's by {diffs[0]:.3g} of a row's scale on "
                               f"the probe, above the tolerance {FAST_RTOL:g}")
        warnings.warn(f"fast path {path!r} not used ({fallbacks[path]}); evaluating without it "
                      f"(the plain model{' with ' + ', '.join(applied) if applied else ''})", stacklevel=3)
    return FastModel(current, requested, tuple(applied), fallbacks, logit_diff, grad_diff)

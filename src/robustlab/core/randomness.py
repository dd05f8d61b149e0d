"""The randomness protocol: stochastic layers, frozen draws and explicit generators.

Randomized defenses (stochastic downsampling, noise injection, the sparse encoder's dropout)
must be evaluated with the expectation over their randomness (Athalye et al., 2018, "Obfuscated
Gradients Give a False Sense of Security", Sec. 4.3, EOT). For that an attack or an evaluator
has to know which layers are random and be able to fix or refresh their draws. Every such layer
subclasses :class:`Stochastic`:

- by default it draws fresh randomness on every forward, from its own ``torch.Generator``;
- inside ``with frozen(model):`` it reuses one draw (one inference path): the first forward of
  a given input shape draws, later forwards of that shape reuse it;
- :func:`resample` forces a new draw; :func:`is_stochastic` tells whether a model has any
  active, unfrozen random layer, i.e. whether EOT and repeated evaluation are needed;
- a layer whose every forward draws independently for each batch row declares it
  (:attr:`Stochastic.rowwise`), and :func:`rowwise_random` tells whether all of a model's
  randomness is of that kind: then ``n`` draws of a batch can be taken in one forward of the
  batch repeated ``n`` times (batched EOT), since each copy of a row gets its own draw.

A layer writes its forward with :meth:`Stochastic.draw`::

    class AddNoise(Stochastic):
        def forward(self, x):
            noise = self.draw(lambda g: torch.randn(x.shape, generator=g, device=x.device),
                              key=tuple(x.shape), device=x.device)
            return x + self.std * noise
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "Stochastic",
    "detect_randomness",
    "frozen",
    "is_frozen",
    "is_stochastic",
    "outputs_differ",
    "resample",
    "rows_differ",
    "rowwise_random",
    "seed_stochastic",
    "seeded",
    "stochastic_layers",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SEED_RANGE = 2**62


class Stochastic(nn.Module):
    """Base class of layers that draw fresh randomness on every forward.

    The layer owns a ``torch.Generator`` created lazily on the device its inputs live on. Unless
    :meth:`seed` was called, the generator's seed is forked from the global torch RNG when it is
    first needed, so ``torch.manual_seed(s)`` before building and running a model makes a run
    repeat bit for bit while different layers still get different streams.

    Subclasses take all their randomness through :meth:`draw`, which honours :func:`frozen`,
    and may override :attr:`stochastic_active` (e.g. to return ``False`` when a noise level is 0).
    """

    def __init__(self) -> None:
        super().__init__()
        self._rl_generator: torch.Generator | None = None
        self._rl_seed: int | None = None
        self._rl_frozen_depth = 0
        self._rl_cache: dict[Hashable, Any] = {}

    @property
    def stochastic_active(self) -> bool:
        """Whether the layer currently draws randomness (override to switch it off)."""
        return True

    @property
    def rowwise(self) -> bool:
        """Whether every forward draws independent randomness for each batch row.

        ``True`` promises: in a forward of ``N`` rows, row ``i``'s random quantity is drawn
        afresh, is independent of every other row's, and has the same distribution whatever
        the other rows are and however many there are (i.i.d. noise of the input's shape, one
        mask or offset set per sample). Then a forward of a batch repeated ``n`` times gives
        ``n`` independent draws for each row, exactly as ``n`` forwards would, and EOT may take
        them in one pass (:class:`~robustlab.attacks.estimators.EOT`). A layer that draws one
        quantity per forward shared by the whole batch (one kernel, one jitter grid) must
        return ``False``: the ``n`` copies of a row would share its draw. The default is
        ``False``; override it only where the sampling code shows the property (it may depend
        on the layer's options and contexts, hence a property).
        """
        return False

    @property
    def is_frozen(self) -> bool:
        """Whether the layer is inside a :func:`frozen` context."""
        return self._rl_frozen_depth > 0

    def seed(self, seed: int) -> None:
        """Seed the layer's own generator (the next draw starts the seeded stream)."""
        self._rl_seed = int(seed)
        self._rl_generator = None
        self._rl_cache.clear()

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The layer's generator on ``device`` (created on first use, moved if the device changed)."""
        device = torch.device(device)
        gen = self._rl_generator
        if (
            gen is not None
            and gen.device.type == device.type
            and (device.index is None or gen.device.index in (None, device.index))
        ):
            return gen
        if self._rl_seed is not None and gen is None:
            seed = self._rl_seed
        elif gen is not None:  # moved to another device: continue a stream forked from the old one
            seed = int(torch.randint(0, _SEED_RANGE, (1,), generator=gen, device=gen.device).item())
        else:
            seed = int(torch.randint(0, _SEED_RANGE, (1,)).item())
        new = torch.Generator(device=device)
        new.manual_seed(seed)
        self._rl_generator = new
        return new

    def draw(
        self, sampler: Callable[[torch.Generator], T], *, key: Hashable, device: torch.device | str
    ) -> T:
        """Return ``sampler(generator)``: a fresh draw, or the cached one inside :func:`frozen`.

        Args:
            sampler: makes the random quantity (noise, offsets, a mask) from the layer's generator.
            key: identifies the draw; use the input shape (and anything else the draw depends
                on). Inside :func:`frozen` a key seen before returns the cached draw, a new key
                (e.g. a smaller batch) gets its own single draw, cached from then on.
            device: where the generator lives (the input's device).
        """
        if self._rl_frozen_depth > 0 and key in self._rl_cache:
            return self._rl_cache[key]  # type: ignore[no-any-return]
        value = sampler(self.generator(device))
        if self._rl_frozen_depth > 0:
            if self._rl_cache:
                logger.debug("%s: new draw for key %r inside frozen()", type(self).__name__, key)
            self._rl_cache[key] = value
        return value

    def clear_draws(self) -> None:
        """Forget cached draws (the next forward draws anew)."""
        self._rl_cache.clear()


def stochastic_layers(model: nn.Module) -> list[Stochastic]:
    """Every :class:`Stochastic` submodule of ``model`` (``model`` itself included)."""
    return [m for m in model.modules() if isinstance(m, Stochastic)]


def is_stochastic(model: nn.Module) -> bool:
    """Whether ``model`` has an active random layer that is not frozen.

    ``True`` means a single forward is one sample of a random function: attacks should use EOT
    and evaluators should repeat predictions. Inside :func:`frozen` a model is deterministic.
    """
    return any(m.stochastic_active and not m.is_frozen for m in stochastic_layers(model))


def rowwise_random(model: nn.Module) -> bool:
    """Whether ``model``'s randomness is all drawn independently per batch row.

    ``True`` when ``model`` has at least one active random layer, none of its active random
    layers is frozen, and every one of them is :attr:`Stochastic.rowwise`. Only declarations
    are read: randomness outside the protocol (``torch.randn`` in a forward, dropout in
    training mode) is not seen here, and a model whose randomness was only detected
    empirically is never treated as row-wise by the attacks. Rows must not interact otherwise
    either (batch norm in training mode couples them): callers check the model's mode.
    """
    active = [m for m in stochastic_layers(model) if m.stochastic_active]
    return bool(active) and all(m.rowwise and not m.is_frozen for m in active)


def is_frozen(model: nn.Module) -> bool:
    """Whether any random layer of ``model`` is inside a :func:`frozen` context."""
    return any(m.is_frozen for m in stochastic_layers(model))


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Make every random layer of ``model`` reuse one draw: one fixed inference path.

    The first forward of each input shape inside the context draws; later forwards of that shape
    reuse the draw, so repeated forwards (an attack's iterations, a path analysis) see the same
    function. A batch of another shape gets its own single draw (it cannot be matched sample by
    sample to the cached one). Nested contexts share the outer draw; leaving the outermost one
    forgets it. Use :func:`resample` inside the context for a new path.
    """
    layers = stochastic_layers(model)
    for m in layers:
        if m._rl_frozen_depth == 0:
            m.clear_draws()
        m._rl_frozen_depth += 1
    try:
        yield model
    finally:
        for m in layers:
            m._rl_frozen_depth -= 1
            if m._rl_frozen_depth == 0:
                m.clear_draws()


def resample(model: nn.Module) -> None:
    """Force every random layer of ``model`` to draw anew at its next forward (also when frozen)."""
    for m in stochastic_layers(model):
        m.clear_draws()


def seed_stochastic(model: nn.Module, seed: int) -> None:
    """Seed every random layer of ``model`` with its own seed derived from ``seed``."""
    for i, m in enumerate(stochastic_layers(model)):
        m.seed(seed * 1_000_003 + i)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the global torch RNG seeded to ``seed``, restoring the outer state after.

    A fork (``torch.random.fork_rng``, CPU and every visible CUDA device): code inside is
    repeatable, code outside is unaffected. For tests and entry points; library code takes a
    ``torch.Generator`` instead.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def rows_differ(first: torch.Tensor, second: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Per row (sample), whether two outputs of the same forward differ beyond float noise.

    A row differs when some entry's difference exceeds ``rtol`` times *that row's* scale (its
    largest magnitude, at least 1): exact on a CPU, tolerant of the last-bit noise that
    non-deterministic GPU kernels add (no defense), and blind to no row because another row of
    the batch holds huge values. Non-finite rows differ when their non-finite pattern or
    finite values differ. Outputs of different shapes differ everywhere.
    """
    if first.shape != second.shape:
        return torch.ones(first.shape[0] if first.dim() else 1, dtype=torch.bool, device=first.device)
    a, b = first.flatten(1).float(), second.flatten(1).float()
    if a.shape[1] == 0:
        return torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
    finite = torch.isfinite(a) & torch.isfinite(b)
    pattern = (torch.isfinite(a) != torch.isfinite(b)) | (~finite & (a.nan_to_num() != b.nan_to_num()))
    a0, b0 = torch.where(finite, a, 0.0), torch.where(finite, b, 0.0)
    scale = a0.abs().amax(dim=1).clamp_min(1.0)
    return ((a0 - b0).abs() > rtol * scale.unsqueeze(1)).any(dim=1) | pattern.any(dim=1)


def outputs_differ(first: torch.Tensor, second: torch.Tensor, rtol: float = 1e-6) -> bool:
    """Whether two outputs of the same forward differ beyond float noise in any row
    (:func:`rows_differ`)."""
    return bool(rows_differ(first, second, rtol).any())


@torch.no_grad()
def detect_randomness(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> bool:
    """Whether ``forward`` is random, judged empirically: two forwards of the same batch differ
    in some row (:func:`rows_differ`).

    The reference AutoAttack's check (Croce & Hein, 2020, ``autoattack/checks.py``), made per
    row: randomness a model draws without the :class:`Stochastic` protocol (``torch.randn`` in
    a forward, dropout in training mode, a third-party defense wrapped as a function) is
    invisible to :func:`is_stochastic` and would make an attack treat the model as
    deterministic, e.g. reduce EOT to a single draw. ``forward`` must return a tensor (logits).
    """
    return outputs_differ(forward(x), forward(x))

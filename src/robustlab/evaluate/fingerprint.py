"""Behaviour fingerprints of a model and a battery: what a resumable evaluation is keyed by.

A state-dict hash identifies weights, not behaviour: two models that differ only in a plain
attribute (stochastic downsampling's ``spp``, DCS's ``n``, the sparse encoder's ``dropout_p``),
in a non-persistent buffer or in train/eval mode share it, and so would two transfer attacks
whose surrogates differ that way, or two attacks whose custom losses share a name. This module
fingerprints behaviour instead:

- :func:`module_fingerprint`: every submodule's name, class, train/eval flag, ``extra_repr()``,
  declared configuration (``config()`` / ``get_config()``), plain attributes, hooks, buffers
  (persistent or not) and parameters;
- :func:`output_fingerprint`: the model's logits on a fixed probe with fixed randomness (global
  RNG and every :class:`~robustlab.core.randomness.Stochastic` layer seeded), which catches
  whatever the configuration does not show;
- :func:`attack_fingerprint` / :func:`battery_fingerprint`: every attack's full configuration,
  nested attacks and a transfer surrogate's :func:`module_fingerprint` included, plus the list
  of things that cannot be fingerprinted (a custom loss function, a surrogate that is a plain
  callable): a run with such a problem should not be resumed at all;
- :func:`behaviour_key` gathers the three parts; :func:`key_mismatch` says in words which parts
  of a stored key differ from the current one.

What is left out of :func:`module_fingerprint`, on purpose: the randomness protocol's state
(attributes starting with ``_rl_``: a layer's generator, its seed, its frozen draws and depth),
which advances with every forward and is re-seeded by the evaluator; draw records that layers
keep for inspection (:data:`DRAW_STATE`); ``nn.Module``'s own bookkeeping (the parameter,
buffer, submodule and hook dicts, which are fingerprinted through their contents); and a loaded
checkpoint's ``robustlab_header`` (provenance: metrics, versions; the weights it describes are
hashed directly). Global module hooks (``torch.nn.modules.module.register_module_forward_hook``)
are not seen either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import json
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..attacks import Attack, logits_of
from ..attacks.losses import LOSSES
from ..core.checkpoint import update_tensor_hash
from ..core.randomness import seed_stochastic
from .battery import Battery

__all__ = [
    "DRAW_STATE",
    "FINGERPRINT_VERSION",
    "attack_fingerprint",
    "battery_fingerprint",
    "behaviour_key",
    "key_mismatch",
    "module_fingerprint",
    "output_fingerprint",
    "probe_logits",
]

FINGERPRINT_VERSION = 1
"""Bumped whenever what the fingerprints cover changes (old keys then never match)."""

DRAW_STATE: dict[str, frozenset[str]] = {
    "robustlab.defenses.dcs.RandomKernelConv2d": frozenset({"last_positions", "_held"}),
}
"""Plain attributes that record a layer's latest random draws rather than configure it, by the
layer's ``module.qualname``; left out of :func:`module_fingerprint` like the ``_rl_`` state.
(DCS keeps ``last_positions``, the positions the latest forward used, and ``_held``, the draw
``redraw="batch"`` holds until the next resample.) A layer class can also name such attributes
itself in a class attribute ``fingerprint_exclude``."""

_MODULE_INTERNALS = frozenset(vars(nn.Module())) | frozenset(
    {
        "_parameters",
        "_buffers",
        "_modules",
        "_non_persistent_buffers_set",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_is_full_backward_hook",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
        "_compiled_call_impl",
        "training",  # fingerprinted on its own
    }
)
"""What ``nn.Module.__init__`` puts in every module's ``__dict__``: bookkeeping, not config."""

_EXCLUDED_ATTRIBUTES = frozenset({"robustlab_header"})
"""Plain attributes that are provenance, not behaviour (see the module docstring)."""

_HOOK_DICTS = (
    ("forward", "_forward_hooks"),
    ("forward_pre", "_forward_pre_hooks"),
    ("backward", "_backward_hooks"),
    ("backward_pre", "_backward_pre_hooks"),
)


def _qualname(obj: Any) -> str:
    """``module.qualname`` of a function, class or callable object (its class's name)."""
    if isinstance(obj, functools.partial):
        return f"functools.partial({_qualname(obj.func)})"
    target = obj if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType,
                                     types.MethodType)) else type(obj)
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    return f"{module}.{name}"


def _tensor_hash(t: torch.Tensor) -> str:
    h = hashlib.sha256()
    update_tensor_hash(h, t)
    return h.hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


_NOT_SCALAR = object()


def _scalar(value: Any) -> Any:
    """An enum by name, ``None``, bools, ints and strings as they are, finite floats as they
    are and others by ``repr``; anything else gives ``_NOT_SCALAR``."""
    if isinstance(value, enum.Enum):
        return f"{_qualname(value)}.{value.name}"
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    return _NOT_SCALAR


# ------------------------------------------------------------------------------------- modules
def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-ready rendering of a module attribute that changes with what it configures.

    Scalars, strings and ``None`` as they are; tuples, lists and dicts recursively; tensors
    (stored as plain attributes, not buffers) by dtype, shape and content hash; dtypes,
    devices and enums by name; functions by qualified name; modules held outside
    ``_modules`` and any other object by their type alone (their presence, not their state:
    recursing could loop through a back-reference, and an object's ``repr`` may hold an
    address that changes from run to run).
    """
    if depth > 8:
        return {"object": type(value).__qualname__}
    scalar = _scalar(value)
    if scalar is not _NOT_SCALAR:
        return scalar
    if isinstance(value, (tuple, list)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v, depth + 1) for v in value), key=lambda v: _canonical(v))
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else repr(k)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype), "shape": list(value.shape), "sha256": _tensor_hash(value)}
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(value)
    if isinstance(value, nn.Module):
        return {"module": _qualname(value)}
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                          functools.partial)):
        return {"callable": _qualname(value)}
    return {"object": _qualname(value)}


def _excluded(m: nn.Module) -> frozenset[str]:
    names = set(_EXCLUDED_ATTRIBUTES)
    for cls in type(m).__mro__:
        names |= DRAW_STATE.get(f"{cls.__module__}.{cls.__qualname__}", frozenset())
    own = getattr(type(m), "fingerprint_exclude", ())
    if isinstance(own, (tuple, list, set, frozenset)):
        names |= {str(n) for n in own}
    return frozenset(names)


def _declared_config(m: nn.Module) -> Any:
    """What ``m.config()`` / ``m.get_config()`` returns, or a ``config`` object's ``to_dict()``;
    ``None`` when the module declares neither (a plain dict attribute named ``config`` is
    already among the plain attributes, and a submodule of that name among the modules)."""
    out: dict[str, Any] = {}
    for attr in ("config", "get_config"):
        value = getattr(m, attr, None)
        if value is None or isinstance(value, (nn.Module, Mapping)):
            continue
        if callable(value):
            out[attr] = _plain(value())
        elif callable(getattr(value, "to_dict", None)):
            out[attr] = _plain(value.to_dict())
    return out or None


def _hooks(m: nn.Module) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind, attr in _HOOK_DICTS:
        hooks = getattr(m, attr, None)
        if hooks:
            out[kind] = [_qualname(h) for h in hooks.values()]
    return out


def _module_record(name: str, m: nn.Module) -> dict[str, Any]:
    excluded = _excluded(m)
    attrs = {
        k: _plain(v)
        for k, v in vars(m).items()
        if k not in _MODULE_INTERNALS
        and k not in excluded
        and not k.startswith("_rl_")
        and not k.startswith("__")
    }
    record: dict[str, Any] = {
        "name": name,
        "class": _qualname(m),
        "training": bool(m.training),
        "extra_repr": m.extra_repr(),
        "attributes": attrs,
        "hooks": _hooks(m),
        "non_persistent": sorted(getattr(m, "_non_persistent_buffers_set", ())),
    }
    declared = _declared_config(m)
    if declared is not None:
        record["config"] = declared
    return record


def module_fingerprint(model: nn.Module) -> str:
    """SHA-256 of everything about ``model`` that decides what its forward computes.

    For every submodule (``model.named_modules()``, ``model`` itself included): its name,
    class (``module.qualname``), ``training`` flag, ``extra_repr()``, the configuration it
    declares (``config()`` / ``get_config()``, or a ``config`` object's ``to_dict()``), its
    plain attributes (those in ``vars(m)`` that are not ``nn.Module`` bookkeeping, including
    private ones such as ``_exclude``; tensors held as plain attributes by content; other
    objects by type), its forward / forward-pre / backward hooks (count and qualified names,
    in order), and every buffer (persistent or not) and parameter by name, dtype, shape and
    bytes.

    Left out: the randomness protocol's state (attributes starting with ``_rl_``: generator,
    seed, frozen draws and depth), the draw records of :data:`DRAW_STATE` and a class's
    ``fingerprint_exclude``, and ``robustlab_header``; so a forward, which advances the
    random layers' generators, leaves the fingerprint as it was.

    Args:
        model: any ``nn.Module``.

    Returns:
        A 64-character hex digest.

    Raises:
        Whatever a module's own ``config()`` / ``get_config()`` raises.
    """
    h = hashlib.sha256()
    h.update(_canonical({"fingerprint_version": FINGERPRINT_VERSION}))
    for name, m in model.named_modules(remove_duplicate=False):
        h.update(_canonical(_module_record(name, m)))
        for kind, tensors in (("buffer", m._buffers), ("parameter", m._parameters)):
            for key in sorted(tensors):
                t = tensors[key]
                h.update(f"{kind}:{name}:{key}:".encode())
                if t is None:
                    h.update(b"None")
                else:
                    update_tensor_hash(h, t)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- outputs
def _snapshot(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, set):
        return set(value)
    return value


def _refill(obj: Any, saved: Any) -> None:
    """Give a dict, list or set back the contents it had (the same object, so references held
    elsewhere see the restored contents too)."""
    obj.clear()
    if isinstance(obj, list):
        obj.extend(saved)
    else:
        obj.update(saved)


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's attributes (generators, seeds, cached draws, draw records, in
    place for dicts, lists and sets) and the contents of every buffer on exit."""
    modules = list(model.modules())
    saved = [(m, {k: (v, _snapshot(v)) for k, v in vars(m).items()}) for m in modules]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in buffers:
                b.copy_(copy)
        for m, attrs in saved:
            d = vars(m)
            for k in [k for k in d if k not in attrs]:
                del d[k]
            for k, (obj, content) in attrs.items():
                d[k] = obj
                if obj is not content:
                    _refill(obj, content)


def probe_logits(
    model: nn.Module | Callable[[torch.Tensor], Any], probe: torch.Tensor, seed: int = 0
) -> torch.Tensor:
    """The logits of ``model`` on ``probe`` with fixed randomness (what
    :func:`output_fingerprint` hashes; keep them to compare with a tolerance instead).

    The forward runs under ``torch.no_grad()`` inside ``torch.random.fork_rng`` (the CPU
    generator, and the probe's CUDA device when it is on one) with the global generator seeded
    to ``seed``, and with every :class:`~robustlab.core.randomness.Stochastic` layer seeded by
    :func:`~robustlab.core.randomness.seed_stochastic` (``model, seed``). Afterwards the global
    RNG, every layer's generator, seed and cached draws, every other attribute the forward
    wrote (e.g. DCS's ``last_positions``) and every buffer (batch-norm statistics of a model in
    training mode) are as they were before the call.

    Args:
        model: the classifier (an ``nn.Module``, or a callable, which is not seeded or restored
            beyond the global RNG); it must already be on ``probe``'s device.
        probe: a fixed input batch.
        seed: the seed of the global generator and of the random layers.

    Returns:
        The ``(N, K)`` logits (see :func:`robustlab.attacks.logits_of`), detached, on the CPU.
    """
    devices = []
    if probe.device.type == "cuda":
        devices = [probe.device.index if probe.device.index is not None else torch.cuda.current_device()]
    restore = _restored(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
    with restore, torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.default_generator.manual_seed(int(seed))
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        if isinstance(model, nn.Module):
            seed_stochastic(model, int(seed))
        out = logits_of(model(probe))
        return out.detach().to("cpu").contiguous()


def output_fingerprint(
    model: nn.Module | Callable[[torch.Tensor], Any], probe: torch.Tensor, seed: int = 0
) -> str:
    """SHA-256 of the model's logits on ``probe`` with fixed randomness (dtype, shape, bytes).

    See :func:`probe_logits` for how the randomness is fixed and what is restored afterwards:
    the random layers are re-seeded for the probe and get their previous generators back, so
    neither the caller's global RNG nor the layers' streams move (``run_battery`` re-seeds the
    layers per stage anyway). Two calls on the same model and device give the same digest; on
    a GPU, kernels that are not bit-deterministic can make it differ, so compare
    :func:`probe_logits` with a tolerance there if that matters.

    Args:
        model: the classifier, on ``probe``'s device.
        probe: a fixed input batch.
        seed: the seed of the global generator and of the random layers.

    Returns:
        A 64-character hex digest.
    """
    return _tensor_hash(probe_logits(model, probe, seed))


# ------------------------------------------------------------------------------------- attacks
def _registered_losses() -> dict[int, str]:
    return {id(LOSSES.get(name)): name for name in LOSSES.names()}


class _Describer:
    """Builds an attack's configuration and collects what cannot be fingerprinted."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.losses = _registered_losses()
        self._active: set[int] = set()

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def callable_problem(self, where: str, attr: str, value: Any) -> str:
        name = _qualname(value)
        field = attr.lstrip("_")
        if field == "loss":
            self.problem(f"{where}: custom loss {name} cannot be fingerprinted")
        elif field == "surrogate":
            self.problem(
                f"{where}: the transfer surrogate {name} is a plain callable, not an nn.Module, "
                "and cannot be fingerprinted"
            )
        else:
            self.problem(f"{where}: attribute {attr!r} holds {name}, which cannot be fingerprinted")
        return name

    def attack(self, attack: Attack, where: str) -> dict[str, Any]:
        if id(attack) in self._active:
            return {"cycle": _qualname(attack)}
        self._active.add(id(attack))
        try:
            return self._attack(attack, where)
        finally:
            self._active.discard(id(attack))

    def _attack(self, attack: Attack, where: str) -> dict[str, Any]:
        attrs = {k: v for k, v in vars(attack).items()
                 if not k.startswith("__") and not k.startswith("_rl_")}
        out: dict[str, Any] = {}
        declared = getattr(attack, "config", None)
        if callable(declared):
            out["config"] = self.value(declared(), where, "config")
        for key, value in attrs.items():
            clean = key.lstrip("_")
            if clean.endswith("_name") and clean[: -len("_name")]:
                out[clean[: -len("_name")]] = self.value(value, where, key)
            elif f"_{clean}_name" in attrs or f"{clean}_name" in attrs:
                # described by its name: fine only when it is the registered callable itself
                if not (callable(value) and id(value) in self.losses):
                    out[f"{clean}_fn"] = self.value(value, where, key)
            elif key.startswith("_") and clean in attrs:
                out[key] = self.value(value, where, key)
            else:
                out[clean] = self.value(value, where, key)
        out.setdefault("name", attack.name)
        out["class"] = _qualname(attack)
        out["threat"] = attack.threat.to_dict()
        return {k: out[k] for k in sorted(out)}

    def value(self, value: Any, where: str, attr: str, depth: int = 0) -> Any:
        if depth > 16:
            self.problem(f"{where}: attribute {attr!r} is nested too deeply to fingerprint")
            return None
        scalar = _scalar(value)
        if scalar is not _NOT_SCALAR:
            return scalar
        if isinstance(value, Attack):
            return self.attack(value, f"{where}.{attr.lstrip('_')}")
        if isinstance(value, Mapping):
            return {str(k): self.value(v, where, f"{attr}[{k!r}]", depth + 1)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if value and all(isinstance(v, Attack) for v in value):
                base = attr.lstrip("_")
                return [self.attack(v, f"{where}.{base}[{i}]") for i, v in enumerate(value)]
            return [self.value(v, where, f"{attr}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, nn.Module):
            return {"module": _qualname(value), "fingerprint": module_fingerprint(value)}
        if isinstance(value, torch.Tensor):
            return {"tensor": str(value.dtype), "shape": list(value.shape),
                    "sha256": _tensor_hash(value)}
        if isinstance(value, (torch.dtype, torch.device)):
            return str(value)
        to_dict = getattr(value, "to_dict", None)
        if callable(to_dict) and not isinstance(value, type):
            return self.value(to_dict(), where, attr, depth + 1)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: self.value(getattr(value, f.name), where, f"{attr}.{f.name}",
                                         depth + 1)
                      for f in dataclasses.fields(value)}
            return {"type": _qualname(value), **fields}
        if isinstance(value, type):
            return {"class": _qualname(value)}
        if callable(value) and id(value) in self.losses:
            return {"loss": self.losses[id(value)]}
        if callable(value):
            return {"callable": self.callable_problem(where, attr, value)}
        state = getattr(value, "__dict__", None)
        if isinstance(state, dict):
            return {"type": _qualname(value),
                    **{str(k): self.value(v, where, f"{attr}.{k}", depth + 1)
                       for k, v in state.items()}}
        text = repr(value)
        if " at 0x" in text:
            self.problem(f"{where}: attribute {attr!r} ({_qualname(value)}) cannot be fingerprinted")
        return text


def attack_fingerprint(attack: Attack, label: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The JSON-ready full configuration of ``attack`` and what in it cannot be fingerprinted.

    Like :func:`robustlab.evaluate.describe_attack` (the attack's attributes, private ones
    without the underscore, a ``<field>_name`` standing for a callable ``<field>``; always
    ``name``, ``class`` and ``threat``), except that:

    - nested attacks (AutoAttack's ``attacks``, a transfer attack's ``attack``, attack lists)
      are described the same way, recursively;
    - a module (a transfer attack's surrogate) is described by :func:`module_fingerprint`, not
      by its state dict, so surrogates that differ in a plain attribute, a non-persistent
      buffer or train/eval mode differ here;
    - a callable stands for itself only when it is the registered function (a loss of
      :data:`robustlab.attacks.LOSSES`, e.g. ``loss="ce"``, or the ``ce_loss`` function
      itself). Any other function, lambda, closure, partial or callable object (a loss given
      as a callable, a surrogate that is a plain function) is a *problem*: its name says
      nothing about what it computes;
    - tensors are described by content, classes by ``module.qualname``, enum members by name,
      other objects by their type and attributes (an object whose ``repr`` holds an address is
      a problem).

    An attack class's own ``config()`` is included (as ``config``) but does not replace the
    attribute scan, so a callable it leaves out is still found.

    Args:
        attack: any :class:`robustlab.attacks.Attack`.
        label: how problems name the attack (default its ``name``); nested attacks are named
            by their path, e.g. ``transfer.attack`` or ``autoattack.attacks[1]``.

    Returns:
        ``(config, problems)``: the configuration, and one human-readable line per thing that
        cannot be fingerprinted, naming the attack and the attribute (empty when the
        configuration identifies the attack's behaviour).
    """
    d = _Describer()
    config = d.attack(attack, label if label is not None else attack.name)
    return config, d.problems


def battery_fingerprint(battery: Battery) -> tuple[dict[str, Any], list[str]]:
    """:func:`attack_fingerprint` over a battery's attacks, each under its label.

    Returns:
        ``({"name": ..., "attacks": [{"label": ..., **config}, ...]}, problems)``; problems
        name the attack by its battery label.
    """
    attacks: list[dict[str, Any]] = []
    problems: list[str] = []
    for label, attack in zip(battery.labels, battery.attacks, strict=True):
        config, found = attack_fingerprint(attack, label)
        attacks.append({"label": label, **config})
        problems.extend(p for p in found if p not in problems)
    return {"name": battery.name, "attacks": attacks}, problems


def behaviour_key(
    model: nn.Module, battery: Battery, probe: torch.Tensor, seed: int = 0
) -> tuple[dict[str, Any], list[str]]:
    """The parts of a resume key that identify behaviour, and what cannot be fingerprinted.

    Args:
        model: the evaluated model, on ``probe``'s device.
        battery: the battery it is evaluated with.
        probe: a fixed input batch (e.g. the first few evaluation images).
        seed: the seed of the probe's randomness (:func:`output_fingerprint`).

    Returns:
        ``({"module": module_fingerprint(model), "outputs": output_fingerprint(model, probe,
        seed), "battery": battery_fingerprint(battery)[0]}, problems)``; a non-empty
        ``problems`` means the run should not be resumed (say so once, listing them).
    """
    battery_config, problems = battery_fingerprint(battery)
    key = {
        "module": module_fingerprint(model),
        "outputs": output_fingerprint(model, probe, seed),
        "battery": battery_config,
    }
    return key, problems


_PART_NAMES = {
    "module": "the model's configuration or weights differ (module fingerprint: a layer's "
              "attribute, buffer, parameter, hook or train/eval mode)",
    "outputs": "the model's outputs on the fixed probe differ",
}


def _diff(old: Any, new: Any, path: str, out: list[str], limit: int = 5) -> None:
    if len(out) >= limit or old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k), out, limit)
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _diff(a, b, f"{path}[{i}]", out, limit)
        return
    out.append(f"{path or 'value'}: {json.dumps(old, default=str)[:80]} -> "
               f"{json.dumps(new, default=str)[:80]}")


def key_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Why a stored :func:`behaviour_key` does not match the current one, in words.

    Args:
        stored: the key saved with the evaluation state.
        current: the key of the model and battery now.

    Returns:
        One line per differing part (for the battery, up to five differing fields by path,
        e.g. ``attacks[0].steps: 10 -> 20``); empty when the keys match.
    """
    reasons: list[str] = []
    for part in sorted(set(stored) | set(current)):
        old, new = stored.get(part), current.get(part)
        if old == new:
            continue
        if part in _PART_NAMES:
            reasons.append(_PART_NAMES[part])
        elif part == "battery":
            fields: list[str] = []
            _diff(old, new, "", fields)
            reasons.append("the battery's configuration differs: " + "; ".join(fields))
        else:
            reasons.append(f"{part} differs")
    return reasons

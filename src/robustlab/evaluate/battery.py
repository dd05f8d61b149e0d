"""Attack batteries: an ordered list of attacks whose per-sample worst case is the robust verdict.

A battery is evaluated by :func:`robustlab.evaluate.run_battery`: every attack sees only the
samples that are still robust, and a sample counts as robust only if it is classified correctly
clean and no attack of the battery broke it. This is the worst-case ensemble of AutoAttack
(Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Sec. 4 and Sec. 5).

Named batteries live in :data:`BATTERIES`; each entry is a factory ``(threat, **options) ->
Battery`` that builds its attacks from their registry names through
:func:`robustlab.attacks.create_attack` when it is called, so a battery works as soon as the
attacks it names are registered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..attacks import ATTACKS, EOT, Attack, create_attack
from ..attacks.square import AUTOATTACK_SQUARE
from ..core.checkpoint import content_hash
from ..core.errors import InputError, UnknownNameError
from ..core.registry import Registry
from ..core.types import ThreatModel

__all__ = [
    "BATTERIES",
    "Battery",
    "BatteryFactory",
    "create_battery",
    "describe_attack",
    "jsonable",
]

BatteryFactory = Callable[..., "Battery"]
"""``factory(threat, **options) -> Battery``: what :data:`BATTERIES` holds."""

BATTERIES: Registry[BatteryFactory] = Registry("battery")
"""Named batteries: ``quick``, ``standard``, ``rand``, ``full``."""


def jsonable(value: Any) -> Any:
    """A JSON-ready rendering of a configuration value (for ledgers and state keys).

    Threat models and other objects with ``to_dict()`` give their dict; dataclasses give their
    type name and fields; attacks give :func:`describe_attack`; modules (a transfer attack's
    surrogate) give their type, parameter count and weight hash; tensors give dtype and shape;
    callables give their qualified name; anything else its ``repr``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, Attack):
        return describe_attack(value)
    if isinstance(value, nn.Module):
        return {
            "type": type(value).__name__,
            "parameters": sum(p.numel() for p in value.parameters()),
            "hash": content_hash(dict(value.state_dict()), {}),
        }
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype), "shape": list(value.shape)}
    if callable(value):
        return getattr(value, "__qualname__", getattr(value, "__name__", type(value).__name__))
    return repr(value)


def describe_attack(attack: Attack) -> dict[str, Any]:
    """The JSON-ready configuration of ``attack``: name, threat, steps, loss, EOT draws, ...

    Uses ``attack.config()`` when the attack class provides it; otherwise derives the
    description from the attack's attributes (public ones, and private ones with the leading
    underscore removed; a ``<field>_name`` attribute stands for a callable ``<field>``). The
    result always holds ``name``, ``class`` and ``threat``.
    """
    config = getattr(attack, "config", None)
    out: dict[str, Any]
    if callable(config):
        out = jsonable(config())
        if not isinstance(out, dict):
            raise InputError(f"{type(attack).__name__}.config() must return a dict, got {out!r}")
    else:
        attrs = {
            k: v
            for k, v in vars(attack).items()
            if not k.startswith("__") and not k.startswith("_rl_")
        }
        out = {}
        for key, value in attrs.items():
            clean = key.lstrip("_")
            if key.startswith("_") and clean in attrs:
                continue  # a public attribute of the same name wins
            if clean.endswith("_name") and clean[: -len("_name")]:
                out[clean[: -len("_name")]] = jsonable(value)
                continue
            if f"_{clean}_name" in attrs or f"{clean}_name" in attrs:
                continue  # described by its name
            out[clean] = jsonable(value)
    out.setdefault("name", attack.name)
    out["class"] = type(attack).__name__
    out["threat"] = attack.threat.to_dict()
    return {k: out[k] for k in sorted(out)}


def _labels(attacks: Sequence[Attack]) -> tuple[str, ...]:
    """One unique label per attack: its name, with ``#2``, ``#3``, ... for repeats."""
    seen: dict[str, int] = {}
    labels = []
    for a in attacks:
        seen[a.name] = seen.get(a.name, 0) + 1
        labels.append(a.name if seen[a.name] == 1 else f"{a.name}#{seen[a.name]}")
    return tuple(labels)


class Battery:
    """An ordered, immutable list of attacks evaluated as a per-sample worst case.

    Args:
        attacks: the attacks, run in this order; each one sees only the samples every earlier
            attack failed to break (cheap attacks first saves time, as in AutoAttack).
        name: a label for reports and the ledger (the registry name for named batteries).
        labels: one unique label per attack for per-attack results; default the attack names,
            with ``#2``, ``#3`` appended to repeated names.

    Raises:
        InputError: for an empty list, a non-attack, or labels that are not unique.
    """

    def __init__(
        self,
        attacks: Sequence[Attack],
        name: str = "custom",
        *,
        labels: Sequence[str] | None = None,
    ) -> None:
        attacks = tuple(attacks)
        if not attacks:
            raise InputError("a battery needs at least one attack")
        for a in attacks:
            if not isinstance(a, Attack):
                raise InputError(
                    f"battery entries must be robustlab.attacks.Attack objects, got "
                    f"{type(a).__name__}; build them with create_attack(name, threat, ...)"
                )
        labs = _labels(attacks) if labels is None else tuple(str(s) for s in labels)
        if len(labs) != len(attacks) or len(set(labs)) != len(labs):
            raise InputError(f"a battery needs one unique label per attack, got {list(labs)}")
        self._attacks = attacks
        self._labels = labs
        self._name = str(name)

    @property
    def attacks(self) -> tuple[Attack, ...]:
        """The attacks, in the order they run."""
        return self._attacks

    @property
    def labels(self) -> tuple[str, ...]:
        """One unique label per attack, in order (the keys of per-attack results)."""
        return self._labels

    @property
    def name(self) -> str:
        """The battery's name."""
        return self._name

    def __len__(self) -> int:
        return len(self._attacks)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._attacks)

    def __repr__(self) -> str:
        return f"Battery({self._name!r}, {list(self._labels)})"

    def config(self) -> dict[str, Any]:
        """JSON-ready description: the name and every attack's :func:`describe_attack`."""
        return {
            "name": self._name,
            "attacks": [
                {"label": lab, **describe_attack(a)} for lab, a in zip(self._labels, self._attacks, strict=True)
            ],
        }

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON :meth:`config` (part of resumable-state keys)."""
        blob = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def create_battery(name: str, threat: ThreatModel, **options: Any) -> Battery:
    """Build the battery registered as ``name`` for ``threat``.

    Args:
        name: a name in :data:`BATTERIES` (``quick``, ``standard``, ``rand``, ``full``).
        threat: the threat model every attack of the battery uses.
        **options: the battery's own options (``full`` takes ``surrogate``).

    Raises:
        UnknownNameError: for an unknown battery (listing the known ones), or a battery whose
            attacks are not registered yet (listing the registered attacks).
    """
    factory = BATTERIES.get(name)
    battery = factory(threat, **options)
    return battery


_Spec = tuple[str, dict[str, Any]]

# Each attack of a named battery, as registry names to try in order (the first registered wins):
# APGD-CE / APGD-DLR may be registered under their own names or as ``apgd`` with a loss.
_APGD_CE: tuple[_Spec, ...] = (("apgd-ce", {}), ("apgd", {"loss": "ce"}))
_APGD_DLR: tuple[_Spec, ...] = (("apgd-dlr", {}), ("apgd", {"loss": "dlr"}))


def _attack(battery: str, specs: Sequence[_Spec], threat: ThreatModel, **kwargs: Any) -> Attack:
    for name, preset in specs:
        if name in ATTACKS:
            return create_attack(name, threat, **preset, **kwargs)
    wanted = " or ".join(repr(name) for name, _ in specs)
    raise UnknownNameError(
        f"battery {battery!r} needs attack {wanted}, which is not registered; registered "
        f"attacks: {', '.join(ATTACKS.names())}"
    )


def _quick(threat: ThreatModel, *, steps: int = 20) -> Battery:
    """PGD-20 with a random start (Madry et al., 2018, Sec. 5): a fast first look, not a verdict."""
    return Battery([_attack("quick", [("pgd", {})], threat, steps=steps)], name="quick", labels=["pgd"])


_STANDARD_LABELS = ("apgd-ce", "apgd-t", "fab-t", "square")


def _standard_attacks(threat: ThreatModel, battery: str) -> list[Attack]:
    return [
        _attack(battery, _APGD_CE, threat),
        _attack(battery, [("apgd-t", {})], threat),
        _attack(battery, [("fab-t", {})], threat),
        _attack(battery, [("square", {})], threat, **AUTOATTACK_SQUARE),
    ]


def _standard(threat: ThreatModel) -> Battery:
    """AutoAttack, standard version (Croce & Hein, 2020, Sec. 5): APGD-CE, APGD-T (9 targets),
    FAB-T (9 targets), Square (5000 queries, ``p_init`` 0.8, no schedule rescaling), each at
    the reference implementation's settings."""
    return Battery(_standard_attacks(threat, "standard"), name="standard", labels=_STANDARD_LABELS)


_RAND_LABELS = ("apgd-ce-eot", "apgd-dlr-eot")


def _rand_attacks(threat: ThreatModel, eot: int, battery: str, bpda: str | None = None) -> list[Attack]:
    grad = EOT(n=eot)
    extra: dict[str, Any] = {} if bpda is None else {"bpda": bpda}
    return [_attack(battery, _APGD_CE, threat, grad=grad, **extra),
            _attack(battery, _APGD_DLR, threat, grad=grad, **extra)]


def _rand(threat: ThreatModel, *, eot: int = 20, bpda: str | None = None) -> Battery:
    """AutoAttack, version ``rand`` for randomized defenses (Croce & Hein, 2020, Sec. 5 and the
    reference implementation): APGD-CE and APGD-DLR, each with EOT over ``eot`` draws
    (Athalye et al., 2018, Sec. 4.3); with ``bpda`` (``identity``, ``smooth``, ``bypass``) both
    run through the model's BPDA layers in that mode (AA rand + BPDA for non-differentiable
    defenses, Sec. 4.1)."""
    return Battery(_rand_attacks(threat, eot, "rand", bpda), name="rand", labels=_RAND_LABELS)


def _full(threat: ThreatModel, *, eot: int = 20, surrogate: nn.Module | None = None) -> Battery:
    """Everything: AutoAttack standard's attacks (APGD-CE, APGD-T, FAB-T; Square at AutoAttack's
    settings but, on randomized models, on the expected margin over ``eot`` draws), then the
    ``rand`` attacks (APGD-CE and APGD-DLR with EOT), then a transfer attack from ``surrogate``
    when one is given (Papernot et al., 2017; a check against gradient masking, Athalye et
    al., 2018, Sec. 3.1)."""
    attacks = [*_standard_attacks(threat, "full"), *_rand_attacks(threat, eot, "full")]
    # On a randomized model Square queries the expected margin over ``eot`` draws (on a
    # deterministic one this is AutoAttack's Square).
    attacks[3] = _attack("full", [("square", {})], threat, eot=eot, **AUTOATTACK_SQUARE)
    labels = [*_STANDARD_LABELS, *_RAND_LABELS]
    if surrogate is not None:
        attacks.append(_attack("full", [("transfer", {})], threat, surrogate=surrogate))
        labels.append("transfer")
    return Battery(attacks, name="full", labels=labels)


BATTERIES.register("quick", _quick, description="PGD-20 (Madry et al., 2018)")
BATTERIES.register(
    "standard", _standard, description="AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square"
)
BATTERIES.register("rand", _rand, description="AutoAttack rand: APGD-CE, APGD-DLR with EOT-20")
BATTERIES.register(
    "full", _full, description="standard + rand (+ transfer from a surrogate when given)"
)


def sparse_attacks(threat: ThreatModel, *, steps: int = 20, eot: int = 40, step_fraction: float = 0.125,
                   mode: str = "w-nfga-smooth") -> Attack:
    """One of the sparse randomized encoder paper's white-box attack modes (Bakiskan et al.,
    Sec. 4 and Sec. 5 "Default attack parameters"): PGD from ``e_0 = 0`` (no random start),
    ``steps`` steps of ``step_fraction * eps`` (the paper: 20 steps of 1/255 at eps 8/255,
    i.e. eps/8), EOT over ``eot`` draws (the paper: N_E = 40), run to the end (no early stop).

    Modes: ``w-nfga-identity`` / ``w-nfga-smooth`` (every operation differentiated except the
    activation/quantization, approximated by the identity or by Eq. 9-10: ``bpda="identity"`` /
    ``"smooth"``); ``w-aiga`` (the whole autoencoder backpropagated as the identity:
    ``bpda="bypass"``); ``eot-normalized`` (W-NFGA smooth with the per-sample L2-normalized EOT
    average of the paper's attack code).
    """
    bpda = {"w-nfga-identity": "identity", "w-nfga-smooth": "smooth", "w-aiga": "bypass",
            "eot-normalized": "smooth"}
    if mode not in bpda:
        raise InputError(f"unknown sparse attack mode {mode!r}; use one of {', '.join(bpda)}")
    grad = EOT(n=eot, normalize=mode == "eot-normalized")
    return create_attack("pgd", threat, steps=steps, step_size=step_fraction * threat.eps, random_start=False,
                         early_stop=False, grad=grad, bpda=bpda[mode])


SPARSE_MODES = ("w-nfga-identity", "w-nfga-smooth", "w-aiga", "eot-normalized")


def _sparse(threat: ThreatModel, *, steps: int = 20, eot: int = 40, surrogate: nn.Module | None = None,
            strongest: bool = True) -> Battery:
    """The sparse randomized encoder paper's adapted attacks (Bakiskan et al., Sec. 4), then the
    library's strongest: W-NFGA (identity and smooth BPDA on the quantizer), W-AIGA (the
    autoencoder as the identity), EOT with normalized gradients; PW-T when ``surrogate`` (the
    unsupervised-decoder twin) is given: W-AIGA and W-NFGA crafted on it and transferred; with
    ``strongest``, AutoAttack ``rand`` with smooth BPDA and Square on the expected margin over
    ``eot`` draws. The battery keeps the per-sample worst case of them all."""
    attacks = [sparse_attacks(threat, steps=steps, eot=eot, mode=m) for m in SPARSE_MODES]
    labels = list(SPARSE_MODES)
    if surrogate is not None:
        for m in ("w-aiga", "w-nfga-smooth"):
            attacks.append(create_attack("transfer", threat, surrogate=surrogate,
                                         attack=sparse_attacks(threat, steps=steps, eot=eot, mode=m)))
            labels.append(f"pw-t {m}")
    if strongest:
        attacks += _rand_attacks(threat, eot, "sparse", "smooth")
        labels += [f"{label}-bpda" for label in _RAND_LABELS]
        attacks.append(_attack("sparse", [("square", {})], threat, eot=eot, **AUTOATTACK_SQUARE))
        labels.append("square-eot")
    return Battery(attacks, name="sparse", labels=labels)


BATTERIES.register(
    "sparse", _sparse,
    description="sparse-encoder paper's attacks (W-NFGA, W-AIGA, normalized EOT, PW-T with a surrogate) + AA rand/BPDA + Square-EOT")

"""The peers of ``benchmarks/speed.py``: the reference AutoAttack (a snapshot on disk) and
torchattacks, built at the same settings as robustlab's attacks.

The reference implementation (Croce & Hein, github.com/fra31/auto-attack) is never installed:
its repository root (the folder holding ``autoattack/``) is put on ``sys.path`` for the run,
so the benchmark measures exactly the snapshot the user points at.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "load_reference",
    "reference_autoattack",
    "torchattacks_autoattack",
    "torchattacks_eot_apgd",
    "torchattacks_pgd",
]


def load_reference(path: str | None) -> tuple[Any | None, str]:
    """The reference ``autoattack`` package from the repository root ``path``, or ``None`` and
    the reason it could not be used (the rows that need it are skipped with that reason)."""
    if not path:
        return None, "no --reference given (the root of a fra31/auto-attack snapshot)"
    root = Path(path).expanduser().resolve()
    if not (root / "autoattack" / "__init__.py").is_file():
        return None, f"{root} holds no autoattack/__init__.py; pass the repository root"
    loaded = sys.modules.get("autoattack")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(root)):
        return None, f"another autoattack is already imported ({loaded.__file__})"
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("autoattack")
        module.AutoAttack  # noqa: B018 - the class the benchmark needs
    except Exception as exc:  # a broken snapshot is a skipped row, not a crash
        return None, f"importing autoattack from {root} failed: {type(exc).__name__}: {exc}"
    return module, str(root)


def _set_apgd_iterations(apgd: Any, steps: int) -> None:
    """Set a reference APGD's iterations, with the checkpoint schedule its constructor derives
    from them (``autopgd_base.APGDAttack.__init__``)."""
    apgd.n_iter = apgd.n_iter_orig = steps
    apgd.n_iter_2 = max(int(0.22 * steps), 1)
    apgd.n_iter_min = max(int(0.06 * steps), 1)
    apgd.size_decr = max(int(0.03 * steps), 1)


def reference_autoattack(
    module: Any, model: nn.Module, eps: float, device: str, *, steps: int, n_queries: int
) -> Any:
    """The reference AutoAttack, version ``standard`` (APGD-CE, APGD-T with 9 targets, FAB-T
    with 9 targets, Square), seed 0, silent; ``steps`` and ``n_queries`` other than 100 and
    5,000 only for smoke runs (``--quick``)."""
    attack = module.AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device,
                               seed=0, verbose=False)
    if steps != 100:
        _set_apgd_iterations(attack.apgd, steps)
        _set_apgd_iterations(attack.apgd_targeted, steps)
        attack.fab.n_iter = steps
    attack.square.n_queries = n_queries
    return attack


def torchattacks_autoattack(model: nn.Module, eps: float, *, steps: int, n_queries: int) -> Any:
    """AutoAttack ``standard`` assembled from torchattacks' attacks at the reference settings:
    its own ``AutoAttack`` class builds them with 10 iterations, so the ``MultiAttack`` is
    built here (as ``benchmarks/attacks_vs_torchattacks.py`` does)."""
    import torchattacks

    return torchattacks.MultiAttack([
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0),
        torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, n_classes=10, seed=0),
        torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, multi_targeted=True,
                         n_classes=10, seed=0),
        torchattacks.Square(model, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=1, seed=0),
    ])


def torchattacks_eot_apgd(model: nn.Module, eps: float, *, steps: int, eot: int) -> Any:
    """APGD-CE then APGD-DLR with EOT over ``eot`` draws, one restart each, as a
    ``MultiAttack`` (the second attacks only what the first left correctly classified)."""
    import torchattacks

    return torchattacks.MultiAttack([
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss=loss, seed=0,
                          eot_iter=eot, rho=0.75)
        for loss in ("ce", "dlr")
    ])


def torchattacks_pgd(model: nn.Module, eps: float, *, steps: int) -> Any:
    """PGD with a random start and step ``2.5 eps / steps`` (Madry et al., 2018)."""
    import torchattacks

    return torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)

"""Named batteries that reproduce a paper's own evaluation protocol.

``dcs-paper``: the deformable-conv-stochasticity paper's white-box protocol (Algorithm 2 and
Sec. 5.1, "Benchmarks"): PGD with a random start, 20 steps of ``eps / 4`` (2/255 at 8/255), run on
one frozen random path and judged on a freshly drawn path
(:class:`~robustlab.attacks.FixedPathPGD`). It reports what the paper reports, which is not a
robustness verdict against an adaptive attacker: compare it with the ``rand`` battery (EOT).
"""

from __future__ import annotations

from ..attacks import create_attack
from ..core.types import ThreatModel
from .battery import BATTERIES, Battery

__all__ = ["dcs_paper"]


def dcs_paper(threat: ThreatModel, *, steps: int = 20, step_size: float | None = None) -> Battery:
    """The DCS paper's protocol (Algorithm 2): fixed-path PGD-``steps`` with step ``eps / 4``
    by default, verdict on a fresh path."""
    attack = create_attack("fixed-path-pgd", threat, steps=steps, step_size=step_size)
    return Battery([attack], name="dcs-paper", labels=["fixed-path-pgd"])


BATTERIES.register(
    "dcs-paper",
    dcs_paper,
    description="DCS paper, Alg. 2: PGD-20 on one frozen random path, judged on a fresh path",
)

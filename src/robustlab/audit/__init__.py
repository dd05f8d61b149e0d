"""Can this number be trusted? An automatic audit of a robustness evaluation.

Three parts, on the same images:

- :mod:`.binarization`: the decision-boundary binarization test (Zimmermann, Brendel, Tramèr and
  Carlini, "Increasing Confidence in Adversarial Robustness Evaluations", NeurIPS 2022), an
  *active* test: per image the model's head is replaced by a linear readout for which an
  adversarial example provably exists inside the threat model, and the evaluation's attack must
  find it (one image's problem: :mod:`.problem`, its points: :mod:`.points`, the penultimate
  features of any model: :mod:`.features`);
- :mod:`.checks`: the passive checklist of Carlini et al. (2019) and Athalye et al. (2018)
  (iterative beats single-step, white-box beats black-box, accuracy falls to chance as eps grows,
  more steps do not help the defense, EOT converges, BPDA vs plain gradients, gradient health,
  transfer, disagreement between draws), with the evaluation's sanity warnings among its items
  (its settings and outcomes: :mod:`.checklist`, its measurements: :mod:`.measures`);
- :mod:`.verdict`: one verdict, the per-image worst case over every attack the audit ran, and
  :mod:`.report`, the audit as ``audit.md``, ``audit.json`` and plots.

The audit judges *the evaluation*, not the model: a robust model evaluated by a weak attack fails.
"""

from .binarization import (
    BinarizationResult,
    BinarizationSample,
    BinarizationSettings,
    binarization_test,
)
from .checks import Check, Checklist, CheckSettings, run_checks
from .features import binarized, features, find_head
from .report import audit_markdown, write_audit
from .verdict import AUDIT_PROFILES, AuditResult, AuditSettings, audit, audit_settings

__all__ = [
    "AUDIT_PROFILES",
    "AuditResult",
    "AuditSettings",
    "BinarizationResult",
    "BinarizationSample",
    "BinarizationSettings",
    "Check",
    "CheckSettings",
    "Checklist",
    "audit",
    "audit_markdown",
    "audit_settings",
    "binarization_test",
    "binarized",
    "features",
    "find_head",
    "run_checks",
    "write_audit",
]

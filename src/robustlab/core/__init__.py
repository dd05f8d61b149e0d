"""Foundations every other package stands on: registry, errors, config types, input checks,
checkpoint io, and (for honest evaluation) the randomness and BPDA protocols.

``core`` imports nothing of robustlab's beyond itself.
"""

from .checks import (
    check_images,
    check_int,
    check_labels,
    check_number,
    check_positive_int,
    check_probability,
    is_int,
    is_number,
)
from .errors import (
    CheckpointError,
    DataNotFoundError,
    DuplicateNameError,
    InputError,
    RobustlabError,
    UnknownNameError,
)
from .registry import Registry
from .types import ThreatModel

__all__ = [
    "CheckpointError",
    "DataNotFoundError",
    "DuplicateNameError",
    "InputError",
    "Registry",
    "RobustlabError",
    "ThreatModel",
    "UnknownNameError",
    "check_images",
    "check_int",
    "check_labels",
    "check_number",
    "check_positive_int",
    "check_probability",
    "is_int",
    "is_number",
]

"""Training: ``Trainer``, objectives, optimizers, schedules, EMA and callbacks."""

from .callbacks import Callback, RichProgress
from .ema import EMA
from .objectives import OBJECTIVES, Objective, ObjectiveOutput, Standard, create_objective
from .optim import OPTIMIZERS, create_optimizer, param_groups
from .robust import PGDAT, pgd_perturb
from .schedules import HORIZON_FREE, SCHEDULES, create_schedule, horizon_free
from .trainer import (
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    TrainConfig,
    Trainer,
    TrainResult,
    data_fingerprint,
)

__all__ = [
    "EMA",
    "HORIZON_FREE",
    "METRICS_FILE",
    "MODEL_FILE",
    "OBJECTIVES",
    "OPTIMIZERS",
    "PGDAT",
    "SCHEDULES",
    "STATE_FILE",
    "Callback",
    "Objective",
    "ObjectiveOutput",
    "RichProgress",
    "Standard",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "create_objective",
    "create_optimizer",
    "create_schedule",
    "data_fingerprint",
    "horizon_free",
    "param_groups",
    "pgd_perturb",
]

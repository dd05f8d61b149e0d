"""Training: ``Trainer``, objectives, optimizers, schedules, EMA and callbacks."""

from .callbacks import Callback, RichProgress
from .ema import EMA
from .objectives import OBJECTIVES, Objective, ObjectiveOutput, Standard, create_objective
from .optim import OPTIMIZERS, create_optimizer, param_groups
from .robust import PGDAT, pgd_perturb
from .schedules import SCHEDULES, create_schedule
from .trainer import METRICS_FILE, MODEL_FILE, STATE_FILE, TrainConfig, Trainer, TrainResult

__all__ = [
    "EMA",
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
    "param_groups",
    "pgd_perturb",
]

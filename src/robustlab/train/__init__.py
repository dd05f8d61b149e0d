"""Training: ``Trainer``, objectives (standard and the robust family), optimizers, schedules, EMA
and callbacks (progress, best-robust checkpointing)."""

from .awp import AWP, AWP_DEFAULTS
from .callbacks import BEST_ROBUST_FILE, BestRobust, Callback, RichProgress
from .ema import EMA
from .gradnorm import EdgeAlign, GradNorm
from .gsat import GSAT, ResampleEachBatch
from .objectives import OBJECTIVES, Objective, ObjectiveOutput, Standard, create_objective
from .optim import OPTIMIZERS, create_optimizer, param_groups
from .robust import (
    ALP,
    FAT,
    MART,
    MARTRCM,
    PGDAT,
    TRADES,
    AdversarialObjective,
    FastAT,
    attack_mode,
    fat_perturb,
    fgsm_rs_perturb,
    mart_loss,
    mart_rcm_loss,
    pgd_perturb,
)
from .schedules import HORIZON_FREE, SCHEDULES, create_schedule, horizon_free
from .sparse import DecoderRegression, FrozenDecoder
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
    "ALP",
    "AWP",
    "AWP_DEFAULTS",
    "BEST_ROBUST_FILE",
    "EMA",
    "DecoderRegression",
    "FrozenDecoder",
    "EdgeAlign",
    "FAT",
    "GSAT",
    "HORIZON_FREE",
    "MART",
    "MARTRCM",
    "METRICS_FILE",
    "MODEL_FILE",
    "OBJECTIVES",
    "OPTIMIZERS",
    "PGDAT",
    "SCHEDULES",
    "STATE_FILE",
    "TRADES",
    "AdversarialObjective",
    "BestRobust",
    "Callback",
    "FastAT",
    "GradNorm",
    "Objective",
    "ObjectiveOutput",
    "ResampleEachBatch",
    "RichProgress",
    "Standard",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "attack_mode",
    "create_objective",
    "create_optimizer",
    "create_schedule",
    "data_fingerprint",
    "fat_perturb",
    "fgsm_rs_perturb",
    "horizon_free",
    "mart_loss",
    "mart_rcm_loss",
    "param_groups",
    "pgd_perturb",
]

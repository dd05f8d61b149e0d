"""Studies and the main job: the study machinery (config and profiles, variants, columns, typed
per-image records, statistics, claims as data, report), one short recipe per paper, and the demo.

A study registers in :data:`STUDIES`; :func:`run_study` runs any of them by name.
"""

from . import dcs_study, gradnorm_study, sd_study, sparse_study, strides_study  # noqa: F401  (register their recipes)
from .claims import WORST, Claim, Side
from .columns import COLUMN_KINDS, Column
from .demo import DemoConfig, run_demo
from .records import Record, RecordStore
from .report import Cell, Plot, Table
from .stats import paired, seed_average, worst_case
from .study import STUDIES, Plan, Profile, Study, StudyConfig, StudyResult, run_study, study_config
from .variants import Convert, Load, Ref, Train, TrainSpec, Variant

__all__ = [
    "COLUMN_KINDS",
    "STUDIES",
    "WORST",
    "Cell",
    "Claim",
    "Column",
    "Convert",
    "DemoConfig",
    "Load",
    "Ref",
    "Plan",
    "Plot",
    "Profile",
    "Record",
    "RecordStore",
    "Side",
    "Study",
    "StudyConfig",
    "StudyResult",
    "Table",
    "Train",
    "TrainSpec",
    "Variant",
    "paired",
    "run_demo",
    "run_study",
    "seed_average",
    "study_config",
    "worst_case",
]

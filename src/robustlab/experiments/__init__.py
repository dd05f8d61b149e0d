"""Studies and the main job: the study machinery (config and profiles, variants, columns, typed
per-image records, statistics, claims as data, report), one short recipe per paper, and the demo.

A study is one recipe module named ``*_study.py`` in this package: importing the package imports
every such module, and each registers its :class:`Study` (name, profiles, demo part) in
:data:`STUDIES`; :func:`run_study` runs any of them by name, ``robustlab run --list`` lists them
and the demo runs those with a demo part.
"""

import importlib
import pkgutil

from .claims import WORST, Claim, Side
from .columns import COLUMN_KINDS, Column
from .demo import DemoConfig, run_demo
from .records import Record, RecordStore
from .report import Cell, Plot, Table
from .stats import paired, seed_average, worst_case
from .study import (
    STUDIES,
    DemoPart,
    Plan,
    Profile,
    Study,
    StudyConfig,
    StudyResult,
    register_study,
    run_study,
    study_config,
)
from .variants import Convert, Load, Ref, Train, TrainSpec, Variant

for _recipe in pkgutil.iter_modules(__path__):
    if _recipe.name.endswith("_study"):
        importlib.import_module(f"{__name__}.{_recipe.name}")

__all__ = [
    "COLUMN_KINDS",
    "STUDIES",
    "WORST",
    "Cell",
    "Claim",
    "Column",
    "Convert",
    "DemoConfig",
    "DemoPart",
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
    "register_study",
    "run_demo",
    "run_study",
    "seed_average",
    "study_config",
    "worst_case",
]

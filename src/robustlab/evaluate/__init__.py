"""Honest robustness evaluation: attack batteries, resumable runs and the results ledger.

::

    from robustlab.evaluate import Ledger, run_battery

    result = run_battery(model, test_set, "standard", n=1000, seed=0, state_dir=state_dir_for("runs/x"))
    Ledger("runs/x/ledger.sqlite").add(result)
    print(result.markdown())

A battery keeps the per-sample worst case over its attacks and attacks only samples that are
still robust (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", Sec. 4-5). Randomized models are judged by fresh
predictions, optionally ensembled and repeated (Athalye et al., 2018, "Obfuscated Gradients Give
a False Sense of Security", Sec. 4.3).
"""

from .battery import BATTERIES, Battery, BatteryFactory, create_battery, describe_attack, jsonable
from .corruption import CorruptionResult, evaluate_corruptions
from .ledger import CSV_COLUMNS, LeaderboardGroup, Ledger, LedgerRow, leaderboard_groups, record
from .paper_batteries import dcs_paper  # registers the "dcs-paper" battery
from .result import (
    AttackSummary,
    EvalResult,
    battery_threat,
    decode_mask,
    encode_mask,
    format_eps,
    indices_hash,
    mean_std,
    robust_measure,
    worst_case,
)
from .runner import (
    STATE_DIR_NAME,
    ProgressCallback,
    ProgressEvent,
    derive_seed,
    ensemble_predict,
    model_hash,
    model_name,
    run_battery,
    state_dir_for,
    versions,
)
from .state import EvalState

__all__ = [
    "AttackSummary",
    "BATTERIES",
    "Battery",
    "BatteryFactory",
    "CSV_COLUMNS",
    "CorruptionResult",
    "EvalResult",
    "EvalState",
    "LeaderboardGroup",
    "Ledger",
    "LedgerRow",
    "ProgressCallback",
    "ProgressEvent",
    "STATE_DIR_NAME",
    "battery_threat",
    "create_battery",
    "dcs_paper",
    "decode_mask",
    "derive_seed",
    "describe_attack",
    "encode_mask",
    "ensemble_predict",
    "evaluate_corruptions",
    "format_eps",
    "indices_hash",
    "jsonable",
    "leaderboard_groups",
    "mean_std",
    "model_hash",
    "model_name",
    "record",
    "robust_measure",
    "run_battery",
    "state_dir_for",
    "versions",
    "worst_case",
]

"""Read an sd-study run folder written before the study machinery (robustlab <= the issue-13
sd-study): its ``evals/<variant>-seed<k>.json`` become typed records, so ``--report-only`` and
resumed runs use them; nothing is recomputed.

The old files stored an mCE under the key ``"acc"`` and an attack's clean outcome only as a
mean; the per-image clean outcome of each attack is read back from the run's ``ledger.sqlite``
(the row the attack wrote), and left empty when the ledger lacks it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.checkpoint import write_text_atomic
from ..evaluate import Ledger
from .records import Record, RecordStore, slugify

__all__ = ["import_legacy"]

# the battery name each old column wrote to the ledger
_BATTERIES = {"aa": "standard", "aa-rand": "rand", "twin": "twin-transfer", "tb-pgd": "baseline-transfer-pgd",
              "tb-aa": "baseline-transfer-aa"}


def _bits(s: str) -> tuple[float, ...]:
    return tuple(1.0 if c == "1" else 0.0 for c in s)


def _clean_masks(out: Path) -> dict[tuple[str, str], tuple[float, ...]]:
    """``(run name, battery) -> per-image clean outcome`` from the ledger (latest row wins)."""
    path = out / "ledger.sqlite"
    if not path.exists():
        return {}
    masks = {}
    for row in Ledger(path).rows(masks=True):
        if row.masks and "clean" in row.masks:
            masks[(str(row.extra.get("run")), row.battery)] = tuple(float(v) for v in row.masks["clean"][0].tolist())
    return masks


def _record(label: str, seed: int, col: str, cell: Mapping[str, Any], stochastic: bool,
            clean: Mapping[tuple[str, str], tuple[float, ...]]) -> Record:
    common: dict[str, Any] = {"stochastic": stochastic, "seconds": float(cell.get("wall", 0.0)),
                              "same_as": cell.get("same_as")}
    if col == "clean":
        return Record.of_outcomes(label, seed, col, "clean", _bits(cell["correct"]), **common)
    if col == "mce":
        per = {k: v for k, v in cell.items() if k not in ("acc", "per_image", "wall", "mce")}
        rec = Record.of_outcomes(label, seed, col, "corruption", [float(v) for v in cell["per_image"]], **common)
        return replace(rec, error=float(cell["acc"]), settings={"legacy": per})
    if "robust" not in cell:  # e.g. AutoAttack rand on a deterministic model
        return Record(label, seed, col, "attack", not_applicable=str(cell.get("note", "not run")), **common)
    source = cell.get("same_as") or col
    mask = clean.get((f"{label} s{seed}", _BATTERIES.get(source, source)), ())
    robust = _bits(cell["robust"])
    return Record.of_outcomes(label, seed, col, "attack", robust, per_attack=dict(cell.get("per_attack", {})),
                              clean_per_image=mask if len(mask) == len(robust) else (),
                              randomness=str(cell.get("randomness", "")),
                              warnings=tuple(cell.get("warnings", ())), **common)


def import_legacy(out: Path, labels: list[str], config: Mapping[str, Any]) -> int:
    """Turn ``out/evals/*.json`` into records (when ``out/records`` does not exist yet) and bring
    ``config.json`` to the new form when the old one holds the same settings. Returns the
    number of records written."""
    evals = out / "evals"
    if not evals.is_dir() or (out / "records").exists():
        return 0
    saved = out / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        if old.get("config") == {k: v for k, v in config.items() if k != "norm"}:
            write_text_atomic(out / "config.legacy.json", saved.read_text())
            write_text_atomic(saved, json.dumps({**old, "study": "sd-study", "config": dict(config)}, indent=1))
        elif old.get("config") != dict(config):
            return 0  # another configuration: the run refuses the folder, which stays as it is
    by_slug = {slugify(label): label for label in labels}
    store, clean, n = RecordStore(out / "records"), _clean_masks(out), 0
    for path in sorted(evals.glob("*-seed*.json")):
        slug, _, seed = path.stem.rpartition("-seed")
        if slug not in by_slug:
            continue
        cells = json.loads(path.read_text())
        stochastic = bool(cells.pop("stochastic", False))
        for col, cell in cells.items():
            if isinstance(cell, dict):
                store.put(_record(by_slug[slug], int(seed), col, cell, stochastic, clean))
                n += 1
    return n

"""scripts/compare-runs.py: the refactor check finds a changed number and ignores wall-clock times."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare-runs.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, *, accuracy: float, seconds: float, took: str, prose: str = "Fashion-MNIST at eps 0.1") -> Path:
    rec = root / "study" / "records" / "sd" / "seed0"
    rec.mkdir(parents=True)
    (rec / "pgd.json").write_text(json.dumps({"accuracy": accuracy, "per_image": [1.0, 0.0], "seconds": seconds}))
    (root / "study" / "config.json").write_text(json.dumps({"baseline": str(root / "model.safetensors")}))
    (root / "report.md").write_text(
        f"Everything took {took} s.\n\n| variant | robust (%) | seconds |\n|---|---|---|\n| SD | {accuracy} | {seconds} |\n\n{prose}\n")
    return root


def test_times_and_folder_names_are_masked(tmp_path: Path) -> None:
    compare = _script().compare
    a = _run(tmp_path / "a", accuracy=0.5, seconds=3.4, took="235")
    b = _run(tmp_path / "b", accuracy=0.5, seconds=9.9, took="612.5")
    diffs, allowed, n = compare(a, b, [])
    assert (diffs, allowed, n) == ([], [], 3)


def test_a_changed_number_is_found_in_records_and_report(tmp_path: Path) -> None:
    compare = _script().compare
    a = _run(tmp_path / "a", accuracy=0.5, seconds=3.4, took="235")
    b = _run(tmp_path / "b", accuracy=0.51, seconds=3.4, took="235")
    diffs, _, _ = compare(a, b, [])
    kinds = {d.split(":")[0]: d for d in diffs}
    assert sorted(kinds) == ["records differ", "report differs"]
    assert "0.51" in kinds["records differ"] and "| SD | 0.51 |" in kinds["report differs"]


@pytest.mark.parametrize("allow", [[], [r"at eps 0\.(1|05)$"]])
def test_prose_changes_are_differences_unless_allowed(tmp_path: Path, allow: list[str]) -> None:
    module = _script()
    a = _run(tmp_path / "a", accuracy=0.5, seconds=3.4, took="235")
    b = _run(tmp_path / "b", accuracy=0.5, seconds=3.4, took="235", prose="Fashion-MNIST at eps 0.05")
    diffs, allowed, _ = module.compare(a, b, [module.re.compile(p) for p in allow])
    assert len(diffs) == (0 if allow else 1)
    assert len(allowed) == (2 if allow else 0)  # the removed and the added line


def test_a_missing_file_is_a_difference(tmp_path: Path) -> None:
    compare = _script().compare
    a = _run(tmp_path / "a", accuracy=0.5, seconds=3.4, took="235")
    b = _run(tmp_path / "b", accuracy=0.5, seconds=3.4, took="235")
    (b / "study" / "records" / "sd" / "seed0" / "pgd.json").unlink()
    diffs, _, _ = compare(a, b, [])
    assert diffs == [f"only in {a}: study/records/sd/seed0/pgd.json"]


def _safetensors(path: Path, data: bytes, seconds: float) -> None:
    meta = {"robustlab": json.dumps({"content_hash": str(seconds), "metrics": {"seconds": seconds, "epoch": 3}})}
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]},
                         "__metadata__": meta}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def test_weights_compare_tensors_not_training_time(tmp_path: Path) -> None:
    compare = _script().compare
    a = _run(tmp_path / "a", accuracy=0.5, seconds=3.4, took="235")
    b = _run(tmp_path / "b", accuracy=0.5, seconds=3.4, took="235")
    _safetensors(a / "models" / "sd" / "model.safetensors", b"\x01\x02", 51.4)
    _safetensors(b / "models" / "sd" / "model.safetensors", b"\x01\x02", 92.0)
    assert compare(a, b, [])[0] == []
    _safetensors(b / "models" / "sd" / "model.safetensors", b"\x01\x03", 92.0)
    assert compare(a, b, [])[0] == ["weights differ: models/sd/model.safetensors"]

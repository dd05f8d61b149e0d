"""Published numbers are read from committed records, never typed in.

The README publishes result tables between ``<!-- published STUDY PROFILE FOLDER -->`` and
``<!-- /published -->``. ``FOLDER`` (under ``results/``) holds that run's records, audits and
costs as the run wrote them (weights and evaluation state stay out of git). For every block, the
report is rewritten from the folder's records alone (``report_only``: nothing is computed) into
a copy, and the README's table must equal the answer table it gives, line by line: a number
edited by hand, or records that moved without the README, fail here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from robustlab.experiments import run_study

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- published (\S+) (\S+) (\S+) -->\n(.*?)<!-- /published -->", re.S)


def _blocks() -> list[tuple[str, str, str, str]]:
    return [m.groups() for m in BLOCK.finditer((ROOT / "README.md").read_text())]  # type: ignore[misc]


def test_the_readme_publishes_at_least_one_table_from_results():
    blocks = _blocks()
    assert blocks, "the README has no <!-- published ... --> block"
    for _, _, folder, _ in blocks:
        assert (ROOT / folder / "config.json").is_file(), folder
        assert not list((ROOT / folder).rglob("*.safetensors")), f"{folder} must not hold weights"


@pytest.mark.slow
@pytest.mark.parametrize("study,profile,folder,table", _blocks(), ids=[block[2] for block in _blocks()])
def test_a_published_table_is_what_its_records_give(study, profile, folder, table, tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and "fashion" in (ROOT / folder / "config.json").read_text():
        pytest.skip("Fashion-MNIST is not installed (make data installs it)")
    copy = tmp_path / "run"
    shutil.copytree(ROOT / folder, copy)
    result = run_study(study, copy, profile, report_only=True)
    published = [line for line in table.splitlines() if line.startswith("|")]
    assert published and published == result.answer.splitlines()

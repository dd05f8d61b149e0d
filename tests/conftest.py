"""Fixtures shared across the test folders: small saved checkpoints the CLI tests read (never write)."""

from __future__ import annotations

from pathlib import Path

import pytest

import robustlab


def _mini_checkpoint(path: Path, dataset: str) -> Path:
    """An untrained resnet-mini for 1-channel, 10-class images, saved with ``dataset`` recorded."""
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1, seed=0)
    robustlab.save(model, path, dataset=dataset)
    return path


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mini_checkpoint(tmp_path_factory.mktemp("ckpt") / "digits.safetensors", "digits")


@pytest.fixture(scope="session")
def fashion_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mini_checkpoint(tmp_path_factory.mktemp("ckpt") / "fm.safetensors", "fashion-mnist")

"""Patch dictionary learning (Sec. 2.1, Eq. 1): patches, learning quality, presets, safe io."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustlab.core import CheckpointError, DataNotFoundError, InputError
from robustlab.core.checkpoint import read_header, write_checkpoint
from robustlab.defenses.dictionary import (
    CIFAR10_DICTIONARY,
    DICTIONARY_PRESETS,
    FASHION_MNIST_DICTIONARY,
    IMAGENETTE_DICTIONARY,
    DictionarySettings,
    extract_patches,
    learn_dictionary,
    load_dictionary,
    save_dictionary,
)
from robustlab.defenses.sparse_encoder import SparseEncoder

SMALL = DictionarySettings(patch_size=4, stride=2, atoms=32, lam=0.1, channels=1, max_iter=5, batch_size=128)


@pytest.fixture(scope="module")
def fashion() -> torch.Tensor:
    from robustlab.data import load_dataset

    try:
        ds = load_dataset("fashion-mnist", "train", limit=60)
    except DataNotFoundError as e:
        pytest.skip(f"Fashion-MNIST files not available: {e}")
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_extract_patches_matches_slicing() -> None:
    x = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    rows = extract_patches(x, 3, 3)
    assert rows.shape == (2 * 3 * 3, 27)
    # row of image 1, patch (2, 1): channel-major flatten of the slice
    torch.testing.assert_close(rows[1 * 9 + 2 * 3 + 1], x[1, :, 6:9, 3:6].reshape(-1))


def test_patches_times_atoms_is_the_encoder_projection() -> None:
    atoms = torch.randn(7, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    rows = extract_patches(x, 3, 2)  # (2 * 3 * 3, 18)
    conv = F.conv2d(x, atoms, stride=2)  # (2, 7, 3, 3)
    torch.testing.assert_close(rows @ atoms.flatten(1).T, conv.permute(0, 2, 3, 1).reshape(-1, 7))


def test_presets_follow_the_paper() -> None:
    assert (CIFAR10_DICTIONARY.patch_size, CIFAR10_DICTIONARY.stride, CIFAR10_DICTIONARY.atoms) == (4, 2, 500)
    assert CIFAR10_DICTIONARY.lam == 1.0 and CIFAR10_DICTIONARY.channels == 3
    assert CIFAR10_DICTIONARY.patches_per_side(32) == 15
    assert (IMAGENETTE_DICTIONARY.patch_size, IMAGENETTE_DICTIONARY.stride, IMAGENETTE_DICTIONARY.atoms) == (8, 4, 1000)
    # Sec. 2.1's m = floor((N - n) / S) + 1 gives 39 for N = 160; Sec. 5.1 prints 38 (the paper
    # disagrees with itself; a stride-4 8x8 conv on 160 pixels gives 39)
    assert IMAGENETTE_DICTIONARY.lam == 0.5 and IMAGENETTE_DICTIONARY.patches_per_side(160) == 39
    assert FASHION_MNIST_DICTIONARY.channels == 1 and FASHION_MNIST_DICTIONARY.patches_per_side(28) == 13
    assert FASHION_MNIST_DICTIONARY.atoms == 10 * FASHION_MNIST_DICTIONARY.dim  # CIFAR's 10x overcompleteness
    assert set(DICTIONARY_PRESETS) == {"cifar10", "imagenette", "fashion-mnist"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"atoms": 0}, "atoms must be a positive int"),
        ({"lam": -1.0}, "lam must be a finite number > 0"),
        ({"stride": 1.5}, "stride must be a positive int"),
        ({"max_patches": 0}, "max_patches must be a positive int"),
    ],
)
def test_bad_settings_raise(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        dataclasses.replace(SMALL, **changes)


def test_learning_checks_images() -> None:
    with pytest.raises(InputError, match=r"must have 1 channel\(s\)"):
        learn_dictionary(torch.rand(2, 3, 8, 8), SMALL)
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        learn_dictionary(torch.rand(2, 1, 8, 8) + 1, SMALL)


def sparse_mse(patches: np.ndarray, atoms: np.ndarray, k: int) -> float:
    """Mean squared error of a k-sparse OMP code in the given dictionary (rows are atoms)."""
    from sklearn.decomposition import sparse_encode

    code = sparse_encode(patches, atoms, algorithm="omp", n_nonzero_coefs=k)
    return float(((patches - code @ atoms) ** 2).mean())


@pytest.mark.filterwarnings("ignore:Orthogonal matching pursuit ended prematurely")  # all-black patches
def test_learned_dictionary_beats_random_on_held_out_patches(fashion: torch.Tensor) -> None:
    train, held_out = fashion[:40], fashion[40:]
    settings = dataclasses.replace(SMALL, max_patches=3000)
    calls: list[tuple[int, int]] = []
    atoms = learn_dictionary(train, settings, progress=lambda step, total: calls.append((step, total)))
    assert atoms.shape == (32, 1, 4, 4) and atoms.dtype == torch.float32
    torch.testing.assert_close(atoms.flatten(1).norm(dim=1), torch.ones(32))
    assert calls and calls[0][0] == 1 and all(step <= total for step, total in calls)

    patches = extract_patches(held_out, 4, 2).double().numpy()
    gen = torch.Generator().manual_seed(0)
    random = torch.randn(32, 16, generator=gen, dtype=torch.float64)
    random = (random / random.norm(dim=1, keepdim=True)).numpy()
    learned = atoms.flatten(1).double().numpy()
    for k in (1, 3):
        ours, theirs = sparse_mse(patches, learned, k), sparse_mse(patches, random, k)
        assert ours < 0.7 * theirs, (k, ours, theirs)


def test_learning_is_repeatable(fashion: torch.Tensor) -> None:
    settings = dataclasses.replace(SMALL, atoms=16, max_iter=2, max_patches=800, seed=3)
    a = learn_dictionary(fashion[:20], settings)
    b = learn_dictionary(fashion[:20], settings)
    assert torch.equal(a, b)


def test_save_load_round_trip_and_encoder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    atoms = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    atoms = atoms / atoms.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    path = save_dictionary(tmp_path / "dict.safetensors", atoms, SMALL)
    loaded, settings = load_dictionary(path)
    assert settings == SMALL
    assert torch.equal(loaded, atoms)
    assert read_header(path)["dictionary"]["lam"] == SMALL.lam
    enc = SparseEncoder(loaded, settings.stride, top_t=4, dropout_p=0.0, eps=0.1, beta=3.0)
    assert enc(torch.rand(1, 1, 28, 28)).shape == (1, 32, 13, 13)


def test_save_checks_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=re.escape("atoms must have shape (32, 1, 4, 4)")):
        save_dictionary(tmp_path / "d.safetensors", torch.zeros(31, 1, 4, 4), SMALL)


def test_load_refuses_bad_headers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    atoms = torch.zeros(32, 1, 4, 4)
    good = dataclasses.asdict(SMALL)
    cases = {
        "other.safetensors": ({"kind": "model"}, "is not a sparse-encoder dictionary"),
        "extra.safetensors": ({"kind": "sparse-dictionary", "dictionary": {**good, "path": "/etc"}}, "unknown: ['path']"),
        "badval.safetensors": ({"kind": "sparse-dictionary", "dictionary": {**good, "atoms": -1}}, "invalid dictionary settings"),
        "shape.safetensors": ({"kind": "sparse-dictionary", "dictionary": {**good, "atoms": 64}}, "of shape (64, 1, 4, 4)"),
    }
    for name, (header, message) in cases.items():
        path = write_checkpoint(tmp_path / name, {"atoms": atoms}, header)
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_dictionary(path)
    pickle = tmp_path / "dict.pt"
    torch.save({"atoms": atoms}, pickle)
    with pytest.raises(CheckpointError):
        load_dictionary(pickle)
    assert json.dumps(good)  # the settings are plain JSON

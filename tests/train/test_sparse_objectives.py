"""The unsupervised mode's two objectives: each trains only its own part (Sec. 5.1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.core import InputError
from robustlab.defenses.sparse_encoder import SparseEncoder
from robustlab.defenses.sparse_model import SparseDecoder, SparseFrontEnd
from robustlab.train import create_objective


def _front_end() -> SparseFrontEnd:
    torch.manual_seed(0)
    atoms = F.normalize(torch.randn(12, 16), dim=1).reshape(12, 1, 4, 4)
    enc = SparseEncoder(atoms, stride=2, top_t=3, dropout_p=0.0, eps=0.01, beta=1.0)
    return SparseFrontEnd(enc, SparseDecoder(12, 1, 8, hidden=(4, 4)),
                          nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), mode="unsupervised")


def _grads(model: nn.Module, objective: str) -> tuple[torch.Tensor, dict[str, bool]]:
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1])
    out = create_objective(objective)(model, x, y)
    out.loss.backward()
    return out.loss, {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}


def test_decoder_regression_is_the_mse_and_trains_the_decoder_only() -> None:
    fe = _front_end()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ((fe.decoder(fe.encoder(x)) - x) ** 2).mean()
    loss, moved = _grads(fe, "decoder-regression")
    assert torch.allclose(loss, expected)
    assert all(moved[n] for n in moved if n.startswith("autoencoder.decoder"))
    assert not any(moved[n] for n in moved if n.startswith("classifier"))


def test_frozen_decoder_trains_the_classifier_only() -> None:
    fe = _front_end()
    loss, moved = _grads(fe, "frozen-decoder")
    assert any(moved[n] for n in moved if n.startswith("classifier"))
    assert not any(moved[n] for n in moved if n.startswith("autoencoder"))
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = F.cross_entropy(fe(x), torch.tensor([0, 1, 2, 0, 1]))
    assert torch.allclose(loss, expected)  # dropout_p = 0: the encoder is deterministic


def test_objectives_need_a_front_end() -> None:
    with pytest.raises(InputError, match="sparse front end"):
        create_objective("decoder-regression")(nn.Linear(4, 2), torch.rand(2, 4), torch.tensor([0, 1]))

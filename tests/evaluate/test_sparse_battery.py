"""The sparse randomized encoder paper's attack modes as the ``sparse`` battery (Sec. 4, Sec. 5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import EOT, PGD, Transfer
from robustlab.core import InputError, ThreatModel
from robustlab.defenses.sparse_encoder import SparseEncoder
from robustlab.defenses.sparse_model import SparseDecoder, SparseFrontEnd
from robustlab.evaluate import create_battery, run_battery
from robustlab.evaluate.battery import sparse_attacks

THREAT = ThreatModel("linf", 0.1)


def test_paper_modes_use_the_papers_default_parameters_and_bpda():
    battery = create_battery("sparse", THREAT, strongest=False)
    assert list(battery.labels) == ["w-nfga-identity", "w-nfga-smooth", "w-aiga", "eot-normalized"]
    modes = {"w-nfga-identity": "identity", "w-nfga-smooth": "smooth", "w-aiga": "bypass", "eot-normalized": "smooth"}
    for label, attack in zip(battery.labels, battery.attacks, strict=True):
        assert isinstance(attack, PGD)
        # 20 steps of 1/255 at 8/255 = eps/8, from e_0 = 0, EOT over N_E = 40, the whole budget
        assert (attack.steps, attack.random_start, attack.early_stop) == (20, False, False)
        assert attack.step_size == pytest.approx(0.1 / 8)
        assert attack.bpda == modes[label]
        assert attack.grad == EOT(n=40, normalize=label == "eot-normalized")


def test_strongest_and_pw_t_add_their_attacks():
    surrogate = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    battery = create_battery("sparse", THREAT, eot=5, surrogate=surrogate)
    assert list(battery.labels[4:]) == ["pw-t w-aiga", "pw-t w-nfga-smooth", "apgd-ce-eot-bpda", "apgd-dlr-eot-bpda",
                                  "square-eot"]
    pwt = battery.attacks[4]
    assert isinstance(pwt, Transfer) and pwt.surrogate is surrogate and pwt.attack.bpda == "bypass"
    assert all(a.bpda == "smooth" for a in battery.attacks[6:8])


def test_unknown_mode_is_refused():
    with pytest.raises(InputError, match="w-aiga"):
        sparse_attacks(THREAT, mode="w-nfga")


def test_battery_runs_on_a_front_end_and_keeps_the_worst_case():
    torch.manual_seed(0)
    atoms = F.normalize(torch.randn(12, 16), dim=1).reshape(12, 1, 4, 4)
    enc = SparseEncoder(atoms, stride=2, top_t=3, dropout_p=0.5, eps=0.1, beta=1.5,
                        generator=torch.Generator().manual_seed(0))
    model = SparseFrontEnd(enc, SparseDecoder(12, 1, 8, hidden=(4, 4)), nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    battery = create_battery("sparse", THREAT, steps=2, eot=2, strongest=False)
    res = run_battery(model.eval(), (x, y), battery, threat=THREAT, n=6, batch_size=6, seed=0)
    per = [res.per_attack[label].robust_acc for label in battery.labels]
    # the final figure is re-estimated on 16 fresh draws per image after the choice: it may sit
    # above the (selection) estimates of the stages by that estimate's noise, never more
    assert res.randomness == "protocol" and res.config["verdict_draws"] == 16
    assert res.robust_acc <= min(per) + 3 * 0.5 / (6 * 16) ** 0.5

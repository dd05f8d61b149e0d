"""The sparse-encoder study recipe: its settings against the paper, and a tiny run end to end."""

from __future__ import annotations

import json

import torch

from robustlab.checkpoints import load
from robustlab.defenses import SparseFrontEnd
from robustlab.defenses.dictionary import load_dictionary
from robustlab.experiments import run_study, study_config
from robustlab.experiments.records import RecordStore
from robustlab.experiments.sparse_study import OURS, PROFILES, TWIN, columns, plan
from robustlab.experiments.variants import Convert, Ref, Train


def test_attack_columns_follow_the_papers_default_parameters():
    """Sec. 5: 20 steps of 1/255 at eps 8/255 (eps/8) from e_0 = 0, N_E = 40, here at eps 0.1."""
    cfg = PROFILES["cpu"].config
    cols = {c.name: c for c in columns(cfg)}
    for name, mode in (("w-nfga-id", "identity"), ("w-nfga-smooth", "smooth"), ("w-aiga", "bypass"),
                       ("eot-norm", "smooth")):
        s = cols[name].settings
        assert (s["steps"], s["eot"], s["random_start"], s["bpda"]) == (20, 40, False, mode)
        assert abs(s["step_size"] - 0.1 / 8) < 1e-12
        assert cols[name].deterministic == "pgd"
    assert cols["eot-norm"].settings["eot_normalize"] and not cols["w-nfga-smooth"].settings["eot_normalize"]
    assert cols["pw-t"].settings == {"source": TWIN, "attack": ["w-aiga", "w-nfga-smooth"]}
    assert cols["b-t"].settings == {"source": "PGD-AT", "attack": "pgd"}
    assert cols["aa-rand"].settings["bpda"] == "smooth" and cols["aa-rand"].settings["version"] == "rand"


def test_plan_trains_the_nominal_defense_its_twin_and_every_ablation():
    cfg = PROFILES["cpu"].config
    p = plan(cfg)
    makes = {v.label: v.make for v in p.variants}
    ours = makes[OURS]
    assert isinstance(ours, Train) and ours.train.schedule == "cyclic" and ours.train.lr == 0.05
    name, options = ours.conversions[0]
    opts = dict(options)
    assert name == "sparse-front-end" and opts["dictionary"] == Ref("dictionary")
    # T(1 - p) = 16 * 0.15 = 2.4, the paper's 50 * 0.05 = 2.5 per patch
    assert (opts["top_t"], opts["dropout_p"], opts["beta"], opts["eps"]) == (16, 0.85, 3.0, 0.1)
    twin = makes[TWIN]
    assert isinstance(twin, Convert) and twin.conversion is None and twin.finetune.objective == "frozen-decoder"
    assert makes[twin.source].train.objective == "decoder-regression"
    ablated = {label: dict(m.conversions[0][1]) for label, m in makes.items() if label.startswith(f"{OURS} without")}
    assert ablated[f"{OURS} without A&Q"]["quantize"] is False
    assert ablated[f"{OURS} without dropout"]["dropout_p"] == 0.0
    assert ablated[f"{OURS} without top-T"]["top_t"] == cfg.atoms
    assert {label for label in makes if label.startswith("Ours T=")} == {"Ours T=1 p=0", "Ours T=5 p=0.5",
                                                                         "Ours T=10 p=0.75"}
    assert {"PGD-AT", "fast-AT", "TRADES"} <= set(makes)


def test_a_tiny_sparse_study_runs_and_its_models_rebuild(tmp_path):
    cfg = study_config("sparse-study", "quick", dataset="digits", eval_n=8, clean_n=40, eval_batch_size=8,
                       atoms=24, dict_images=60, dict_patches=400, dict_iter=3, top_t=4, dropout_p=0.5,
                       epochs=1, decoder_epochs=1, at_epochs=1, at_steps=1, train_limit=96, hidden=(4, 4),
                       attack_steps=2, eot=2, aa_eot=1, square_queries=4, square_eot=1)
    r = run_study("sparse-study", tmp_path, cfg)
    assert not r.partial
    store = RecordStore(tmp_path / "records")
    assert {rec.column for rec in store if rec.variant == OURS} == {
        "clean", "w-nfga-id", "w-nfga-smooth", "w-aiga", "eot-norm", "pw-t", "b-t", "aa-rand", "square-eot",
        "audit-aa-rand"}  # the quick profile audits the adaptive evaluation only
    assert {rec.column for rec in store if rec.variant == TWIN} == {"clean"}
    # the dictionary was learnt once, unit-norm atoms, and the models carry it in their weights
    atoms, settings = load_dictionary(tmp_path / "dictionary.safetensors")
    assert atoms.shape == (24, 1, 4, 4) and settings.atoms == 24
    assert torch.allclose(atoms.flatten(1).norm(dim=1), torch.ones(24), atol=1e-5)
    model = load(tmp_path / "models" / "ours" / "seed0" / "model.safetensors")
    assert isinstance(model, SparseFrontEnd) and torch.equal(model.encoder.atoms, atoms)
    recipe = json.loads((tmp_path / "models" / "ours" / "seed0" / "variant.json").read_text())
    assert recipe["conversions"][0][1][0] == ["dictionary", {"ref": "dictionary"}]
    assert "Table 1 analogue" in r.report and "Table 3 analogue" in r.report
    assert any(c.claim.claim.startswith("The defense's worst case") for c in r.claims)

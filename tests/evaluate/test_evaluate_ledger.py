import csv
import hashlib
import io
import json
import threading

import pytest
import torch

from robustlab import create_model
from robustlab.attacks import EOT, FGSM, PGD
from robustlab.core import InputError, RobustlabError, ThreatModel
from robustlab.data import load_dataset
from robustlab.evaluate import CSV_COLUMNS, Battery, EvalResult, Ledger, record, run_battery

T = ThreatModel("linf", 0.05)


@pytest.fixture(scope="module")
def result() -> EvalResult:
    ds = load_dataset("synthetic", "test", num_classes=3, image_size=8, test_size=30)
    model = create_model("resnet-mini", num_classes=3, in_channels=1, seed=0).eval()
    battery = Battery([FGSM(T), PGD(T, steps=2, grad=EOT(n=2))], name="tiny")
    return run_battery(model, ds, battery, n=10, repeats=2, seed=4, batch_size=10)


def test_row_round_trips_every_field(tmp_path, result):
    ledger = Ledger(tmp_path / "runs" / "ledger.sqlite")
    row_id = ledger.add(result, extra={"run": "unit"})
    assert len(ledger) == 1
    row = ledger.get(row_id)
    assert row.id == row_id and row.created_at.endswith("+00:00")
    assert row.model_hash == result.model_hash and len(row.model_hash) == 64
    assert row.model_name == "resnet-mini" and row.recipe["arch"] == "resnet-mini"
    chosen = load_dataset("synthetic", "test", num_classes=3, image_size=8, test_size=30, limit=10, seed=4)
    assert row.dataset == "synthetic" and row.n == 10 and row.indices == chosen.indices.tolist()
    assert row.indices_sha256 == result.config["indices_sha256"] == result.indices_sha256
    # and it is the SHA-256 of those indices' compact JSON list, not only a stored value read back
    compact = json.dumps(chosen.indices.tolist(), separators=(",", ":"))
    assert row.indices_sha256 == hashlib.sha256(compact.encode()).hexdigest()
    assert row.seed == 4 and row.battery == "tiny" and row.repeats == 2 and row.ensemble == 1
    assert [a["label"] for a in row.attacks] == ["fgsm", "pgd"]
    pgd = row.attacks[1]
    assert pgd["steps"] == 2 and pgd["loss"] == "ce" and pgd["grad"]["n"] == 2
    assert pgd["threat"] == {"norm": "linf", "eps": 0.05}
    assert (row.clean_acc, row.clean_std, row.robust_acc, row.robust_std) == (
        result.clean_acc, result.clean_std, result.robust_acc, result.robust_std)
    assert row.per_attack == {k: v.to_dict() for k, v in result.per_attack.items()}
    assert row.seconds == result.seconds > 0
    assert row.robustlab_version == result.versions["robustlab"]
    assert row.torch_version == torch.__version__
    assert row.config == json.loads(json.dumps(result.config)) and row.extra["run"] == "unit"
    assert row.masks is not None
    for key, mask in result.masks().items():
        assert torch.equal(row.masks[key], mask), key
    assert row.to_result().to_dict() == result.to_dict()
    assert ledger.rows()[0].masks is None  # masks are decoded only when asked


def test_filters_exports_and_markdown(tmp_path, result):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ids = [ledger.add(result), ledger.add(result)]
    assert [r.id for r in ledger.rows(dataset="synthetic", battery="tiny")] == ids
    assert ledger.rows(dataset="cifar10") == [] and ledger.rows(battery="quick") == []
    assert len(ledger.rows(model_hash=result.model_hash[:8])) == 2
    assert [r.id for r in ledger.rows(ids=[ids[1]])] == [ids[1]]
    with pytest.raises(InputError, match="no row 99"):
        ledger.get(99)

    ledger.to_csv(tmp_path / "out" / "rows.csv")
    with open(tmp_path / "out" / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2
    assert float(rows[0]["robust_acc"]) == result.robust_acc
    assert json.loads(rows[0]["indices"]) == result.indices
    chosen = load_dataset("synthetic", "test", num_classes=3, image_size=8, test_size=30, limit=10, seed=4)
    assert result.indices == chosen.indices.tolist()  # the selection rule's images, not an echo
    assert json.loads(rows[0]["per_attack"])["pgd"]["seen"] == result.per_attack["pgd"].seen
    buf = io.StringIO()
    ledger.to_csv(buf)
    assert buf.getvalue().splitlines()[0].startswith("id,created_at,model_name")

    data = json.loads(ledger.to_json(tmp_path / "rows.json", masks=True))
    assert data == json.loads((tmp_path / "rows.json").read_text())
    assert data[0]["masks"]["robust"] == result.to_dict()["masks"]["robust"]
    assert "masks" not in json.loads(ledger.to_json())[0]

    md = ledger.markdown()
    assert "| id | model |" in md and "resnet-mini" in md and "±" in md


def test_concurrent_writers_and_several_ledgers(tmp_path, result):
    path = tmp_path / "shared.sqlite"
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            led = Ledger(path)
            for _ in range(4):
                led.add(result)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = [r.id for r in Ledger(path).rows()]
    assert len(ids) == len(set(ids)) == 12

    run_ids = record(result, tmp_path / "run" / "ledger.sqlite", Ledger(tmp_path / "global.sqlite"))
    assert run_ids == [1, 1]


def test_bad_ledger_paths(tmp_path, result):
    with pytest.raises(InputError, match="is a folder"):
        Ledger(tmp_path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RobustlabError, match="not a usable SQLite file"):
        Ledger(junk)
    with pytest.raises(InputError, match="takes an EvalResult"):
        Ledger(tmp_path / "ok.sqlite").add({"clean_acc": 1.0})  # type: ignore[arg-type]


# ------------------------------------------------------------- the leaderboard (issue 13.11)
def _tiny_results():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from evaluate_toys import linear_model

    ds = load_dataset("synthetic", "test", num_classes=3, image_size=4, test_size=30)
    net = linear_model()
    eight = ThreatModel("linf", 8 / 255)
    single = run_battery(net, ds, Battery([PGD(eight, steps=2)], name="quick"), n=10, seed=1)
    battery = run_battery(net, ds, Battery([FGSM(eight), PGD(eight, steps=2)], name="two-step-check"), n=10, seed=1)
    other_seed = run_battery(net, ds, Battery([PGD(eight, steps=2)], name="quick"), n=10, seed=2)
    l2 = run_battery(net, ds, Battery([PGD(ThreatModel("l2", 0.5), steps=2)], name="quick"), n=10, seed=1)
    return single, battery, other_seed, l2


def test_summary_shows_threat_n_seed_samples_and_what_robust_measures(tmp_path):
    single, battery, other_seed, _ = _tiny_results()
    ledger = Ledger(tmp_path / "l.sqlite")
    ids = [ledger.add(r) for r in (single, battery, other_seed)]
    s1, s2, s3 = (ledger.get(i, masks=False).summary() for i in ids)
    assert (s1["norm"], s1["eps"], s1["eps_text"]) == ("linf", 8 / 255, "8/255 (0.03137)")
    assert (s1["n"], s1["seed"], s3["seed"]) == (10, 1, 2)
    assert s2["battery"] == "two-step-check" and s2["attacks"] == "fgsm, pgd"
    assert s1["measure"] == "robust under pgd" and s2["measure"] == "worst case over 2 attacks"
    # same n, other images: the samples hash tells the rows apart
    assert s1["samples"] == s2["samples"] != s3["samples"]
    assert s1["samples"] == hashlib.sha256(json.dumps(single.indices, separators=(",", ":")).encode()).hexdigest()[:12]


def test_markdown_never_ranks_a_single_attack_with_a_battery(tmp_path):
    single, battery, other_seed, l2 = _tiny_results()
    ledger = Ledger(tmp_path / "l.sqlite")
    ids = {name: ledger.add(r) for name, r in
           (("single", single), ("battery", battery), ("other_seed", other_seed), ("l2", l2))}
    md = ledger.markdown()
    blocks = md.split("\n\n**")
    assert len(blocks) == 3  # quick linf, quick l2, two-step-check: three rankings
    by_title = {b.split("\n", 1)[0].strip("*"): b for b in blocks}
    titles = sorted(by_title)
    assert titles == [
        "synthetic, l2 eps 0.5, battery `quick` (pgd): robust under pgd",
        "synthetic, linf eps 8/255 (0.03137), battery `quick` (pgd): robust under pgd",
        "synthetic, linf eps 8/255 (0.03137), battery `two-step-check` (fgsm, pgd): worst case over 2 attacks",
    ]
    quick_linf = by_title[titles[1]]
    assert "robust under pgd (%)" in quick_linf and "worst case" not in quick_linf
    assert "| id | model | n | samples | seed |" in quick_linf
    cells = [line.split("|")[1].strip() for line in quick_linf.splitlines() if line.startswith("|")]
    row_ids = [int(c) for c in cells if c.isdigit()]
    assert sorted(row_ids) == sorted([ids["single"], ids["other_seed"]])
    assert "worst case over 2 attacks (%)" in by_title[titles[2]]

    from robustlab.evaluate import leaderboard_groups

    groups = leaderboard_groups(ledger.rows())
    assert [len(g.rows) for g in groups] == [1, 2, 1]
    assert [g.measure for g in groups] == ["robust under pgd", "robust under pgd", "worst case over 2 attacks"]
    linf = groups[1]
    assert [r.robust_acc for r in linf.rows] == sorted((r.robust_acc for r in linf.rows), reverse=True)

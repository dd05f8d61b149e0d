"""Sharded evaluation (issue #30): ``run_battery`` and ``robustlab evaluate`` on 2 ranks
(torchrun, gloo, CPU) give exactly the result of one process with the same seed and batch size.

One torchrun launch (tests/evaluate/dist_eval_worker.py) runs every multi-rank check and writes
what each rank returned; the one-process references are computed here, in the test process,
from the same fixed-seed builders (never read back from the 2-rank run).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_eval_worker import (
    CLI_ARGS,
    detected_case,
    deterministic_case,
    frozen_case,
    late_case,
    randomized_case,
)
from safetensors.torch import load_file
from typer.testing import CliRunner

from robustlab.core.distributed import World
from robustlab.core.randomness import frozen
from robustlab.evaluate import EvalResult, Ledger, ProgressEvent, run_battery

WORKER = Path(__file__).with_name("dist_eval_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(mode: str, out: Path, checkpoint: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", ROBUSTLAB_DIST_TIMEOUT="60")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(WORKER), mode, str(out), str(checkpoint)]
    return subprocess.run(cmd, cwd=WORKER.parent, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet-mini trained 3 short epochs on digits (so the attacks have something to break)."""
    from robustlab.cli import app

    out = tmp_path_factory.mktemp("digits-run")
    r = CliRunner().invoke(app, ["train", "--dataset", "digits", "--model", "resnet-mini", "--epochs", "3",
                                 "--batch-size", "64", "--limit", "512", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """The folder the 2-rank launch wrote (``rank0/``, ``rank1/``, the state folders, the ledger)."""
    out = tmp_path_factory.mktemp("sharded")
    proc = _torchrun("checks", out, checkpoint)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (out / "rank0" / "done").exists() and (out / "rank1" / "done").exists()
    (out / "stdout.txt").write_text(proc.stdout)
    return out


@pytest.fixture(scope="module")
def randomized_reference() -> EvalResult:
    model, data, battery, kw = randomized_case()
    return run_battery(model, data, battery, world=World(), **kw)


def _read(folder: Path, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[list[Any]]]:
    record = json.loads((folder / f"{name}.json").read_text())
    return record["result"], load_file(str(folder / f"{name}.safetensors")), record["events"]


def _assert_identical(reference: EvalResult, got: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Every per-sample outcome and every number but the timings, exactly."""
    expected = json.loads(json.dumps(reference.to_dict()))
    for key in ("clean_acc", "clean_std", "robust_acc", "robust_std", "clean_accs", "robust_accs", "indices",
                "config", "masks", "model_hash", "n"):
        assert got[key] == expected[key], key
    for label, summary in expected["per_attack"].items():
        for field in ("robust_acc", "robust_std", "seen", "broken", "success_rate", "forward_passes",
                      "backward_passes"):
            assert got["per_attack"][label][field] == summary[field], (label, field)
    assert torch.equal(tensors["clean_correct"], reference.clean_correct)
    assert torch.equal(tensors["robust"], reference.robust)
    for name in ("p_clean", "p_robust", "p_select"):
        assert torch.equal(tensors[name], getattr(reference, name)), name
    for label in reference.per_attack:
        assert torch.equal(tensors[f"success.{label}"], reference.success[label]), label
        assert torch.equal(tensors[f"seen.{label}"], reference.seen[label]), label


def test_two_ranks_give_the_one_process_result_on_a_deterministic_model(sharded: Path) -> None:
    model, data, battery, kw = deterministic_case()
    reference = run_battery(model, data, battery, world=World(), **kw)
    # the attacks matter (some robust, some broken), so equal numbers are not a coincidence
    assert 0 < reference.robust_acc < reference.clean_acc < 1
    assert reference.per_attack["fgsm"].broken > 0 and reference.per_attack["pgd#2"].broken > 0
    for rank in (0, 1):  # every rank returns the gathered result
        got, tensors, events = _read(sharded / f"rank{rank}", "deterministic")
        _assert_identical(reference, got, tensors)
        # whole batches, contiguous: 7 batches of 8 (the last of 4) as shards of 4 and 3
        assert [e[4] for e in events if e[0] == "batch"] == ([0, 1, 2, 3] if rank == 0 else [4, 5, 6])
        assert events[0][:3] == ["start", 0, 4 if rank == 0 else 3] and events[0][6] == 2
        assert events[-1][:3] == ["end", 7, 7]  # the end event counts the gathered run


def test_two_ranks_give_the_one_process_result_on_a_randomized_model_under_eot(
        sharded: Path, randomized_reference: EvalResult) -> None:
    reference = randomized_reference
    assert reference.config["randomness"] == "protocol" and reference.repeats == 2
    # the randomness shows in the numbers: per-sample probabilities strictly between 0 and 1
    assert bool(((reference.p_robust > 0) & (reference.p_robust < 1)).any())
    for rank in (0, 1):
        got, tensors, _ = _read(sharded / f"rank{rank}", "randomized")
        _assert_identical(reference, got, tensors)
    # and the comparison can fail: another seed gives other draws, in every batch (so in both
    # ranks' shards), hence other probabilities
    model, data, battery, kw = randomized_case()
    other = run_battery(model, data, battery, world=World(), **{**kw, "seed": kw["seed"] + 1})
    differs = (other.p_robust != reference.p_robust).any(dim=0)
    assert all(bool(differs[lo:lo + 8].any()) for lo in range(0, reference.n, 8))


def test_two_ranks_give_the_one_process_result_on_a_model_drawing_from_the_global_generator(sharded: Path) -> None:
    model, data, battery, kw = detected_case()
    torch.manual_seed(12345)  # neither the caller's generator nor the ranks' (seeded apart) matters
    state = torch.get_rng_state()
    reference = run_battery(model, data, battery, world=World(), **kw)
    assert torch.equal(torch.get_rng_state(), state)  # and the caller's generator did not move
    assert reference.config["randomness"] == "detected"
    assert bool(((reference.p_robust > 0) & (reference.p_robust < 1)).any())
    other = run_battery(model, data, battery, world=World(), **{**kw, "seed": kw["seed"] + 1})
    differs = (other.p_robust != reference.p_robust).any(dim=0)
    assert all(bool(differs[lo:lo + 8].any()) for lo in range(0, reference.n, 8))
    for rank in (0, 1):
        got, tensors, _ = _read(sharded / f"rank{rank}", "detected")
        _assert_identical(reference, got, tensors)


def test_a_frozen_model_takes_the_same_inference_path_on_every_rank(sharded: Path) -> None:
    model, data, battery, kw = frozen_case()
    with frozen(model):
        reference = run_battery(model, data, battery, world=World(), **kw)
    assert reference.config["randomness"] == "frozen"
    fresh = frozen_case()[0]
    with frozen(fresh):  # another seed, another result (another path, other PGD starts)
        other = run_battery(fresh, data, battery, world=World(), **{**kw, "seed": kw["seed"] + 1})
    assert not torch.equal(other.robust, reference.robust)
    for rank in (0, 1):
        got, tensors, _ = _read(sharded / f"rank{rank}", "frozen")
        _assert_identical(reference, got, tensors)


def test_randomness_found_late_on_the_ranks_starts_every_rank_over_as_one_process_does(sharded: Path) -> None:
    model, data, battery, kw = late_case()
    reference = run_battery(model, data, battery, world=World(), **kw)
    assert reference.config["late_randomness"] is True and reference.config["randomness"] == "detected"
    for rank in (0, 1):
        got, tensors, events = _read(sharded / f"rank{rank}", "late")
        _assert_identical(reference, got, tensors)
        # started under the deterministic rule, then over under the randomized one, together
        assert [e[0] for e in events].count("start") == 2 and events[-1][:3] == ["end", 3, 3]


def _attacks_of(events: list[list[Any]]) -> list[tuple[int, int, str]]:
    return [(e[3], e[4], e[5]) for e in events if e[0] == "attack"]


def test_an_interrupted_two_rank_run_resumes_to_the_uninterrupted_result(
        sharded: Path, randomized_reference: EvalResult) -> None:
    # rank 0 attacks batches 0-1, rank 1 batches 2-3 (2 repeats); each was stopped after the
    # first attack of its second (repeat, batch), saved mid-batch
    for rank, stopped in ((0, (0, 1)), (1, (0, 3))):
        interrupted = json.loads((sharded / f"rank{rank}" / "interrupted.json").read_text())
        assert [(e[3], e[4], e[5]) for e in interrupted if e[0] == "saved"][-1] == (*stopped, "fgsm")
    (slot,) = (sharded / "state").iterdir()
    assert sorted(p.name for p in slot.iterdir()) == ["state.rank0-of-2.safetensors", "state.rank1-of-2.safetensors"]

    # resumed on 2 ranks: each rank finds its finished batch and continues its saved one at pgd
    for rank, first in ((0, (0, 1, "pgd")), (1, (0, 3, "pgd"))):
        got, tensors, events = _read(sharded / f"rank{rank}", "resumed")
        _assert_identical(randomized_reference, got, tensors)
        assert events[0][:2] == ["start", 1]
        assert _attacks_of(events)[0] == first

    # resumed on 1 rank from a copy of the 2-rank files (taken before the 2-rank resume)
    model, data, battery, kw = randomized_case()
    events: list[ProgressEvent] = []
    resumed = run_battery(model, data, battery, state_dir=sharded / "state-copy", world=World(),
                          progress=events.append, **kw)
    assert (events[0].kind, events[0].completed, events[0].total) == ("start", 2, 8)
    assert [(e.repeat, e.batch, e.attack) for e in events if e.kind == "attack"] == [
        (0, 1, "pgd"),  # rank 0's saved batch, continued
        (0, 3, "pgd"),  # rank 1's saved batch, continued
        *[(1, b, label) for b in range(4) for label in ("fgsm", "pgd")],  # never started
    ]
    expected = json.loads(json.dumps(randomized_reference.to_dict()))
    got = json.loads(json.dumps(resumed.to_dict()))
    for key in ("clean_acc", "robust_acc", "clean_accs", "robust_accs", "config", "masks"):
        assert got[key] == expected[key], key
    assert torch.equal(resumed.p_robust, randomized_reference.p_robust)
    assert torch.equal(resumed.p_clean, randomized_reference.p_clean)


def test_the_command_under_torchrun_writes_one_ledger_row_equal_to_one_process(
        sharded: Path, checkpoint: Path, tmp_path: Path) -> None:
    (row,) = Ledger(sharded / "ledger.sqlite").rows(masks=True)  # one row: rank 0's
    stdout = " ".join((sharded / "stdout.txt").read_text().split())  # rich wraps long lines
    assert stdout.count("ledger row") == 1 and "by 2 processes" in stdout

    from robustlab.cli import app

    r = CliRunner().invoke(app, ["evaluate", str(checkpoint), *CLI_ARGS, "--ledger", str(tmp_path / "l.sqlite"),
                                 "--no-state"])
    assert r.exit_code == 0, r.output
    (single,) = Ledger(tmp_path / "l.sqlite").rows(masks=True)
    assert 0 < single.robust_acc < single.clean_acc  # PGD breaks some images, not all
    for field in ("n", "indices", "seed", "clean_acc", "robust_acc", "model_hash", "battery"):
        assert getattr(row, field) == getattr(single, field), field
    assert row.per_attack["pgd"]["broken"] == single.per_attack["pgd"]["broken"]
    assert row.masks is not None and single.masks is not None
    assert row.masks.keys() == single.masks.keys()
    for name, mask in single.masks.items():
        assert torch.equal(row.masks[name], mask), name


def test_a_rank_that_dies_fails_the_other_with_a_clear_error_and_no_row(checkpoint: Path, tmp_path: Path) -> None:
    proc = _torchrun("die", tmp_path, checkpoint, timeout=180)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "error: rank 0 of 2:" in output and "another rank probably died" in output, output[-3000:]
    ledger = tmp_path / "ledger.sqlite"
    assert not ledger.exists() or Ledger(ledger).rows() == []
